//! The path a name lookup takes: a node asks whether a document may use a DNS name (the
//! tunnel's [`crate::frame::NameLookup`]), so that the kernel's DNS goes the same way as its
//! flows. The node answers the kernel itself (with addresses of its own choosing) and later
//! opens flows by name; what it needs from here is a verdict, never the addresses.
//!
//! The steps are a flow's up to the dial, with the same code: the host parser, the policy's
//! step 1 without port rules ([`crate::policy::EgressPolicy::check_name`]), the gateway's
//! resolver, and step 2 over the answers with every port considered. A name is denied if the
//! rules deny it or every address it resolves to would be denied on every port. Authenticating
//! the node for the tenant is the front end's (`crate::tunnel`).
//!
//! Lookups are counted ([`crate::metrics::LOOKUPS`]) and traced, not audited: an audit record is
//! a flow (a number, a port, bytes), and the flow that follows a lookup gets its own.

use std::fmt;

use crate::flow::{parse_requested_host, resolve};
use crate::frame::LookupStatus;
use crate::gateway::Gateway;
use crate::host::Host;
use crate::metrics as names;
use crate::policy::{Denial, FlowTags};
use crate::resolve::ResolveError;

/// A name a node asks about, for a document of a tenant it may speak for.
#[derive(Debug, Clone)]
pub struct LookupRequest {
    pub tags: FlowTags,
    /// The name as the node sent it (checked with [`crate::host::parse_host`] here).
    pub name: String,
    /// The node's certificate name, for the logs.
    pub node: Option<String>,
}

/// The gateway's verdict on a name. `Display` is the sentence for the user (empty if found).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupVerdict {
    /// The name resolves and some address of it may be reached on some port.
    Found,
    /// No such name, or no A/AAAA records.
    NotFound(ResolveError),
    /// Refused by the policy: the name, the tenant, or every address it resolves to.
    Denied(Denial),
    /// The resolver did not answer (timeout, server failure).
    Failed(ResolveError),
    /// A literal address where a name belongs.
    NotAName { input: String },
    /// The node may not speak for the tenant (decided by the front end).
    TenantRefused { node: String, tenant: String },
}

impl LookupVerdict {
    /// The status the tunnel reply carries.
    pub fn status(&self) -> LookupStatus {
        match self {
            LookupVerdict::Found => LookupStatus::Found,
            LookupVerdict::NotFound(_) => LookupStatus::NotFound,
            LookupVerdict::Denied(_) | LookupVerdict::TenantRefused { .. } => LookupStatus::Denied,
            LookupVerdict::Failed(_) => LookupStatus::Failed,
            LookupVerdict::NotAName { .. } => LookupStatus::BadRequest,
        }
    }

    /// The `verdict` label of [`crate::metrics::LOOKUPS`].
    pub fn label(&self) -> &'static str {
        match self.status() {
            LookupStatus::Found => "found",
            LookupStatus::NotFound => "not_found",
            LookupStatus::Denied => "denied",
            LookupStatus::Failed => "failed",
            LookupStatus::BadRequest => "bad_request",
        }
    }

    /// A stable class for the logs: the denial's class, the resolver error's kind, …
    pub fn class(&self) -> &'static str {
        match self {
            LookupVerdict::Found => "found",
            LookupVerdict::NotFound(error) | LookupVerdict::Failed(error) => error.kind(),
            LookupVerdict::Denied(denial) => denial.class(),
            LookupVerdict::NotAName { .. } => "not_a_name",
            LookupVerdict::TenantRefused { .. } => "tenant",
        }
    }
}

impl fmt::Display for LookupVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LookupVerdict::Found => Ok(()),
            LookupVerdict::NotFound(error) | LookupVerdict::Failed(error) => {
                write!(f, "could not resolve: {error}")
            }
            LookupVerdict::Denied(denial) => write!(f, "{denial}"),
            LookupVerdict::NotAName { input } => write!(
                f,
                "{input} is an address, not a name; only names can be looked up"
            ),
            LookupVerdict::TenantRefused { node, tenant } => write!(
                f,
                "denied: node {node} may not look up names for tenant {tenant}"
            ),
        }
    }
}

impl Gateway {
    /// Decides on a name: parse, the policy's host rules, resolve, classify every answer on
    /// every port. Counted in the metrics when this returns.
    pub async fn lookup(&self, request: LookupRequest) -> LookupVerdict {
        let verdict = self.decide_lookup(&request).await;
        count_lookup(&verdict);
        let node = request.node.as_deref().unwrap_or("-");
        let (tenant, document) = (&request.tags.tenant, &request.tags.document);
        if verdict == LookupVerdict::Found {
            tracing::debug!(node, %tenant, %document, name = %request.name, "name found");
        } else {
            tracing::info!(
                node,
                %tenant,
                %document,
                name = %request.name,
                verdict = verdict.label(),
                class = verdict.class(),
                reason = %verdict,
                "name lookup refused"
            );
        }
        verdict
    }

    async fn decide_lookup(&self, request: &LookupRequest) -> LookupVerdict {
        let snapshot = self.snapshot();
        let host = match parse_requested_host(&request.name) {
            Ok(host) => host,
            Err(denial) => return LookupVerdict::Denied(denial),
        };
        let name = match &host {
            Host::Name(name) => name.clone(),
            Host::Ip(_) => {
                return LookupVerdict::NotAName {
                    input: request.name.clone(),
                };
            }
        };
        let check = match snapshot.policy.check_name(&request.tags, &host) {
            Ok(check) => check,
            Err(denial) => return LookupVerdict::Denied(denial),
        };
        let answers = match resolve(&snapshot, &name).await {
            Ok(answers) => answers,
            Err(error @ (ResolveError::NoSuchHost { .. } | ResolveError::NoRecords { .. })) => {
                return LookupVerdict::NotFound(error);
            }
            Err(error) => return LookupVerdict::Failed(error),
        };
        match check.select(&answers).verdict {
            Ok(()) => LookupVerdict::Found,
            Err(denial) => LookupVerdict::Denied(denial),
        }
    }
}

/// Counts a lookup's verdict (also for verdicts the front end reaches on its own).
pub(crate) fn count_lookup(verdict: &LookupVerdict) {
    metrics::counter!(names::LOOKUPS, "verdict" => verdict.label()).increment(1);
}
