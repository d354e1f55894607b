//! The kernel process's own stdout and stderr, read as hostile bytes.
//!
//! These pipes carry what ipykernel and C libraries write outside Jupyter's channels (start-up
//! errors, warnings, crashes); user code can write to them too (`os.write(2, …)`). So they are
//! read in bounded chunks, never "until a newline": [`LineCutter`] turns chunks into lines of at
//! most [`MAX_LINE`] bytes (the rest of a longer line is counted, not kept), lossily decoded and
//! with control characters escaped so a line cannot forge log records or drive a terminal.
//! [`forward`] logs them under a [`LogBudget`], throttles reading once the kernel writes faster
//! than [`READ_RATE`] (the pipe then fills and the kernel's own writes wait), and keeps the last
//! [`TAIL_LINES`] stderr lines for the "kernel died" message.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

use crate::log_budget::LogBudget;

/// The longest line kept, in bytes; the rest of a longer line is cut.
pub const MAX_LINE: usize = 2048;
/// How many stderr lines are kept for the "kernel died" message.
pub const TAIL_LINES: usize = 30;
/// Bytes read per `read` call.
const CHUNK: usize = 8 * 1024;
/// Past a burst of [`READ_BURST`] bytes, the pipes are read no faster than this.
pub const READ_RATE: u64 = 1024 * 1024;
const READ_BURST: u64 = 4 * 1024 * 1024;

/// Splits a byte stream into bounded lines.
#[derive(Debug, Default)]
pub struct LineCutter {
    line: Vec<u8>,
    /// Bytes of the current line beyond [`MAX_LINE`].
    cut: usize,
}

impl LineCutter {
    /// Feeds `bytes`; calls `line` for every line they complete.
    pub fn feed(&mut self, mut bytes: &[u8], mut line: impl FnMut(String)) {
        while let Some(at) = bytes.iter().position(|&b| b == b'\n') {
            self.take(&bytes[..at]);
            line(self.finish());
            bytes = &bytes[at + 1..];
        }
        self.take(bytes);
    }

    /// What is left when the stream ends, if anything.
    pub fn flush(&mut self) -> Option<String> {
        (!self.line.is_empty() || self.cut > 0).then(|| self.finish())
    }

    fn take(&mut self, bytes: &[u8]) {
        let room = MAX_LINE - self.line.len();
        let kept = bytes.len().min(room);
        self.line.extend_from_slice(&bytes[..kept]);
        self.cut += bytes.len() - kept;
    }

    fn finish(&mut self) -> String {
        let mut text: String = String::from_utf8_lossy(&self.line)
            .trim_end_matches('\r')
            .chars()
            .flat_map(|c| {
                // Escape what could forge a log record or drive a terminal; keep tabs.
                let escape = c.is_control() && c != '\t';
                let shown: Vec<char> = if escape {
                    c.escape_default().collect()
                } else {
                    vec![c]
                };
                shown
            })
            .collect();
        if self.cut > 0 {
            text.push_str(&format!(" …[{} more bytes cut]", self.cut));
        }
        self.line.clear();
        self.cut = 0;
        text
    }
}

/// Paces reading: a burst, then [`READ_RATE`].
#[derive(Debug)]
struct ReadPace {
    allowance: u64,
    last: Instant,
}

impl ReadPace {
    fn new() -> Self {
        ReadPace {
            allowance: READ_BURST,
            last: Instant::now(),
        }
    }

    /// Charges `bytes` read; returns how long to wait before reading again.
    fn charge(&mut self, bytes: usize) -> Duration {
        let now = Instant::now();
        let earned = now.saturating_duration_since(self.last).as_secs_f64() * READ_RATE as f64;
        self.last = now;
        self.allowance = (self.allowance + earned as u64).min(READ_BURST);
        let bytes = bytes as u64;
        if bytes <= self.allowance {
            self.allowance -= bytes;
            return Duration::ZERO;
        }
        let owed = bytes - self.allowance;
        self.allowance = 0;
        Duration::from_secs_f64(owed as f64 / READ_RATE as f64)
    }
}

/// Which pipe a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pipe {
    Stdout,
    Stderr,
}

