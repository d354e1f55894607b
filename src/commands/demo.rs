//! `airlock demo`: a guided tour of one document on this machine.
//!
//! It starts a region on this machine (as `airlock dev` does), claims a document through the
//! coordinator, connects one client over QUIC and one over WebSocket, and shows what each sees:
//! shared outputs, rich display, errors, an interrupt, the jail, a connection the egress gateway
//! refuses, a reactive notebook, a refusal, and the timings. Everything it starts, it stops.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use airlock_client::coordinator::ApiClient;
use airlock_client::{Client, ClientError, Target, Trust};
use airlock_coordinator::service::Session;
use airlock_protocol::token::Role;
use airlock_protocol::{ClientMessage, Output, RunStatus, ServerMessage};
use anyhow::{Context as _, bail};

use super::dev::{DevOptions, DevRegion};
use super::dev_egress::KernelNetwork;
use super::render::{Renderer, describe};
use super::{JailArgs, PythonArgs};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// How many `x = 1` round trips to time on each transport.
    #[arg(long, default_value_t = 200)]
    round_trips: usize,
    #[command(flatten)]
    python: PythonArgs,
    #[command(flatten)]
    jail: JailArgs,
    /// Run no egress gateway: kernels then have no network at all, and the tour's egress step
    /// says so instead of trying the metadata address.
    #[arg(long)]
    no_egress: bool,
}

const DOC: &str = "demo-notebook";

/// Capability tokens the coordinator issued for the tour's three people.
struct Tokens {
    ada: String,
    grace: String,
    visitor: String,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    step("Preparing the Python environment kernels run in");
    let python = args.python.interpreter().await?;
    say(&format!("interpreter: {}", python.display()));
    let insecure = args.jail.config()?.is_none();

