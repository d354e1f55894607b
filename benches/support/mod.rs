//! What the benchmarks share: running the Jupyter peers of `shared/peers` in the same run.
#![allow(dead_code)]

pub mod peer {
    //! The peer script (`shared/peers/jupyter_peer_bench.py`), run in its own virtualenv.

    use std::path::{Path, PathBuf};
    use std::process::Stdio;
    use std::time::Duration;

    use serde_json::Value;
    use tokio::process::Command;

    /// Longest wait for the peer script (it starts five kernels and a Kernel Gateway).
    const PEER_TIMEOUT: Duration = Duration::from_secs(600);

    /// The peer script's figures, or why there are none.
    pub type PeerFigures = Result<Value, String>;

    pub async fn run(progress: fn(&str)) -> PeerFigures {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let script = manifest.join("../shared/peers/jupyter_peer_bench.py");
        if !script.is_file() {
            return Err(format!("{} is missing", script.display()));
        }
        progress("peer: preparing its Python environment (scripts/peer-venv.sh)");
        let venv = manifest.join("target").join("peer-venv");
        let made = Command::new("bash")
            .arg(manifest.join("scripts").join("peer-venv.sh"))
            .arg(&venv)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .await
            .map_err(|err| format!("could not run scripts/peer-venv.sh: {err}"))?;
        if !made.status.success() {
            return Err(format!(
                "scripts/peer-venv.sh failed ({}); see its output above",
                made.status
            ));
        }
        let interpreter = String::from_utf8_lossy(&made.stdout)
            .lines()
            .last()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .map(PathBuf::from)
            .ok_or("scripts/peer-venv.sh printed no interpreter")?;
        // The script answers relative to the repository root.
        let interpreter = manifest.join(interpreter);

        progress("peer: running shared/peers/jupyter_peer_bench.py (a minute or so)");
        let run = Command::new(&interpreter)
            .arg(&script)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .output();
        let output = match tokio::time::timeout(PEER_TIMEOUT, run).await {
            Ok(Ok(output)) => output,
            Ok(Err(err)) => return Err(format!("could not run {}: {err}", interpreter.display())),
            Err(_) => return Err(format!("the peer script took longer than {PEER_TIMEOUT:?}")),
        };
        if !output.status.success() {
            return Err(format!(
                "the peer script failed ({}); see its output above",
                output.status
            ));
        }
        serde_json::from_slice(&output.stdout).map_err(|err| {
            format!(
                "the peer script's output is not JSON ({err}): {}",
                String::from_utf8_lossy(&output.stdout)
            )
        })
    }

    /// `peer[a][b]` as a number.
    pub fn peer_number(peer: &Value, path: &[&str]) -> Option<f64> {
        path.iter()
            .try_fold(peer, |value, key| value.get(key))
            .and_then(Value::as_f64)
    }
}
