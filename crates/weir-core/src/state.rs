//! State stores as an operator sees them: named key-value stores, typed through serde, scoped to
//! the task (input partition) whose records are being processed.
//!
//! The storage itself (RocksDB, the uncommitted overlay, changelogs, recovery) lives in
//! `weir-state`; this module is the operator-facing surface, so operators can be unit-tested
//! with any [`StateAccess`] — e.g. a `BTreeMap`.
//!
//! Keys are encoded with [`StoreKey`], which keeps their order (ranges and prefixes scan in key
//! order); values are JSON through serde.

use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::ProcessError;

/// Where a restore of one store of one task stands, reported to the observer set with
/// `App::on_restore_progress` (e.g. to draw a progress bar) when it starts, after every applied
/// batch, and when it finishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreProgress {
    /// The store being restored.
    pub store: String,
    /// The task (input partition number), which is also the changelog partition.
    pub task: i32,
    /// The changelog topic read.
    pub changelog_topic: String,
    /// The changelog offset the restore started from.
    pub from: i64,
    /// The changelog's last stable offset when the restore started: where it stops.
    pub end: i64,
    /// The next changelog offset to read (`from..=end`).
    pub position: i64,
    /// Records applied so far.
    pub restored: u64,
    /// Set on the last report of this restore.
    pub finished: bool,
}

impl RestoreProgress {
    /// Changelog offsets still to read.
    pub fn remaining(&self) -> u64 {
        (self.end - self.position).max(0) as u64
    }

    /// Changelog offsets the restore covers (`end - from`).
    pub fn total(&self) -> u64 {
        (self.end - self.from).max(0) as u64
    }
}

/// A store an operator declares in [`Processor::stores`](crate::Processor::stores).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreSpec {
    /// The store name; also names its changelog topic `{application.id}-{name}-changelog`.
    pub name: String,
    /// Whether writes also go to the changelog topic (in the same transaction). Without a
    /// changelog the store is *local-only*: faster, but its contents stay on this machine — a
    /// task that moves to another instance, or a lost state directory, starts it empty.
    pub changelog: bool,
}

impl StoreSpec {
    /// A store backed by a compacted changelog topic (the default choice).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            changelog: true,
        }
    }

    /// A local-only store: no changelog (see [`StoreSpec::changelog`]).
    pub fn local_only(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            changelog: false,
        }
    }
}

/// A state failure, naming the store and what to do.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The operator asked for a store it did not declare.
    #[error("state store {0:?} is not declared: list it in Processor::stores()")]
    UnknownStore(String),
    /// A value did not (de)serialize.
    #[error("state store {store:?}, key {key:?}: cannot (de)serialize the value: {message}")]
    Serde {
        /// Store.
        store: String,
        /// Key (lossy text).
        key: String,
        /// The serde message.
        message: String,
    },
    /// A key did not decode.
    #[error("state store {store:?}: key bytes {key:?} do not decode as this key type")]
    Key {
        /// Store.
        store: String,
        /// The bytes.
        key: Vec<u8>,
    },
    /// The storage failed.
    #[error("state storage failed: {0}")]
    Storage(String),
    /// No state in this context (a hook that runs outside a task).
    #[error("state stores are reachable only from Processor::process and Processor::on_timer")]
    NoTask,
    /// The operator scheduled a timer without asking for timers.
    #[error("timers are not enabled for this processor: return true from Processor::timers()")]
    NoTimers,
}

/// State failures are fatal for the operator: retrying cannot fix a missing store or a value
/// that does not deserialize.
fn fatal(e: StateError) -> ProcessError {
    ProcessError::Fatal(Box::new(e))
}

/// Key-value pairs from a scan, in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// Bytes-level access to the stores of one task, implemented by the runtime's state manager.
pub trait StateAccess: Send {
    /// The value of `key`, seeing this task's uncommitted writes first.
    fn get(&mut self, store: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StateError>;
    /// Writes `key` (uncommitted until the transaction commits).
    fn put(&mut self, store: &str, key: &[u8], value: Vec<u8>) -> Result<(), StateError>;
    /// Deletes `key` (uncommitted until the transaction commits).
    fn delete(&mut self, store: &str, key: &[u8]) -> Result<(), StateError>;
    /// Entries with keys in the range, in key order, merged with uncommitted writes.
    fn scan(
        &mut self,
        store: &str,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
    ) -> Result<Entries, StateError>;
}

/// An order-preserving key encoding: `a < b` iff `a.encode() < b.encode()` bytewise.
pub trait StoreKey: Sized {
    /// Encodes the key.
    fn encode(&self) -> Vec<u8>;
    /// Decodes a key, or `None` if the bytes are not one.
    fn decode(bytes: &[u8]) -> Option<Self>;
}

impl StoreKey for String {
    fn encode(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
    fn decode(bytes: &[u8]) -> Option<Self> {
        String::from_utf8(bytes.to_vec()).ok()
    }
}

impl StoreKey for Vec<u8> {
    fn encode(&self) -> Vec<u8> {
        self.clone()
    }
    fn decode(bytes: &[u8]) -> Option<Self> {
        Some(bytes.to_vec())
    }
}

impl StoreKey for u64 {
    fn encode(&self) -> Vec<u8> {
        self.to_be_bytes().to_vec()
    }
    fn decode(bytes: &[u8]) -> Option<Self> {
        Some(u64::from_be_bytes(bytes.try_into().ok()?))
    }
}

impl StoreKey for i64 {
    fn encode(&self) -> Vec<u8> {
        ((*self as u64) ^ (1 << 63)).to_be_bytes().to_vec()
    }
    fn decode(bytes: &[u8]) -> Option<Self> {
        Some((u64::from_be_bytes(bytes.try_into().ok()?) ^ (1 << 63)) as i64)
    }
}

/// A typed view of one store of the current task. Get it with
/// [`Context::store`](crate::Context::store).
pub struct Store<'c, K, V> {
    name: String,
    access: &'c mut dyn StateAccess,
    _types: PhantomData<fn(K, V)>,
}

impl<K, V> std::fmt::Debug for Store<'_, K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("name", &self.name).finish()
    }
}

