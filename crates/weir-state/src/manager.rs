//! The state manager: overlay, prepare/apply/abort, recovery, restore. See the crate docs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};
use weir_core::StoreSpec;

use crate::access::TaskAccess;
use crate::cache::ReadCache;
use crate::delta::{self, Change};
use crate::filter::KeyFilter;
use crate::writer::{Writer, Written};
use crate::Standing;

const DATA: u8 = 0x01;
const META: u8 = 0x02;
const PENDING: u8 = 0x03;
const DELTA: u8 = 0x04;

/// The name of a store's changelog topic.
pub fn changelog_topic(application_id: &str, store: &str) -> String {
    format!("{application_id}-{store}-changelog")
}

/// What is stored with a task's state (`R` in DESIGN.md).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskMeta {
    /// Next input offset per topic, committed together with this state.
    pub offsets: BTreeMap<String, i64>,
    /// Next changelog offset per store: where a restore of this local copy would continue.
    pub changelog: BTreeMap<String, i64>,
    /// The sequence number of the last commit applied.
    pub seq: u64,
    /// The state generation (set by a state-aware offset reset; see [`crate::Marks`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset: Option<u64>,
}

/// A prepared, not yet applied, commit of a task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// Its sequence number (also in the committed offsets' metadata in Kafka).
    pub seq: u64,
    /// Its target input offsets per topic.
    pub offsets: BTreeMap<String, i64>,
}

/// What recovery decided for a task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecoveryOutcome {
    /// No committed offsets and no local state: a new task.
    Fresh,
    /// Local state is exactly at the committed offsets: no replay, no restore.
    InStep {
        /// Whether a pending entry was rolled forward to get there.
        rolled_forward: bool,
    },
    /// Local state is behind (or missing): restore from the changelog, from these offsets per
    /// store (absent: from the beginning).
    Behind {
        /// Changelog offsets the local copy has.
        changelog_from: BTreeMap<String, i64>,
    },
}

/// A state failure: where, what, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum StateStoreError {
    /// RocksDB failed.
    #[error("RocksDB at {path}: {message}")]
    Rocks {
        /// The database directory.
        path: PathBuf,
        /// RocksDB's message.
        message: String,
    },
    /// Stored metadata does not decode.
    #[error("state at {path}: task {task}: stored {what} is unreadable; the state directory is damaged. It is moved aside at the next start and its tasks restored from their changelogs")]
    Corrupt {
        /// The database directory.
        path: PathBuf,
        /// The task.
        task: i32,
        /// Which record.
        what: &'static str,
    },
    /// The directory is damaged and a store without a changelog would lose its contents if it
    /// were moved aside: weir refuses rather than start that store empty behind the user's back.
    #[error(
        "state at {path} is damaged ({why}) and store {store:?} is local-only (no changelog), so \
         its contents cannot be restored. Move the directory aside (or delete it) to start that \
         store empty, knowing its contents are lost"
    )]
    DamagedLocalOnly {
        /// The database directory.
        path: PathBuf,
        /// The local-only store.
        store: String,
        /// What was found.
        why: String,
    },
    /// Local state is ahead of the group's committed offsets.
    #[error(
        "task {task}: local state is ahead of the committed offsets ({details}): the group's \
         offsets were moved back behind weir's back. Reset state and offsets together with \
         `weir offsets reset --reset-state` (or delete this instance's state directory {path} \
         to rebuild from the changelog at the new offsets)"
    )]
    Ahead {
        /// The task.
        task: i32,
        /// Per topic: local vs committed.
        details: String,
        /// The state directory.
        path: PathBuf,
    },
}

/// Appended to the message of a corruption found while running.
const MOVED_AT_NEXT_START: &str =
    "; the state directory is moved aside at the next start and its tasks restored from their changelogs";

/// The marker left next to a database found damaged while running.
fn damage_marker(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}.damaged", path.display()))
}

/// RocksDB's message for an error of the database at `path`; a corruption also leaves the
/// marker that moves the directory aside at the next start.
pub(crate) fn rocks_message(path: &Path, e: &rocksdb::Error) -> String {
    let mut message = e.to_string();
    if e.kind() == rocksdb::ErrorKind::Corruption {
        mark_damaged(path, &message);
        message.push_str(MOVED_AT_NEXT_START);
    }
    message
}

/// Leaves the marker that makes the next [`StateManager::open`] move the directory at `path`
/// aside.
fn mark_damaged(path: &Path, why: &str) {
    if let Err(e) = std::fs::write(damage_marker(path), why) {
        tracing::error!(path = %path.display(), error = %e, "cannot mark the damaged state directory; delete it before the next start");
    }
}

/// What is wrong with weir's own metadata in `db` (every task's offsets and pending entry must
/// decode), if anything. Small: one entry of each per task.
fn unreadable_metadata(db: &DB) -> Option<String> {
    for (tag, what) in [(META, "offsets"), (PENDING, "pending entry")] {
        for item in db.iterator(IteratorMode::From(&[tag], Direction::Forward)) {
            let (k, v) = match item {
                Ok(kv) => kv,
                Err(e) => return Some(e.to_string()),
            };
            if k.first() != Some(&tag) {
                break;
            }
            let decodes = if tag == META {
                serde_json::from_slice::<TaskMeta>(&v).is_ok()
            } else {
                serde_json::from_slice::<Pending>(&v).is_ok()
            };
            if !decodes {
                let task = k
                    .get(1..5)
                    .and_then(|b| b.try_into().ok())
                    .map(|b: [u8; 4]| u32::from_be_bytes(b) as i32);
                return Some(format!("task {task:?}: stored {what} does not decode"));
            }
        }
    }
    None
}

fn task_key(tag: u8, task: i32) -> Vec<u8> {
    let mut k = Vec::with_capacity(5);
    k.push(tag);
    k.extend_from_slice(&(task as u32).to_be_bytes());
    k
}

pub(crate) fn data_prefix(task: i32, store: &str) -> Vec<u8> {
    let mut k = task_key(DATA, task);
    k.push(store.len() as u8);
    k.extend_from_slice(store.as_bytes());
    k
}

pub(crate) fn data_key(task: i32, store: &str, key: &[u8]) -> Vec<u8> {
    let mut k = data_prefix(task, store);
    k.extend_from_slice(key);
    k
}

/// A task's part of a commit: task, sequence number, target offsets per input topic.
pub type TaskCommit = (i32, u64, BTreeMap<String, i64>);

/// Per input topic of a task: the group's committed offset and the sequence number from its
/// metadata (`K` in DESIGN.md).
pub type Committed = BTreeMap<String, (Option<i64>, Option<u64>)>;

/// A task's uncommitted writes: per store, per key the new value, `None` for a delete.
pub(crate) type Overlay = BTreeMap<String, BTreeMap<Vec<u8>, Option<Vec<u8>>>>;

/// A transaction's writes, per task.
pub(crate) type Layer = BTreeMap<i32, Overlay>;

/// A committed transaction's writes on their way into the database: the writer thread builds
/// the `WriteBatch` from the layer and writes it. Until then the layer is read like the other
/// two, and `metas` are the task metadata the write puts; once it is done the layer moves into
/// the read cache.
pub(crate) struct Applying {
    pub(crate) layer: Arc<Layer>,
    filter: KeyFilter,
    metas: BTreeMap<i32, TaskMeta>,
    /// The write's receipt, until it is taken.
    done: Option<Written>,
    /// The write's error, once taken: the layer stays readable until a writer reports it.
    failed: Option<String>,
}

