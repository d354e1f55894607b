//! A small client of the coordinator's HTTP API ([`airlock_protocol::api`]), for backends, the
//! CLI, tests and benchmarks. It builds no part of the coordinator.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use airlock_protocol::api::{ClaimRequest, EgressIps, ErrorBody, Session, SetEgressIps};
use airlock_protocol::token::Role;

/// What went wrong talking to a coordinator.
#[derive(Debug, thiserror::Error)]
pub enum ApiClientError {
    #[error("cannot reach the coordinator at {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The coordinator answered with an error; `message` says what to do.
    #[error("the coordinator answered {status}: {message}")]
    Refused {
        status: u16,
        code: String,
        message: String,
        /// Seconds to wait before retrying, when the coordinator said.
        retry_after: Option<u64>,
    },
    #[error("the coordinator's answer does not decode: {0}")]
    Decode(#[source] reqwest::Error),
}

/// A client of one coordinator (any coordinator of the region will do).
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl ApiClient {
    /// `base` is the API's URL (`http://127.0.0.1:7700`); `token` a backend or operator token.
    pub fn new(base: &str, token: &str) -> Result<Self, ApiClientError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|source| ApiClientError::Unreachable {
                url: base.to_owned(),
                source,
            })?;
        Ok(ApiClient {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Claims a session on `document` for `user`, under the default tenant.
    pub async fn claim(
        &self,
        document: &str,
        user: &str,
        role: Role,
    ) -> Result<Session, ApiClientError> {
        self.claim_for_tenant(document, None, user, role).await
    }

    /// Claims a session on `document` of `tenant` (`None`: the default tenant) for `user`.
    /// A document open under another tenant is refused: 409 `tenant_mismatch`.
    pub async fn claim_for_tenant(
        &self,
        document: &str,
        tenant: Option<&str>,
        user: &str,
        role: Role,
    ) -> Result<Session, ApiClientError> {
        let body = ClaimRequest {
            user: user.to_owned(),
            role,
            tier: None,
            tenant: tenant.map(str::to_owned),
        };
        let path = format!("/v1/documents/{document}/session");
        self.call(reqwest::Method::POST, &path, Some(&body)).await
    }

    /// The region's static egress IP sets (backend or operator token). A tenant absent from
    /// them has no static IPs published.
    pub async fn egress_ips(&self) -> Result<EgressIps, ApiClientError> {
        self.call::<(), _>(reqwest::Method::GET, "/v1/egress-ips", None)
            .await
    }

    /// Replaces the region's static egress IP sets as a whole (operator token); returns them as
    /// published (addresses sorted and deduplicated, tenants without addresses left out).
    pub async fn set_egress_ips(
        &self,
        tenants: BTreeMap<String, Vec<IpAddr>>,
    ) -> Result<EgressIps, ApiClientError> {
        let body = SetEgressIps { tenants };
        self.call(reqwest::Method::PUT, "/v1/egress-ips", Some(&body))
            .await
    }

    /// `GET` a JSON document (`/v1/status`, `/v1/pool`, …).
    pub async fn get(&self, path: &str) -> Result<serde_json::Value, ApiClientError> {
        self.call::<(), _>(reqwest::Method::GET, path, None).await
    }

    /// One request to `path` with the token, and its answer decoded (or its refusal read).
    async fn call<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ApiClientError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|source| ApiClientError::Unreachable { url, source })?;
        Self::decode(response).await
    }

    async fn decode<T: serde::de::DeserializeOwned>(
        response: reqwest::Response,
    ) -> Result<T, ApiClientError> {
        let status = response.status();
        if status.is_success() {
            return response.json().await.map_err(ApiClientError::Decode);
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let body = response
            .json::<ErrorBody>()
            .await
            .unwrap_or_else(|_| ErrorBody {
                error: "unknown".to_owned(),
                message: format!("no explanation came with the {status} answer"),
            });
        Err(ApiClientError::Refused {
            status: status.as_u16(),
            code: body.error,
            message: body.message,
            retry_after,
        })
    }
}
