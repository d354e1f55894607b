//! [`GroupCommitter`]: many `commit(update)` calls become one [`DocumentStore::append`].
//!
//! A task owns the queue. It takes the first waiting update, keeps collecting for
//! [`GroupCommitConfig::window`] (or until the batch is full), appends the batch in one write and
//! then answers every caller of the batch with the batch's [`Seq`]: a `commit` returns only once
//! its update is durable. While one batch is being written the next one fills, so under load the
//! store sees one write per write latency however many editors there are.
//!
//! If the store says the document is fenced, every caller of that batch and every update still
//! queued get [`CommitError::Fenced`], and the committer stops for good: a newer owner holds the
//! document and this node must stop serving it. Other store errors fail their batch only.
//!
//! It does not retry a failed batch: an edit whose commit failed was not acknowledged, and the
//! client that sent it resends it (y-sync resends what was not acknowledged).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{DocumentId, DocumentStore, Epoch, Seq, StoreError};

/// How a [`GroupCommitter`] batches.
#[derive(Debug, Clone)]
pub struct GroupCommitConfig {
    /// How long a batch keeps collecting after its first update. Zero: take only what is already
    /// queued (batches still form while a write is in flight).
    pub window: Duration,
    /// A batch closes once it holds this many updates.
    pub max_updates: usize,
    /// A batch closes once it holds this many bytes (it may exceed it by its last update).
    pub max_bytes: usize,
    /// Updates that may wait for a batch before `commit` itself waits (backpressure).
    pub queue: usize,
}

impl Default for GroupCommitConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_millis(2),
            max_updates: 512,
            max_bytes: 4 << 20,
            queue: 4096,
        }
    }
}

/// Why an update was not committed. Cloneable, because one failure answers a whole batch.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitError {
    /// A newer owner holds the document; the committer has stopped.
    #[error(
        "epoch {attempted} is fenced out by epoch {current}: a newer owner holds the document; \
         stop serving it"
    )]
    Fenced { attempted: Epoch, current: Epoch },
    /// The batch could not be stored; this update was not acknowledged.
    #[error("the update could not be stored")]
    Store(#[source] Arc<StoreError>),
    /// The committer was shut down.
    #[error("the group committer has stopped")]
    Stopped,
}

struct Pending {
    update: Bytes,
    reply: oneshot::Sender<Result<Seq, CommitError>>,
}

/// Batches the updates of one document into durable appends (see the module docs).
#[derive(Debug)]
pub struct GroupCommitter {
    queue: mpsc::Sender<Pending>,
    /// Why the committer stopped, once it has stopped for a reason of its own.
    stopped: Arc<OnceLock<CommitError>>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("len", &self.update.len())
            .finish()
    }
}

impl GroupCommitter {
    /// Starts committing updates of `doc` as `epoch`, which must already have claimed it
    /// through `store` (and loaded it).
    pub fn spawn<S: DocumentStore + 'static>(
        store: Arc<S>,
        doc: DocumentId,
        epoch: Epoch,
        config: GroupCommitConfig,
    ) -> Self {
        let (queue, incoming) = mpsc::channel(config.queue.max(1));
        let stopped = Arc::new(OnceLock::new());
        let task = tokio::spawn(run(
            store,
            doc,
            epoch,
            config,
            incoming,
            Arc::clone(&stopped),
        ));
        Self {
            queue,
            stopped,
            task,
        }
    }

    /// Commits `update`, returning once it is durable (with the [`Seq`] of its batch).
    pub async fn commit(&self, update: Bytes) -> Result<Seq, CommitError> {
        let (reply, answer) = oneshot::channel();
        if self.queue.send(Pending { update, reply }).await.is_err() {
            return Err(self.stop_reason());
        }
        answer.await.unwrap_or_else(|_| Err(self.stop_reason()))
    }

    /// Why the committer stopped, if it has: fenced, or a store that refused the claim.
    pub fn stopped(&self) -> Option<CommitError> {
        self.stopped.get().cloned()
    }

    /// Stops taking updates, commits those already queued, and waits for the task to end.
    /// Returns why it had stopped on its own, if it had.
    pub async fn shutdown(self) -> Option<CommitError> {
        let Self {
            queue,
            stopped,
            task,
        } = self;
        drop(queue);
        // The task only ends by returning; a panic in it would be a bug worth surfacing.
        if let Err(error) = task.await {
            tracing::error!(%error, "group committer task failed");
        }
        stopped.get().cloned()
    }

    fn stop_reason(&self) -> CommitError {
        self.stopped().unwrap_or(CommitError::Stopped)
    }
}

