//! The Raft log and the state machine of one coordinator, in one redb file
//! (`<data dir>/coordinator.redb`).
//!
//! openraft's storage traits state what an implementation must guarantee; these keep them:
//! - [`LogStore`]: an append is reported flushed only after an fsync (`Durability::Immediate`),
//!   and so is a vote. `truncate` and `purge` are atomic. The committed index is saved without
//!   an fsync: it becomes durable with the next log write, and openraft only uses it to
//!   re-apply entries after a restart.
//! - [`StateMachineStore`]: the [`State`] lives in memory and in tables keyed by task,
//!   document and pool; each applied batch rewrites the keys it changed together with the last
//!   applied log id and membership, in one transaction, without an fsync. Because the log
//!   shares the file, the next log fsync makes it durable too, and a crash rolls the state
//!   machine back to a consistent earlier point that the (still unpurged) log replays forward.
//!   Snapshots (the serialized state, its last applied log id and membership) are written with
//!   an fsync before openraft purges the log they cover; installing one replaces the state and
//!   its tables in one transaction.
//!
//! Both run their writes on tokio's blocking pool, so an fsync never stalls the runtime. Every
//! implementation runs openraft's conformance suite (`tests/raft_storage.rs`).

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader,
    RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, oneshot};

use super::{NodeId, Peer, StateEvent, TypeConfig};
use crate::model::{Allocation, PoolTarget, Response, Task};
use crate::state::{Changes, PoolKey, State};

/// Log entries by index (JSON of openraft's `Entry`).
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// `vote`, `committed`, `last_purged`.
const RAFT_META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
/// `last_applied`, `membership`, `signing_key`, `egress_ips`.
const SM_META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");
const TASKS: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_tasks");
const ALLOCATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_allocations");
/// Keyed by the JSON of `[region, tier]`.
const TARGETS: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_targets");
/// `meta` and `data` of the current snapshot.
const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");

const FILE_NAME: &str = "coordinator.redb";

type Membership = StoredMembership<NodeId, Peer>;
type Meta = SnapshotMeta<NodeId, Peer>;
type RaftStorageError = StorageError<NodeId>;

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open the raft store {path}")]
    Database {
        path: PathBuf,
        #[source]
        source: redb::DatabaseError,
    },
    #[error("cannot read the raft store {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: StoreError,
    },
}

