//! Printing protocol messages the way a person wants to read them, or as JSON lines for scripts:
//! a run's outputs (`exec`, `notebook run`), the cell graph and a summary of cell runs as tables
//! (`notebook`).

use std::io::{IsTerminal as _, Write as _};
use std::time::Duration;

use airlock_client::CellRun;
use airlock_protocol::{
    CellKind, CellState, ExecutionMode, GraphView, MimeBundle, Output, RunStatus, ServerMessage,
    StreamName,
};

/// How `exec` prints.
#[derive(Debug, Clone, Copy)]
pub struct Renderer {
    pub json: bool,
    colour: bool,
}

impl Renderer {
    pub fn new(json: bool) -> Self {
        Renderer {
            json,
            colour: std::io::stderr().is_terminal(),
        }
    }

    /// Prints one message in JSON-lines mode (every message), or a run's output for people.
    pub fn message(&self, message: &ServerMessage) {
        if self.json {
            if let Ok(line) = serde_json::to_string(message) {
                println!("{line}");
            }
            return;
        }
        match message {
            ServerMessage::Output(out) => self.output(&out.output),
            ServerMessage::Kernel(airlock_protocol::KernelStatus::Dead { cause }) => {
                eprintln!("{cause}");
            }
            ServerMessage::Error(reply) => eprintln!("error ({}): {}", reply.code, reply.message),
            _ => {}
        }
    }

    /// Prints one output for a person.
    pub fn output(&self, output: &Output) {
        match output {
            Output::Stream { name, text } => match name {
                StreamName::Stdout => {
                    print!("{text}");
                    let _ = std::io::stdout().flush();
                }
                StreamName::Stderr => eprint!("{text}"),
            },
            Output::ExecuteResult {
                execution_count,
                data,
                ..
            } => {
                let prefix = if std::io::stdout().is_terminal() {
                    format!("Out[{execution_count}]: ")
                } else {
                    String::new()
                };
                println!("{prefix}{}", describe(data));
            }
            Output::DisplayData { data, .. } | Output::UpdateDisplayData { data, .. } => {
                println!("{}", describe(data));
            }
            Output::Error { traceback, .. } => {
                for line in traceback {
                    if self.colour {
                        eprintln!("{line}");
                    } else {
                        eprintln!("{}", strip_ansi(line));
                    }
                }
            }
            Output::ClearOutput { .. } | Output::Unknown => {}
        }
    }
}

/// The plain-text form of a MIME bundle, or a note saying what could not be shown.
pub fn describe(data: &MimeBundle) -> String {
    if let Some(text) = data.get("text/plain").and_then(|v| v.as_str()) {
        return text.to_owned();
    }
    let kinds: Vec<String> = data
        .iter()
        .map(|(mime, value)| {
            let size = value.as_str().map_or(0, str::len);
            format!("{mime}, {}", human_size(size))
        })
        .collect();
    format!("[{}]", kinds.join("; "))
}

