//! The `uffd` backend: a clone's RAM starts empty and a handler thread
//! fills each page from the sealed template memfd on first touch
//! (userfaultfd, MISSING mode, UFFDIO_COPY). Nothing is copied at restore.
//! With a working set (`--prefetch`), the pages the first clone touched
//! are recorded beside the template and installed into later clones before
//! they resume, so they take no faults for them.
//!
//! The kernel ABI is used directly (linux/userfaultfd.h, x86_64): the
//! userfaultfd crate's bindings need libclang at build time.
//!
//! A page server that dies must never let its clone run on: closing a
//! userfaultfd unregisters its range, and the kernel then fills every later
//! fault there with a zero page, so the guest would silently run on wrong
//! memory. The userfaultfd therefore stays open until the clone's memory is
//! unmapped, whatever happens to the handler thread (an error or a panic
//! included), and a dead handler stops its clone with
//! [`StopReason::PageServerDied`].
//!
//! A stopped clone's vCPUs must still get out of the faults they wait in,
//! and a kick alone does not do it on this host (PVM, 6.18): KVM's shadow
//! paging reads guest page tables with a kernel-mode user access, and for
//! a kernel-mode fault a pending non-fatal signal only makes the kernel
//! retry the userfault at once, so the kicked vCPU spins in the kernel
//! until its page arrives (seen in tests/faults.rs; VMX/SVM with EPT/NPT
//! fault through get_user_pages, which does return on a signal). So once a
//! clone is stopped because of its page server, every page it still lacks
//! is copied in from the template ([`PageServerLink::release_waiters`]):
//! the vCPUs wake on correct memory, never on zero pages, and leave at the
//! kick.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::fault_inject::{HandlerFault, Injection};
use vmfork_machine::boot::layout::CLONE_INFO_START;
use vmfork_machine::control::{StopLatch, StopReason};
use vmfork_machine::error::{Error, Result};

const PAGE: u64 = 4096;
const UFFD_API: u64 = 0xaa;
const UFFDIO_API: libc::c_ulong = 0xc018_aa3f;
const UFFDIO_REGISTER: libc::c_ulong = 0xc020_aa00;
const UFFDIO_COPY: libc::c_ulong = vmfork_isolation::ioctls::UFFDIO_COPY as libc::c_ulong;
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

/// How a clone's page server reports its own death to the clone: the
/// handler starts before the clone's machine (and its [`StopLatch`]) exists,
/// so a death before [`PageServerLink::bind`] is kept and applied then.
#[derive(Default)]
pub struct PageServerLink {
    state: Mutex<LinkState>,
    rescue: std::sync::OnceLock<Rescue>,
}

/// What [`PageServerLink::release_waiters`] needs: the clone's userfaultfd,
/// its regions and the template's pages.
struct Rescue {
    uffd: Arc<OwnedFd>,
    source: Arc<PageSource>,
    regions: Regions,
}

#[derive(Default)]
struct LinkState {
    latch: Option<StopLatch>,
    death: Option<String>,
}

impl PageServerLink {
    fn lock(&self) -> std::sync::MutexGuard<'_, LinkState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Connects the clone's stop latch; stops it at once if its page
    /// server already died.
    pub fn bind(&self, latch: StopLatch) {
        let mut s = self.lock();
        if let Some(why) = &s.death {
            latch.stop(StopReason::PageServerDied(why.clone()));
        }
        s.latch = Some(latch);
    }

    /// The handler ended abnormally: stop the clone (now, or when bound),
    /// then let its vCPUs out of their faults.
    fn report(&self, why: String) {
        tracing::warn!("userfaultfd page server died: {why}");
        {
            let mut s = self.lock();
            if let Some(latch) = &s.latch {
                latch.stop(StopReason::PageServerDied(why.clone()));
            }
            s.death = Some(why);
        }
        if let Err(e) = self.release_waiters() {
            tracing::warn!("cannot release the clone's faulting vCPUs: {e}");
        }
    }