/// A failure inside the store, before it is wrapped into openraft's `StorageError`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Transaction(#[from] redb::TransactionError),
    #[error(transparent)]
    Table(#[from] redb::TableError),
    #[error(transparent)]
    Storage(#[from] redb::StorageError),
    #[error(transparent)]
    Commit(#[from] redb::CommitError),
    #[error(transparent)]
    Durability(#[from] redb::SetDurabilityError),
    #[error("stored data does not decode")]
    Codec(#[from] serde_json::Error),
    #[error("the blocking task writing the store failed")]
    Join(#[from] tokio::task::JoinError),
}

/// The redb file, closed when the last store holding it is dropped; [`Closed`] tells when.
#[derive(Debug)]
struct Db {
    db: Database,
    _closed: oneshot::Sender<()>,
}

impl Drop for Db {
    /// A clean close makes the state machine's last (unsynced) writes durable at once, so a
    /// restart need not replay them: an empty `Immediate` commit persists every commit before it.
    fn drop(&mut self) {
        let synced = self
            .db
            .begin_write()
            .map_err(StoreError::from)
            .and_then(|txn| Ok(txn.commit()?));
        if let Err(e) = synced {
            tracing::warn!(error = %e, "raft store: final sync failed; the log will be replayed at start");
        }
    }
}

/// Resolves once the store's file is closed (every [`LogStore`] and [`StateMachineStore`]
/// clone dropped), so a coordinator restarted in the same process can open it again.
#[derive(Debug)]
pub struct Closed(oneshot::Receiver<()>);

impl Closed {
    pub async fn wait(self) {
        let _ = self.0.await;
    }
}

/// Opens (or creates) the store in `dir`, which must exist.
pub fn open(dir: &Path) -> Result<(LogStore, StateMachineStore, Closed), OpenError> {
    let path = dir.join(FILE_NAME);
    let database = Database::create(&path).map_err(|source| OpenError::Database {
        path: path.clone(),
        source,
    })?;
    let (tx, rx) = oneshot::channel();
    let db = Arc::new(Db {
        db: database,
        _closed: tx,
    });
    let read_error = |source| OpenError::Read {
        path: path.clone(),
        source,
    };
    create_tables(&db.db).map_err(read_error)?;
    let applied = load_state_machine(&db.db).map_err(read_error)?;
    let (events, _) = broadcast::channel(EVENT_BUFFER);
    let shared = Arc::new(Shared {
        applied: RwLock::new(applied),
        events,
    });
    Ok((
        LogStore { db: db.clone() },
        StateMachineStore { db, shared },
        Closed(rx),
    ))
}

fn create_tables(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_write()?;
    txn.open_table(LOG)?;
    txn.open_table(RAFT_META)?;
    txn.open_table(SM_META)?;
    txn.open_table(TASKS)?;
    txn.open_table(ALLOCATIONS)?;
    txn.open_table(TARGETS)?;
    txn.open_table(SNAPSHOT)?;
    txn.commit()?;
    Ok(())
}

/// Runs `write` on the blocking pool (it commits, and may fsync).
async fn blocking<T: Send + 'static>(
    db: &Arc<Db>,
    write: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let db = db.clone();
    tokio::task::spawn_blocking(move || write(&db.db)).await?
}

fn get_json<T: for<'de> Deserialize<'de>>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<T>, StoreError> {
    match table.get(key)? {
        Some(v) => Ok(Some(serde_json::from_slice(v.value())?)),
        None => Ok(None),
    }
}

fn io(subject: ErrorSubject<NodeId>, verb: ErrorVerb, e: StoreError) -> RaftStorageError {
    StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}

// --- The log ---------------------------------------------------------------------------------

/// The Raft log and vote. Cloning shares the file (openraft reads the log from replication
/// tasks while the core appends).
#[derive(Debug, Clone)]
pub struct LogStore {
    db: Arc<Db>,
}

impl LogStore {
    fn read_entries(
        &self,
        range: (Bound<u64>, Bound<u64>),
    ) -> Result<Vec<Entry<TypeConfig>>, StoreError> {
        let txn = self.db.db.begin_read()?;
        let table = txn.open_table(LOG)?;
        let mut entries = Vec::new();
        for item in table.range(range)? {
            let (_, value) = item?;
            entries.push(serde_json::from_slice(value.value())?);
        }
        Ok(entries)
    }

    fn read_meta<T: for<'de> Deserialize<'de>>(&self, key: &str) -> Result<Option<T>, StoreError> {
        let txn = self.db.db.begin_read()?;
        get_json(&txn.open_table(RAFT_META)?, key)
    }

    async fn write_meta<T: Serialize>(
        &self,
        key: &'static str,
        value: &T,
        durability: Durability,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value)?;
        blocking(&self.db, move |db| {
            let mut txn = db.begin_write()?;
            txn.set_durability(durability)?;
            txn.open_table(RAFT_META)?.insert(key, bytes.as_slice())?;
            txn.commit()?;
            Ok(())
        })
        .await
    }
}

fn bounds(range: &impl RangeBounds<u64>) -> (Bound<u64>, Bound<u64>) {
    (range.start_bound().cloned(), range.end_bound().cloned())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, RaftStorageError> {
        self.read_entries(bounds(&range))
            .map_err(|e| io(ErrorSubject::Logs, ErrorVerb::Read, e))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, RaftStorageError> {
        let read = || -> Result<LogState<TypeConfig>, StoreError> {
            let txn = self.db.db.begin_read()?;
            let last_purged: Option<LogId<NodeId>> =
                get_json(&txn.open_table(RAFT_META)?, "last_purged")?;
            let last = match txn.open_table(LOG)?.last()? {
                Some((_, value)) => {
                    Some(serde_json::from_slice::<Entry<TypeConfig>>(value.value())?.log_id)
                }
                None => None,
            };
            Ok(LogState {
                last_purged_log_id: last_purged,
                last_log_id: last.or(last_purged),
            })
        };
        read().map_err(|e| io(ErrorSubject::Logs, ErrorVerb::Read, e))
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), RaftStorageError> {
        self.write_meta("vote", vote, Durability::Immediate)
            .await
            .map_err(|e| io(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, RaftStorageError> {
        self.read_meta("vote")
            .map_err(|e| io(ErrorSubject::Vote, ErrorVerb::Read, e))
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), RaftStorageError> {
        // No fsync: the next append's makes it durable; losing it only delays re-applying.
        self.write_meta("committed", &committed, Durability::None)
            .await
            .map_err(|e| io(ErrorSubject::Store, ErrorVerb::Write, e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, RaftStorageError> {
        self.read_meta::<Option<LogId<NodeId>>>("committed")
            .map(Option::flatten)
            .map_err(|e| io(ErrorSubject::Store, ErrorVerb::Read, e))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), RaftStorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let encoded: Result<Vec<(u64, Vec<u8>)>, serde_json::Error> = entries
            .into_iter()
            .map(|e| Ok((e.log_id.index, serde_json::to_vec(&e)?)))
            .collect();
        let result = match encoded {
            Ok(encoded) => {
                blocking(&self.db, move |db| {
                    let txn = db.begin_write()?; // Durability::Immediate: fsync on commit
                    {
                        let mut log = txn.open_table(LOG)?;
                        for (index, bytes) in &encoded {
                            log.insert(*index, bytes.as_slice())?;
                        }
                    }
                    txn.commit()?;
                    Ok(())
                })
                .await
            }
            Err(e) => Err(e.into()),
        };
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(io(ErrorSubject::Logs, ErrorVerb::Write, e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), RaftStorageError> {
        blocking(&self.db, move |db| {
            let txn = db.begin_write()?;
            txn.open_table(LOG)?
                .retain_in(log_id.index.., |_, _| false)?;
            txn.commit()?;
            Ok(())
        })
        .await
        .map_err(|e| io(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), RaftStorageError> {
        let purged = serde_json::to_vec(&log_id)
            .map_err(|e| io(ErrorSubject::Logs, ErrorVerb::Delete, e.into()))?;
        blocking(&self.db, move |db| {
            let txn = db.begin_write()?;
            // Record the purge point and remove the entries atomically.
            txn.open_table(RAFT_META)?
                .insert("last_purged", purged.as_slice())?;
            txn.open_table(LOG)?
                .retain_in(..=log_id.index, |_, _| false)?;
            txn.commit()?;
            Ok(())
        })
        .await
        .map_err(|e| io(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }
}

// --- The state machine -------------------------------------------------------------------------

/// How many events a slow subscriber may fall behind before it misses some (it then gets
/// `RecvError::Lagged` and should re-read the state).
const EVENT_BUFFER: usize = 4096;

/// The applied state and what it was applied up to.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    pub(crate) state: State,
    pub(crate) last_applied: Option<LogId<NodeId>>,
    pub(crate) membership: Membership,
}

/// What the state machine shares with the [`super::RaftHandle`]: the state for reads, and the
/// stream of events.
#[derive(Debug)]
pub(crate) struct Shared {
    applied: RwLock<Applied>,
    pub(crate) events: broadcast::Sender<StateEvent>,
}

impl Shared {
    /// Never held across an await: every user reads or changes memory and lets go.
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, Applied> {
        // A panic while holding it (a bug in `State::apply`) would poison it; the state is
        // still whole, because `apply` finishes its change before anything can panic.
        self.applied
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Applied> {
        self.applied
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The replicated [`State`] as openraft applies it; cloning shares it.
#[derive(Debug, Clone)]
pub struct StateMachineStore {
    db: Arc<Db>,
    shared: Arc<Shared>,
}

impl StateMachineStore {
    pub(crate) fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Reads this replica's state (tests; the coordinator reads through the handle).
    pub fn read<T>(&self, read: impl FnOnce(&State) -> T) -> T {
        read(&self.shared.read().state)
    }
}

/// A snapshot's data: the state and where it stands in the log.
#[derive(Serialize, Deserialize)]
struct SnapshotImage {
    last_applied: Option<LogId<NodeId>>,
    membership: Membership,
    state: State,
}

fn load_state_machine(db: &Database) -> Result<Applied, StoreError> {
    let txn = db.begin_read()?;
    let meta = txn.open_table(SM_META)?;
    let last_applied = get_json::<Option<LogId<NodeId>>>(&meta, "last_applied")?.flatten();
    let membership = get_json(&meta, "membership")?.unwrap_or_default();
    let signing_key = get_json(&meta, "signing_key")?;
    let egress_ips = get_json(&meta, "egress_ips")?;
    let tasks = values::<Task>(&txn.open_table(TASKS)?)?;
    let allocations = values::<Allocation>(&txn.open_table(ALLOCATIONS)?)?;
    let targets = values::<TargetRow>(&txn.open_table(TARGETS)?)?;
    let state = State::from_parts(
        tasks,
        allocations,
        targets.into_iter().map(|t| ((t.region, t.tier), t.target)),
        signing_key,
        egress_ips,
    );
    let violations = state.violations();
    if !violations.is_empty() {
        tracing::error!(?violations, "the stored state machine is inconsistent");
    }
    Ok(Applied {
        state,
        last_applied,
        membership,
    })
}

fn values<T: for<'de> Deserialize<'de>>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    for item in table.iter()? {
        let (_, value) = item?;
        out.push(serde_json::from_slice(value.value())?);
    }
    Ok(out)
}

/// A pool target as stored: with its key, so the table can be read back without parsing keys.
#[derive(Serialize, Deserialize)]
struct TargetRow {
    region: crate::model::Region,
    tier: crate::model::Tier,
    target: PoolTarget,
}

/// What one applied batch writes: upserts (`Some`) and deletes (`None`) per table.
#[derive(Default)]
struct Rows {
    tasks: Vec<(String, Option<Vec<u8>>)>,
    allocations: Vec<(String, Option<Vec<u8>>)>,
    targets: Vec<(String, Option<Vec<u8>>)>,
    signing_key: Option<Vec<u8>>,
    egress_ips: Option<Vec<u8>>,
    last_applied: Vec<u8>,
    membership: Vec<u8>,
}

fn target_key(key: &PoolKey) -> Result<String, serde_json::Error> {
    serde_json::to_string(&[&key.0.0, &key.1.0])
}

impl Rows {
    fn of(applied: &Applied, changes: &Changes) -> Result<Rows, serde_json::Error> {
        let state = &applied.state;
        let mut rows = Rows {
            last_applied: serde_json::to_vec(&applied.last_applied)?,
            membership: serde_json::to_vec(&applied.membership)?,
            ..Rows::default()
        };
        for id in &changes.tasks {
            let value = state.task(id).map(serde_json::to_vec).transpose()?;
            rows.tasks.push((id.0.clone(), value));
        }
        for document in &changes.documents {
            let value = state
                .allocation(document)
                .map(serde_json::to_vec)
                .transpose()?;
            rows.allocations.push((document.clone(), value));
        }
        for key in &changes.targets {
            let value = state
                .target(&key.0, &key.1)
                .map(|target| {
                    serde_json::to_vec(&TargetRow {
                        region: key.0.clone(),
                        tier: key.1.clone(),
                        target: target.clone(),
                    })
                })
                .transpose()?;
            rows.targets.push((target_key(key)?, value));
        }
        if changes.signing_key {
            rows.signing_key = state.signing_key().map(serde_json::to_vec).transpose()?;
        }
        if changes.egress_ips {
            rows.egress_ips = state.egress_ips().map(serde_json::to_vec).transpose()?;
        }
        Ok(rows)
    }

    /// Every row of a whole state, for installing a snapshot.
    fn all(applied: &Applied) -> Result<Rows, serde_json::Error> {
        let state = &applied.state;
        let changes = Changes {
            tasks: state.tasks().map(|t| t.id.clone()).collect(),
            documents: state.allocations().map(|a| a.document.clone()).collect(),
            targets: state.targets().map(|(k, _)| k.clone()).collect(),
            signing_key: state.signing_key().is_some(),
            egress_ips: state.egress_ips().is_some(),
        };
        Rows::of(applied, &changes)
    }

    fn write(self, txn: &WriteTransaction) -> Result<(), StoreError> {
        for (definition, rows) in [
            (TASKS, self.tasks),
            (ALLOCATIONS, self.allocations),
            (TARGETS, self.targets),
        ] {
            let mut table = txn.open_table(definition)?;
            for (key, value) in rows {
                match value {
                    Some(value) => table.insert(key.as_str(), value.as_slice())?,
                    None => table.remove(key.as_str())?,
                };
            }
        }
        let mut meta = txn.open_table(SM_META)?;
        if let Some(key) = self.signing_key {
            meta.insert("signing_key", key.as_slice())?;
        }
        // Once set, the sets are only ever replaced, never removed.
        if let Some(sets) = self.egress_ips {
            meta.insert("egress_ips", sets.as_slice())?;
        }
        meta.insert("last_applied", self.last_applied.as_slice())?;
        meta.insert("membership", self.membership.as_slice())?;
        Ok(())
    }
}

fn clear(txn: &WriteTransaction) -> Result<(), StoreError> {
    for definition in [TASKS, ALLOCATIONS, TARGETS, SM_META] {
        txn.open_table(definition)?.retain(|_, _| false)?;
    }
    Ok(())
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, Membership), RaftStorageError> {
        let applied = self.shared.read();
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, RaftStorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut responses = Vec::new();
        let mut events = Vec::new();
        let mut last = None;
        let rows = {
            let mut applied = self.shared.write();
            for entry in entries {
                let index = entry.log_id.index;
                applied.last_applied = Some(entry.log_id);
                last = Some(entry.log_id);
                let response = match entry.payload {
                    EntryPayload::Blank => Response::Ok,
                    EntryPayload::Normal(command) => {
                        let response = applied.state.apply(index, command.clone());
                        events.push(StateEvent::Applied {
                            index,
                            command: Arc::new(command),
                            response: Arc::new(response.clone()),
                        });
                        response
                    }
                    EntryPayload::Membership(membership) => {
                        applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                        Response::Ok
                    }
                };
                responses.push(response);
            }
            let changes = applied.state.take_changes();
            Rows::of(&applied, &changes)
        };
        let Some(last) = last else {
            return Ok(responses);
        };
        let rows = rows.map_err(|e| io(ErrorSubject::Apply(last), ErrorVerb::Write, e.into()))?;
        blocking(&self.db, move |db| {
            let mut txn = db.begin_write()?;
            // Durable with the log's next fsync; see the module docs.
            txn.set_durability(Durability::None)?;
            rows.write(&txn)?;
            txn.commit()?;
            Ok(())
        })
        .await
        .map_err(|e| io(ErrorSubject::Apply(last), ErrorVerb::Write, e))?;
        for event in events {
            // No subscriber is fine.
            let _ = self.shared.events.send(event);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            shared: self.shared.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, RaftStorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), RaftStorageError> {
        let subject = || ErrorSubject::Snapshot(Some(meta.signature()));
        let data = snapshot.into_inner();
        let image: SnapshotImage =
            serde_json::from_slice(&data).map_err(|e| io(subject(), ErrorVerb::Read, e.into()))?;
        let applied = Applied {
            state: image.state,
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        let rows = Rows::all(&applied).map_err(|e| io(subject(), ErrorVerb::Write, e.into()))?;
        let meta_bytes =
            serde_json::to_vec(meta).map_err(|e| io(subject(), ErrorVerb::Write, e.into()))?;
        blocking(&self.db, move |db| {
            let txn = db.begin_write()?; // Immediate: the log may be purged up to it next
            clear(&txn)?;
            rows.write(&txn)?;
            let mut snapshot = txn.open_table(SNAPSHOT)?;
            snapshot.insert("meta", meta_bytes.as_slice())?;
            snapshot.insert("data", data.as_slice())?;
            drop(snapshot);
            txn.commit()?;
            Ok(())
        })
        .await
        .map_err(|e| io(subject(), ErrorVerb::Write, e))?;
        let index = applied.last_applied.map(|l| l.index).unwrap_or(0);
        *self.shared.write() = applied;
        let _ = self.shared.events.send(StateEvent::Replaced { index });
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, RaftStorageError> {
        let read = || -> Result<Option<Snapshot<TypeConfig>>, StoreError> {
            let txn = self.db.db.begin_read()?;
            let table = txn.open_table(SNAPSHOT)?;
            let Some(meta) = get_json::<Meta>(&table, "meta")? else {
                return Ok(None);
            };
            let data = table
                .get("data")?
                .map(|v| v.value().to_vec())
                .unwrap_or_default();
            Ok(Some(Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(data)),
            }))
        };
        read().map_err(|e| io(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))
    }
}

/// Builds a snapshot of the state as applied when it starts, while applying goes on.
#[derive(Debug)]
pub struct SnapshotBuilder {
    db: Arc<Db>,
    shared: Arc<Shared>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, RaftStorageError> {
        let image = {
            let applied = self.shared.read();
            SnapshotImage {
                last_applied: applied.last_applied,
                membership: applied.membership.clone(),
                state: applied.state.clone(),
            }
        };
        let meta = Meta {
            last_log_id: image.last_applied,
            last_membership: image.membership.clone(),
            snapshot_id: format!(
                "{}-{:016x}",
                image.last_applied.map(|l| l.index).unwrap_or(0),
                rand::random::<u64>()
            ),
        };
        let subject = || ErrorSubject::Snapshot(Some(meta.signature()));
        let data =
            serde_json::to_vec(&image).map_err(|e| io(subject(), ErrorVerb::Write, e.into()))?;
        let meta_bytes =
            serde_json::to_vec(&meta).map_err(|e| io(subject(), ErrorVerb::Write, e.into()))?;
        let stored = data.clone();
        blocking(&self.db, move |db| {
            let txn = db.begin_write()?; // Immediate: openraft purges the log it covers next
            let mut table = txn.open_table(SNAPSHOT)?;
            table.insert("meta", meta_bytes.as_slice())?;
            table.insert("data", stored.as_slice())?;
            drop(table);
            txn.commit()?;
            Ok(())
        })
        .await
        .map_err(|e| io(subject(), ErrorVerb::Write, e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}
