//! Numbers of the Linux ioctls on memory that vmfork issues and that the
//! allow-lists therefore name. They live here, below both the code that
//! issues them (vmfork-machine, vmfork-clone) and the lists, so that the
//! lists never reach up into the code they confine.

/// PAGEMAP_SCAN (linux/fs.h, Linux 6.7): `_IOWR('f', 16, struct
/// pm_scan_arg)`; the struct is twelve u64s.
pub const PAGEMAP_SCAN: u64 = (3 << 30) | ((12 * 8) << 16) | ((b'f' as u64) << 8) | 16;

/// UFFDIO_COPY (linux/userfaultfd.h): `_IOWR(0xaa, 3, struct
/// uffdio_copy)`, a 40-byte struct.
pub const UFFDIO_COPY: u64 = (3 << 30) | (40 << 16) | (0xaa << 8) | 3;

#[cfg(test)]
mod tests {
    #[test]
    fn numbers_match_the_kernel_headers() {
        assert_eq!(super::UFFDIO_COPY, 0xc028_aa03);
        assert_eq!(super::PAGEMAP_SCAN, 0xc060_6610);
    }
}
