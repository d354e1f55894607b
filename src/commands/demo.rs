//! `airlock demo`: a guided tour of one document on this machine.
//!
//! It starts a region on this machine (as `airlock dev` does), claims a document through the
//! coordinator, connects one client over QUIC and one over WebSocket, and shows what each sees:
//! shared outputs, rich display, errors, an interrupt, the jail, a reactive notebook, a refusal,
//! and the timings. Everything it starts, it stops.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use airlock_client::{Client, ClientError, Target, Trust};
use airlock_coordinator::client::ApiClient;
use airlock_coordinator::service::Session;
use airlock_protocol::token::Role;
use airlock_protocol::{ClientMessage, Output, RunStatus, ServerMessage};
use anyhow::{Context as _, bail};

use super::dev::{DevOptions, DevRegion};
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

    step(
        "Starting a region on this machine: a coordinator (Raft, one member), a warm pool of 2 jailed kernels, a document store",
    );
    let data = tempfile::tempdir().context("making a data folder")?;
    let t = Instant::now();
    let region = DevRegion::start(DevOptions {
        api: ([127, 0, 0, 1], 0).into(),
        data: data.path().to_owned(),
        warm: 2,
        insecure_no_jail: insecure,
        python: Some(python),
    })
    .await?;
    say(&format!("coordinator API at {}", region.api_url));
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
    people(&quic, &ws, &tokens, round_trips).await
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

    step("The kernel runs in a jail: no host files, no network, no privileges");
    let code = "import os, socket\n\
                def attempt(what, f):\n\
                \x20   try:\n\
                \x20       f(); print(f'{what}: allowed')\n\
                \x20   except OSError as e:\n\
                \x20       print(f'{what}: {e.strerror}')\n\
                attempt('read /etc/shadow', lambda: open('/etc/shadow').read())\n\
                attempt('write /usr/evil', lambda: open('/usr/evil', 'w'))\n\
                attempt('connect 1.1.1.1:80', lambda: socket.create_connection(('1.1.1.1', 80), timeout=2))\n\
                print('processes visible:', sum(p.isdigit() for p in os.listdir('/proc')), '| uid:', os.getuid())";
    show_code(
        "attempt('read /etc/shadow', …); attempt('write /usr/evil', …); attempt('connect 1.1.1.1:80', …)",
    );
    let report = ada.run(code, |_| {}).await?;
    print_outputs("ada sees", &report.outputs);

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
