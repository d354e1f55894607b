//! Runs the document store conformance suite against every backend the node ships: a local
//! folder (the default; `fsync`ed writes, `flock`ed fence), the same folder opened by URL, and
//! `object_store`'s in-memory store (conditional puts, as S3 does them).

use std::sync::Arc;

use airlock_node::store::conformance::{StoreFactory, Suite};
use airlock_node::store::{ObjectDocumentStore, StoreError};
use object_store::ObjectStore;
use object_store::memory::InMemory;
use object_store::path::Path;
use tempfile::TempDir;

/// Every instance opens the same folder, as a restarted process would.
struct LocalFolder {
    dir: TempDir,
    by_url: bool,
}

impl StoreFactory for LocalFolder {
    type Store = ObjectDocumentStore;

    async fn open(&self) -> Result<ObjectDocumentStore, StoreError> {
        if self.by_url {
            let url = format!("file://{}/store", self.dir.path().display());
            ObjectDocumentStore::open(&url, [])
        } else {
            ObjectDocumentStore::local(self.dir.path().join("store"))
        }
    }
}

/// Every instance shares one in-memory backend.
struct Memory {
    objects: Arc<dyn ObjectStore>,
}

impl StoreFactory for Memory {
    type Store = ObjectDocumentStore;

    async fn open(&self) -> Result<ObjectDocumentStore, StoreError> {
        Ok(ObjectDocumentStore::new(
            Arc::clone(&self.objects),
            Path::from("tenant/prefix"),
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_folder_conforms() -> anyhow::Result<()> {
    let factory = LocalFolder {
        dir: tempfile::tempdir()?,
        by_url: false,
    };
    Suite::test_all(&factory).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_folder_by_url_conforms() -> anyhow::Result<()> {
    let factory = LocalFolder {
        dir: tempfile::tempdir()?,
        by_url: true,
    };
    Suite::test_all(&factory).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_conforms() -> anyhow::Result<()> {
    let factory = Memory {
        objects: Arc::new(InMemory::new()),
    };
    Suite::test_all(&factory).await?;
    Ok(())
}
