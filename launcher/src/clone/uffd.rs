//! The `uffd` backend: a clone's RAM starts empty and a handler thread
//! fills each page from the sealed template memfd on first touch
//! (userfaultfd, MISSING mode, UFFDIO_COPY). Nothing is copied at restore.
//! With a working set (`--prefetch`), the pages the first clone touched
//! are recorded beside the template and installed into later clones before
//! they resume, so they take no faults for them.
//!
//! The kernel ABI is used directly (linux/userfaultfd.h, x86_64): the
//! userfaultfd crate's bindings need libclang at build time.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::error::{Error, Result};

const PAGE: u64 = 4096;
const UFFD_API: u64 = 0xaa;
const UFFDIO_API: libc::c_ulong = 0xc018_aa3f;
const UFFDIO_REGISTER: libc::c_ulong = 0xc020_aa00;
const UFFDIO_COPY: libc::c_ulong = 0xc028_aa03;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioRegister {
    start: u64,
    len: u64,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

/// struct uffd_msg: event byte, padding, then for page faults the flags and
/// the faulting address.
#[repr(C)]
#[derive(Clone, Copy)]
struct UffdMsg {
    event: u8,
    _reserved: [u8; 7],
    flags: u64,
    address: u64,
    _feat: u64,
}

fn uffd_err(what: &str) -> Error {
    Error::GuestMemory(format!(
        "userfaultfd {what}: {}",
        std::io::Error::last_os_error()
    ))
}

/// A read-only shared view of the sealed template memfd: the source of
/// every page a uffd clone is given.
pub struct PageSource {
    addr: *const u8,
    len: usize,
}

// SAFETY: a read-only mapping of sealed (immutable) memory.
unsafe impl Send for PageSource {}
// SAFETY: as above; concurrent reads of immutable memory cannot race.
unsafe impl Sync for PageSource {}

impl PageSource {
    pub fn new(file: &std::fs::File, len: u64) -> Result<PageSource> {
        // SAFETY: a fresh shared read-only mapping of a file we hold,
        // checked below and unmapped on drop.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(uffd_err("source mapping"));
        }
        Ok(PageSource {
            addr: addr as *const u8,
            len: len as usize,
        })
    }
}

impl Drop for PageSource {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping made in `new`.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

/// Keeps a clone's fault handler running; dropping it stops and joins the
/// handler (after the clone's memory is gone).
pub struct UffdGuard {
    stop: EventFd,
    handler: Option<JoinHandle<()>>,
}

impl Drop for UffdGuard {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(h) = self.handler.take() {
            let _ = h.join();
        }
    }
}

/// (host address, length, file offset) of each RAM region.
type Regions = Vec<(u64, u64, u64)>;

fn copy_page(uffd: i32, source: &PageSource, dst: u64, file_offset: u64) -> bool {
    if file_offset + PAGE > source.len as u64 {
        return false;
    }
    let mut copy = UffdioCopy {
        dst,
        // SAFETY: in bounds of the source mapping (checked above).
        src: unsafe { source.addr.add(file_offset as usize) } as u64,
        len: PAGE,
        mode: 0,
        copy: 0,
    };
    // SAFETY: UFFDIO_COPY with a valid struct; dst lies in a range this
    // uffd registered. EEXIST (another fault won the race) is success.
    let ret = unsafe { libc::ioctl(uffd, UFFDIO_COPY, &mut copy) };
    ret == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EEXIST)
}

/// Registers `mem` (anonymous, untouched) with a new userfaultfd, installs
/// `prefetch` pages now, and starts a handler serving the rest on demand.
/// Offsets of faulted pages are appended to `record` when given.
pub fn attach(
    mem: &GuestMemoryMmap,
    source: Arc<PageSource>,
    prefetch: &[u64],
    record: Option<Arc<Mutex<Vec<u64>>>>,
    faults: Arc<AtomicU64>,
) -> Result<UffdGuard> {
    // SAFETY: plain syscall; the fd is checked and owned below.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
    if fd < 0 {
        return Err(uffd_err(
            "create (needs /dev/userfaultfd access or CAP_SYS_PTRACE)",
        ));
    }
    // SAFETY: a fresh fd nobody else owns.
    let uffd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut api = UffdioApi {
        api: UFFD_API,
        features: 0,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API handshake with a valid struct.
    if unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_API, &mut api) } != 0 {
        return Err(uffd_err("API handshake"));
    }
    let mut regions: Regions = Vec::new();
    let mut file_offset = 0;
    for region in mem.iter() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|e| Error::GuestMemory(e.to_string()))? as u64;
        let mut reg = UffdioRegister {
            start: host,
            len: region.len(),
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        // SAFETY: registering a live anonymous mapping owned by `mem`.
        if unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_REGISTER, &mut reg) } != 0 {
            return Err(uffd_err("register"));
        }
        regions.push((host, region.len(), file_offset));
        file_offset += region.len();
    }
    for &offset in prefetch {
        if let Some(&(host, _, base)) = regions
            .iter()
            .find(|&&(_, len, base)| offset >= base && offset < base + len)
        {
            copy_page(uffd.as_raw_fd(), &source, host + (offset - base), offset);
        }
    }
    let stop = EventFd::new(libc::EFD_NONBLOCK)?;
    let stop_fd = stop.try_clone()?;
    let handler = std::thread::Builder::new()
        .name("uffd".into())
        .spawn(move || serve(uffd, stop_fd, source, regions, faults, record))?;
    Ok(UffdGuard {
        stop,
        handler: Some(handler),
    })
}

fn serve(
    uffd: OwnedFd,
    stop: EventFd,
    source: Arc<PageSource>,
    regions: Regions,
    faults: Arc<AtomicU64>,
    record: Option<Arc<Mutex<Vec<u64>>>>,
) {
    let mut msgs = [UffdMsg {
        event: 0,
        _reserved: [0; 7],
        flags: 0,
        address: 0,
        _feat: 0,
    }; 16];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: uffd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: poll on two valid fds in a local array.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        // SAFETY: reading whole uffd_msg records into a local array.
        let n = unsafe {
            libc::read(
                uffd.as_raw_fd(),
                msgs.as_mut_ptr().cast(),
                std::mem::size_of_val(&msgs),
            )
        };
        if n <= 0 {
            continue;
        }
        let count = n as usize / std::mem::size_of::<UffdMsg>();
        for msg in &msgs[..count] {
            if msg.event != UFFD_EVENT_PAGEFAULT {
                continue;
            }
            let page = msg.address & !(PAGE - 1);
            let Some(&(host, _, base)) = regions
                .iter()
                .find(|&&(host, len, _)| page >= host && page < host + len)
            else {
                continue;
            };
            let offset = base + (page - host);
            if copy_page(uffd.as_raw_fd(), &source, page, offset) {
                faults.fetch_add(1, Ordering::Relaxed);
                if let Some(rec) = &record {
                    if let Ok(mut r) = rec.lock() {
                        r.push(offset);
                    }
                }
            }
        }
    }
}