    /// For a clone that is being stopped (its page server died, or stalled
    /// past the owner's deadline): copies every page it still lacks in from
    /// the template, which wakes every thread waiting in a fault, on the
    /// template's data (see the module comment for why a kick is not
    /// enough). Fills the clone's whole RAM, so it is only for failures.
    pub fn release_waiters(&self) -> std::result::Result<(), String> {
        let Some(r) = self.rescue.get() else {
            return Ok(());
        };
        for &(host, len, base) in &r.regions {
            let mut at = 0;
            while at < len {
                let mut copy = UffdioCopy {
                    dst: host + at,
                    // SAFETY: `base + at .. base + len` lies in the source
                    // mapping, which covers every region's file span.
                    src: unsafe { r.source.addr.add((base + at) as usize) } as u64,
                    len: len - at,
                    mode: 0,
                    copy: 0,
                };
                // SAFETY: UFFDIO_COPY with a valid struct into a range this
                // uffd registered; it copies up to the first present page.
                let ret = unsafe { libc::ioctl(r.uffd.as_raw_fd(), UFFDIO_COPY, &mut copy) };
                if ret == 0 {
                    break;
                }
                let e = std::io::Error::last_os_error();
                at += match e.raw_os_error() {
                    // Copied `copy` bytes, then met a present page.
                    Some(libc::EAGAIN) if copy.copy > 0 => copy.copy as u64,
                    // This page is already there: skip it.
                    Some(libc::EEXIST) => PAGE,
                    _ => return Err(format!("UFFDIO_COPY at {:#x}: {e}", host + at)),
                };
            }
        }
        Ok(())
    }
}

/// How long dropping a guard waits for its handler thread before leaving
/// it behind (a stalled handler must not hang the clone's teardown).
const HANDLER_JOIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Keeps a clone's fault handler running; dropping it (after the clone's
/// memory is unmapped) stops the handler and closes the userfaultfd.
pub struct UffdGuard {
    stop: EventFd,
    handler: Option<JoinHandle<()>>,
    /// Held here, not only by the handler, so the range stays registered
    /// (faults wait, never zero-filled) even after the handler died.
    _uffd: Arc<OwnedFd>,
}

impl Drop for UffdGuard {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        let Some(h) = self.handler.take() else {
            return;
        };
        let deadline = Instant::now() + HANDLER_JOIN_TIMEOUT;
        while !h.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        if h.is_finished() {
            let _ = h.join();
        } else {
            // It holds only its Arc of the (now unregistered) userfaultfd,
            // closed whenever it ends.
            tracing::warn!("a stalled userfaultfd handler did not stop; leaving it behind");
        }
    }
}

/// (host address, length, file offset) of each RAM region.
type Regions = Vec<(u64, u64, u64)>;

/// Why a page could not be copied in.
enum CopyError {
    /// The clone's address space changed under the copy (its memory is
    /// being unmapped, or its process exits): nothing to serve any more.
    Gone,
    Failed(String),
}

