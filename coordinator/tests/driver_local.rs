//! The local driver against real processes: the driver conformance suite with `/bin/sh` standing
//! in for `airlock node` (the root crate's binary is out of reach from this crate's tests), and
//! the exact node command line, environment and folders seen from inside a started task.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use airlock_coordinator::driver::conformance::{Behaviour, DriverFactory, Suite};
use airlock_coordinator::driver::local::{LocalDriver, LocalDriverConfig, NodeCommand};
use airlock_coordinator::driver::{
    Driver, DriverError, ExitStatus, Remedy, StartedTask, TaskSecret, TaskSpec,
};
use airlock_coordinator::model::{Region, RuntimeVersion, TaskId, Tier};

/// The stand-in task. `run`: a shell and two children in the group until stopped; `stubborn`:
/// the same, ignoring SIGTERM (the children inherit the ignored signal); `false`: exec `false`;
/// `exit N`: exit with N, leaving a child behind in the group for the driver to clear.
const STAND_IN: &str = r#"case "$1" in
  run) sleep 1000 & sleep 1000 & wait ;;
  stubborn) trap '' TERM; sleep 1000 & sleep 1000 & wait ;;
  false) exec false ;;
  exit) sleep 1000 & exit "$2" ;;
  *) echo "unknown behaviour $1" >&2; exit 64 ;;
esac"#;

struct LocalFactory {
    dir: tempfile::TempDir,
}

impl LocalFactory {
    fn new() -> Self {
        LocalFactory {
            dir: tempfile::Builder::new().prefix("drv").tempdir().unwrap(),
        }
    }

    fn config(&self, command: NodeCommand) -> LocalDriverConfig {
        let mut config = LocalDriverConfig::new(
            command,
            self.dir.path().join("run"),
            self.dir.path().join("logs"),
        );
        config.insecure_no_jail = true;
        config.stop_grace = Duration::from_millis(300);
        config
    }

    fn stand_in(&self) -> LocalDriverConfig {
        self.config(NodeCommand::Custom {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), STAND_IN.into(), "conformance-task".into()],
        })
    }
}

impl DriverFactory for LocalFactory {
    type Driver = LocalDriver;

    fn driver(&self) -> LocalDriver {
        LocalDriver::new(self.stand_in())
    }

    fn broken_driver(&self) -> LocalDriver {
        LocalDriver::new(self.config(NodeCommand::Custom {
            program: self.dir.path().join("no-such-program"),
            args: vec![],
        }))
    }

    fn spec(&self, id: TaskId, behaviour: Behaviour) -> TaskSpec {
        let extra_args = match behaviour {
            Behaviour::RunsUntilStopped => vec!["run".into()],
            Behaviour::IgnoresStop => vec!["stubborn".into()],
            Behaviour::Exits { code: 1 } => vec!["false".into()],
            Behaviour::Exits { code } => vec!["exit".into(), code.to_string()],
        };
        spec(id, extra_args)
    }

    fn leftovers(&self, task: &StartedTask) -> Vec<String> {
        self.stand_in().leftovers(&task.handle)
    }

    fn drop_ends_tasks(&self) -> bool {
        true
    }
}

fn spec(id: TaskId, extra_args: Vec<String>) -> TaskSpec {
    TaskSpec {
        id,
        region: Region("local".into()),
        tier: Tier("small".into()),
        version: RuntimeVersion("0.1.0".into()),
        coordinator_url: "http://127.0.0.1:7700".into(),
        secret: TaskSecret::new("the-task-secret"),
        store: "memory://".into(),
        extra_args,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_driver_passes_the_conformance_suite() {
    let factory = LocalFactory::new();
    Suite::test_all(&factory).await.unwrap();
    // Every case cleaned up after itself: no task folder is left.
    let left: Vec<PathBuf> = std::fs::read_dir(factory.dir.path().join("run"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_started_with_its_flags_its_secret_in_the_environment_and_a_private_folder() {
    let factory = LocalFactory::new();
    // Stands in for the `airlock` binary: prints what it was given, then exits with 7.
    let binary = factory.dir.path().join("airlock");
    std::fs::write(
        &binary,
        r#"#!/bin/sh
printf 'arg:%s\n' "$@"
echo "token:$AIRLOCK_TASK_TOKEN"
while [ $# -gt 0 ]; do
  [ "$1" = --runtime-dir ] && echo "dir-mode:$(stat -c %a "$2")"
  shift
done
echo "to stderr" >&2
exit 7
"#,
    )
    .unwrap();
    std::fs::set_permissions(&binary, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut config = factory.config(NodeCommand::AirlockNode {
        binary: binary.clone(),
    });
    config.insecure_no_jail = false;
    let driver = LocalDriver::new(config.clone());
    let id = TaskId("t-node".into());
    let started = driver
        .start(spec(id.clone(), vec!["--python".into(), "python3".into()]))
        .await
        .unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(20), driver.next_exit())
        .await
        .unwrap();
    assert_eq!(exit.handle, started.handle);
    assert_eq!(exit.status, ExitStatus::Exited { code: 7 });

    let log = started.log.unwrap();
    assert_eq!(log, config.log_file(&id));
    let log = std::fs::read_to_string(log).unwrap();
    let args: Vec<&str> = log.lines().filter_map(|l| l.strip_prefix("arg:")).collect();
    let runtime_dir = config.task_dir(&id);
    let expected = [
        "node",
        "--task",
        "t-node",
        "--coordinator",
        "http://127.0.0.1:7700",
        "--region",
        "local",
        "--tier",
        "small",
        "--runtime-version",
        "0.1.0",
        "--store",
        "memory://",
        "--quic",
        "127.0.0.1:0",
        "--ws",
        "127.0.0.1:0",
        "--runtime-dir",
        runtime_dir.to_str().unwrap(),
        "--python",
        "python3",
    ];
    assert_eq!(args, expected, "jailed by default: no --insecure-no-jail");
    assert!(log.contains("token:the-task-secret\n"), "{log}");
    assert!(log.contains("dir-mode:700\n"), "{log}");
    assert!(log.contains("to stderr\n"), "{log}");
    assert!(!runtime_dir.exists(), "the task's folder outlived it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_specs_are_refused_before_anything_runs() {
    let factory = LocalFactory::new();
    let driver = factory.driver();
    for bad in ["", "..", "a/b", "../../etc"] {
        let refused = driver
            .start(spec(TaskId(bad.into()), vec!["run".into()]))
            .await;
        assert!(
            matches!(&refused, Err(DriverError::BadTaskId { .. })),
            "{bad:?}: {refused:?}"
        );
        assert_eq!(refused.unwrap_err().remedy(), Remedy::Abandon);
    }
    let id = TaskId("twice".into());
    let first = driver
        .start(spec(id.clone(), vec!["run".into()]))
        .await
        .unwrap();
    let second = driver.start(spec(id, vec!["run".into()])).await;
    assert!(
        matches!(second, Err(DriverError::Duplicate { .. })),
        "{second:?}"
    );
    assert_eq!(driver.running(), 1);
    driver.stop(&first.handle).await.unwrap();
    assert_eq!(driver.running(), 0);

    let broken = factory.broken_driver();
    let error = broken
        .start(spec(TaskId("b".into()), vec![]))
        .await
        .unwrap_err();
    assert_eq!(error.remedy(), Remedy::FixConfiguration, "{error:?}");
    assert!(
        error.reason().contains("no-such-program"),
        "{}",
        error.reason()
    );
    assert!(
        !factory.dir.path().join("run").join("b").exists(),
        "a failed start left its folder"
    );
}
