//! Durable, fenced storage of documents: the [`DocumentStore`] seam, its implementation on
//! `object_store` ([`ObjectDocumentStore`]: a local folder by default, S3-compatible buckets in
//! clusters, memory in tests), the [`GroupCommitter`] that batches edits into one durable write,
//! and the [`conformance`] suite every implementation runs.
//!
//! # Layout
//! - this file: the trait and the vocabulary every implementation shares — [`DocumentId`],
//!   [`CellId`], [`Epoch`], [`Seq`], [`LoadedDoc`], [`StoreError`].
//! - [`object`]: [`ObjectDocumentStore`], and the fencing argument in its module docs.
//! - `fence`: the per-document fence object (the one mutable object of a document) and the two
//!   ways of swapping it atomically (a conditional put, or a file lock on a local folder).
//! - `record`: the checksummed framing of log entries, snapshots and outputs.
//! - [`group_commit`]: [`GroupCommitter`], the driver that turns many `commit(update)` calls into
//!   one `append` and acknowledges each caller once its batch is durable.
//! - [`conformance`]: [`conformance::Suite::test_all`], one test per guarantee below.
//!
//! # What this module does not do
//! It does not interpret the bytes it stores: updates, snapshots and outputs are opaque (yrs
//! updates and encoded outputs, chosen by the document actor). It does not decide who owns a
//! document — the coordinator does, by handing out epochs; the store only refuses writers whose
//! epoch has been superseded. It does not decide when to compact: the caller does.

pub mod conformance;
mod fence;
pub mod group_commit;
pub mod object;
mod record;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;

use bytes::Bytes;

pub use group_commit::{CommitError, GroupCommitConfig, GroupCommitter};
pub use object::ObjectDocumentStore;

/// The allocation epoch: the fencing token the coordinator issues with every claim of a
/// document. Higher epochs supersede lower ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The position of one append (one batch of updates) in a document's log. The first append of a
/// document gets `Seq(1)`; `Seq(0)` means "nothing yet".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Seq(pub u64);

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Longest document or cell id, in bytes.
pub use airlock_protocol::ids::MAX_ID_LEN;

/// Whether `id` may name a document or a cell ([`airlock_protocol::ids`]). Ids become path
/// segments, so this is what keeps `../x` out.
fn valid_id(id: &str) -> bool {
    airlock_protocol::ids::is_valid_id(id)
}

/// A document id that is safe to use as a path segment in any store (see [`DocumentId::new`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DocumentId(String);

