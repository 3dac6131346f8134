//! The operator's view of one task's stores: reads go through the open layer, the committing
//! one, the applying one (a committed transaction whose write is under way), the read cache,
//! then RocksDB; writes go to the open layer. See [`StateManager`].

use std::collections::BTreeMap;
use std::ops::{Bound, RangeBounds};

use rocksdb::{Direction, IteratorMode};
use weir_core::{StateAccess, StateError};

use crate::filter::KeyHash;
use crate::manager::{data_key, data_prefix, StateManager};

/// One task's stores, as [`StateAccess`] for the operator's context.
pub struct TaskAccess<'m> {
    manager: &'m mut StateManager,
    task: i32,
}

impl<'m> TaskAccess<'m> {
    pub(crate) fn new(manager: &'m mut StateManager, task: i32) -> Self {
        Self { manager, task }
    }
}

impl std::fmt::Debug for TaskAccess<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskAccess")
            .field("task", &self.task)
            .finish()
    }
}

impl TaskAccess<'_> {
    fn check(&self, store: &str) -> Result<(), StateError> {
        if self.manager.stores.contains_key(store) {
            Ok(())
        } else {
            Err(StateError::UnknownStore(store.to_string()))
        }
    }

    fn write(&mut self, store: &str, key: &[u8], value: Option<Vec<u8>>) -> Result<(), StateError> {
        self.check(store)?;
        let m = &mut *self.manager;
        m.uncommitted_bytes += key.len() + value.as_ref().map_or(0, Vec::len);
        let h = KeyHash::of(self.task, store, key);
        // A key the layer certainly lacks is inserted without looking for it first.
        let maybe_there = m.open_filter.may_contain(h);
        m.open_filter.insert(h);
        let entries = m.overlays.entry(self.task).or_default();
        let entries = match entries.get_mut(store) {
            Some(entries) => entries,
            None => entries.entry(store.to_string()).or_default(),
        };
        let slot = if maybe_there {
            entries.get_mut(key)
        } else {
            None
        };
        match slot {
            Some(slot) => *slot = value,
            None => {
                entries.insert(key.to_vec(), value);
            }
        }
        Ok(())
    }
}

impl StateAccess for TaskAccess<'_> {
    fn get(&mut self, store: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        self.check(store)?;
        // A finished applying write moves its layer into the cache (one under way is not
        // waited for).
        self.manager.join_applying(false);
        let m = &mut *self.manager;
        let h = KeyHash::of(self.task, store, key);
        for (layer, filter) in m.layers() {
            if !filter.may_contain(h) {
                continue;
            }
            if let Some(v) = layer
                .get(&self.task)
                .and_then(|o| o.get(store))
                .and_then(|entries| entries.get(key))
            {
                return Ok(v.clone());
            }
        }
        if let Some(v) = m.cache.get(self.task, store, key) {
            return Ok(v);
        }
        let v =
            m.db.get(data_key(self.task, store, key))
                .map_err(|e| StateError::Storage(m.rocks(&e).to_string()))?;
        m.cache.insert(self.task, store, key.to_vec(), v.clone());
        Ok(v)
    }

    fn put(&mut self, store: &str, key: &[u8], value: Vec<u8>) -> Result<(), StateError> {
        self.write(store, key, Some(value))
    }

    fn delete(&mut self, store: &str, key: &[u8]) -> Result<(), StateError> {
        self.write(store, key, None)
    }

    fn scan(
        &mut self,
        store: &str,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
    ) -> Result<weir_core::state::Entries, StateError> {
        self.check(store)?;
        let prefix = data_prefix(self.task, store);
        let in_range = |k: &[u8]| RangeBounds::<[u8]>::contains(&(from, to), k);
        let start = match from {
            Bound::Included(f) | Bound::Excluded(f) => data_key(self.task, store, f),
            Bound::Unbounded => prefix.clone(),
        };
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for item in self
            .manager
            .db
            .iterator(IteratorMode::From(&start, Direction::Forward))
        {
            let (k, v) =
                item.map_err(|e| StateError::Storage(self.manager.rocks(&e).to_string()))?;
            let Some(user_key) = k.strip_prefix(prefix.as_slice()) else {
                break;
            };
            if !RangeBounds::<[u8]>::contains(&(Bound::Unbounded, to), user_key) {
                break;
            }
            if !in_range(user_key) {
                continue; // equal to an excluded lower bound
            }
            merged.insert(user_key.to_vec(), v.to_vec());
        }
        // The applying layer over the database, the committing one over it, the open one over
        // all.
        for (layer, _) in self.manager.layers().rev() {
            let entries = layer
                .get(&self.task)
                .and_then(|o| o.get(store))
                .filter(|_| !empty_range(from, to));
            for (k, v) in entries
                .into_iter()
                .flat_map(|e| e.range::<[u8], _>((from, to)))
            {
                match v {
                    Some(v) => merged.insert(k.clone(), v.clone()),
                    None => merged.remove(k),
                };
            }
        }
        Ok(merged.into_iter().collect())
    }
}

/// Whether no key lies between the bounds (`BTreeMap::range` panics on such bounds).
fn empty_range(from: Bound<&[u8]>, to: Bound<&[u8]>) -> bool {
    match (from, to) {
        (Bound::Included(f), Bound::Included(t)) => f > t,
        (Bound::Included(f) | Bound::Excluded(f), Bound::Included(t) | Bound::Excluded(t)) => {
            f >= t
        }
        _ => false,
    }
}
