//! Three `airlock coordinator` processes on loopback with a warm pool of real `airlock node`
//! tasks: claims through any member, the leader killed and restarted, a member paused, many
//! concurrent claims, a rolling upgrade; and a single member whose tasks cannot start, whose
//! egress IP sets `airlock coordinator egress-ips` sets and which keeps them across a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use airlock_client::coordinator::{ApiClient, ApiClientError};
use airlock_protocol::token::Role;
use airlock_test_kit::{Check, eventually, eventually_paced, ready_if};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

const OPERATOR: &str = "operator-token-for-tests-0001";
const BACKEND: &str = "backend-token-for-tests-0002";

struct Member {
    id: u64,
    child: Option<Child>,
    api: String,
    args: Vec<String>,
    log: PathBuf,
}

impl Member {
    fn start(&mut self) {
        let log = std::fs::File::create(&self.log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_airlock"))
            .args(&self.args)
            .env("AIRLOCK_LOG", "warn,airlock_coordinator=info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("airlock coordinator starts");
        self.child = Some(child);
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().unwrap().id() as i32)
    }

    fn client(&self, token: &str) -> ApiClient {
        ApiClient::new(&self.api, token).unwrap()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGCONT);
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            if airlock_test_kit::exited_within(&mut child, Duration::from_secs(15)) {
                return;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn airlock(args: &[&str]) {
    let status = Command::new(env!("CARGO_BIN_EXE_airlock"))
        .args(args)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "airlock {args:?}");
}

/// A region of `count` members in `dir`, each with extra arguments `extra`.
fn region(dir: &Path, count: u64, extra: &[&str]) -> Vec<Member> {
    let tls = dir.join("tls");
    airlock(&[
        "coordinator",
        "certs",
        "--out",
        tls.to_str().unwrap(),
        "--count",
        &count.to_string(),
    ]);
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, format!("operator {OPERATOR}\nbackend {BACKEND}\n")).unwrap();
    let ports: Vec<(u16, u16)> = (0..count).map(|_| (free_port(), free_port())).collect();
    let members: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, (raft, _))| format!("{}=127.0.0.1:{raft}", i + 1))
        .collect();
    let advertise: Vec<String> = ports
        .iter()
        .map(|(_, api)| format!("http://127.0.0.1:{api}"))
        .collect();
    (1..=count)
        .zip(&ports)
        .map(|(id, (raft, api))| {
            let data = dir.join(format!("c{id}"));
            let mut args: Vec<String> = [
                "coordinator",
                "run",
                "--id",
                &id.to_string(),
                "--raft",
                &format!("127.0.0.1:{raft}"),
                "--api",
                &format!("127.0.0.1:{api}"),
                "--advertise",
                &advertise.join(","),
                "--data",
                data.to_str().unwrap(),
                "--tls-dir",
                tls.to_str().unwrap(),
                "--members",
                &members.join(","),
                "--api-token-file",
                tokens.to_str().unwrap(),
                "--store",
                dir.join("store").to_str().unwrap(),
                "--tasks-dir",
                // Short: kernel socket paths must stay under 108 bytes.
                &format!("/tmp/al-{}-{id}", std::process::id()),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            args.extend(extra.iter().map(|s| s.to_string()));
            let mut member = Member {
                id,
                child: None,
                api: format!("http://127.0.0.1:{api}"),
                args,
                log: dir.join(format!("c{id}.log")),
            };
            member.start();
            member
        })
        .collect()
}

async fn status(member: &Member) -> Option<Value> {
    member.client(OPERATOR).get("/v1/status").await.ok()
}

