//! The coordinator's HTTP API (JSON), for backends, operators and the tasks' nodes.
//!
//! Every route is listed once in [`ROUTES`], which builds the router and which a test checks
//! against the OpenAPI document (`coordinator/openapi.json`, served at `/openapi.json`).
//!
//! Callers authenticate with a bearer token: backends and operators with an API token from the
//! coordinator's configuration ([`ApiToken`]); tasks with their task secret. `/healthz` and
//! `/openapi.json` need none; `/metrics` needs an operator token.
//!
//! Errors are JSON `{"error": code, "message": text}` ([`ErrorCode`]) with a status that says
//! what to do: 400 for bad input, 401/403 for authentication, 404 for unknown things, 409 for a
//! claim under the wrong tenant, 413 for oversized bodies, 422 for bodies of the wrong shape,
//! 503 with `Retry-After` when the pool is empty or no coordinator leads.
//!
//! `GET /v1/egress-ips` publishes the region's static egress IP sets (backend or operator
//! token) so users can allow-list them; a tenant absent from it has no static IPs published.
//! `PUT /v1/egress-ips` (operator) replaces them as a whole.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub use airlock_protocol::api::{ClaimRequest, EgressIps, ErrorBody, SetEgressIps};
use airlock_protocol::control::{TaskReady, TaskReleased};
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State as AxumState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::driver::Driver;
use crate::model::{
    Allocation, BadEgressIps, EgressIpSets, PoolTarget, Region, Task, TaskId, Tenant, Tier,
};
use crate::pool::PoolStatus;
use crate::service::{
    ClaimError, Consensus, ConsensusError, Coordinator, EgressIpsError, TaskError,
};
use crate::state::{State, TaskCounts};

/// The largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// The OpenAPI document of this API.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// Who an API token belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiRole {
    /// A notebook platform's backend: claims sessions, reads documents.
    Backend,
    /// An operator: everything.
    Operator,
}

/// A bearer token the API accepts.
#[derive(Debug, Clone)]
pub struct ApiToken {
    pub token: String,
    pub role: ApiRole,
}

/// Every route: method, path (axum syntax) and a summary. The OpenAPI test reads this list.
pub const ROUTES: &[(&str, &str, &str)] = &[
    ("GET", "/healthz", "liveness"),
    ("GET", "/openapi.json", "this API's OpenAPI document"),
    ("GET", "/metrics", "Prometheus metrics"),
    ("GET", "/v1/status", "leader, pool, tasks and documents"),
    (
        "POST",
        "/v1/documents/{id}/session",
        "claim a session on a document",
    ),
    ("GET", "/v1/documents", "documents being served"),
    ("GET", "/v1/documents/{id}", "one document's allocation"),
    ("GET", "/v1/pool", "pool targets, counts and back-off"),
    ("PUT", "/v1/pool/{tier}", "set a pool's target"),
    (
        "GET",
        "/v1/egress-ips",
        "the region's static egress IP sets, to allow-list",
    ),
    (
        "PUT",
        "/v1/egress-ips",
        "replace the region's static egress IP sets",
    ),
    ("GET", "/v1/tasks", "every task"),
    ("POST", "/v1/tasks/{id}/drain", "stop giving a task out"),
    ("POST", "/v1/tasks/{id}/ready", "a task's node is warm"),
    ("POST", "/v1/tasks/{id}/heartbeat", "a task's node is alive"),
    (
        "GET",
        "/v1/tasks/{id}/assignment",
        "wait for a task's document",
    ),
    (
        "POST",
        "/v1/tasks/{id}/released",
        "a task stopped serving its document",
    ),
];

/// The shared state of the handlers.
pub struct Api<C, D> {
    pub coordinator: Arc<Coordinator<C, D>>,
    pub tokens: Vec<ApiToken>,
    /// Renders the Prometheus metrics, if a recorder is installed.
    pub metrics: Option<Arc<dyn Fn() -> String + Send + Sync>>,
    /// Extra status (Raft leader, members) from the layer that owns consensus.
    pub cluster: Option<Arc<dyn Fn() -> serde_json::Value + Send + Sync>>,
}

