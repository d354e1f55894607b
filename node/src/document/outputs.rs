//! What a kernel's outputs may cost the node and its clients: [`OutputLimits`], and two sans-IO
//! cores the document actor feeds every output: [`RunOutputs`] (what a cell keeps) and
//! [`LiveView`] (what clients are shown as it happens).
//!
//! Every output comes from code a stranger wrote, so none is trusted to be small:
//! - **per output**: an output whose JSON is over [`OutputLimits::per_output`] is cut to fit
//!   (text truncated, large MIME entries dropped) with a visible `[airlock]` note in it;
//! - **live, per document**: outputs are shown to clients from a budget of
//!   [`OutputLimits::live_burst`] bytes that refills at [`OutputLimits::live_rate`] bytes a
//!   second (like Jupyter's `iopub_data_rate_limit`), and only while the outputs still held in
//!   the document's broadcast ring (the last [`LiveView::new`]`(ring)` events, kept for clients
//!   that lag) stay under [`OutputLimits::ring_bytes`]; past either, outputs are not shown live,
//!   one notice says so, and another says how many were hidden once output flows again;
//! - **stored, per cell**: the settled outputs (what a `.ipynb` holds and what a joining client
//!   is sent) stay under [`OutputLimits::per_cell`], with a note saying what was not kept, so a
//!   cell's outputs always fit one frame and no document can become unjoinable; all cells
//!   together keep at most [`OutputLimits::per_document`].
//!
//! Settling is incremental and linear: stream chunks merge into the last output as they come,
//! `clear_output` empties what is kept, and `update_display_data` finds its displays through an
//! index instead of scanning. [`trim_stored`] applies the per-cell limit to outputs that come
//! from elsewhere (the store, an imported notebook), so documents stored before these limits
//! open and can be cleared.
//!
//! Nothing here does IO or reads the clock: `now` is passed in.

use std::collections::HashMap;
use std::io;
use std::time::Instant;

use airlock_protocol::{MimeBundle, Output, StreamName};

/// The limits on one cell's outputs. [`Default`] is what `airlock node` uses unless told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputLimits {
    /// The largest single output, as JSON bytes.
    pub per_output: usize,
    /// The live budget of a document: this many bytes may be shown at once…
    pub live_burst: usize,
    /// …refilling at this many bytes a second.
    pub live_rate: usize,
    /// The most output the broadcast ring may hold for lagging clients.
    pub ring_bytes: usize,
    /// The most a cell keeps (and sends a joining client), as JSON bytes.
    pub per_cell: usize,
    /// The most all cells of a document keep together.
    pub per_document: usize,
}

impl Default for OutputLimits {
    /// 2 MiB per output; a live budget of 16 MiB refilling at 1 MiB/s, with at most 32 MiB of
    /// output in the ring; 4 MiB kept per cell and 64 MiB per document.
    fn default() -> Self {
        OutputLimits {
            per_output: 2 << 20,
            live_burst: 16 << 20,
            live_rate: 1 << 20,
            ring_bytes: 32 << 20,
            per_cell: 4 << 20,
            per_document: 64 << 20,
        }
    }
}

/// Room left in a frame for the message around a cell's outputs.
const FRAME_OVERHEAD: usize = 16 * 1024;
/// Room an output keeps for the note that says it was cut.
const NOTE_ROOM: usize = 512;

impl OutputLimits {
    /// These limits, shrunk where needed so that one output, and one cell's kept outputs,
    /// always fit a frame of `frame_limit` bytes.
    pub fn within_frame(self, frame_limit: usize) -> Self {
        let room = frame_limit
            .saturating_sub(FRAME_OVERHEAD)
            .max(4 * NOTE_ROOM);
        let per_cell = self.per_cell.min(room);
        OutputLimits {
            per_output: self.per_output.min(per_cell),
            per_cell,
            ..self
        }
    }
}

/// The size of `output` as JSON, without building the JSON.
pub fn json_size(output: &Output) -> usize {
    struct Count(usize);
    impl io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Serialising plain data into a counter cannot fail; an error would only undercount.
    let _ = serde_json::to_writer(&mut count, output);
    count.0
}

