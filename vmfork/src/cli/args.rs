//! Value parsers for sizes, counts and durations given on the command line.
//! A bad value is a clap `ValueValidation` error whose message names the
//! flag and the value; `main` gives it the invalid-argument exit status (3)
//! rather than the usage status (2).

use std::ffi::OsStr;
use std::marker::PhantomData;

use clap::builder::TypedValueParser;
use clap::error::ErrorKind;
use clap::{Arg, Command};

pub use vmfork_machine::units::{format_size, parse_count, parse_duration, parse_hold, parse_size};

/// How errors name a flag: "--mem", or "-n/--count" when it has both.
fn flag_name(arg: Option<&Arg>) -> String {
    match arg.map(|a| (a.get_short(), a.get_long(), a)) {
        Some((Some(s), Some(l), _)) => format!("-{s}/--{l}"),
        Some((None, Some(l), _)) => format!("--{l}"),
        Some((Some(s), None, _)) => format!("-{s}"),
        Some((None, None, a)) => format!("<{}>", a.get_id()),
        None => "value".into(),
    }
}

/// The error for a bad value: one message that names flag and value.
fn invalid(arg: Option<&Arg>, text: &str, why: &str) -> clap::Error {
    clap::Error::raw(
        ErrorKind::ValueValidation,
        format!("{} {text:?}: {why}", flag_name(arg)),
    )
}

/// A value parser from a plain function: `value_parser = Parsed(parse_size)`.
#[derive(Clone, Copy)]
pub struct Parsed<T>(pub fn(&str) -> Result<T, String>);

impl<T: Clone + Send + Sync + 'static> TypedValueParser for Parsed<T> {
    type Value = T;

    fn parse_ref(
        &self,
        _cmd: &Command,
        arg: Option<&Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        let text = value.to_string_lossy();
        (self.0)(&text).map_err(|why| invalid(arg, &text, &why))
    }
}

/// A whole number in `min..=max` as a `T`: `value_parser = count::<u8>(1, 254)`.
pub struct Count<T> {
    min: u64,
    max: u64,
    value: PhantomData<fn() -> T>,
}

impl<T> Clone for Count<T> {
    fn clone(&self) -> Self {
        Count { ..*self }
    }
}

/// `max` must fit in `T`.
pub const fn count<T>(min: u64, max: u64) -> Count<T> {
    Count {
        min,
        max,
        value: PhantomData,
    }
}

impl<T: TryFrom<u64> + Clone + Send + Sync + 'static> TypedValueParser for Count<T> {
    type Value = T;

    fn parse_ref(
        &self,
        _cmd: &Command,
        arg: Option<&Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        let text = value.to_string_lossy();
        parse_count(&text, self.min, self.max)
            .and_then(|n| T::try_from(n).map_err(|_| "too large".to_string()))
            .map_err(|why| invalid(arg, &text, &why))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_flag_and_the_value() {
        let cmd = Command::new("t");
        let mem = Arg::new("mem").long("mem");
        let err = Parsed(parse_size)
            .parse_ref(&cmd, Some(&mem), OsStr::new("12X"))
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("error: --mem \"12X\": unknown unit (use K, M, G or T)")
        );
        let n = Arg::new("count").short('n').long("count");
        let err = count::<u8>(1, 254)
            .parse_ref(&cmd, Some(&n), OsStr::new("0"))
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("error: -n/--count \"0\": out of range 1..=254")
        );
        let ok = count::<u8>(1, 254).parse_ref(&cmd, Some(&n), OsStr::new("254"));
        assert_eq!(ok.ok(), Some(254));
    }
}
