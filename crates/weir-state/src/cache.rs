//! A bounded read cache of what RocksDB holds for store entries, so that a key read again soon
//! after its last commit does not walk RocksDB's memtable (a skip list of every recent write:
//! about a microsecond of cache misses per read, 30 % of the totals benchmark's main loop).
//!
//! It holds committed values only — what a read of the database would return, `None` for a key
//! known to be absent — and never uncommitted ones: the open and committing layers sit above
//! it. [`apply`](crate::StateManager::apply) writes its changes through (moving them, not
//! copying); every other write to a task's data keys (a restore, a rolled-forward pending
//! entry, a wipe or reset) drops that task's entries.
//!
//! Eviction is generational, an approximation of least-recently-used that costs nothing per
//! hit: entries go to the young generation; when the young generations of all stores hold half
//! the budget they become the old ones and the previous old ones are dropped; a hit in an old
//! generation moves the entry back.

use std::collections::{BTreeMap, HashMap};

/// Bytes charged per entry on top of its key and value (the hash table's slot, two vectors).
const ENTRY_OVERHEAD: usize = 64;

/// Keys are hashed with foldhash, faster than the standard SipHash on short keys: every key a
/// commit applies goes through here.
type Generation = HashMap<Vec<u8>, Option<Vec<u8>>, foldhash::fast::RandomState>;

/// One store of one task.
#[derive(Default)]
struct Store {
    young: Generation,
    old: Generation,
}

pub(crate) struct ReadCache {
    max_bytes: usize,
    young_bytes: usize,
    stores: BTreeMap<i32, BTreeMap<String, Store>>,
}

fn charge(key: &[u8], value: &Option<Vec<u8>>) -> usize {
    key.len() + value.as_ref().map_or(0, Vec::len) + ENTRY_OVERHEAD
}

impl ReadCache {
    /// A cache of at most about `max_bytes` (keys, values and [`ENTRY_OVERHEAD`]); 0 disables it.
    pub(crate) fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            young_bytes: 0,
            stores: BTreeMap::new(),
        }
    }

    /// The database's value of `key` in `store` of `task` if the cache knows it: `Some(None)`
    /// for a key known to be absent, `None` when the database must be asked.
    pub(crate) fn get(&mut self, task: i32, store: &str, key: &[u8]) -> Option<Option<Vec<u8>>> {
        let s = self.stores.get_mut(&task)?.get_mut(store)?;
        if let Some(v) = s.young.get(key) {
            return Some(v.clone());
        }
        let (key, value) = s.old.remove_entry(key)?;
        let found = value.clone();
        self.insert(task, store, key, value);
        Some(found)
    }

    /// Records the database's value of `key` (after a read of it, or a write through).
    pub(crate) fn insert(&mut self, task: i32, store: &str, key: Vec<u8>, value: Option<Vec<u8>>) {
        if self.max_bytes == 0 {
            return;
        }
        let bytes = charge(&key, &value);
        if self.young_bytes + bytes > self.max_bytes / 2 {
            for s in self.stores.values_mut().flat_map(BTreeMap::values_mut) {
                let capacity = s.young.len();
                s.old = std::mem::replace(
                    &mut s.young,
                    HashMap::with_capacity_and_hasher(capacity, Default::default()),
                );
            }
            self.young_bytes = 0;
        }
        let stores = self.stores.entry(task).or_default();
        let s = match stores.get_mut(store) {
            Some(s) => s,
            None => stores.entry(store.to_string()).or_default(),
        };
        let key_len = key.len();
        self.young_bytes += bytes;
        if let Some(previous) = s.young.insert(key, value) {
            self.young_bytes -= key_len + charge(&[], &previous);
        }
    }

    /// Forgets every entry of `task` (the database was written around the cache).
    pub(crate) fn forget_task(&mut self, task: i32) {
        if let Some(stores) = self.stores.remove(&task) {
            self.young_bytes -= stores
                .values()
                .flat_map(|s| &s.young)
                .map(|(k, v)| charge(k, v))
                .sum::<usize>();
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.stores
            .values()
            .flat_map(BTreeMap::values)
            .map(|s| s.young.len() + s.old.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> Vec<u8> {
        i.to_be_bytes().to_vec()
    }

    #[test]
    fn it_returns_what_was_recorded_absent_keys_included() {
        let mut c = ReadCache::new(1 << 20);
        assert_eq!(c.get(0, "s", b"a"), None, "unknown");
        c.insert(0, "s", b"a".to_vec(), Some(b"1".to_vec()));
        c.insert(0, "s", b"b".to_vec(), None);
        assert_eq!(c.get(0, "s", b"a"), Some(Some(b"1".to_vec())));
        assert_eq!(c.get(0, "s", b"b"), Some(None), "known to be absent");
        assert_eq!(c.get(1, "s", b"a"), None, "another task");
        assert_eq!(c.get(0, "t", b"a"), None, "another store");
        c.insert(0, "s", b"a".to_vec(), Some(b"2".to_vec()));
        assert_eq!(
            c.get(0, "s", b"a"),
            Some(Some(b"2".to_vec())),
            "the newer value"
        );
        c.insert(1, "s", b"a".to_vec(), Some(b"3".to_vec()));
        c.forget_task(0);
        assert_eq!(c.get(0, "s", b"a"), None);
        assert_eq!(
            c.get(1, "s", b"a"),
            Some(Some(b"3".to_vec())),
            "another task stays"
        );
    }

    #[test]
    fn it_stays_within_its_budget_and_keeps_what_is_read_often() {
        // 4 + 4 + 64 = 72 bytes an entry: the young generations hold 7 of them.
        let mut c = ReadCache::new(1024);
        for i in 0..1000 {
            c.insert((i % 3) as i32, "s", key(i), Some(key(i)));
            // Key 0 is read after every insert: a hit in the old generation moves it back.
            assert_eq!(
                c.get(0, "s", &key(0)),
                Some(Some(key(0))),
                "after insert {i}"
            );
            assert!(c.len() * 72 <= 1024, "{} entries after insert {i}", c.len());
        }
        assert_eq!(c.get(2, "s", &key(5)), None, "evicted long ago");
        assert_eq!(c.get(0, "s", &key(999)), Some(Some(key(999))), "the newest");
    }

    #[test]
    fn a_zero_budget_caches_nothing() {
        let mut c = ReadCache::new(0);
        c.insert(0, "s", b"a".to_vec(), Some(b"1".to_vec()));
        assert_eq!(c.get(0, "s", b"a"), None);
    }
}