impl DocumentId {
    /// Accepts 1 to 128 characters from `A-Z a-z 0-9 . _ -`, except `.` and `..`.
    pub fn new(id: impl Into<String>) -> Result<Self, StoreError> {
        let id = id.into();
        if valid_id(&id) {
            Ok(Self(id))
        } else {
            Err(StoreError::BadDocumentId(id))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DocumentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A cell id, under the same rules as [`DocumentId`] (nbformat cell ids fit them).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CellId(String);

impl CellId {
    /// Accepts 1 to 128 characters from `A-Z a-z 0-9 . _ -`, except `.` and `..`.
    pub fn new(id: impl Into<String>) -> Result<Self, StoreError> {
        let id = id.into();
        if valid_id(&id) {
            Ok(Self(id))
        } else {
            Err(StoreError::BadCellId(id))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CellId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a document's next owner starts from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadedDoc {
    /// The latest snapshot; it covers every update up to and including `snapshot_seq`.
    pub snapshot: Option<Bytes>,
    /// The append that `snapshot` covers up to (`Seq(0)` without a snapshot).
    pub snapshot_seq: Seq,
    /// Every update appended after the snapshot, in append order.
    pub updates: Vec<Bytes>,
    /// The last append included (`Seq(0)` if none): pass it to [`DocumentStore::compact`] once a
    /// snapshot covers everything loaded.
    pub seq: Seq,
    /// The epoch that holds the fence, `None` for a document never claimed.
    pub epoch: Option<Epoch>,
}

/// Durable, fenced storage of one kind of document history: an append-only update log with
/// snapshots, and the latest outputs of each cell, kept apart.
///
/// # Guarantees every implementation gives (and [`conformance::Suite`] checks)
/// 1. **Durability.** An [`append`](Self::append) (or [`compact`](Self::compact),
///    [`put_outputs`](Self::put_outputs)) that returned `Ok` is durable: every later
///    [`load`](Self::load) — from this instance, another instance, or another process after a
///    crash — sees it.
/// 2. **Fencing.** Every write carries the writer's allocation epoch. Once a writer with epoch
///    `E` has claimed the document ([`claim`](Self::claim)), every write with an epoch below `E`
///    — and every write of an earlier claim, even one with the same epoch — is refused with
///    [`StoreError::Fenced`]. The refusal is atomic: it rests on one conditional write, never on
///    a read followed by a write, so no interleaving of processes lets a superseded writer get an
///    `Ok` for a write the next owner does not load. Writing requires a claim by this instance
///    ([`StoreError::NotClaimed`] otherwise).
/// 3. **Order.** [`load`](Self::load) returns updates in append order; the updates of one
///    append keep their order and are never split or interleaved with another append's.
/// 4. **Compaction loses nothing.** [`compact`](Self::compact) installs a snapshot covering
///    everything up to a [`Seq`] and then drops the log it covers; an acknowledged update is in
///    either the snapshot the caller supplied or the log after it, at every instant, crash or not.
/// 5. **Outputs apart.** Per-cell outputs are stored apart from the edit history (they never
///    appear in [`LoadedDoc::updates`] and are not compacted into snapshots): last write wins per
///    cell, and output writes are fenced exactly like appends.
///
/// Ids are validated by their types ([`DocumentId`], [`CellId`]), so no implementation ever sees
/// a path-traversing id. Methods may be called concurrently from many tasks.
pub trait DocumentStore: Send + Sync {
    /// Makes `epoch` the owner of `doc`, fencing out every earlier claim (a lower epoch, or the
    /// same epoch claimed earlier, e.g. before a restart). Refused with [`StoreError::Fenced`] if
    /// a higher epoch already holds the document. Claim before loading: a load that starts after
    /// the claim returned sees every write the store will ever acknowledge to an earlier owner.
    fn claim(
        &self,
        doc: &DocumentId,
        epoch: Epoch,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Durably appends `updates` as one batch (one write), returning its position. An empty
    /// batch is allowed: it takes a position and confirms the claim still holds.
    fn append(
        &self,
        doc: &DocumentId,
        epoch: Epoch,
        updates: Vec<Bytes>,
    ) -> impl Future<Output = Result<Seq, StoreError>> + Send;

    /// The latest snapshot and every update after it. A document never written loads empty.
    fn load(&self, doc: &DocumentId) -> impl Future<Output = Result<LoadedDoc, StoreError>> + Send;

    /// Installs `snapshot`, which must cover every update up to and including `upto`, and drops
    /// the log it covers. A compaction at or below the current snapshot does nothing;
    /// one beyond the last append is refused ([`StoreError::CompactBeyondEnd`]). The caller must
    /// have loaded the document after claiming it, so `snapshot` can cover what earlier owners
    /// wrote; implementations may enforce it ([`StoreError::CompactWithoutLoad`]).
    fn compact(
        &self,
        doc: &DocumentId,
        epoch: Epoch,
        snapshot: Bytes,
        upto: Seq,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Replaces the stored outputs of `cell`.
    fn put_outputs(
        &self,
        doc: &DocumentId,
        epoch: Epoch,
        cell: &CellId,
        outputs: Bytes,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The latest outputs of every cell that has any.
    fn outputs(
        &self,
        doc: &DocumentId,
    ) -> impl Future<Output = Result<BTreeMap<CellId, Bytes>, StoreError>> + Send;
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A later claim holds the document: stop serving it.
    #[error(
        "epoch {attempted} is fenced out: the document is held by epoch {current} \
         (a newer owner claimed it); stop serving the document"
    )]
    Fenced { attempted: Epoch, current: Epoch },
    #[error("epoch {epoch} has not claimed document {doc} through this store; call claim first")]
    NotClaimed { doc: DocumentId, epoch: Epoch },
    #[error(
        "document id {0:?} is not valid: use 1 to 128 characters from A-Z a-z 0-9 . _ - \
         (not . or ..)"
    )]
    BadDocumentId(String),
    #[error(
        "cell id {0:?} is not valid: use 1 to 128 characters from A-Z a-z 0-9 . _ - (not . or ..)"
    )]
    BadCellId(String),
    #[error("cannot compact document {doc} up to append {upto}: the last append is {end}")]
    CompactBeyondEnd {
        doc: DocumentId,
        upto: Seq,
        end: Seq,
    },
    #[error(
        "cannot compact document {doc}: load it after claiming first, so the snapshot covers \
         what earlier owners wrote"
    )]
    CompactWithoutLoad { doc: DocumentId },
    #[error("a part of {len} bytes is too large to store (at most 4 GiB - 1 per part)")]
    TooLarge { len: usize },
    #[error("document store URL {url:?} is not valid")]
    BadUrl {
        url: String,
        #[source]
        source: url::ParseError,
    },
    #[error(
        "document store URL {url:?} is not supported: use a folder, file:///…, memory:// \
         or s3://bucket/prefix"
    )]
    UnsupportedUrl {
        url: String,
        #[source]
        source: Option<object_store::Error>,
    },
    #[error(
        "object store {store} cannot update an object conditionally, which fencing needs; \
         use ObjectDocumentStore::local for a folder"
    )]
    NoConditionalUpdate {
        store: String,
        #[source]
        source: object_store::Error,
    },
    #[error("object store {op} of {path} failed")]
    Backend {
        op: &'static str,
        path: String,
        #[source]
        source: object_store::Error,
    },
    #[error("{op} {} failed", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("fence object {path} is not valid")]
    BadFence {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path} is corrupt: {reason}")]
    Corrupt { path: String, reason: &'static str },
    #[error("document {doc} changed under {op} {attempts} times in a row; try again")]
    Contended {
        doc: DocumentId,
        op: &'static str,
        attempts: u32,
    },
    #[error("a blocking file operation did not finish")]
    Blocking(#[source] tokio::task::JoinError),
}

/// Airlock's data folder on this machine: `$XDG_DATA_HOME/airlock`, else
/// `$HOME/.local/share/airlock`. `None` when neither variable gives an absolute path.
pub fn data_home() -> Option<std::path::PathBuf> {
    use std::path::PathBuf;
    std::env::var_os("XDG_DATA_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .filter(|dir| dir.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|home| !home.is_empty())
                .map(|home| PathBuf::from(home).join(".local").join("share"))
        })
        .map(|dir| dir.join("airlock"))
}