/// `[airlock] …` on stderr: how the node speaks inside a cell's outputs.
pub fn note(text: impl AsRef<str>) -> Output {
    Output::Stream {
        name: StreamName::Stderr,
        text: format!("[airlock] {}\n", text.as_ref()),
    }
}

fn human(bytes: usize) -> String {
    const MIB: f64 = (1 << 20) as f64;
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / MIB)
    } else if bytes >= 1 << 10 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{bytes} bytes")
    }
}

/// Cuts `text` to at most `max` bytes, at a character boundary.
fn cut_text(text: &mut String, max: usize) {
    if text.len() > max {
        let mut at = max;
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        text.truncate(at);
    }
}

/// `output` made to fit `max` JSON bytes, or `None` if it already does. The result says, in
/// its own text, what was cut.
pub fn cap_output(output: &Output, max: usize) -> Option<Output> {
    let size = json_size(output);
    if size <= max {
        return None;
    }
    let budget = max.saturating_sub(NOTE_ROOM);
    let capped = match output {
        Output::Stream { name, text } => {
            let mut kept = text.clone();
            shrink_to(&mut kept, budget, |t| {
                json_size(&Output::Stream {
                    name: *name,
                    text: t.to_owned(),
                })
            });
            let cut = text.len() - kept.len();
            kept.push_str(&format!(
                "\n[airlock] output truncated: {} more not shown (limit {} per output)\n",
                human(cut),
                human(max)
            ));
            Output::Stream {
                name: *name,
                text: kept,
            }
        }
        Output::DisplayData {
            data,
            metadata,
            display_id,
        } => keep_metadata_if_room(
            Output::DisplayData {
                data: cap_bundle(data, budget, size, max),
                metadata: Default::default(),
                display_id: display_id.clone(),
            },
            metadata,
            max,
        ),
        Output::UpdateDisplayData {
            data,
            metadata,
            display_id,
        } => keep_metadata_if_room(
            Output::UpdateDisplayData {
                data: cap_bundle(data, budget, size, max),
                metadata: Default::default(),
                display_id: display_id.clone(),
            },
            metadata,
            max,
        ),
        Output::ExecuteResult {
            execution_count,
            data,
            metadata,
        } => keep_metadata_if_room(
            Output::ExecuteResult {
                execution_count: *execution_count,
                data: cap_bundle(data, budget, size, max),
                metadata: Default::default(),
            },
            metadata,
            max,
        ),
        Output::Error {
            ename,
            evalue,
            traceback,
        } => {
            let mut ename = ename.clone();
            let mut evalue = evalue.clone();
            cut_text(&mut ename, 256);
            cut_text(&mut evalue, budget / 4);
            // Keep the frames nearest the error, within what is left.
            let mut room = budget.saturating_sub(evalue.len() + ename.len());
            let mut kept: Vec<String> = Vec::new();
            for frame in traceback.iter().rev() {
                let mut frame = frame.clone();
                cut_text(&mut frame, room.min(16 * 1024));
                // Escaping can make JSON larger than the text; count it twice to be safe.
                let cost = 2 * frame.len() + 8;
                if cost > room {
                    break;
                }
                room -= cost;
                kept.push(frame);
            }
            kept.reverse();
            if kept.len() < traceback.len() {
                kept.insert(
                    0,
                    format!(
                        "[airlock] traceback truncated: {} of {} frames not shown",
                        traceback.len() - kept.len(),
                        traceback.len()
                    ),
                );
            }
            Output::Error {
                ename,
                evalue,
                traceback: kept,
            }
        }
        // Nothing else carries a payload that can grow.
        Output::ClearOutput { .. } | Output::Unknown => return None,
    };
    // Whatever the shape, never hand back more than the limit.
    if json_size(&capped) > max {
        return Some(note(format!(
            "an output of {} was not shown (limit {} per output)",
            human(size),
            human(max)
        )));
    }
    Some(capped)
}

