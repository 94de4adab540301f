//! Opening a file, refused with EACCES rather than ending the process.
//!
//! A thread whose list allows no open(2) or openat(2) still runs glibc,
//! which opens a file or two on its own the first time some path is taken:
//! `/proc/sys/vm/overcommit_memory` before it first shrinks a thread's
//! malloc heap, `/sys/devices/system/cpu/online` when it first counts
//! arenas. Both cope with a failed open. So for such lists the program
//! starts with a check that answers those two calls EACCES: the file is
//! still never opened, but an HTTP thread that frees memory at the wrong
//! moment no longer ends `serve` with exit status 18. Shared by build.rs
//! (the embedded programs) and the crate (run-time compilation), so the
//! two stay equal.

use seccompiler::sock_filter;

use super::tree::{insn, BPF_JMP_JA, BPF_JMP_JEQ_K, BPF_LD_W_ABS, BPF_RET_K, NR_OFFSET};

/// `struct seccomp_data`: the audit arch follows the call number.
const ARCH_OFFSET: u32 = 4;
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const EACCES: u32 = 13;
const SYS_OPEN: u32 = 2;
const SYS_OPENAT: u32 = 257;

/// `program` with the EACCES answer for open(2) and openat(2) in front.
/// Jumps in BPF are relative, so the program after it is unchanged.
pub fn refuse_opens(program: Vec<sock_filter>) -> Vec<sock_filter> {
    let mut out = vec![
        insn(BPF_LD_W_ABS, 0, 0, ARCH_OFFSET),
        // Another arch: on to the list's program, which refuses it.
        insn(BPF_JMP_JEQ_K, 0, 5, AUDIT_ARCH_X86_64),
        insn(BPF_LD_W_ABS, 0, 0, NR_OFFSET),
        insn(BPF_JMP_JEQ_K, 2, 0, SYS_OPENAT),
        insn(BPF_JMP_JEQ_K, 1, 0, SYS_OPEN),
        insn(BPF_JMP_JA, 0, 0, 1),
        insn(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | EACCES),
    ];
    out.extend(program);
    out
}
