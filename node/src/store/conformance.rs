//! The conformance suite every [`DocumentStore`] runs: one case per guarantee in the trait's
//! docs, driven through a [`StoreFactory`] that can open several instances over the same
//! storage (several owners, or a process restart).
//!
//! ```ignore
//! Suite::test_all(&MyFactory::new()).await?;
//! ```
//! Each case uses its own document ids, so the whole suite runs against one fresh storage. Cases
//! return store errors they did not expect as `Err` and fail assertions by panicking, with the
//! case's name in the message. Concurrent cases spawn tasks: run them on a multi-thread runtime.
//!
//! It does not model crashes between two store calls (a killed process mid-write); that is the
//! chaos harness's job. It checks what a reopened instance sees after a clean stop.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{Barrier, Notify};

use super::{CellId, DocumentId, DocumentStore, Epoch, LoadedDoc, Seq, StoreError};

/// Opens store instances over one storage.
pub trait StoreFactory: Send + Sync {
    type Store: DocumentStore + 'static;

    /// A new instance over the same storage as every other instance this factory opened, as a
    /// process started after the previous one stopped would open it.
    fn open(&self) -> impl Future<Output = Result<Self::Store, StoreError>> + Send;
}

/// A conformance case that hit a store error it did not expect.
#[derive(Debug, thiserror::Error)]
#[error("conformance case {case} failed")]
pub struct CaseFailed {
    pub case: &'static str,
    #[source]
    pub source: StoreError,
}

/// The suite (see the module docs).
#[derive(Debug)]
pub struct Suite;

impl Suite {
    /// Runs every case against storage that no case has used yet.
    pub async fn test_all<F: StoreFactory>(factory: &F) -> Result<(), CaseFailed> {
        let case = |case: &'static str| move |source: StoreError| CaseFailed { case, source };
        ids_are_validated().map_err(case("ids_are_validated"))?;
        unknown_documents_load_empty(factory)
            .await
            .map_err(case("unknown_documents_load_empty"))?;
        appends_load_in_order(factory)
            .await
            .map_err(case("appends_load_in_order"))?;
        writes_need_a_claim(factory)
            .await
            .map_err(case("writes_need_a_claim"))?;
        everything_survives_a_reopen(factory)
            .await
            .map_err(case("everything_survives_a_reopen"))?;
        lower_epochs_are_fenced(factory)
            .await
            .map_err(case("lower_epochs_are_fenced"))?;
        a_reclaim_of_the_same_epoch_fences_the_earlier_claim(factory)
            .await
            .map_err(case("a_reclaim_of_the_same_epoch_fences_the_earlier_claim"))?;
        racing_claimers_leave_only_the_highest_epoch_writing(factory)
            .await
            .map_err(case("racing_claimers_leave_only_the_highest_epoch_writing"))?;
        a_new_owner_fences_an_old_one_still_writing(factory)
            .await
            .map_err(case("a_new_owner_fences_an_old_one_still_writing"))?;
        concurrent_appends_are_all_kept_in_order(factory)
            .await
            .map_err(case("concurrent_appends_are_all_kept_in_order"))?;
        compaction_keeps_every_acknowledged_update(factory)
            .await
            .map_err(case("compaction_keeps_every_acknowledged_update"))?;
        compaction_racing_appends_loses_nothing(factory)
            .await
            .map_err(case("compaction_racing_appends_loses_nothing"))?;
        outputs_are_last_write_wins_apart_and_fenced(factory)
            .await
            .map_err(case("outputs_are_last_write_wins_apart_and_fenced"))?;
        Ok(())
    }
}

fn doc(id: &str) -> DocumentId {
    match DocumentId::new(id) {
        Ok(doc) => doc,
        Err(e) => panic!("the suite's own document id {id:?} was refused: {e}"),
    }
}

fn cell(id: &str) -> CellId {
    match CellId::new(id) {
        Ok(cell) => cell,
        Err(e) => panic!("the suite's own cell id {id:?} was refused: {e}"),
    }
}

