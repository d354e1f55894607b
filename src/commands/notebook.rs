//! `airlock notebook`: a document's cells from a terminal or a script — import a `.ipynb`, run
//! cells, change a cell's source, see the dependency graph, export, switch execution mode.
//!
//! Each subcommand reads its local input first (so a typo fails before connecting), connects
//! with the same flags as `airlock exec`, sends one request through the client SDK and prints
//! the answer; `run` and `set` then follow the runs the request started until every cell has
//! finished.
//!
//! Exit status, as for `exec`: 0 when everything asked for succeeded, 1 when a cell raised or
//! could not run because a cell it needs failed, 2 when the node could not be reached or
//! refused the request (or a local file could not be read or written), 3 when a run was aborted
//! (interrupt, restart, kernel death) or you left before the runs finished.

use std::io::{IsTerminal as _, Read as _};
use std::path::PathBuf;
use std::process::ExitCode;

use airlock_client::{CellRun, Client, ClientError, RunFollower};
use airlock_protocol::{
    Accepted, CellEdit, CellState, ClientMessage, ErrorCode, ExecutionMode, RunStatus,
    ServerMessage,
};
use anyhow::Context as _;

use super::exec::{ConnectArgs, unreachable};
use super::render::{self, Renderer};

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Connecting: the same flags as `airlock exec`, before or after the subcommand. With a node
started by `airlock node --connect-file node.json`:
  export AIRLOCK_TOKEN=\"$(airlock token --key keys/token-signing.pem --doc doc-1)\"
  airlock notebook import analysis.ipynb --connect-file node.json
  airlock notebook run --connect-file node.json
  airlock notebook set load --source 'df = pd.read_csv(\"b.csv\")' --connect-file node.json
  airlock notebook graph --connect-file node.json

Exit status: 0 success; 1 a cell raised or could not run; 2 the node could not be reached or
refused, or a file could not be read; 3 a run was aborted (interrupt, restart, kernel death)
or you left early.")]
pub struct Args {
    #[command(flatten)]
    connection: ConnectArgs,
    /// Print JSON for scripts: `run` and `set` print one JSON object per line (the node's
    /// messages about the runs, then a `summary`); the others print one JSON document.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Replace the document's cells and outputs with a .ipynb file's.
    #[command(after_help = "\
Every cell of the document is replaced; its collaborators see the new cells at once. Export
first (`airlock notebook export -o backup.ipynb`) if you may want the old ones back. Nothing
runs: the imported cells keep the outputs stored in the file, and `airlock notebook run`
brings them up to date.

The node repairs what it can (missing cell ids, old nbformat 4 versions) and says so in
warnings.")]
    Import(ImportArgs),
    /// Run cells and print their outputs as they come; every stale cell by default.
    #[command(after_help = "\
Cells run in the order of the dependency graph: a cell's stale inputs run before it and, in
reactive mode, the cells that read what it defines run after it. If a cell raises, the cells
that need it do not run and are reported as `not run`.

Examples:
  airlock notebook run                          # everything stale
  airlock notebook run --cell load --cell plot  # these (and what they need or feed)
  airlock notebook run --replay                 # every code cell again, after a kernel loss

Ctrl-C interrupts the running cell; a second Ctrl-C leaves (the node finishes the queue).")]
    Run(RunArgs),
    /// Change a cell's source; by default, then run what the change made stale.
    #[command(after_help = "\
The new source comes from --source, --file, or standard input (one trailing newline is
dropped, as editors add one). Cell ids are in the second column of `airlock notebook graph`.

Examples:
  airlock notebook set load --source 'df = pd.read_csv(\"b.csv\")'
  airlock notebook set plot --file plot.py --no-run
  echo 'x = 2' | airlock notebook set a")]
    Set(SetArgs),
    /// List the cells: position, id, kind, state, the names each defines and reads (and from
    /// which cell), the first line of its source.
    #[command(after_help = "\
A read `df←load` means the cell uses `df` as cell `load` (the nearest cell above that
defines it) left it. A cell becomes stale when a cell it reads from changes.")]
    Graph,
    /// Write the document as a .ipynb file (nbformat 4.5) with its latest outputs.
    Export(ExportArgs),
    /// Show the execution mode, or switch it: reactive (running a cell also runs the cells that
    /// depend on it) or lazy (they are only marked stale).
    Mode(ModeArgs),
}

