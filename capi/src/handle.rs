//! Handles: the pointers C holds are keys into a registry, never dereferenced. A stale,
//! double-closed or made-up handle is looked up, not followed, so it fails with `-EBADF`
//! instead of touching freed memory. Keys count up from a per-kind base and are never reused.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{CError, CResult};

/// Keys are our own counters, never attacker-chosen: a multiplicative hash is enough (SipHash,
/// the default, costs ~100 instructions per lookup on the kick path).
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_usize(&mut self, n: usize) {
        // Fibonacci hashing; keys are multiples of 16, so drop those bits first.
        self.0 = ((n as u64) >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type Map<T> = HashMap<usize, Arc<T>, BuildHasherDefault<KeyHasher>>;

/// A registry of live objects of one kind.
pub struct Registry<T> {
    kind: &'static str,
    next: AtomicUsize,
    live: Mutex<Option<Map<T>>>,
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
        live.get_or_insert_with(Map::default).insert(key, obj);
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
