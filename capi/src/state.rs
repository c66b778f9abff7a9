//! Migration and lifetime: `vstor_device_save`, `vstor_device_restore`, `vstor_device_free`.

use std::ffi::c_void;

use crate::device::{device, vstor_device, DEVICES};
use crate::error::{boundary, CError};

/// Saves the device state (features, status, configuration, queue addresses and indices,
/// device-specific state) as an opaque, versioned blob. Requests in flight complete first;
/// stop the guest's vCPUs before saving for migration. Call with `buf` NULL (or `*len` too
/// small) to learn the size: `*len` is set and `-ENOSPC` returned.
///
/// # Safety
/// `len` points to a writable `size_t`; `buf` is NULL or points to `*len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn vstor_device_save(
    dev: *mut vstor_device,
    buf: *mut c_void,
    len: *mut usize,
) -> i32 {
    boundary("vstor_device_save", || {
        if len.is_null() {
            return Err(CError::inval("len is NULL"));
        }
        let d = device(dev)?;
        let blob = d.lock()?.transport.save()?;
        // SAFETY: `len` is non-NULL and points to a size_t (caller contract).
        let room = unsafe { len.read_unaligned() };
        // SAFETY: as above.
        unsafe { len.write_unaligned(blob.len()) };
        if buf.is_null() || room < blob.len() {
            return Err(CError::new(
                libc::ENOSPC,
                format!("the state needs {} bytes, buffer has {room}", blob.len()),
            ));
        }
        // SAFETY: `buf` has `room >= blob.len()` writable bytes (caller contract).
        unsafe { std::ptr::copy_nonoverlapping(blob.as_ptr(), buf.cast::<u8>(), blob.len()) };
        Ok(0)
    })
}

/// Loads a blob from `vstor_device_save` into a device of the same type and queue count,
/// resetting it first; guest memory must be registered. A live saved device is live again
/// afterwards (kick it once to pick up requests the driver added meanwhile). A truncated,
/// corrupt, foreign or newer-version blob is refused with `-EINVAL` and leaves the device reset.
///
/// # Safety
/// `buf` points to `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn vstor_device_restore(
    dev: *mut vstor_device,
    buf: *const c_void,
    len: usize,
) -> i32 {
    boundary("vstor_device_restore", || {
        if buf.is_null() {
            return Err(CError::inval("buf is NULL"));
        }
        let d = device(dev)?;
        // SAFETY: `buf` has `len` readable bytes (caller contract).
        let blob = unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) };
        d.reconfigure(|inner| Ok(inner.transport.restore(blob)?))?;
        Ok(0)
    })
}

/// Frees a device: stops its workers, waits for requests in flight, releases its block device
/// reference and descriptors. Guest memory is the caller's and stays mapped. Returns 0, or
/// `-EBADF` if the handle is not open (a double free is caught).
#[no_mangle]
pub extern "C" fn vstor_device_free(dev: *mut vstor_device) -> i32 {
    boundary("vstor_device_free", || {
        let d = DEVICES.remove(dev as usize)?;
        d.shut_down();
        Ok(0)
    })
}