fn human_size(bytes: usize) -> String {
    if bytes < 1024 {
        format!("{bytes} B")
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

/// Removes ANSI colour sequences (`ESC [ … letter`), which IPython puts in tracebacks.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.clone().next() == Some('[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Lays rows out under a header, each column padded to its widest entry, two spaces apart.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, entry) in widths.iter_mut().zip(row) {
            *width = (*width).max(entry.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (entry, width)) in row.iter().zip(&widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(entry);
            } else {
                line.push_str(&format!("{entry:<width$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `code`, `sql`, …: a cell kind as `cell_type` names it.
fn kind_label(kind: CellKind) -> &'static str {
    match kind {
        CellKind::Code => "code",
        CellKind::Sql => "sql",
        CellKind::Markdown => "markdown",
        CellKind::Raw => "raw",
        CellKind::Unknown => "?",
    }
}

/// `idle`, `stale`, `error`, …: a cell state without its message.
pub fn state_label(state: &CellState) -> &'static str {
    match state {
        CellState::Idle => "idle",
        CellState::Queued => "queued",
        CellState::Running => "running",
        CellState::Stale => "stale",
        CellState::Error { .. } => "error",
        CellState::Unknown => "?",
    }
}

pub fn mode_label(mode: ExecutionMode) -> &'static str {
    match mode {
        ExecutionMode::Reactive => "reactive",
        ExecutionMode::Lazy => "lazy",
        ExecutionMode::Unknown => "unknown",
    }
}

fn status_label(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Ok => "ok",
        RunStatus::Error => "error",
        RunStatus::Aborted => "aborted",
        RunStatus::Unknown => "?",
    }
}

/// The cells as a table: position, id, kind, state, the names each defines, the names each
/// reads with the cell it reads them from (`df←load`), and the first line of its source. Cells
/// in error get their message below the table.
pub fn graph_table(view: &GraphView) -> String {
    const SOURCE_WIDTH: usize = 40;
    let rows: Vec<Vec<String>> = view
        .cells
        .iter()
        .enumerate()
        .map(|(i, cell)| {
            let or_dash = |list: Vec<String>| {
                if list.is_empty() {
                    "-".to_owned()
                } else {
                    list.join(", ")
                }
            };
            let reads = cell
                .reads
                .iter()
                .map(|read| format!("{}←{}", read.name, read.cell))
                .collect();
            let mut summary: String = cell.summary.chars().take(SOURCE_WIDTH).collect();
            if cell.summary.chars().count() > SOURCE_WIDTH {
                summary.push('…');
            }
            vec![
                (i + 1).to_string(),
                cell.id.clone(),
                kind_label(cell.kind).to_owned(),
                state_label(&cell.state).to_owned(),
                or_dash(cell.defines.clone()),
                or_dash(reads),
                summary,
            ]
        })
        .collect();
    let mut out = format!(
        "mode: {}, {} cells\n",
        mode_label(view.mode),
        view.cells.len()
    );
    out.push_str(&table(
        &["#", "ID", "KIND", "STATE", "DEFINES", "READS", "SOURCE"],
        &rows,
    ));
    for cell in &view.cells {
        if let CellState::Error { message } = &cell.state {
            out.push_str(&format!("{}: {}\n", cell.id, message));
        }
    }
    out
}

/// `850 ms`, `2.31 s`, `3 min 05 s`.
pub fn elapsed(duration: Duration) -> String {
    let ms = duration.as_millis();
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.2} s", duration.as_secs_f64())
    } else {
        let secs = duration.as_secs();
        format!("{} min {:02} s", secs / 60, secs % 60)
    }
}

/// What became of each cell of a `notebook run`: its run, status, time and final state. A cell
/// that did not run says why, from its state (`not run: needs a cell that failed`).
pub fn runs_table(runs: &[CellRun]) -> String {
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|run| {
            let status = match (run.status, &run.state) {
                (Some(status), _) => status_label(status).to_owned(),
                (None, Some(CellState::Error { .. } | CellState::Stale)) => "not run".to_owned(),
                (None, _) => "unfinished".to_owned(),
            };
            let state = match &run.state {
                Some(CellState::Error { message }) => format!("error: {message}"),
                Some(state) => state_label(state).to_owned(),
                None => "-".to_owned(),
            };
            vec![
                run.cell.clone(),
                run.run.map_or_else(|| "-".to_owned(), |r| r.0.to_string()),
                status,
                run.elapsed.map_or_else(|| "-".to_owned(), elapsed),
                state,
            ]
        })
        .collect();
    table(&["CELL", "RUN", "STATUS", "TIME", "STATE"], &rows)
}

/// One cell's fate for `--json`: the same facts as [`runs_table`], with the outputs.
pub fn run_json(run: &CellRun) -> serde_json::Value {
    serde_json::json!({
        "cell": run.cell,
        "run": run.run,
        "status": run.status,
        "execution_count": run.execution_count,
        "state": run.state,
        "elapsed_ms": run.elapsed.map(|d| d.as_millis() as u64),
        "outputs": run.outputs,
    })
}