fn b(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

fn is_fenced(
    result: &Result<impl std::fmt::Debug, StoreError>,
    attempted: u64,
    current: u64,
) -> bool {
    matches!(result, Err(StoreError::Fenced { attempted: a, current: c })
        if *a == Epoch(attempted) && *c == Epoch(current))
}

/// Ids become path segments: anything that could escape or alias one is refused, in both types.
pub fn ids_are_validated() -> Result<(), StoreError> {
    let long = "a".repeat(129);
    let refused = [
        "", ".", "..", "../x", "a/b", "a\\b", "/abs", "a b", "é", "x\0", "a?b", "%2e%2e", &long,
    ];
    for id in refused {
        assert!(
            matches!(DocumentId::new(id), Err(StoreError::BadDocumentId(_))),
            "ids_are_validated: document id {id:?} was accepted"
        );
        assert!(
            matches!(CellId::new(id), Err(StoreError::BadCellId(_))),
            "ids_are_validated: cell id {id:?} was accepted"
        );
    }
    let longest = "a".repeat(128);
    for id in ["a", "A-z_0.9", "...", ".hidden", "3f2a-77", &longest] {
        DocumentId::new(id)?;
        CellId::new(id)?;
    }
    Ok(())
}

/// A document nobody wrote loads empty, with no epoch and no outputs.
pub async fn unknown_documents_load_empty<F: StoreFactory>(factory: &F) -> Result<(), StoreError> {
    let store = factory.open().await?;
    let d = doc("conformance-empty");
    assert_eq!(
        store.load(&d).await?,
        LoadedDoc::default(),
        "unknown_documents_load_empty"
    );
    assert!(
        store.outputs(&d).await?.is_empty(),
        "unknown_documents_load_empty"
    );
    Ok(())
}

/// Guarantee 3: updates load in append order, batches whole, positions strictly increasing.
/// An empty batch is a fenced no-op that still takes a position.
pub async fn appends_load_in_order<F: StoreFactory>(factory: &F) -> Result<(), StoreError> {
    let store = factory.open().await?;
    let d = doc("conformance-order");
    store.claim(&d, Epoch(1)).await?;
    store.load(&d).await?;
    let batches = [vec!["a", "b"], vec!["c"], vec![], vec!["d", "e", "f"]];
    let mut last = Seq(0);
    for batch in batches {
        let seq = store
            .append(&d, Epoch(1), batch.iter().map(|u| b(u)).collect())
            .await?;
        assert!(seq > last, "appends_load_in_order: {seq} after {last}");
        last = seq;
    }
    let loaded = store.load(&d).await?;
    let expected: Vec<Bytes> = ["a", "b", "c", "d", "e", "f"]
        .iter()
        .map(|u| b(u))
        .collect();
    assert_eq!(loaded.updates, expected, "appends_load_in_order");
    assert_eq!(
        loaded.seq, last,
        "appends_load_in_order: loaded up to the last append"
    );
    assert_eq!(loaded.epoch, Some(Epoch(1)), "appends_load_in_order");
    assert_eq!(loaded.snapshot, None, "appends_load_in_order");
    Ok(())
}

/// Guarantee 2: writing takes a claim; one not held here is refused, as `Fenced` when a higher
/// epoch holds the document.
pub async fn writes_need_a_claim<F: StoreFactory>(factory: &F) -> Result<(), StoreError> {
    let store = factory.open().await?;
    let d = doc("conformance-unclaimed");
    let c = cell("c");
    let refused = store.append(&d, Epoch(1), vec![b("u")]).await;
    assert!(
        matches!(refused, Err(StoreError::NotClaimed { .. })),
        "writes_need_a_claim: append without a claim gave {refused:?}"
    );
    let refused = store.put_outputs(&d, Epoch(1), &c, b("o")).await;
    assert!(
        matches!(refused, Err(StoreError::NotClaimed { .. })),
        "writes_need_a_claim: put_outputs without a claim gave {refused:?}"
    );
    let refused = store.compact(&d, Epoch(1), b("s"), Seq(0)).await;
    assert!(
        matches!(refused, Err(StoreError::NotClaimed { .. })),
        "writes_need_a_claim: compact without a claim gave {refused:?}"
    );
    let owner = factory.open().await?;
    owner.claim(&d, Epoch(3)).await?;
    let refused = store.append(&d, Epoch(2), vec![b("u")]).await;
    assert!(
        is_fenced(&refused, 2, 3),
        "writes_need_a_claim: append below the holder gave {refused:?}"
    );
    Ok(())
}

/// Guarantee 1: what one instance acknowledged, a new instance over the same storage loads.
pub async fn everything_survives_a_reopen<F: StoreFactory>(factory: &F) -> Result<(), StoreError> {
    let d = doc("conformance-reopen");
    let c = cell("c");
    {
        let first = factory.open().await?;
        first.claim(&d, Epoch(1)).await?;
        first.load(&d).await?;
        first.append(&d, Epoch(1), vec![b("one"), b("two")]).await?;
        first.append(&d, Epoch(1), vec![b("three")]).await?;
        first.put_outputs(&d, Epoch(1), &c, b("out-1")).await?;
    }
    let expected: Vec<Bytes> = ["one", "two", "three"].iter().map(|u| b(u)).collect();
    {
        let second = factory.open().await?;
        let loaded = second.load(&d).await?;
        assert_eq!(loaded.updates, expected, "everything_survives_a_reopen");
        assert_eq!(loaded.epoch, Some(Epoch(1)), "everything_survives_a_reopen");
        let outputs = second.outputs(&d).await?;
        assert_eq!(
            outputs.get(&c),
            Some(&b("out-1")),
            "everything_survives_a_reopen"
        );
        second.claim(&d, Epoch(2)).await?;
        second.append(&d, Epoch(2), vec![b("four")]).await?;
    }
    let third = factory.open().await?;
    let loaded = third.load(&d).await?;
    let mut expected = expected;
    expected.push(b("four"));
    assert_eq!(loaded.updates, expected, "everything_survives_a_reopen");
    assert_eq!(loaded.epoch, Some(Epoch(2)), "everything_survives_a_reopen");
    Ok(())
}

/// Guarantee 2: after a claim with epoch 2, every write with epoch 1 is refused — from the old
/// owner (which still believes it holds the document) and from the new one alike — and only
/// the writes acknowledged before the claim remain.
pub async fn lower_epochs_are_fenced<F: StoreFactory>(factory: &F) -> Result<(), StoreError> {
    let d = doc("conformance-fenced");
    let c = cell("c");
    let old = factory.open().await?;
    let new = factory.open().await?;
    old.claim(&d, Epoch(1)).await?;
    old.load(&d).await?;
    old.append(&d, Epoch(1), vec![b("before")]).await?;
    new.claim(&d, Epoch(2)).await?;
    let append = old.append(&d, Epoch(1), vec![b("stale")]).await;
    assert!(
        is_fenced(&append, 1, 2),
        "lower_epochs_are_fenced: append gave {append:?}"
    );
    let outputs = old.put_outputs(&d, Epoch(1), &c, b("stale")).await;
    assert!(
        is_fenced(&outputs, 1, 2),
        "lower_epochs_are_fenced: put_outputs gave {outputs:?}"
    );
    let compact = old.compact(&d, Epoch(1), b("stale"), Seq(1)).await;
    assert!(
        is_fenced(&compact, 1, 2),
        "lower_epochs_are_fenced: compact gave {compact:?}"
    );
    let claim = old.claim(&d, Epoch(1)).await;
    assert!(
        is_fenced(&claim, 1, 2),
        "lower_epochs_are_fenced: claim gave {claim:?}"
    );
    let loaded = new.load(&d).await?;
    assert_eq!(loaded.updates, vec![b("before")], "lower_epochs_are_fenced");
    new.append(&d, Epoch(2), vec![b("after")]).await?;
    // The new owner's own store refuses the old epoch too.
    let own = new.append(&d, Epoch(1), vec![b("stale")]).await;
    assert!(
        is_fenced(&own, 1, 2),
        "lower_epochs_are_fenced: same instance gave {own:?}"
    );
    let loaded = factory.open().await?.load(&d).await?;
    assert_eq!(
        loaded.updates,
        vec![b("before"), b("after")],
        "lower_epochs_are_fenced"
    );
    assert!(
        new.outputs(&d).await?.is_empty(),
        "lower_epochs_are_fenced: a fenced output write is visible"
    );
    Ok(())
}

/// Guarantee 2: a second claim with the same epoch (an owner restarted) fences the first; a
/// lower epoch cannot claim at all.
pub async fn a_reclaim_of_the_same_epoch_fences_the_earlier_claim<F: StoreFactory>(
    factory: &F,
) -> Result<(), StoreError> {
    let d = doc("conformance-reclaim");
    let before = factory.open().await?;
    let after = factory.open().await?;
    before.claim(&d, Epoch(3)).await?;
    after.claim(&d, Epoch(3)).await?;
    let append = before.append(&d, Epoch(3), vec![b("stale")]).await;
    assert!(
        is_fenced(&append, 3, 3),
        "a_reclaim_of_the_same_epoch_fences_the_earlier_claim: gave {append:?}"
    );
    after.append(&d, Epoch(3), vec![b("kept")]).await?;
    let lower = factory.open().await?.claim(&d, Epoch(2)).await;
    assert!(
        is_fenced(&lower, 2, 3),
        "a_reclaim_of_the_same_epoch_fences_the_earlier_claim: lower claim gave {lower:?}"
    );
    assert_eq!(
        after.load(&d).await?.updates,
        vec![b("kept")],
        "a_reclaim_of_the_same_epoch_fences_the_earlier_claim"
    );
    Ok(())
}

/// What one owner of a race did: its epoch, its store, the updates it got acknowledged.
type Owner<S> = (u64, Arc<S>, Vec<String>);

/// Claims `epoch` through `store` (a refused claim ends the owner) and appends `epoch-i` until
/// fenced or `appends` are done, signalling `first_ack` after the first acknowledged append.
async fn own<S: DocumentStore>(
    store: Arc<S>,
    d: DocumentId,
    epoch: u64,
    appends: usize,
    first_ack: Arc<Notify>,
) -> Result<Owner<S>, StoreError> {
    let mut acked = Vec::new();
    match store.claim(&d, Epoch(epoch)).await {
        Ok(()) => {}
        Err(StoreError::Fenced { .. }) => {
            first_ack.notify_one();
            return Ok((epoch, store, acked));
        }
        Err(e) => return Err(e),
    }
    store.load(&d).await?;
    for i in 0..appends {
        let update = format!("{epoch}-{i}");
        match store.append(&d, Epoch(epoch), vec![b(&update)]).await {
            Ok(_) => acked.push(update),
            Err(StoreError::Fenced { .. }) => break,
            Err(e) => return Err(e),
        }
        if i == 0 {
            first_ack.notify_one();
        }
        tokio::task::yield_now().await;
    }
    first_ack.notify_one();
    Ok((epoch, store, acked))
}

/// Checks the outcome of a race of owners with epochs `1..=highest`: the highest got all of its
/// appends acknowledged; every acknowledged update loads; no lower epoch's update follows a
/// higher one's (no owner wrote after being superseded); nothing loads that was not attempted;
/// every superseded owner is now fenced.
async fn check_race<F: StoreFactory>(
    case: &str,
    factory: &F,
    d: &DocumentId,
    owners: Vec<tokio::task::JoinHandle<Result<Owner<F::Store>, StoreError>>>,
    highest: u64,
    appends: usize,
) -> Result<(), StoreError> {
    let mut acked = BTreeSet::new();
    let mut stores = Vec::new();
    for owner in owners {
        let (epoch, store, owner_acked) = match owner.await {
            Ok(result) => result?,
            Err(e) => panic!("{case}: {e}"),
        };
        if epoch == highest {
            assert_eq!(
                owner_acked.len(),
                appends,
                "{case}: the highest epoch was refused"
            );
        }
        acked.extend(owner_acked);
        stores.push((epoch, store));
    }
    let loaded = factory.open().await?.load(d).await?;
    assert_eq!(loaded.epoch, Some(Epoch(highest)), "{case}");
    let loaded: Vec<String> = loaded
        .updates
        .iter()
        .map(|u| String::from_utf8_lossy(u).into_owned())
        .collect();
    for update in &acked {
        assert!(
            loaded.contains(update),
            "{case}: acknowledged {update} is lost"
        );
    }
    let epochs: Vec<u64> = loaded
        .iter()
        .map(|u| {
            let epoch = u.split('-').next().and_then(|e| e.parse().ok());
            epoch.unwrap_or_else(|| panic!("{case}: {u} was never written"))
        })
        .collect();
    assert!(
        epochs.windows(2).all(|pair| pair[0] <= pair[1]),
        "{case}: epochs out of order: {loaded:?}"
    );
    for (epoch, store) in stores.iter().filter(|(epoch, _)| *epoch < highest) {
        let late = store.append(d, Epoch(*epoch), vec![b("late")]).await;
        assert!(
            is_fenced(&late, *epoch, highest),
            "{case}: superseded epoch {epoch} gave {late:?}"
        );
    }
    Ok(())
}

/// Guarantees 1–3 under a race of claims: owners with epochs 1..=5 claim at the same moment and
/// append until fenced; see `check_race` for what must hold.
pub async fn racing_claimers_leave_only_the_highest_epoch_writing<F: StoreFactory>(
    factory: &F,
) -> Result<(), StoreError> {
    const OWNERS: u64 = 5;
    const APPENDS: usize = 5;
    let d = doc("conformance-race");
    let start = Arc::new(Barrier::new(OWNERS as usize));
    let mut owners = Vec::new();
    for epoch in 1..=OWNERS {
        let store = Arc::new(factory.open().await?);
        let start = Arc::clone(&start);
        let d = d.clone();
        owners.push(tokio::spawn(async move {
            start.wait().await;
            own(store, d, epoch, APPENDS, Arc::new(Notify::new())).await
        }));
    }
    check_race(
        "racing_claimers_leave_only_the_highest_epoch_writing",
        factory,
        &d,
        owners,
        OWNERS,
        APPENDS,
    )
    .await
}

/// Guarantees 1–3 under a hand-over: each owner claims as soon as the previous one has one
/// append acknowledged, while the previous one keeps appending — so claims land between an old
/// owner's appends; see `check_race` for what must hold.
pub async fn a_new_owner_fences_an_old_one_still_writing<F: StoreFactory>(
    factory: &F,
) -> Result<(), StoreError> {
    const OWNERS: u64 = 4;
    const APPENDS: usize = 20;
    let d = doc("conformance-handover");
    let mut owners = Vec::new();
    let mut previous_acked: Option<Arc<Notify>> = None;
    for epoch in 1..=OWNERS {
        let store = Arc::new(factory.open().await?);
        let d = d.clone();
        let first_ack = Arc::new(Notify::new());
        let wait_for = previous_acked.replace(Arc::clone(&first_ack));
        owners.push(tokio::spawn(async move {
            if let Some(previous) = wait_for {
                previous.notified().await;
            }
            own(store, d, epoch, APPENDS, first_ack).await
        }));
    }
    check_race(
        "a_new_owner_fences_an_old_one_still_writing",
        factory,
        &d,
        owners,
        OWNERS,
        APPENDS,
    )
    .await
}

/// Guarantees 1 and 3 under concurrency: many tasks appending through one instance all get
/// distinct positions, and each task's updates load in the order it appended them.
pub async fn concurrent_appends_are_all_kept_in_order<F: StoreFactory>(
    factory: &F,
) -> Result<(), StoreError> {
    const TASKS: usize = 8;
    const APPENDS: usize = 12;
    let d = doc("conformance-concurrent");
    let store = Arc::new(factory.open().await?);
    store.claim(&d, Epoch(1)).await?;
    store.load(&d).await?;
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let store = Arc::clone(&store);
            let d = d.clone();
            tokio::spawn(async move {
                let mut seqs = Vec::new();
                for i in 0..APPENDS {
                    seqs.push(
                        store
                            .append(&d, Epoch(1), vec![b(&format!("{task}-{i}"))])
                            .await?,
                    );
                }
                Ok::<_, StoreError>(seqs)
            })
        })
        .collect();
    let mut all = BTreeSet::new();
    for task in tasks {
        let seqs = match task.await {
            Ok(seqs) => seqs?,
            Err(e) => panic!("concurrent_appends_are_all_kept_in_order: {e}"),
        };
        assert!(
            seqs.windows(2).all(|pair| pair[0] < pair[1]),
            "concurrent_appends_are_all_kept_in_order: a task's positions went backwards"
        );
        all.extend(seqs);
    }
    assert_eq!(
        all.len(),
        TASKS * APPENDS,
        "concurrent_appends_are_all_kept_in_order: positions reused"
    );
    let loaded = factory.open().await?.load(&d).await?;
    assert_eq!(
        loaded.updates.len(),
        TASKS * APPENDS,
        "concurrent_appends_are_all_kept_in_order"
    );
    for task in 0..TASKS {
        let prefix = format!("{task}-");
        let mine: Vec<String> = loaded
            .updates
            .iter()
            .map(|u| String::from_utf8_lossy(u).into_owned())
            .filter(|u| u.starts_with(&prefix))
            .collect();
        let expected: Vec<String> = (0..APPENDS).map(|i| format!("{task}-{i}")).collect();
        assert_eq!(
            mine, expected,
            "concurrent_appends_are_all_kept_in_order: task {task}"
        );
    }
    Ok(())
}