#[derive(Debug, clap::Args)]
struct ImportArgs {
    /// The notebook to import (.ipynb, nbformat 4).
    #[arg(value_name = "FILE.ipynb")]
    file: PathBuf,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// A cell to run, by id (repeat for several). Without any, every stale cell runs.
    #[arg(long = "cell", value_name = "ID")]
    cells: Vec<String>,
    /// Run every code cell again in order, not only stale ones (after a kernel restart, say).
    #[arg(long)]
    replay: bool,
}

#[derive(Debug, clap::Args)]
struct SetArgs {
    /// The cell to change, by id (see `airlock notebook graph`).
    #[arg(value_name = "CELL")]
    cell: String,
    /// The new source.
    #[arg(long, conflicts_with = "file")]
    source: Option<String>,
    /// Read the new source from a file (- for standard input).
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
    /// Only change the source: leave what became stale for a later `airlock notebook run`.
    #[arg(long)]
    no_run: bool,
}

#[derive(Debug, clap::Args)]
struct ExportArgs {
    /// Write to this file instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct ModeArgs {
    /// The mode to switch to; without it, print the current one.
    #[arg(value_enum)]
    mode: Option<ModeName>,
}

/// The `mode` values a person may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ModeName {
    Reactive,
    Lazy,
}

impl From<ModeName> for ExecutionMode {
    fn from(mode: ModeName) -> Self {
        match mode {
            ModeName::Reactive => ExecutionMode::Reactive,
            ModeName::Lazy => ExecutionMode::Lazy,
        }
    }
}

/// What the node is asked to do, with everything read from local files already.
enum Request {
    Import {
        file: PathBuf,
        ipynb: String,
    },
    Run {
        cells: Vec<String>,
        replay: bool,
    },
    Set {
        cell: String,
        source: String,
        run: bool,
    },
    Graph,
    Export {
        output: Option<PathBuf>,
    },
    Mode {
        mode: Option<ModeName>,
    },
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let out = Renderer::new(args.json);
    let result = async {
        let request = prepare(args.action).map_err(Failure::Local)?;
        let mut client = match args.connection.connect().await.map_err(Failure::Local)? {
            Ok(client) => client,
            Err(err) => return Err(Failure::Node(err)),
        };
        let result = send(&mut client, &request, out).await;
        client.close().await;
        result.map_err(|failure| match failure {
            Failure::Node(err) => Failure::Node(refused(err, &request, out)),
            local => local,
        })
    }
    .await;
    Ok(match result {
        Ok(code) => code,
        Err(Failure::Node(err)) => unreachable(&err),
        // Exit status 1 means a cell failed; a local mistake is not one.
        Err(Failure::Local(err)) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    })
}

/// Reads the local input of an action.
fn prepare(action: Action) -> anyhow::Result<Request> {
    Ok(match action {
        Action::Import(args) => {
            let ipynb = std::fs::read_to_string(&args.file).with_context(|| {
                format!(
                    "reading {} (give the path of a .ipynb file)",
                    args.file.display()
                )
            })?;
            Request::Import {
                file: args.file,
                ipynb,
            }
        }
        Action::Run(args) => Request::Run {
            cells: args.cells,
            replay: args.replay,
        },
        Action::Set(args) => {
            let source = match (args.source, args.file) {
                (Some(source), _) => source,
                (None, Some(path)) if path.as_os_str() != "-" => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    drop_final_newline(text)
                }
                (None, _) => {
                    if std::io::stdin().is_terminal() {
                        eprintln!(
                            "reading the new source of {} from standard input; end it with Ctrl-D \
                             (or pass --source TEXT or --file PATH)",
                            args.cell
                        );
                    }
                    let mut text = String::new();
                    std::io::stdin()
                        .read_to_string(&mut text)
                        .context("reading the new source from standard input")?;
                    drop_final_newline(text)
                }
            };
            Request::Set {
                cell: args.cell,
                source,
                run: !args.no_run,
            }
        }
        Action::Graph => Request::Graph,
        Action::Export(args) => Request::Export {
            output: args.output,
        },
        Action::Mode(args) => Request::Mode { mode: args.mode },
    })
}

