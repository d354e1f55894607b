//! [`ObjectDocumentStore`]: the [`DocumentStore`] on `object_store` — a local folder by default,
//! any conditional-put object store by URL (`s3://bucket/prefix?endpoint=…`), memory in tests.
//!
//! # Layout
//! ```text
//! <root>/docs/<doc>/fence                         holder, committed log, snapshot, outputs index
//! <root>/docs/<doc>/fence.lock                    local folders only: the flock for fence swaps
//! <root>/docs/<doc>/log/<seq>-<epoch>-<claim>     one append: a batch of updates
//! <root>/docs/<doc>/snapshot/<seq>-<epoch>-<claim>        covers appends 1..=seq
//! <root>/docs/<doc>/outputs/<cell>/<rev>-<epoch>-<claim>  a cell's outputs, at fence revision rev
//! ```
//! Numbers are zero-padded to 20 digits so names sort by position; `<claim>` is the random token
//! of the claim that wrote the object (16 hex digits). Every object but the fence is immutable
//! once the fence references it, and checksummed (`record`).
//!
//! # Protocol
//! - **claim(E):** read the fence (version `V`); refuse if it holds an epoch above `E`; swap `V` →
//!   the same content with epoch `E`, a fresh random claim token `C` and revision + 1.
//! - **write** (append, compact, put_outputs) under claim `C`: put the new object under a name
//!   containing `C` — invisible, because nothing references it — then swap the fence from the
//!   version `C` last saw to one that references it. The write is acknowledged if and only if
//!   that swap succeeds. When the swap finds another version, re-read: a holder other than `C`
//!   means [`StoreError::Fenced`]; otherwise retry.
//! - **load:** read the fence, then fetch exactly the objects it references (retrying from a
//!   fresh fence if a compaction deleted one meanwhile).
//! - **compact:** put the snapshot, swap the fence to reference it and drop the runs it covers,
//!   then delete what the new fence can never reference again.
//!
//! A swap is a compare-and-swap: `PutMode::Create`/`PutMode::Update(e-tag)` on object stores,
//! a compare of the revision under `flock` on a local folder (`LocalFileSystem` has no
//! `PutMode::Update`; see `fence`).
//!
//! # Why a superseded writer never gets an acknowledged write the next owner does not see
//! 1. A write by claim `C` is acknowledged only when a swap from a fence version held by `C`
//!    succeeds, and a swap succeeds only against the exact version it read.
//! 2. Swaps are linearizable, so the fence's versions form one chain. A later claim `C'` is a
//!    swap in that chain; every version after it is held by `C'` (or a later claim), so no swap
//!    of `C` can succeed after it: `C` is fenced, atomically, with no read-then-write window.
//! 3. Hence every acknowledged write of `C` is in the chain before `C'`'s claim, which carries
//!    the fence's content (committed log, snapshot, outputs index) forward; a load that starts
//!    after the claim reads a version at or after it and so references every such write.
//! 4. A referenced object is durable before it is referenced (the put returned: `fsync` on a
//!    folder, a completed PUT on S3) and never rewritten: only `C` writes names containing `C`,
//!    and it rewrites one only at a position its fence has not committed, under the instance's
//!    per-document lock.
//! 5. An object is deleted only once the fence has stopped referencing it for good: log entries
//!    and snapshots at or below the installed snapshot, outputs superseded at a revision at or
//!    below the fence that superseded them. A compaction's snapshot covers the entries it drops
//!    because the caller loaded after claiming — enforced: [`StoreError::CompactWithoutLoad`].
//!
//! # Costs
//! An append is one object put and one conditional put of the fence (on a folder: two `fsync`ed
//! files), so [`GroupCommitter`](super::GroupCommitter) batches. A load is one fence read plus one
//! read per append since the snapshot (16 at a time). The fence holds one reference per cell with
//! outputs, so it grows with the notebook, not with its history.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutOptions, PutPayload};
use tracing::warn;

use super::fence::{Fence, FenceRegister, FenceVersion, ObjectRef};
use super::record::{self, Kind};
use super::{CellId, DocumentId, DocumentStore, Epoch, LoadedDoc, Seq, StoreError};

