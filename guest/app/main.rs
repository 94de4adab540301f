//! The default vmfork guest application: ring 3, no_std, entered from
//! ring0/boot.S with RDI = &BootInfo. It does what docs/guest-abi.md
//! describes: banner, command line, application init, READY, then it
//! parks on the ready port waiting for commands (the snapshot point).
//!
//! Ring 3 runs natively on a PVM host while ring 0 is emulated, so all of
//! the guest's real work happens here; ring 0 is only entered for the
//! timer, crashes and the few service calls below.

#![no_std]

mod abi;
mod boot;
mod config;
mod function;
mod io;
mod json;
mod mem;
mod misbehave;
mod sha256;
mod vcpu_state;

use core::fmt::Write as _;
use core::hint::black_box;
use core::ptr::{read_volatile, write_volatile};

use abi::{
    command_arg, command_opcode, BootInfo, ACK_WAIT_PORT, CMD_DIRTY, CMD_EXIT, CMD_INVOKE,
    CMD_NO_VMM, CMD_RESUMED, CMD_RESUME_INVOKE, MAILBOX_END, MAILBOX_START, PANIC_GUEST_FATAL,
    READY, READY_PORT, SVC_TIMER_START,
};
use config::Config;
use function::Function;
use io::{crash, exit, inl, outl, rdtsc, say, service};
use misbehave::Test;

const PAGE: u64 = 4096;

/// Exit statuses of the guest itself (docs/guest-abi.md).
const EXIT_BAD_CMDLINE: u8 = 2;
const EXIT_NO_ROOM: u8 = 3;

#[no_mangle]
pub extern "C" fn vmfork_main(info: &'static BootInfo) -> ! {
    // Differs on every cold boot, and a clone inherits its parent's: the
    // pong line shows which boot a clone's memory came from.
    let boot_nonce = rdtsc();
    // Before the first line, so that every line takes one exit, not one
    // per byte.
    io::probe_console();

    let boot = match boot::read(info) {
        Ok(b) => b,
        Err(why) => {
            say!("vmfork-guest: panic: bad boot parameters: {}", why);
            crash(PANIC_GUEST_FATAL)
        }
    };
    let cfg = match config::parse(boot.cmdline) {
        Ok(c) => c,
        Err(bad) => {
            say!("vmfork-guest: error: bad command line word {}", bad);
            exit(EXIT_BAD_CMDLINE)
        }
    };
    // Every line on the console is a VM exit (one per byte under QEMU),
    // so quiet=1 drops the informational lines from the boot path.
    let quiet = cfg.quiet;
    if !quiet {
        say!(
            "vmfork-guest: boot proto={} ram={}MiB",
            boot.proto,
            boot::mib(boot.memmap.ram_bytes())
        );
    }

    if cfg.timer_hz > 0 && service(SVC_TIMER_START, cfg.timer_hz) == 0 {
        say!("vmfork-guest: warning: the CPU has no x2APIC; timer off");
    }

    let heap_start = match cfg.function {
        Some(_) => reserve_mailbox(info.image_end, boot.memmap),
        None => (info.image_end + PAGE - 1) & !(PAGE - 1),
    };
    let start = rdtsc();
    let touched = touch(&cfg, heap_start, boot.memmap);
    let checksum = mix(touched, cfg.work);
    let cycles = rdtsc().wrapping_sub(start);
    if !quiet {
        say!(
            "vmfork-guest: init touch_mib={} work={} timer_hz={} function={} checksum={:#x} cycles={} boot_nonce={:#x}",
            cfg.touch_mib,
            cfg.work,
            cfg.timer_hz,
            cfg.function.map_or("none", Function::name),
            checksum,
            cycles,
            boot_nonce
        );
    }

    match cfg.test {
        Test::None => {}
        Test::NoAck => say!("vmfork-guest: test {}", cfg.test.name()),
        test => misbehave::before_ready(test),
    }

    if cfg.function == Some(Function::PageTableBuild) {
        vcpu_state::build_page_tables();
    }

    // Printed even when quiet: it is how tools without the ready port (QEMU
    // in the benchmarks) see the ready point, and it costs one exit.
    say!("vmfork-guest: READY");
    outl(READY_PORT, READY);
    if cfg.test == Test::NoAck {
        misbehave::ignore_commands();
    }
    let heap = (heap_start, heap_start + (cfg.touch_mib << 20));
    serve(boot_nonce, checksum, &cfg, heap)
}

