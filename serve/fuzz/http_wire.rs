//! HTTP/1.1 on the wire, for the HTTP fuzz target (fuzz/http.rs): a strict
//! parser of the requests an input sends (it gives up on anything unusual,
//! so that what it does parse is what any correct server sees), a parser
//! and checker of the responses that come back, and a generator of
//! well-formed and deliberately odd requests to seed mutation.

use fuzzer::Rng;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The request target up to any `?`.
    pub path: String,
    pub body: Vec<u8>,
    /// The server closes after answering it (HTTP/1.0 or `Connection: close`).
    pub last: bool,
}

/// Splits at the first CRLF.
fn line(raw: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = raw.windows(2).position(|w| w == b"\r\n")?;
    Some((&raw[..at], &raw[at + 2..]))
}

fn is_token(s: &[u8]) -> bool {
    !s.is_empty()
        && s.iter()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b))
}

/// Lowercased names and trimmed values, in order.
type Headers = Vec<(String, String)>;

/// Header lines up to the blank line, and what follows it.
fn headers(mut rest: &[u8]) -> Option<(Headers, &[u8])> {
    let mut out = Vec::new();
    loop {
        let (l, next) = line(rest)?;
        rest = next;
        if l.is_empty() {
            return Some((out, rest));
        }
        let colon = l.iter().position(|&b| b == b':')?;
        let (name, value) = (&l[..colon], &l[colon + 1..]);
        let clean = value
            .iter()
            .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b));
        if !is_token(name) || !clean || out.len() >= 64 {
            return None;
        }
        let value = String::from_utf8_lossy(value).trim().to_string();
        out.push((String::from_utf8_lossy(name).to_ascii_lowercase(), value));
    }
}

fn dechunk(mut rest: &[u8]) -> Option<(Vec<u8>, &[u8])> {
    let mut body = Vec::new();
    loop {
        let (size, next) = line(rest)?;
        if size.is_empty() || size.len() > 8 || !size.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        let n = usize::from_str_radix(std::str::from_utf8(size).ok()?, 16).ok()?;
        if n == 0 {
            let (trailer, next) = line(next)?;
            return trailer.is_empty().then_some((body, next));
        }
        let data = next.get(..n)?;
        if next.get(n..n + 2)? != b"\r\n" {
            return None;
        }
        body.extend_from_slice(data);
        rest = &next[n + 2..];
    }
}

