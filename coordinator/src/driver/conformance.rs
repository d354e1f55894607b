//! The conformance suite every [`Driver`] runs: one case per guarantee in the trait's docs, driven
//! through a [`DriverFactory`] that makes drivers and specs of tasks that behave as a case needs.
//!
//! ```ignore
//! Suite::test_all(&MyFactory::new()).await?;
//! ```
//! Each case makes its own driver and its own task ids, and ends with nothing left behind (it
//! checks). Cases return driver errors they did not expect as `Err` and fail assertions by
//! panicking, with the case's name in the message. Waits are bounded ([`START_BOUND`],
//! [`EXIT_BOUND`], [`STOP_BOUND`]) so a hanging driver fails instead of stalling CI. Run it on a
//! multi-thread runtime: real processes, real time.
//!
//! It does not cover what a driver cannot show by itself: a machine lost under a scheduler, or a
//! coordinator that crashed with tasks running (the chaos harness does).

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use super::{Driver, DriverError, ExitStatus, Remedy, StartedTask, TaskSpec};
use crate::model::TaskId;

/// How long a start may take to answer.
pub const START_BOUND: Duration = Duration::from_secs(20);
/// How soon an exit must be reported after the task ended.
pub const EXIT_BOUND: Duration = Duration::from_secs(20);
/// How long a stop may take, grace period included.
pub const STOP_BOUND: Duration = Duration::from_secs(60);

/// What a conformance task does once started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Runs until stopped; where the substrate allows, as more than one process (a task is a
    /// node and its kernel).
    RunsUntilStopped,
    /// Runs until stopped and ignores the polite stop request (SIGTERM), so only the driver's
    /// escalation ends it.
    IgnoresStop,
    /// Exits on its own at once with this code (`false` is code 1). Where the substrate allows,
    /// it leaves a process behind (a node's stray child) that the driver must clear.
    Exits { code: i32 },
}

/// Makes drivers over one substrate, and specs for them.
pub trait DriverFactory: Send + Sync {
    type Driver: Driver + 'static;

    /// A new driver whose tasks behave as their spec says.
    fn driver(&self) -> Self::Driver;

    /// A driver that cannot start any task: its program does not exist, or its scheduler refuses
    /// every job.
    fn broken_driver(&self) -> Self::Driver;

    /// The spec of task `task`, behaving as `behaviour` says.
    fn spec(&self, task: TaskId, behaviour: Behaviour) -> TaskSpec;

    /// What is left of a task that should be gone (processes, allocations, folders),
    /// described; empty when nothing is.
    fn leftovers(&self, task: &StartedTask) -> Vec<String>;

    /// Whether dropping a driver ends its tasks (guarantee 4); `false` for schedulers whose tasks
    /// outlive a coordinator by design.
    fn drop_ends_tasks(&self) -> bool;
}

/// A conformance case that hit a driver error it did not expect.
#[derive(Debug, thiserror::Error)]
#[error("driver conformance case {case} failed")]
pub struct CaseFailed {
    pub case: &'static str,
    #[source]
    pub source: DriverError,
}

/// The suite (see the module docs).
#[derive(Debug)]
pub struct Suite;

impl Suite {
    /// Runs every case.
    pub async fn test_all<F: DriverFactory>(factory: &F) -> Result<(), CaseFailed> {
        let case = |case: &'static str| move |source: DriverError| CaseFailed { case, source };
        starts_give_distinct_handles_of_live_tasks(factory)
            .await
            .map_err(case("starts_give_distinct_handles_of_live_tasks"))?;
        stop_leaves_nothing_and_is_idempotent(factory)
            .await
            .map_err(case("stop_leaves_nothing_and_is_idempotent"))?;
        a_task_that_ignores_stop_is_killed(factory)
            .await
            .map_err(case("a_task_that_ignores_stop_is_killed"))?;
        a_task_that_exits_on_its_own_is_reported(factory)
            .await
            .map_err(case("a_task_that_exits_on_its_own_is_reported"))?;
        a_failing_start_is_an_error_not_a_hang(factory)
            .await
            .map_err(case("a_failing_start_is_an_error_not_a_hang"))?;
        stopped_tasks_are_not_reported_as_exits(factory)
            .await
            .map_err(case("stopped_tasks_are_not_reported_as_exits"))?;
        concurrent_starts_and_stops(factory)
            .await
            .map_err(case("concurrent_starts_and_stops"))?;
        dropping_the_driver_ends_its_tasks(factory)
            .await
            .map_err(case("dropping_the_driver_ends_its_tasks"))?;
        Ok(())
    }
}

fn id(case: &str, n: usize) -> TaskId {
    TaskId(format!("conf-{case}-{n}"))
}

async fn bounded<T>(case: &str, what: &str, bound: Duration, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(bound, f).await {
        Ok(value) => value,
        Err(_) => panic!("{case}: {what} took longer than {bound:?}"),
    }
}

