//! Sizes, counts and durations as people write them ("128M", "2.5s"): one
//! reading of each for the command line and for `serve`'s HTTP API.

use std::time::Duration;

/// "128M", "1G", "64MiB", "4096K", "2097152" (bytes).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    if digits_end == 0 {
        return Err("expected a size such as 128M or 1G".into());
    }
    let number: u64 = t[..digits_end]
        .parse()
        .map_err(|_| "number too large".to_string())?;
    let shift = match t[digits_end..].to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err("unknown unit (use K, M, G or T)".into()),
    };
    number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| "size too large".into())
}

/// A size as `parse_size` reads it, in the largest unit that is exact:
/// "128M", "1G", "4097".
pub fn format_size(bytes: u64) -> String {
    for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if bytes != 0 && bytes.trailing_zeros() >= shift {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// A whole number in `min..=max`.
pub fn parse_count(text: &str, min: u64, max: u64) -> Result<u64, String> {
    let n: u64 = text
        .trim()
        .parse()
        .map_err(|_| "expected a whole number".to_string())?;
    if n < min || n > max {
        return Err(format!("out of range {min}..={max}"));
    }
    Ok(n)
}

/// "30" (seconds), "1.5s", "500ms".
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || "expected e.g. 30, 2.5s or 500ms".to_string();
    let t = text.trim();
    let (number, scale) = if let Some(ms) = t.strip_suffix("ms") {
        (ms, 1e-3)
    } else if let Some(s) = t.strip_suffix('s') {
        (s, 1.0)
    } else {
        (t, 1.0)
    };
    let value: f64 = number.parse().map_err(|_| bad())?;
    if !value.is_finite() || value <= 0.0 || value * scale > 1e9 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(value * scale))
}

/// A duration, or "0" for none (`Duration::ZERO`), as `clone --hold` takes.
pub fn parse_hold(text: &str) -> Result<Duration, String> {
    match text.trim() {
        "0" => Ok(Duration::ZERO),
        t => parse_duration(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("128M").ok(), Some(128 << 20));
        assert_eq!(parse_size("1g").ok(), Some(1 << 30));
        assert_eq!(parse_size("64MiB").ok(), Some(64 << 20));
        assert_eq!(parse_size("4096").ok(), Some(4096));
        for (bytes, text) in [
            (128 << 20, "128M"),
            (1 << 30, "1G"),
            (4097, "4097"),
            (0, "0"),
        ] {
            assert_eq!(format_size(bytes), text);
            assert_eq!(parse_size(text).ok(), Some(bytes));
        }
        for bad in [
            "",
            "M",
            "12X",
            "-1M",
            "1.5G",
            "99999999999999999999",
            "20000000T",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn counts() {
        assert_eq!(parse_count("2", 1, 254).ok(), Some(2));
        assert!(parse_count("0", 1, 254).is_err());
        assert!(parse_count("255", 1, 254).is_err());
        assert!(parse_count("two", 1, 254).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30").ok(), Some(Duration::from_secs(30)));
        assert_eq!(
            parse_duration("500ms").ok(),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            parse_duration("1.5s").ok(),
            Some(Duration::from_millis(1500))
        );
        for bad in ["", "0", "-1", "abc", "inf", "NaN"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_hold("0").ok(), Some(Duration::ZERO));
        assert_eq!(parse_hold("2s").ok(), Some(Duration::from_secs(2)));
        assert!(parse_hold("0s").is_err());
    }
}