impl<C, D> std::fmt::Debug for Api<C, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("tokens", &self.tokens.len())
            .finish_non_exhaustive()
    }
}

/// The `error` field of every error answer: what went wrong, for programs (the `message` says
/// it for people). `coordinator/openapi.json` lists the same codes (a test checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// No `Authorization: Bearer` header.
    MissingToken,
    /// The token (or task secret) is not known.
    BadToken,
    /// The token's role may not do this (it needs an operator token).
    Forbidden,
    /// The document id is not 1 to 128 of `A-Z a-z 0-9 . _ -`.
    BadDocumentId,
    /// The claim's user is empty or too long.
    BadUser,
    /// A tenant name is not 1 to 64 of `a-z 0-9 . _ -`.
    BadTenant,
    /// The body is not JSON of the expected shape (or is too large).
    BadBody,
    /// A query parameter does not parse.
    BadQuery,
    /// A pool target is inconsistent.
    BadTarget,
    /// An egress address no socket can bind (unspecified, multicast, broadcast).
    BadEgressIp,
    /// No task serves the document.
    NotServed,
    /// No such task.
    UnknownTask,
    /// The task is drained or dead; it should exit.
    TaskGone,
    /// The replicated state refused the change.
    Rejected,
    /// The document is open under another tenant.
    TenantMismatch,
    /// No warm task within the claim's wait; see `Retry-After`.
    NoWarmTask,
    /// No coordinator leads the region right now; see `Retry-After`.
    NoLeader,
    /// The region has no signing key yet; see `Retry-After`.
    NotReady,
    /// A bug.
    Internal,
}

impl ErrorCode {
    /// Every code, in the order of the OpenAPI document.
    pub const ALL: &[ErrorCode] = &[
        ErrorCode::MissingToken,
        ErrorCode::BadToken,
        ErrorCode::Forbidden,
        ErrorCode::BadDocumentId,
        ErrorCode::BadUser,
        ErrorCode::BadTenant,
        ErrorCode::BadBody,
        ErrorCode::BadQuery,
        ErrorCode::BadTarget,
        ErrorCode::BadEgressIp,
        ErrorCode::NotServed,
        ErrorCode::UnknownTask,
        ErrorCode::TaskGone,
        ErrorCode::Rejected,
        ErrorCode::TenantMismatch,
        ErrorCode::NoWarmTask,
        ErrorCode::NoLeader,
        ErrorCode::NotReady,
        ErrorCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MissingToken => "missing_token",
            ErrorCode::BadToken => "bad_token",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::BadDocumentId => "bad_document_id",
            ErrorCode::BadUser => "bad_user",
            ErrorCode::BadTenant => "bad_tenant",
            ErrorCode::BadBody => "bad_body",
            ErrorCode::BadQuery => "bad_query",
            ErrorCode::BadTarget => "bad_target",
            ErrorCode::BadEgressIp => "bad_egress_ip",
            ErrorCode::NotServed => "not_served",
            ErrorCode::UnknownTask => "unknown_task",
            ErrorCode::TaskGone => "task_gone",
            ErrorCode::Rejected => "rejected",
            ErrorCode::TenantMismatch => "tenant_mismatch",
            ErrorCode::NoWarmTask => "no_warm_task",
            ErrorCode::NoLeader => "no_leader",
            ErrorCode::NotReady => "not_ready",
            ErrorCode::Internal => "internal",
        }
    }
}

/// An error as the API sends it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(ErrorBody {
                error: self.code.as_str().to_owned(),
                message: self.message,
            }),
        )
            .into_response();
        if let Some(seconds) = self.retry_after
            && let Ok(value) = HeaderValue::from_str(&seconds.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

impl From<ConsensusError> for ApiError {
    fn from(err: ConsensusError) -> Self {
        let mut api = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::NoLeader,
            err.to_string(),
        );
        api.retry_after = Some(1);
        api
    }
}

