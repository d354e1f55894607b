//! `airlock demo`: a guided tour of one document on this machine.
//!
//! It makes a token key, starts a node with a real kernel, connects one client over QUIC and
//! one over WebSocket, and shows what each sees: shared outputs, rich display, errors, an
//! interrupt, a refusal, and the round-trip times. Everything it starts, it stops.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use airlock_client::{Client, ClientError, Target, Trust};
use airlock_node::kernel::KernelConfig;
use airlock_node::tls::TlsSource;
use airlock_node::{NodeConfig, RunningNode};
use airlock_protocol::token::{self, Claims, Role};
use airlock_protocol::{ClientMessage, FrameLimit, Output, RunStatus, ServerMessage};
use anyhow::{Context as _, bail};

use super::keys::unix_now;
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

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    step("Preparing the Python environment kernels run in");
    let jail = args.jail.config()?;
    let python = args.python.interpreter().await?;
    say(&format!("interpreter: {}", python.display()));

    step("Starting a node for document \"demo-notebook\"");
    let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let runtime = tempfile::tempdir().context("making a runtime folder")?;
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    let t = Instant::now();
    let node = airlock_node::start(NodeConfig {
        document: DOC.into(),
        epoch: 0,
        token_key: key.verifying_key(),
        quic_listen: Some(loopback),
        ws_listen: Some(loopback),
        tls: TlsSource::SelfSigned {
            names: vec!["localhost".into()],
        },
        kernel: KernelConfig {
            jail,
            ..KernelConfig::new(python, runtime.path().to_owned())
        },
        frame_limit: FrameLimit::default(),
        store: runtime.path().join("documents").display().to_string(),
        idle_timeout: None,
    })
    .await?;
    say(&format!(
        "kernel ready in {} ms (pid {})",
        t.elapsed().as_millis(),
        node.kernel_pid.unwrap_or(0)
    ));
    let (quic, ws) = targets(&node)?;
    say(&format!(
        "QUIC {}  cert sha256 {}…",
        node.quic_addr.map(|a| a.to_string()).unwrap_or_default(),
        &node.fingerprint[..16]
    ));
    if let Target::WebSocket { url, .. } = &ws {
        say(&format!("WebSocket {url}"));
    }

    let result = tour(&node, &key, &quic, &ws, args.round_trips).await;
    step("Shutting down");
    let pid = node.kernel_pid;
    node.shutdown().await;
    let leftovers = std::fs::read_dir(runtime.path())
        .map(|d| d.count())
        .unwrap_or(0);
    say(&format!(
        "kernel process gone: {}, files left in the runtime folder: {leftovers}",
        pid.is_none_or(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
    ));
    result?;
    println!(
        "\nDone in {:.1} s. Next: `airlock node --help` to serve a document yourself.",
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
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

async fn tour(
    node: &RunningNode,
    key: &ed25519_dalek::SigningKey,
    quic: &Target,
    ws: &Target,
    round_trips: usize,
) -> anyhow::Result<()> {
    let mint = |user: &str, role: Role| {
        token::sign(
            &Claims {
                doc: DOC.into(),
                user: user.into(),
                role,
                epoch: 0,
                exp: unix_now() + 600,
            },
            key,
        )
    };
    step("Ada connects over QUIC, Grace over WebSocket; both are editors");
    let mut ada = Client::connect(quic, &mint("ada", Role::Editor)).await?;
    let mut grace = Client::connect(ws, &mint("grace", Role::Editor)).await?;
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
    let mut viewer = Client::connect(ws, &mint("visitor", Role::Viewer)).await?;
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
    let _ = node;
    ada.close().await;
    grace.close().await;
    Ok(())
}

fn targets(node: &RunningNode) -> anyhow::Result<(Target, Target)> {
    let quic = Target::Quic {
        addr: node.quic_addr.context("QUIC is off")?,
        server_name: "localhost".into(),
        trust: Trust::Fingerprint(node.fingerprint.clone()),
    };
    let ws = Target::WebSocket {
        url: format!(
            "ws://{}{}",
            node.ws_addr.context("WebSocket is off")?,
            airlock_node::websocket::PATH
        ),
        json: false,
    };
    Ok((quic, ws))
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