/// A snapshot as the suite builds them: the updates it covers, one per line.
fn snapshot_of(loaded: &LoadedDoc) -> Bytes {
    let mut covered: Vec<String> = loaded
        .snapshot
        .iter()
        .flat_map(|s| {
            String::from_utf8_lossy(s)
                .lines()
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .collect();
    covered.extend(
        loaded
            .updates
            .iter()
            .map(|u| String::from_utf8_lossy(u).into_owned()),
    );
    Bytes::from(covered.join("\n"))
}

/// Every update a load yields: the snapshot's (as [`snapshot_of`] wrote them) and the log's.
fn everything_in(loaded: &LoadedDoc) -> Vec<String> {
    let mut all: Vec<String> = Vec::new();
    if let Some(snapshot) = &loaded.snapshot {
        all.extend(String::from_utf8_lossy(snapshot).lines().map(String::from));
    }
    all.extend(
        loaded
            .updates
            .iter()
            .map(|u| String::from_utf8_lossy(u).into_owned()),
    );
    all
}

/// Guarantee 4: after compaction a load gives the snapshot and exactly the updates after it,
/// here and after a reopen; compaction at or below the snapshot does nothing, beyond the last
/// append is refused, and a superseded owner cannot compact.
pub async fn compaction_keeps_every_acknowledged_update<F: StoreFactory>(
    factory: &F,
) -> Result<(), StoreError> {
    let d = doc("conformance-compact");
    let store = factory.open().await?;
    store.claim(&d, Epoch(1)).await?;
    store.load(&d).await?;
    let mut seqs = Vec::new();
    for i in 0..10 {
        seqs.push(
            store
                .append(&d, Epoch(1), vec![b(&format!("u{i}"))])
                .await?,
        );
    }
    let loaded = store.load(&d).await?;
    let head = LoadedDoc {
        updates: loaded.updates[..6].to_vec(),
        ..loaded.clone()
    };
    store
        .compact(&d, Epoch(1), snapshot_of(&head), seqs[5])
        .await?;
    let expected_tail: Vec<Bytes> = (6..10).map(|i| b(&format!("u{i}"))).collect();
    for (when, loaded) in [
        ("after compaction", store.load(&d).await?),
        ("after a reopen", factory.open().await?.load(&d).await?),
    ] {
        assert_eq!(
            loaded.snapshot,
            Some(snapshot_of(&head)),
            "compaction_keeps_every_acknowledged_update: {when}"
        );
        assert_eq!(
            loaded.snapshot_seq, seqs[5],
            "compaction_keeps_every_acknowledged_update: {when}"
        );
        assert_eq!(
            loaded.updates, expected_tail,
            "compaction_keeps_every_acknowledged_update: {when}"
        );
        assert_eq!(
            loaded.seq, seqs[9],
            "compaction_keeps_every_acknowledged_update: {when}"
        );
    }
    // At or below the snapshot: nothing happens.
    store.compact(&d, Epoch(1), b("ignored"), seqs[5]).await?;
    store.compact(&d, Epoch(1), b("ignored"), seqs[2]).await?;
    assert_eq!(
        store.load(&d).await?.snapshot,
        Some(snapshot_of(&head)),
        "compaction_keeps_every_acknowledged_update: a no-op compaction replaced the snapshot"
    );
    let beyond = store
        .compact(&d, Epoch(1), b("x"), Seq(seqs[9].0 + 1))
        .await;
    assert!(
        matches!(beyond, Err(StoreError::CompactBeyondEnd { .. })),
        "compaction_keeps_every_acknowledged_update: beyond the end gave {beyond:?}"
    );
    // Everything covered, then more appended, then the next owner compacts again.
    let loaded = store.load(&d).await?;
    store
        .compact(&d, Epoch(1), snapshot_of(&loaded), loaded.seq)
        .await?;
    store.append(&d, Epoch(1), vec![b("u10")]).await?;
    let next = factory.open().await?;
    next.claim(&d, Epoch(2)).await?;
    let stale = store.compact(&d, Epoch(1), b("stale"), seqs[9]).await;
    assert!(
        is_fenced(&stale, 1, 2),
        "compaction_keeps_every_acknowledged_update: stale compaction gave {stale:?}"
    );
    let loaded = next.load(&d).await?;
    next.append(&d, Epoch(2), vec![b("u11")]).await?;
    let loaded_after = next.load(&d).await?;
    next.compact(&d, Epoch(2), snapshot_of(&loaded_after), loaded_after.seq)
        .await?;
    let expected: Vec<String> = (0..12).map(|i| format!("u{i}")).collect();
    assert_eq!(
        everything_in(&loaded).len(),
        11,
        "compaction_keeps_every_acknowledged_update"
    );
    let last = factory.open().await?.load(&d).await?;
    assert_eq!(
        everything_in(&last),
        expected,
        "compaction_keeps_every_acknowledged_update"
    );
    assert!(
        last.updates.is_empty(),
        "compaction_keeps_every_acknowledged_update"
    );
    Ok(())
}

/// Guarantee 4 under a race: one task appends while another repeatedly loads and compacts
/// through the same owner; every acknowledged update is in the final snapshot or log.
pub async fn compaction_racing_appends_loses_nothing<F: StoreFactory>(
    factory: &F,
) -> Result<(), StoreError> {
    const APPENDS: usize = 40;
    let d = doc("conformance-compact-race");
    let store = Arc::new(factory.open().await?);
    store.claim(&d, Epoch(1)).await?;
    store.load(&d).await?;
    let appender = {
        let store = Arc::clone(&store);
        let d = d.clone();
        tokio::spawn(async move {
            for i in 0..APPENDS {
                store
                    .append(&d, Epoch(1), vec![b(&format!("w{i}"))])
                    .await?;
            }
            Ok::<_, StoreError>(())
        })
    };
    let mut compactions = 0;
    while !appender.is_finished() || compactions == 0 {
        let loaded = store.load(&d).await?;
        store
            .compact(&d, Epoch(1), snapshot_of(&loaded), loaded.seq)
            .await?;
        compactions += 1;
        tokio::task::yield_now().await;
    }
    match appender.await {
        Ok(result) => result?,
        Err(e) => panic!("compaction_racing_appends_loses_nothing: {e}"),
    }
    let expected: Vec<String> = (0..APPENDS).map(|i| format!("w{i}")).collect();
    for loaded in [store.load(&d).await?, factory.open().await?.load(&d).await?] {
        assert_eq!(
            everything_in(&loaded),
            expected,
            "compaction_racing_appends_loses_nothing"
        );
    }
    Ok(())
}

/// Guarantee 5: outputs are last write wins per cell, never part of the edit history, kept
/// through compaction and reopening, and fenced like appends — including a cell the new owner
/// never wrote.
pub async fn outputs_are_last_write_wins_apart_and_fenced<F: StoreFactory>(
    factory: &F,
) -> Result<(), StoreError> {
    let d = doc("conformance-outputs");
    let (c1, c2, c3) = (cell("c1"), cell("c2"), cell("c3"));
    let old = factory.open().await?;
    old.claim(&d, Epoch(1)).await?;
    old.load(&d).await?;
    old.put_outputs(&d, Epoch(1), &c1, b("a")).await?;
    old.put_outputs(&d, Epoch(1), &c1, b("b")).await?;
    old.put_outputs(&d, Epoch(1), &c2, b("x")).await?;
    let expected = BTreeMap::from([(c1.clone(), b("b")), (c2.clone(), b("x"))]);
    assert_eq!(
        old.outputs(&d).await?,
        expected,
        "outputs_are_last_write_wins_apart_and_fenced"
    );
    assert!(
        old.load(&d).await?.updates.is_empty(),
        "outputs_are_last_write_wins_apart_and_fenced: outputs leaked into the edit history"
    );
    let new = factory.open().await?;
    new.claim(&d, Epoch(2)).await?;
    for target in [&c1, &c3] {
        let stale = old.put_outputs(&d, Epoch(1), target, b("stale")).await;
        assert!(
            is_fenced(&stale, 1, 2),
            "outputs_are_last_write_wins_apart_and_fenced: stale write to {target} gave {stale:?}"
        );
    }
    new.load(&d).await?;
    new.put_outputs(&d, Epoch(2), &c1, b("c")).await?;
    let seq = new.append(&d, Epoch(2), vec![b("edit")]).await?;
    new.load(&d).await?;
    new.compact(&d, Epoch(2), b("snapshot"), seq).await?;
    let expected = BTreeMap::from([(c1, b("c")), (c2, b("x"))]);
    assert_eq!(
        new.outputs(&d).await?,
        expected,
        "outputs_are_last_write_wins_apart_and_fenced"
    );
    assert_eq!(
        factory.open().await?.outputs(&d).await?,
        expected,
        "outputs_are_last_write_wins_apart_and_fenced: after a reopen"
    );
    Ok(())
}