/// Editors end files with a newline; a cell's source usually does not.
fn drop_final_newline(mut text: String) -> String {
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    text
}

/// Why a subcommand stopped: the node (exit status 2, with a hint) or this machine.
enum Failure {
    Node(ClientError),
    Local(anyhow::Error),
}

impl From<ClientError> for Failure {
    fn from(err: ClientError) -> Self {
        Failure::Node(err)
    }
}

async fn send(client: &mut Client, request: &Request, out: Renderer) -> Result<ExitCode, Failure> {
    match request {
        Request::Import { file, ipynb } => {
            let accepted = client.import_ipynb(ipynb.clone()).await?;
            if out.json {
                print_json(&ServerMessage::Accepted(accepted));
                return Ok(ExitCode::SUCCESS);
            }
            for warning in &accepted.warnings {
                eprintln!("warning: {warning}");
            }
            println!(
                "imported {} cells from {}: {}",
                accepted.created.len(),
                file.display(),
                accepted.created.join(", ")
            );
            eprintln!(
                "see them with `airlock notebook graph`; run them with `airlock notebook run`"
            );
            Ok(ExitCode::SUCCESS)
        }
        Request::Run { cells, replay } => {
            let accepted = client.run_cells(cells.clone(), *replay).await?;
            if accepted.queued.is_empty() {
                if out.json {
                    print_summary(&accepted, &[]);
                } else if cells.is_empty() {
                    println!("nothing to run: no cell is stale (use --replay to run them all)");
                } else {
                    println!("nothing to run: those cells are up to date");
                }
                return Ok(ExitCode::SUCCESS);
            }
            if out.json {
                print_json(&ServerMessage::Accepted(accepted.clone()));
            } else {
                say_queued("running", &accepted.queued);
            }
            follow_and_report(client, &accepted, out, "ran").await
        }
        Request::Set { cell, source, run } => {
            let edit = CellEdit::SetSource {
                cell: cell.clone(),
                source: source.clone(),
            };
            let accepted = client.edit_cells(vec![edit], *run).await?;
            if out.json {
                print_json(&ServerMessage::Accepted(accepted.clone()));
            } else {
                eprintln!("changed the source of {cell}");
                if !accepted.stale.is_empty() && accepted.queued.is_empty() {
                    println!(
                        "stale now: {} (run them with `airlock notebook run`)",
                        accepted.stale.join(", ")
                    );
                }
            }
            if accepted.queued.is_empty() {
                if out.json {
                    print_summary(&accepted, &[]);
                }
                return Ok(ExitCode::SUCCESS);
            }
            if !out.json {
                say_queued("re-running", &accepted.queued);
            }
            follow_and_report(client, &accepted, out, "re-ran").await
        }
        Request::Graph => {
            let view = client.graph().await?;
            if out.json {
                print_json(&view);
            } else {
                print!("{}", render::graph_table(&view));
            }
            Ok(ExitCode::SUCCESS)
        }
        Request::Export { output } => {
            let ipynb = client.export_ipynb().await?;
            match output {
                Some(path) => {
                    std::fs::write(path, &ipynb)
                        .with_context(|| format!("writing {}", path.display()))
                        .map_err(Failure::Local)?;
                    if out.json {
                        print_json(&serde_json::json!({
                            "path": path,
                            "bytes": ipynb.len(),
                        }));
                    } else {
                        eprintln!("wrote {} ({} bytes)", path.display(), ipynb.len());
                    }
                }
                // The notebook is JSON already, so --json changes nothing here.
                None => println!("{ipynb}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Request::Mode { mode: Some(mode) } => {
            client.set_mode((*mode).into()).await?;
            print_mode((*mode).into(), out);
            Ok(ExitCode::SUCCESS)
        }
        Request::Mode { mode: None } => {
            let view = client.graph().await?;
            print_mode(view.mode, out);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_mode(mode: ExecutionMode, out: Renderer) {
    if out.json {
        print_json(&serde_json::json!({ "mode": mode }));
    } else {
        println!("mode: {}", render::mode_label(mode));
    }
}

/// "running 2 cells: a, b" on stderr.
fn say_queued(doing: &str, cells: &[String]) {
    eprintln!(
        "{doing} {} cell{}: {}",
        cells.len(),
        plural(cells.len()),
        cells.join(", ")
    );
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn print_json(value: &impl serde::Serialize) {
    if let Ok(line) = serde_json::to_string(value) {
        println!("{line}");
    }
}

/// The last line of `run --json` and `set --json`.
fn print_summary(accepted: &Accepted, runs: &[CellRun]) {
    print_json(&serde_json::json!({
        "type": "summary",
        "queued": accepted.queued,
        "stale": accepted.stale,
        "cells": runs.iter().map(render::run_json).collect::<Vec<_>>(),
    }));
}

/// Follows the queued cells, printing their outputs as they come, then a summary; Ctrl-C
/// interrupts the kernel, a second one leaves.
async fn follow_and_report(
    client: &mut Client,
    accepted: &Accepted,
    out: Renderer,
    verb: &str,
) -> Result<ExitCode, Failure> {
    let mut follower = RunFollower::for_request(
        accepted.queued.iter().cloned(),
        client.welcome().session,
        accepted.client_ref,
    );
    let mut interrupted = false;
    let mut left = false;
    loop {
        tokio::select! {
            result = client.follow(&mut follower, |follower, message| progress(follower, message, out)) => {
                result?;
                break;
            }
            _ = tokio::signal::ctrl_c() => {
                if interrupted {
                    left = true;
                    break;
                }
                interrupted = true;
                eprintln!("\ninterrupting (Ctrl-C again to leave)");
                client.send(&ClientMessage::Interrupt).await?;
            }
        }
    }
    let runs = follower.into_runs();
    if out.json {
        print_summary(accepted, &runs);
    } else {
        let ran: Vec<&str> = runs
            .iter()
            .filter(|run| run.run.is_some())
            .map(|run| run.cell.as_str())
            .collect();
        eprintln!();
        eprintln!(
            "{verb} {} of {} cell{}{}",
            ran.len(),
            runs.len(),
            plural(runs.len()),
            if ran.is_empty() {
                String::new()
            } else {
                format!(": {}", ran.join(", "))
            }
        );
        eprint!("{}", render::runs_table(&runs));
    }
    Ok(exit_code(&runs, left))
}

/// Prints what a person (or a script) wants to see of one message while runs are followed.
fn progress(follower: &RunFollower, message: &ServerMessage, out: Renderer) {
    if !follower.concerns(message) {
        return;
    }
    if out.json {
        out.message(message);
        return;
    }
    match message {
        ServerMessage::Queued(queued) => {
            if let Some(cell) = &queued.cell {
                eprintln!("── {cell} ──");
            }
        }
        ServerMessage::Output(_) | ServerMessage::Kernel(_) => out.message(message),
        _ => {}
    }
}

/// 1 if a cell raised or could not run because one it needs failed, 3 if a run was aborted or
/// left unfinished, else 0.
fn exit_code(runs: &[CellRun], left: bool) -> ExitCode {
    let failed = runs.iter().any(|run| {
        run.status == Some(RunStatus::Error)
            || (run.run.is_none() && matches!(run.state, Some(CellState::Error { .. })))
    });
    let aborted = left
        || runs
            .iter()
            .any(|run| !matches!(run.status, Some(RunStatus::Ok)));
    if failed {
        ExitCode::from(1)
    } else if aborted {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    }
}

/// Prints what to do about the node's refusal of `request` (and, for scripts, the refusal as
/// JSON), then hands the error on to be reported.
fn refused(err: ClientError, request: &Request, out: Renderer) -> ClientError {
    if out.json
        && let ClientError::Rejected { code, message, .. } = &err
    {
        print_json(&serde_json::json!({
            "type": "error",
            "code": code,
            "message": message,
        }));
    }
    if let Some(hint) = hint(&err, request) {
        eprintln!("hint: {hint}");
    }
    err
}

/// What to do about a refusal, when there is something to say.
fn hint(err: &ClientError, request: &Request) -> Option<&'static str> {
    let code = match err {
        ClientError::Rejected { code, .. } => *code,
        ClientError::Refused(reply) => reply.code,
        ClientError::Codec(codec) => codec.code(),
        ClientError::Timeout(_) => {
            return Some("the node accepted the connection but did not answer; check its logs");
        }
        ClientError::Connect { .. } | ClientError::Closed { .. } => return None,
    };
    Some(match (code, request) {
        (ErrorCode::BadRequest, Request::Run { .. } | Request::Set { .. }) => {
            "list the cells and their ids with `airlock notebook graph`"
        }
        (ErrorCode::BadRequest, Request::Import { .. }) => {
            "the file must be a Jupyter notebook in nbformat 4 (open it in Jupyter and save it again)"
        }
        (ErrorCode::FrameTooLarge, Request::Import { .. }) => {
            "the notebook is larger than a message may be; clear its outputs first \
             (`jupyter nbconvert --clear-output --inplace FILE.ipynb`)"
        }
        (ErrorCode::FrameTooLarge, Request::Set { .. }) => {
            "the source is larger than a message may be"
        }
        (ErrorCode::Forbidden, _) => {
            "this token's role may only watch; mint one with `airlock token --role editor`"
        }
        (ErrorCode::KernelUnavailable, _) => {
            "the kernel is dead or restarting; wait for it, or restart it and run with --replay"
        }
        (ErrorCode::UnknownMessage, _) => {
            "this node does not know notebook requests; upgrade it to a version with cells"
        }
        (ErrorCode::DocumentMoved, _) => {
            "another node serves this document now; ask the coordinator for a new session"
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed expectation is a failed test

    use std::time::Duration;

    use airlock_protocol::RunId;
    use clap::{CommandFactory as _, Parser as _};

    use super::super::{Cli, Command};
    use super::*;

    fn parse(args: &[&str]) -> Args {
        let cli = Cli::try_parse_from(["airlock", "notebook"].iter().chain(args)).unwrap();
        match cli.command {
            Command::Notebook(args) => args,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_takes_repeated_cells_and_connection_flags_on_either_side() {
        let args = parse(&[
            "--connect-file",
            "n.json",
            "run",
            "--cell",
            "a",
            "--cell",
            "b",
        ]);
        match args.action {
            Action::Run(run) => {
                assert_eq!(run.cells, ["a", "b"]);
                assert!(!run.replay);
            }
            other => panic!("{other:?}"),
        }
        assert!(format!("{:?}", args.connection).contains("\"n.json\""));
        let args = parse(&["run", "--replay", "--json", "--connect-file", "n.json"]);
        assert!(args.json);
        assert!(
            matches!(args.action, Action::Run(RunArgs { replay: true, ref cells }) if cells.is_empty())
        );
        assert!(format!("{:?}", args.connection).contains("\"n.json\""));
    }

    #[test]
    fn set_takes_its_source_one_way_only() {
        let args = parse(&["set", "load", "--source", "x = 1", "--no-run"]);
        match args.action {
            Action::Set(set) => {
                assert_eq!(set.cell, "load");
                assert_eq!(set.source.as_deref(), Some("x = 1"));
                assert!(set.no_run);
            }
            other => panic!("{other:?}"),
        }
        let both = [
            "airlock", "notebook", "set", "a", "--source", "x", "--file", "f.py",
        ];
        assert!(Cli::try_parse_from(both).is_err());
        assert!(Cli::try_parse_from(["airlock", "notebook", "set"]).is_err());
    }

    #[test]
    fn the_other_subcommands_parse() {
        assert!(matches!(
            parse(&["import", "a.ipynb"]).action,
            Action::Import(ImportArgs { file }) if file == std::path::Path::new("a.ipynb")
        ));
        assert!(matches!(parse(&["graph"]).action, Action::Graph));
        assert!(matches!(
            parse(&["export", "-o", "out.ipynb"]).action,
            Action::Export(ExportArgs { output: Some(_) })
        ));
        assert!(matches!(
            parse(&["export"]).action,
            Action::Export(ExportArgs { output: None })
        ));
        assert!(matches!(
            parse(&["mode", "lazy"]).action,
            Action::Mode(ModeArgs {
                mode: Some(ModeName::Lazy)
            })
        ));
        assert!(matches!(
            parse(&["mode"]).action,
            Action::Mode(ModeArgs { mode: None })
        ));
        assert!(Cli::try_parse_from(["airlock", "notebook", "mode", "eager"]).is_err());
        assert!(Cli::try_parse_from(["airlock", "notebook", "import"]).is_err());
    }

    #[test]
    fn one_trailing_newline_is_dropped() {
        assert_eq!(drop_final_newline("x = 1\n".into()), "x = 1");
        assert_eq!(drop_final_newline("x = 1\r\n".into()), "x = 1");
        assert_eq!(drop_final_newline("x = 1\n\n".into()), "x = 1\n");
        assert_eq!(drop_final_newline("x = 1".into()), "x = 1");
    }

    fn cell_run(status: Option<RunStatus>, state: CellState) -> CellRun {
        CellRun {
            cell: "a".into(),
            run: status.map(|_| RunId(1)),
            status,
            execution_count: None,
            outputs: vec![],
            state: Some(state),
            elapsed: Some(Duration::from_millis(5)),
        }
    }

    #[test]
    fn exit_codes_follow_exec() {
        let ok = cell_run(Some(RunStatus::Ok), CellState::Idle);
        let raised = cell_run(
            Some(RunStatus::Error),
            CellState::Error {
                message: "boom".into(),
            },
        );
        let dropped = cell_run(
            None,
            CellState::Error {
                message: "needs a".into(),
            },
        );
        let aborted = cell_run(Some(RunStatus::Aborted), CellState::Stale);
        assert_eq!(
            exit_code(std::slice::from_ref(&ok), false),
            ExitCode::SUCCESS
        );
        assert_eq!(
            exit_code(std::slice::from_ref(&ok), true),
            ExitCode::from(3)
        );
        assert_eq!(exit_code(&[ok.clone(), raised], false), ExitCode::from(1));
        assert_eq!(exit_code(&[ok.clone(), dropped], false), ExitCode::from(1));
        assert_eq!(exit_code(&[ok, aborted], false), ExitCode::from(3));
    }

    #[test]
    fn refusals_come_with_a_hint() {
        let unknown_cell = ClientError::Rejected {
            client_ref: 1,
            code: ErrorCode::BadRequest,
            message: "no cell x".into(),
        };
        let run = Request::Run {
            cells: vec!["x".into()],
            replay: false,
        };
        assert!(
            hint(&unknown_cell, &run)
                .unwrap()
                .contains("notebook graph")
        );
        let forbidden = ClientError::Rejected {
            client_ref: 1,
            code: ErrorCode::Forbidden,
            message: "viewer".into(),
        };
        assert!(
            hint(&forbidden, &Request::Graph)
                .unwrap()
                .contains("--role editor")
        );
    }
}