/// Reads one pipe to its end, logging each line under a budget; returns the last stderr lines.
async fn drain(pid: u32, pipe: Pipe, mut reader: impl AsyncRead + Unpin) -> VecDeque<String> {
    let mut tail = VecDeque::with_capacity(TAIL_LINES);
    let mut cutter = LineCutter::default();
    let mut budget = LogBudget::default();
    let mut pace = ReadPace::new();
    let mut chunk = vec![0u8; CHUNK];
    let mut on_line = |line: String, tail: &mut VecDeque<String>| {
        if let Some(suppressed) = budget.admit(std::time::Instant::now()) {
            match pipe {
                Pipe::Stdout => tracing::debug!(pid, suppressed, "kernel stdout: {line}"),
                Pipe::Stderr => tracing::info!(pid, suppressed, "kernel stderr: {line}"),
            }
        }
        if pipe == Pipe::Stderr {
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    };
    loop {
        let read = match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        let mut lines = Vec::new();
        cutter.feed(&chunk[..read], |line| lines.push(line));
        for line in lines {
            on_line(line, &mut tail);
        }
        let wait = pace.charge(read);
        if !wait.is_zero() {
            metrics::counter!("airlock_node_kernel_pipe_throttled_total").increment(1);
            tokio::time::sleep(wait).await;
        }
    }
    if let Some(line) = cutter.flush() {
        on_line(line, &mut tail);
    }
    tail
}

/// Logs the kernel's own stdout and stderr (not the user's prints, which travel on iopub) and
/// returns the last stderr lines once both close.
pub(crate) async fn forward(
    pid: u32,
    stdout: Option<impl AsyncRead + Unpin>,
    stderr: Option<impl AsyncRead + Unpin>,
) -> String {
    let stdout = async {
        if let Some(stdout) = stdout {
            drain(pid, Pipe::Stdout, stdout).await;
        }
    };
    let stderr = async {
        match stderr {
            Some(stderr) => drain(pid, Pipe::Stderr, stderr).await,
            None => VecDeque::new(),
        }
    };
    let ((), tail) = tokio::join!(stdout, stderr);
    Vec::from(tail).join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(chunks: &[&[u8]]) -> Vec<String> {
        let mut cutter = LineCutter::default();
        let mut lines = Vec::new();
        for chunk in chunks {
            cutter.feed(chunk, |line| lines.push(line));
        }
        lines.extend(cutter.flush());
        lines
    }

    #[test]
    fn lines_split_across_chunks_are_joined() {
        assert_eq!(
            lines_of(&[b"Traceback (most", b" recent call last):\n  File", b" x\n"]),
            ["Traceback (most recent call last):", "  File x"]
        );
    }

    #[test]
    fn a_line_without_newline_is_held_to_the_limit_however_much_arrives() {
        let mut cutter = LineCutter::default();
        let chunk = vec![b'A'; CHUNK];
        for _ in 0..10_000 {
            cutter.feed(&chunk, |_| panic!("no newline was sent"));
            assert!(cutter.line.len() <= MAX_LINE);
        }
        let line = cutter.flush().unwrap();
        assert!(line.starts_with(&"A".repeat(MAX_LINE)));
        assert!(line.ends_with(&format!("…[{} more bytes cut]", 10_000 * CHUNK - MAX_LINE)));
    }

    #[test]
    fn control_characters_and_bad_utf8_cannot_forge_a_record() {
        let lines = lines_of(&[b"ok\r\n", b"fake\x1b[2J\rINFO forged\xff\n"]);
        assert_eq!(lines[0], "ok");
        assert_eq!(lines[1], "fake\\u{1b}[2J\\rINFO forged\u{fffd}");
    }

    #[tokio::test]
    async fn drain_keeps_only_the_tail_and_survives_a_flood() {
        let mut flood = Vec::new();
        for i in 0..500 {
            flood.extend_from_slice(format!("line {i}\n").as_bytes());
        }
        flood.extend(std::iter::repeat_n(b'B', 1 << 20));
        let tail = drain(1, Pipe::Stderr, &flood[..]).await;
        assert_eq!(tail.len(), TAIL_LINES);
        assert_eq!(tail[TAIL_LINES - 2], "line 499");
        assert!(tail[TAIL_LINES - 1].len() < MAX_LINE + 64);
    }
}