/// Every request in `raw`, or `None` if anything is unusual: a strict
/// subset of HTTP/1.1 whose meaning no server can dispute.
pub fn parse_requests(mut raw: &[u8]) -> Option<Vec<Request>> {
    let mut out = Vec::new();
    while !raw.is_empty() && out.len() < 8 {
        let (start, rest) = line(raw)?;
        let start = std::str::from_utf8(start).ok()?;
        let mut parts = start.split(' ');
        let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
        let printable = target.bytes().all(|b| b.is_ascii_graphic());
        if parts.next().is_some()
            || !method.bytes().all(|b| b.is_ascii_uppercase())
            || method.is_empty()
            || !target.starts_with('/')
            || !printable
            || !matches!(version, "HTTP/1.1" | "HTTP/1.0")
        {
            return None;
        }
        let (headers, rest) = headers(rest)?;
        let all = |name: &'static str| {
            headers
                .iter()
                .filter(move |(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        let lengths: Vec<&str> = all("content-length").collect();
        let encodings: Vec<&str> = all("transfer-encoding").collect();
        if all("expect").next().is_some() || lengths.len() > 1 || encodings.len() > 1 {
            return None;
        }
        // HTTP/1.0 closes unless asked to keep alive; 1.1 keeps alive
        // unless asked to close. `Connection` is a list whose empty
        // elements count for nothing (RFC 9110, 5.6.1), as hyper reads
        // it; one that asks for both is left to the server.
        let connection = |token: &str| {
            all("connection").any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        };
        let (asks_close, asks_keep_alive) = (connection("close"), connection("keep-alive"));
        if asks_close && asks_keep_alive {
            return None;
        }
        let close = asks_close || (version == "HTTP/1.0" && !asks_keep_alive);
        let (body, rest) = match (lengths.first(), encodings.first()) {
            (None, Some(te)) if te.eq_ignore_ascii_case("chunked") && version == "HTTP/1.1" => {
                dechunk(rest)?
            }
            (Some(n), None)
                if !n.is_empty() && n.len() <= 9 && n.bytes().all(|b| b.is_ascii_digit()) =>
            {
                let n: usize = n.parse().ok()?;
                (rest.get(..n)?.to_vec(), &rest[n..])
            }
            (None, None) => (Vec::new(), rest),
            _ => return None,
        };
        let path = target.split('?').next().unwrap_or_default().to_string();
        out.push(Request {
            method: method.to_string(),
            path,
            body,
            last: close,
        });
        raw = rest;
        if close {
            // The server closes after this one; the rest is never read.
            raw = &[];
        }
    }
    raw.is_empty().then_some(out)
}

pub fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Headers,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses everything the server sent; `is_head(i)` says whether the `i`th
/// final response answers a HEAD (no body), `None` if unknown. Any
/// deviation from HTTP/1.1's grammar is an error.
pub fn parse_responses(
    mut raw: &[u8],
    is_head: impl Fn(usize) -> Option<bool>,
) -> Result<Vec<Response>, String> {
    let mut out: Vec<Response> = Vec::new();
    while !raw.is_empty() {
        let (start, rest) = line(raw).ok_or("a status line without CRLF")?;
        let start = String::from_utf8_lossy(start).into_owned();
        let code = start
            .strip_prefix("HTTP/1.1 ")
            .or_else(|| start.strip_prefix("HTTP/1.0 "))
            .and_then(|s| s.get(..3))
            .and_then(|c| c.parse::<u16>().ok())
            .filter(|c| (100..600).contains(c))
            .ok_or_else(|| format!("bad status line {start:?}"))?;
        let (headers, rest) =
            headers(rest).ok_or_else(|| format!("bad headers after {start:?}"))?;
        let response = |body: Vec<u8>| Response {
            status: code,
            headers: headers.clone(),
            body,
        };
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        // Unknown requests: an answer to HEAD is followed at once by the
        // next status line or the end (a guess a body could fool, but only
        // for inputs no strict parse vouches for).
        let head =
            is_head(out.len()).unwrap_or_else(|| rest.is_empty() || rest.starts_with(b"HTTP/1."));
        let bodiless = code < 200 || code == 204 || code == 304 || head;
        let (body, rest) = if bodiless {
            (Vec::new(), rest)
        } else if get("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
            if get("content-length").is_some() {
                return Err(format!("{start:?} has both Content-Length and chunked"));
            }
            dechunk(rest).ok_or_else(|| format!("bad chunked body after {start:?}"))?
        } else if let Some(n) = get("content-length") {
            let n: usize = n.parse().map_err(|_| format!("Content-Length {n:?}"))?;
            let body = rest
                .get(..n)
                .ok_or_else(|| format!("{start:?}: body shorter than {n}"))?;
            (body.to_vec(), &rest[n..])
        } else {
            (rest.to_vec(), &[][..])
        };
        if code >= 200 {
            out.push(response(body));
        }
        raw = rest;
    }
    Ok(out)
}

const FUNCTIONS: [&str; 6] = ["echo", "sha256", "json-upper", "counter", "nope", "%65cho"];
const ODD_NAMES: [&str; 12] = [
    "",
    "%00",
    "%ff",
    "%2e%2e",
    "e%2Fcho",
    "echo%20",
    "%C3%A9cho",
    "ECHO",
    "echo;x",
    "%",
    "%zz",
    "..",
];
const OTHER_PATHS: [&str; 10] = [
    "/healthz",
    "/metrics",
    "/v1/functions",
    "/",
    "*",
    "/healthz/",
    "//healthz",
    "/v1/functions/echo/invoke/",
    "/v1/functions/echo/invoke?x=%ff",
    "http://h/healthz",
];
const METHODS: [&str; 8] = [
    "POST", "POST", "POST", "GET", "HEAD", "PUT", "OPTIONS", "post",
];

fn body(rng: &mut Rng) -> Vec<u8> {
    match rng.below(8) {
        0 => Vec::new(),
        1 => b"hello".to_vec(),
        2 => (0..rng.below(300)).map(|_| rng.next_u64() as u8).collect(),
        3 => br#"{"key": "value", "list": [1, "two\n", {"x": "\u00e9"}]}"#.to_vec(),
        4 => br#"{"unterminated": "#.to_vec(),
        5 => [b"[".repeat(200), b"]".repeat(200)].concat(),
        6 => vec![b'a'; (60 << 10) + rng.below(10 << 10)],
        _ => b"\x00\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n".to_vec(),
    }
}

/// One request, mostly well-formed, with a few odd parts.
pub fn generate(rng: &mut Rng) -> Vec<u8> {
    let method = *rng.pick(&METHODS);
    let path = match rng.below(4) {
        0 | 1 => format!("/v1/functions/{}/invoke", rng.pick(&FUNCTIONS)),
        2 => format!("/v1/functions/{}/invoke", rng.pick(&ODD_NAMES)),
        _ => rng.pick(&OTHER_PATHS).to_string(),
    };
    let version = *rng.pick(&["HTTP/1.1", "HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/2.0"]);
    let payload = body(rng);
    let mut head = format!("{method} {path} {version}\r\n");
    if rng.chance(90) {
        head.push_str("Host: fuzz\r\n");
    }
    let chunked = rng.chance(20);
    let length = match rng.below(10) {
        0 => "18446744073709551616".to_string(),
        1 => format!("{}", payload.len() + 1 + rng.below(100)),
        2 => "-1".to_string(),
        3 => format!("{}, {}", payload.len(), payload.len()),
        _ => payload.len().to_string(),
    };
    if !chunked || rng.chance(10) {
        head.push_str(&format!("Content-Length: {length}\r\n"));
    }
    if chunked {
        head.push_str("Transfer-Encoding: chunked\r\n");
    }
    for _ in 0..rng.below(3) {
        head.push_str(match rng.below(6) {
            0 => "Connection: close\r\n",
            1 => "Expect: 100-continue\r\n",
            2 => "Content-Type: application/json\r\n",
            3 => "X-Long: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
            4 => " folded: continuation\r\n",
            _ => "Connection: keep-alive\r\n",
        });
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    if chunked {
        out.extend(chunk(rng, &payload));
    } else {
        out.extend(payload);
    }
    out
}

/// `payload` in chunked encoding, cut at random places.
pub fn chunk(rng: &mut Rng, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = payload;
    while !rest.is_empty() {
        let n = (1 + rng.below(rest.len().min(4096))).min(rest.len());
        out.extend(format!("{n:x}\r\n").into_bytes());
        out.extend_from_slice(&rest[..n]);
        out.extend_from_slice(b"\r\n");
        rest = &rest[n..];
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// Sets the first request's Content-Length to the bytes that follow its
/// head, so that mutated bodies reach the function.
pub fn fix_length(data: &mut Vec<u8>) {
    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
    let Some(end) = find(data, b"\r\n\r\n") else {
        return;
    };
    let head = data[..end].to_ascii_lowercase();
    if find(&head, b"transfer-encoding").is_some() {
        return;
    }
    let Some(at) = find(&head, b"\r\ncontent-length:") else {
        return;
    };
    let value_at = at + b"\r\ncontent-length:".len();
    let value_end = find(&head[value_at..], b"\r\n").map_or(end, |e| value_at + e);
    let body = data.len() - end - 4;
    data.splice(value_at..value_end, format!(" {body}").into_bytes());
}