/// How many times a write re-reads the fence after losing a swap before giving up. Only another
/// swap on the same document makes a swap fail, and under one claim those are serialized, so more
/// than one retry means a competing claim (which ends in `Fenced`) or a misbehaving store.
const MAX_SWAPS: u32 = 8;
/// How many times a claim re-reads the fence after losing a swap. Every lost swap is another
/// writer's progress, and until the claim lands the previous owner may still be appending.
const MAX_CLAIM_SWAPS: u32 = 64;
/// How many times a load starts over because a compaction removed what it was reading.
const MAX_LOADS: u32 = 8;
/// Objects fetched at once while loading.
const CONCURRENT_GETS: usize = 16;

/// A [`DocumentStore`] on an `object_store` backend; see the module docs for the layout and the
/// fencing argument.
#[derive(Debug)]
pub struct ObjectDocumentStore {
    objects: Arc<dyn ObjectStore>,
    register: FenceRegister,
    root: Path,
    /// Per-document write state. Its async mutex is the document's write queue: a write holds it
    /// across the object put and the fence swap, so this instance's writes to one document never
    /// race each other (they may still race other instances; the swap decides).
    writers: Mutex<HashMap<DocumentId, Arc<tokio::sync::Mutex<Writer>>>>,
}

/// This instance's hold on one document.
#[derive(Debug, Default)]
struct Writer {
    claim: Option<Claim>,
    /// The fence as this claim last swapped it, so a write needs no read first. Taken on use and
    /// put back only when it is certainly still current.
    cached: Option<(Fence, FenceVersion)>,
    /// Whether a load by this instance read a fence held by `claim`, which makes compaction
    /// safe: the caller has everything committed before its claim.
    loaded: bool,
}

#[derive(Debug, Clone, Copy)]
struct Claim {
    epoch: u64,
    token: u64,
}

impl ObjectDocumentStore {
    /// A store in a local folder (created if missing). Every write is `fsync`ed before it is
    /// acknowledged; fence swaps take a `flock`, so several processes may share the folder.
    pub fn local(folder: impl AsRef<std::path::Path>) -> Result<Self, StoreError> {
        let folder = folder.as_ref();
        std::fs::create_dir_all(folder).map_err(|source| StoreError::Io {
            op: "create folder",
            path: folder.to_path_buf(),
            source,
        })?;
        let fs = LocalFileSystem::new_with_prefix(folder)
            .map_err(|source| StoreError::Backend {
                op: "open",
                path: folder.display().to_string(),
                source,
            })?
            .with_fsync(true);
        let fs = Arc::new(fs);
        Ok(Self::with_register(
            fs.clone(),
            FenceRegister::Local(fs),
            Path::default(),
        ))
    }

    /// A store in this process's memory, gone when the last clone of its backend is dropped.
    pub fn memory() -> Self {
        Self::new(Arc::new(InMemory::new()), Path::default())
    }

    /// A store under `root` in `objects`, which must support conditional puts
    /// (`PutMode::Create` and `PutMode::Update`): S3 and S3-compatible stores, GCS, Azure,
    /// `InMemory`. For a local folder use [`ObjectDocumentStore::local`].
    pub fn new(objects: Arc<dyn ObjectStore>, root: Path) -> Self {
        Self::with_register(objects.clone(), FenceRegister::Object(objects), root)
    }

