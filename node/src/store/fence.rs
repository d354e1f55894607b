//! The fence object: the one mutable object of a document, and the only place a write commits.
//!
//! It records who holds the document (epoch and claim token), which log entries are committed
//! (their range and the claims that wrote them), the current snapshot, and where each cell's
//! outputs are. Every other object is immutable once referenced from here. A write is committed
//! exactly when a swap of this object succeeds; a swap is a compare-and-swap against the version
//! the writer read, so two writers can never both swap from the same version.
//!
//! Two registers provide that swap:
//! - [`FenceRegister::Object`]: `PutMode::Create` / `PutMode::Update` with the e-tag read (S3 and
//!   other conditional-put stores, `InMemory`).
//! - [`FenceRegister::Local`]: `object_store`'s `LocalFileSystem` refuses `PutMode::Update`
//!   (`NotImplemented` in 0.14), so a local folder swaps under an exclusive `flock` on a sibling
//!   `fence.lock` file: read the current revision, compare, write a temporary file, `fsync`,
//!   `rename` over the fence, `fsync` the folder. `flock` excludes other processes and other
//!   store instances in this one; readers need no lock because `rename` is atomic. (Not for NFS,
//!   where `flock` is not reliable.)

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};

use super::StoreError;

/// Format of the fence object; bumped on incompatible change.
const FORMAT: u32 = 1;

/// Names an immutable object written under one claim: the position (`n`: a log seq, a snapshot's
/// covered seq, or the fence revision of an outputs write) plus the claim that wrote it. A claim
/// token is random per claim, so two claims never write the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ObjectRef {
    pub n: u64,
    pub epoch: u64,
    pub claim: u64,
}

impl ObjectRef {
    /// The object's file name, which sorts by `n`.
    pub fn name(&self) -> String {
        format!("{:020}-{:020}-{:016x}", self.n, self.epoch, self.claim)
    }

    /// Parses [`ObjectRef::name`]; `None` for anything else.
    pub fn parse(name: &str) -> Option<Self> {
        let mut parts = name.split('-');
        let n = parts.next()?.parse().ok()?;
        let epoch = parts.next()?.parse().ok()?;
        let claim = u64::from_str_radix(parts.next()?, 16).ok()?;
        parts.next().is_none().then_some(Self { n, epoch, claim })
    }
}

/// From log entry `from` on, entries were written by this claim (until the next run starts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Run {
    pub from: u64,
    pub epoch: u64,
    pub claim: u64,
}

/// The content of the fence object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Fence {
    pub format: u32,
    /// The epoch holding the document.
    pub epoch: u64,
    /// The token of the claim holding the document; only it may swap the fence (other than a
    /// new claim).
    pub claim: u64,
    /// Bumped by every swap: the version number for local swaps and the names of outputs.
    pub rev: u64,
    /// The last committed log entry (0: none).
    pub end: u64,
    /// The snapshot covering entries `1..=snapshot.n`.
    pub snapshot: Option<ObjectRef>,
    /// Who wrote the committed entries after the snapshot, in order.
    pub runs: Vec<Run>,
    /// The current outputs object of each cell.
    pub outputs: BTreeMap<String, ObjectRef>,
}

impl Fence {
    pub fn new(epoch: u64, claim: u64) -> Self {
        Self {
            format: FORMAT,
            epoch,
            claim,
            rev: 1,
            end: 0,
            snapshot: None,
            runs: Vec::new(),
            outputs: BTreeMap::new(),
        }
    }

    /// Where the snapshot ends (0 without one).
    pub fn snapshot_end(&self) -> u64 {
        self.snapshot.map_or(0, |s| s.n)
    }

    /// The committed log entry at `seq`, if `seq` is after the snapshot and committed.
    pub fn entry(&self, seq: u64) -> Option<ObjectRef> {
        if seq <= self.snapshot_end() || seq > self.end {
            return None;
        }
        let run = self.runs.iter().rev().find(|run| run.from <= seq)?;
        Some(ObjectRef {
            n: seq,
            epoch: run.epoch,
            claim: run.claim,
        })
    }

    /// The fence after committing log entry `end + 1` under the holding claim.
    pub fn with_append(&self) -> Self {
        let mut next = self.clone();
        next.rev += 1;
        next.end += 1;
        let continues = next.runs.last().is_some_and(|run| run.claim == self.claim);
        if !continues {
            next.runs.push(Run {
                from: next.end,
                epoch: self.epoch,
                claim: self.claim,
            });
        }
        next
    }

