//! The coordinator's HTTP API (JSON), for backends, operators and the tasks' nodes.
//!
//! Every route is listed once in [`ROUTES`], which builds the router and which a test checks
//! against the OpenAPI document (`coordinator/openapi.json`, served at `/openapi.json`).
//!
//! Callers authenticate with a bearer token: backends and operators with an API token from the
//! coordinator's configuration ([`ApiToken`]); tasks with their task secret. `/healthz` and
//! `/openapi.json` need none; `/metrics` needs an operator token.
//!
//! Errors are JSON `{"error": code, "message": text}` with a status that says what to do: 400
//! for bad input, 401/403 for authentication, 404 for unknown things, 413 for oversized bodies,
//! 503 with `Retry-After` when the pool is empty or no coordinator leads.

use std::sync::Arc;
use std::time::Duration;

use airlock_protocol::control::{TaskReady, TaskReleased};
use airlock_protocol::token::Role;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State as AxumState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::driver::Driver;
use crate::model::{PoolTarget, TaskId, Tier};
use crate::service::{ClaimError, Consensus, ConsensusError, Coordinator, TaskError};

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

/// An error as the API sends it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
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
            Json(json!({"error": self.code, "message": self.message})),
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
            "no_leader",
            err.to_string(),
        );
        api.retry_after = Some(1);
        api
    }
}

impl From<TaskError> for ApiError {
    fn from(err: TaskError) -> Self {
        match err {
            TaskError::UnknownTask(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "unknown_task", err.to_string())
            }
            TaskError::BadSecret => {
                ApiError::new(StatusCode::UNAUTHORIZED, "bad_token", err.to_string())
            }
            TaskError::Gone(_) => ApiError::new(StatusCode::GONE, "task_gone", err.to_string()),
            TaskError::Consensus(err) => err.into(),
            TaskError::Rejected(message) => {
                ApiError::new(StatusCode::CONFLICT, "rejected", message)
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
                    "no_warm_task",
                    err.to_string(),
                );
                api.retry_after = Some(retry_after_s);
                api
            }
            ClaimError::NoSigningKey => {
                let mut api = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not_ready",
                    err.to_string(),
                );
                api.retry_after = Some(1);
                api
            }
            ClaimError::Consensus(err) => err.into(),
            ClaimError::Internal(message) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
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
        "missing_token",
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
                    "bad_token",
                    "this API token is not known to the coordinator",
                )
            })?;
        if needed == ApiRole::Operator && role != ApiRole::Operator {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
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
    let ok = (1..=128).contains(&id.len())
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_document_id",
            "a document id is 1 to 128 characters from A-Z a-z 0-9 . _ - (not . or ..)",
        ))
    }
}

/// The body of a claim.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    /// Who will use the session (goes into the token).
    pub user: String,
    /// `viewer`, `editor` or `owner`.
    pub role: Role,
    /// The tier of task wanted [default: the coordinator's].
    #[serde(default)]
    pub tier: Option<String>,
}

/// `wait_ms` from a query string such as `wait_ms=25000`.
fn wait_ms(query: Option<&str>) -> Result<u64, ApiError> {
    let Some(query) = query else { return Ok(0) };
    for pair in query.split('&') {
        if let Some(value) = pair.strip_prefix("wait_ms=") {
            return value.parse().map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_query",
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
            "bad_body",
            format!(
                "{}: send {{\"user\": …, \"role\": \"editor\"}}",
                err.body_text()
            ),
        )
    })?;
    if request.user.is_empty() || request.user.len() > 256 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_user",
            "user must be 1 to 256 bytes",
        ));
    }
    let session = api
        .coordinator
        .claim(&id, &request.user, request.role, request.tier.map(Tier))
        .await?;
    Ok(Json(session).into_response())
}

async fn status<C: Consensus, D: Driver + 'static>(
    AxumState(api): AxumState<Shared<C, D>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    api.authorize(&headers, ApiRole::Operator)?;
    let coordinator = &api.coordinator;
    let (tasks, documents, counts, targets) = coordinator.read(|state| {
        (
            state.tasks().cloned().collect::<Vec<_>>(),
            state.allocations().cloned().collect::<Vec<_>>(),
            state
                .counts()
                .into_iter()
                .map(|((region, tier), counts)| json!({"region": region, "tier": tier, "counts": counts}))
                .collect::<Vec<_>>(),
            state
                .targets()
                .map(|((region, tier), target)| json!({"region": region, "tier": tier, "target": target}))
                .collect::<Vec<_>>(),
        )
    });
    let pools = coordinator.pool_status().await;
    Ok(Json(json!({
        "region": coordinator.config().region,
        "leader_here": coordinator.consensus().is_leader(),
        "cluster": api.cluster.as_ref().map(|f| f()),
        "targets": targets,
        "counts": counts,
        "pools": pools,
        "tasks": tasks,
        "documents": documents,
    })))
}

async fn documents<C: Consensus, D: Driver + 'static>(
    AxumState(api): AxumState<Shared<C, D>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    api.authorize(&headers, ApiRole::Backend)?;
    let documents: Vec<_> = api
        .coordinator
        .read(|state| state.allocations().cloned().collect());
    Ok(Json(json!({ "documents": documents })))
}

async fn document<C: Consensus, D: Driver + 'static>(
    AxumState(api): AxumState<Shared<C, D>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    api.authorize(&headers, ApiRole::Backend)?;
    document_id(&id)?;
    let allocation = api.coordinator.read(|state| state.allocation(&id).cloned());
    match allocation {
        Some(allocation) => Ok(Json(json!(allocation))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_served",
            format!("no task serves document {id:?}; claim a session to open it"),
        )),
    }
}

async fn pool<C: Consensus, D: Driver + 'static>(
    AxumState(api): AxumState<Shared<C, D>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    api.authorize(&headers, ApiRole::Operator)?;
    let pools = api.coordinator.pool_status().await;
    let counts: Vec<_> = api.coordinator.read(|state| {
        state
            .counts()
            .into_iter()
            .map(|((region, tier), counts)| json!({"region": region, "tier": tier, "counts": counts}))
            .collect()
    });
    Ok(Json(json!({ "pools": pools, "counts": counts })))
}

async fn set_pool<C: Consensus, D: Driver + 'static>(
    AxumState(api): AxumState<Shared<C, D>>,
    Path(tier): Path<String>,
    headers: HeaderMap,
    body: Result<Json<PoolTarget>, axum::extract::rejection::JsonRejection>,
) -> Result<StatusCode, ApiError> {
    api.authorize(&headers, ApiRole::Operator)?;
    let Json(target) =
        body.map_err(|err| ApiError::new(err.status(), "bad_body", err.body_text()))?;
    if target.floor > target.ceiling
        || !(target.buffer_factor.is_finite() && target.buffer_factor >= 0.0)
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_target",
            "floor must not exceed ceiling, and buffer_factor must be a non-negative number",
        ));
    }
    api.coordinator.set_pool_target(Tier(tier), target).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn tasks<C: Consensus, D: Driver + 'static>(
    AxumState(api): AxumState<Shared<C, D>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    api.authorize(&headers, ApiRole::Operator)?;
    let tasks: Vec<_> = api
        .coordinator
        .read(|state| state.tasks().cloned().collect());
    Ok(Json(json!({ "tasks": tasks })))
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
        body.map_err(|err| ApiError::new(err.status(), "bad_body", err.body_text()))?;
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
        body.map_err(|err| ApiError::new(err.status(), "bad_body", err.body_text()))?;
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
