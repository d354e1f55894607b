//! The HTTP API in process, over a one-replica log in memory (no Raft, no driver): claims carry
//! a tenant, and the region's egress IP sets are set by operators and read by backends.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_client::coordinator::{ApiClient, ApiClientError};
use airlock_coordinator::api::{self, Api, ApiRole, ApiToken};
use airlock_coordinator::driver::local::LocalDriver;
use airlock_coordinator::model::{
    Command, Endpoints, Region, Response, RuntimeVersion, TaskId, TaskState, Tier,
};
use airlock_coordinator::pool::PoolConfig;
use airlock_coordinator::service::{
    Consensus, ConsensusError, Coordinator, CoordinatorConfig, ManualClock, Tenure,
};
use airlock_coordinator::state::State;
use airlock_protocol::token::Role;
use serde_json::Value;
use tokio::sync::watch;

const OPERATOR: &str = "operator-token-for-tests-0001";
const BACKEND: &str = "backend-token-for-tests-0002";

/// The replicated log of a region of one, in memory: every proposal is applied at once.
struct MemoryLog {
    state: Mutex<(State, u64)>,
    applied: watch::Sender<u64>,
}

impl Consensus for MemoryLog {
    async fn propose(&self, command: Command) -> Result<Response, ConsensusError> {
        let (response, index) = {
            let mut log = self.state.lock().unwrap();
            log.1 += 1;
            let index = log.1;
            (log.0.apply(index, command), index)
        };
        self.applied.send_replace(index);
        Ok(response)
    }

    fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.state.lock().unwrap().0)
    }

    fn applied(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    fn is_leader(&self) -> bool {
        true
    }
}

type Region1 = Coordinator<MemoryLog, LocalDriver>;

/// A coordinator of region `eu` with `warm` warm tasks and its API on a loopback port.
async fn serve(warm: usize) -> (Arc<Region1>, String) {
    // reqwest is built without a default TLS provider; the binary installs this one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let log = Arc::new(MemoryLog {
        state: Mutex::new((State::new(), 0)),
        applied: watch::channel(0).0,
    });
    let mut config = CoordinatorConfig::local("eu", "/nowhere".into(), String::new());
    config.claim_wait = Duration::from_millis(200);
    let coordinator = Arc::new(Coordinator::new(log, None, config, PoolConfig::default()));
    // The leader's first round: the signing key and the pool targets.
    coordinator.lead_once(&mut Tenure::begin(0)).await.unwrap();
    for i in 0..warm {
        let id = TaskId(format!("t{i}"));
        let consensus = coordinator.consensus();
        let add = Command::AddTask {
            id: id.clone(),
            region: Region("eu".into()),
            tier: Tier("standard".into()),
            version: RuntimeVersion(env!("CARGO_PKG_VERSION").into()),
            driver_handle: format!("h{i}"),
            now_ms: airlock_coordinator::service::now_ms(),
            lease_ms: 600_000,
        };
        assert_eq!(consensus.propose(add).await.unwrap(), Response::Ok);
        let ready = Command::TaskReady {
            id,
            endpoints: Endpoints {
                quic: Some(format!("127.0.0.1:{}", 4000 + i)),
                websocket: None,
                fingerprint: "00".into(),
            },
            now_ms: airlock_coordinator::service::now_ms(),
            lease_ms: 600_000,
        };
        assert_eq!(consensus.propose(ready).await.unwrap(), Response::Ok);
    }
    let api = Arc::new(Api {
        coordinator: Arc::clone(&coordinator),
        tokens: vec![
            ApiToken {
                token: OPERATOR.into(),
                role: ApiRole::Operator,
            },
            ApiToken {
                token: BACKEND.into(),
                role: ApiRole::Backend,
            },
        ],
        metrics: None,
        cluster: None,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, api::router(api)).await });
    (coordinator, url)
}

