//! A task of the warm pool: the node's side of the control protocol
//! (`airlock_protocol::control`). A task the coordinators' driver started warms up (endpoints
//! bound, kernel started), reports ready, keeps its lease with heartbeats, waits for the
//! document a claim assigns it, serves it, and says when it let it go.
//!
//! [`TaskAgent`] speaks the protocol to the region's coordinators (one at a time, moving to the
//! next when one cannot be reached); [`run_task`] is the whole life of a task.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use airlock_protocol::control::{HeartbeatReply, TaskAssignment, TaskReady, TaskReleased};
use reqwest::StatusCode;

use crate::document::actor::StopReason;
use crate::{Assignment, NodeError, WarmConfig};

/// Why talking to the coordinators failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no coordinator URL was given; pass --coordinator URL[,URL...]")]
    NoCoordinator,
    #[error("could not build the HTTP client for the coordinators: {0}")]
    Client(#[source] reqwest::Error),
    #[error("cannot reach the coordinator at {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the coordinator answered {what} with {status}: {body}")]
    Refused {
        what: &'static str,
        status: u16,
        body: String,
    },
    #[error("the coordinator's answer to {what} does not decode: {source}")]
    Decode {
        what: &'static str,
        #[source]
        source: reqwest::Error,
    },
}

/// Why a task ended early.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("the coordinator sent a token key that does not parse: {0}")]
    TokenKey(#[source] airlock_protocol::token::KeyError),
}

/// Who the task is and where its coordinators are.
#[derive(Debug, Clone)]
pub struct TaskConfig {
    /// The task's id, as the driver named it.
    pub task: String,
    /// Every coordinator's API URL, separated by commas.
    pub coordinators: String,
    /// The task's bearer secret (the driver passes it in [`TASK_TOKEN_ENV`]).
    ///
    /// [`TASK_TOKEN_ENV`]: airlock_protocol::control::TASK_TOKEN_ENV
    pub secret: String,
    /// The runtime version the task reports (rolling upgrades compare it).
    pub runtime_version: String,
    /// Stop serving after this long without a client.
    pub idle_timeout: Duration,
}

/// How a task's life ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskEnd {
    /// Asked to stop before any document was assigned.
    Retired,
    /// Asked to stop while serving; the document was released.
    Shutdown,
    /// The document stopped by itself (idle, moved to a newer epoch, or failed).
    Stopped(StopReason),
}

impl TaskEnd {
    /// The reason a release reports to the coordinator.
    pub fn release_reason(self) -> &'static str {
        match self {
            TaskEnd::Retired | TaskEnd::Shutdown | TaskEnd::Stopped(StopReason::Shutdown) => {
                "shutdown"
            }
            TaskEnd::Stopped(StopReason::Idle) => "idle",
            TaskEnd::Stopped(StopReason::Moved) => "moved",
            TaskEnd::Stopped(StopReason::Internal) => "failed",
        }
    }
}

