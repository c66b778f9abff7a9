//! The error boundary: every exported function runs its body through [`boundary`], which turns
//! an `Err` into a negative errno plus a thread-local message for [`vstor_last_error`], and a
//! panic into `-ENOTRECOVERABLE` (the panic never unwinds into C).

use std::cell::{Cell, RefCell};
use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// What an exported function's body returns: a value or (positive errno, message).
pub type CResult<T> = Result<T, CError>;

/// A failed call: the errno to return (positive) and the message to keep.
#[derive(Debug)]
pub struct CError {
    /// Positive errno.
    pub errno: i32,
    /// Human-readable message naming the argument, field or request at fault.
    pub message: String,
}

impl CError {
    /// An error with `errno` and `message`.
    pub fn new(errno: i32, message: impl Into<String>) -> Self {
        CError {
            errno,
            message: message.into(),
        }
    }

    /// `-EINVAL` with `message`.
    pub fn inval(message: impl Into<String>) -> Self {
        CError::new(libc::EINVAL, message)
    }
}

impl From<vstor_virtio_core::Error> for CError {
    fn from(e: vstor_virtio_core::Error) -> Self {
        CError::new(e.errno(), e.to_string())
    }
}

impl From<vstor_blockdev::Error> for CError {
    fn from(e: vstor_blockdev::Error) -> Self {
        CError::new(e.errno(), e.to_string())
    }
}

impl From<vstor_virtio_blk::Error> for CError {
    fn from(e: vstor_virtio_blk::Error) -> Self {
        CError::new(libc::EINVAL, e.to_string())
    }
}

impl From<vstor_virtio_scsi::Error> for CError {
    fn from(e: vstor_virtio_scsi::Error) -> Self {
        CError::new(e.errno(), e.to_string())
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
    static IN_CALLBACK: Cell<bool> = const { Cell::new(false) };
}

fn set_last_error(message: &str) {
    // Interior NULs cannot be represented in a C string: replace them.
    let c = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|l| *l.borrow_mut() = c);
}

/// Runs `f` behind the panic boundary; returns 0 / the value it produced, or a negative errno
/// and records the message.
pub fn boundary(name: &str, f: impl FnOnce() -> CResult<i32>) -> i32 {
    if IN_CALLBACK.with(Cell::get) {
        set_last_error(&format!(
            "{name}: called from inside a vstor interrupt callback (not allowed: it would \
             deadlock)"
        ));
        return -libc::EDEADLK;
    }
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            set_last_error(&format!("{name}: {}", e.message));
            -e.errno.abs().max(1)
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(&format!("{name}: internal error (bug in vstor): {what}"));
            -libc::ENOTRECOVERABLE
        }
    }
}

/// Marks the current thread as running an embedder callback for the duration of `f`, so a
/// vstor call made from inside it fails with `-EDEADLK` instead of deadlocking.
pub fn in_callback<R>(f: impl FnOnce() -> R) -> R {
    IN_CALLBACK.with(|c| {
        let was = c.replace(true);
        let r = f();
        c.set(was);
        r
    })
}

/// The message of the last failed vstor call on this thread ("" if none failed yet). The
/// pointer stays valid until the next vstor call on the same thread; never free it.
#[no_mangle]
pub extern "C" fn vstor_last_error() -> *const c_char {
    LAST_ERROR.with(|l| l.borrow().as_ptr())
}