    step(&format!(
        "Starting a region on this machine: a coordinator (Raft, one member), a warm pool of 2 \
         jailed kernels, {}a document store",
        if args.no_egress || insecure {
            ""
        } else {
            "the egress gateway, "
        }
    ));
    let data = tempfile::tempdir().context("making a data folder")?;
    let t = Instant::now();
    let region = DevRegion::start(DevOptions {
        api: ([127, 0, 0, 1], 0).into(),
        data: data.path().to_owned(),
        warm: 2,
        insecure_no_jail: insecure,
        no_egress: args.no_egress,
        python: Some(python),
    })
    .await?;
    say(&format!("coordinator API at {}", region.api_url));
    for line in region.network_lines() {
        say(&line);
    }
    let warm = region.wait_warm(2, Duration::from_secs(180)).await;
    let result = match warm {
        Ok(_) => {
            say(&format!("pool warm in {} ms", t.elapsed().as_millis()));
            tour(&region, args.round_trips).await
        }
        Err(err) => Err(err),
    };
    step("Shutting down: the region stops its kernels");
    region.shutdown().await;
    result?;
    println!(
        "\nDone in {:.1} s. Next: `airlock dev` keeps a region running; `airlock dev --help` shows \
         what to try.",
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// Claims the demo document, then tours it.
async fn tour(region: &DevRegion, round_trips: usize) -> anyhow::Result<()> {
    step(
        "A backend claims a session on \"demo-notebook\" (POST /v1/documents/demo-notebook/session)",
    );
    let api = ApiClient::new(&region.api_url, &region.operator_token)?;
    let t = Instant::now();
    let session = api.claim(DOC, "ada", Role::Editor).await?;
    let claim_ms = t.elapsed().as_secs_f64() * 1e3;
    say(&format!(
        "claimed in {claim_ms:.1} ms: task {} (epoch {}), QUIC {}",
        session.task,
        session.epoch,
        session.quic.as_deref().unwrap_or("-")
    ));
    let grace = api.claim(DOC, "grace", Role::Editor).await?;
    let visitor = api.claim(DOC, "visitor", Role::Viewer).await?;
    say(&format!(
        "a second claim finds the same task: {} (fresh: {})",
        grace.task, grace.fresh
    ));
    let (quic, ws) = targets(&session)?;
    let tokens = Tokens {
        ada: session.token.clone(),
        grace: grace.token,
        visitor: visitor.token,
    };
    let mut ada = Client::connect(&quic, &tokens.ada).await?;
    let report = ada.run("1 + 1", |_| {}).await?;
    let first_ms = t.elapsed().as_secs_f64() * 1e3;
    say(&format!(
        "claim → first execute result: {first_ms:.1} ms (target p50 <= 25 ms; Jupyter's bare \
         kernel cold start is ~600 ms)"
    ));
    print_outputs("ada sees", &report.outputs);
    ada.close().await;
    people(&quic, &ws, &tokens, &region.network, round_trips).await
}

fn targets(session: &Session) -> anyhow::Result<(Target, Target)> {
    let quic = Target::Quic {
        addr: session
            .quic
            .as_deref()
            .context("the task has no QUIC endpoint")?
            .parse()
            .context("the task's QUIC address")?,
        server_name: "localhost".into(),
        trust: Trust::Fingerprint(session.fingerprint.clone()),
    };
    let ws = Target::WebSocket {
        url: session
            .websocket
            .clone()
            .context("the task has no WebSocket endpoint")?,
        json: false,
    };
    Ok((quic, ws))
}

/// The notebook the demo imports: Python, a SQL cell over a dataframe, and markdown.
const NOTEBOOK: &str = include_str!("../../examples/orders-by-region.ipynb");

/// Imports a notebook, runs it in graph order, then edits one cell and shows exactly which cells
/// run again.
async fn notebook_tour(ada: &mut Client, grace: &mut Client) -> anyhow::Result<()> {
    step("A reactive notebook: examples/orders-by-region.ipynb (Python, SQL, markdown)");
    let imported = ada.import_ipynb(NOTEBOOK.to_owned()).await?;
    say(&format!("imported {} cells", imported.created.len()));
    let accepted = ada.run_cells(Vec::new(), false).await?;
    say(&format!(
        "running in graph order: {}",
        accepted.queued.join(" → ")
    ));
    let t = Instant::now();
    let runs = tokio::time::timeout(
        Duration::from_secs(120),
        ada.follow_accepted(&accepted, |_| {}),
    )
    .await
    .context("the notebook did not finish within 2 minutes")??;
    for line in super::render::runs_table(&runs).lines() {
        say(line);
    }
    say(&format!("whole notebook: {} ms", t.elapsed().as_millis()));

    step("Grace changes the discount; only the cells that read it run again");
    show_code("discount = 0.25");
    let t = Instant::now();
    let accepted = grace
        .edit_cells(
            vec![airlock_protocol::CellEdit::SetSource {
                cell: "discount".into(),
                source: "discount = 0.25".into(),
            }],
            true,
        )
        .await?;
    say(&format!("re-running: {}", accepted.queued.join(" → ")));
    let runs = tokio::time::timeout(
        Duration::from_secs(60),
        grace.follow_accepted(&accepted, |_| {}),
    )
    .await
    .context("the re-run did not finish within a minute")??;
    for line in super::render::runs_table(&runs).lines() {
        say(line);
    }
    if let Some(top) = runs.iter().find(|run| run.cell == "top") {
        print_outputs("grace sees", &top.outputs);
    }
    say(&format!(
        "edit → last dependent done: {} ms; `orders` and `big` did not run (they do not read \
         `discount`)",
        t.elapsed().as_millis()
    ));
    Ok(())
}

async fn people(
    quic: &Target,
    ws: &Target,
    tokens: &Tokens,
    network: &KernelNetwork,
    round_trips: usize,
) -> anyhow::Result<()> {
    step("Ada connects over QUIC, Grace over WebSocket; both are editors");
    let mut ada = Client::connect(quic, &tokens.ada).await?;
    let mut grace = Client::connect(ws, &tokens.grace).await?;
    say(&format!(
        "ada: session {}, grace: session {}",
        ada.welcome().session.0,
        grace.welcome().session.0
    ));

    step("Ada runs a cell; Grace sees its output too");
    let code = "import sys\nprint(f'hello from Python {sys.version.split()[0]}')\n6 * 7";
    show_code(code);
    let report = ada.run(code, |_| {}).await?;
    print_outputs("ada sees", &report.outputs);
    let seen = outputs_of(&mut grace, report.run).await?;
    print_outputs("grace sees", &seen);

    step("Rich output: a display with HTML and plain text");
    let code = "from IPython.display import display, HTML\ndisplay(HTML('<b>bold</b> move'))";
    show_code(code);
    let report = grace.run(code, |_| {}).await?;
    for output in &report.outputs {
        if let Output::DisplayData { data, .. } = output {
            say(&format!(
                "MIME types: {}",
                data.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
            say(&format!("text/plain: {}", describe(data)));
        }
    }

    step("An error comes back as a traceback, and the run is marked as failed");
    let code = "1 / 0";
    show_code(code);
    let report = ada.run(code, |_| {}).await?;
    print_outputs("ada sees", &report.outputs);
    say(&format!("status: {:?}", report.done.status));

    step("An endless loop, interrupted from the other client");
    let code = "print('looping…', flush=True)\nwhile True:\n    pass";
    show_code(code);
    ada.execute(code).await?;
    // Interrupt once the loop has announced itself.
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), grace.recv()).await??;
        if let ServerMessage::Output(out) = message
            && matches!(out.output, Output::Stream { .. })
        {
            break;
        }
    }
    let t = Instant::now();
    grace.send(&ClientMessage::Interrupt).await?;
    let status = wait_done(&mut ada).await?;
    say(&format!(
        "stopped in {} ms with status {status:?}; the kernel is still usable:",
        t.elapsed().as_millis()
    ));
    let report = ada.run("'still here'", |_| {}).await?;
    print_outputs("ada sees", &report.outputs);

    jail_step(&mut ada, network.gateway().is_some()).await?;
    egress_step(&mut ada, network).await?;

    notebook_tour(&mut ada, &mut grace).await?;

    step("A viewer may watch but not run code");
    let mut viewer = Client::connect(ws, &tokens.visitor).await?;
    match viewer.run("print('sneaky')", |_| {}).await {
        Err(ClientError::Refused(reply)) => {
            say(&format!("refused ({}): {}", reply.code, reply.message))
        }
        other => bail!("the viewer was not refused: {other:?}"),
    }
    viewer.close().await;

    step(&format!(
        "Round trip of `x = 1`, {round_trips} times on each transport"
    ));
    let quic_rtt = round_trip(&mut ada, round_trips).await?;
    let ws_rtt = round_trip(&mut grace, round_trips).await?;
    println!("    {:<12} {:>10} {:>10}", "transport", "p50", "p99");
    for (name, rtt) in [("QUIC", quic_rtt), ("WebSocket", ws_rtt)] {
        println!("    {:<12} {:>8.2}ms {:>8.2}ms", name, rtt.0, rtt.1);
    }
    say(
        "`cargo bench --bench exec_rtt` compares these with direct ZeroMQ and Jupyter Kernel Gateway.",
    );
    ada.close().await;
    grace.close().await;
    Ok(())
}

/// Shows what the jail refuses. With the egress gateway, TCP leaves through it (the next step),
/// so the network attempt here is UDP, which the kernel's namespace drops.
async fn jail_step(ada: &mut Client, egress: bool) -> anyhow::Result<()> {
    let (title, network_attempt) = if egress {
        (
            "The kernel runs in a jail: no host files, no network but the egress gateway, no privileges",
            "attempt('send UDP to 1.1.1.1:53', lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('1.1.1.1', 53)))",
        )
    } else {
        (
            "The kernel runs in a jail: no host files, no network, no privileges",
            "attempt('connect 1.1.1.1:80', lambda: socket.create_connection(('1.1.1.1', 80), timeout=2))",
        )
    };
    step(title);
    let code = format!(
        "import os, socket\n\
         def attempt(what, f):\n\
         \x20   try:\n\
         \x20       f(); print(f'{{what}}: allowed')\n\
         \x20   except OSError as e:\n\
         \x20       print(f'{{what}}: {{e.strerror}}')\n\
         attempt('read /etc/shadow', lambda: open('/etc/shadow').read())\n\
         attempt('write /usr/evil', lambda: open('/usr/evil', 'w'))\n\
         {network_attempt}\n\
         print('processes visible:', sum(p.isdigit() for p in os.listdir('/proc')), '| uid:', os.getuid())"
    );
    let shown = network_attempt
        .split_once(", lambda")
        .map_or(network_attempt, |(head, _)| head);
    show_code(&format!(
        "attempt('read /etc/shadow', …); attempt('write /usr/evil', …); {shown}, …)"
    ));
    let report = ada.run(&code, |_| {}).await?;
    print_outputs("ada sees", &report.outputs);
    Ok(())
}

/// What a kernel's notice of a refused connection starts with (written by the node).
const EGRESS_NOTICE: &str = "[airlock egress]";

/// A cell tries the cloud metadata address; the gateway refuses it at once and the cell says
/// why.
async fn egress_step(ada: &mut Client, network: &KernelNetwork) -> anyhow::Result<()> {
    step(
        "Kernel code reaches out only through the egress gateway: it refuses the cloud metadata address",
    );
    let gateway = match network {
        KernelNetwork::Gateway(gateway) => gateway,
        other => {
            let why = other.without_gateway().unwrap_or_default();
            say(&format!("skipped: egress is {why}"));
            return Ok(());
        }
    };
    let import = "import urllib.request";
    show_code(import);
    ada.run(import, |_| {}).await?;
    let code = "urllib.request.urlopen(\"http://169.254.169.254/latest/meta-data/\", timeout=5)";
    show_code(code);
    let mut audit = gateway.subscribe();
    let t = Instant::now();
    let mut notice_after = None;
    let report = ada
        .run(code, |message| {
            if let ServerMessage::Output(out) = message
                && let Output::Stream { text, .. } = &out.output
                && text.contains(EGRESS_NOTICE)
            {
                notice_after.get_or_insert_with(|| t.elapsed());
            }
        })
        .await?;
    let took = t.elapsed();
    print_outputs("ada sees", &report.outputs);
    match notice_after {
        Some(after) => say(&format!(
            "refused in {:.1} ms: the reason reached ada that long after she ran the cell (the \
             cell ended, traceback and all, at {:.0} ms; nothing waited for the 5 s timeout)",
            after.as_secs_f64() * 1e3,
            took.as_secs_f64() * 1e3
        )),
        None => bail!(
            "the cell got no `{EGRESS_NOTICE}` line; see the task logs and {}",
            gateway.files.audit.display()
        ),
    }
    let record = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match audit.recv().await {
                Ok(record) if record.requested_host == "169.254.169.254" => return Some(record),
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
    .await
    .ok()
    .flatten();
    if let Some(record) = record {
        say(&format!(
            "audit record (flow {}, {}): tenant {}, document {}, node {}, verdict {} ({}), decided in {} ms",
            record.flow,
            gateway.files.audit.display(),
            record.tenant,
            record.document,
            record.node.as_deref().unwrap_or("-"),
            format!("{:?}", record.verdict).to_lowercase(),
            record.class,
            record.duration_ms
        ));
    }
    Ok(())
}

/// Collects the outputs of `run` as another client sees them.
async fn outputs_of(
    client: &mut Client,
    run: airlock_protocol::RunId,
) -> anyhow::Result<Vec<Output>> {
    let mut outputs = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), client.recv()).await?? {
            ServerMessage::Output(out) if out.run == run => outputs.push(out.output),
            ServerMessage::Done(done) if done.run == run => return Ok(outputs),
            _ => {}
        }
    }
}

