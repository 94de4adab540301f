//! Every thread type's BPF program, compiled from lists.rs by build.rs and
//! embedded here as a static array of instructions: installing a filter
//! costs no compilation and no allocation. A unit test (tests.rs) checks
//! that each equals what `compile(kind, SeccompAction::Trap)` gives at run
//! time.

use seccompiler::sock_filter;

use super::ThreadKind;

/// The program build.rs wrote for the list named `$name`, decoded at
/// compile time.
macro_rules! embedded {
    ($name:literal) => {{
        const BYTES: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/seccomp-", $name, ".bpf"));
        static PROGRAM: [sock_filter; BYTES.len() / INSN_BYTES] = decode(BYTES);
        &PROGRAM
    }};
}

/// `kind`'s program, with `SECCOMP_RET_TRAP` for calls outside its list;
/// a vCPU's for interrupt eventfds from `floor` up (one of
/// `VCPU_FD_FLOORS`).
pub(super) fn program(kind: ThreadKind, floor: i32) -> &'static [sock_filter] {
    match kind {
        ThreadKind::Vcpu if floor == super::lists::VCPU_FD_FLOORS[1] => embedded!("vcpu-1024"),
        ThreadKind::Vmm => embedded!("vmm"),
        ThreadKind::Launcher => embedded!("launcher"),
        ThreadKind::Vcpu => embedded!("vcpu"),
        ThreadKind::Uffd => embedded!("uffd"),
        ThreadKind::Api => embedded!("api"),
        ThreadKind::Http => embedded!("http"),
        ThreadKind::Invoker => embedded!("invoker"),
        ThreadKind::Holder => embedded!("holder"),
        ThreadKind::Signals => embedded!("signals"),
        ThreadKind::Reaper => embedded!("reaper"),
        ThreadKind::Watchdog => embedded!("watchdog"),
        ThreadKind::Builder => embedded!("builder"),
    }
}

/// An instruction as build.rs writes it: code (u16), jt, jf, k (u32),
/// little-endian, as `struct sock_filter` (linux/filter.h) lays it out.
const INSN_BYTES: usize = 8;

/// Turns build.rs's bytes into instructions. It runs in const evaluation,
/// so a malformed file fails the build, and include_bytes!'s lack of
/// alignment does not matter.
const fn decode<const N: usize>(bytes: &[u8]) -> [sock_filter; N] {
    assert!(
        bytes.len() == N * INSN_BYTES,
        "a seccomp program from build.rs is not a whole number of instructions"
    );
    const ZERO: sock_filter = sock_filter {
        code: 0,
        jt: 0,
        jf: 0,
        k: 0,
    };
    let mut program = [ZERO; N];
    let mut i = 0;
    while i < N {
        let b = i * INSN_BYTES;
        program[i] = sock_filter {
            code: u16::from_le_bytes([bytes[b], bytes[b + 1]]),
            jt: bytes[b + 2],
            jf: bytes[b + 3],
            k: u32::from_le_bytes([bytes[b + 4], bytes[b + 5], bytes[b + 6], bytes[b + 7]]),
        };
        i += 1;
    }
    program
}