async fn start<F: DriverFactory>(
    factory: &F,
    driver: &F::Driver,
    case: &str,
    task: TaskId,
    behaviour: Behaviour,
) -> Result<StartedTask, DriverError> {
    let spec = factory.spec(task, behaviour);
    bounded(case, "start", START_BOUND, driver.start(spec)).await
}

async fn stop<D: Driver>(driver: &D, case: &str, task: &StartedTask) -> Result<(), DriverError> {
    bounded(case, "stop", STOP_BOUND, driver.stop(&task.handle)).await
}

fn assert_gone<F: DriverFactory>(factory: &F, case: &str, task: &StartedTask) {
    let left = factory.leftovers(task);
    assert!(
        left.is_empty(),
        "{case}: task {} left behind: {left:?}",
        task.handle
    );
}

/// Guarantee 1: a start answers with a handle no other task has, and the task is alive.
pub async fn starts_give_distinct_handles_of_live_tasks<F: DriverFactory>(
    factory: &F,
) -> Result<(), DriverError> {
    let case = "starts_give_distinct_handles_of_live_tasks";
    let driver = factory.driver();
    let mut tasks = Vec::new();
    for n in 0..3 {
        tasks.push(
            start(
                factory,
                &driver,
                case,
                id("handles", n),
                Behaviour::RunsUntilStopped,
            )
            .await?,
        );
    }
    let handles: HashSet<&str> = tasks.iter().map(|t| t.handle.as_str()).collect();
    assert_eq!(handles.len(), 3, "{case}: handles repeat: {tasks:?}");
    for task in &tasks {
        assert!(
            driver.alive(&task.handle).await?,
            "{case}: {} not alive",
            task.handle
        );
    }
    for task in &tasks {
        stop(&driver, case, task).await?;
        assert_gone(factory, case, task);
    }
    Ok(())
}

/// Guarantee 2: a stop ends the task and everything it started; stopping again, stopping a task
/// that is gone, or stopping an unknown handle is `Ok`.
pub async fn stop_leaves_nothing_and_is_idempotent<F: DriverFactory>(
    factory: &F,
) -> Result<(), DriverError> {
    let case = "stop_leaves_nothing_and_is_idempotent";
    let driver = factory.driver();
    let task = start(
        factory,
        &driver,
        case,
        id("stop", 0),
        Behaviour::RunsUntilStopped,
    )
    .await?;
    // Two stops at once: both wait for the end, neither fails.
    let (a, b) = tokio::join!(stop(&driver, case, &task), stop(&driver, case, &task));
    a?;
    b?;
    assert!(
        !driver.alive(&task.handle).await?,
        "{case}: alive after stop"
    );
    assert_gone(factory, case, &task);
    stop(&driver, case, &task).await?;
    bounded(
        case,
        "stop of an unknown handle",
        STOP_BOUND,
        driver.stop("conf-unknown@1"),
    )
    .await?;
    bounded(
        case,
        "stop of a malformed handle",
        STOP_BOUND,
        driver.stop(""),
    )
    .await?;
    assert!(
        !driver.alive("conf-unknown@1").await?,
        "{case}: an unknown handle is alive"
    );
    Ok(())
}

/// Guarantee 2: a task that ignores the polite request is killed after the grace period.
pub async fn a_task_that_ignores_stop_is_killed<F: DriverFactory>(
    factory: &F,
) -> Result<(), DriverError> {
    let case = "a_task_that_ignores_stop_is_killed";
    let driver = factory.driver();
    let task = start(
        factory,
        &driver,
        case,
        id("stubborn", 0),
        Behaviour::IgnoresStop,
    )
    .await?;
    stop(&driver, case, &task).await?;
    assert!(
        !driver.alive(&task.handle).await?,
        "{case}: alive after stop"
    );
    assert_gone(factory, case, &task);
    Ok(())
}

/// Guarantee 3: a task that exits on its own is reported once, with its code; it is no longer
/// alive, nothing of it is left, and stopping it afterwards is `Ok`.
pub async fn a_task_that_exits_on_its_own_is_reported<F: DriverFactory>(
    factory: &F,
) -> Result<(), DriverError> {
    let case = "a_task_that_exits_on_its_own_is_reported";
    let driver = factory.driver();
    let task = start(
        factory,
        &driver,
        case,
        id("exits", 0),
        Behaviour::Exits { code: 3 },
    )
    .await?;
    let exit = bounded(case, "the exit report", EXIT_BOUND, driver.next_exit()).await;
    assert_eq!(exit.handle, task.handle, "{case}: {exit:?}");
    assert_eq!(exit.task, id("exits", 0), "{case}: {exit:?}");
    assert_eq!(exit.status, ExitStatus::Exited { code: 3 }, "{case}");
    assert!(
        !driver.alive(&task.handle).await?,
        "{case}: alive after its exit"
    );
    assert_gone(factory, case, &task);
    stop(&driver, case, &task).await?;
    Ok(())
}