/// A prepare under way (see [`StateManager::prepare`]): Kafka may decide the transaction only
/// once [`wait`](Self::wait) returned `Ok`.
#[derive(Debug)]
pub struct Prepared {
    written: Option<Written>,
    path: PathBuf,
}

impl Prepared {
    /// The database directory it writes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits until the prepared commit is durable.
    pub fn wait(self) -> Result<(), StateStoreError> {
        match self.written.map(Written::wait) {
            Some(Err(why)) => Err(StateStoreError::Rocks {
                path: self.path,
                message: format!("preparing a commit: {why}"),
            }),
            _ => Ok(()),
        }
    }
}

/// RocksDB state of one application instance, with two uncommitted layers per task: the open
/// transaction's writes, and the writes of the transaction that is committing (frozen by
/// [`prepare`](StateManager::prepare), until [`apply`](StateManager::apply) writes them or
/// [`abort`](StateManager::abort) drops them). Reads see the open layer, then the committing
/// one, then the database — through a bounded cache of committed values, written through by
/// [`apply`](StateManager::apply) — skipping the layers whose key filter rules the key out.
/// With overlapped commits the second layer is in Kafka's hands while the next transaction
/// fills the first; in line it lasts from prepare to apply. The prepare's and the apply's
/// writes are made by one writer thread, in order; a committed transaction's layer is read as
/// a third layer until its write is done (see [`apply`](StateManager::apply)).
pub struct StateManager {
    pub(crate) db: Arc<DB>,
    path: PathBuf,
    pub(crate) stores: BTreeMap<String, StoreSpec>,
    pub(crate) overlays: BTreeMap<i32, Overlay>,
    /// Every key of `overlays` (see `filter.rs`).
    pub(crate) open_filter: KeyFilter,
    /// Shared with the writer thread while the prepare writes it.
    pub(crate) committing: Arc<Layer>,
    committing_filter: KeyFilter,
    pub(crate) applying: Option<Applying>,
    /// Writes the prepares and applies, in order, on a thread of its own.
    writer: Writer,
    pub(crate) cache: ReadCache,
    pub(crate) uncommitted_bytes: usize,
    /// Tests hold the next applying write until they send on this channel's sender.
    #[cfg(test)]
    hold_apply: Option<std::sync::mpsc::Receiver<()>>,
    /// Tests make the next applying write fail (its thread panics).
    #[cfg(test)]
    fail_apply: bool,
}

impl std::fmt::Debug for StateManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateManager")
            .field("path", &self.path)
            .field("stores", &self.stores.keys().collect::<Vec<_>>())
            .field("uncommitted_bytes", &self.uncommitted_bytes)
            .finish()
    }
}

impl StateManager {
    /// Opens (or creates) the database at `path`. A database RocksDB reports as corrupt is
    /// moved aside to `{path}.corrupt-{unix time}` — never reused — and a new one is created;
    /// every task then restores from its changelogs. Returns the manager and, if it happened,
    /// where the corrupt copy went.
    pub fn open(
        path: &Path,
        stores: Vec<StoreSpec>,
    ) -> Result<(Self, Option<PathBuf>), StateStoreError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_paranoid_checks(true);
        opts.increase_parallelism(2);
        // A restart after kill -9 replays the write-ahead log of the unflushed memtable: smaller
        // memtables bound that replay (restart time) at the cost of more, smaller flushes.
        opts.set_write_buffer_size(32 << 20);
        opts.set_max_total_wal_size(48 << 20);
        let rocks = |e: rocksdb::Error| StateStoreError::Rocks {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        // Damage found while running (a block that failed its checksum, unreadable metadata)
        // left a marker; damage found now is RocksDB refusing to open, or weir's own metadata
        // not decoding. Either way the directory is moved aside, never reused.
        let marker = damage_marker(path);
        let damage = match std::fs::read_to_string(&marker) {
            Ok(why) => Err(why),
            Err(_) => match DB::open(&opts, path) {
                Ok(db) => match unreadable_metadata(&db) {
                    None => Ok(db),
                    Some(why) => {
                        drop(db);
                        Err(why)
                    }
                },
                Err(e) if e.kind() == rocksdb::ErrorKind::Corruption => Err(e.to_string()),
                Err(e) => return Err(rocks(e)),
            },
        };
        let (db, moved) = match damage {
            Ok(db) => (db, None),
            Err(why) => {
                if let Some(local) = stores.iter().find(|s| !s.changelog) {
                    return Err(StateStoreError::DamagedLocalOnly {
                        path: path.to_path_buf(),
                        store: local.name.clone(),
                        why,
                    });
                }
                let secs = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let aside = PathBuf::from(format!("{}.corrupt-{secs}", path.display()));
                tracing::error!(path = %path.display(), aside = %aside.display(), error = %why,
                    "state directory is corrupt; moving it aside and restoring from the changelogs");
                if path.exists() {
                    std::fs::rename(path, &aside).map_err(|io| StateStoreError::Rocks {
                        path: path.to_path_buf(),
                        message: format!("corrupt ({why}) and cannot be moved aside: {io}"),
                    })?;
                }
                let _ = std::fs::remove_file(&marker);
                (DB::open(&opts, path).map_err(rocks)?, Some(aside))
            }
        };
        let writer = Writer::start(path).map_err(|e| StateStoreError::Rocks {
            path: path.to_path_buf(),
            message: format!("cannot start the thread that writes the state: {e}"),
        })?;
        Ok((
            Self {
                db: Arc::new(db),
                path: path.to_path_buf(),
                stores: stores.into_iter().map(|s| (s.name.clone(), s)).collect(),
                overlays: BTreeMap::new(),
                open_filter: KeyFilter::default(),
                committing: Arc::default(),
                committing_filter: KeyFilter::default(),
                applying: None,
                writer,
                cache: ReadCache::new(0),
                #[cfg(test)]
                hold_apply: None,
                #[cfg(test)]
                fail_apply: false,
                uncommitted_bytes: 0,
            },
            moved,
        ))
    }

    pub(crate) fn rocks(&self, e: &rocksdb::Error) -> StateStoreError {
        StateStoreError::Rocks {
            path: self.path.clone(),
            message: self.rocks_message(e),
        }
    }

    fn rocks_message(&self, e: &rocksdb::Error) -> String {
        rocks_message(&self.path, e)
    }

    /// Drops `task`'s entries from the read cache, before a write around it (after settling:
    /// the applying layer goes into the cache first).
    fn forget_cached(&mut self, task: i32) -> Result<(), StateStoreError> {
        self.settle()?;
        self.cache.forget_task(task);
        Ok(())
    }

    /// Leaves the marker that makes the next [`open`](Self::open) move this directory aside.
    fn mark_damaged(&self, why: &str) {
        mark_damaged(&self.path, why);
    }

    /// Sets the budget of the cache of committed values (`state.cache.max.bytes`; 0, the
    /// default: no cache), emptying it.
    pub fn set_cache_max_bytes(&mut self, max_bytes: usize) -> Result<(), StateStoreError> {
        self.settle()?;
        self.cache = ReadCache::new(max_bytes);
        Ok(())
    }