async fn wait_done(client: &mut Client) -> anyhow::Result<RunStatus> {
    loop {
        if let ServerMessage::Done(done) =
            tokio::time::timeout(Duration::from_secs(10), client.recv()).await??
        {
            return Ok(done.status);
        }
    }
}

/// p50 and p99 in milliseconds of `n` runs of `x = 1`.
async fn round_trip(client: &mut Client, n: usize) -> anyhow::Result<(f64, f64)> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        client.run("x = 1", |_| {}).await?;
        samples.push(t.elapsed().as_secs_f64() * 1e3);
    }
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    Ok((at(0.5), at(0.99)))
}

fn step(title: &str) {
    println!("\n==> {title}");
}

fn say(line: &str) {
    println!("    {line}");
}

fn show_code(code: &str) {
    for line in code.lines() {
        println!("    >>> {line}");
    }
}

fn print_outputs(who: &str, outputs: &[Output]) {
    let renderer = Renderer::new(false);
    for output in outputs {
        match output {
            Output::Stream { text, .. } => {
                for line in text.lines() {
                    say(&format!("{who}: {line}"));
                }
            }
            Output::ExecuteResult { data, .. } => say(&format!("{who}: {}", describe(data))),
            Output::Error { ename, evalue, .. } => say(&format!("{who}: {ename}: {evalue}")),
            other => renderer.output(other),
        }
    }
}
