//! Reading and writing the size-prefixed structs C passes in and out.
//!
//! Every struct starts with `uint32_t size`, which the caller sets to `sizeof` the struct it
//! was compiled against. An older caller's shorter struct is read up to its size and the rest
//! takes defaults; a newer caller's longer struct is accepted only if the bytes this build does
//! not know are zero (as Linux's `copy_struct_from_user`), so a request for a feature this
//! library lacks fails with `-E2BIG` instead of being ignored silently.

use crate::error::{CError, CResult};

/// A struct with a leading `size` field and a default value.
///
/// # Safety
/// Implementors must be `#[repr(C)]`, begin with a `u32` size field, and be valid for any bit
/// pattern of the bytes a caller may supply (integers and pointers only).
pub unsafe trait Sized32: Copy + Default {
    /// The smallest size accepted (the first published version of the struct).
    const MIN_SIZE: u32;
    /// Name for messages.
    const NAME: &'static str;
}

/// Copies the caller's struct at `ptr` (NULL gives the defaults).
///
/// # Safety
/// `ptr` is NULL or points to at least `(*ptr).size` readable bytes.
pub unsafe fn read_in<T: Sized32>(ptr: *const T) -> CResult<T> {
    let mut out = T::default();
    if ptr.is_null() {
        return Ok(out);
    }
    // SAFETY: the caller guarantees the leading u32 is readable.
    let size = unsafe { std::ptr::read_unaligned(ptr.cast::<u32>()) };
    let ours = std::mem::size_of::<T>() as u32;
    if size < T::MIN_SIZE {
        return Err(CError::inval(format!(
            "struct {}: size {size} smaller than the smallest version ({})",
            T::NAME,
            T::MIN_SIZE
        )));
    }
    let take = size.min(ours) as usize;
    // SAFETY: `take` bytes are readable at `ptr` (the caller's size covers them) and fit in
    // `out`; T accepts any bit pattern (trait contract).
    unsafe {
        std::ptr::copy_nonoverlapping(ptr.cast::<u8>(), (&mut out as *mut T).cast::<u8>(), take)
    };
    if size > ours {
        let extra = (size - ours) as usize;
        // SAFETY: the caller's struct is `size` bytes long, so the tail past ours is readable.
        let tail =
            unsafe { std::slice::from_raw_parts(ptr.cast::<u8>().add(ours as usize), extra) };
        if tail.iter().any(|&b| b != 0) {
            return Err(CError::new(
                libc::E2BIG,
                format!(
                    "struct {}: size {size} has non-zero fields this library ({ours} bytes) \
                     does not know",
                    T::NAME
                ),
            ));
        }
    }
    // Keep our own size so later code sees the struct it knows.
    // SAFETY: the first field of T is its u32 size (trait contract).
    unsafe { std::ptr::write_unaligned((&mut out as *mut T).cast::<u32>(), ours) };
    Ok(out)
}

/// Copies `value` out to the caller's struct at `ptr`, writing at most the caller's `size`
/// bytes and setting `size` to the number written.
///
/// # Safety
/// `ptr` points to at least `(*ptr).size` writable bytes.
pub unsafe fn write_out<T: Sized32>(ptr: *mut T, value: &T) -> CResult<()> {
    if ptr.is_null() {
        return Err(CError::inval(format!("struct {} pointer is NULL", T::NAME)));
    }
    // SAFETY: the caller guarantees the leading u32 is readable.
    let size = unsafe { std::ptr::read_unaligned(ptr.cast::<u32>()) };
    if size < T::MIN_SIZE {
        return Err(CError::inval(format!(
            "struct {}: size {size} smaller than the smallest version ({}); set size = sizeof",
            T::NAME,
            T::MIN_SIZE
        )));
    }
    let n = size.min(std::mem::size_of::<T>() as u32);
    // SAFETY: `n` bytes are writable at `ptr` (within the caller's size) and readable from
    // `value`.
    unsafe {
        std::ptr::copy_nonoverlapping(
            (value as *const T).cast::<u8>(),
            ptr.cast::<u8>(),
            n as usize,
        );
        std::ptr::write_unaligned(ptr.cast::<u32>(), n);
    }
    Ok(())
}