impl From<TaskError> for ApiError {
    fn from(err: TaskError) -> Self {
        match err {
            TaskError::UnknownTask(_) => ApiError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::UnknownTask,
                err.to_string(),
            ),
            TaskError::BadSecret => ApiError::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::BadToken,
                err.to_string(),
            ),
            TaskError::Gone(_) => {
                ApiError::new(StatusCode::GONE, ErrorCode::TaskGone, err.to_string())
            }
            TaskError::Consensus(err) => err.into(),
            TaskError::Rejected(message) => {
                ApiError::new(StatusCode::CONFLICT, ErrorCode::Rejected, message)
            }
        }
    }
}

impl From<ClaimError> for ApiError {
    fn from(err: ClaimError) -> Self {
        match err {
            ClaimError::NoWarmTask { retry_after_s, .. } => {
                let mut api = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::NoWarmTask,
                    err.to_string(),
                );
                api.retry_after = Some(retry_after_s);
                api
            }
            ClaimError::NoSigningKey => {
                let mut api = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::NotReady,
                    err.to_string(),
                );
                api.retry_after = Some(1);
                api
            }
            ClaimError::TenantMismatch { .. } => ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::TenantMismatch,
                err.to_string(),
            ),
            ClaimError::Consensus(err) => err.into(),
            ClaimError::Internal(message) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                message,
            ),
        }
    }
}

impl From<EgressIpsError> for ApiError {
    fn from(err: EgressIpsError) -> Self {
        match err {
            EgressIpsError::Invalid(BadEgressIps::Tenant(bad)) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::BadTenant,
                bad.to_string(),
            ),
            EgressIpsError::Invalid(bad @ BadEgressIps::Address { .. }) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::BadEgressIp,
                bad.to_string(),
            ),
            EgressIpsError::Consensus(err) => err.into(),
            EgressIpsError::Rejected(message) => {
                ApiError::new(StatusCode::CONFLICT, ErrorCode::Rejected, message)
            }
        }
    }
}

type Shared<C, D> = Arc<Api<C, D>>;

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

fn unauthorized() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        ErrorCode::MissingToken,
        "send `Authorization: Bearer <token>` with an API token from the coordinator's configuration",
    )
}

impl<C: Consensus, D: Driver + 'static> Api<C, D> {
    /// Checks an API token; operators may do everything a backend may.
    fn authorize(&self, headers: &HeaderMap, needed: ApiRole) -> Result<ApiRole, ApiError> {
        let token = bearer(headers).ok_or_else(unauthorized)?;
        let role = self
            .tokens
            .iter()
            .find(|t| t.token.len() == token.len() && t.token.as_bytes() == token.as_bytes())
            .map(|t| t.role)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    ErrorCode::BadToken,
                    "this API token is not known to the coordinator",
                )
            })?;
        if needed == ApiRole::Operator && role != ApiRole::Operator {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                "this needs an operator token",
            ));
        }
        Ok(role)
    }

    fn authorize_task(&self, headers: &HeaderMap, task: &TaskId) -> Result<(), ApiError> {
        let secret = bearer(headers).ok_or_else(unauthorized)?;
        Ok(self.coordinator.authenticate_task(task, secret)?)
    }
}

/// Checks a document id: 1 to 128 of `A-Z a-z 0-9 . _ -`, not `.` or `..`.
fn document_id(id: &str) -> Result<(), ApiError> {
    if airlock_protocol::ids::is_valid_id(id) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadDocumentId,
            airlock_protocol::ids::DOCUMENT_ID_RULE,
        ))
    }
}

/// Checks a claim's tenant: 1 to 64 of `a-z 0-9 . _ -`.
fn tenant(name: Option<String>) -> Result<Tenant, ApiError> {
    let Some(name) = name else {
        return Ok(Tenant::default());
    };
    Tenant::parse(&name).map_err(|bad| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadTenant,
            bad.to_string(),
        )
    })
}

/// `GET /v1/status`: the region as this member sees it.
#[derive(Debug, Serialize)]
pub struct StatusView {
    pub region: Region,
    pub egress_ips: EgressIps,
    /// Whether this member leads.
    pub leader_here: bool,
    /// The Raft group (members, leader, term), when this API runs inside a cluster.
    pub cluster: Option<serde_json::Value>,
    pub targets: Vec<PoolTargetView>,
    pub counts: Vec<PoolCounts>,
    pub pools: Vec<PoolStatus>,
    pub tasks: Vec<Task>,
    pub documents: Vec<Allocation>,
}

