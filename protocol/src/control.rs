//! The control protocol between a kernel task's node and the coordinators (HTTP/JSON).
//!
//! A node started by a driver knows its task id, the coordinator's URL and a per-task bearer
//! secret (in the environment variable [`TASK_TOKEN_ENV`], never on its command line). It warms up (endpoints bound, kernel started), then:
//!
//! 1. `POST /v1/tasks/{task}/ready` with [`TaskReady`]: the task joins the warm pool.
//! 2. `POST /v1/tasks/{task}/heartbeat` every [`HeartbeatReply::interval_ms`]: the answer says how
//!    long the lease runs. A node whose lease runs out is presumed dead and its document is given
//!    to another task with a higher epoch.
//! 3. `GET /v1/tasks/{task}/assignment?wait_ms=N` (a long poll): `200` with [`TaskAssignment`]
//!    once a claim took the task, `204` if none came within `wait_ms`.
//! 4. `POST /v1/tasks/{task}/released` with [`TaskReleased`] when it stops serving (idle, or
//!    fenced out by a newer owner), then it exits. A task never serves a second document.
//!
//! Every request carries `Authorization: Bearer <task secret>`. Any coordinator of the region
//! answers; followers forward what needs the leader.

use serde::{Deserialize, Serialize};

/// The environment variable a driver passes a task's secret in.
pub const TASK_TOKEN_ENV: &str = "AIRLOCK_TASK_TOKEN";

/// The node is ready to serve.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct TaskReady {
    /// `host:port` of the QUIC endpoint, if enabled.
    pub quic: Option<String>,
    /// `ws://host:port/v1/doc`, if enabled.
    pub websocket: Option<String>,
    /// SHA-256 of the node's QUIC certificate.
    pub fingerprint: String,
    /// The runtime version the node runs.
    pub runtime_version: String,
}

/// The answer to a heartbeat (and to `ready`).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatReply {
    /// How long the lease runs from now.
    pub lease_ms: u64,
    /// When to send the next heartbeat.
    pub interval_ms: u64,
}

/// The document a claim gave the task.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct TaskAssignment {
    pub document: String,
    /// The claim's epoch: tokens carry it, and the store fences writes with it.
    pub epoch: u64,
    /// The coordinators' token-signing public key (SPKI PEM).
    pub token_public_key: String,
    /// The document store (a folder or URL).
    pub store: String,
    /// Whose document it is: the egress gateway applies this tenant's rules and static IPs to
    /// the kernel's connections. `"default"` from coordinators that predate tenants.
    #[serde(default = "default_tenant")]
    pub tenant: String,
}

/// The tenant of assignments that name none.
fn default_tenant() -> String {
    "default".to_owned()
}

/// The node stopped serving its document.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct TaskReleased {
    pub document: String,
    pub epoch: u64,
    /// `idle`, `moved` (fenced out), `shutdown`, `failed`.
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_assignment_without_a_tenant_is_the_default_tenants() {
        let old = r#"{"document":"d","epoch":3,"token_public_key":"k","store":"/s"}"#;
        let assignment: TaskAssignment = serde_json::from_str(old).unwrap();
        assert_eq!(assignment.tenant, "default");
        let new =
            r#"{"document":"d","epoch":3,"token_public_key":"k","store":"/s","tenant":"acme"}"#;
        let assignment: TaskAssignment = serde_json::from_str(new).unwrap();
        assert_eq!(assignment.tenant, "acme");
    }
}