/// A task's whole life: warm up with `warm`, report ready, wait for a document, serve it until
/// it stops or `shutdown` completes, release it. Heartbeats keep the lease meanwhile.
pub async fn run_task(
    config: TaskConfig,
    warm: WarmConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<TaskEnd, TaskError> {
    let mut shutdown = pin!(shutdown);
    let agent = TaskAgent::new(&config.coordinators, &config.task, config.secret.clone())?;
    let node = crate::warm(warm).await?;
    let ready = TaskReady {
        quic: node.quic_addr.map(|addr| addr.to_string()),
        websocket: node
            .ws_addr
            .map(|addr| format!("ws://{addr}{}", crate::websocket::PATH)),
        fingerprint: node.fingerprint.clone(),
        runtime_version: config.runtime_version.clone(),
    };
    let lease = agent.ready(&ready).await?;
    let task = config.task.as_str();
    tracing::info!(task, coordinators = %config.coordinators, "warm; waiting for a document");
    let heartbeats = tokio::spawn(agent.clone().keep_lease(lease));
    let assignment = loop {
        tokio::select! {
            () = &mut shutdown => {
                heartbeats.abort();
                node.retire().await;
                return Ok(TaskEnd::Retired);
            }
            polled = agent.assignment() => match polled {
                Ok(Some(assignment)) => break assignment,
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!("waiting for a document: {err}");
                    // The next coordinator of the list is tried after a pause.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            },
        }
    };
    let token_key = airlock_protocol::token::verifying_key_from_pem(&assignment.token_public_key)
        .map_err(TaskError::TokenKey)?;
    let node = node
        .assign(Assignment {
            document: assignment.document.clone(),
            epoch: assignment.epoch,
            token_key,
            store: assignment.store.clone(),
            idle_timeout: Some(config.idle_timeout),
            tenant: assignment.tenant.clone(),
        })
        .await?;
    tracing::info!(task, document = %assignment.document, epoch = assignment.epoch, "serving");
    let end = tokio::select! {
        () = &mut shutdown => TaskEnd::Shutdown,
        reason = node.stopped() => TaskEnd::Stopped(reason),
    };
    node.shutdown().await;
    heartbeats.abort();
    let released = TaskReleased {
        document: assignment.document,
        epoch: assignment.epoch,
        reason: end.release_reason().to_owned(),
    };
    if let Err(err) = agent.released(&released).await {
        tracing::warn!("telling the coordinator the document was released: {err}");
    }
    Ok(end)
}

/// How long one assignment poll waits at the coordinator.
const ASSIGNMENT_WAIT: Duration = Duration::from_secs(10);

/// A task's connection to the coordinators of its region. It talks to one coordinator at a
/// time and moves to the next of the list when one cannot be reached, so losing a coordinator
/// (the leader, say) costs a task nothing.
#[derive(Debug, Clone)]
pub struct TaskAgent {
    http: reqwest::Client,
    /// Every coordinator's API URL.
    bases: Arc<Vec<String>>,
    /// Which of `bases` to use now.
    current: Arc<AtomicUsize>,
    task: String,
    secret: String,
}

impl TaskAgent {
    /// `coordinators`: one URL, or several separated by commas.
    pub fn new(coordinators: &str, task: &str, secret: String) -> Result<Self, ControlError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .build()
            .map_err(ControlError::Client)?;
        let bases: Vec<String> = coordinators
            .split(',')
            .map(|url| url.trim().trim_end_matches('/').to_owned())
            .filter(|url| !url.is_empty())
            .collect();
        if bases.is_empty() {
            return Err(ControlError::NoCoordinator);
        }
        Ok(TaskAgent {
            http,
            bases: Arc::new(bases),
            current: Arc::new(AtomicUsize::new(0)),
            task: task.to_owned(),
            secret,
        })
    }

    fn base(&self) -> &str {
        let i = self.current.load(Ordering::Relaxed) % self.bases.len();
        &self.bases[i]
    }

    fn url(&self, what: &str) -> String {
        format!("{}/v1/tasks/{}/{what}", self.base(), self.task)
    }

    /// The coordinator in use could not be reached: use the next one.
    fn next_coordinator(&self) {
        self.current.fetch_add(1, Ordering::Relaxed);
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ControlError> {
        let base = self.base().to_owned();
        match request.send().await {
            Ok(response) => Ok(response),
            Err(source) => {
                self.next_coordinator();
                Err(ControlError::Unreachable { url: base, source })
            }
        }
    }

    /// `POST` to the task's `what` endpoint, with `body` if any, within `timeout`.
    async fn post(
        &self,
        what: &str,
        body: Option<&impl serde::Serialize>,
        timeout: Duration,
    ) -> Result<reqwest::Response, ControlError> {
        let mut request = self
            .http
            .post(self.url(what))
            .bearer_auth(&self.secret)
            .timeout(timeout);
        if let Some(body) = body {
            request = request.json(body);
        }
        self.send(request).await
    }

    /// Joins the warm pool.
    pub async fn ready(&self, ready: &TaskReady) -> Result<HeartbeatReply, ControlError> {
        let response = self
            .post("ready", Some(ready), Duration::from_secs(3))
            .await?;
        Self::json(response, "ready").await
    }

    pub async fn heartbeat(&self) -> Result<HeartbeatReply, ControlError> {
        // Well inside the lease: a coordinator that hangs (paused, partitioned) must not cost
        // the task its lease; the next heartbeat goes to another coordinator.
        let response = self
            .post("heartbeat", None::<&()>, Duration::from_millis(1500))
            .await?;
        Self::json(response, "heartbeat").await
    }

    /// Waits (one long poll) for the document a claim gave this task.
    pub async fn assignment(&self) -> Result<Option<TaskAssignment>, ControlError> {
        let request = self
            .http
            .get(format!(
                "{}?wait_ms={}",
                self.url("assignment"),
                ASSIGNMENT_WAIT.as_millis()
            ))
            .bearer_auth(&self.secret)
            .timeout(ASSIGNMENT_WAIT + Duration::from_secs(2));
        let response = self.send(request).await?;
        if response.status() == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        Self::json(response, "assignment").await.map(Some)
    }

    pub async fn released(&self, released: &TaskReleased) -> Result<(), ControlError> {
        let response = self
            .post("released", Some(released), Duration::from_secs(10))
            .await?;
        if !response.status().is_success() {
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            return Err(ControlError::Refused {
                what: "released",
                status,
                body,
            });
        }
        Ok(())
    }

    async fn json<T: serde::de::DeserializeOwned>(
        response: reqwest::Response,
        what: &'static str,
    ) -> Result<T, ControlError> {
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(ControlError::Refused {
                what,
                status: status.as_u16(),
                body,
            });
        }
        response
            .json()
            .await
            .map_err(|source| ControlError::Decode { what, source })
    }

    /// Sends heartbeats until the task process ends; a coordinator that cannot be reached is
    /// retried at the same pace (the lease tolerates a few misses).
    pub async fn keep_lease(self, first: HeartbeatReply) {
        let mut interval = Duration::from_millis(first.interval_ms.max(100));
        loop {
            tokio::time::sleep(interval).await;
            match self.heartbeat().await {
                Ok(reply) => interval = Duration::from_millis(reply.interval_ms.max(100)),
                Err(err) => tracing::warn!("heartbeat failed: {err}"),
            }
        }
    }
}