/// One pool's target, named by its region and tier.
#[derive(Debug, Serialize)]
pub struct PoolTargetView {
    pub region: Region,
    pub tier: Tier,
    pub target: PoolTarget,
}

/// One pool's tasks counted by state.
#[derive(Debug, Serialize)]
pub struct PoolCounts {
    pub region: Region,
    pub tier: Tier,
    pub counts: TaskCounts,
}

impl PoolCounts {
    /// Every pool's counts in `state`.
    fn of(state: &State) -> Vec<PoolCounts> {
        state
            .counts()
            .into_iter()
            .map(|((region, tier), counts)| PoolCounts {
                region,
                tier,
                counts,
            })
            .collect()
    }
}

/// `GET /v1/documents`.
#[derive(Debug, Serialize)]
pub struct DocumentsView {
    pub documents: Vec<Allocation>,
}

/// `GET /v1/pool`.
#[derive(Debug, Serialize)]
pub struct PoolView {
    pub pools: Vec<PoolStatus>,
    pub counts: Vec<PoolCounts>,
}

/// `GET /v1/tasks`.
#[derive(Debug, Serialize)]
pub struct TasksView {
    pub tasks: Vec<Task>,
}

/// What `GET /v1/egress-ips` answers for `region` with these `sets`.
fn egress_ips_view(region: &str, sets: Option<EgressIpSets>) -> EgressIps {
    match sets {
        Some(sets) => EgressIps {
            region: sets.region.0,
            tenants: sets
                .tenants
                .into_iter()
                .map(|(t, ips)| (t.0, ips))
                .collect(),
            updated_ms: Some(sets.updated_ms),
        },
        None => EgressIps {
            region: region.to_owned(),
            tenants: BTreeMap::new(),
            updated_ms: None,
        },
    }
}

/// `wait_ms` from a query string such as `wait_ms=25000`.
fn wait_ms(query: Option<&str>) -> Result<u64, ApiError> {
    let Some(query) = query else { return Ok(0) };
    for pair in query.split('&') {
        if let Some(value) = pair.strip_prefix("wait_ms=") {
            return value.parse().map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::BadQuery,
                    "wait_ms must be a whole number of milliseconds",
                )
            });
        }
    }
    Ok(0)
}

async fn claim<C: Consensus, D: Driver + 'static>(
    AxumState(api): AxumState<Shared<C, D>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Json<ClaimRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    api.authorize(&headers, ApiRole::Backend)?;
    document_id(&id)?;
    let Json(request) = body.map_err(|err| {
        ApiError::new(
            err.status(),
            ErrorCode::BadBody,
            format!(
                "{}: send {{\"user\": …, \"role\": \"editor\"}}",
                err.body_text()
            ),
        )
    })?;
    if request.user.is_empty() || request.user.len() > 256 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadUser,
            "user must be 1 to 256 bytes",
        ));
    }
    let tenant = tenant(request.tenant)?;
    let session = api
        .coordinator
        .claim(
            &id,
            tenant,
            &request.user,
            request.role,
            request.tier.map(Tier),
        )
        .await?;
    Ok(Json(session).into_response())
}

async fn status<C: Consensus, D: Driver + 'static>(
    AxumState(api): AxumState<Shared<C, D>>,
    headers: HeaderMap,
) -> Result<Json<StatusView>, ApiError> {
    api.authorize(&headers, ApiRole::Operator)?;
    let coordinator = &api.coordinator;
    let (tasks, documents, counts, targets) = coordinator.read(|state| {
        (
            state.tasks().cloned().collect(),
            state.allocations().cloned().collect(),
            PoolCounts::of(state),
            state
                .targets()
                .map(|((region, tier), target)| PoolTargetView {
                    region: region.clone(),
                    tier: tier.clone(),
                    target: target.clone(),
                })
                .collect(),
        )
    });
    Ok(Json(StatusView {
        region: coordinator.config().region.clone(),
        egress_ips: egress_ips_view(&coordinator.config().region.0, coordinator.egress_ips()),
        leader_here: coordinator.consensus().is_leader(),
        cluster: api.cluster.as_ref().map(|f| f()),
        targets,
        counts,
        pools: coordinator.pool_status().await,
        tasks,
        documents,
    }))
}