/// With a function configured, [MAILBOX_START, MAILBOX_END) is the
/// mailbox: it must be RAM and free of the image. Returns where the init
/// heap starts instead (above the mailbox).
fn reserve_mailbox(image_end: u64, memmap: boot::MemMap) -> u64 {
    let ram_ok = memmap
        .ram_end_from(MAILBOX_START)
        .is_some_and(|end| end >= MAILBOX_END);
    if image_end > MAILBOX_START || !ram_ok {
        say!(
            "vmfork-guest: error: function= needs RAM for its mailbox at {:#x}..{:#x} (image ends at {:#x}, {} MiB of RAM in all; give the VM at least 16 MiB)",
            MAILBOX_START,
            MAILBOX_END,
            image_end,
            boot::mib(memmap.ram_bytes())
        );
        exit(EXIT_NO_ROOM)
    }
    MAILBOX_END
}

/// Application init, part 1: a runtime warming its heap. Writes one byte
/// in every page of a `touch_mib` MiB buffer at `start` (page aligned:
/// right after the image, or after the mailbox), then reads them back into
/// a checksum.
fn touch(cfg: &Config, start: u64, memmap: boot::MemMap) -> u64 {
    let bytes = cfg.touch_mib << 20; // config::parse rejected overflow
    let limit = memmap.ram_end_from(start);
    let end = match (start.checked_add(bytes), limit) {
        (Some(end), Some(limit)) if end <= limit => end,
        _ => {
            say!(
                "vmfork-guest: error: touch_mib={} needs RAM from {:#x} to {:#x}, but the RAM there ends at {:#x} ({} MiB of RAM in all)",
                cfg.touch_mib,
                start,
                start.saturating_add(bytes),
                limit.unwrap_or(0),
                boot::mib(memmap.ram_bytes())
            );
            exit(EXIT_NO_ROOM)
        }
    };
    let mut page = start;
    while page < end {
        // SAFETY: [start, end) is RAM past the image (checked above),
        // identity mapped and owned by nobody else.
        unsafe { write_volatile(page as *mut u8, (page >> 12) as u8 ^ 0x5a) };
        page += PAGE;
    }
    let mut sum: u64 = 0;
    let mut page = start;
    while page < end {
        // SAFETY: the same pages the loop above validated and wrote.
        let b = unsafe { read_volatile(page as *const u8) };
        sum = sum.wrapping_mul(31).wrapping_add(u64::from(b));
        page += PAGE;
    }
    sum
}

/// The clone-info page, if the VMM wrote one (docs/guest-abi.md).
fn read_clone_info() -> Option<abi::CloneInfo> {
    // SAFETY: the page is identity mapped RAM below the image that nothing
    // else in the guest uses; the VMM fills it while the vCPU is stopped.
    let info = unsafe { core::ptr::read_volatile(abi::CLONE_INFO_ADDR as *const abi::CloneInfo) };
    (info.magic == abi::CLONE_INFO_MAGIC).then_some(info)
}

/// splitmix64: a tiny, well-mixed generator step.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// DIRTY: write one byte in each of the first `n` pages of the init heap
/// (as many as it has), so benchmarks can make a known number of pages
/// differ from a snapshot.
fn dirty_pages(heap: (u64, u64), n: u64) {
    let mut page = heap.0;
    let mut left = n;
    while left > 0 && page < heap.1 {
        // SAFETY: [heap.0, heap.1) is the RAM `touch` validated and wrote.
        unsafe {
            let p = page as *mut u8;
            write_volatile(p, read_volatile(p).wrapping_add(1));
        }
        page += PAGE;
        left -= 1;
    }
}