/// `output` with `metadata` put back, unless that makes it larger than `max`.
fn keep_metadata_if_room(
    mut output: Output,
    metadata: &airlock_protocol::Metadata,
    max: usize,
) -> Output {
    let with = match &mut output {
        Output::DisplayData { metadata: m, .. }
        | Output::UpdateDisplayData { metadata: m, .. }
        | Output::ExecuteResult { metadata: m, .. } => {
            *m = metadata.clone();
            json_size(&output)
        }
        _ => 0,
    };
    if with > max
        && let Output::DisplayData { metadata: m, .. }
        | Output::UpdateDisplayData { metadata: m, .. }
        | Output::ExecuteResult { metadata: m, .. } = &mut output
    {
        m.clear();
    }
    output
}

/// Shrinks `text` until `size(text) <= budget`.
fn shrink_to(text: &mut String, budget: usize, size: impl Fn(&str) -> usize) {
    for _ in 0..8 {
        let now = size(text);
        if now <= budget || text.is_empty() {
            return;
        }
        // JSON can be larger than the text (escapes): cut in proportion, then check again.
        let target = (text.len() as f64 * budget as f64 / now as f64 * 0.95) as usize;
        cut_text(text, target.min(text.len().saturating_sub(1)));
    }
    text.clear();
}

/// A MIME bundle cut to fit: the largest entries go first, and `text/plain` says what went.
fn cap_bundle(data: &MimeBundle, budget: usize, size: usize, max: usize) -> MimeBundle {
    let entry_size = |value: &serde_json::Value| serde_json::to_vec(value).map_or(0, |v| v.len());
    let mut entries: Vec<(&String, usize)> = data.iter().map(|(k, v)| (k, entry_size(v))).collect();
    entries.sort_by_key(|(_, size)| *size);
    let mut kept = MimeBundle::new();
    let mut used = 0;
    let mut dropped = Vec::new();
    for (mime, bytes) in entries {
        if mime != "text/plain" && used + bytes + mime.len() + 8 <= budget {
            used += bytes + mime.len() + 8;
            kept.insert(mime.clone(), data[mime].clone());
        } else if mime != "text/plain" {
            dropped.push(format!("{mime} ({})", human(bytes)));
        }
    }
    let mut plain = data
        .get("text/plain")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_owned();
    let room = budget.saturating_sub(used);
    let plain_before = plain.len();
    shrink_to(&mut plain, room, |t| {
        serde_json::to_vec(t).map_or(usize::MAX, |v| v.len())
    });
    let mut notes = Vec::new();
    if !dropped.is_empty() {
        notes.push(format!("not shown: {}", dropped.join(", ")));
    }
    if plain.len() < plain_before {
        notes.push(format!(
            "text truncated by {}",
            human(plain_before - plain.len())
        ));
    }
    if !notes.is_empty() {
        if !plain.is_empty() {
            plain.push('\n');
        }
        plain.push_str(&format!(
            "[airlock] output of {} cut to the limit of {} per output; {}",
            human(size),
            human(max),
            notes.join("; ")
        ));
    }
    kept.insert("text/plain".into(), serde_json::Value::String(plain));
    kept
}

/// One run's outputs, settled as they arrive and held to [`OutputLimits`].
#[derive(Debug)]
pub struct RunOutputs {
    limits: OutputLimits,
    /// What the cell keeps, settled: what a notebook file would hold.
    settled: Vec<Output>,
    /// JSON size of each settled output.
    sizes: Vec<usize>,
    kept_bytes: usize,
    /// Where each `display_id` is shown among `settled`.
    displays: HashMap<String, Vec<usize>>,
    /// A `clear_output(wait=True)` waits for the next output.
    clear_pending: bool,
    /// Outputs (and their bytes) the per-cell limit kept out of `settled`.
    unkept: (usize, usize),
}

impl RunOutputs {
    pub fn new(limits: OutputLimits) -> Self {
        RunOutputs {
            limits,
            settled: Vec::new(),
            sizes: Vec::new(),
            kept_bytes: 0,
            displays: HashMap::new(),
            clear_pending: false,
            unkept: (0, 0),
        }
    }

    /// Takes one output of the run: cuts it to the per-output limit, settles it into what the
    /// cell keeps, and returns it (cut) to be shown.
    pub fn accept(&mut self, output: Output) -> Output {
        let output = cap_output(&output, self.limits.per_output).unwrap_or(output);
        let size = json_size(&output);
        self.settle(&output, size);
        output
    }