/// Waits until some member reports a leader and `warm` warm tasks.
async fn wait_warm(members: &[Member], warm: u64, patience: Duration) -> Value {
    let what = format!("a leader with {warm} warm tasks");
    eventually_paced(&what, patience, Duration::from_millis(200), || async {
        let mut seen = Vec::new();
        for member in members {
            if let Some(status) = status(member).await {
                let warm_now: u64 = status["counts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| c["counts"]["warm"].as_u64().unwrap_or(0))
                    .sum();
                if !status["cluster"]["leader"].is_null() && warm_now >= warm {
                    return Check::Ready(status);
                }
                seen.push((member.id, warm_now));
            }
        }
        Check::NotYet(seen)
    })
    .await
}

/// Waits until `member` answers its status with `holds`, and returns that status.
async fn status_until(
    member: &Member,
    what: &str,
    patience: Duration,
    holds: impl Fn(&Value) -> bool,
) -> Value {
    eventually_paced(what, patience, Duration::from_millis(100), || async {
        match status(member).await {
            Some(status) if holds(&status) => Check::Ready(status),
            seen => Check::NotYet(seen),
        }
    })
    .await
}

/// Every document served by one task, every task serving at most one document.
fn check_allocations(status: &Value) -> BTreeMap<String, String> {
    let mut by_doc = BTreeMap::new();
    for allocation in status["documents"].as_array().unwrap() {
        let doc = allocation["document"].as_str().unwrap().to_owned();
        let task = allocation["task"].as_str().unwrap().to_owned();
        assert!(by_doc.insert(doc.clone(), task).is_none(), "{doc} twice");
    }
    let tasks: BTreeSet<&String> = by_doc.values().collect();
    assert_eq!(
        tasks.len(),
        by_doc.len(),
        "a task serves two documents: {by_doc:?}"
    );
    for task in status["tasks"].as_array().unwrap() {
        if task["state"]["state"] == "claimed" {
            let doc = task["state"]["document"].as_str().unwrap();
            assert_eq!(
                by_doc.get(doc),
                task["id"].as_str().map(str::to_owned).as_ref()
            );
        }
    }
    by_doc
}

/// How many new documents the rolling upgrade's stream of claims opens.
const NEW_DOCUMENTS_DURING_UPGRADE: usize = 3;

/// How many tasks a status lists in each (state, version), for a failure message.
fn tasks_by_state_and_version(status: &Value) -> BTreeMap<(String, String), usize> {
    let mut counts = BTreeMap::new();
    for task in status["tasks"].as_array().into_iter().flatten() {
        let key = (
            task["state"]["state"].as_str().unwrap_or("?").to_owned(),
            task["version"].as_str().unwrap_or("?").to_owned(),
        );
        *counts.entry(key).or_default() += 1;
    }
    counts
}

async fn claim(
    member: &Member,
    doc: &str,
) -> Result<airlock_coordinator::service::Session, ApiClientError> {
    member
        .client(BACKEND)
        .claim(doc, "tester", Role::Editor)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_coordinators_fail_over_and_never_double_allocate() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = region(
        dir.path(),
        3,
        &[
            "--warm",
            "3",
            "--ceiling",
            "16",
            "--insecure-no-jail",
            "--claim-wait",
            "30",
        ],
    );
    wait_warm(&members, 3, Duration::from_secs(120)).await;

    // Claims through any member; the same document always gets the same task.
    let a = claim(&members[0], "doc-a").await.unwrap();
    let b = claim(&members[1], "doc-b").await.unwrap();
    let a_again = claim(&members[2], "doc-a").await.unwrap();
    assert!(a.fresh && b.fresh && !a_again.fresh);
    assert_eq!(a.task, a_again.task);
    assert_eq!(a.epoch, a_again.epoch);
    assert_ne!(a.task, b.task);

    // Kill the leader: claims succeed again within 1.5 s through the others.
    let leader = status(&members[0]).await.unwrap()["cluster"]["leader"]
        .as_u64()
        .unwrap();
    let leader_at = members.iter().position(|m| m.id == leader).unwrap();
    let survivor = (leader_at + 1) % 3;
    let killed = Instant::now();
    kill(members[leader_at].pid(), Signal::SIGKILL).unwrap();
    let _ = members[leader_at].child.as_mut().unwrap().wait();
    members[leader_at].child = None;
    eventually(
        "a claim after the leader died",
        Duration::from_secs(10),
        || async {
            match claim(&members[survivor], "doc-a").await {
                Ok(_) => Check::Ready(()),
                Err(err) => Check::NotYet(err),
            }
        },
    )
    .await;
    let failover = killed.elapsed();
    println!(
        "leader {leader} killed -> claims succeed again after {} ms",
        failover.as_millis()
    );
    assert!(
        failover <= Duration::from_millis(1500),
        "failover took {failover:?}"
    );
    let c = match claim(&members[survivor], "doc-c").await {
        Ok(c) => c,
        Err(err) => panic!(
            "claim after failover: {err}\nstatus: {}\nlog: {}",
            status(&members[survivor]).await.unwrap_or_default(),
            std::fs::read_to_string(&members[survivor].log).unwrap_or_default()
        ),
    };
    assert!(c.epoch > a.epoch);

    // The old leader restarts from its data and rejoins.
    members[leader_at].start();
    status_until(
        &members[leader_at],
        "the old leader rejoins and knows the three documents",
        Duration::from_secs(30),
        |status| {
            !status["cluster"]["leader"].is_null()
                && status["documents"].as_array().is_some_and(|d| d.len() >= 3)
        },
    )
    .await;

    // Pause the current leader; claims go on through the others; resume it.
    wait_warm(&members, 1, Duration::from_secs(60)).await;
    let leader = status(&members[survivor]).await.unwrap()["cluster"]["leader"]
        .as_u64()
        .unwrap();
    let paused_at = members.iter().position(|m| m.id == leader).unwrap();
    let other = (paused_at + 1) % 3;
    kill(members[paused_at].pid(), Signal::SIGSTOP).unwrap();
    let during = claim(&members[other], "doc-d").await.unwrap();
    kill(members[paused_at].pid(), Signal::SIGCONT).unwrap();
    let after = claim(&members[paused_at], "doc-d").await.unwrap();
    assert_eq!(
        (&during.task, during.epoch),
        (&after.task, after.epoch),
        "a paused leader must not hand doc-d out again; what the members logged of leases:\n{}",
        members
            .iter()
            .map(|m| std::fs::read_to_string(&m.log).unwrap_or_default())
            .flat_map(|log| {
                log.lines()
                    .filter(|l| l.contains("lease"))
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Many clients claim many documents at once through all members.
    let mut claims = Vec::new();
    for round in 0..2 {
        for (i, member) in members.iter().enumerate() {
            for d in 0..3 {
                let client = member.client(BACKEND);
                let doc = format!("burst-{}", (i + d + round) % 6);
                claims.push(tokio::spawn(async move {
                    (doc.clone(), client.claim(&doc, "burst", Role::Editor).await)
                }));
            }
        }
    }
    let mut served: BTreeMap<String, (String, u64)> = BTreeMap::new();
    for claim in claims {
        let (doc, session) = claim.await.unwrap();
        let session = session.unwrap_or_else(|err| panic!("claim of {doc}: {err}"));
        let entry = served
            .entry(doc.clone())
            .or_insert((session.task.clone(), session.epoch));
        assert_eq!(entry, &(session.task, session.epoch), "{doc} got two tasks");
    }
    let tasks: BTreeSet<&String> = served.values().map(|(task, _)| task).collect();
    assert_eq!(tasks.len(), served.len(), "a task got two documents");

    // Every member agrees, and no document has two tasks.
    // (Followers apply the log a moment after the leader answers: wait until they have.)
    eventually(
        "every member shows the same allocations",
        Duration::from_secs(10),
        || async {
            let mut views = Vec::new();
            for member in &members {
                views.push(check_allocations(&status(member).await.unwrap()));
            }
            ready_if(views.windows(2).all(|w| w[0] == w[1]), (), views)
        },
    )
    .await;

    // A rolling upgrade under a steady stream of claims fails no claim.
    let operator = members[other].client(OPERATOR);
    let upgrade = reqwest::Client::new()
        .put(format!("{}/v1/pool/standard", operator.base()))
        .bearer_auth(OPERATOR)
        .json(&serde_json::json!({"floor": 3, "ceiling": 16, "buffer_factor": 2.0, "version": "0.2.0-next"}))
        .send()
        .await
        .unwrap();
    assert_eq!(upgrade.status(), 204);
    let started = Instant::now();
    let claims_made = std::cell::Cell::new(0usize);
    let upgraded = eventually_paced(
        "the rolling upgrade leaves 3 or more warm tasks, all of the new version",
        Duration::from_secs(120),
        Duration::from_millis(250),
        || async {
            let n = claims_made.get();
            // Mostly documents already open (each claim still goes through the log), and a new
            // one every fourth time (which takes a warm task) for the first dozen claims. On a
            // loaded machine a new task can take as long to start as the claims take to use one;
            // the upgrade must then end once new documents stop arriving, not outrun them.
            let doc = if n.is_multiple_of(4) && n < NEW_DOCUMENTS_DURING_UPGRADE * 4 {
                format!("upgrade-{n}")
            } else {
                format!("burst-{}", n % 6)
            };
            claim(&members[n % 3], &doc)
                .await
                .unwrap_or_else(|err| panic!("claim {doc} during the upgrade: {err}"));
            claims_made.set(n + 1);
            let status = status(&members[other]).await.unwrap();
            let warm: Vec<&Value> = status["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|t| t["state"]["state"] == "warm")
                .collect();
            let upgraded = warm.len() >= 3 && warm.iter().all(|t| t["version"] == "0.2.0-next");
            let seen = format!(
                "{} claims; tasks by (state, version): {:?}",
                n + 1,
                tasks_by_state_and_version(&status)
            );
            ready_if(upgraded, status, seen)
        },
    )
    .await;
    println!(
        "rolling upgrade finished in {} ms with {} claims served during it",
        started.elapsed().as_millis(),
        claims_made.get()
    );
    check_allocations(&upgraded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_and_a_driver_that_cannot_start_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let members = region(
        dir.path(),
        1,
        &[
            "--warm",
            "2",
            "--claim-wait",
            "1",
            "--task-command",
            "/bin/false",
        ],
    );
    let member = &members[0];
    // Wait for the member to lead.
    status_until(member, "the member leads", Duration::from_secs(30), |s| {
        !s["cluster"]["leader"].is_null()
    })
    .await;
    let http = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", member.api);

    // Bearer tokens.
    let none = http
        .post(url("/v1/documents/x/session"))
        .json(&serde_json::json!({"user": "u", "role": "editor"}))
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 401);
    let wrong = http
        .post(url("/v1/documents/x/session"))
        .bearer_auth("not-a-token")
        .json(&serde_json::json!({"user": "u", "role": "editor"}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let backend_on_operator_route = http
        .get(url("/v1/tasks"))
        .bearer_auth(BACKEND)
        .send()
        .await
        .unwrap();
    assert_eq!(backend_on_operator_route.status(), 403);
    let task_without_secret = http
        .post(url("/v1/tasks/t-nope/heartbeat"))
        .bearer_auth("guess")
        .send()
        .await
        .unwrap();
    assert_eq!(task_without_secret.status(), 401);

    // Odd and oversized document ids, bad and oversized bodies.
    for id in ["semi;colon", "a%2Fb", "sp%20ace", &"x".repeat(129)] {
        let response = http
            .post(url(&format!("/v1/documents/{id}/session")))
            .bearer_auth(BACKEND)
            .json(&serde_json::json!({"user": "u", "role": "editor"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "id {id:?}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "bad_document_id");
    }
    let huge = http
        .post(url("/v1/documents/ok/session"))
        .bearer_auth(BACKEND)
        .header("content-type", "application/json")
        .body(format!(
            "{{\"user\":\"{}\",\"role\":\"editor\"}}",
            "u".repeat(100_000)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status(), 413);
    let bad_role = http
        .post(url("/v1/documents/ok/session"))
        .bearer_auth(BACKEND)
        .json(&serde_json::json!({"user": "u", "role": "root"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_role.status(), 422);
    let bad_tenant = http
        .post(url("/v1/documents/ok/session"))
        .bearer_auth(BACKEND)
        .json(&serde_json::json!({"user": "u", "role": "editor", "tenant": "Not/A/Tenant"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_tenant.status(), 400);
    let body: Value = bad_tenant.json().await.unwrap();
    assert_eq!(body["error"], "bad_tenant");

    // Egress IP sets: set from a TOML file with an operator token, read with a backend token.
    let file = dir.path().join("egress-ips.toml");
    std::fs::write(
        &file,
        "acme = [\"203.0.113.11\", \"203.0.113.10\"]\n\"team.eu\" = [\"2001:db8::10\"]\n",
    )
    .unwrap();
    let egress_ips = |token: &str, extra: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_airlock"))
            .args(["coordinator", "egress-ips", "--coordinator", &member.api])
            .args(["--api-token", token])
            .args(extra)
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, _, stderr) = egress_ips(BACKEND, &["--set", file.to_str().unwrap()]);
    assert_eq!(code, Some(2), "a backend token cannot set them");
    assert!(stderr.contains("operator"), "{stderr}");
    let (code, shown, stderr) = egress_ips(OPERATOR, &["--set", file.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        shown.contains("acme") && shown.contains("203.0.113.10 203.0.113.11"),
        "{shown}"
    );
    let (code, json, stderr) = egress_ips(BACKEND, &["--json"]);
    assert_eq!(code, Some(0), "{stderr}");
    let published: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        published["tenants"],
        serde_json::json!({"acme": ["203.0.113.10", "203.0.113.11"], "team.eu": ["2001:db8::10"]})
    );

    // Tasks that fail to start: back-off shows in status and metrics; claims get 503 with
    // Retry-After once the bound runs out.
    let pool = status_until(
        member,
        "the pool reports two failed starts and a back-off",
        Duration::from_secs(30),
        |status| {
            let pool = &status["pools"][0];
            pool["start_failures"].as_u64().unwrap_or(0) >= 2 && !pool["backoff"].is_null()
        },
    )
    .await["pools"][0]
        .clone();
    println!("pool while its tasks fail: {pool}");
    let metrics = http
        .get(url("/metrics"))
        .bearer_auth(OPERATOR)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("airlock_pool"), "pool metrics exported");
    let empty = claim(member, "nobody-home").await;
    match empty {
        Err(ApiClientError::Refused {
            status,
            code,
            retry_after,
            ..
        }) => {
            assert_eq!(status, 503);
            assert_eq!(code, "no_warm_task");
            assert!(retry_after.is_some());
        }
        other => panic!("a claim with an empty pool: {other:?}"),
    }

    // The sets survive a restart of the member (its redb state, then its log).
    let mut members = members;
    let member = &mut members[0];
    kill(member.pid(), Signal::SIGTERM).unwrap();
    let _ = member.child.as_mut().unwrap().wait();
    member.child = None;
    member.start();
    let member = &*member;
    let again = eventually(
        "the restarted member answers egress-ips",
        Duration::from_secs(30),
        || async {
            match member.client(BACKEND).egress_ips().await {
                Ok(ips) => Check::Ready(ips),
                Err(err) => Check::NotYet(err),
            }
        },
    )
    .await;
    assert_eq!(serde_json::to_value(&again).unwrap(), published);
}
