//! Zero-filled heap buffers with a chosen address alignment, for O_DIRECT I/O.

use std::alloc::{self, Layout};
use std::io;
use std::ptr::NonNull;

/// A zero-initialised heap buffer whose start address is a multiple of `align`.
///
/// O_DIRECT needs buffers aligned to the host's memory alignment; vstor uses these for bounce
/// buffers, the write-zeroes buffer and alignment probing.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: the buffer is uniquely owned heap memory with no thread affinity.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared references only give `&[u8]` access, which is safe to share.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// Allocates `len` zeroed bytes aligned to `align` (a power of two). A zero `len` still
    /// allocates one aligned block so the address is usable.
    pub fn new(len: usize, align: usize) -> io::Result<Self> {
        let align = align.max(1);
        let layout = Layout::from_size_align(len.max(align), align)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: the layout has a non-zero size (at least `align` >= 1 bytes).
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        Ok(AlignedBuf { ptr, layout })
    }

    /// Length in bytes as requested (at least the alignment).
    pub fn len(&self) -> usize {
        self.layout.size()
    }

    /// Whether the buffer has no bytes (never true: a buffer holds at least one aligned block).
    pub fn is_empty(&self) -> bool {
        self.layout.size() == 0
    }

    /// The start address.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The buffer as a slice.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` points to `layout.size()` initialised (zeroed at allocation) bytes owned
        // by `self`; the shared borrow of `self` prevents mutation for the slice's lifetime.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }

    /// The buffer as a mutable slice.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and the exclusive borrow of `self` makes the access unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: `ptr` was returned by `alloc_zeroed` with exactly this layout and is freed once.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("ptr", &self.ptr)
            .field("len", &self.layout.size())
            .field("align", &self.layout.align())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_zeroed() {
        for align in [1usize, 512, 4096] {
            let mut b = AlignedBuf::new(10_000, align).unwrap();
            assert_eq!(b.as_mut_ptr() as usize % align, 0);
            assert_eq!(b.len(), 10_000);
            assert!(b.as_slice().iter().all(|&x| x == 0));
            b.as_mut_slice()[9_999] = 1;
            assert_eq!(b.as_slice()[9_999], 1);
        }
        let b = AlignedBuf::new(0, 4096).unwrap();
        assert_eq!(b.len(), 4096);
        assert!(AlignedBuf::new(16, 3).is_err());
    }
}