    /// Waits for every write handed to the writer thread (an apply, a prepare). Every method
    /// that writes the database on the caller's thread (or reads what those writes change)
    /// settles first, so the writes keep their order. An error of those writes is reported
    /// here.
    fn settle(&mut self) -> Result<(), StateStoreError> {
        self.join_applying(true);
        let failed = |message| StateStoreError::Rocks {
            path: self.path.clone(),
            message,
        };
        match self.applying.take() {
            Some(Applying {
                failed: Some(why), ..
            }) => Err(failed(format!(
                "writing a committed transaction's state: {why}"
            ))),
            _ => self.writer.barrier().map_err(failed),
        }
    }

    /// Takes the applying write's outcome if it is done (`wait`: or waits for it). A
    /// successful write's layer moves into the read cache; a failed one's stays readable, with
    /// its error, for [`settle`](Self::settle) to report.
    pub(crate) fn join_applying(&mut self, wait: bool) {
        let Some(done) = self.applying.as_mut().and_then(|a| a.done.take()) else {
            return;
        };
        let outcome = if wait {
            done.wait()
        } else {
            match done.try_take() {
                Ok(outcome) => outcome,
                Err(done) => {
                    if let Some(a) = self.applying.as_mut() {
                        a.done = Some(done);
                    }
                    return;
                }
            }
        };
        match (outcome.err(), self.applying.take()) {
            (None, Some(applying)) => {
                // What the database now holds, the cache holds too (moved: the write is done
                // with its reference).
                let layer = Arc::try_unwrap(applying.layer).unwrap_or_else(|l| (*l).clone());
                for (task, overlay) in layer {
                    for (store, entries) in overlay {
                        for (key, value) in entries {
                            self.cache.insert(task, &store, key, value);
                        }
                    }
                }
            }
            (Some(why), Some(mut applying)) => {
                applying.failed = Some(why);
                self.applying = Some(applying);
            }
            (_, None) => {}
        }
    }

    /// The layers of writes not in the database yet, newest first: the open transaction's, the
    /// committing one's, the applying one's; each with the filter of its keys.
    pub(crate) fn layers(&self) -> impl DoubleEndedIterator<Item = (&Layer, &KeyFilter)> {
        let applying = self.applying.as_ref().map(|a| (&*a.layer, &a.filter));
        [
            Some((&self.overlays, &self.open_filter)),
            Some((&*self.committing, &self.committing_filter)),
            applying,
        ]
        .into_iter()
        .flatten()
    }

    /// The declared stores.
    pub fn stores(&self) -> impl Iterator<Item = &StoreSpec> {
        self.stores.values()
    }

    /// Bytes written since the last commit (keys and values), the bound that forces an early
    /// commit.
    pub fn uncommitted_bytes(&self) -> usize {
        self.uncommitted_bytes
    }

