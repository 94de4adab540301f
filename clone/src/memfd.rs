//! A template's RAM loaded once into a sealed memfd. Clones map it
//! `MAP_PRIVATE`: pages they never write stay shared with every other
//! clone through the memfd's page cache, and a written page is copied for
//! that clone only. The seals (no write, shrink or grow, and no further
//! seals) make it impossible for anyone, clones included, to change the
//! template afterwards.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use vmfork_snapshot::state::MemoryState;

use vmfork_machine::error::{Error, Result};
use vmfork_template::LoadedTemplate;

pub struct SealedMemory {
    /// Shared by every clone's mapping, so clones cost no extra fds.
    file: Arc<File>,
    layout: MemoryState,
}

const COPY_CHUNK: usize = 1 << 20;

fn io_err(what: &str) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::GuestMemory(format!("{what}: {e}"))
}

/// Copies only the data extents of `src` (SEEK_DATA/SEEK_HOLE), so a sparse
/// template memory file loads in time proportional to what it holds.
fn copy_data_extents(src: &File, dst: &File, len: u64) -> Result<()> {
    let mut buf = vec![0u8; COPY_CHUNK];
    let mut offset = 0i64;
    let end = len as i64;
    while offset < end {
        // SAFETY: lseek on an fd we own; no memory is touched.
        let data = unsafe { libc::lseek(src.as_raw_fd(), offset, libc::SEEK_DATA) };
        if data < 0 {
            break; // ENXIO: no data after `offset`
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(src.as_raw_fd(), data, libc::SEEK_HOLE) }.min(end);
        let mut at = data;
        while at < hole {
            let n = ((hole - at) as usize).min(COPY_CHUNK);
            src.read_exact_at(&mut buf[..n], at as u64)
                .map_err(io_err("reading template memory"))?;
            dst.write_all_at(&buf[..n], at as u64)
                .map_err(io_err("filling the template memfd"))?;
            at += n as i64;
        }
        offset = hole;
    }
    Ok(())
}

impl SealedMemory {
    pub fn load(template: &LoadedTemplate) -> Result<SealedMemory> {
        let root = &template.memory_layers[0];
        let size = root.layout.file_size();
        // SAFETY: memfd_create with a static NUL-terminated name; the fd is
        // checked and owned by the File below.
        let fd = unsafe {
            libc::memfd_create(
                c"vmfork-template".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        if fd < 0 {
            return Err(io_err("memfd_create")(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size)
            .map_err(io_err("sizing the template memfd"))?;
        // The files the template load opened and checked (regular, of the
        // size the state needs), not whatever the paths name now.
        copy_data_extents(&root.file, &file, size)?;
        for layer in &template.memory_layers[1..] {
            let diff = &layer.file;
            for &(offset, len) in &layer.layout.dirty_ranges {
                let mut buf = vec![0u8; len as usize];
                diff.read_exact_at(&mut buf, offset)
                    .map_err(io_err("reading diff memory"))?;
                file.write_all_at(&buf, offset)
                    .map_err(io_err("applying a diff"))?;
            }
        }
        let seals =
            libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        // SAFETY: fcntl on our own fd with an integer argument.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
            return Err(io_err("sealing the template memfd")(
                std::io::Error::last_os_error(),
            ));
        }
        Ok(SealedMemory {
            file: Arc::new(file),
            layout: template.state.memory.clone(),
        })
    }

    /// Adopts a memfd received from a template holder, after checking that
    /// it is sealed against writes and resizing and has the template's size.
    pub fn from_holder(file: File, template: &LoadedTemplate) -> Result<SealedMemory> {
        // SAFETY: fcntl query on an fd we own.
        let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
        let needed = libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
        if seals < 0 || seals & needed != needed {
            return Err(Error::GuestMemory(format!(
                "the holder's memfd is not sealed (seals {seals:#x}); refusing to share it"
            )));
        }
        let layout = template.state.memory.clone();
        let size = file.metadata().map_err(io_err("memfd size"))?.len();
        if size != layout.file_size() {
            return Err(Error::GuestMemory(format!(
                "the holder's memfd is {size} bytes, the template needs {}",
                layout.file_size()
            )));
        }
        Ok(SealedMemory {
            file: Arc::new(file),
            layout,
        })
    }

    pub fn seals(&self) -> i32 {
        // SAFETY: fcntl query on our own fd.
        unsafe { libc::fcntl(self.file.as_raw_fd(), libc::F_GET_SEALS) }
    }

    pub fn as_file(&self) -> &File {
        &self.file
    }

    /// The memfd, as a restore maps it ([`vmfork_template::RamSource::Memfd`]).
    pub fn file(&self) -> &Arc<File> {
        &self.file
    }

    pub fn shared_file(&self) -> Arc<File> {
        self.file.clone()
    }

    pub fn layout(&self) -> &MemoryState {
        &self.layout
    }
}
