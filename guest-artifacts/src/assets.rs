//! Inputs compiled into the builder: the kernel config fragment, the kernel
//! patches and the rootfs `/init`. Embedding them ties a binary to exactly
//! one set of inputs, so the cache key it computes cannot drift from what it
//! builds, and the binary works from any directory.

/// Where Debian's `linux-source-6.12` package puts the source.
pub const LINUX_SOURCE_TARBALL: &str = "/usr/src/linux-source-6.12.tar.xz";

/// `busybox-static`'s binary (Debian merges /bin into /usr/bin).
pub const BUSYBOX: &str = "/bin/busybox";

pub const LINUX_CONFIG_NAME: &str = "vmfork-6.12.config";
pub const LINUX_CONFIG: &str = include_str!("../linux/vmfork-6.12.config");

/// A kernel patch, applied with `patch -p1` in list order.
pub struct Patch {
    pub name: &'static str,
    pub contents: &'static [u8],
}

/// Every file in guest-artifacts/linux/patches/, in name order. A unit test
/// fails if this list and the directory disagree.
pub const LINUX_PATCHES: &[Patch] = &[Patch {
    name: "0001-x86-e820-register-persistent-memory-without-PCI.patch",
    contents: include_bytes!(
        "../linux/patches/0001-x86-e820-register-persistent-memory-without-PCI.patch"
    ),
}];

/// The guest agent (agent/), static, built by build.rs: `/init` execs it.
pub const AGENT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/vmfork-agent"));

/// The guest's PID 1, a busybox shell script, installed as /.vmfork/init.
pub const INIT_SCRIPT: &[u8] = include_bytes!("../rootfs/init");

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn patch_list_matches_patches_directory() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("linux/patches");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .expect("read patches dir")
            .map(|e| {
                e.expect("dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .filter(|n| n.ends_with(".patch"))
            .collect();
        on_disk.sort();
        let listed: Vec<&str> = LINUX_PATCHES.iter().map(|p| p.name).collect();
        assert_eq!(on_disk, listed, "assets::LINUX_PATCHES is out of date");
        for p in LINUX_PATCHES {
            let bytes = std::fs::read(dir.join(p.name)).expect("read patch");
            assert_eq!(
                bytes, p.contents,
                "{} differs from the embedded copy",
                p.name
            );
        }
    }

    #[test]
    fn init_is_a_busybox_script() {
        assert!(INIT_SCRIPT.starts_with(b"#!/.vmfork/bin/busybox sh\n"));
        let text = std::str::from_utf8(INIT_SCRIPT).expect("utf-8");
        assert!(text.contains("vmfork-linux: init started"));
        assert!(text.contains("vmfork-linux: READY"));
    }
}