impl<'c, K: StoreKey, V: Serialize + DeserializeOwned> Store<'c, K, V> {
    pub(crate) fn new(name: &str, access: &'c mut dyn StateAccess) -> Self {
        Self {
            name: name.to_string(),
            access,
            _types: PhantomData,
        }
    }

    fn serde_err(&self, key: &[u8], e: &serde_json::Error) -> StateError {
        StateError::Serde {
            store: self.name.clone(),
            key: String::from_utf8_lossy(key).into_owned(),
            message: e.to_string(),
        }
    }

    fn decode(&self, key: &[u8], value: &[u8]) -> Result<(K, V), StateError> {
        let k = K::decode(key).ok_or_else(|| StateError::Key {
            store: self.name.clone(),
            key: key.to_vec(),
        })?;
        let v = serde_json::from_slice(value).map_err(|e| self.serde_err(key, &e))?;
        Ok((k, v))
    }

    /// The value of `key`, if any (this task's uncommitted writes included).
    pub fn get(&mut self, key: &K) -> Result<Option<V>, ProcessError> {
        let k = key.encode();
        match self.access.get(&self.name, &k).map_err(fatal)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| fatal(self.serde_err(&k, &e))),
        }
    }

    /// Writes `key`.
    pub fn put(&mut self, key: &K, value: &V) -> Result<(), ProcessError> {
        let k = key.encode();
        let bytes = serde_json::to_vec(value).map_err(|e| fatal(self.serde_err(&k, &e)))?;
        self.access.put(&self.name, &k, bytes).map_err(fatal)
    }

    /// Deletes `key`.
    pub fn delete(&mut self, key: &K) -> Result<(), ProcessError> {
        self.access.delete(&self.name, &key.encode()).map_err(fatal)
    }

    /// Entries with `from <= key < to`, in key order.
    pub fn range(&mut self, from: &K, to: &K) -> Result<Vec<(K, V)>, ProcessError> {
        let (f, t) = (from.encode(), to.encode());
        let raw = self
            .access
            .scan(&self.name, Bound::Included(&f), Bound::Excluded(&t))
            .map_err(fatal)?;
        raw.iter()
            .map(|(k, v)| self.decode(k, v).map_err(fatal))
            .collect()
    }

    /// Entries whose encoded key starts with `prefix`'s encoding, in key order.
    pub fn prefix(&mut self, prefix: &K) -> Result<Vec<(K, V)>, ProcessError> {
        let p = prefix.encode();
        let end = prefix_end(&p);
        let to = match &end {
            Some(e) => Bound::Excluded(e.as_slice()),
            None => Bound::Unbounded,
        };
        let raw = self
            .access
            .scan(&self.name, Bound::Included(&p), to)
            .map_err(fatal)?;
        raw.iter()
            .map(|(k, v)| self.decode(k, v).map_err(fatal))
            .collect()
    }
}

/// A [`StateAccess`] in memory, for unit tests of operators: stores are maps, writes apply at
/// once (there is no transaction to roll back).
#[derive(Clone, Debug, Default)]
pub struct MemoryState {
    entries: std::collections::BTreeMap<(String, Vec<u8>), Vec<u8>>,
}

impl MemoryState {
    /// The entries of `store`, in key order.
    pub fn entries(&self, store: &str) -> Entries {
        self.entries
            .iter()
            .filter(|((s, _), _)| s == store)
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect()
    }
}

impl StateAccess for MemoryState {
    fn get(&mut self, store: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self
            .entries
            .get(&(store.to_string(), key.to_vec()))
            .cloned())
    }
    fn put(&mut self, store: &str, key: &[u8], value: Vec<u8>) -> Result<(), StateError> {
        self.entries
            .insert((store.to_string(), key.to_vec()), value);
        Ok(())
    }
    fn delete(&mut self, store: &str, key: &[u8]) -> Result<(), StateError> {
        self.entries.remove(&(store.to_string(), key.to_vec()));
        Ok(())
    }
    fn scan(
        &mut self,
        store: &str,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
    ) -> Result<Entries, StateError> {
        let start = (store.to_string(), Vec::new());
        Ok(self
            .entries
            .range(start..)
            .take_while(|((s, _), _)| s == store)
            .filter(|((_, k), _)| RangeBounds::<[u8]>::contains(&(from, to), k.as_slice()))
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect())
    }
}

/// The smallest byte string greater than every string with this prefix, if any.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_keys_keep_their_order() {
        let mut xs = [-5i64, 3, i64::MIN, 0, i64::MAX, -1];
        let mut enc: Vec<Vec<u8>> = xs.iter().map(StoreKey::encode).collect();
        xs.sort();
        enc.sort();
        let dec: Vec<i64> = enc.iter().map(|b| i64::decode(b).unwrap()).collect();
        assert_eq!(dec, xs);
    }

    #[test]
    fn prefix_end_is_the_next_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 255]), Some(vec![2]));
        assert_eq!(prefix_end(&[255, 255]), None);
    }
}
