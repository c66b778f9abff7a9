//! Handles: the pointers C holds are keys into a registry, never dereferenced. A stale,
//! double-closed or made-up handle is looked up, not followed, so it fails with `-EBADF`
//! instead of touching freed memory. A key is `(sequence << 16 | slot) << 8 | tag << 4`: the
//! slot indexes the table directly (no hashing on the kick path); the sequence number makes
//! every key unique for the life of the process, so a slot reused by a new object never
//! answers to an old key; the tag names the kind, so a device handle passed as a block device
//! is refused; the low four bits are zero, so keys look like aligned pointers to C tools.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{CError, CResult};

/// Most objects of one kind open at once.
const MAX_SLOTS: usize = 1 << 16;
const SLOT_BITS: u32 = 16;

struct Table<T> {
    /// `(key, object)` per slot.
    slots: Vec<Option<(usize, Arc<T>)>>,
    free: Vec<usize>,
    live: usize,
}

/// A registry of live objects of one kind.
pub struct Registry<T> {
    kind: &'static str,
    tag: usize,
    seq: AtomicUsize,
    table: Mutex<Option<Table<T>>>,
}

impl<T> Registry<T> {
    /// An empty registry for `kind`, whose keys carry `tag` (1..=15, distinct per kind).
    pub const fn new(kind: &'static str, tag: usize) -> Self {
        assert!(tag >= 1 && tag <= 15);
        Registry {
            kind,
            tag,
            seq: AtomicUsize::new(1),
            table: Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Table<T>>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `obj` and returns its key (never 0), or `-EMFILE` when too many are open.
    pub fn insert(&self, obj: Arc<T>) -> CResult<usize> {
        let mut guard = self.lock();
        let t = guard.get_or_insert_with(|| Table {
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
        });
        let slot = match t.free.pop() {
            Some(s) => s,
            None if t.slots.len() < MAX_SLOTS => {
                t.slots.push(None);
                t.slots.len() - 1
            }
            None => {
                return Err(CError::new(
                    libc::EMFILE,
                    format!("too many open {} handles ({MAX_SLOTS})", self.kind),
                ))
            }
        };
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let key = ((seq << SLOT_BITS) | slot) << 8 | self.tag << 4;
        t.slots[slot] = Some((key, obj));
        t.live += 1;
        Ok(key)
    }

    fn slot(&self, key: usize) -> CResult<usize> {
        if key == 0 {
            return Err(CError::inval(format!("{} handle is NULL", self.kind)));
        }
        if key & 0xff != self.tag << 4 {
            return Err(self.bad(key));
        }
        Ok((key >> 8) & ((1 << SLOT_BITS) - 1))
    }

    /// The object behind `key`.
    pub fn get(&self, key: usize) -> CResult<Arc<T>> {
        let slot = self.slot(key)?;
        let guard = self.lock();
        match guard.as_ref().and_then(|t| t.slots.get(slot)) {
            Some(Some((k, obj))) if *k == key => Ok(obj.clone()),
            _ => Err(self.bad(key)),
        }
    }

    /// Unregisters `key` and returns its object.
    pub fn remove(&self, key: usize) -> CResult<Arc<T>> {
        let slot = self.slot(key)?;
        let mut guard = self.lock();
        let t = guard.as_mut().ok_or_else(|| self.bad(key))?;
        match t.slots.get(slot) {
            Some(Some((k, _))) if *k == key => {}
            _ => return Err(self.bad(key)),
        }
        let (_, obj) = t.slots[slot].take().expect("checked above");
        t.free.push(slot);
        t.live -= 1;
        if t.live == 0 {
            // Free the table itself once nothing is open, so leak checkers see a clean exit.
            *guard = None;
        }
        Ok(obj)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unique_and_checked() {
        let r: Registry<u32> = Registry::new("thing", 1);
        let a = r.insert(Arc::new(1)).unwrap();
        let b = r.insert(Arc::new(2)).unwrap();
        assert_eq!(*r.get(a).unwrap(), 1);
        assert_eq!(*r.remove(a).unwrap(), 1);
        // The slot is reused, the key is not.
        let c = r.insert(Arc::new(3)).unwrap();
        assert_ne!(c, a);
        assert_eq!(r.get(a).unwrap_err().errno, libc::EBADF);
        assert_eq!(r.remove(a).unwrap_err().errno, libc::EBADF);
        assert_eq!(*r.get(c).unwrap(), 3);
        for bad in [0, 1, 0xfff, a + 8, b + 16, usize::MAX] {
            assert!(r.get(bad).is_err(), "{bad:#x}");
        }
        // Another kind's keys are refused.
        let other: Registry<u32> = Registry::new("other", 2);
        assert!(other.get(b).is_err());
        r.remove(b).unwrap();
        r.remove(c).unwrap();
        assert!(r.lock().is_none(), "table freed when empty");
    }
}
