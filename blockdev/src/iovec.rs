//! Host buffers handed to the I/O engines without copying.

/// One host buffer of a vectored request: a pointer into guest memory (or any host memory) and a
/// length. Layout-compatible with `struct iovec`, so a `&[IoVec]` can be passed to `preadv`,
/// `pwritev` and io_uring as it is.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct IoVec {
    base: *mut u8,
    len: usize,
}

// SAFETY: an IoVec is a plain address/length pair; whoever built it (see `IoVec::new`) promised
// the memory stays valid until the request completes, from whichever thread completes it.
unsafe impl Send for IoVec {}
// SAFETY: as above; sharing the pair itself does not touch the memory.
unsafe impl Sync for IoVec {}

impl IoVec {
    /// Describes `len` bytes at `base`.
    ///
    /// # Safety
    /// The memory must stay valid (mapped, and not freed or reused) for reads and writes of
    /// `len` bytes until every request that carries this `IoVec` has completed.
    pub unsafe fn new(base: *mut u8, len: usize) -> Self {
        IoVec { base, len }
    }

    /// Describes a host slice the caller owns for the lifetime of the request.
    ///
    /// # Safety
    /// The slice must outlive every request that carries this `IoVec` and must not be accessed
    /// while such a request is in flight.
    pub unsafe fn from_slice(buf: &mut [u8]) -> Self {
        IoVec {
            base: buf.as_mut_ptr(),
            len: buf.len(),
        }
    }

    /// Start address.
    pub fn as_ptr(&self) -> *mut u8 {
        self.base
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The buffer as a `libc::iovec`.
    pub fn as_iovec(&self) -> libc::iovec {
        libc::iovec {
            iov_base: self.base.cast(),
            iov_len: self.len,
        }
    }

    /// Total length of a list of buffers, or `None` on overflow.
    pub fn total_len(iovs: &[IoVec]) -> Option<u64> {
        iovs.iter()
            .try_fold(0u64, |acc, v| acc.checked_add(v.len as u64))
    }
}

/// Copies `src` into the buffers of `iovs` in order (as much as both hold).
pub fn scatter(iovs: &[IoVec], src: &[u8]) {
    let mut pos = 0;
    for v in iovs {
        let n = v.len().min(src.len() - pos);
        // SAFETY: whoever built the IoVec vouched for `len` writable bytes (IoVec::new); `n` is
        // within both the buffer and `src`, and the two do not overlap (src is host memory the
        // caller owns).
        unsafe { std::ptr::copy_nonoverlapping(src[pos..].as_ptr(), v.as_ptr(), n) };
        pos += n;
        if pos == src.len() {
            break;
        }
    }
}

/// Copies the buffers of `iovs` in order into `dst` (as much as both hold).
pub fn gather(iovs: &[IoVec], dst: &mut [u8]) {
    let mut pos = 0;
    for v in iovs {
        let n = v.len().min(dst.len() - pos);
        // SAFETY: as in `scatter`, the IoVec is readable for `len` bytes and `n` fits both.
        unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), dst[pos..].as_mut_ptr(), n) };
        pos += n;
        if pos == dst.len() {
            break;
        }
    }
}

/// The part `[skip, skip+len)` of a buffer list, as a new list over the same memory (the
/// caller's promise for the original buffers covers the parts).
pub fn sub_range(iovs: &[IoVec], mut skip: u64, mut len: u64) -> Vec<IoVec> {
    let mut out = Vec::new();
    for v in iovs {
        if len == 0 {
            break;
        }
        let vl = v.len() as u64;
        if skip >= vl {
            skip -= vl;
            continue;
        }
        let n = (vl - skip).min(len);
        // SAFETY: the new IoVec is a sub-range of one whose creator vouched for it until the
        // request completes (skip + n <= its length).
        out.push(unsafe { IoVec::new(v.as_ptr().add(skip as usize), n as usize) });
        skip = 0;
        len -= n;
    }
    out
}