    /// The fence after installing `snapshot`; runs wholly covered by it are dropped.
    pub fn with_snapshot(&self, snapshot: ObjectRef) -> Self {
        let mut next = self.clone();
        next.rev += 1;
        next.snapshot = Some(snapshot);
        // Keep a run if an entry after the snapshot may belong to it: the last run, or a run
        // whose successor starts after the first entry the snapshot does not cover.
        let keep_from = next
            .runs
            .windows(2)
            .position(|pair| pair[1].from > snapshot.n + 1)
            .unwrap_or(next.runs.len().saturating_sub(1));
        next.runs.drain(..keep_from);
        next
    }

    /// Whether the fence is internally consistent (so `entry` names every committed entry).
    fn valid(&self) -> bool {
        let start = self.snapshot_end();
        let runs_ordered = self.runs.windows(2).all(|pair| pair[0].from < pair[1].from);
        let covered = self.end == start
            || self.runs.first().is_some_and(|run| {
                run.from <= start + 1 && self.runs.iter().all(|r| r.from <= self.end)
            });
        self.format == FORMAT && start <= self.end && runs_ordered && covered
    }

    fn encode(&self, path: &str) -> Result<Bytes, StoreError> {
        serde_json::to_vec(self)
            .map(Bytes::from)
            .map_err(|source| StoreError::BadFence {
                path: path.to_string(),
                source,
            })
    }

    fn decode(path: &str, bytes: &[u8]) -> Result<Self, StoreError> {
        let fence: Self = serde_json::from_slice(bytes).map_err(|source| StoreError::BadFence {
            path: path.to_string(),
            source,
        })?;
        if fence.valid() {
            Ok(fence)
        } else {
            Err(StoreError::Corrupt {
                path: path.to_string(),
                reason: "the fence's log runs do not cover its entries",
            })
        }
    }
}

/// The version a swap must find to succeed.
#[derive(Debug, Clone)]
pub(crate) enum FenceVersion {
    Object(UpdateVersion),
    Local(u64),
}

/// Reads and atomically swaps fence objects (see the module docs).
#[derive(Debug, Clone)]
pub(crate) enum FenceRegister {
    Object(Arc<dyn ObjectStore>),
    Local(Arc<LocalFileSystem>),
}

impl FenceRegister {
    /// The fence at `path` and its version, `None` if the document was never claimed.
    pub async fn read(&self, path: &Path) -> Result<Option<(Fence, FenceVersion)>, StoreError> {
        match self {
            Self::Object(store) => {
                let result = match store.get(path).await {
                    Ok(result) => result,
                    Err(object_store::Error::NotFound { .. }) => return Ok(None),
                    Err(source) => return Err(backend("get", path, source)),
                };
                let version = UpdateVersion {
                    e_tag: result.meta.e_tag.clone(),
                    version: result.meta.version.clone(),
                };
                let bytes = result.bytes().await.map_err(|e| backend("get", path, e))?;
                let fence = Fence::decode(path.as_ref(), &bytes)?;
                Ok(Some((fence, FenceVersion::Object(version))))
            }
            Self::Local(fs) => {
                let file = local_path(fs, path)?;
                let label = path.to_string();
                blocking(move || match fs::read(&file) {
                    Ok(bytes) => {
                        let fence = Fence::decode(&label, &bytes)?;
                        let rev = fence.rev;
                        Ok(Some((fence, FenceVersion::Local(rev))))
                    }
                    Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
                    Err(source) => Err(StoreError::Io {
                        op: "read",
                        path: file,
                        source,
                    }),
                })
                .await
            }
        }
    }

