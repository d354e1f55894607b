//! The node's side of the control protocol (`airlock_protocol::control`): a warm task reports
//! ready, keeps its lease with heartbeats, waits for its document, and says when it let it go.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use airlock_protocol::control::{HeartbeatReply, TaskAssignment, TaskReady, TaskReleased};
use anyhow::Context as _;
use reqwest::StatusCode;

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
    pub fn new(coordinators: &str, task: &str, secret: String) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .build()
            .context("building the HTTP client for the coordinator")?;
        let bases: Vec<String> = coordinators
            .split(',')
            .map(|url| url.trim().trim_end_matches('/').to_owned())
            .filter(|url| !url.is_empty())
            .collect();
        anyhow::ensure!(!bases.is_empty(), "--coordinator needs at least one URL");
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

    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let base = self.base().to_owned();
        match request.send().await {
            Ok(response) => Ok(response),
            Err(err) => {
                self.next_coordinator();
                Err(err).with_context(|| format!("reaching the coordinator at {base}"))
            }
        }
    }

    /// Joins the warm pool.
    pub async fn ready(&self, ready: &TaskReady) -> anyhow::Result<HeartbeatReply> {
        let request = self
            .http
            .post(self.url("ready"))
            .bearer_auth(&self.secret)
            .json(ready)
            .timeout(Duration::from_secs(3));
        let response = self.send(request).await?;
        Self::json(response, "ready").await
    }

    pub async fn heartbeat(&self) -> anyhow::Result<HeartbeatReply> {
        let request = self
            .http
            .post(self.url("heartbeat"))
            .bearer_auth(&self.secret)
            // Well inside the lease: a coordinator that hangs (paused, partitioned) must not
            // cost the task its lease; the next heartbeat goes to another coordinator.
            .timeout(Duration::from_millis(1500));
        let response = self.send(request).await?;
        Self::json(response, "heartbeat").await
    }

    /// Waits (one long poll) for the document a claim gave this task.
    pub async fn assignment(&self) -> anyhow::Result<Option<TaskAssignment>> {
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

    pub async fn released(&self, released: &TaskReleased) -> anyhow::Result<()> {
        let request = self
            .http
            .post(self.url("released"))
            .bearer_auth(&self.secret)
            .json(released)
            .timeout(Duration::from_secs(10));
        let response = self.send(request).await?;
        if !response.status().is_success() {
            anyhow::bail!("the coordinator refused the release: {}", response.status());
        }
        Ok(())
    }

    async fn json<T: serde::de::DeserializeOwned>(
        response: reqwest::Response,
        what: &str,
    ) -> anyhow::Result<T> {
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            anyhow::bail!("the coordinator answered {what} with {status}: {body}");
        }
        response
            .json()
            .await
            .with_context(|| format!("the coordinator's answer to {what} does not decode"))
    }

    /// Sends heartbeats until the task process ends; a coordinator that cannot be reached is
    /// retried at the same pace (the lease tolerates a few misses).
    pub async fn keep_lease(self, first: HeartbeatReply) {
        let mut interval = Duration::from_millis(first.interval_ms.max(100));
        loop {
            tokio::time::sleep(interval).await;
            match self.heartbeat().await {
                Ok(reply) => interval = Duration::from_millis(reply.interval_ms.max(100)),
                Err(err) => tracing::warn!("heartbeat failed: {err:#}"),
            }
        }
    }
}
