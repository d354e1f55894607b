//! `airlock exec`: run code in a document and print what it produces.
//!
//! Exit status: 0 when the code ran, 1 when it raised, 2 when the node could not be reached or
//! refused, 3 when the run was aborted (interrupt, restart, kernel death).

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use airlock_client::{Client, ClientError, Target, Trust};
use airlock_protocol::{ClientMessage, RunStatus, ServerMessage};
use anyhow::{Context as _, bail};

use super::render::Renderer;

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  airlock exec --connect-file node.json --code 'print(42)'\n  \
    airlock exec --quic 127.0.0.1:4433 --fingerprint <hex> analysis.py\n  \
    echo '1 + 1' | airlock exec --ws ws://127.0.0.1:4434/v1/doc --json\n\n\
    Ctrl-C interrupts the running code; a second Ctrl-C leaves."
)]
pub struct Args {
    /// A file to run, or - for standard input. Without it and without --code, reads stdin.
    #[arg(value_name = "FILE", conflicts_with = "code")]
    file: Option<PathBuf>,
    /// The code to run.
    #[arg(long, short)]
    code: Option<String>,
    #[command(flatten)]
    connection: ConnectArgs,
    /// Print every message from the node as one JSON object per line.
    #[arg(long)]
    json: bool,
}

/// How to reach a node and who to be there; shared by `exec` and `notebook`. Global, so a
/// command with subcommands takes them before or after the subcommand's name.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// The capability token (or set AIRLOCK_TOKEN).
    #[arg(
        global = true,
        long,
        env = "AIRLOCK_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    token: Option<String>,
    /// Read the capability token from a file.
    #[arg(global = true, long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// The JSON file `airlock node --connect-file` wrote: endpoints and certificate fingerprint.
    #[arg(global = true, long, value_name = "FILE")]
    connect_file: Option<PathBuf>,
    /// Connect over QUIC to this address (the default transport).
    #[arg(global = true, long, value_name = "ADDR", conflicts_with = "ws")]
    quic: Option<SocketAddr>,
    /// The SHA-256 fingerprint of the node's certificate, as the node printed it.
    #[arg(global = true, long, value_name = "HEX")]
    fingerprint: Option<String>,
    /// The name the node's certificate is issued for.
    #[arg(global = true, long, default_value = "localhost")]
    server_name: String,
    /// Connect over WebSocket to this URL (ws://host:port/v1/doc).
    #[arg(global = true, long, value_name = "URL")]
    ws: Option<String>,
    /// With a connect file, use its WebSocket endpoint instead of QUIC.
    #[arg(global = true, long, conflicts_with_all = ["quic", "ws"])]
    websocket: bool,
    /// Speak the JSON text form on WebSocket (as browsers do) instead of binary frames.
    #[arg(global = true, long)]
    ws_json: bool,
    /// Ask this coordinator for a session on --doc instead of naming a node (any coordinator
    /// of the region; `airlock dev` prints its URL).
    #[arg(
        global = true,
        long,
        value_name = "URL",
        env = "AIRLOCK_COORDINATOR",
        requires = "doc",
        conflicts_with_all = ["connect_file", "quic", "ws"]
    )]
    coordinator: Option<String>,
    /// The API token for --coordinator (backend or operator).
    #[arg(
        global = true,
        long,
        value_name = "TOKEN",
        env = "AIRLOCK_API_TOKEN",
        hide_env_values = true
    )]
    api_token: Option<String>,
    /// The document to claim a session on, with --coordinator.
    #[arg(global = true, long, value_name = "ID")]
    doc: Option<String>,
    /// Who the session is for, with --coordinator.
    #[arg(global = true, long, value_name = "NAME", default_value = "cli")]
    user: String,
    /// The tenant the document belongs to, with --coordinator: its kernel's connections leave
    /// under this tenant's egress policy and static IPs [default: the coordinator's "default"].
    #[arg(global = true, long, value_name = "NAME")]
    tenant: Option<String>,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let code = read_code(&args)?;
    let renderer = Renderer::new(args.json);
    let mut client = match args.connection.connect().await? {
        Ok(client) => client,
        Err(err) => return Ok(unreachable(&err)),
    };
    if args.json {
        renderer.message(&ServerMessage::Welcome(client.welcome().clone()));
    }
    let status = match drive(&mut client, &code, renderer).await {
        Ok(status) => status,
        Err(err) => return Ok(unreachable(&err)),
    };
    client.close().await;
    Ok(match status {
        RunStatus::Ok => ExitCode::SUCCESS,
        RunStatus::Error => ExitCode::from(1),
        RunStatus::Aborted | RunStatus::Unknown => ExitCode::from(3),
    })
}

/// Reports a failure to reach the node or a refusal; exit status 2.
pub fn unreachable(err: &ClientError) -> ExitCode {
    eprintln!("error: {err}");
    ExitCode::from(2)
}

