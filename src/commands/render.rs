//! Printing protocol messages the way a person wants to read them, or as JSON lines for scripts.

use std::io::{IsTerminal as _, Write as _};

use airlock_protocol::{MimeBundle, Output, ServerMessage, StreamName};

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

#[cfg(test)]
mod tests {
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
}