#[cfg(test)]
mod tests {
    use airlock_protocol::{CellBinding, GraphCell, RunId};

    use super::*;

    #[test]
    fn ansi_is_stripped() {
        assert_eq!(
            strip_ansi("\u{1b}[0;31mZeroDivisionError\u{1b}[0m: x"),
            "ZeroDivisionError: x"
        );
        assert_eq!(strip_ansi("plain"), "plain");
    }

    #[test]
    fn bundles_without_text_are_described() {
        let mut data = MimeBundle::new();
        data.insert("image/png".into(), serde_json::json!("a".repeat(2048)));
        assert_eq!(describe(&data), "[image/png, 2.0 KiB]");
        data.insert("text/plain".into(), serde_json::json!("<Figure>"));
        assert_eq!(describe(&data), "<Figure>");
    }

    #[test]
    fn the_graph_is_a_table_with_reads_naming_their_cell() {
        let view = GraphView {
            client_ref: 1,
            mode: ExecutionMode::Reactive,
            cells: vec![
                GraphCell {
                    id: "load".into(),
                    kind: CellKind::Code,
                    state: CellState::Idle,
                    defines: vec!["df".into(), "pd".into()],
                    reads: vec![],
                    summary: "import pandas as pd".into(),
                },
                GraphCell {
                    id: "intro".into(),
                    kind: CellKind::Markdown,
                    state: CellState::Idle,
                    defines: vec![],
                    reads: vec![],
                    summary: "# A very long title that goes on and on and on".into(),
                },
                GraphCell {
                    id: "plot".into(),
                    kind: CellKind::Code,
                    state: CellState::Error {
                        message: "NameError: name 'dff' is not defined".into(),
                    },
                    defines: vec![],
                    reads: vec![
                        CellBinding {
                            name: "df".into(),
                            cell: "load".into(),
                        },
                        CellBinding {
                            name: "pd".into(),
                            cell: "load".into(),
                        },
                    ],
                    summary: "df.plot()".into(),
                },
            ],
        };
        let expected = "\
mode: reactive, 3 cells
#  ID     KIND      STATE  DEFINES  READS             SOURCE
1  load   code      idle   df, pd   -                 import pandas as pd
2  intro  markdown  idle   -        -                 # A very long title that goes on and on …
3  plot   code      error  -        df←load, pd←load  df.plot()
plot: NameError: name 'dff' is not defined
";
        assert_eq!(graph_table(&view), expected);
    }

    #[test]
    fn the_summary_says_what_ran_and_what_did_not() {
        let ran = CellRun {
            cell: "a".into(),
            run: Some(RunId(4)),
            status: Some(RunStatus::Ok),
            execution_count: Some(2),
            outputs: vec![],
            state: Some(CellState::Idle),
            elapsed: Some(Duration::from_millis(1250)),
        };
        let dropped = CellRun {
            cell: "b".into(),
            run: None,
            status: None,
            execution_count: None,
            outputs: vec![],
            state: Some(CellState::Error {
                message: "needs a, which failed".into(),
            }),
            elapsed: None,
        };
        let expected = "\
CELL  RUN  STATUS   TIME    STATE
a     4    ok       1.25 s  idle
b     -    not run  -       error: needs a, which failed
";
        assert_eq!(runs_table(&[ran.clone(), dropped]), expected);
        let json = run_json(&ran);
        assert_eq!(json["status"], "ok");
        assert_eq!(json["state"]["state"], "idle");
        assert_eq!(json["elapsed_ms"], 1250);
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(elapsed(Duration::from_millis(850)), "850 ms");
        assert_eq!(elapsed(Duration::from_millis(2310)), "2.31 s");
        assert_eq!(elapsed(Duration::from_secs(185)), "3 min 05 s");
    }
}
