//! The default guest's built-in functions, by the name a template is built
//! with (`vmfork template build --function NAME`, which puts
//! `function=NAME` on the guest's command line). From `Crash` on they
//! misbehave on purpose, for tests (docs/guest-abi.md).

/// One built-in function of the default guest.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BuiltinFunction {
    /// Answers with the request body.
    Echo,
    /// Answers with the SHA-256 of the body, in hex.
    Sha256,
    /// Answers with a JSON body's string values upper-cased.
    JsonUpper,
    /// Answers how many times this guest instance has been invoked.
    Counter,
    /// Crashes the guest mid-request.
    Crash,
    /// Never answers.
    Spin,
    /// Triple-faults the guest mid-request.
    TripleFault,
    /// Takes the INVOKE and never acknowledges it.
    NoAck,
    /// Floods unclaimed ports.
    PortFlood,
    /// Floods unbacked guest-physical addresses.
    MmioFlood,
    /// Self-IPIs from ring 0.
    InterruptStorm,
    /// Writes one of its own page-table entries, then answers.
    PageTableWrite,
    /// Reads through page tables it built before READY (outside the boot
    /// tree), then changes one of their entries and uses them again.
    PageTableBuild,
    /// Reports an MSR only ring 0 reaches (IA32_KERNEL_GS_BASE), then
    /// changes it.
    MsrWrite,
    /// Reports the x87 control word, MXCSR and XMM15, then changes them.
    FpuWrite,
}

impl BuiltinFunction {
    /// Every built-in function, in the order of [`FUNCTION_NAMES`].
    pub const ALL: [BuiltinFunction; 15] = [
        BuiltinFunction::Echo,
        BuiltinFunction::Sha256,
        BuiltinFunction::JsonUpper,
        BuiltinFunction::Counter,
        BuiltinFunction::Crash,
        BuiltinFunction::Spin,
        BuiltinFunction::TripleFault,
        BuiltinFunction::NoAck,
        BuiltinFunction::PortFlood,
        BuiltinFunction::MmioFlood,
        BuiltinFunction::InterruptStorm,
        BuiltinFunction::PageTableWrite,
        BuiltinFunction::PageTableBuild,
        BuiltinFunction::MsrWrite,
        BuiltinFunction::FpuWrite,
    ];

    /// The name a template is built with.
    pub const fn name(self) -> &'static str {
        match self {
            BuiltinFunction::Echo => "echo",
            BuiltinFunction::Sha256 => "sha256",
            BuiltinFunction::JsonUpper => "json-upper",
            BuiltinFunction::Counter => "counter",
            BuiltinFunction::Crash => "crash",
            BuiltinFunction::Spin => "spin",
            BuiltinFunction::TripleFault => "triple-fault",
            BuiltinFunction::NoAck => "no-ack",
            BuiltinFunction::PortFlood => "port-flood",
            BuiltinFunction::MmioFlood => "mmio-flood",
            BuiltinFunction::InterruptStorm => "interrupt-storm",
            BuiltinFunction::PageTableWrite => "page-table-write",
            BuiltinFunction::PageTableBuild => "page-table-build",
            BuiltinFunction::MsrWrite => "msr-write",
            BuiltinFunction::FpuWrite => "fpu-write",
        }
    }

    /// The function called `name`, if there is one.
    pub fn parse(name: &[u8]) -> Option<BuiltinFunction> {
        Self::ALL
            .iter()
            .copied()
            .find(|f| f.name().as_bytes() == name)
    }
}

/// The names as one literal, so that `concat!` can build messages from it
/// in a guest without an allocator; a test checks it against
/// [`BuiltinFunction::ALL`].
macro_rules! function_names {
    () => {
        "echo, sha256, json-upper, counter, crash, spin, triple-fault, no-ack, port-flood, mmio-flood, interrupt-storm, page-table-write, page-table-build, msr-write, fpu-write"
    };
}

/// Every name, in the order of [`BuiltinFunction::ALL`], for messages.
pub const FUNCTION_NAMES: &str = function_names!();

/// What the guest says of a `function=` it does not know.
pub const UNKNOWN_FUNCTION: &str = concat!("unknown function (", function_names!(), ")");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_the_list_names_them_all_in_order() {
        let mut names = FUNCTION_NAMES.split(", ");
        for f in BuiltinFunction::ALL {
            assert_eq!(BuiltinFunction::parse(f.name().as_bytes()), Some(f));
            assert_eq!(names.next(), Some(f.name()));
        }
        assert_eq!(names.next(), None);
        assert_eq!(BuiltinFunction::parse(b"nope"), None);
    }
}
