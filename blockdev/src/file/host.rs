//! Host queries: block-device ioctls, sysfs limits, fallocate and O_DIRECT alignment probing.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::io::AsRawFd;

use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr};

use crate::aligned::AlignedBuf;

/// `<linux/fs.h>` block-device ioctls (type 0x12).
mod nr {
    use super::*;
    ioctl_io_nr!(BLKSSZGET, 0x12, 104);
    ioctl_io_nr!(BLKDISCARD, 0x12, 119);
    ioctl_io_nr!(BLKPBSZGET, 0x12, 123);
    ioctl_io_nr!(BLKSECDISCARD, 0x12, 125);
    ioctl_io_nr!(BLKZEROOUT, 0x12, 127);
    ioctl_ior_nr!(BLKGETSIZE64, 0x12, 114, usize);
}

fn cvt(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Size in bytes of a block device (BLKGETSIZE64).
pub(crate) fn blk_size(f: &File) -> io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which refers to a live local.
    let ret = unsafe {
        libc::ioctl(
            f.as_raw_fd(),
            nr::BLKGETSIZE64() as _,
            &mut size as *mut u64,
        )
    };
    cvt(ret).map(|()| size)
}

fn blk_int_ioctl(f: &File, req: libc::c_ulong) -> io::Result<u32> {
    let mut v: libc::c_int = 0;
    // SAFETY: BLKSSZGET and BLKPBSZGET write one int through the pointer to a live local.
    let ret = unsafe { libc::ioctl(f.as_raw_fd(), req as _, &mut v as *mut libc::c_int) };
    cvt(ret)?;
    u32::try_from(v).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Logical block size of a block device (BLKSSZGET).
pub(crate) fn blk_logical_block_size(f: &File) -> io::Result<u32> {
    blk_int_ioctl(f, nr::BLKSSZGET())
}

/// Physical block size of a block device (BLKPBSZGET).
pub(crate) fn blk_physical_block_size(f: &File) -> io::Result<u32> {
    blk_int_ioctl(f, nr::BLKPBSZGET())
}

fn blk_range_ioctl(f: &File, req: libc::c_ulong, offset: u64, len: u64) -> io::Result<()> {
    let range: [u64; 2] = [offset, len];
    // SAFETY: BLKDISCARD, BLKSECDISCARD and BLKZEROOUT read a `u64[2]` {start, len} through the
    // pointer, which refers to a live local array.
    let ret = unsafe { libc::ioctl(f.as_raw_fd(), req as _, range.as_ptr()) };
    cvt(ret)
}

/// Discards a byte range of a block device (BLKDISCARD).
pub(crate) fn blk_discard(f: &File, offset: u64, len: u64) -> io::Result<()> {
    blk_range_ioctl(f, nr::BLKDISCARD(), offset, len)
}

/// Securely discards a byte range of a block device (BLKSECDISCARD).
pub(crate) fn blk_secure_discard(f: &File, offset: u64, len: u64) -> io::Result<()> {
    blk_range_ioctl(f, nr::BLKSECDISCARD(), offset, len)
}

/// Zeroes a byte range of a block device (BLKZEROOUT).
pub(crate) fn blk_zeroout(f: &File, offset: u64, len: u64) -> io::Result<()> {
    blk_range_ioctl(f, nr::BLKZEROOUT(), offset, len)
}

/// A `u64` from `/sys/dev/block/<major>:<minor>/queue/<attr>`, if readable.
pub(crate) fn blk_queue_attr(f: &File, attr: &str) -> Option<u64> {
    let rdev = f.metadata().ok()?.rdev();
    let path = format!(
        "/sys/dev/block/{}:{}/queue/{attr}",
        libc::major(rdev),
        libc::minor(rdev)
    );
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// fallocate(2) on `f`.
pub(crate) fn fallocate(f: &File, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    let off =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let len = libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    loop {
        // SAFETY: fallocate only takes integers; the fd is owned by `f` and open.
        let ret = unsafe { libc::fallocate(f.as_raw_fd(), mode, off, len) };
        match cvt(ret) {
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            r => return r,
        }
    }
}

/// Mode bits of a hole punch that keeps the file size.
pub(crate) const PUNCH_HOLE: libc::c_int = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;

/// Whether an error means "this host does not do that" (so the caller falls back).
pub(crate) fn is_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOTTY) | Some(libc::ENOSYS)
    )
}

/// Probes hole punching without touching data: a punch past the end of the file with
/// KEEP_SIZE changes nothing but still fails with EOPNOTSUPP where unsupported.
pub(crate) fn probe_punch_hole(f: &File, file_len: u64) -> bool {
    let past_end = file_len
        .div_ceil(65536)
        .saturating_add(1)
        .saturating_mul(65536);
    match fallocate(f, PUNCH_HOLE, past_end, 65536) {
        Ok(()) => true,
        Err(e) => {
            log::debug!("hole punching unavailable: {e}");
            false
        }
    }
}

/// O_DIRECT requirements of an open file: request (offset/length) and memory alignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DirectAlign {
    /// Offset and length alignment in bytes.
    pub request: u32,
    /// Buffer address alignment in bytes.
    pub mem: u32,
}

fn sane(v: u32) -> Option<u32> {
    (v.is_power_of_two() && v <= 65536).then_some(v)
}