async fn run<S: DocumentStore>(
    store: Arc<S>,
    doc: DocumentId,
    epoch: Epoch,
    config: GroupCommitConfig,
    mut incoming: mpsc::Receiver<Pending>,
    stopped: Arc<OnceLock<CommitError>>,
) {
    while let Some(first) = incoming.recv().await {
        let batch = collect(first, &mut incoming, &config).await;
        let updates: Vec<Bytes> = batch.iter().map(|p| p.update.clone()).collect();
        metrics::histogram!("airlock_store_batch_updates").record(updates.len() as f64);
        metrics::counter!("airlock_store_batches_total").increment(1);
        let outcome = match store.append(&doc, epoch, updates).await {
            Ok(seq) => Ok(seq),
            Err(StoreError::Fenced { attempted, current }) => {
                let fenced = CommitError::Fenced { attempted, current };
                let _ = stopped.set(fenced.clone());
                Err(fenced)
            }
            Err(error) => {
                let fatal = matches!(error, StoreError::NotClaimed { .. });
                let error = CommitError::Store(Arc::new(error));
                if fatal {
                    // Every later batch would fail the same way.
                    let _ = stopped.set(error.clone());
                }
                Err(error)
            }
        };
        for pending in batch {
            // A caller that gave up waiting is no reason to stop.
            let _ = pending.reply.send(outcome.clone());
        }
        if let Some(reason) = stopped.get() {
            tracing::warn!(document = %doc, %epoch, error = %reason, "group committer stopped");
            incoming.close();
            while let Some(pending) = incoming.recv().await {
                let _ = pending.reply.send(Err(reason.clone()));
            }
            return;
        }
    }
}