fn refused(result: Result<impl std::fmt::Debug, ApiClientError>) -> (u16, String) {
    match result {
        Err(ApiClientError::Refused { status, code, .. }) => (status, code),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

async fn raw(method: reqwest::Method, url: &str, token: &str, body: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .request(method, url)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

#[tokio::test]
async fn claims_carry_a_tenant_and_another_tenant_is_refused() {
    let (coordinator, url) = serve(3).await;
    let backend = ApiClient::new(&url, BACKEND).unwrap();

    // No tenant: the default one.
    let plain = backend.claim("plain", "ada", Role::Editor).await.unwrap();
    assert_eq!(plain.tenant.as_str(), "default");

    let first = backend
        .claim_for_tenant("shared", Some("acme"), "ada", Role::Editor)
        .await
        .unwrap();
    assert!(first.fresh);
    assert_eq!(first.tenant.as_str(), "acme");
    // The node learns its tenant from the assignment.
    let assignment = coordinator
        .task_assignment(&TaskId(first.task.clone()), Duration::ZERO)
        .await
        .unwrap()
        .expect("the claimed task has an assignment");
    assert_eq!(assignment.tenant, "acme");
    assert_eq!(assignment.document, "shared");

    // Another tenant: 409, and nothing changed.
    let other = backend
        .claim_for_tenant("shared", Some("globex"), "grace", Role::Editor)
        .await;
    match other {
        Err(ApiClientError::Refused {
            status,
            code,
            message,
            ..
        }) => {
            assert_eq!((status, code.as_str()), (409, "tenant_mismatch"));
            assert!(
                message.contains("\"acme\"") && message.contains("\"globex\""),
                "{message}"
            );
        }
        other => panic!("a claim under another tenant: {other:?}"),
    }
    let again = backend
        .claim_for_tenant("shared", Some("acme"), "grace", Role::Viewer)
        .await
        .unwrap();
    assert!(!again.fresh);
    assert_eq!((again.task, again.epoch), (first.task, first.epoch));

    // Bad tenant names: 400 bad_tenant, before anything is proposed.
    for bad in ["Acme", "", "a b", "a/b", &"x".repeat(65)] {
        let (status, code) = refused(
            backend
                .claim_for_tenant("other", Some(bad), "ada", Role::Editor)
                .await,
        );
        assert_eq!((status, code.as_str()), (400, "bad_tenant"), "{bad:?}");
    }
    assert!(coordinator.read(|s| s.allocation("other").is_none()));
    let (status, body) = raw(
        reqwest::Method::POST,
        &format!("{url}/v1/documents/other/session"),
        BACKEND,
        r#"{"user":"ada","role":"editor","tenant":7}"#,
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (422, Some("bad_body")));
}

#[tokio::test]
async fn operators_set_egress_ips_and_backends_read_them() {
    let (coordinator, url) = serve(0).await;
    let operator = ApiClient::new(&url, OPERATOR).unwrap();
    let backend = ApiClient::new(&url, BACKEND).unwrap();

    // Nothing published yet.
    let empty = backend.egress_ips().await.unwrap();
    assert_eq!(empty.region, "eu");
    assert!(empty.tenants.is_empty());
    assert_eq!(empty.updated_ms, None);

    let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
    let sets = BTreeMap::from([
        (
            "acme".to_string(),
            vec![ip("203.0.113.11"), ip("203.0.113.10"), ip("203.0.113.11")],
        ),
        ("globex".to_string(), vec![ip("2001:db8::7")]),
        ("nobody".to_string(), vec![]),
    ]);
    // A backend may read but not set them.
    let (status, code) = refused(backend.set_egress_ips(sets.clone()).await);
    assert_eq!((status, code.as_str()), (403, "forbidden"));

    let set = operator.set_egress_ips(sets).await.unwrap();
    let read = backend.egress_ips().await.unwrap();
    assert_eq!(set, read);
    assert_eq!(read.region, "eu");
    assert!(read.updated_ms.is_some());
    assert_eq!(
        read.tenants,
        BTreeMap::from([
            (
                "acme".to_string(),
                vec![ip("203.0.113.10"), ip("203.0.113.11")]
            ),
            ("globex".to_string(), vec![ip("2001:db8::7")]),
        ]),
        "sorted, deduplicated; a tenant without addresses is absent"
    );
    assert_eq!(
        operator.egress_ips().await.unwrap(),
        read,
        "operators read them too"
    );
    let status = operator.get("/v1/status").await.unwrap();
    assert_eq!(status["egress_ips"]["tenants"]["acme"][0], "203.0.113.10");

    // Bad bodies: 422 with a code that says which part, and nothing changes.
    let put = |body: &'static str| {
        let url = format!("{url}/v1/egress-ips");
        async move { raw(reqwest::Method::PUT, &url, OPERATOR, body).await }
    };
    for (body, code) in [
        (r#"{"tenants":{"acme":["203.0.113.300"]}}"#, "bad_body"),
        (r#"{"tenants":{"acme":["203.0.113.10:80"]}}"#, "bad_body"),
        (r#"{"tenants":{"acme":"203.0.113.10"}}"#, "bad_body"),
        (r#"{"tenants":{},"region":"us"}"#, "bad_body"),
        (r#"{"tenants":{"acme":["0.0.0.0"]}}"#, "bad_egress_ip"),
        (r#"{"tenants":{"acme":["ff02::1"]}}"#, "bad_egress_ip"),
        (
            r#"{"tenants":{"Not Valid":["203.0.113.10"]}}"#,
            "bad_tenant",
        ),
    ] {
        let (status, answer) = put(body).await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (422, Some(code)),
            "{body}: {answer}"
        );
    }
    let (status, _) = put("{not json").await;
    assert_eq!(status, 400);
    let huge = format!(
        r#"{{"tenants":{{"acme":[{}"203.0.113.1"]}}}}"#,
        "\"203.0.113.1\",".repeat(5_000)
    );
    let (status, _) = raw(
        reqwest::Method::PUT,
        &format!("{url}/v1/egress-ips"),
        OPERATOR,
        &huge,
    )
    .await;
    assert_eq!(status, 413);
    let anonymous = reqwest::get(format!("{url}/v1/egress-ips")).await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(backend.egress_ips().await.unwrap(), read, "unchanged");

    // A new set replaces the old one as a whole.
    let replaced = operator
        .set_egress_ips(BTreeMap::from([(
            "globex".to_string(),
            vec![ip("198.51.100.1")],
        )]))
        .await
        .unwrap();
    assert_eq!(replaced.tenants.len(), 1);
    assert_eq!(
        coordinator.read(|s| s.egress_ips().map(|e| e.tenants.len())),
        Some(1)
    );
}

/// A new leader expires no lease for one lease after it took office: heartbeats could not be
/// committed while there was no leader. Time is moved by hand, so the test waits for nothing.
#[tokio::test]
async fn a_new_leader_gives_every_task_one_lease_before_presuming_it_dead() {
    const LEASE_MS: u64 = 5_000;
    let clock = Arc::new(ManualClock::at(1_000_000));
    let log = Arc::new(MemoryLog {
        state: Mutex::new((State::new(), 0)),
        applied: watch::channel(0).0,
    });
    let mut config = CoordinatorConfig::local("eu", "/nowhere".into(), String::new());
    config.lease = Duration::from_millis(LEASE_MS);
    config.clock = clock.clone();
    let coordinator: Region1 = Coordinator::new(log, None, config, PoolConfig::default());
    let id = TaskId("beating".into());
    let add = Command::AddTask {
        id: id.clone(),
        region: Region("eu".into()),
        tier: Tier("standard".into()),
        version: RuntimeVersion("v".into()),
        driver_handle: "h".into(),
        now_ms: coordinator.now_ms(),
        lease_ms: LEASE_MS,
    };
    assert_eq!(
        coordinator.consensus().propose(add).await.unwrap(),
        Response::Ok
    );
    let dead = |coordinator: &Region1| {
        coordinator.read(|s| matches!(s.task(&id).unwrap().state, TaskState::Dead { .. }))
    };

    // The lease runs out during an election; the new leader takes office just after.
    clock.advance(Duration::from_millis(LEASE_MS + 1_000));
    let mut tenure = Tenure::begin(coordinator.now_ms());
    coordinator.lead_once(&mut tenure).await.unwrap();
    assert!(!dead(&coordinator), "expired at once by a new leader");
    clock.advance(Duration::from_millis(LEASE_MS - 1));
    coordinator.lead_once(&mut tenure).await.unwrap();
    assert!(
        !dead(&coordinator),
        "expired within the new leader's first lease"
    );

    // A whole lease into the new term without a heartbeat: the task is presumed dead.
    clock.advance(Duration::from_millis(2));
    coordinator.lead_once(&mut tenure).await.unwrap();
    assert!(
        dead(&coordinator),
        "a task silent for a whole term's lease is dead"
    );
}