/// What statx(STATX_DIOALIGN) reports (Linux 6.1+), if anything.
pub(crate) fn statx_dio_align(f: &File) -> Option<DirectAlign> {
    // SAFETY: statx is a plain C struct for which all-zero bytes are a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: the path is a valid NUL-terminated empty string, AT_EMPTY_PATH makes statx use the
    // open fd, and `stx` is a live, writable statx struct.
    let ret = unsafe {
        libc::statx(
            f.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    if ret != 0 || stx.stx_mask & libc::STATX_DIOALIGN == 0 {
        return None;
    }
    Some(DirectAlign {
        request: sane(stx.stx_dio_offset_align)?.max(512),
        mem: sane(stx.stx_dio_mem_align)?,
    })
}

/// QEMU's probe: O_DIRECT reads at offset 0 of 512, then 4096 bytes into a page-aligned buffer
/// find the request alignment; a read into a buffer that is 512- but not 4096-aligned finds the
/// memory alignment. An empty file says nothing, so 4096 is assumed for both.
pub(crate) fn probe_direct_by_reads(f: &File, file_len: u64) -> DirectAlign {
    const MAX: u32 = 4096;
    if file_len == 0 {
        return DirectAlign {
            request: MAX,
            mem: MAX,
        };
    }
    let Ok(mut buf) = AlignedBuf::new(2 * MAX as usize, MAX as usize) else {
        return DirectAlign {
            request: MAX,
            mem: MAX,
        };
    };
    let read_ok = |buf: &mut [u8]| match f.read_at(buf, 0) {
        Ok(_) => true,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => false,
        Err(e) => {
            log::debug!("O_DIRECT probe read failed: {e}");
            false
        }
    };
    let request = [512u32, MAX]
        .into_iter()
        .find(|&a| read_ok(&mut buf.as_mut_slice()[..a as usize]))
        .unwrap_or(MAX);
    let r = request as usize;
    let mem = if read_ok(&mut buf.as_mut_slice()[512..512 + r]) {
        512
    } else {
        MAX
    };
    DirectAlign { request, mem }
}

/// O_DIRECT alignment of an open file: statx where the kernel reports it, else the read probe.
pub(crate) fn direct_align(f: &File, file_len: u64) -> DirectAlign {
    if let Some(a) = statx_dio_align(f) {
        log::debug!("O_DIRECT alignment from statx: {a:?}");
        return a;
    }
    let a = probe_direct_by_reads(f, file_len);
    log::debug!("O_DIRECT alignment from read probe: {a:?}");
    a
}

/// Where the next data (`SEEK_DATA`) or hole (`SEEK_HOLE`) at or after `offset` starts;
/// `Ok(None)` when there is none before the end of the file (ENXIO).
pub(crate) fn seek(f: &File, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    let off =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: lseek only takes integers; the fd is owned by `f`. The file position it moves is
    // never used (all I/O is positional).
    let ret = unsafe { libc::lseek(f.as_raw_fd(), off, whence) };
    if ret < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENXIO) {
            Ok(None)
        } else {
            Err(e)
        };
    }
    Ok(Some(ret as u64))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::OpenOptionsExt;

    use super::*;

    fn open_direct(len: u64) -> Option<(tempfile::NamedTempFile, File)> {
        let t = tempfile::NamedTempFile::new().ok()?;
        t.as_file().write_all_at(&vec![1u8; len as usize], 0).ok()?;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(t.path())
            .ok()?;
        Some((t, f))
    }

    #[test]
    fn direct_alignment_probes() {
        let Some((_t, f)) = open_direct(8192) else {
            eprintln!("skipping: no O_DIRECT here");
            return;
        };
        let by_reads = probe_direct_by_reads(&f, 8192);
        assert!(matches!(by_reads.request, 512 | 4096), "{by_reads:?}");
        assert!(matches!(by_reads.mem, 512 | 4096), "{by_reads:?}");
        let chosen = direct_align(&f, 8192);
        assert!(chosen.request >= 512 && chosen.request.is_power_of_two());
        assert!(chosen.mem.is_power_of_two());
        if let Some(s) = statx_dio_align(&f) {
            // The read probe never claims a finer alignment than the kernel reports.
            assert!(by_reads.request >= s.request, "{by_reads:?} vs {s:?}");
        }
        let empty = probe_direct_by_reads(&f, 0);
        assert_eq!(
            empty,
            DirectAlign {
                request: 4096,
                mem: 4096
            }
        );
    }

    #[test]
    fn punch_probe_changes_nothing() {
        let t = tempfile::NamedTempFile::new().unwrap();
        t.as_file().write_all_at(&[7u8; 1000], 0).unwrap();
        let _ = probe_punch_hole(t.as_file(), 1000);
        let mut back = vec![0u8; 1000];
        t.as_file().read_exact_at(&mut back, 0).unwrap();
        assert_eq!(back, vec![7u8; 1000]);
        assert_eq!(t.as_file().metadata().unwrap().len(), 1000);
    }

    #[test]
    fn block_ioctls_fail_cleanly_on_files() {
        let t = tempfile::NamedTempFile::new().unwrap();
        assert!(blk_size(t.as_file()).is_err());
        assert!(blk_logical_block_size(t.as_file()).is_err());
        assert!(blk_discard(t.as_file(), 0, 512).is_err());
        assert!(blk_queue_attr(t.as_file(), "discard_max_bytes").is_none());
        assert!(matches!(seek(t.as_file(), 0, libc::SEEK_DATA), Ok(None)));
    }
}
