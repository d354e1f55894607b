//! The gateway's Prometheus metric names, in one place so dashboards and code agree. Values are
//! recorded through the `metrics` facade; `airlock egress --metrics` installs the Prometheus
//! exporter. Labels are low-cardinality: verdict, class, front end, error kind, direction.

/// Counter: flow decisions, labelled `verdict` (allow/deny/limited/error) and `class` (the
/// denial class such as `private` or `denied_port`, or `allowed`).
pub const DECISIONS: &str = "airlock_egress_decisions_total";
/// Counter: failed outbound connects, labelled `kind` (timeout/refused/unreachable/bind/other).
pub const CONNECT_ERRORS: &str = "airlock_egress_connect_errors_total";
/// Histogram: seconds from the request to the upstream connection (the gateway's own cost
/// plus DNS and the TCP handshake).
pub const CONNECT_SECONDS: &str = "airlock_egress_connect_seconds";
/// Counter: relayed bytes, labelled `direction` (out = to the destination, in = from it).
pub const BYTES: &str = "airlock_egress_bytes_total";
/// Gauge: flows open now, labelled `front_end`.
pub const ACTIVE_FLOWS: &str = "airlock_egress_active_flows";
/// Counter: resolver failures, labelled `kind` (nxdomain/no_records/timeout/other).
pub const RESOLVER_ERRORS: &str = "airlock_egress_resolver_errors_total";
/// Counter: names whose answers mixed allowed and denied addresses.
pub const MIXED_ANSWERS: &str = "airlock_egress_mixed_answers_total";
/// Counter: config reloads, labelled `result` (ok/error).
pub const RELOADS: &str = "airlock_egress_config_reloads_total";
/// Counter: tunnel connections refused at the handshake or by the node table, labelled `why`.
pub const TUNNEL_REFUSED: &str = "airlock_egress_tunnel_refused_total";
/// Counter: name lookups from nodes, labelled `verdict` (found/not_found/denied/failed/
/// bad_request).
pub const LOOKUPS: &str = "airlock_egress_lookups_total";
/// Counter: audit records dropped because the audit queue was full (the writer fell behind).
pub const AUDIT_DROPPED: &str = "airlock_egress_audit_dropped_total";
/// Counter: refused flows past their document's budget, counted into an aggregated audit
/// record instead of a record of their own.
pub const REFUSALS_AGGREGATED: &str = "airlock_egress_refusals_aggregated_total";
/// Counter: flows the gateway closed after `idle_timeout_ms` without a byte either way,
/// labelled `front_end`.
pub const IDLE_TIMEOUTS: &str = "airlock_egress_idle_timeouts_total";
