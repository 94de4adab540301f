//! The few system interfaces std does not wrap: port I/O and the glibc
//! calls behind it, the random pool's ioctls and setting the clock.
//!
//! Declared by hand rather than taken from the `libc` crate because the
//! agent is compiled with bare rustc (guest-artifacts/build.rs), where only
//! std and the guest-ABI crate exist; glibc itself is linked statically
//! through std.

use std::io;
use std::os::raw::{c_int, c_long, c_ulong};

#[repr(C)]
struct Timespec {
    tv_sec: c_long,
    tv_nsec: c_long,
}

extern "C" {
    fn ioperm(from: c_ulong, num: c_ulong, turn_on: c_int) -> c_int;
    fn ioctl(fd: c_int, request: c_ulong, ...) -> c_int;
    fn clock_settime(clock: c_int, tp: *const Timespec) -> c_int;
    fn waitpid(pid: c_int, status: *mut c_int, options: c_int) -> c_int;
    fn kill(pid: c_int, sig: c_int) -> c_int;
    fn sync();
    fn signal(sig: c_int, handler: extern "C" fn(c_int)) -> usize;
}

const CLOCK_REALTIME: c_int = 0;
const WNOHANG: c_int = 1;
/// `SIGKILL` on x86-64 Linux.
pub const SIGKILL: c_int = 9;
/// `_IOW('R', 0x03, int[2])`: add entropy to the input pool, crediting it.
const RNDADDENTROPY: c_ulong = 0x4008_5203;
/// `_IO('R', 0x07)`: reseed the CRNG from the pool now, not on its schedule.
const RNDRESEEDCRNG: c_ulong = 0x5207;

fn check(ret: c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Lets this process use ports `from..from+count` from ring 3.
pub fn open_ports(from: u16, count: u16) -> io::Result<()> {
    // SAFETY: a plain system call on integers.
    check(unsafe { ioperm(c_ulong::from(from), c_ulong::from(count), 1) })
}

/// A 32-bit `out`. The caller must have opened the port ([`open_ports`]).
pub fn outl(port: u16, value: u32) {
    // SAFETY: port I/O on a port this process was granted; on the VMM's
    // ports it has no effect on this process's memory.
    unsafe {
        std::arch::asm!("out dx, eax", in("dx") port, in("eax") value, options(nostack, preserves_flags));
    }
}

/// A 32-bit `in`; on the ready port it parks the vCPU until the VMM has a
/// command.
pub fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: as in `outl`.
    unsafe {
        std::arch::asm!("in eax, dx", in("dx") port, out("eax") value, options(nostack, preserves_flags));
    }
    value
}

/// Credits `bytes` as full entropy and reseeds the CRNG from it, so every
/// later `getrandom()` and `/dev/urandom` read differs between clones that
/// share the template's pool.
pub fn add_entropy_and_reseed(urandom: &std::fs::File, bytes: &[u8; 32]) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info = [0u8; 8 + 32];
    info[..4].copy_from_slice(&(8 * 32i32).to_ne_bytes());
    info[4..8].copy_from_slice(&32i32.to_ne_bytes());
    info[8..].copy_from_slice(bytes);
    let fd = urandom.as_raw_fd();
    // SAFETY: RNDADDENTROPY reads a rand_pool_info of buf_size bytes of
    // payload from the pointer, which `info` holds whole.
    check(unsafe { ioctl(fd, RNDADDENTROPY, info.as_ptr()) })?;
    // SAFETY: RNDRESEEDCRNG takes no argument.
    check(unsafe { ioctl(fd, RNDRESEEDCRNG) })
}

/// Sets `CLOCK_REALTIME` to `unix_ns`.
pub fn set_realtime(unix_ns: u64) -> io::Result<()> {
    let ts = Timespec {
        tv_sec: (unix_ns / 1_000_000_000) as c_long,
        tv_nsec: (unix_ns % 1_000_000_000) as c_long,
    };
    // SAFETY: `ts` is a valid timespec for the call's duration.
    check(unsafe { clock_settime(CLOCK_REALTIME, &ts) })
}

/// Reaps every exited child without waiting: as PID 1 the agent inherits
/// every orphan. Only call it when no `Child` of std's is being waited for.
pub fn reap_orphans() {
    let mut status = 0;
    // SAFETY: waitpid with WNOHANG on any child; `status` outlives the call.
    while unsafe { waitpid(-1, &mut status, WNOHANG) } > 0 {}
}

/// Sends `signal` to every process of group `pgid`.
pub fn kill_group(pgid: u32, signal: c_int) {
    // SAFETY: a plain system call on integers; a group that is gone only
    // makes it fail.
    unsafe {
        kill(-(pgid as c_int), signal);
    }
}

/// Flushes dirty file data before the VM ends.
pub fn sync_all() {
    // SAFETY: no arguments, no memory.
    unsafe { sync() }
}

/// The signals busybox's `poweroff`, `halt` and `reboot` send PID 1
/// (SIGUSR2, SIGUSR1, SIGTERM).
const POWER_SIGNALS: [c_int; 3] = [12, 10, 15];

/// Makes `poweroff`, `halt` and `reboot` (the commands, which signal PID 1)
/// end the VM cleanly: the VMM cannot power-cycle a guest, so all three
/// sync and write `EX` 0 straight from the handler, which only makes
/// system calls and one port write, both async-signal-safe.
pub fn end_vm_on_power_signals() {
    extern "C" fn handler(_sig: c_int) {
        sync_all();
        outl(vmfork_guest_abi::READY_PORT, vmfork_guest_abi::EXIT_TAG);
    }
    for sig in POWER_SIGNALS {
        // SAFETY: installs a handler that only makes async-signal-safe
        // calls; no Rust state is touched from it.
        unsafe {
            signal(sig, handler);
        }
    }
}