    /// The settled outputs the cell keeps, with a note if some were not kept.
    pub fn finish(mut self) -> Vec<Output> {
        let (count, bytes) = self.unkept;
        if count > 0 {
            metrics::counter!("airlock_node_outputs_unkept_total").increment(count as u64);
            self.settled.push(note(format!(
                "{count} more outputs ({}) are not kept: a cell keeps at most {}",
                human(bytes),
                human(self.limits.per_cell)
            )));
        }
        self.settled
    }

    /// Bytes the cell keeps so far.
    pub fn kept_bytes(&self) -> usize {
        self.kept_bytes
    }

    fn settle(&mut self, output: &Output, size: usize) {
        match output {
            Output::ClearOutput { wait: false } => self.clear(),
            Output::ClearOutput { wait: true } => self.clear_pending = true,
            Output::UpdateDisplayData {
                data,
                metadata,
                display_id,
            } => {
                let Some(positions) = self.displays.get(display_id) else {
                    return;
                };
                for &at in positions {
                    let Output::DisplayData {
                        data: old_data,
                        metadata: old_metadata,
                        ..
                    } = &mut self.settled[at]
                    else {
                        continue;
                    };
                    *old_data = data.clone();
                    *old_metadata = metadata.clone();
                    let new_size = json_size(&self.settled[at]);
                    self.kept_bytes = self.kept_bytes - self.sizes[at] + new_size;
                    self.sizes[at] = new_size;
                }
                // An update may grow a kept display past the cell's limit: drop the largest
                // displays' data until it fits.
                while self.kept_bytes > self.limits.per_cell {
                    let Some(at) = (0..self.settled.len()).max_by_key(|&i| self.sizes[i]) else {
                        break;
                    };
                    let replaced = note(format!(
                        "an updated display of {} is not kept: a cell keeps at most {}",
                        human(self.sizes[at]),
                        human(self.limits.per_cell)
                    ));
                    let new_size = json_size(&replaced);
                    self.kept_bytes = self.kept_bytes - self.sizes[at] + new_size;
                    self.sizes[at] = new_size;
                    self.settled[at] = replaced;
                }
            }
            Output::Unknown => {}
            _ => {
                if std::mem::take(&mut self.clear_pending) {
                    self.clear();
                }
                if let Output::Stream { name, text } = output
                    && let Some(Output::Stream {
                        name: last_name,
                        text: last_text,
                    }) = self.settled.last_mut()
                    && last_name == name
                {
                    let room = self.limits.per_cell.saturating_sub(self.kept_bytes);
                    // Escapes can make a chunk's JSON larger than its text.
                    let grows = size.saturating_sub(json_size(&Output::Stream {
                        name: *name,
                        text: String::new(),
                    }));
                    if grows <= room {
                        last_text.push_str(text);
                        let at = self.sizes.len() - 1;
                        self.sizes[at] += grows;
                        self.kept_bytes += grows;
                    } else {
                        self.unkept.0 += 1;
                        self.unkept.1 += size;
                    }
                    return;
                }
                if self.kept_bytes + size > self.limits.per_cell {
                    self.unkept.0 += 1;
                    self.unkept.1 += size;
                    return;
                }
                if let Output::DisplayData {
                    display_id: Some(id),
                    ..
                } = output
                {
                    self.displays
                        .entry(id.clone())
                        .or_default()
                        .push(self.settled.len());
                }
                self.settled.push(output.clone());
                self.sizes.push(size);
                self.kept_bytes += size;
            }
        }
    }

    fn clear(&mut self) {
        self.settled.clear();
        self.sizes.clear();
        self.displays.clear();
        self.kept_bytes = 0;
        self.clear_pending = false;
        self.unkept = (0, 0);
    }
}

/// What clients are shown live, for the whole document: a token bucket over bytes shown, and an
/// exact account of the output bytes in the broadcast ring.
#[derive(Debug)]
pub struct LiveView {
    limits: OutputLimits,
    allowance: f64,
    last: Option<Instant>,
    /// Outputs hidden since showing stopped (and their bytes); `None` while showing.
    hidden: Option<(usize, usize)>,
    /// The output bytes of each event in the ring, oldest first (0 for other events).
    ring: std::collections::VecDeque<usize>,
    ring_capacity: usize,
    ring_total: usize,
}