/// Application init, part 2: `n` rounds of an integer mix. Each round
/// depends on the last and the inputs are opaque to the optimiser, so it
/// cannot be folded or skipped.
fn mix(seed: u64, n: u64) -> u64 {
    let n = black_box(n);
    let mut x = black_box(seed) ^ 0x243f_6a88_85a3_08d3;
    let mut i = 0;
    while i < n {
        x = (x.rotate_left(7) ^ i).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        i += 1;
    }
    black_box(x)
}

/// The command loop. The `in` is where the guest idles, and where a
/// snapshot is taken: a clone resumes by completing it. Everything the
/// pong line shows lives in this frame or in guest memory, so it carries
/// over into clones.
fn serve(boot_nonce: u64, checksum: u64, cfg: &Config, heap: (u64, u64)) -> ! {
    let quiet = cfg.quiet;
    let mut pings: u64 = 0;
    // Seeded at boot, so every clone of one template would draw the same
    // numbers; the entropy in the clone-info page reseeds it on resume.
    let mut rng = boot_nonce;
    let mut clone_id: Option<u64> = None;
    let mut host_time_ms: u64 = 0;
    // Whether the last command is still to be acknowledged: the next park
    // then does both in one exit (ACK_WAIT_PORT).
    let mut ack_due = false;
    loop {
        let command = inl(if core::mem::take(&mut ack_due) {
            ACK_WAIT_PORT
        } else {
            READY_PORT
        });
        match command {
            CMD_EXIT => exit(0),
            c if command_opcode(c) == CMD_DIRTY => {
                dirty_pages(heap, u64::from(command_arg(c)));
                ack_due = true;
            }
            CMD_INVOKE => {
                ack_due = function::invoke(cfg.function);
            }
            CMD_RESUME_INVOKE => {
                resumed(&mut clone_id, &mut host_time_ms, &mut rng);
                ack_due = function::invoke(cfg.function);
            }
            CMD_NO_VMM => {
                say!(
                    "vmfork-guest: no VMM on port {:#x}; exiting through isa-debug-exit",
                    READY_PORT
                );
                exit(0)
            }
            // PING, RESUMED, and (per the ABI) any other command word.
            c => {
                if c == CMD_RESUMED {
                    resumed(&mut clone_id, &mut host_time_ms, &mut rng);
                }
                pings += 1;
                let random = splitmix(rng);
                rng = random;
                ack_due = true;
                if !quiet {
                    // SAFETY: a u64 in the image that only ring 0's timer
                    // writes, whole, between instructions of this thread.
                    let ticks = unsafe { read_volatile(&raw const abi::vmfork_ticks) };
                    let mut line = io::Line::new();
                    let _ = writeln!(
                        line,
                        "vmfork-guest: pong n={} boot_nonce={:#x} ticks={} checksum={:#x} clone={} random={:#x} host_time_ms={}",
                        pings,
                        boot_nonce,
                        ticks,
                        checksum,
                        clone_id.map_or(-1, |id| id as i64),
                        random,
                        host_time_ms
                    );
                    // The line and the acknowledgement in one exit: a
                    // clone that prints is up as soon as a quiet one.
                    ack_due = !line.flush_and_ack();
                }
            }
        }
    }
}

/// A restored or cloned guest takes its identity, the host's time and
/// fresh entropy from the clone-info page, when the VMM wrote one.
fn resumed(clone_id: &mut Option<u64>, host_time_ms: &mut u64, rng: &mut u64) {
    if let Some(info) = read_clone_info() {
        *clone_id = Some(info.clone_id);
        *host_time_ms = info.host_unix_ns / 1_000_000;
        *rng = info.entropy.iter().fold(*rng, |acc, e| splitmix(acc ^ e));
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    match info.location() {
        Some(at) => say!(
            "vmfork-guest: panic: {} at {}:{}",
            info.message(),
            at.file(),
            at.line()
        ),
        None => say!("vmfork-guest: panic: {}", info.message()),
    }
    crash(PANIC_GUEST_FATAL)
}