/// Guarantee 1: a driver that cannot start tasks says so with an error that is not "retry now";
/// a task that fails as soon as it runs (`false`) is reported at once.
pub async fn a_failing_start_is_an_error_not_a_hang<F: DriverFactory>(
    factory: &F,
) -> Result<(), DriverError> {
    let case = "a_failing_start_is_an_error_not_a_hang";
    let broken = factory.broken_driver();
    let spec = factory.spec(id("broken", 0), Behaviour::RunsUntilStopped);
    let refused = bounded(case, "a broken start", START_BOUND, broken.start(spec)).await;
    match refused {
        Err(error) => assert_ne!(
            error.remedy(),
            Remedy::Abandon,
            "{case}: a broken driver blamed the spec: {}",
            error.reason()
        ),
        Ok(task) => panic!("{case}: a broken driver started {task:?}"),
    }
    drop(broken);

    let driver = factory.driver();
    let task = start(
        factory,
        &driver,
        case,
        id("false", 0),
        Behaviour::Exits { code: 1 },
    )
    .await?;
    let exit = bounded(
        case,
        "the exit report of `false`",
        EXIT_BOUND,
        driver.next_exit(),
    )
    .await;
    assert_eq!(exit.handle, task.handle, "{case}");
    assert_eq!(exit.status, ExitStatus::Exited { code: 1 }, "{case}");
    assert_gone(factory, case, &task);
    // The id is free again once the task is gone.
    let again = start(
        factory,
        &driver,
        case,
        id("false", 0),
        Behaviour::RunsUntilStopped,
    )
    .await?;
    stop(&driver, case, &again).await?;
    Ok(())
}

/// Guarantee 3: a task ended by `stop` is not reported. Reports keep the order of exits, so the
/// next report after a stopped task is the exit of a task started after the stop returned.
pub async fn stopped_tasks_are_not_reported_as_exits<F: DriverFactory>(
    factory: &F,
) -> Result<(), DriverError> {
    let case = "stopped_tasks_are_not_reported_as_exits";
    let driver = factory.driver();
    let stopped = start(
        factory,
        &driver,
        case,
        id("quiet", 0),
        Behaviour::RunsUntilStopped,
    )
    .await?;
    let stubborn = start(
        factory,
        &driver,
        case,
        id("quiet", 1),
        Behaviour::IgnoresStop,
    )
    .await?;
    stop(&driver, case, &stopped).await?;
    stop(&driver, case, &stubborn).await?;
    let exits = start(
        factory,
        &driver,
        case,
        id("quiet", 2),
        Behaviour::Exits { code: 0 },
    )
    .await?;
    let exit = bounded(case, "the exit report", EXIT_BOUND, driver.next_exit()).await;
    assert_eq!(
        exit.handle, exits.handle,
        "{case}: a stopped task was reported: {exit:?}"
    );
    assert_eq!(exit.status, ExitStatus::Exited { code: 0 }, "{case}");
    Ok(())
}

/// The methods may be called concurrently: eight starts at once, then eight stops at once.
pub async fn concurrent_starts_and_stops<F: DriverFactory>(factory: &F) -> Result<(), DriverError> {
    let case = "concurrent_starts_and_stops";
    let driver = factory.driver();
    let starts = (0..8).map(|n| {
        start(
            factory,
            &driver,
            case,
            id("many", n),
            Behaviour::RunsUntilStopped,
        )
    });
    let tasks = futures::future::try_join_all(starts).await?;
    let handles: HashSet<&str> = tasks.iter().map(|t| t.handle.as_str()).collect();
    assert_eq!(handles.len(), tasks.len(), "{case}: handles repeat");
    futures::future::try_join_all(tasks.iter().map(|t| stop(&driver, case, t))).await?;
    for task in &tasks {
        assert_gone(factory, case, task);
    }
    Ok(())
}

/// Guarantee 4: dropping the driver ends every task it started.
pub async fn dropping_the_driver_ends_its_tasks<F: DriverFactory>(
    factory: &F,
) -> Result<(), DriverError> {
    let case = "dropping_the_driver_ends_its_tasks";
    if !factory.drop_ends_tasks() {
        return Ok(());
    }
    let driver = factory.driver();
    let a = start(
        factory,
        &driver,
        case,
        id("drop", 0),
        Behaviour::RunsUntilStopped,
    )
    .await?;
    let b = start(
        factory,
        &driver,
        case,
        id("drop", 1),
        Behaviour::IgnoresStop,
    )
    .await?;
    drop(driver);
    // Nothing to wait on once the driver is gone: watch the substrate until it is clear.
    bounded(case, "the tasks' end after the drop", STOP_BOUND, async {
        loop {
            if factory.leftovers(&a).is_empty() && factory.leftovers(&b).is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    Ok(())
}