fn copy_page(
    uffd: i32,
    source: &PageSource,
    dst: u64,
    file_offset: u64,
) -> std::result::Result<(), CopyError> {
    if file_offset + PAGE > source.len as u64 {
        return Err(CopyError::Failed(format!(
            "page at file offset {file_offset:#x} is past the template's memory"
        )));
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
    // uffd registered.
    if unsafe { libc::ioctl(uffd, UFFDIO_COPY, &mut copy) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        // Another fault (or the prefetch) installed it first.
        Some(libc::EEXIST) => Ok(()),
        // userfaultfd(2): the layout changed under the copy, or the
        // faulting process is gone.
        Some(libc::EAGAIN | libc::ENOENT | libc::ESRCH) => Err(CopyError::Gone),
        _ => Err(CopyError::Failed(format!(
            "UFFDIO_COPY of the page at file offset {file_offset:#x}: {e}"
        ))),
    }
}

/// What one clone's handler serves faults with.
pub struct PageServer {
    pub source: Arc<PageSource>,
    /// Offsets of faulted pages are appended here when given (the first
    /// clone of a `--prefetch` run).
    pub record: Option<Arc<Mutex<Vec<u64>>>>,
    /// Pages served, over all clones.
    pub faults: Arc<AtomicU64>,
    pub link: Arc<PageServerLink>,
    /// TEST HOOK (`VMFORK_FAULT_INJECT`): fail on purpose.
    pub injection: Option<Injection>,
}

/// USERFAULTFD_IOC_NEW: _IO(0xAA, 0x00) on /dev/userfaultfd.
const USERFAULTFD_IOC_NEW: libc::c_ulong = 0xaa00;

/// A new userfaultfd that may handle faults raised inside the kernel (KVM
/// touching guest memory). /dev/userfaultfd grants that to whoever may
/// open it, so an unprivileged (or jailed) VMM needs only that node; the
/// userfaultfd(2) syscall needs CAP_SYS_PTRACE for it unless
/// vm.unprivileged_userfaultfd is 1.
fn new_userfaultfd() -> Result<OwnedFd> {
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
    if let Ok(dev) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/userfaultfd")
    {
        // SAFETY: the ioctl takes the flags by value and returns a new fd.
        let fd = unsafe { libc::ioctl(dev.as_raw_fd(), USERFAULTFD_IOC_NEW, flags) };
        if fd >= 0 {
            // SAFETY: a fresh fd nobody else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
    // SAFETY: plain syscall; the fd is checked and owned below.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
    if fd < 0 {
        return Err(uffd_err(
            "create (needs /dev/userfaultfd access or CAP_SYS_PTRACE)",
        ));
    }
    // SAFETY: a fresh fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Registers `mem` (anonymous, untouched) with a new userfaultfd, installs
/// `prefetch` pages and the clone-info page now, and starts a handler
/// serving the rest on demand.
pub fn attach(mem: &GuestMemoryMmap, prefetch: &[u64], server: PageServer) -> Result<UffdGuard> {
    let uffd = Arc::new(new_userfaultfd()?);
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
    // The VMM writes the clone-info page from its own thread right after
    // this; installed here, that write can never wait on the handler.
    let clone_info =
        mem.get_host_address(GuestAddress(CLONE_INFO_START))
            .map_err(|e| Error::GuestMemory(format!("clone-info page: {e}")))? as u64;
    let clone_info_offset = regions
        .iter()
        .find(|&&(host, len, _)| clone_info >= host && clone_info < host + len)
        .map(|&(host, _, base)| base + (clone_info - host));
    for &offset in prefetch.iter().chain(clone_info_offset.iter()) {
        if let Some(&(host, _, base)) = regions
            .iter()
            .find(|&&(_, len, base)| offset >= base && offset < base + len)
        {
            let dst = host + (offset - base);
            if let Err(CopyError::Failed(why)) =
                copy_page(uffd.as_raw_fd(), &server.source, dst, offset)
            {
                return Err(Error::GuestMemory(format!("userfaultfd prefetch: {why}")));
            }
        }
    }
    let _ = server.link.rescue.set(Rescue {
        uffd: uffd.clone(),
        source: server.source.clone(),
        regions: regions.clone(),
    });
    let stop = EventFd::new(libc::EFD_NONBLOCK)?;
    let stop_fd = stop.try_clone()?;
    let handler_uffd = uffd.clone();
    let handler = std::thread::Builder::new()
        .name("uffd".into())
        .spawn(move || {
            // Filtered before it reads a single fault message; a handler
            // that cannot be filtered ends like one that died.
            if let Err(e) =
                vmfork_isolation::seccomp::install(vmfork_isolation::seccomp::ThreadKind::Uffd)
            {
                server.link.report(e.to_string());
                return;
            }
            // A panic is caught here so that it, like an error, ends in a
            // clear stop of the clone rather than an unwound thread.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                serve(&handler_uffd, &stop_fd, &regions, &server)
            }));
            let why = match outcome {
                Ok(Ok(())) => return,
                Ok(Err(why)) => why,
                Err(payload) => {
                    format!("its handler thread hit a panic: {}", panic_text(&*payload))
                }
            };
            server.link.report(why);
        })?;
    Ok(UffdGuard {
        stop,
        handler: Some(handler),
        _uffd: uffd,
    })
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(no message)".into())
}

/// Waits until one of `fds` is ready; Err on a poll error.
fn wait_readable(fds: &mut [libc::pollfd]) -> std::result::Result<(), String> {
    loop {
        // SAFETY: poll on valid fds in a caller-owned slice.
        if unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) } >= 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(format!("poll: {e}"));
        }
    }
}