async fn documents<C: Consensus, D: Driver + 'static>(
    AxumState(api): AxumState<Shared<C, D>>,
    headers: HeaderMap,
) -> Result<Json<DocumentsView>, ApiError> {
    api.authorize(&headers, ApiRole::Backend)?;
    let documents = api
        .coordinator
        .read(|state| state.allocations().cloned().collect());
    Ok(Json(DocumentsView { documents }))
}

async fn document<C: Consensus, D: Driver + 'static>(
    AxumState(api): AxumState<Shared<C, D>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Allocation>, ApiError> {
    api.authorize(&headers, ApiRole::Backend)?;
    document_id(&id)?;
    let allocation = api.coordinator.read(|state| state.allocation(&id).cloned());
    match allocation {
        Some(allocation) => Ok(Json(allocation)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotServed,
            format!("no task serves document {id:?}; claim a session to open it"),
        )),
    }
}

async fn pool<C: Consensus, D: Driver + 'static>(
    AxumState(api): AxumState<Shared<C, D>>,
    headers: HeaderMap,
) -> Result<Json<PoolView>, ApiError> {
    api.authorize(&headers, ApiRole::Operator)?;
    let pools = api.coordinator.pool_status().await;
    let counts = api.coordinator.read(PoolCounts::of);
    Ok(Json(PoolView { pools, counts }))
}

async fn set_pool<C: Consensus, D: Driver + 'static>(
    AxumState(api): AxumState<Shared<C, D>>,
    Path(tier): Path<String>,
    headers: HeaderMap,
    body: Result<Json<PoolTarget>, axum::extract::rejection::JsonRejection>,
) -> Result<StatusCode, ApiError> {
    api.authorize(&headers, ApiRole::Operator)?;
    let Json(target) =
        body.map_err(|err| ApiError::new(err.status(), ErrorCode::BadBody, err.body_text()))?;
    if target.floor > target.ceiling
        || !(target.buffer_factor.is_finite() && target.buffer_factor >= 0.0)
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadTarget,
            "floor must not exceed ceiling, and buffer_factor must be a non-negative number",
        ));
    }
    api.coordinator.set_pool_target(Tier(tier), target).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn egress_ips<C: Consensus, D: Driver + 'static>(
    AxumState(api): AxumState<Shared<C, D>>,
    headers: HeaderMap,
) -> Result<Json<EgressIps>, ApiError> {
    api.authorize(&headers, ApiRole::Backend)?;
    let coordinator = &api.coordinator;
    Ok(Json(egress_ips_view(
        &coordinator.config().region.0,
        coordinator.egress_ips(),
    )))
}

async fn set_egress_ips<C: Consensus, D: Driver + 'static>(
    AxumState(api): AxumState<Shared<C, D>>,
    headers: HeaderMap,
    body: Result<Json<SetEgressIps>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<EgressIps>, ApiError> {
    api.authorize(&headers, ApiRole::Operator)?;
    let Json(request) = body.map_err(|err| {
        ApiError::new(
            err.status(),
            ErrorCode::BadBody,
            format!(
                "{}: send {{\"tenants\": {{\"acme\": [\"203.0.113.10\", \"2001:db8::10\"]}}}}",
                err.body_text()
            ),
        )
    })?;
    let mut tenants = BTreeMap::new();
    for (name, addresses) in request.tenants {
        let tenant = Tenant::parse(&name)
            .map_err(BadEgressIps::from)
            .map_err(EgressIpsError::from)?;
        tenants.insert(tenant, addresses);
    }
    let sets = api.coordinator.set_egress_ips(tenants).await?;
    Ok(Json(egress_ips_view(
        &api.coordinator.config().region.0,
        Some(sets),
    )))
}

async fn tasks<C: Consensus, D: Driver + 'static>(
    AxumState(api): AxumState<Shared<C, D>>,
    headers: HeaderMap,
) -> Result<Json<TasksView>, ApiError> {
    api.authorize(&headers, ApiRole::Operator)?;
    let tasks = api
        .coordinator
        .read(|state| state.tasks().cloned().collect());
    Ok(Json(TasksView { tasks }))
}

