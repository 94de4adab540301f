//! Which userfaultfd mode serves a clone's lazy pages faster on this host:
//! MISSING faults on anonymous memory answered with `UFFDIO_COPY` from the
//! sealed memfd (what `--backend uffd` does), or MINOR faults on a private
//! mapping of the memfd itself answered with `UFFDIO_CONTINUE` (userfaultfd
//! feature `MINOR_SHMEM`), with plain `MAP_PRIVATE` page faults (the memfd
//! backend, no handler) as the baseline. Each round maps 2048 pages, reads
//! every page and then writes every fourth, as a resuming clone reads more
//! than it writes; a handler thread answers each fault as `--backend uffd`
//! does. Run by scripts/bench-uffd-modes.sh; the last line is JSON.

#![deny(unsafe_op_in_unsafe_fn)]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PAGES: usize = 2048;
const PAGE: usize = 4096;
const ROUNDS: usize = 7;

// linux/userfaultfd.h, x86_64.
const UFFD_API: u64 = 0xaa;
const UFFDIO_API: libc::c_ulong = 0xc018_aa3f;
const UFFDIO_REGISTER: libc::c_ulong = 0xc020_aa00;
const UFFDIO_COPY: libc::c_ulong = 0xc028_aa03;
const UFFDIO_CONTINUE: libc::c_ulong = 0xc020_aa07;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
const UFFDIO_REGISTER_MODE_MINOR: u64 = 4;
const UFFD_FEATURE_MINOR_SHMEM: u64 = 1 << 10;
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    NoHandler,
    Copy,
    Continue,
}

fn fail(what: &str) -> ! {
    eprintln!("uffd_modes: {what}: {}", std::io::Error::last_os_error());
    std::process::exit(1)
}

/// A sealed memfd holding PAGES pages with distinct contents.
fn template() -> OwnedFd {
    // SAFETY: plain syscalls on a descriptor we own; the mapping is
    // written and unmapped before anything else uses the memfd.
    unsafe {
        let fd = libc::memfd_create(c"uffd-modes".as_ptr(), libc::MFD_ALLOW_SEALING);
        if fd < 0 {
            fail("memfd_create");
        }
        let fd = OwnedFd::from_raw_fd(fd);
        if libc::ftruncate(fd.as_raw_fd(), (PAGES * PAGE) as i64) != 0 {
            fail("ftruncate");
        }
        let p = map(libc::MAP_SHARED, fd.as_raw_fd());
        for i in 0..PAGES {
            *p.add(i * PAGE) = i as u8;
        }
        libc::munmap(p.cast(), PAGES * PAGE);
        let seals = libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
        if libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) != 0 {
            fail("sealing");
        }
        fd
    }
}

/// # Safety
/// `fd` is -1 with MAP_ANONYMOUS in `flags`, or a live descriptor.
unsafe fn map(flags: i32, fd: i32) -> *mut u8 {
    // SAFETY: a fresh mapping at a kernel-chosen address (caller's contract
    // on `fd`).
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGES * PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            fd,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        fail("mmap");
    }
    p.cast()
}

/// One round: the time to read every page and write every fourth, and
/// how many faults the handler served.
fn round(mode: Mode, memfd: &OwnedFd, source: *const u8) -> (Duration, u64) {
    // SAFETY: fresh mappings of our own, unmapped at the end of the round
    // after the handler thread has stopped.
    let base = unsafe {
        match mode {
            Mode::Copy => map(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1),
            _ => map(libc::MAP_PRIVATE, memfd.as_raw_fd()),
        }
    };
    let handler = (mode != Mode::NoHandler).then(|| start_handler(mode, base, source));
    let start = Instant::now();
    let mut sum = 0u64;
    for i in 0..PAGES {
        // SAFETY: inside the mapping; a volatile read so it really faults.
        sum += u64::from(unsafe { std::ptr::read_volatile(base.add(i * PAGE)) });
    }
    for i in (0..PAGES).step_by(4) {
        // SAFETY: as above, and the mapping is writable.
        unsafe { std::ptr::write_volatile(base.add(i * PAGE), 1) };
    }
    let elapsed = start.elapsed();
    std::hint::black_box(sum);
    let faults = handler.map_or(0, |(stop, thread)| {
        stop.store(true, Ordering::Relaxed);
        thread.join().unwrap_or(0)
    });
    // SAFETY: our mapping; nothing uses it any more.
    unsafe { libc::munmap(base.cast(), PAGES * PAGE) };
    (elapsed, faults)
}