/// TEST HOOK: how an injected failure ends the handler.
fn inject(injection: Injection, served: u64, stop: &EventFd) -> std::result::Result<(), String> {
    let why = format!(
        "injected at fault {} ({})",
        served + 1,
        super::fault_inject::ENV
    );
    match injection.fault {
        HandlerFault::Exit => Err(format!("it exited abnormally: {why}")),
        // resume_unwind skips the panic hook, so stderr stays one line.
        HandlerFault::Panic => std::panic::resume_unwind(Box::new(why)),
        HandlerFault::Stall => {
            // Alive but serving nothing, until told to stop.
            let mut fds = [libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            wait_readable(&mut fds)
        }
    }
}

/// Serves faults until `stop` is signalled (Ok) or something fails (Err,
/// with the reason).
fn serve(
    uffd: &OwnedFd,
    stop: &EventFd,
    regions: &Regions,
    server: &PageServer,
) -> std::result::Result<(), String> {
    let mut msgs = [UffdMsg {
        event: 0,
        _reserved: [0; 7],
        flags: 0,
        address: 0,
        _feat: 0,
    }; 16];
    let mut served = 0u64;
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
        wait_readable(&mut fds)?;
        if fds[1].revents != 0 {
            return Ok(());
        }
        if fds[0].revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
            return Err(format!(
                "its userfaultfd reported an error (poll events {:#x})",
                fds[0].revents
            ));
        }
        // SAFETY: reading whole uffd_msg records into a local array.
        let n = unsafe {
            libc::read(
                uffd.as_raw_fd(),
                msgs.as_mut_ptr().cast(),
                std::mem::size_of_val(&msgs),
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN | libc::EINTR) => continue,
                _ => return Err(format!("reading fault messages: {e}")),
            }
        }
        if n == 0 {
            return Err("its userfaultfd returned end of file".into());
        }
        let count = n as usize / std::mem::size_of::<UffdMsg>();
        for msg in &msgs[..count] {
            if msg.event != UFFD_EVENT_PAGEFAULT {
                continue;
            }
            if let Some(injection) = server.injection.filter(|i| served >= i.after) {
                return inject(injection, served, stop);
            }
            let page = msg.address & !(PAGE - 1);
            let Some(&(host, _, base)) = regions
                .iter()
                .find(|&&(host, len, _)| page >= host && page < host + len)
            else {
                // Left unserved, the faulting thread would wait forever.
                return Err(format!("a fault at {page:#x}, outside the clone's RAM"));
            };
            let offset = base + (page - host);
            match copy_page(uffd.as_raw_fd(), &server.source, page, offset) {
                Ok(()) => {}
                Err(CopyError::Gone) => continue,
                Err(CopyError::Failed(why)) => return Err(why),
            }
            served += 1;
            server.faults.fetch_add(1, Ordering::Relaxed);
            if let Some(rec) = &server.record {
                if let Ok(mut r) = rec.lock() {
                    r.push(offset);
                }
            }
        }
    }
}
