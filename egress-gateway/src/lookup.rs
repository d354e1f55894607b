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
//! Under default deny, a name no allow glob matches is refused by the policy's host rules
//! before the resolver is asked (when no allow CIDR exists), so a kernel cannot carry data out
//! in the names it looks up.
//!
//! Lookups are counted ([`crate::metrics::LOOKUPS`]) and audited, aggregated per document
//! ([`crate::aggregate::LookupTally`]): per window, one record per distinct (name, verdict
//! class) with a count, front end `lookup`, port 0; past the window's distinct-name budget one
//! summary record. A lookup is never recorded one by one, so a kernel asking a million
//! distinct names costs a bounded number of records.

use std::fmt;

use crate::audit::{AuditRecord, Verdict};
use crate::flow::{for_log, parse_requested_host, resolve};
use crate::frame::LookupStatus;
use crate::gateway::Gateway;
use crate::host::Host;
use crate::metrics as names;
use crate::policy::{Denial, FlowTags};
use crate::resolve::ResolveError;

/// The `front_end` of a lookup's audit record.
pub const LOOKUP_FRONT_END: &str = "lookup";

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
        self.record_lookup(AuditRecord {
            ts_unix_ms: crate::flow::unix_ms(),
            front_end: LOOKUP_FRONT_END.to_owned(),
            tenant: request.tags.tenant.clone(),
            document: request.tags.document.clone(),
            node: request.node.clone(),
            requested_host: request.name.clone(),
            verdict: match verdict.status() {
                LookupStatus::Found => Verdict::Allow,
                LookupStatus::Denied => Verdict::Deny,
                _ => Verdict::Error,
            },
            class: verdict.class().to_owned(),
            reason: verdict.to_string(),
            ..AuditRecord::default()
        });
        let node = for_log(request.node.as_deref().unwrap_or("-"));
        let tenant = for_log(&request.tags.tenant);
        let document = for_log(&request.tags.document);
        let name = for_log(&request.name);
        if verdict == LookupVerdict::Found {
            tracing::debug!(%node, %tenant, %document, %name, "name found");
        } else {
            tracing::debug!(
                %node,
                %tenant,
                %document,
                %name,
                verdict = verdict.label(),
                class = verdict.class(),
                reason = %for_log(&verdict.to_string()),
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