fn start_handler(
    mode: Mode,
    base: *mut u8,
    source: *const u8,
) -> (Arc<AtomicBool>, std::thread::JoinHandle<u64>) {
    // SAFETY: userfaultfd(2) and its ioctls on the descriptor it returns,
    // with structures laid out as linux/userfaultfd.h.
    let uffd = unsafe {
        let fd = libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) as i32;
        if fd < 0 {
            fail("userfaultfd");
        }
        let uffd = OwnedFd::from_raw_fd(fd);
        let features = if mode == Mode::Continue {
            UFFD_FEATURE_MINOR_SHMEM
        } else {
            0
        };
        let mut api = [UFFD_API, features, 0u64];
        if libc::ioctl(fd, UFFDIO_API, api.as_mut_ptr()) != 0 {
            fail("UFFDIO_API (MINOR_SHMEM needs Linux 5.14)");
        }
        let register_mode = if mode == Mode::Continue {
            UFFDIO_REGISTER_MODE_MINOR
        } else {
            UFFDIO_REGISTER_MODE_MISSING
        };
        let mut reg = [base as u64, (PAGES * PAGE) as u64, register_mode, 0u64];
        if libc::ioctl(fd, UFFDIO_REGISTER, reg.as_mut_ptr()) != 0 {
            fail("UFFDIO_REGISTER");
        }
        uffd
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (base, source, flag) = (base as u64, source as u64, stop.clone());
    let thread = std::thread::spawn(move || {
        let mut served = 0u64;
        let mut msg = [0u8; 32];
        while !flag.load(Ordering::Relaxed) {
            let mut poll = libc::pollfd {
                fd: uffd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll and read into a buffer of uffd_msg's size.
            let n = unsafe {
                libc::poll(&mut poll, 1, 10);
                libc::read(uffd.as_raw_fd(), msg.as_mut_ptr().cast(), msg.len())
            };
            if n != msg.len() as isize || msg[0] != UFFD_EVENT_PAGEFAULT {
                continue;
            }
            let address = u64::from_le_bytes(msg[16..24].try_into().unwrap_or([0; 8]));
            let page = address & !(PAGE as u64 - 1);
            // SAFETY: UFFDIO_COPY / UFFDIO_CONTINUE of one page inside the
            // registered range, from the template's read-only mapping.
            let rc = unsafe {
                match mode {
                    Mode::Copy => {
                        let mut copy = [page, source + (page - base), PAGE as u64, 0, 0];
                        libc::ioctl(uffd.as_raw_fd(), UFFDIO_COPY, copy.as_mut_ptr())
                    }
                    _ => {
                        let mut cont = [page, PAGE as u64, 0, 0];
                        libc::ioctl(uffd.as_raw_fd(), UFFDIO_CONTINUE, cont.as_mut_ptr())
                    }
                }
            };
            if rc == 0 {
                served += 1;
            }
        }
        served
    });
    (stop, thread)
}

fn main() {
    let memfd = template();
    // SAFETY: a read-only view of the sealed memfd, the copy source.
    let source = unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            PAGES * PAGE,
            libc::PROT_READ,
            libc::MAP_SHARED,
            memfd.as_raw_fd(),
            0,
        );
        if p == libc::MAP_FAILED {
            fail("mapping the template");
        }
        p as *const u8
    };
    let mut json = Vec::new();
    println!("{PAGES} pages per round, read all then write every 4th; median of {ROUNDS} rounds");
    for (name, mode) in [
        ("memfd, no handler", Mode::NoHandler),
        ("MISSING + UFFDIO_COPY", Mode::Copy),
        ("MINOR + UFFDIO_CONTINUE", Mode::Continue),
    ] {
        let mut times: Vec<Duration> = Vec::new();
        let mut faults = 0;
        for _ in 0..ROUNDS {
            let (t, f) = round(mode, &memfd, source);
            times.push(t);
            faults = f;
        }
        times.sort();
        let per_page_us = times[ROUNDS / 2].as_secs_f64() * 1e6 / PAGES as f64;
        println!("{name:26} {per_page_us:8.2} us per page, {faults} handler faults per round");
        let key = match mode {
            Mode::NoHandler => "memfd_us_per_page",
            Mode::Copy => "copy_us_per_page",
            Mode::Continue => "continue_us_per_page",
        };
        json.push(format!("\"{key}\": {per_page_us:.2}"));
    }
    println!("{{{}}}", json.join(", "));
}
