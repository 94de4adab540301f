//! Mounting containerd's rootfs mounts on `BUNDLE/rootfs`.
//!
//! The `containerd-shim` crate's `mount_rootfs` forks and waits for the
//! child through its SIGCHLD reaper, which this shim turns off (it waits
//! for its own children), so the shim mounts with mount(2) itself: the
//! options that are mount flags become flags, the rest (overlay's
//! `lowerdir=`, `upperdir=`, `workdir=`, ...) the data string.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// mount(8)-style options that are flags: (name, flags, clears them).
const FLAGS: &[(&str, libc::c_ulong, bool)] = &[
    ("ro", libc::MS_RDONLY, false),
    ("rw", libc::MS_RDONLY, true),
    ("bind", libc::MS_BIND, false),
    ("rbind", libc::MS_BIND | libc::MS_REC, false),
    ("nosuid", libc::MS_NOSUID, false),
    ("suid", libc::MS_NOSUID, true),
    ("nodev", libc::MS_NODEV, false),
    ("dev", libc::MS_NODEV, true),
    ("noexec", libc::MS_NOEXEC, false),
    ("exec", libc::MS_NOEXEC, true),
    ("noatime", libc::MS_NOATIME, false),
    ("atime", libc::MS_NOATIME, true),
    ("relatime", libc::MS_RELATIME, false),
    ("strictatime", libc::MS_STRICTATIME, false),
    ("sync", libc::MS_SYNCHRONOUS, false),
    ("async", libc::MS_SYNCHRONOUS, true),
    ("defaults", 0, false),
];

/// The flags and the data string of a mount's options.
pub fn split_options(options: &[String]) -> (libc::c_ulong, String) {
    let mut flags: libc::c_ulong = 0;
    let mut data = Vec::new();
    for option in options {
        match FLAGS.iter().find(|(name, _, _)| name == option) {
            Some((_, bits, true)) => flags &= !bits,
            Some((_, bits, false)) => flags |= bits,
            None => data.push(option.as_str()),
        }
    }
    (flags, data.join(","))
}

fn cstring(bytes: &[u8]) -> std::io::Result<CString> {
    CString::new(bytes).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
}

/// mount(2) of `source` (type `fs_type`) on `target` with `options`; a
/// read-only bind mount is remounted read-only, as mount(8) does.
pub fn mount(
    fs_type: &str,
    source: &str,
    options: &[String],
    target: &Path,
) -> std::io::Result<()> {
    let (flags, data) = split_options(options);
    let fs_type = cstring(fs_type.as_bytes())?;
    let source = cstring(source.as_bytes())?;
    let target = cstring(target.as_os_str().as_bytes())?;
    let data = cstring(data.as_bytes())?;
    // SAFETY: every pointer is to a NUL-terminated string that lives until
    // the call returns; mount(2) only reads them.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fs_type.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if flags & libc::MS_BIND != 0 && flags & libc::MS_RDONLY != 0 {
        // SAFETY: as above; source, type and data may be null for a remount.
        let rc = unsafe {
            libc::mount(
                std::ptr::null(),
                target.as_ptr(),
                std::ptr::null(),
                flags | libc::MS_REMOUNT,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_data_are_told_apart() {
        let options: Vec<String> = [
            "index=off",
            "workdir=/w",
            "upperdir=/u",
            "lowerdir=/l",
            "ro",
            "rw",
            "rbind",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (flags, data) = split_options(&options);
        assert_eq!(flags, libc::MS_BIND | libc::MS_REC);
        assert_eq!(data, "index=off,workdir=/w,upperdir=/u,lowerdir=/l");
    }
}