impl LiveView {
    /// A view for a document whose broadcast ring holds the last `ring_capacity` events.
    pub fn new(limits: OutputLimits, ring_capacity: usize) -> Self {
        LiveView {
            limits,
            allowance: limits.live_burst as f64,
            last: None,
            hidden: None,
            ring: std::collections::VecDeque::with_capacity(ring_capacity.min(4096)),
            ring_capacity: ring_capacity.max(1),
            ring_total: 0,
        }
    }

    /// An output about to be broadcast at `now`: returns what to broadcast instead — the
    /// output, notes about hidden output, or nothing. Call [`sent`](Self::sent) for each
    /// event actually broadcast, outputs included.
    pub fn admit(&mut self, now: Instant, output: Output) -> Vec<Output> {
        let size = json_size(&output);
        if let Some(last) = self.last {
            let earned =
                now.saturating_duration_since(last).as_secs_f64() * self.limits.live_rate as f64;
            self.allowance = (self.allowance + earned).min(self.limits.live_burst as f64);
        }
        self.last = Some(now);
        // Sending evicts the ring's oldest event once it is full.
        let evicted = if self.ring.len() >= self.ring_capacity {
            self.ring.front().copied().unwrap_or(0)
        } else {
            0
        };
        let ring_after = self.ring_total - evicted + size;
        if self.allowance >= size as f64 && ring_after <= self.limits.ring_bytes {
            self.allowance -= size as f64;
            let mut shown = Vec::with_capacity(2);
            if let Some((count, bytes)) = self.hidden.take() {
                shown.push(note(format!(
                    "{count} outputs ({}) were not shown live: output came faster than {}/s; \
                     the cell keeps what fits",
                    human(bytes),
                    human(self.limits.live_rate)
                )));
            }
            shown.push(output);
            return shown;
        }
        metrics::counter!("airlock_node_outputs_hidden_total").increment(1);
        match &mut self.hidden {
            Some((count, bytes)) => {
                *count += 1;
                *bytes += size;
                Vec::new()
            }
            None => {
                self.hidden = Some((1, size));
                vec![note(format!(
                    "output is coming faster than {}/s: more of it is not shown live until it \
                     slows down",
                    human(self.limits.live_rate)
                ))]
            }
        }
    }

    /// A run ended: the note about output hidden since showing stopped, to end that run with,
    /// so it does not open the next run's output instead.
    pub fn end_run(&mut self) -> Option<Output> {
        let (count, bytes) = self.hidden.take()?;
        Some(note(format!(
            "{count} outputs ({}) were not shown live: output came faster than {}/s; the cell \
             keeps what fits",
            human(bytes),
            human(self.limits.live_rate)
        )))
    }

    /// An event was broadcast; `output` is its output, if it is one.
    pub fn sent(&mut self, output: Option<&Output>) {
        let size = output.map_or(0, json_size);
        if self.ring.len() >= self.ring_capacity
            && let Some(evicted) = self.ring.pop_front()
        {
            self.ring_total -= evicted;
        }
        self.ring.push_back(size);
        self.ring_total += size;
    }

    /// Output bytes in the broadcast ring now.
    pub fn ring_bytes(&self) -> usize {
        self.ring_total
    }
}