    /// Replaces the fence at `path` with `next` if it is still at `expected` (`None`: absent).
    /// `Ok(None)` if it was not; `Err` if the outcome is unknown.
    pub async fn swap(
        &self,
        path: &Path,
        expected: Option<&FenceVersion>,
        next: &Fence,
    ) -> Result<Option<FenceVersion>, StoreError> {
        let bytes = next.encode(path.as_ref())?;
        match self {
            Self::Object(store) => {
                let mode = match expected {
                    None => PutMode::Create,
                    Some(FenceVersion::Object(version)) => PutMode::Update(version.clone()),
                    // A version from the other register cannot match this one.
                    Some(FenceVersion::Local(_)) => return Ok(None),
                };
                let opts = PutOptions::from(mode);
                match store.put_opts(path, PutPayload::from(bytes), opts).await {
                    Ok(result) => Ok(Some(FenceVersion::Object(UpdateVersion::from(result)))),
                    Err(
                        object_store::Error::AlreadyExists { .. }
                        | object_store::Error::Precondition { .. },
                    ) => Ok(None),
                    Err(source @ object_store::Error::NotImplemented { .. }) => {
                        Err(StoreError::NoConditionalUpdate {
                            store: store.to_string(),
                            source,
                        })
                    }
                    Err(source) => Err(backend("conditional put", path, source)),
                }
            }
            Self::Local(fs) => {
                let file = local_path(fs, path)?;
                let expected = match expected {
                    None => None,
                    Some(FenceVersion::Local(rev)) => Some(*rev),
                    Some(FenceVersion::Object(_)) => return Ok(None),
                };
                let label = path.to_string();
                let rev = next.rev;
                blocking(move || local_swap(&file, &label, expected, &bytes))
                    .await
                    .map(|swapped| swapped.then_some(FenceVersion::Local(rev)))
            }
        }
    }
}

fn backend(op: &'static str, path: &Path, source: object_store::Error) -> StoreError {
    StoreError::Backend {
        op,
        path: path.to_string(),
        source,
    }
}

fn local_path(fs: &LocalFileSystem, path: &Path) -> Result<PathBuf, StoreError> {
    fs.path_to_filesystem(path)
        .map_err(|source| backend("resolve", path, source))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(StoreError::Blocking)?
}

