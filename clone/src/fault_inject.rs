//! TEST HOOK, not a feature: `VMFORK_FAULT_INJECT` makes a uffd page
//! server fail on purpose, so tests and scripts/soak.sh can check that a
//! clone whose page server dies is stopped with a clear error instead of
//! hanging or running on zero-filled memory. Unset (always, in production)
//! it does nothing.
//!
//! The value is a comma-separated list:
//! - `uffd-handler-exit-after=N`: the handler ends abnormally (as a read
//!   error would) instead of serving its fault number N+1;
//! - `uffd-handler-panic-after=N`: the same, by unwinding (as a panic
//!   would; `resume_unwind`, so the panic hook prints nothing);
//! - `uffd-handler-stall-after=N`: the handler stops serving faults but
//!   stays alive (a stalled page server);
//! - `clone=ID`: only the clone with this id (1..) is affected.

use vmfork_machine::error::{Error, Result};

pub const ENV: &str = "VMFORK_FAULT_INJECT";

/// How an injected page-server failure shows itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandlerFault {
    Exit,
    Panic,
    Stall,
}

/// A failure to inject into one clone's page server after `after` faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Injection {
    pub fault: HandlerFault,
    pub after: u64,
}

/// The parsed `VMFORK_FAULT_INJECT`: one optional fault, and the one
/// clone it is for (all clones when None).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plan {
    injection: Option<Injection>,
    only: Option<u64>,
}

/// Read and parsed once per process, on first use, so that no clone pays
/// for the environment lookup: the hook costs a load of this cell.
static PLAN: std::sync::OnceLock<std::result::Result<Plan, String>> = std::sync::OnceLock::new();

/// The injection for `clone_id` from `VMFORK_FAULT_INJECT`, if any. A
/// malformed value is an error, so a typo never silently disables a test.
pub fn for_clone(clone_id: u64) -> Result<Option<Injection>> {
    let plan = PLAN.get_or_init(|| match std::env::var(ENV) {
        Ok(spec) => parse(&spec).map_err(|e| e.to_string()),
        Err(_) => Ok(Plan {
            injection: None,
            only: None,
        }),
    });
    match plan {
        Ok(plan) => Ok(plan.for_clone(clone_id)),
        Err(e) => Err(Error::InvalidArgument(
            e.trim_start_matches("invalid argument: ").to_string(),
        )),
    }
}

impl Plan {
    fn for_clone(&self, clone_id: u64) -> Option<Injection> {
        self.injection
            .filter(|_| self.only.is_none_or(|id| id == clone_id))
    }
}

fn parse(spec: &str) -> Result<Plan> {
    let bad = |why: &str| Error::InvalidArgument(format!("{ENV}={spec:?}: {why}"));
    let mut injection = None;
    let mut only = None;
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (key, value) = item.split_once('=').ok_or_else(|| bad("expected KEY=N"))?;
        let n: u64 = value.parse().map_err(|_| bad("N must be a number"))?;
        let fault = match key {
            "uffd-handler-exit-after" => HandlerFault::Exit,
            "uffd-handler-panic-after" => HandlerFault::Panic,
            "uffd-handler-stall-after" => HandlerFault::Stall,
            "clone" => {
                only = Some(n);
                continue;
            }
            _ => return Err(bad(&format!("unknown key {key:?}"))),
        };
        injection = Some(Injection { fault, after: n });
    }
    Ok(Plan { injection, only })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_targets_one_clone() {
        let exit = Some(Injection {
            fault: HandlerFault::Exit,
            after: 3,
        });
        let parse = |spec: &str, id: u64| parse(spec).map(|p| p.for_clone(id));
        assert_eq!(parse("uffd-handler-exit-after=3", 7).ok(), Some(exit));
        assert_eq!(
            parse("uffd-handler-exit-after=3,clone=2", 2).ok(),
            Some(exit)
        );
        assert_eq!(
            parse("uffd-handler-exit-after=3,clone=2", 1).ok(),
            Some(None)
        );
        let stall = parse("uffd-handler-stall-after=0", 1).ok().flatten();
        assert_eq!(stall.map(|i| i.fault), Some(HandlerFault::Stall));
        assert_eq!(parse("", 1).ok(), Some(None));
        assert!(parse("uffd-handler-exit-after", 1).is_err());
        assert!(parse("uffd-handler-exit-after=x", 1).is_err());
        assert!(parse("uffd-handler-explode=1", 1).is_err());
    }
}
