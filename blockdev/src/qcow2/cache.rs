//! A cache of metadata tables (L2 tables, refcount blocks) keyed by host offset, with LRU
//! eviction of clean tables and dirty tracking for ordered write-back.

use std::collections::HashMap;

/// One cached table: its bytes as on disk.
#[derive(Debug)]
pub(crate) struct Table {
    pub data: Vec<u8>,
    pub dirty: bool,
    used: u64,
}

/// Tables keyed by host offset.
#[derive(Debug)]
pub(crate) struct TableCache {
    tables: HashMap<u64, Table>,
    capacity: usize,
    tick: u64,
}

impl TableCache {
    /// A cache holding up to `capacity` tables (at least 2).
    pub fn new(capacity: usize) -> TableCache {
        TableCache {
            tables: HashMap::new(),
            capacity: capacity.max(2),
            tick: 0,
        }
    }

    /// The table at `off`, if cached (marks it recently used).
    pub fn get(&mut self, off: u64) -> Option<&mut Table> {
        self.tick += 1;
        let t = self.tables.get_mut(&off)?;
        t.used = self.tick;
        Some(t)
    }

    /// Whether the table at `off` is cached.
    pub fn contains(&self, off: u64) -> bool {
        self.tables.contains_key(&off)
    }

    /// Whether the cache is at capacity (the caller evicts before inserting).
    pub fn full(&self) -> bool {
        self.tables.len() >= self.capacity
    }

    /// Inserts a table; the caller made room (see [`TableCache::evict_clean`]).
    pub fn insert(&mut self, off: u64, data: Vec<u8>, dirty: bool) -> &mut Table {
        self.tick += 1;
        let t = Table {
            data,
            dirty,
            used: self.tick,
        };
        self.tables.insert(off, t);
        self.tables.get_mut(&off).expect("just inserted")
    }

    /// Drops the least recently used clean table; false if every table is dirty.
    pub fn evict_clean(&mut self) -> bool {
        let victim = self
            .tables
            .iter()
            .filter(|(_, t)| !t.dirty)
            .min_by_key(|(_, t)| t.used)
            .map(|(&k, _)| k);
        match victim {
            Some(k) => {
                self.tables.remove(&k);
                true
            }
            None => false,
        }
    }

    /// Offsets of dirty tables, sorted (so write-back is sequential).
    pub fn dirty_offsets(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .tables
            .iter()
            .filter(|(_, t)| t.dirty)
            .map(|(&k, _)| k)
            .collect();
        v.sort_unstable();
        v
    }

    /// Whether any table is dirty.
    pub fn any_dirty(&self) -> bool {
        self.tables.values().any(|t| t.dirty)
    }
}
