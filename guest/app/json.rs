//! The `json-upper` function: a small streaming JSON transform that
//! uppercases the ASCII letters inside every string literal (keys and
//! values) and copies everything else unchanged. Escape sequences are
//! kept as they are, so `\n` stays `\n` and `\u00e9` keeps its hex.
//!
//! It checks the structure it depends on (terminated strings, valid
//! escapes, no raw control characters in strings, balanced and matching
//! brackets, something other than whitespace) and rejects the rest with a
//! short reason. It is not a full grammar check: `[1 2]` passes through.

/// Deepest nesting accepted: one bit per open bracket in a u128.
const MAX_DEPTH: u32 = 128;

enum State {
    Outside,
    InString,
    Escape,
    /// Inside `\uXXXX`, with this many hex digits still to come.
    Unicode(u8),
}

/// Transforms `input` into `out` (at least as long, the output has the
/// same length) and returns the output length, or why it was rejected.
pub fn upper(input: &[u8], out: &mut [u8]) -> Result<usize, &'static str> {
    if out.len() < input.len() {
        return Err("response buffer too small");
    }
    // Bit i set: the bracket open at depth i is `{`, clear: `[`.
    let mut braces: u128 = 0;
    let mut depth: u32 = 0;
    let mut state = State::Outside;
    let mut anything = false;
    for (i, &c) in input.iter().enumerate() {
        let mut o = c;
        state = match state {
            State::Outside => {
                if !c.is_ascii_whitespace() {
                    anything = true;
                }
                match c {
                    b'"' => State::InString,
                    b'{' | b'[' => {
                        if depth == MAX_DEPTH {
                            return Err("nesting deeper than 128");
                        }
                        let bit = 1u128 << depth;
                        braces = if c == b'{' {
                            braces | bit
                        } else {
                            braces & !bit
                        };
                        depth += 1;
                        State::Outside
                    }
                    b'}' | b']' => {
                        if depth == 0 {
                            return Err("unbalanced closing bracket");
                        }
                        depth -= 1;
                        let was_brace = braces & (1u128 << depth) != 0;
                        if was_brace != (c == b'}') {
                            return Err("mismatched brackets");
                        }
                        State::Outside
                    }
                    _ => State::Outside,
                }
            }
            State::InString => match c {
                b'"' => State::Outside,
                b'\\' => State::Escape,
                0..=0x1f => return Err("control character in a string"),
                _ => {
                    o = c.to_ascii_uppercase();
                    State::InString
                }
            },
            State::Escape => match c {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => State::InString,
                b'u' => State::Unicode(4),
                _ => return Err("invalid escape in a string"),
            },
            State::Unicode(left) => {
                if !c.is_ascii_hexdigit() {
                    return Err("invalid \\u escape in a string");
                }
                if left == 1 {
                    State::InString
                } else {
                    State::Unicode(left - 1)
                }
            }
        };
        out[i] = o;
    }
    if !matches!(state, State::Outside) {
        return Err("unterminated string");
    }
    if depth != 0 {
        return Err("unclosed bracket");
    }
    if !anything {
        return Err("empty document");
    }
    Ok(input.len())
}