    /// The operator's view of `task`'s stores.
    pub fn access(&mut self, task: i32) -> TaskAccess<'_> {
        TaskAccess::new(self, task)
    }

    /// Calls `f(store, task, key, value)` for every write of the open transaction to a store
    /// with a changelog — the final value of each key in this transaction, not every update.
    pub fn for_each_changelog_write(&self, mut f: impl FnMut(&str, i32, &[u8], Option<&[u8]>)) {
        for (task, overlay) in &self.overlays {
            for (store, entries) in overlay {
                if self.stores.get(store).is_some_and(|s| s.changelog) {
                    for (key, value) in entries {
                        f(store, *task, key, value.as_deref());
                    }
                }
            }
        }
    }

    /// The tasks with writes in the open transaction.
    pub fn dirty_tasks(&self) -> BTreeSet<i32> {
        self.overlays.keys().copied().collect()
    }

    fn read_json<T: for<'de> Deserialize<'de>>(
        &self,
        key: &[u8],
        task: i32,
        what: &'static str,
    ) -> Result<Option<T>, StateStoreError> {
        match self.db.get(key).map_err(|e| self.rocks(&e))? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                self.mark_damaged(&format!("task {task}: stored {what} does not decode: {e}"));
                StateStoreError::Corrupt {
                    path: self.path.clone(),
                    task,
                    what,
                }
            }),
        }
    }

    /// The offsets stored with `task`'s state (`R`), if any.
    pub fn meta(&self, task: i32) -> Result<Option<TaskMeta>, StateStoreError> {
        if let Some(meta) = self.applying.as_ref().and_then(|a| a.metas.get(&task)) {
            return Ok(Some(meta.clone()));
        }
        self.read_json(&task_key(META, task), task, "offsets")
    }

    /// `task`'s prepared commit, if one was not applied (once the writes under way are done).
    pub fn pending(&mut self, task: i32) -> Result<Option<Pending>, StateStoreError> {
        self.settle()?;
        self.read_json(&task_key(PENDING, task), task, "pending entry")
    }

    /// Every change of `task` in `layer`, in (store, key) order.
    fn changes(layer: &Layer, task: i32) -> impl Iterator<Item = Change<'_>> {
        layer
            .get(&task)
            .into_iter()
            .flatten()
            .flat_map(|(store, entries)| {
                entries
                    .iter()
                    .map(move |(k, v)| (store.as_str(), k.as_slice(), v.as_deref()))
            })
    }

    /// **Prepare** (step b): the open transaction's writes become the committing layer
    /// ([`freeze`](Self::freeze)), and one synced, atomic write of every committing task's
    /// delta and target offsets as a pending entry goes to the writer thread, after every
    /// write handed to it before (the previous transaction's apply, which deletes the pending
    /// entry it replaces). The transaction may commit in Kafka once the returned
    /// [`Prepared::wait`] is `Ok`; meanwhile reads see the committing layer as before.
    pub fn prepare(&mut self, commits: &[TaskCommit]) -> Result<Prepared, StateStoreError> {
        self.freeze();
        let path = self.path.clone();
        if commits.is_empty() {
            return Ok(Prepared {
                written: None,
                path,
            });
        }
        let (db, layer, commits) = (
            Arc::clone(&self.db),
            Arc::clone(&self.committing),
            commits.to_vec(),
        );
        let written = self.writer.submit(Box::new(move || {
            let mut batch = WriteBatch::default();
            for (task, seq, offsets) in commits {
                let pending = Pending { seq, offsets };
                batch.put(
                    task_key(PENDING, task),
                    serde_json::to_vec(&pending).expect("serializable"),
                );
                batch.put(
                    task_key(DELTA, task),
                    delta::encode(Self::changes(&layer, task)),
                );
            }
            drop(layer);
            let mut sync = WriteOptions::default();
            sync.set_sync(true);
            db.write_opt(batch, &sync)
        }));
        Ok(Prepared {
            written: Some(written),
            path,
        })
    }

    /// The open transaction's writes become the committing layer (by [`prepare`](Self::prepare),
    /// or before an at_least_once offset commit): reads still see them, the next writes go to a
    /// new open layer, and [`apply`](Self::apply) writes them once Kafka committed. Only one
    /// transaction commits at a time: the previous one was applied or dropped.
    pub fn freeze(&mut self) {
        debug_assert!(
            self.committing.is_empty(),
            "a transaction froze while another was committing"
        );
        self.committing = Arc::new(std::mem::take(&mut self.overlays));
        self.committing_filter = std::mem::take(&mut self.open_filter);
        self.uncommitted_bytes = 0;
    }

    /// **Apply** (step d): the committing layer's deltas, the new offsets (`R = K`), changelog
    /// offsets and sequence numbers in one atomic write; pending entries dropped; the committing
    /// layer cleared (the open one stays).
    ///
    /// The write goes on on the writer thread (the transaction is committed in Kafka: its
    /// pending entry, synced by [`prepare`](Self::prepare), rolls it forward should the process
    /// die first). Until it is done the layer is read under the committing one and
    /// [`meta`](Self::meta) answers from it; the next write to the database waits for it and
    /// reports its error. Then the layer moves into the read cache.
    pub fn apply(
        &mut self,
        commits: &[TaskCommit],
        changelog_next: &BTreeMap<(String, i32), i64>,
    ) -> Result<(), StateStoreError> {
        self.settle()?;
        let mut metas = BTreeMap::new();
        for (task, seq, offsets) in commits {
            let mut meta = self.meta(*task)?.unwrap_or_default();
            meta.offsets
                .extend(offsets.iter().map(|(t, o)| (t.clone(), *o)));
            meta.seq = *seq;
            for ((store, t), next) in changelog_next {
                if t == task {
                    meta.changelog.insert(store.clone(), *next);
                }
            }
            metas.insert(*task, meta);
        }
        // Only the committed tasks' writes are kept (every task with writes has offsets to
        // commit).
        // The prepare's write is done with the layer (settled above): it is moved, not copied.
        let committing = std::mem::take(&mut self.committing);
        let mut layer = Arc::try_unwrap(committing).unwrap_or_else(|l| (*l).clone());
        layer.retain(|task, _| metas.contains_key(task));
        let layer = Arc::new(layer);
        let (db, written) = (Arc::clone(&self.db), Arc::clone(&layer));
        let encoded: Vec<(i32, Vec<u8>)> = metas
            .iter()
            .map(|(task, meta)| (*task, serde_json::to_vec(meta).expect("serializable")))
            .collect();
        #[cfg(test)]
        let (hold, fail) = (self.hold_apply.take(), std::mem::take(&mut self.fail_apply));
        let done = self.writer.submit(Box::new(move || {
            #[cfg(test)]
            {
                if let Some(hold) = hold {
                    let _ = hold.recv();
                }
                assert!(!fail, "injected failure of an applying write");
            }
            let mut batch = WriteBatch::default();
            for (task, meta) in &encoded {
                write_changes(&mut batch, *task, Self::changes(&written, *task));
                batch.put(task_key(META, *task), meta);
                batch.delete(task_key(PENDING, *task));
                batch.delete(task_key(DELTA, *task));
            }
            drop(written);
            db.write(batch)
        }));
        self.applying = Some(Applying {
            layer,
            filter: std::mem::take(&mut self.committing_filter),
            metas,
            done: Some(done),
            failed: None,
        });
        Ok(())
    }

    /// **Abort**: both uncommitted layers are dropped — the open transaction's and the
    /// committing one's, whose commit failed (Kafka aborted it) — and so are the committing
    /// layer's pending entries.
    pub fn abort(&mut self) -> Result<(), StateStoreError> {
        self.settle()?;
        let mut batch = WriteBatch::default();
        for task in self.committing.keys() {
            batch.delete(task_key(PENDING, *task));
            batch.delete(task_key(DELTA, *task));
        }
        self.db.write(batch).map_err(|e| self.rocks(&e))?;
        self.forget()
    }

    /// Both uncommitted layers are dropped, but not the pending entries: the committing
    /// transaction's outcome is Kafka's to tell (stopping, or replacing a producer whose call
    /// did not return). Recovery decides them against Kafka's committed offsets
    /// ([`decide_pending`](Self::decide_pending)), or a task's next prepare replaces its entry.
    pub fn forget(&mut self) -> Result<(), StateStoreError> {
        // The layers go even when the applying write failed (its error is still reported).
        let settled = self.settle();
        self.overlays.clear();
        self.open_filter = KeyFilter::default();
        self.committing = Arc::default();
        self.committing_filter = KeyFilter::default();
        self.uncommitted_bytes = 0;
        settled
    }

    /// Drops the open transaction's writes only, while the committing layer's commit is still
    /// in flight (its outcome applies it or drops it).
    pub fn abort_open(&mut self) -> Result<(), StateStoreError> {
        self.overlays.clear();
        self.open_filter = KeyFilter::default();
        self.uncommitted_bytes = 0;
        Ok(())
    }

    /// Recovery of one task against `committed` — per input topic, the group's committed offset
    /// and the sequence number from its metadata (DESIGN.md, "Recovery"): a pending entry is
    /// decided ([`decide_pending`](Self::decide_pending)), then the local offsets are compared
    /// with the committed ones ([`compare`](Self::compare)).
    pub fn recover(
        &mut self,
        task: i32,
        committed: &Committed,
    ) -> Result<RecoveryOutcome, StateStoreError> {
        let rolled_forward = self.decide_pending(task, committed)?;
        self.compare(task, committed, rolled_forward)
    }

    /// Decides a pending entry of `task`, if there is one: rolled forward when Kafka committed
    /// its transaction ([`pending_decided`](crate::pending_decided)), back otherwise. Returns
    /// whether it rolled forward. The task's uncommitted overlay is dropped first.
    pub fn decide_pending(
        &mut self,
        task: i32,
        committed: &Committed,
    ) -> Result<bool, StateStoreError> {
        // A task is (re)assigned: whatever happened to its state elsewhere, the cache does not
        // know it.
        self.forget_cached(task)?;
        self.overlays.remove(&task);
        Arc::make_mut(&mut self.committing).remove(&task);
        let mut rolled_forward = false;
        if let Some(pending) = self.pending(task)? {
            let decided = crate::pending_decided(&pending, |t| {
                committed.get(t).and_then(|(o, seq)| o.map(|o| (o, *seq)))
            });
            let mut batch = WriteBatch::default();
            if decided {
                let bytes = self
                    .db
                    .get(task_key(DELTA, task))
                    .map_err(|e| self.rocks(&e))?;
                let changes =
                    delta::decode(bytes.as_deref().unwrap_or_default()).ok_or_else(|| {
                        StateStoreError::Corrupt {
                            path: self.path.clone(),
                            task,
                            what: "pending delta",
                        }
                    })?;
                let mut meta = self.meta(task)?.unwrap_or_default();
                meta.offsets.extend(pending.offsets.clone());
                meta.seq = pending.seq;
                // The changelog offsets are not known here; a later restore re-reads from the
                // previous ones, which is idempotent.
                write_changes(
                    &mut batch,
                    task,
                    changes
                        .iter()
                        .map(|(s, k, v)| (s.as_str(), k.as_slice(), v.as_deref())),
                );
                batch.put(
                    task_key(META, task),
                    serde_json::to_vec(&meta).expect("serializable"),
                );
                rolled_forward = true;
                tracing::info!(
                    task,
                    seq = pending.seq,
                    "pending state commit rolled forward (Kafka committed it)"
                );
            } else {
                tracing::info!(
                    task,
                    seq = pending.seq,
                    "pending state commit rolled back (Kafka did not commit it)"
                );
            }
            batch.delete(task_key(PENDING, task));
            batch.delete(task_key(DELTA, task));
            let mut sync = WriteOptions::default();
            sync.set_sync(true);
            self.db
                .write_opt(batch, &sync)
                .map_err(|e| self.rocks(&e))?;
        }

        Ok(rolled_forward)
    }

    /// Compares `task`'s local offsets `R` with the committed `K` ([`standing`](crate::standing)
    /// per partition): in step, behind (restore from the changelog) or fresh; ahead is an
    /// error that names the way out.
    pub fn compare(
        &self,
        task: i32,
        committed: &Committed,
        rolled_forward: bool,
    ) -> Result<RecoveryOutcome, StateStoreError> {
        let meta = self.meta(task)?;
        let local = meta.as_ref().map(|m| &m.offsets);
        let mut ahead = Vec::new();
        let mut behind = false;
        let mut fresh = true;
        for (topic, (k, _)) in committed {
            let r = local.and_then(|l| l.get(topic)).copied();
            match crate::standing(r, *k) {
                Standing::New => {}
                Standing::InStep => fresh = false,
                Standing::Behind => {
                    behind = true;
                    fresh = false;
                }
                Standing::Ahead => ahead.push(format!(
                    "{topic}/{task}: local {} vs committed {}",
                    r.map_or("none".into(), |o| o.to_string()),
                    k.map_or("none".into(), |o| o.to_string())
                )),
            }
        }
        if !ahead.is_empty() {
            return Err(StateStoreError::Ahead {
                task,
                details: ahead.join(", "),
                path: self.path.clone(),
            });
        }
        Ok(if behind {
            RecoveryOutcome::Behind {
                changelog_from: meta.map(|m| m.changelog).unwrap_or_default(),
            }
        } else if fresh && meta.is_none() {
            RecoveryOutcome::Fresh
        } else {
            RecoveryOutcome::InStep { rolled_forward }
        })
    }

    /// Deletes every entry of `task` in `store` (before a restore from the beginning).
    pub fn wipe(&mut self, task: i32, store: &str) -> Result<(), StateStoreError> {
        self.forget_cached(task)?;
        let prefix = data_prefix(task, store);
        let end = weir_core::state::prefix_end(&prefix).expect("non-empty prefix");
        let mut batch = WriteBatch::default();
        batch.delete_range(&prefix, &end);
        self.db.write(batch).map_err(|e| self.rocks(&e))
    }

    /// Starts state generation `reset` for `task` if its local state is of another one: every
    /// store entry, pending commit and changelog offset of the task is dropped and `R` becomes
    /// `offsets` (where the reset moved the group). Returns whether it wiped anything.
    pub fn reset_task(
        &mut self,
        task: i32,
        reset: u64,
        offsets: BTreeMap<String, i64>,
    ) -> Result<bool, StateStoreError> {
        if self.meta(task)?.is_some_and(|m| m.reset == Some(reset)) {
            return Ok(false);
        }
        self.forget_cached(task)?;
        self.overlays.remove(&task);
        Arc::make_mut(&mut self.committing).remove(&task);
        let mut batch = WriteBatch::default();
        let (start, end) = (task_key(DATA, task), task_key(DATA, task + 1));
        batch.delete_range(&start, &end);
        batch.delete(task_key(PENDING, task));
        batch.delete(task_key(DELTA, task));
        let meta = TaskMeta {
            offsets,
            changelog: BTreeMap::new(),
            seq: 0,
            reset: Some(reset),
        };
        batch.put(
            task_key(META, task),
            serde_json::to_vec(&meta).expect("serializable"),
        );
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        self.db
            .write_opt(batch, &sync)
            .map_err(|e| self.rocks(&e))?;
        Ok(true)
    }

    /// Writes a batch of changelog records (restore); `None` values delete. `next` is the
    /// changelog offset after the batch: it becomes the store's restore position in the task's
    /// metadata in the same atomic write, so a restore that is interrupted (SIGKILL, SIGTERM)
    /// resumes there instead of starting over. `R` (the input offsets) is untouched until
    /// [`finish_restore`](Self::finish_restore): a partly restored task stays "behind".
    pub fn restore_batch(
        &mut self,
        task: i32,
        store: &str,
        records: &[(Vec<u8>, Option<Vec<u8>>)],
        next: i64,
    ) -> Result<(), StateStoreError> {
        self.forget_cached(task)?;
        let mut batch = WriteBatch::default();
        for (k, v) in records {
            match v {
                Some(v) => batch.put(data_key(task, store, k), v),
                None => batch.delete(data_key(task, store, k)),
            }
        }
        let mut meta = self.meta(task)?.unwrap_or_default();
        meta.changelog.insert(store.to_string(), next);
        batch.put(
            task_key(META, task),
            serde_json::to_vec(&meta).expect("serializable"),
        );
        self.db.write(batch).map_err(|e| self.rocks(&e))
    }

    /// Ends a restore: `R = K`, with the changelog offsets reached.
    pub fn finish_restore(
        &mut self,
        task: i32,
        offsets: BTreeMap<String, i64>,
        seq: u64,
        changelog: BTreeMap<String, i64>,
    ) -> Result<(), StateStoreError> {
        self.settle()?;
        let mut meta = self.meta(task)?.unwrap_or_default();
        meta.offsets = offsets;
        meta.seq = seq;
        meta.changelog.extend(changelog);
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        self.db
            .put_opt(
                task_key(META, task),
                serde_json::to_vec(&meta).expect("serializable"),
                &sync,
            )
            .map_err(|e| self.rocks(&e))
    }

    /// Every task with stored offsets, and its metadata (for inspection).
    pub fn tasks(&self) -> Result<Vec<(i32, TaskMeta)>, StateStoreError> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator(IteratorMode::From(&[META], Direction::Forward))
        {
            let (k, v) = item.map_err(|e| self.rocks(&e))?;
            if k.first() != Some(&META) || k.len() != 5 {
                break;
            }
            let task = u32::from_be_bytes(k[1..5].try_into().expect("4 bytes")) as i32;
            let meta = serde_json::from_slice(&v).map_err(|_| StateStoreError::Corrupt {
                path: self.path.clone(),
                task,
                what: "offsets",
            })?;
            out.push((task, meta));
        }
        // What the applying write puts.
        if let Some(applying) = &self.applying {
            for (task, meta) in &applying.metas {
                match out.iter_mut().find(|(t, _)| t == task) {
                    Some((_, m)) => *m = meta.clone(),
                    None => out.push((*task, meta.clone())),
                }
            }
            out.sort_by_key(|(t, _)| *t);
        }
        Ok(out)
    }
}

