//! Parsing of sizes, counts and durations given on the command line. Kept
//! out of clap's value parsers so that a bad value is an `InvalidArgument`
//! (its own exit status) rather than a generic usage error.

use std::time::Duration;

use vmfork_machine::error::{Error, Result};

/// "128M", "1G", "64MiB", "4096K", "2097152" (bytes).
pub fn parse_size(flag: &str, text: &str) -> Result<u64> {
    let bad = |why: &str| Error::InvalidArgument(format!("{flag} {text:?}: {why}"));
    let t = text.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    if digits_end == 0 {
        return Err(bad("expected a size such as 128M or 1G"));
    }
    let number: u64 = t[..digits_end]
        .parse()
        .map_err(|_| bad("number too large"))?;
    let shift = match t[digits_end..].to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(bad("unknown unit (use K, M, G or T)")),
    };
    number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| bad("size too large"))
}

pub fn parse_count(flag: &str, text: &str, min: u64, max: u64) -> Result<u64> {
    let n: u64 = text
        .trim()
        .parse()
        .map_err(|_| Error::InvalidArgument(format!("{flag} {text:?}: expected a whole number")))?;
    if n < min || n > max {
        return Err(Error::InvalidArgument(format!(
            "{flag} {n} is out of range {min}..={max}"
        )));
    }
    Ok(n)
}

/// "30" (seconds), "1.5s", "500ms".
pub fn parse_duration(flag: &str, text: &str) -> Result<Duration> {
    let bad =
        || Error::InvalidArgument(format!("{flag} {text:?}: expected e.g. 30, 2.5s or 500ms"));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("--mem", "128M").ok(), Some(128 << 20));
        assert_eq!(parse_size("--mem", "1g").ok(), Some(1 << 30));
        assert_eq!(parse_size("--mem", "64MiB").ok(), Some(64 << 20));
        assert_eq!(parse_size("--mem", "4096").ok(), Some(4096));
        for bad in [
            "",
            "M",
            "12X",
            "-1M",
            "1.5G",
            "99999999999999999999",
            "20000000T",
        ] {
            assert!(parse_size("--mem", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn counts() {
        assert_eq!(parse_count("--vcpus", "2", 1, 254).ok(), Some(2));
        assert!(parse_count("--vcpus", "0", 1, 254).is_err());
        assert!(parse_count("--vcpus", "255", 1, 254).is_err());
        assert!(parse_count("--vcpus", "two", 1, 254).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("--timeout", "30").ok(),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_duration("--timeout", "500ms").ok(),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            parse_duration("--timeout", "1.5s").ok(),
            Some(Duration::from_millis(1500))
        );
        for bad in ["", "0", "-1", "abc", "inf", "NaN"] {
            assert!(parse_duration("--timeout", bad).is_err(), "{bad}");
        }
    }
}
