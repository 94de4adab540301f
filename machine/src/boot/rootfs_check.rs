//! A look at a rootfs image's superblock before the guest boots: the VMM
//! maps any file as persistent memory, and a guest given something that is
//! not an ext4 filesystem with 4 KiB blocks only fails late and far away
//! (no root, or "unsupported blocksize for DAX", on the guest console).
//!
//! The ext4 superblock starts at byte 1024; `s_magic` is the little-endian
//! u16 at offset 56 in it, `s_log_block_size` the u32 at offset 24 (block
//! size = 1024 << it). See the kernel's Documentation/filesystems/ext4/super.rst.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

const SUPERBLOCK_AT: u64 = 1024;
const MAGIC_AT: usize = 56;
const EXT4_MAGIC: u16 = 0xEF53;
const LOG_BLOCK_SIZE_AT: usize = 24;
/// DAX needs the block size to equal the page size: 1024 << 2.
const DAX_LOG_BLOCK_SIZE: u32 = 2;

/// Checks that `file` holds an ext4 filesystem with 4 KiB blocks. The
/// error is one line saying what is wrong and how to get a good image.
pub fn check_ext4(file: &File) -> io::Result<()> {
    let mut sb = [0u8; 64];
    match file.read_exact_at(&mut sb, SUPERBLOCK_AT) {
        Ok(()) => check_superblock(&sb),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(not_ext4()),
        Err(e) => Err(e),
    }
}

/// Writes the two superblock fields [`check_ext4`] reads into `image`
/// (at least 2 KiB): for tests that need an image the VMM accepts without
/// a filesystem behind it.
pub fn stamp_superblock(image: &mut [u8]) {
    let at = SUPERBLOCK_AT as usize;
    image[at + LOG_BLOCK_SIZE_AT..at + LOG_BLOCK_SIZE_AT + 4]
        .copy_from_slice(&DAX_LOG_BLOCK_SIZE.to_le_bytes());
    image[at + MAGIC_AT..at + MAGIC_AT + 2].copy_from_slice(&EXT4_MAGIC.to_le_bytes());
}

/// The check on the superblock's first 64 bytes.
pub fn check_superblock(sb: &[u8; 64]) -> io::Result<()> {
    let magic = u16::from_le_bytes([sb[MAGIC_AT], sb[MAGIC_AT + 1]]);
    if magic != EXT4_MAGIC {
        return Err(not_ext4());
    }
    let at = LOG_BLOCK_SIZE_AT;
    let log = u32::from_le_bytes([sb[at], sb[at + 1], sb[at + 2], sb[at + 3]]);
    if log != DAX_LOG_BLOCK_SIZE {
        let size = 1024u64
            .checked_shl(log)
            .filter(|_| log < 32)
            .map_or_else(|| format!("2^(10+{log})"), |s| s.to_string());
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "its ext4 block size is {size} bytes, but DAX needs 4096 \
                 (mkfs.ext4 -b 4096, or vmfork rootfs build)"
            ),
        ));
    }
    Ok(())
}

fn not_ext4() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "not an ext4 filesystem (no superblock magic 0xEF53 at byte 1080); \
         build one with `vmfork rootfs build DIR --out IMG`",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn superblock(magic: u16, log_block_size: u32) -> [u8; 64] {
        let mut sb = [0u8; 64];
        sb[MAGIC_AT..MAGIC_AT + 2].copy_from_slice(&magic.to_le_bytes());
        sb[LOG_BLOCK_SIZE_AT..LOG_BLOCK_SIZE_AT + 4].copy_from_slice(&log_block_size.to_le_bytes());
        sb
    }

    #[test]
    fn ext4_with_4k_blocks_passes() {
        assert!(check_superblock(&superblock(0xEF53, 2)).is_ok());
    }

    #[test]
    fn wrong_magic_or_block_size_is_refused_in_one_line() {
        let e = check_superblock(&superblock(0x1234, 2)).unwrap_err();
        assert!(e.to_string().contains("not an ext4"), "{e}");
        let e = check_superblock(&superblock(0xEF53, 0)).unwrap_err();
        assert!(e.to_string().contains("block size is 1024 bytes"), "{e}");
        let e = check_superblock(&superblock(0xEF53, 40)).unwrap_err();
        assert!(e.to_string().contains("2^(10+40)"), "{e}");
        assert!(!e.to_string().contains('\n'));
    }

    #[test]
    fn a_file_shorter_than_a_superblock_is_not_ext4() {
        let path = std::env::temp_dir().join(format!("vmfork-sb-{}", std::process::id()));
        std::fs::write(&path, [0u8; 100]).unwrap();
        let file = File::open(&path).unwrap();
        let e = check_ext4(&file).unwrap_err();
        let _ = std::fs::remove_file(&path);
        assert!(e.to_string().contains("not an ext4"), "{e}");
    }
}