/// Runs the code, printing as outputs arrive; Ctrl-C sends an interrupt.
async fn drive(
    client: &mut Client,
    code: &str,
    renderer: Renderer,
) -> Result<RunStatus, ClientError> {
    let client_ref = client.execute(code).await?;
    let session = client.welcome().session;
    let mut run = None;
    let mut interrupted = false;
    loop {
        let message = tokio::select! {
            message = client.recv() => message?,
            _ = tokio::signal::ctrl_c() => {
                if interrupted {
                    return Ok(RunStatus::Aborted);
                }
                interrupted = true;
                eprintln!("\ninterrupting (Ctrl-C again to leave)");
                client.send(&ClientMessage::Interrupt).await?;
                continue;
            }
        };
        let ours = match &message {
            ServerMessage::Queued(q) => q.session == session && q.client_ref == client_ref,
            ServerMessage::Output(out) => Some(out.run) == run,
            ServerMessage::Done(done) => Some(done.run) == run,
            ServerMessage::Error(reply) => reply.fatal || reply.client_ref == Some(client_ref),
            ServerMessage::Kernel(_) => true,
            _ => false,
        };
        // A refusal of our own request is returned and reported once, by the caller.
        let refusal = matches!(&message, ServerMessage::Error(_)) && ours;
        if renderer.json || (ours && !refusal) {
            renderer.message(&message);
        }
        match message {
            ServerMessage::Queued(q) if ours => run = Some(q.run),
            ServerMessage::Done(done) if ours => return Ok(done.status),
            ServerMessage::Error(reply) if ours => return Err(ClientError::Refused(reply)),
            _ => {}
        }
    }
}

fn read_code(args: &Args) -> anyhow::Result<String> {
    if let Some(code) = &args.code {
        return Ok(code.clone());
    }
    match &args.file {
        Some(path) if path.as_os_str() != "-" => {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
        }
        _ => {
            let mut code = String::new();
            std::io::stdin()
                .read_to_string(&mut code)
                .context("reading code from standard input")?;
            Ok(code)
        }
    }
}

impl ConnectArgs {
    /// Connects and says hello. The outer error is a mistake in the flags (no token, no node);
    /// the inner one is the node being unreachable or refusing.
    pub async fn connect(&self) -> anyhow::Result<Result<Client, ClientError>> {
        if let Some(coordinator) = &self.coordinator {
            let (target, token) = self.claim(coordinator).await?;
            return Ok(Client::connect(&target, &token).await);
        }
        let token = read_token(self)?;
        let target = target(self)?;
        Ok(Client::connect(&target, &token).await)
    }

    /// Claims a session on `--doc` through a coordinator: where to connect, and the token.
    async fn claim(&self, coordinator: &str) -> anyhow::Result<(Target, String)> {
        let api_token = self
            .api_token
            .as_deref()
            .context("--coordinator needs --api-token (or AIRLOCK_API_TOKEN)")?;
        let doc = self.doc.as_deref().context("--coordinator needs --doc")?;
        let api = airlock_client::coordinator::ApiClient::new(coordinator, api_token)?;
        let session = api
            .claim_for_tenant(
                doc,
                self.tenant.as_deref(),
                &self.user,
                airlock_protocol::token::Role::Editor,
            )
            .await
            .with_context(|| format!("claiming a session on {doc:?}"))?;
        let target = match (&session.quic, &session.websocket) {
            (Some(quic), _) if !self.websocket => Target::Quic {
                addr: quic
                    .parse()
                    .with_context(|| format!("the coordinator gave a bad address {quic:?}"))?,
                server_name: self.server_name.clone(),
                trust: Trust::Fingerprint(session.fingerprint.clone()),
            },
            (_, Some(url)) => Target::WebSocket {
                url: url.clone(),
                json: self.ws_json,
            },
            _ => bail!("the task serving {doc:?} has no endpoint this client speaks"),
        };
        Ok((target, session.token))
    }
}

fn read_token(args: &ConnectArgs) -> anyhow::Result<String> {
    if let Some(token) = &args.token {
        return Ok(token.trim().to_owned());
    }
    if let Some(path) = &args.token_file {
        let token = std::fs::read_to_string(path)
            .with_context(|| format!("reading the token file {}", path.display()))?;
        return Ok(token.trim().to_owned());
    }
    bail!(
        "no token: pass --token, --token-file or set AIRLOCK_TOKEN (mint one with `airlock token`)"
    )
}

fn target(args: &ConnectArgs) -> anyhow::Result<Target> {
    #[derive(serde::Deserialize)]
    struct ConnectFile {
        quic: Option<SocketAddr>,
        websocket: Option<String>,
        fingerprint: String,
    }
    let file = match &args.connect_file {
        Some(path) => {
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            Some(
                serde_json::from_slice::<ConnectFile>(&bytes)
                    .with_context(|| format!("{} is not a node connect file", path.display()))?,
            )
        }
        None => None,
    };
    if let Some(url) = args.ws.clone().or_else(|| {
        file.as_ref()
            .filter(|_| args.websocket)
            .and_then(|f| f.websocket.clone())
    }) {
        return Ok(Target::WebSocket {
            url,
            json: args.ws_json,
        });
    }
    let addr = args
        .quic
        .or_else(|| file.as_ref().and_then(|f| f.quic))
        .context("no node to talk to: pass --connect-file, --quic ADDR or --ws URL")?;
    let fingerprint = args
        .fingerprint
        .clone()
        .or_else(|| file.map(|f| f.fingerprint))
        .context("QUIC needs the node's certificate fingerprint: pass --fingerprint (the node prints it at start) or --connect-file")?;
    Ok(Target::Quic {
        addr,
        server_name: args.server_name.clone(),
        trust: Trust::Fingerprint(fingerprint),
    })
}