/// Collects a batch starting with `first`: whatever is queued, then whatever arrives within the
/// window, until the batch is full.
async fn collect(
    first: Pending,
    incoming: &mut mpsc::Receiver<Pending>,
    config: &GroupCommitConfig,
) -> Vec<Pending> {
    let deadline = Instant::now() + config.window;
    let mut bytes = first.update.len();
    let mut batch = vec![first];
    while batch.len() < config.max_updates && bytes < config.max_bytes {
        let next = tokio::select! {
            // Queued updates first, so a zero window still takes everything waiting.
            biased;
            next = incoming.recv() => next,
            () = tokio::time::sleep_until(deadline) => None,
        };
        let Some(next) = next else { break };
        bytes += next.update.len();
        batch.push(next);
    }
    batch
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use super::*;
    use crate::store::{CellId, LoadedDoc, ObjectDocumentStore};

    /// A store that records each append's batch and can be told to fail.
    #[derive(Default)]
    struct Recording {
        appends: Mutex<Vec<Vec<Bytes>>>,
        fenced_by: Mutex<Option<Epoch>>,
        /// Appends wait until this is notified, so tests control when a write completes.
        gate: Option<tokio::sync::Semaphore>,
    }

    impl DocumentStore for Recording {
        async fn claim(&self, _: &DocumentId, _: Epoch) -> Result<(), StoreError> {
            Ok(())
        }

        async fn append(
            &self,
            _: &DocumentId,
            epoch: Epoch,
            updates: Vec<Bytes>,
        ) -> Result<Seq, StoreError> {
            if let Some(gate) = &self.gate {
                gate.acquire().await.unwrap().forget();
            }
            if let Some(current) = *self.fenced_by.lock().unwrap() {
                return Err(StoreError::Fenced {
                    attempted: epoch,
                    current,
                });
            }
            let mut appends = self.appends.lock().unwrap();
            appends.push(updates);
            Ok(Seq(appends.len() as u64))
        }

        async fn load(&self, _: &DocumentId) -> Result<LoadedDoc, StoreError> {
            Ok(LoadedDoc::default())
        }

        async fn compact(
            &self,
            _: &DocumentId,
            _: Epoch,
            _: Bytes,
            _: Seq,
        ) -> Result<(), StoreError> {
            Ok(())
        }

        async fn put_outputs(
            &self,
            _: &DocumentId,
            _: Epoch,
            _: &CellId,
            _: Bytes,
        ) -> Result<(), StoreError> {
            Ok(())
        }

        async fn outputs(&self, _: &DocumentId) -> Result<BTreeMap<CellId, Bytes>, StoreError> {
            Ok(BTreeMap::new())
        }
    }

    fn doc() -> DocumentId {
        DocumentId::new("doc").unwrap()
    }

    fn update(i: usize) -> Bytes {
        Bytes::from(format!("u{i}"))
    }

    /// A committer at epoch 1 with the default window, on `store`.
    fn committer_on<S: DocumentStore + 'static>(store: &Arc<S>) -> Arc<GroupCommitter> {
        committer_with(store, GroupCommitConfig::default())
    }

    /// A committer at epoch 1 with `config`, on `store`.
    fn committer_with<S: DocumentStore + 'static>(
        store: &Arc<S>,
        config: GroupCommitConfig,
    ) -> Arc<GroupCommitter> {
        Arc::new(GroupCommitter::spawn(
            store.clone(),
            doc(),
            Epoch(1),
            config,
        ))
    }

    /// One task per update `i` of `range`, each committing it.
    fn spawn_commits(
        committer: &Arc<GroupCommitter>,
        range: std::ops::Range<usize>,
    ) -> Vec<tokio::task::JoinHandle<Result<Seq, CommitError>>> {
        range
            .map(|i| {
                let committer = committer.clone();
                tokio::spawn(async move { committer.commit(update(i)).await })
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn updates_within_the_window_share_one_append() {
        let store = Arc::new(Recording::default());
        let committer = committer_on(&store);
        let commits = spawn_commits(&committer, 0..10);
        for commit in commits {
            assert_eq!(commit.await.unwrap().unwrap(), Seq(1));
        }
        let appends = store.appends.lock().unwrap().clone();
        assert_eq!(appends.len(), 1);
        let mut batch = appends[0].clone();
        batch.sort();
        let mut expected: Vec<_> = (0..10).map(update).collect();
        expected.sort();
        assert_eq!(batch, expected);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_closes_before_the_window() {
        let store = Arc::new(Recording::default());
        let config = GroupCommitConfig {
            window: Duration::from_secs(3600),
            max_updates: 3,
            ..GroupCommitConfig::default()
        };
        let committer = committer_with(&store, config);
        let started = Instant::now();
        let commits = spawn_commits(&committer, 0..3);
        for commit in commits {
            commit.await.unwrap().unwrap();
        }
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(store.appends.lock().unwrap().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_commit_returns_only_after_its_append() {
        let store = Arc::new(Recording {
            gate: Some(tokio::sync::Semaphore::new(0)),
            ..Recording::default()
        });
        let committer = committer_on(&store);
        let pending = tokio::spawn({
            let committer = committer.clone();
            async move { committer.commit(update(0)).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            !pending.is_finished(),
            "acknowledged before the write completed"
        );
        if let Some(gate) = &store.gate {
            gate.add_permits(1);
        }
        assert_eq!(pending.await.unwrap().unwrap(), Seq(1));
    }

    #[tokio::test(start_paused = true)]
    async fn fencing_fails_the_whole_batch_and_stops_the_committer() {
        let store = Arc::new(Recording {
            gate: Some(tokio::sync::Semaphore::new(0)),
            ..Recording::default()
        });
        *store.fenced_by.lock().unwrap() = Some(Epoch(2));
        let committer = committer_on(&store);
        let commits = spawn_commits(&committer, 0..5);
        // Let the first batch close, then queue more behind it before the write completes.
        tokio::time::sleep(Duration::from_millis(10)).await;
        let queued: Vec<_> = (5..8)
            .map(|i| {
                let committer = committer.clone();
                tokio::spawn(async move { committer.commit(update(i)).await })
            })
            .collect();
        tokio::task::yield_now().await;
        if let Some(gate) = &store.gate {
            gate.add_permits(100);
        }
        let fenced = CommitError::Fenced {
            attempted: Epoch(1),
            current: Epoch(2),
        };
        for commit in commits.into_iter().chain(queued) {
            let result = commit.await.unwrap();
            assert!(
                matches!(
                    result,
                    Err(CommitError::Fenced {
                        attempted: Epoch(1),
                        current: Epoch(2)
                    })
                ),
                "{result:?}"
            );
        }
        assert_eq!(store.appends.lock().unwrap().len(), 0);
        assert!(matches!(
            committer.stopped(),
            Some(CommitError::Fenced { .. })
        ));
        let later = committer.commit(update(9)).await;
        assert_eq!(later.unwrap_err().to_string(), fenced.to_string());
    }

    #[tokio::test]
    async fn acknowledged_commits_are_loaded_from_a_real_store() {
        let store = Arc::new(ObjectDocumentStore::memory());
        store.claim(&doc(), Epoch(1)).await.unwrap();
        let config = GroupCommitConfig {
            window: Duration::ZERO,
            ..GroupCommitConfig::default()
        };
        let committer = committer_with(&store, config);
        let commits = spawn_commits(&committer, 0..50);
        let mut acked = Vec::new();
        for (i, commit) in commits.into_iter().enumerate() {
            commit.await.unwrap().unwrap();
            acked.push(update(i));
        }
        let mut loaded = store.load(&doc()).await.unwrap().updates;
        loaded.sort();
        acked.sort();
        assert_eq!(loaded, acked);
        let committer = Arc::into_inner(committer).unwrap();
        assert!(committer.shutdown().await.is_none());
    }
}
