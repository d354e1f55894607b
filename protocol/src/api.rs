//! The coordinator's HTTP API, as typed bodies: what a backend, an operator or a tool sends
//! to a region and what it gets back. The coordinator serves them (`airlock_coordinator::api`);
//! `airlock_client::coordinator::ApiClient` speaks them. Both read and write these types, so
//! the two cannot drift apart; the OpenAPI document (`docs/openapi.yaml`) describes the same.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::ids::Tenant;
use crate::token::Role;

/// The body of a claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    /// Who will use the session (goes into the token).
    pub user: String,
    /// `viewer`, `editor` or `owner`.
    pub role: Role,
    /// The tier of task wanted [default: the coordinator's].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// Whose document it is: 1 to 64 of `a-z 0-9 . _ -` [default: `default`]. The egress
    /// gateway applies this tenant's rules and static IPs; a document open under one tenant is
    /// refused (409 `tenant_mismatch`) to claims of another until it is released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// What a claim gives the caller.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Session {
    pub document: String,
    pub epoch: u64,
    pub task: String,
    /// `host:port` for QUIC clients.
    pub quic: Option<String>,
    /// `ws://…/v1/doc` for WebSocket clients.
    pub websocket: Option<String>,
    /// SHA-256 of the node's certificate, for clients to pin.
    pub fingerprint: String,
    /// The capability token to present in the hello.
    pub token: String,
    /// When the token expires (Unix seconds).
    pub expires_at: u64,
    /// Whether this claim started serving the document (false: it was served already).
    pub fresh: bool,
    /// The tenant the document is served for (absent from coordinators before tenants).
    #[serde(default)]
    pub tenant: Tenant,
}

/// The answer of `GET /v1/egress-ips` (and of its `PUT`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressIps {
    /// The region these coordinators manage.
    pub region: String,
    /// Tenant → the addresses the egress gateway binds its outbound connections to. A tenant
    /// absent here has no static IPs published: its traffic may leave from any address.
    pub tenants: BTreeMap<String, Vec<IpAddr>>,
    /// When an operator last set them (Unix ms); `null` if never.
    pub updated_ms: Option<u64>,
}

/// The body of `PUT /v1/egress-ips`: the whole new sets.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetEgressIps {
    /// Tenant → its addresses (IPv4 or IPv6, without a port or prefix length).
    pub tenants: BTreeMap<String, Vec<IpAddr>>,
}

/// The body of every refusal: a stable code for programs and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A stable `snake_case` code (`no_warm_task`, `tenant_mismatch`, …).
    pub error: String,
    /// What happened and what to do.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_body_names_only_what_it_sets() {
        let body = ClaimRequest {
            user: "ada".into(),
            role: Role::Editor,
            tier: None,
            tenant: Some("acme".into()),
        };
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"user": "ada", "role": "editor", "tenant": "acme"})
        );
        assert_eq!(serde_json::from_value::<ClaimRequest>(json).unwrap(), body);
        let unknown = serde_json::json!({"user": "ada", "role": "editor", "tenat": "acme"});
        assert!(serde_json::from_value::<ClaimRequest>(unknown).is_err());
    }

    #[test]
    fn a_session_from_before_tenants_is_the_default_tenant() {
        let json = serde_json::json!({
            "document": "d", "epoch": 3, "task": "t", "quic": null, "websocket": null,
            "fingerprint": "ab", "token": "x", "expires_at": 9, "fresh": true
        });
        let session: Session = serde_json::from_value(json).unwrap();
        assert_eq!(session.tenant, Tenant::default());
    }
}
