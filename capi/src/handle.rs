//! Handles: the pointers C holds are keys into a registry, never dereferenced. A stale,
//! double-closed or made-up handle is looked up, not followed, so it fails with `-EBADF`
//! instead of touching freed memory. Keys count up from a per-kind base and are never reused.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{CError, CResult};

/// A registry of live objects of one kind.
pub struct Registry<T> {
    kind: &'static str,
    next: AtomicUsize,
    live: Mutex<Option<HashMap<usize, Arc<T>>>>,
}

impl<T> Registry<T> {
    /// An empty registry whose keys start at `base` (kinds use distinct bases, so a device
    /// handle passed as a block device is refused too).
    pub const fn new(kind: &'static str, base: usize) -> Self {
        Registry {
            kind,
            next: AtomicUsize::new(base),
            live: Mutex::new(None),
        }
    }

    /// Registers `obj` and returns its key (never 0).
    pub fn insert(&self, obj: Arc<T>) -> usize {
        // Keys are multiples of 16 so they look like aligned pointers to C tools.
        let key = self.next.fetch_add(16, Ordering::Relaxed);
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.get_or_insert_with(HashMap::new).insert(key, obj);
        key
    }

    /// The object behind `key`.
    pub fn get(&self, key: usize) -> CResult<Arc<T>> {
        if key == 0 {
            return Err(CError::inval(format!("{} handle is NULL", self.kind)));
        }
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.as_ref()
            .and_then(|m| m.get(&key))
            .cloned()
            .ok_or_else(|| self.bad(key))
    }

    /// Unregisters `key` and returns its object.
    pub fn remove(&self, key: usize) -> CResult<Arc<T>> {
        if key == 0 {
            return Err(CError::inval(format!("{} handle is NULL", self.kind)));
        }
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let obj = live.as_mut().and_then(|m| m.remove(&key));
        if live.as_ref().is_some_and(HashMap::is_empty) {
            // Free the table itself once nothing is open, so leak checkers see a clean exit.
            *live = None;
        }
        obj.ok_or_else(|| self.bad(key))
    }

    fn bad(&self, key: usize) -> CError {
        CError::new(
            libc::EBADF,
            format!(
                "{} handle {key:#x} is not open (closed already, or not a {} handle)",
                self.kind, self.kind
            ),
        )
    }
}