    /// Opens a store by URL or folder: a plain path or `file:///abs/path` is a local folder,
    /// `memory://` a fresh in-memory store, anything else goes to `object_store::parse_url_opts`
    /// (`s3://bucket/prefix`, with the URL's query pairs — `?endpoint=…&region=…` — and
    /// `options` as builder settings such as credentials).
    pub fn open(
        url: &str,
        options: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, StoreError> {
        if !url.contains("://") {
            return Self::local(url);
        }
        let parsed = url::Url::parse(url).map_err(|source| StoreError::BadUrl {
            url: url.to_string(),
            source,
        })?;
        match parsed.scheme() {
            "file" => match parsed.to_file_path() {
                Ok(folder) => Self::local(folder),
                Err(()) => Err(StoreError::UnsupportedUrl {
                    url: url.to_string(),
                    source: None,
                }),
            },
            "memory" => Ok(Self::memory()),
            _ => {
                let mut settings: Vec<(String, String)> = parsed
                    .query_pairs()
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect();
                settings.extend(options);
                let mut bare = parsed.clone();
                bare.set_query(None);
                let (objects, root) =
                    object_store::parse_url_opts(&bare, settings).map_err(|source| {
                        StoreError::UnsupportedUrl {
                            url: url.to_string(),
                            source: Some(source),
                        }
                    })?;
                Ok(Self::new(Arc::from(objects), root))
            }
        }
    }

    fn with_register(objects: Arc<dyn ObjectStore>, register: FenceRegister, root: Path) -> Self {
        Self {
            objects,
            register,
            root,
            writers: Mutex::new(HashMap::new()),
        }
    }

    fn writer(&self, doc: &DocumentId) -> Arc<tokio::sync::Mutex<Writer>> {
        // The map is only touched between awaits, so a poisoned lock holds consistent data.
        let mut writers = self.writers.lock().unwrap_or_else(PoisonError::into_inner);
        writers.entry(doc.clone()).or_default().clone()
    }

    fn doc_root(&self, doc: &DocumentId) -> Path {
        self.root.clone().join("docs").join(doc.as_str())
    }

    fn fence_path(&self, doc: &DocumentId) -> Path {
        self.doc_root(doc).join("fence")
    }

    fn log_path(&self, doc: &DocumentId, entry: ObjectRef) -> Path {
        self.doc_root(doc).join("log").join(entry.name())
    }

    fn snapshot_path(&self, doc: &DocumentId, snapshot: ObjectRef) -> Path {
        self.doc_root(doc).join("snapshot").join(snapshot.name())
    }

    fn outputs_path(&self, doc: &DocumentId, cell: &str, outputs: ObjectRef) -> Path {
        self.doc_root(doc)
            .join("outputs")
            .join(cell)
            .join(outputs.name())
    }

    fn fenced(&self, op: &'static str, attempted: Epoch, current: u64) -> StoreError {
        metrics::counter!("airlock_store_fenced_total", "op" => op).increment(1);
        StoreError::Fenced {
            attempted,
            current: Epoch(current),
        }
    }

    /// The fence for a write by `epoch`, checked to be held by this instance's claim of it.
    async fn held_fence(
        &self,
        op: &'static str,
        doc: &DocumentId,
        writer: &mut Writer,
        epoch: Epoch,
    ) -> Result<(Claim, Fence, FenceVersion), StoreError> {
        let path = self.fence_path(doc);
        let claim = match writer.claim {
            Some(claim) if claim.epoch == epoch.0 => claim,
            _ => {
                // Not claimed here; if a later epoch holds the document, say so.
                if let Some((fence, _)) = self.register.read(&path).await?
                    && fence.epoch > epoch.0
                {
                    return Err(self.fenced(op, epoch, fence.epoch));
                }
                return Err(StoreError::NotClaimed {
                    doc: doc.clone(),
                    epoch,
                });
            }
        };
        let (fence, version) = match writer.cached.take() {
            Some(cached) => cached,
            None => self
                .register
                .read(&path)
                .await?
                .ok_or_else(|| StoreError::NotClaimed {
                    doc: doc.clone(),
                    epoch,
                })?,
        };
        if fence.claim != claim.token {
            return Err(self.fenced(op, epoch, fence.epoch));
        }
        Ok((claim, fence, version))
    }

    /// Swaps the fence from `version` to `next`, caching `next` on success. `Ok(false)`: the
    /// fence had moved on (the caller re-reads it); `Err`: outcome unknown (not acknowledged).
    async fn swap(
        &self,
        doc: &DocumentId,
        writer: &mut Writer,
        version: &FenceVersion,
        next: Fence,
    ) -> Result<bool, StoreError> {
        let path = self.fence_path(doc);
        if let Some(version) = self.register.swap(&path, Some(version), &next).await? {
            writer.cached = Some((next, version));
            return Ok(true);
        }
        // A conditional put the client retried (a timeout, S3's 409) can report a conflict with
        // its own earlier, successful attempt. Only this claim writes versions held by it, one at
        // a time, so finding exactly `next` means the swap landed: report it, do not redo it.
        if let Some((current, version)) = self.register.read(&path).await?
            && current == next
        {
            writer.cached = Some((next, version));
            return Ok(true);
        }
        metrics::counter!("airlock_store_fence_conflicts_total").increment(1);
        Ok(false)
    }

    /// Puts an immutable object (overwriting only this claim's own uncommitted attempt).
    async fn put(&self, path: &Path, chunks: Vec<Bytes>) -> Result<(), StoreError> {
        self.objects
            .put_opts(path, PutPayload::from_iter(chunks), PutOptions::default())
            .await
            .map(drop)
            .map_err(|source| StoreError::Backend {
                op: "put",
                path: path.to_string(),
                source,
            })
    }

    /// An object's bytes, `None` if it is gone.
    async fn get(&self, path: &Path) -> Result<Option<Bytes>, StoreError> {
        let fetched = match self.objects.get(path).await {
            Ok(result) => result.bytes().await,
            Err(e) => Err(e),
        };
        match fetched {
            Ok(bytes) => Ok(Some(bytes)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(source) => Err(StoreError::Backend {
                op: "get",
                path: path.to_string(),
                source,
            }),
        }
    }

    /// Fetches and decodes the objects at `refs`; `Ok(Err(path))` if one is gone.
    async fn fetch_all(
        &self,
        kind: Kind,
        refs: Vec<(Path, ObjectRef)>,
    ) -> Result<Result<Vec<Vec<Bytes>>, Path>, StoreError> {
        let fetched: Vec<_> = futures::stream::iter(refs)
            .map(|(path, at)| async move {
                let bytes = self.get(&path).await?;
                Ok::<_, StoreError>((path, at, bytes))
            })
            .buffered(CONCURRENT_GETS)
            .try_collect()
            .await?;
        let mut decoded = Vec::with_capacity(fetched.len());
        for (path, at, bytes) in fetched {
            let Some(bytes) = bytes else {
                return Ok(Err(path));
            };
            let record = record::decode(kind, path.as_ref(), bytes)?;
            if (record.epoch, record.n) != (at.epoch, at.n) {
                return Err(StoreError::Corrupt {
                    path: path.to_string(),
                    reason: "its header does not match its name",
                });
            }
            decoded.push(record.parts);
        }
        Ok(Ok(decoded))
    }

    /// Loads what `fence` references; `Ok(Err(path))` if a compaction removed part of it.
    async fn load_fenced(
        &self,
        doc: &DocumentId,
        fence: &Fence,
    ) -> Result<Result<LoadedDoc, Path>, StoreError> {
        let snapshot = match fence.snapshot {
            Some(at) => {
                let path = self.snapshot_path(doc, at);
                match self.fetch_all(Kind::Snapshot, vec![(path, at)]).await? {
                    Ok(mut parts) => parts.pop().and_then(|mut parts| parts.pop()),
                    Err(missing) => return Ok(Err(missing)),
                }
            }
            None => None,
        };
        let mut refs = Vec::new();
        for seq in fence.snapshot_end() + 1..=fence.end {
            let Some(entry) = fence.entry(seq) else {
                return Err(StoreError::Corrupt {
                    path: self.fence_path(doc).to_string(),
                    reason: "a committed log entry has no writer",
                });
            };
            refs.push((self.log_path(doc, entry), entry));
        }
        let batches = match self.fetch_all(Kind::Log, refs).await? {
            Ok(batches) => batches,
            Err(missing) => return Ok(Err(missing)),
        };
        Ok(Ok(LoadedDoc {
            snapshot,
            snapshot_seq: Seq(fence.snapshot_end()),
            updates: batches.into_iter().flatten().collect(),
            seq: Seq(fence.end),
            epoch: Some(Epoch(fence.epoch)),
        }))
    }

    /// Reads the fence and runs `read` on it, starting over when a compaction removed an object
    /// meanwhile; an object missing twice under the same fence revision is reported as corrupt.
    async fn read_consistent<T, F, Fut>(
        &self,
        op: &'static str,
        doc: &DocumentId,
        empty: T,
        mut read: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut(Fence) -> Fut,
        Fut: Future<Output = Result<Result<T, Path>, StoreError>>,
    {
        let mut missing_at: Option<u64> = None;
        for _ in 0..MAX_LOADS {
            let Some((fence, _)) = self.register.read(&self.fence_path(doc)).await? else {
                return Ok(empty);
            };
            let rev = fence.rev;
            match read(fence).await? {
                Ok(found) => return Ok(found),
                Err(missing) if missing_at == Some(rev) => {
                    return Err(StoreError::Corrupt {
                        path: missing.to_string(),
                        reason: "the fence references it but it is missing",
                    });
                }
                Err(_) => missing_at = Some(rev),
            }
        }
        Err(StoreError::Contended {
            doc: doc.clone(),
            op,
            attempts: MAX_LOADS,
        })
    }

    /// Deletes what `fence` (just installed by a compaction) can never reference again: log
    /// entries and other snapshots at or below its snapshot, committed or abandoned, and outputs
    /// no longer referenced from a revision at or below its own. Failures only leave garbage.
    async fn sweep(&self, doc: &DocumentId, fence: &Fence) {
        let Some(snapshot) = fence.snapshot else {
            return;
        };
        let root = self.doc_root(doc);
        let mut listed = Vec::new();
        for kind in ["log", "snapshot", "outputs"] {
            let prefix = root.clone().join(kind);
            match self
                .objects
                .list(Some(&prefix))
                .try_collect::<Vec<_>>()
                .await
            {
                Ok(found) => listed.extend(found),
                Err(error) => {
                    warn!(document = %doc, %error, "could not list what compaction made garbage");
                    return;
                }
            }
        }
        let doomed: Vec<Path> = listed
            .into_iter()
            .map(|meta| meta.location)
            .filter(|path| {
                let Some(rest) = path.prefix_match(&root) else {
                    return false;
                };
                let parts: Vec<_> = rest.collect();
                let name =
                    |part: &object_store::path::PathPart<'_>| ObjectRef::parse(part.as_ref());
                match parts.as_slice() {
                    [kind, file] if kind.as_ref() == "log" => {
                        name(file).is_some_and(|entry| entry.n <= snapshot.n)
                    }
                    [kind, file] if kind.as_ref() == "snapshot" => {
                        name(file).is_some_and(|other| other.n <= snapshot.n && other != snapshot)
                    }
                    [kind, cell, file] if kind.as_ref() == "outputs" => {
                        name(file).is_some_and(|out| {
                            out.n <= fence.rev && fence.outputs.get(cell.as_ref()) != Some(&out)
                        })
                    }
                    _ => false,
                }
            })
            .collect();
        self.delete(doc, doomed).await;
    }

    /// Deletes `paths`, tolerating ones already gone; failures are logged (they leave garbage,
    /// never lose data).
    async fn delete(&self, doc: &DocumentId, paths: Vec<Path>) {
        if paths.is_empty() {
            return;
        }
        let count = paths.len();
        let results: Vec<_> = self
            .objects
            .delete_stream(futures::stream::iter(paths.into_iter().map(Ok)).boxed())
            .collect()
            .await;
        let failures = results
            .iter()
            .filter(|r| !matches!(r, Ok(_) | Err(object_store::Error::NotFound { .. })))
            .count();
        metrics::counter!("airlock_store_deleted_objects_total")
            .increment((count - failures) as u64);
        if let Some(Err(error)) = results
            .iter()
            .find(|r| !matches!(r, Ok(_) | Err(object_store::Error::NotFound { .. })))
        {
            warn!(document = %doc, failures, %error, "could not delete superseded objects");
        }
    }
}

impl DocumentStore for ObjectDocumentStore {
    async fn claim(&self, doc: &DocumentId, epoch: Epoch) -> Result<(), StoreError> {
        let writer = self.writer(doc);
        let mut writer = writer.lock().await;
        writer.cached = None;
        let token = rand::random::<u64>();
        let path = self.fence_path(doc);
        for _ in 0..MAX_CLAIM_SWAPS {
            let current = self.register.read(&path).await?;
            let next = match &current {
                Some((fence, _)) if fence.epoch > epoch.0 => {
                    return Err(self.fenced("claim", epoch, fence.epoch));
                }
                Some((fence, _)) => Fence {
                    epoch: epoch.0,
                    claim: token,
                    rev: fence.rev + 1,
                    ..fence.clone()
                },
                None => Fence::new(epoch.0, token),
            };
            let expected = current.as_ref().map(|(_, version)| version);
            let mut landed = self
                .register
                .swap(&path, expected, &next)
                .await?
                .map(|version| (next, version));
            if landed.is_none() {
                // As in `swap`: a retried put may report a conflict with its own success; the
                // token is fresh, so a fence holding it is this claim's.
                landed = self
                    .register
                    .read(&path)
                    .await?
                    .filter(|(current, _)| current.claim == token);
            }
            if let Some(landed) = landed {
                writer.claim = Some(Claim {
                    epoch: epoch.0,
                    token,
                });
                writer.cached = Some(landed);
                writer.loaded = false;
                return Ok(());
            }
        }
        Err(StoreError::Contended {
            doc: doc.clone(),
            op: "claim",
            attempts: MAX_CLAIM_SWAPS,
        })
    }

    async fn append(
        &self,
        doc: &DocumentId,
        epoch: Epoch,
        updates: Vec<Bytes>,
    ) -> Result<Seq, StoreError> {
        let started = Instant::now();
        let writer = self.writer(doc);
        let mut writer = writer.lock().await;
        for _ in 0..MAX_SWAPS {
            let (claim, fence, version) =
                self.held_fence("append", doc, &mut writer, epoch).await?;
            let entry = ObjectRef {
                n: fence.end + 1,
                epoch: claim.epoch,
                claim: claim.token,
            };
            let written = match record::encode(Kind::Log, entry.epoch, entry.n, &updates) {
                Ok(chunks) => self.put(&self.log_path(doc, entry), chunks).await,
                Err(e) => Err(e),
            };
            if let Err(e) = written {
                // The fence did not change, so the cached copy is still current.
                writer.cached = Some((fence, version));
                return Err(e);
            }
            let next = fence.with_append();
            if self.swap(doc, &mut writer, &version, next).await? {
                metrics::histogram!("airlock_store_append_seconds")
                    .record(started.elapsed().as_secs_f64());
                metrics::counter!("airlock_store_appended_updates_total")
                    .increment(updates.len() as u64);
                return Ok(Seq(entry.n));
            }
        }
        Err(StoreError::Contended {
            doc: doc.clone(),
            op: "append",
            attempts: MAX_SWAPS,
        })
    }

    async fn load(&self, doc: &DocumentId) -> Result<LoadedDoc, StoreError> {
        let mut held_by = None;
        let loaded = self
            .read_consistent("load", doc, LoadedDoc::default(), |fence| {
                held_by = Some(fence.claim);
                async move { self.load_fenced(doc, &fence).await }
            })
            .await?;
        if let Some(token) = held_by {
            let writer = self.writer(doc);
            let mut writer = writer.lock().await;
            if writer.claim.is_some_and(|claim| claim.token == token) {
                writer.loaded = true;
            }
        }
        Ok(loaded)
    }

    async fn compact(
        &self,
        doc: &DocumentId,
        epoch: Epoch,
        snapshot: Bytes,
        upto: Seq,
    ) -> Result<(), StoreError> {
        let writer = self.writer(doc);
        let installed = {
            let mut writer = writer.lock().await;
            // Compaction is rare: read the fence afresh, so that a no-op or a refusal is only
            // reported to a claim that still holds the document (a stale one learns `Fenced`).
            writer.cached = None;
            let mut installed = None;
            for _ in 0..MAX_SWAPS {
                let (claim, fence, version) =
                    self.held_fence("compact", doc, &mut writer, epoch).await?;
                let refusal = if !writer.loaded {
                    Some(StoreError::CompactWithoutLoad { doc: doc.clone() })
                } else if upto.0 > fence.end {
                    Some(StoreError::CompactBeyondEnd {
                        doc: doc.clone(),
                        upto,
                        end: Seq(fence.end),
                    })
                } else {
                    None
                };
                if let Some(refusal) = refusal {
                    writer.cached = Some((fence, version));
                    return Err(refusal);
                }
                if upto.0 <= fence.snapshot_end() {
                    writer.cached = Some((fence, version));
                    return Ok(());
                }
                let at = ObjectRef {
                    n: upto.0,
                    epoch: claim.epoch,
                    claim: claim.token,
                };
                let written = match record::encode(
                    Kind::Snapshot,
                    at.epoch,
                    at.n,
                    std::slice::from_ref(&snapshot),
                ) {
                    Ok(chunks) => self.put(&self.snapshot_path(doc, at), chunks).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = written {
                    writer.cached = Some((fence, version));
                    return Err(e);
                }
                let next = fence.with_snapshot(at);
                if self.swap(doc, &mut writer, &version, next.clone()).await? {
                    installed = Some(next);
                    break;
                }
            }
            installed.ok_or_else(|| StoreError::Contended {
                doc: doc.clone(),
                op: "compact",
                attempts: MAX_SWAPS,
            })?
        };
        // Outside the write queue: deleting what no fence can reference again races nothing.
        self.sweep(doc, &installed).await;
        Ok(())
    }

    async fn put_outputs(
        &self,
        doc: &DocumentId,
        epoch: Epoch,
        cell: &CellId,
        outputs: Bytes,
    ) -> Result<(), StoreError> {
        let writer = self.writer(doc);
        let replaced = {
            let mut writer = writer.lock().await;
            let mut replaced = None;
            for _ in 0..MAX_SWAPS {
                let (claim, fence, version) = self
                    .held_fence("put_outputs", doc, &mut writer, epoch)
                    .await?;
                let at = ObjectRef {
                    n: fence.rev + 1,
                    epoch: claim.epoch,
                    claim: claim.token,
                };
                let written = match record::encode(
                    Kind::Outputs,
                    at.epoch,
                    at.n,
                    std::slice::from_ref(&outputs),
                ) {
                    Ok(chunks) => {
                        self.put(&self.outputs_path(doc, cell.as_str(), at), chunks)
                            .await
                    }
                    Err(e) => Err(e),
                };
                if let Err(e) = written {
                    writer.cached = Some((fence, version));
                    return Err(e);
                }
                let mut next = fence.clone();
                next.rev += 1;
                let previous = next.outputs.insert(cell.as_str().to_string(), at);
                if self.swap(doc, &mut writer, &version, next).await? {
                    replaced = Some(previous);
                    break;
                }
            }
            replaced.ok_or_else(|| StoreError::Contended {
                doc: doc.clone(),
                op: "put_outputs",
                attempts: MAX_SWAPS,
            })?
        };
        if let Some(previous) = replaced {
            // No fence from here on references it (new references get higher revisions).
            self.delete(doc, vec![self.outputs_path(doc, cell.as_str(), previous)])
                .await;
        }
        Ok(())
    }

    async fn outputs(&self, doc: &DocumentId) -> Result<BTreeMap<CellId, Bytes>, StoreError> {
        self.read_consistent("outputs", doc, BTreeMap::new(), |fence| async move {
            let mut cells = Vec::with_capacity(fence.outputs.len());
            let mut refs = Vec::with_capacity(fence.outputs.len());
            for (cell, at) in &fence.outputs {
                cells.push(CellId::new(cell.clone())?);
                refs.push((self.outputs_path(doc, cell, *at), *at));
            }
            Ok(match self.fetch_all(Kind::Outputs, refs).await? {
                Ok(parts) => Ok(cells
                    .into_iter()
                    .zip(parts)
                    .map(|(cell, mut parts)| (cell, parts.pop().unwrap_or_default()))
                    .collect()),
                Err(missing) => Err(missing),
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(id: &str) -> DocumentId {
        DocumentId::new(id).unwrap()
    }

    async fn list(store: &ObjectDocumentStore, prefix: &str) -> Vec<String> {
        let prefix = Path::from(prefix);
        let mut names: Vec<String> = store
            .objects
            .list(Some(&prefix))
            .map_ok(|meta| meta.location.to_string())
            .try_collect()
            .await
            .unwrap();
        names.sort();
        names
    }

    #[tokio::test]
    async fn a_fenced_writers_object_is_never_loaded_and_is_swept() {
        let objects: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let old = ObjectDocumentStore::new(objects.clone(), Path::default());
        let new = ObjectDocumentStore::new(objects, Path::default());
        let d = doc("d");
        old.claim(&d, Epoch(1)).await.unwrap();
        old.append(&d, Epoch(1), vec![Bytes::from_static(b"kept")])
            .await
            .unwrap();
        new.claim(&d, Epoch(2)).await.unwrap();
        // The old owner still believes it holds the fence: its entry object lands, its swap fails.
        let refused = old
            .append(&d, Epoch(1), vec![Bytes::from_static(b"stale")])
            .await;
        assert!(matches!(
            refused,
            Err(StoreError::Fenced {
                attempted: Epoch(1),
                current: Epoch(2)
            })
        ));
        assert_eq!(
            list(&new, "docs/d/log").await.len(),
            2,
            "the stale entry object exists"
        );
        let loaded = new.load(&d).await.unwrap();
        assert_eq!(loaded.updates, [Bytes::from_static(b"kept")]);
        // The new owner's append takes the same position under its own name.
        let seq = new
            .append(&d, Epoch(2), vec![Bytes::from_static(b"new")])
            .await
            .unwrap();
        assert_eq!(seq, Seq(2));
        new.compact(&d, Epoch(2), Bytes::from_static(b"S"), seq)
            .await
            .unwrap();
        assert!(
            list(&new, "docs/d/log").await.is_empty(),
            "covered and abandoned entries swept"
        );
        assert_eq!(list(&new, "docs/d/snapshot").await.len(), 1);
    }

    #[tokio::test]
    async fn replaced_outputs_are_deleted() {
        let store = ObjectDocumentStore::memory();
        let d = doc("d");
        let cell = CellId::new("c").unwrap();
        store.claim(&d, Epoch(1)).await.unwrap();
        for text in ["a", "b", "c"] {
            store
                .put_outputs(&d, Epoch(1), &cell, Bytes::from(text))
                .await
                .unwrap();
        }
        assert_eq!(list(&store, "docs/d/outputs").await.len(), 1);
    }

    #[tokio::test]
    async fn compaction_needs_a_load_after_the_claim() {
        let store = ObjectDocumentStore::memory();
        let d = doc("d");
        store.claim(&d, Epoch(1)).await.unwrap();
        let seq = store
            .append(&d, Epoch(1), vec![Bytes::from_static(b"u")])
            .await
            .unwrap();
        let refused = store.compact(&d, Epoch(1), Bytes::new(), seq).await;
        assert!(matches!(
            refused,
            Err(StoreError::CompactWithoutLoad { .. })
        ));
        store.load(&d).await.unwrap();
        store
            .compact(&d, Epoch(1), Bytes::new(), seq)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn urls_pick_the_backend() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("store");
        let url = format!("file://{}", folder.display());
        let store = ObjectDocumentStore::open(&url, []).unwrap();
        assert!(matches!(store.register, FenceRegister::Local(_)));
        assert!(folder.is_dir());
        let plain = ObjectDocumentStore::open(folder.to_str().unwrap(), []).unwrap();
        assert!(matches!(plain.register, FenceRegister::Local(_)));
        let memory = ObjectDocumentStore::open("memory://", []).unwrap();
        assert!(matches!(memory.register, FenceRegister::Object(_)));
        // Building an S3 client touches no network.
        let s3 = ObjectDocumentStore::open(
            "s3://bucket/some/prefix?endpoint=http://127.0.0.1:9&region=us-east-1",
            [("allow_http".to_string(), "true".to_string())],
        )
        .unwrap();
        assert_eq!(s3.root, Path::from("some/prefix"));
        assert!(matches!(
            ObjectDocumentStore::open("nope://x", []),
            Err(StoreError::UnsupportedUrl { .. })
        ));
        assert!(matches!(
            ObjectDocumentStore::open("s3://[", []),
            Err(StoreError::BadUrl { .. })
        ));
    }
}
