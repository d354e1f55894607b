//! What the node's integration tests share: the Python their kernels run on.
#![allow(clippy::expect_used, dead_code)] // a failed expectation is a failed test

use std::path::PathBuf;

use airlock_node::kernel::python_env::{Progress, PythonSource, ensure_python};
use tokio::sync::OnceCell;

/// The first use may build the managed environment; every test in the binary shares that build.
static PYTHON: OnceCell<PathBuf> = OnceCell::const_new();

/// `AIRLOCK_PYTHON` if set, else Airlock's managed environment.
pub async fn python() -> PathBuf {
    PYTHON
        .get_or_init(|| async {
            if let Some(python) = std::env::var_os("AIRLOCK_PYTHON") {
                return PathBuf::from(python);
            }
            let source = PythonSource::default_managed().expect("HOME or XDG_DATA_HOME is set");
            ensure_python(&source, Progress::Auto)
                .await
                .expect("the managed Python environment")
        })
        .await
        .clone()
}