fn io<'a>(op: &'static str, path: &'a FsPath) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The local compare-and-swap: under an exclusive lock, compare the revision on disk with
/// `expected` and, if equal, durably replace the file. Returns whether it swapped.
fn local_swap(
    file: &FsPath,
    label: &str,
    expected: Option<u64>,
    bytes: &[u8],
) -> Result<bool, StoreError> {
    let Some(folder) = file.parent() else {
        return Err(StoreError::Io {
            op: "find the folder of",
            path: file.to_path_buf(),
            source: ErrorKind::InvalidInput.into(),
        });
    };
    if !folder.exists() {
        create_folders(folder)?;
    }
    let lock_path = folder.join("fence.lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io("open", &lock_path))?;
    lock.lock().map_err(io("lock", &lock_path))?;
    // The lock is released when `lock` is closed at the end of this function.
    let current = match fs::read(file) {
        Ok(current) => Some(Fence::decode(label, &current)?.rev),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(source) => {
            return Err(StoreError::Io {
                op: "read",
                path: file.to_path_buf(),
                source,
            });
        }
    };
    if current != expected {
        return Ok(false);
    }
    let staging = folder.join("fence.staging");
    let mut out = File::create(&staging).map_err(io("create", &staging))?;
    out.write_all(bytes).map_err(io("write", &staging))?;
    out.sync_all().map_err(io("fsync", &staging))?;
    drop(out);
    fs::rename(&staging, file).map_err(io("rename", &staging))?;
    sync_folder(folder)?;
    drop(lock);
    Ok(true)
}

/// Creates `folder` and its missing ancestors, making every new directory entry durable.
fn create_folders(folder: &FsPath) -> Result<(), StoreError> {
    let mut missing = Vec::new();
    let mut at = Some(folder);
    while let Some(dir) = at.filter(|dir| !dir.exists()) {
        missing.push(dir);
        at = dir.parent();
    }
    fs::create_dir_all(folder).map_err(io("create folder", folder))?;
    for dir in missing.iter().rev() {
        if let Some(parent) = dir.parent() {
            sync_folder(parent)?;
        }
    }
    Ok(())
}

fn sync_folder(folder: &FsPath) -> Result<(), StoreError> {
    File::open(folder)
        .and_then(|dir| dir.sync_all())
        .map_err(io("fsync folder", folder))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fence_with_runs(snapshot: u64, end: u64, runs: &[(u64, u64)]) -> Fence {
        let mut fence = Fence::new(9, 99);
        fence.end = end;
        fence.snapshot = (snapshot > 0).then_some(ObjectRef {
            n: snapshot,
            epoch: 1,
            claim: 1,
        });
        fence.runs = runs
            .iter()
            .map(|&(from, claim)| Run {
                from,
                epoch: claim,
                claim,
            })
            .collect();
        fence
    }

    #[test]
    fn names_round_trip_and_sort_by_position() {
        let a = ObjectRef {
            n: 9,
            epoch: 3,
            claim: u64::MAX,
        };
        let b = ObjectRef {
            n: 10,
            epoch: 1,
            claim: 0,
        };
        assert_eq!(ObjectRef::parse(&a.name()), Some(a));
        assert!(a.name() < b.name());
        assert_eq!(ObjectRef::parse("fence"), None);
        assert_eq!(ObjectRef::parse("1-2-3-4"), None);
    }

    #[test]
    fn entries_resolve_to_the_run_that_wrote_them() {
        let fence = fence_with_runs(0, 6, &[(1, 10), (4, 20)]);
        assert!(fence.valid());
        let claims: Vec<_> = (0..=7).map(|s| fence.entry(s).map(|e| e.claim)).collect();
        assert_eq!(
            claims,
            [
                None,
                Some(10),
                Some(10),
                Some(10),
                Some(20),
                Some(20),
                Some(20),
                None
            ]
        );
    }

    #[test]
    fn appends_start_a_run_only_for_a_new_claim() {
        let fence = Fence::new(1, 10).with_append().with_append();
        assert_eq!(fence.runs.len(), 1);
        let mut claimed = fence.clone();
        claimed.claim = 20;
        claimed.epoch = 2;
        let next = claimed.with_append();
        assert_eq!(next.runs.last().map(|r| (r.from, r.claim)), Some((3, 20)));
        assert!(next.valid());
    }

    #[test]
    fn snapshots_drop_only_covered_runs() {
        let fence = fence_with_runs(0, 9, &[(1, 10), (4, 20), (7, 30)]);
        let at = |n| ObjectRef {
            n,
            epoch: 1,
            claim: 1,
        };
        let froms = |f: Fence| f.runs.iter().map(|r| r.from).collect::<Vec<_>>();
        assert_eq!(froms(fence.with_snapshot(at(2))), [1, 4, 7]);
        assert_eq!(froms(fence.with_snapshot(at(3))), [4, 7]);
        assert_eq!(froms(fence.with_snapshot(at(6))), [7]);
        assert_eq!(froms(fence.with_snapshot(at(9))), [7]);
        for n in 1..=9 {
            let next = fence.with_snapshot(at(n));
            assert!(next.valid(), "snapshot at {n}");
            for seq in n + 1..=9 {
                assert_eq!(next.entry(seq), fence.entry(seq), "snapshot {n} seq {seq}");
            }
        }
    }

    #[test]
    fn inconsistent_fences_are_refused() {
        let bad = fence_with_runs(0, 5, &[(2, 10)]);
        assert!(matches!(
            Fence::decode("f", &bad.encode("f").unwrap()),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            Fence::decode("f", b"{}"),
            Err(StoreError::BadFence { .. })
        ));
    }

    #[tokio::test]
    async fn local_swaps_compare_revisions() {
        let dir = tempfile::tempdir().unwrap();
        let fs = Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        let register = FenceRegister::Local(fs);
        let path = Path::from("docs/d/fence");
        assert!(register.read(&path).await.unwrap().is_none());
        let first = Fence::new(1, 10);
        let v1 = register.swap(&path, None, &first).await.unwrap().unwrap();
        assert!(register.swap(&path, None, &first).await.unwrap().is_none());
        let second = first.with_append();
        let v2 = register
            .swap(&path, Some(&v1), &second)
            .await
            .unwrap()
            .unwrap();
        assert!(
            register
                .swap(&path, Some(&v1), &second)
                .await
                .unwrap()
                .is_none()
        );
        let (read, version) = register.read(&path).await.unwrap().unwrap();
        assert_eq!(read, second);
        assert!(matches!(
            (version, v2),
            (FenceVersion::Local(2), FenceVersion::Local(2))
        ));
    }

    #[tokio::test]
    async fn local_file_system_refuses_conditional_updates() {
        // Why the local register exists: if this starts passing, `FenceRegister::Object` could
        // serve local folders too.
        let dir = tempfile::tempdir().unwrap();
        let fs = LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        let path = Path::from("x");
        let put = fs.put(&path, PutPayload::from_static(b"1")).await.unwrap();
        let update = PutOptions::from(PutMode::Update(UpdateVersion::from(put)));
        let refused = fs
            .put_opts(&path, PutPayload::from_static(b"2"), update)
            .await;
        assert!(matches!(
            refused,
            Err(object_store::Error::NotImplemented { .. })
        ));
    }
}