async fn drain<C: Consensus, D: Driver + 'static>(
    AxumState(api): AxumState<Shared<C, D>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    api.authorize(&headers, ApiRole::Operator)?;
    api.coordinator
        .drain(&TaskId(id), "drained by an operator")
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn ready<C: Consensus, D: Driver + 'static>(
    AxumState(api): AxumState<Shared<C, D>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Json<TaskReady>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let task = TaskId(id);
    api.authorize_task(&headers, &task)?;
    let Json(ready) =
        body.map_err(|err| ApiError::new(err.status(), ErrorCode::BadBody, err.body_text()))?;
    let reply = api.coordinator.task_ready(&task, ready).await?;
    Ok(Json(reply).into_response())
}

async fn heartbeat<C: Consensus, D: Driver + 'static>(
    AxumState(api): AxumState<Shared<C, D>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let task = TaskId(id);
    api.authorize_task(&headers, &task)?;
    let reply = api.coordinator.task_heartbeat(&task).await?;
    Ok(Json(reply).into_response())
}

async fn assignment<C: Consensus, D: Driver + 'static>(
    AxumState(api): AxumState<Shared<C, D>>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let task = TaskId(id);
    api.authorize_task(&headers, &task)?;
    let wait = Duration::from_millis(wait_ms(query.as_deref())?.min(60_000));
    match api.coordinator.task_assignment(&task, wait).await? {
        Some(assignment) => Ok(Json(assignment).into_response()),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

async fn released<C: Consensus, D: Driver + 'static>(
    AxumState(api): AxumState<Shared<C, D>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Json<TaskReleased>, axum::extract::rejection::JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let task = TaskId(id);
    api.authorize_task(&headers, &task)?;
    let Json(released) =
        body.map_err(|err| ApiError::new(err.status(), ErrorCode::BadBody, err.body_text()))?;
    api.coordinator
        .task_released(&task, released.document, released.epoch, &released.reason)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn metrics_route<C: Consensus, D: Driver + 'static>(
    AxumState(api): AxumState<Shared<C, D>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    api.authorize(&headers, ApiRole::Operator)?;
    let body = api
        .metrics
        .as_ref()
        .map(|render| render())
        .unwrap_or_default();
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response())
}

/// The router of every route in [`ROUTES`].
pub fn router<C: Consensus, D: Driver + 'static>(api: Shared<C, D>) -> Router {
    let route = |method: &str, path: &str| -> MethodRouter<Shared<C, D>> {
        match (method, path) {
            ("GET", "/healthz") => get(|| async { "ok\n" }),
            ("GET", "/openapi.json") => {
                get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) })
            }
            ("GET", "/metrics") => get(metrics_route::<C, D>),
            ("GET", "/v1/status") => get(status::<C, D>),
            ("POST", "/v1/documents/{id}/session") => post(claim::<C, D>),
            ("GET", "/v1/documents") => get(documents::<C, D>),
            ("GET", "/v1/documents/{id}") => get(document::<C, D>),
            ("GET", "/v1/pool") => get(pool::<C, D>),
            ("PUT", "/v1/pool/{tier}") => put(set_pool::<C, D>),
            ("GET", "/v1/egress-ips") => get(egress_ips::<C, D>),
            ("PUT", "/v1/egress-ips") => put(set_egress_ips::<C, D>),
            ("GET", "/v1/tasks") => get(tasks::<C, D>),
            ("POST", "/v1/tasks/{id}/drain") => post(drain::<C, D>),
            ("POST", "/v1/tasks/{id}/ready") => post(ready::<C, D>),
            ("POST", "/v1/tasks/{id}/heartbeat") => post(heartbeat::<C, D>),
            ("GET", "/v1/tasks/{id}/assignment") => get(assignment::<C, D>),
            ("POST", "/v1/tasks/{id}/released") => post(released::<C, D>),
            (method, path) => unreachable!("ROUTES lists {method} {path} without a handler"),
        }
    };
    let mut router = Router::new();
    for (method, path, _) in ROUTES {
        router = router.route(path, route(method, path));
    }
    router
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(api)
}