/// Settles `outputs` (from the store or a notebook file) and holds them to the per-cell limit.
pub fn trim_stored(outputs: Vec<Output>, limits: OutputLimits) -> Vec<Output> {
    let total: usize = outputs.iter().map(json_size).sum();
    if total <= limits.per_cell && outputs.iter().all(|o| json_size(o) <= limits.per_output) {
        return outputs;
    }
    let mut run = RunOutputs::new(limits);
    for output in outputs {
        run.accept(output);
    }
    run.finish()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn out(text: &str) -> Output {
        Output::Stream {
            name: StreamName::Stdout,
            text: text.into(),
        }
    }

    fn text_of(outputs: &[Output]) -> String {
        outputs
            .iter()
            .filter_map(|o| match o {
                Output::Stream { text, .. } => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }

    fn small() -> OutputLimits {
        OutputLimits {
            per_output: 4096,
            live_burst: 64 * 1024,
            live_rate: 16 * 1024,
            ring_bytes: 48 * 1024,
            per_cell: 32 * 1024,
            per_document: 128 * 1024,
        }
    }

    #[test]
    fn the_review_repro_a_hundred_thousand_prints_keep_under_the_cell_limit() {
        let limits = OutputLimits::default();
        let mut run = RunOutputs::new(limits);
        let line = format!("{}\n", "x".repeat(100));
        for _ in 0..100_000 {
            run.accept(out(&line));
        }
        let kept = run.finish();
        let size: usize = kept.iter().map(json_size).sum();
        assert!(size <= limits.per_cell + 1024, "kept {size} bytes");
        let last = text_of(&kept[kept.len() - 1..]);
        assert!(last.contains("are not kept"), "{last}");
    }

    #[test]
    fn one_huge_output_is_cut_with_a_visible_note_and_fits() {
        let text = "é".repeat(3 << 20);
        let capped = cap_output(&out(&text), 1 << 20).unwrap();
        assert!(json_size(&capped) <= 1 << 20);
        let shown = text_of(std::slice::from_ref(&capped));
        assert!(shown.contains("[airlock] output truncated"));
        assert!(shown.starts_with("éé"));
    }

    #[test]
    fn control_characters_that_escape_sixfold_still_fit() {
        let text = "\u{1}".repeat(1 << 20);
        let capped = cap_output(&out(&text), 64 * 1024).unwrap();
        assert!(json_size(&capped) <= 64 * 1024);
    }

    #[test]
    fn a_display_keeps_what_fits_and_says_what_was_dropped() {
        let mut data = MimeBundle::new();
        data.insert("text/plain".into(), "<Figure>".into());
        data.insert("image/png".into(), "A".repeat(100_000).into());
        data.insert("text/html".into(), "<b>small</b>".into());
        let display = Output::DisplayData {
            data,
            metadata: Default::default(),
            display_id: None,
        };
        let Some(Output::DisplayData { data, .. }) = cap_output(&display, 8192) else {
            panic!("a display stays a display");
        };
        assert!(!data.contains_key("image/png"));
        assert!(data.contains_key("text/html"));
        let plain = data["text/plain"].as_str().unwrap();
        assert!(plain.starts_with("<Figure>"));
        assert!(plain.contains("not shown: image/png"), "{plain}");
    }

    #[test]
    fn a_huge_traceback_keeps_the_frames_nearest_the_error() {
        let traceback: Vec<String> = (0..10_000)
            .map(|i| format!("frame {i:05} {}", "y".repeat(100)))
            .collect();
        let error = Output::Error {
            ename: "RecursionError".into(),
            evalue: "too deep".into(),
            traceback,
        };
        let Some(Output::Error { traceback, .. }) = cap_output(&error, 16 * 1024) else {
            panic!("an error stays an error");
        };
        assert!(traceback[0].contains("traceback truncated"));
        assert!(traceback.last().unwrap().starts_with("frame 09999"));
    }

    #[test]
    fn live_output_past_the_budget_is_hidden_once_and_counted_when_it_resumes() {
        let limits = small();
        let mut live = LiveView::new(limits, 4096);
        let start = Instant::now();
        let chunk = "z".repeat(1000);
        let mut shown = Vec::new();
        for _ in 0..200 {
            for output in live.admit(start, out(&chunk)) {
                live.sent(Some(&output));
                shown.push(output);
            }
        }
        let notes = shown
            .iter()
            .filter(|o| text_of(std::slice::from_ref(o)).starts_with("[airlock]"))
            .count();
        assert_eq!(notes, 1, "one notice when the budget runs out");
        assert!(
            shown.len() < 80,
            "the burst bounds what is shown: {}",
            shown.len()
        );
        assert!(live.ring_bytes() <= limits.ring_bytes);
        // Later the budget is back, and the ring has moved on: the next output comes with a
        // count of what was hidden.
        for _ in 0..4096 {
            live.sent(None);
        }
        let later = live.admit(start + Duration::from_secs(4), out("back\n"));
        assert_eq!(later.len(), 2);
        assert!(text_of(&later[..1]).contains("were not shown live"));
        assert_eq!(text_of(&later[1..]), "back\n");
    }

    #[test]
    fn hidden_output_is_counted_in_its_own_run() {
        let mut live = LiveView::new(small(), 4096);
        let now = Instant::now();
        for _ in 0..200 {
            for output in live.admit(now, out(&"h".repeat(1000))) {
                live.sent(Some(&output));
            }
        }
        let last = live.end_run().unwrap();
        assert!(text_of(&[last]).contains("were not shown live"));
        assert_eq!(live.end_run(), None);
    }

    #[test]
    fn the_ring_never_holds_more_output_than_its_budget_however_slow_the_output() {
        let limits = small();
        let mut live = LiveView::new(limits, 64);
        let start = Instant::now();
        let chunk = "r".repeat(3000);
        for i in 0..10_000u64 {
            // An hour apart: the rate budget is always full, only the ring can refuse.
            let now = start + Duration::from_secs(3600 * i);
            for output in live.admit(now, out(&chunk)) {
                live.sent(Some(&output));
            }
            assert!(live.ring_bytes() <= limits.ring_bytes);
        }
    }

    #[test]
    fn settling_matches_what_a_front_end_shows() {
        let mut run = RunOutputs::new(small());
        let mut data = MimeBundle::new();
        data.insert("text/plain".into(), "0%".into());
        run.accept(out("a"));
        run.accept(out("b"));
        run.accept(Output::DisplayData {
            data: data.clone(),
            metadata: Default::default(),
            display_id: Some("bar".into()),
        });
        for pct in ["10%", "50%", "100%"] {
            let mut data = MimeBundle::new();
            data.insert("text/plain".into(), pct.into());
            run.accept(Output::UpdateDisplayData {
                data,
                metadata: Default::default(),
                display_id: "bar".into(),
            });
        }
        let kept = run.finish();
        assert_eq!(kept.len(), 2);
        assert_eq!(text_of(&kept[..1]), "ab");
        let Output::DisplayData { data, .. } = &kept[1] else {
            panic!("a display")
        };
        assert_eq!(data["text/plain"], "100%");

        let mut run = RunOutputs::new(small());
        run.accept(out("gone"));
        run.accept(Output::ClearOutput { wait: true });
        assert_eq!(run.kept_bytes(), json_size(&out("gone")));
        run.accept(out("fresh"));
        assert_eq!(text_of(&run.finish()), "fresh");
    }

    #[test]
    fn many_updates_of_many_displays_settle_in_linear_time() {
        let mut run = RunOutputs::new(OutputLimits::default());
        for i in 0..2_000 {
            let mut data = MimeBundle::new();
            data.insert("text/plain".into(), i.to_string().into());
            run.accept(Output::DisplayData {
                data,
                metadata: Default::default(),
                display_id: Some(format!("d{i}")),
            });
        }
        let started = std::time::Instant::now();
        for i in 0..200_000 {
            let mut data = MimeBundle::new();
            data.insert("text/plain".into(), "u".into());
            run.accept(Output::UpdateDisplayData {
                data,
                metadata: Default::default(),
                display_id: format!("d{}", i % 2_000),
            });
        }
        // Quadratic settling took minutes for this; linear takes well under a second.
        assert!(started.elapsed() < Duration::from_secs(20));
        assert_eq!(run.finish().len(), 2_000);
    }

    #[test]
    fn stored_outputs_from_before_the_limits_are_trimmed_on_load() {
        let limits = small();
        let big: Vec<Output> = (0..1000).map(|i| out(&format!("{i:0>100}\n"))).collect();
        let trimmed = trim_stored(big, limits);
        let size: usize = trimmed.iter().map(json_size).sum();
        assert!(size <= limits.per_cell + 1024);
        assert!(text_of(&trimmed).contains("are not kept"));
        let fine = vec![out("ok")];
        assert_eq!(trim_stored(fine.clone(), limits), fine);
    }

    #[test]
    fn limits_shrink_to_fit_the_frame() {
        let limits = OutputLimits::default().within_frame(1 << 20);
        assert!(limits.per_cell + FRAME_OVERHEAD <= 1 << 20);
        assert!(limits.per_output <= limits.per_cell);
    }
}