fn write_changes<'a>(batch: &mut WriteBatch, task: i32, changes: impl Iterator<Item = Change<'a>>) {
    // One buffer for every key: the store's prefix, then the key.
    let mut k = Vec::new();
    let mut prefix: Option<(&str, usize)> = None;
    for (store, key, value) in changes {
        let len = match prefix {
            Some((s, len)) if s == store => len,
            _ => {
                k = data_prefix(task, store);
                prefix = Some((store, k.len()));
                k.len()
            }
        };
        k.truncate(len);
        k.extend_from_slice(key);
        match value {
            Some(v) => batch.put(&k, v),
            None => batch.delete(&k),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ops::Bound;

    use weir_core::{StateAccess, StateError};

    use super::*;

    /// A manager with a read cache, as the runtime opens it.
    fn open(dir: &Path) -> StateManager {
        let mut m = StateManager::open(dir, vec![StoreSpec::new("s")])
            .unwrap()
            .0;
        m.set_cache_max_bytes(1 << 20).unwrap();
        m
    }

    fn tmp() -> PathBuf {
        std::env::temp_dir().join(format!("weir-state-test-{:x}", rand_u64()))
    }

    fn rand_u64() -> u64 {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(std::process::id() as u64);
        h.finish()
    }

    fn offsets(o: i64) -> BTreeMap<String, i64> {
        [("in".to_string(), o)].into()
    }

    #[test]
    fn a_reset_generation_wipes_a_task_once_and_leaves_the_others() {
        let dir = tmp();
        let mut m = open(&dir);
        for task in [0, 1] {
            m.access(task).put("s", b"a", b"1".to_vec()).unwrap();
        }
        m.freeze();
        m.apply(
            &[(0, 1, offsets(10)), (1, 1, offsets(20))],
            &BTreeMap::new(),
        )
        .unwrap();
        assert!(m.reset_task(0, 77, offsets(3)).unwrap(), "wiped");
        assert_eq!(m.access(0).get("s", b"a").unwrap(), None);
        assert_eq!(m.access(1).get("s", b"a").unwrap(), Some(b"1".to_vec()));
        let meta = m.meta(0).unwrap().unwrap();
        assert_eq!(
            (meta.offsets, meta.seq, meta.reset),
            (offsets(3), 0, Some(77))
        );
        // In step with the reset offsets: no error although they moved back (R > K otherwise).
        let committed: Committed = [("in".to_string(), (Some(3), Some(0)))].into();
        assert_eq!(
            m.recover(0, &committed).unwrap(),
            RecoveryOutcome::InStep {
                rolled_forward: false
            }
        );
        // Work after the reset is kept: the same generation does not wipe again.
        m.access(0).put("s", b"b", b"2".to_vec()).unwrap();
        m.freeze();
        m.apply(&[(0, 1, offsets(5))], &BTreeMap::new()).unwrap();
        assert!(!m.reset_task(0, 77, offsets(5)).unwrap());
        assert_eq!(m.access(0).get("s", b"b").unwrap(), Some(b"2".to_vec()));
        assert_eq!(m.meta(0).unwrap().unwrap().reset, Some(77), "kept by apply");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn overlay_is_read_first_and_vanishes_on_abort() {
        let dir = tmp();
        let mut m = open(&dir);
        m.access(0).put("s", b"a", b"1".to_vec()).unwrap();
        assert_eq!(m.access(0).get("s", b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(
            m.access(1).get("s", b"a").unwrap(),
            None,
            "tasks are separate"
        );
        m.abort().unwrap();
        assert_eq!(m.access(0).get("s", b"a").unwrap(), None);
        assert!(matches!(
            m.access(0).get("nope", b"a"),
            Err(StateError::UnknownStore(_))
        ));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn prepare_apply_and_scan_merge() {
        let dir = tmp();
        let mut m = open(&dir);
        for k in [b"a", b"b", b"c"] {
            m.access(0).put("s", k, k.to_vec()).unwrap();
        }
        let commits = vec![(0, 1, offsets(3))];
        m.prepare(&commits).unwrap().wait().unwrap();
        m.apply(&commits, &[(("s".to_string(), 0), 7)].into())
            .unwrap();
        assert_eq!(m.pending(0).unwrap(), None);
        let meta = m.meta(0).unwrap().unwrap();
        assert_eq!(
            (meta.offsets, meta.seq, meta.changelog["s"]),
            (offsets(3), 1, 7)
        );
        m.access(0).delete("s", b"b").unwrap();
        m.access(0).put("s", b"bb", b"x".to_vec()).unwrap();
        let all = m
            .access(0)
            .scan("s", Bound::Unbounded, Bound::Unbounded)
            .unwrap();
        let keys: Vec<&[u8]> = all.iter().map(|(k, _)| k.as_slice()).collect();
        assert_eq!(keys, [&b"a"[..], b"bb", b"c"]);
        let some = m
            .access(0)
            .scan("s", Bound::Included(b"b"), Bound::Excluded(b"c"))
            .unwrap();
        assert_eq!(some, vec![(b"bb".to_vec(), b"x".to_vec())]);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Overlapped commits: transaction n is prepared and frozen, n+1 writes over it; reads and
    /// scans see n+1 over n over the database; applying n keeps n+1 open; an abort while n is
    /// in flight drops n+1 only, a failed n goes with its successor and its pending entry, and
    /// one whose outcome is unknown leaves its entry for recovery.
    #[test]
    fn the_open_layer_reads_over_the_committing_one_and_each_goes_its_own_way() {
        let dir = tmp();
        let mut m = open(&dir);
        m.access(0).put("s", b"a", b"db".to_vec()).unwrap();
        m.access(0).put("s", b"c", b"db".to_vec()).unwrap();
        m.freeze();
        m.apply(&[(0, 1, offsets(1))], &BTreeMap::new()).unwrap();
        // n: a and b written, prepared, frozen.
        m.access(0).put("s", b"a", b"n".to_vec()).unwrap();
        m.access(0).put("s", b"b", b"n".to_vec()).unwrap();
        let n = vec![(0, 2, offsets(2))];
        m.prepare(&n).unwrap().wait().unwrap();
        assert_eq!(m.uncommitted_bytes(), 0, "the bound counts the open layer");
        // n+1: b deleted, c written.
        m.access(0).delete("s", b"b").unwrap();
        m.access(0).put("s", b"c", b"n+1".to_vec()).unwrap();
        let mut changelog = Vec::new();
        m.for_each_changelog_write(|_, _, k, v| {
            changelog.push((k.to_vec(), v.map(<[u8]>::to_vec)))
        });
        assert_eq!(
            changelog,
            [
                (b"b".to_vec(), None),
                (b"c".to_vec(), Some(b"n+1".to_vec()))
            ],
            "the changelog of n+1 is its own writes"
        );
        let seen = |m: &mut StateManager| -> Vec<(Vec<u8>, Vec<u8>)> {
            m.access(0)
                .scan("s", Bound::Unbounded, Bound::Unbounded)
                .unwrap()
        };
        assert_eq!(m.access(0).get("s", b"a").unwrap(), Some(b"n".to_vec()));
        assert_eq!(m.access(0).get("s", b"b").unwrap(), None);
        assert_eq!(
            seen(&mut m),
            [
                (b"a".to_vec(), b"n".to_vec()),
                (b"c".to_vec(), b"n+1".to_vec())
            ]
        );
        // A rewind while n commits drops n+1 only.
        m.abort_open().unwrap();
        assert_eq!(m.access(0).get("s", b"b").unwrap(), Some(b"n".to_vec()));
        m.access(0).put("s", b"c", b"n+1".to_vec()).unwrap();
        // n committed: applied; n+1 still open on top.
        m.apply(&n, &BTreeMap::new()).unwrap();
        assert_eq!(m.pending(0).unwrap(), None);
        assert_eq!(m.meta(0).unwrap().unwrap().seq, 2);
        assert_eq!(m.access(0).get("s", b"c").unwrap(), Some(b"n+1".to_vec()));
        m.abort().unwrap();
        assert_eq!(
            seen(&mut m),
            [
                (b"a".to_vec(), b"n".to_vec()),
                (b"b".to_vec(), b"n".to_vec()),
                (b"c".to_vec(), b"db".to_vec())
            ],
            "n is in the database, n+1 gone"
        );
        // A failed n: abort drops it with its successor, and its pending entry.
        m.access(0).put("s", b"a", b"lost".to_vec()).unwrap();
        m.prepare(&[(0, 3, offsets(3))]).unwrap().wait().unwrap();
        m.access(0).put("s", b"b", b"lost".to_vec()).unwrap();
        m.abort().unwrap();
        assert_eq!(m.access(0).get("s", b"a").unwrap(), Some(b"n".to_vec()));
        assert_eq!(m.access(0).get("s", b"b").unwrap(), Some(b"n".to_vec()));
        assert_eq!(m.pending(0).unwrap(), None);
        // An outcome not known (stopping): forget drops both layers, the entry stays for
        // recovery to decide.
        m.access(0).put("s", b"a", b"unknown".to_vec()).unwrap();
        m.prepare(&[(0, 3, offsets(3))]).unwrap().wait().unwrap();
        m.forget().unwrap();
        assert_eq!(m.access(0).get("s", b"a").unwrap(), Some(b"n".to_vec()));
        assert_eq!(m.pending(0).unwrap().map(|p| p.seq), Some(3));
        let k: Committed = [("in".to_string(), (Some(2), Some(2)))].into();
        assert_eq!(
            m.recover(0, &k).unwrap(),
            RecoveryOutcome::InStep {
                rolled_forward: false
            },
            "Kafka did not commit it: rolled back"
        );
        assert_eq!(m.pending(0).unwrap(), None);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// While a committed transaction's write is under way its writes are read from its layer,
    /// and the metadata it puts from memory; the next write to the database waits for it.
    #[test]
    fn an_applying_write_is_read_from_memory_until_it_is_done() {
        let dir = tmp();
        let mut m = open(&dir);
        m.access(0).put("s", b"a", b"1".to_vec()).unwrap();
        m.access(0).put("s", b"b", b"1".to_vec()).unwrap();
        let commits = vec![(0, 1, offsets(5))];
        m.prepare(&commits).unwrap().wait().unwrap();
        let (release, hold) = std::sync::mpsc::channel();
        m.hold_apply = Some(hold);
        m.apply(&commits, &BTreeMap::new()).unwrap();
        // The write is held: the database does not have it yet.
        assert_eq!(m.db.get(data_key(0, "s", b"a")).unwrap(), None);
        assert!(m.db.get(task_key(PENDING, 0)).unwrap().is_some());
        // Reads see it all the same.
        assert_eq!(m.access(0).get("s", b"a").unwrap(), Some(b"1".to_vec()));
        m.access(0).put("s", b"b", b"2".to_vec()).unwrap();
        let all = m
            .access(0)
            .scan("s", Bound::Unbounded, Bound::Unbounded)
            .unwrap();
        assert_eq!(
            all,
            vec![
                (b"a".to_vec(), b"1".to_vec()),
                (b"b".to_vec(), b"2".to_vec())
            ]
        );
        assert_eq!(
            m.meta(0).unwrap().map(|t| (t.seq, t.offsets)),
            Some((1, offsets(5)))
        );
        assert_eq!(m.tasks().unwrap().len(), 1);
        // The next prepare's write comes after it (its pending entry after the deletion), and
        // the prepare does not wait for that.
        let next = vec![(0, 2, offsets(6))];
        let prepared = m.prepare(&next).unwrap();
        let held: Pending =
            serde_json::from_slice(&m.db.get(task_key(PENDING, 0)).unwrap().unwrap()).unwrap();
        assert_eq!(held.seq, 1, "written before the held apply");
        release.send(()).unwrap();
        prepared.wait().unwrap();
        assert_eq!(
            m.db.get(data_key(0, "s", b"a")).unwrap(),
            Some(b"1".to_vec()),
            "written"
        );
        assert_eq!(m.pending(0).unwrap().map(|p| p.seq), Some(2));
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A failed applying write keeps its layer readable and is reported by the next write,
    /// which does not happen.
    #[test]
    fn a_failed_applying_write_is_reported_by_the_next_write() {
        let dir = tmp();
        let mut m = open(&dir);
        m.access(0).put("s", b"a", b"1".to_vec()).unwrap();
        let commits = vec![(0, 1, offsets(5))];
        m.prepare(&commits).unwrap().wait().unwrap();
        m.fail_apply = true;
        m.apply(&commits, &BTreeMap::new()).unwrap();
        m.join_applying(true);
        // The layer stays readable, the failure noted.
        assert_eq!(m.access(0).get("s", b"a").unwrap(), Some(b"1".to_vec()));
        assert!(m.applying.as_ref().is_some_and(|a| a.failed.is_some()));
        // A prepare after it is not written: it would roll forward without the lost write.
        let err = m
            .prepare(&[(0, 2, offsets(6))])
            .unwrap()
            .wait()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not written after an earlier write failed"),
            "{err}"
        );
        let err = m.abort().unwrap_err().to_string();
        assert!(
            err.contains("writing a committed transaction's state"),
            "{err}"
        );
        // Every state write after it fails too; the database keeps the failed write's pending
        // entry for recovery, and not the next one.
        assert!(m.pending(0).is_err());
        let kept: Pending =
            serde_json::from_slice(&m.db.get(task_key(PENDING, 0)).unwrap().unwrap()).unwrap();
        assert_eq!(kept.seq, 1);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// The read cache holds what apply wrote and what reads found; every other way into the
    /// database's entries (a rolled-forward pending entry, a restore, a wipe, a reset) empties it.
    #[test]
    fn writes_around_the_read_cache_are_seen_by_the_next_read() {
        let dir = tmp();
        let mut m = open(&dir);
        let read = |m: &mut StateManager| m.access(0).get("s", b"a").unwrap();
        m.access(0).put("s", b"a", b"1".to_vec()).unwrap();
        m.freeze();
        m.apply(&[(0, 1, offsets(1))], &BTreeMap::new()).unwrap();
        assert_eq!(read(&mut m), Some(b"1".to_vec()), "written through");
        // A pending entry that recovery rolls forward.
        m.access(0).put("s", b"a", b"2".to_vec()).unwrap();
        m.prepare(&[(0, 2, offsets(2))]).unwrap().wait().unwrap();
        m.forget().unwrap();
        assert_eq!(read(&mut m), Some(b"1".to_vec()), "not yet decided");
        let k: Committed = [("in".to_string(), (Some(2), Some(2)))].into();
        m.recover(0, &k).unwrap();
        assert_eq!(read(&mut m), Some(b"2".to_vec()), "rolled forward");
        // A restore batch.
        m.restore_batch(0, "s", &[(b"a".to_vec(), Some(b"3".to_vec()))], 10)
            .unwrap();
        assert_eq!(read(&mut m), Some(b"3".to_vec()), "restored");
        // A wipe.
        m.wipe(0, "s").unwrap();
        assert_eq!(read(&mut m), None, "wiped");
        // A key read as absent, then restored, then a reset.
        m.restore_batch(0, "s", &[(b"a".to_vec(), Some(b"4".to_vec()))], 11)
            .unwrap();
        assert_eq!(read(&mut m), Some(b"4".to_vec()), "restored after a miss");
        m.reset_task(0, 7, offsets(0)).unwrap();
        assert_eq!(read(&mut m), None, "reset");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn recovery_rolls_forward_only_what_kafka_committed() {
        let dir = tmp();
        let mut m = open(&dir);
        m.access(0).put("s", b"k", b"v".to_vec()).unwrap();
        m.access(1).put("s", b"k", b"w".to_vec()).unwrap();
        let commits = vec![(0, 1, offsets(5)), (1, 1, offsets(9))];
        m.prepare(&commits).unwrap().wait().unwrap();
        drop(m); // crash between prepare and apply
        let mut m = open(&dir);
        // Kafka has seq 1 at offset 5 for task 0 (committed), nothing for task 1 (not).
        let k0: BTreeMap<_, _> = [("in".to_string(), (Some(5), Some(1)))].into();
        let k1: BTreeMap<_, _> = [("in".to_string(), (None, None))].into();
        assert_eq!(
            m.recover(0, &k0).unwrap(),
            RecoveryOutcome::InStep {
                rolled_forward: true
            }
        );
        assert_eq!(m.access(0).get("s", b"k").unwrap(), Some(b"v".to_vec()));
        assert_eq!(m.recover(1, &k1).unwrap(), RecoveryOutcome::Fresh);
        assert_eq!(m.access(1).get("s", b"k").unwrap(), None);
        // R < K: behind; R > K: a clear error.
        let later: BTreeMap<_, _> = [("in".to_string(), (Some(8), Some(4)))].into();
        assert!(matches!(
            m.recover(0, &later).unwrap(),
            RecoveryOutcome::Behind { .. }
        ));
        let earlier: BTreeMap<_, _> = [("in".to_string(), (Some(2), Some(1)))].into();
        let err = m.recover(0, &earlier).unwrap_err().to_string();
        assert!(
            err.contains("in/0: local 5 vs committed 2") && err.contains("--reset-state"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn an_interrupted_restore_resumes_after_its_last_batch_and_stays_behind_until_finished() {
        let dir = tmp();
        let mut m = open(&dir);
        let k: BTreeMap<_, _> = [("in".to_string(), (Some(100), Some(7)))].into();
        assert_eq!(
            m.compare(0, &k, false).unwrap(),
            RecoveryOutcome::Behind {
                changelog_from: BTreeMap::new()
            },
            "nothing local: restore from the beginning"
        );
        // A restore from the beginning writes two batches, then the process dies.
        m.restore_batch(0, "s", &[(b"a".to_vec(), Some(b"1".to_vec()))], 40)
            .unwrap();
        m.restore_batch(
            0,
            "s",
            &[(b"a".to_vec(), None), (b"b".to_vec(), Some(b"2".to_vec()))],
            75,
        )
        .unwrap();
        drop(m);
        let mut m = open(&dir);
        // Still behind K (R was never set), and the changelog resumes at 75, not 0.
        assert_eq!(
            m.compare(0, &k, false).unwrap(),
            RecoveryOutcome::Behind {
                changelog_from: [("s".to_string(), 75)].into()
            }
        );
        assert_eq!(m.access(0).get("s", b"a").unwrap(), None);
        assert_eq!(m.access(0).get("s", b"b").unwrap(), Some(b"2".to_vec()));
        m.finish_restore(
            0,
            [("in".to_string(), 100)].into(),
            7,
            [("s".to_string(), 90)].into(),
        )
        .unwrap();
        assert_eq!(
            m.compare(0, &k, false).unwrap(),
            RecoveryOutcome::InStep {
                rolled_forward: false
            }
        );
        assert_eq!(m.meta(0).unwrap().unwrap().changelog["s"], 90);
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[cfg(test)]
mod damage {
    use weir_core::StateAccess;

    use super::*;

    fn tmp() -> PathBuf {
        std::env::temp_dir().join(format!("weir-state-damage-{:016x}", {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(std::process::id().into());
            h.finish()
        }))
    }

    fn offsets(o: i64) -> BTreeMap<String, i64> {
        [("in".to_string(), o)].into()
    }

    /// A committed task with `n` keys, flushed to an SST file.
    fn committed(dir: &Path, n: u32, stores: Vec<StoreSpec>) {
        let (mut m, _) = StateManager::open(dir, stores).unwrap();
        for i in 0..n {
            m.access(0)
                .put("s", format!("key-{i:06}").as_bytes(), vec![b'v'; 100])
                .unwrap();
        }
        m.freeze();
        m.apply(&[(0, 1, offsets(n.into()))], &BTreeMap::new())
            .unwrap();
        m.settle().unwrap(); // the write is done
        m.db.flush().unwrap();
    }

    fn moved_aside(dir: &Path) -> PathBuf {
        let (m, moved) = StateManager::open(dir, vec![StoreSpec::new("s")]).unwrap();
        assert_eq!(m.meta(0).unwrap(), None, "the new directory starts empty");
        let aside = moved.expect("moved aside");
        assert!(aside.exists() && !damage_marker(dir).exists());
        aside
    }

    #[test]
    fn a_truncated_pending_entry_moves_the_directory_aside() {
        let dir = tmp();
        committed(&dir, 10, vec![StoreSpec::new("s")]);
        {
            let (mut m, _) = StateManager::open(&dir, vec![StoreSpec::new("s")]).unwrap();
            m.prepare(&[(0, 2, offsets(20))]).unwrap().wait().unwrap();
            let full = m.db.get(task_key(PENDING, 0)).unwrap().unwrap();
            m.db.put(task_key(PENDING, 0), &full[..full.len() / 2])
                .unwrap();
        }
        moved_aside(&dir);
    }

    #[test]
    fn flipped_bytes_in_a_live_sst_are_found_on_read_and_the_next_open_moves_it_aside() {
        let dir = tmp();
        committed(&dir, 20_000, vec![StoreSpec::new("s")]);
        let sst = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "sst"))
            .expect("a flushed SST file");
        let mut bytes = std::fs::read(&sst).unwrap();
        // Every data block in the first half of the file gets a flipped byte.
        for i in (100..bytes.len() / 2).step_by(1_000) {
            bytes[i] ^= 0xff;
        }
        std::fs::write(&sst, bytes).unwrap();
        let (mut m, moved) = StateManager::open(&dir, vec![StoreSpec::new("s")]).unwrap();
        assert_eq!(
            moved, None,
            "the damage is in data blocks, which open does not read"
        );
        let err = (0..20_000)
            .find_map(|i| m.access(0).get("s", format!("key-{i:06}").as_bytes()).err())
            .expect("a read of a damaged block fails");
        assert!(
            err.to_string().contains("moved aside at the next start"),
            "{err}"
        );
        assert!(damage_marker(&dir).exists(), "the damage is marked");
        drop(m);
        let aside = moved_aside(&dir);
        assert!(
            aside.join(sst.file_name().unwrap()).exists(),
            "never reused, kept for a look"
        );
    }

    #[test]
    fn a_damaged_directory_with_a_local_only_store_is_refused() {
        let dir = tmp();
        let stores = || vec![StoreSpec::new("s"), StoreSpec::local_only("cache")];
        committed(&dir, 10, stores());
        let manifest = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("MANIFEST-")
            })
            .unwrap();
        let mut bytes = std::fs::read(&manifest).unwrap();
        for b in bytes.iter_mut().skip(10).step_by(7) {
            *b ^= 0x5a;
        }
        std::fs::write(&manifest, bytes).unwrap();
        let err = StateManager::open(&dir, stores()).expect_err("refused");
        let msg = err.to_string();
        assert!(msg.contains("store \"cache\" is local-only"), "{msg}");
        assert!(msg.contains("contents cannot be restored"), "{msg}");
        assert!(dir.exists(), "left where it is");
        // Without the local-only store, the same directory is moved aside.
        moved_aside(&dir);
    }
}
