//! Jupyter `.ipynb` files (nbformat 4) in and out of Airlock's [`Notebook`].
//!
//! [`import`] reads nbformat 4.0–4.5 JSON into a notebook CRDT plus the outputs that live beside
//! it (outputs are not in the CRDT; the caller stores them per cell). [`export`] writes nbformat
//! 4.5 back, with cell ids and Jupyter's conventions (sources and text outputs as lists of
//! lines, sorted keys, and [`to_string_pretty`] for the 1-space indent).
//!
//! # Where things go on import
//! - cells → the CRDT's `cells` array in the `jupyter_ydoc` layout that [`Notebook`] reads
//!   (`id`, `cell_type`, `source` text, `metadata` map, `execution_count` left null), with the
//!   cell's metadata entries in its `metadata` map and markdown and raw cells' `attachments`
//!   under an `attachments` key, as `jupyter_ydoc` keeps them. Attachments on code cells (which
//!   nbformat does not allow) are dropped with a warning.
//! - notebook `metadata`, `nbformat`, `nbformat_minor` → the CRDT's `meta` map.
//! - SQL cells: Airlock writes them as code cells whose metadata has
//!   `airlock.cell_type = "sql"` (and optionally `airlock.result_name`). They become
//!   [`CellKind::Sql`]; the `cell_type` marker is removed from the CRDT metadata (the kind is the
//!   truth there), `airlock.result_name` stays. Export writes the marker back.
//! - `execution_count` and outputs → [`CellOutputs`], keyed by cell id.
//!
//! # What is refused and what is only warned about
//! Errors ([`IpynbError`]) for input that cannot be read without losing content: not JSON,
//! nbformat other than 4, over the size or cell limit, a field of the wrong shape (a number as a
//! `source`, say). Warnings ([`ImportWarning`]) for what can be repaired: missing, invalid or
//! duplicate cell ids (new ids are generated), unknown cell types (imported as raw), unknown
//! output types (dropped), metadata nested too deep for the CRDT (dropped).
//!
//! Hostile JSON cannot overflow the stack: `serde_json` refuses nesting deeper than 128 levels,
//! and everything this module walks recursively came out of `serde_json`. Metadata deeper than
//! [`MAX_METADATA_DEPTH`] is dropped so the document stays under the CRDT validator's depth limit
//! and can always be reloaded from its own snapshot.
//!
//! This module does no IO and reads no clock: ids are drawn from the RNG the caller passes to
//! [`import_with_rng`].

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use airlock_protocol::message::{MimeBundle, Output, StreamName};
use rand::Rng;
use serde_json::{Map, Value};
use yrs::any::Number;
use yrs::types::ToJson;
use yrs::updates::decoder::Decode;
use yrs::{
    Any, Array, Doc, GetString, In, Map as _, MapPrelim, MapRef, Out, ReadTxn, StateVector,
    TextPrelim, Transact, Update,
};

use super::notebook::{CellKind, Notebook, NotebookError};
use super::validate;

/// The nbformat minor version [`export`] writes (4.5: the first with cell ids).
pub const EXPORT_MINOR: u64 = 5;

/// Deepest nesting (arrays and objects) kept in one metadata value. The CRDT validator refuses
/// `Any` values nested deeper than 64 levels, so deeper metadata would make a document its own
/// node could not reload.
pub const MAX_METADATA_DEPTH: usize = 32;

/// How much an import accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportLimits {
    /// Largest file, in bytes. Outputs (images) are most of a big notebook.
    pub max_bytes: usize,
    /// Most cells.
    pub max_cells: usize,
}

impl Default for ImportLimits {
    /// 64 MiB and 10,000 cells.
    fn default() -> Self {
        ImportLimits {
            max_bytes: 64 << 20,
            max_cells: 10_000,
        }
    }
}

/// One cell's run state as a file records it: not in the CRDT, stored beside it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CellOutputs {
    /// The cell's `execution_count`: `None` for a cell never run (`null` in the file).
    pub execution_count: Option<u32>,
    pub outputs: Vec<Output>,
}

/// Outputs of every code cell that has any (or an execution count), by cell id.
pub type OutputsByCell = BTreeMap<String, CellOutputs>;

/// A file read into Airlock's pieces.
#[derive(Debug)]
pub struct Imported {
    pub notebook: Notebook,
    /// Only code and SQL cells with outputs or an execution count have an entry.
    pub outputs: OutputsByCell,
    /// What was repaired or dropped, for the person importing the file.
    pub warnings: Vec<ImportWarning>,
}

/// Something the import repaired or dropped. `cell` is the cell's index in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportWarning {
    /// The file's minor version is newer than 4.5; fields this reader does not know are dropped.
    NewerMinorVersion { minor: u64 },
    /// A later cell repeated an earlier cell's id; the later one was renamed.
    DuplicateId {
        cell: usize,
        id: String,
        renamed_to: String,
    },
    /// The id does not match nbformat's `^[a-zA-Z0-9-_]+$` (1 to 64 characters); replaced.
    InvalidId {
        cell: usize,
        id: String,
        replaced_with: String,
    },
    /// A `cell_type` other than code, markdown and raw; imported as a raw cell.
    UnknownCellType { cell: usize, cell_type: String },
    /// An output type nbformat 4 files do not have; dropped.
    UnknownOutputType { cell: usize, output_type: String },
    /// A stream other than stdout and stderr; imported as stdout.
    UnknownStreamName { cell: usize, name: String },
    /// A markdown or raw cell had outputs; dropped.
    OutputsOnNonCodeCell { cell: usize },
    /// A code cell had attachments (nbformat allows them on markdown and raw cells); dropped.
    AttachmentsOnCodeCell { cell: usize },
    /// A `data` key that is not a MIME type (`type/subtype`); dropped.
    InvalidMimeType { cell: usize, mime: String },
    /// A metadata value nested deeper than [`MAX_METADATA_DEPTH`]; dropped. `cell` is `None` for
    /// notebook metadata.
    MetadataTooDeep { cell: Option<usize>, key: String },
}

impl fmt::Display for ImportWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImportWarning::NewerMinorVersion { minor } => write!(
                f,
                "the file is nbformat 4.{minor}, newer than 4.{EXPORT_MINOR}; fields this version \
                 does not know were dropped"
            ),
            ImportWarning::DuplicateId {
                cell,
                id,
                renamed_to,
            } => write!(
                f,
                "cell {cell} repeats the id {id:?} of an earlier cell; renamed to {renamed_to:?}"
            ),
            ImportWarning::InvalidId {
                cell,
                id,
                replaced_with,
            } => write!(
                f,
                "cell {cell} has the id {id:?}, which nbformat does not allow; replaced with \
                 {replaced_with:?}"
            ),
            ImportWarning::UnknownCellType { cell, cell_type } => write!(
                f,
                "cell {cell} has the unknown type {cell_type:?}; imported as a raw cell"
            ),
            ImportWarning::UnknownOutputType { cell, output_type } => write!(
                f,
                "cell {cell} has an output of unknown type {output_type:?}; dropped"
            ),
            ImportWarning::UnknownStreamName { cell, name } => write!(
                f,
                "cell {cell} has output on the stream {name:?}; imported as stdout"
            ),
            ImportWarning::OutputsOnNonCodeCell { cell } => {
                write!(f, "cell {cell} is not a code cell but has outputs; dropped")
            }
            ImportWarning::AttachmentsOnCodeCell { cell } => write!(
                f,
                "cell {cell} is a code cell with attachments, which nbformat does not allow; \
                 dropped"
            ),
            ImportWarning::InvalidMimeType { cell, mime } => write!(
                f,
                "cell {cell} has output data under {mime:?}, which is not a MIME type; dropped"
            ),
            ImportWarning::MetadataTooDeep {
                cell: Some(cell),
                key,
            } => write!(
                f,
                "cell {cell}'s metadata {key:?} nests deeper than {MAX_METADATA_DEPTH} levels; \
                 dropped"
            ),
            ImportWarning::MetadataTooDeep { cell: None, key } => write!(
                f,
                "notebook metadata {key:?} nests deeper than {MAX_METADATA_DEPTH} levels; dropped"
            ),
        }
    }
}

/// Why a file was refused or a notebook could not be exported.
#[derive(Debug, thiserror::Error)]
pub enum IpynbError {
    #[error("the file is {len} bytes, over the import limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("the file is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    #[error("the file is not a Jupyter notebook: {0}")]
    NotANotebook(&'static str),
    #[error(
        "the file is nbformat {found}, and only nbformat 4 can be imported; convert it with \
         `jupyter nbconvert --to notebook --nbformat 4 <file>`"
    )]
    UnsupportedVersion { found: String },
    #[error("the notebook has {count} cells, over the import limit of {max}")]
    TooManyCells { count: usize, max: usize },
    /// A field has the wrong shape; `at` is its path in the file (`cells[3].source`).
    #[error("{at} {problem}")]
    Malformed { at: String, problem: &'static str },
    /// Sources, metadata and attachments together are over what one document snapshot may hold.
    #[error(
        "the notebook's text and metadata take {len} bytes as a document, over the limit of {max}"
    )]
    DocumentTooLarge { len: usize, max: usize },
    /// The built document did not load (a bug here, or a limit of the CRDT validator).
    #[error("the notebook could not be built as a document: {0}")]
    Document(#[source] NotebookError),
    /// The notebook's own snapshot did not decode for export (a bug in the CRDT library).
    #[error("the notebook's snapshot could not be read back: {0}")]
    Snapshot(#[source] yrs::error::Error),
    #[error("the notebook could not be written as JSON: {0}")]
    Write(#[source] serde_json::Error),
}

/// Imports a `.ipynb` file, drawing new cell ids from the thread's RNG.
pub fn import(json: &[u8], limits: ImportLimits) -> Result<Imported, IpynbError> {
    import_with_rng(json, limits, &mut rand::thread_rng())
}

/// Imports a `.ipynb` file; new cell ids (for cells without a usable one) come from `rng`.
pub fn import_with_rng(
    json: &[u8],
    limits: ImportLimits,
    rng: &mut impl Rng,
) -> Result<Imported, IpynbError> {
    if json.len() > limits.max_bytes {
        return Err(IpynbError::TooLarge {
            len: json.len(),
            max: limits.max_bytes,
        });
    }
    let root: Value = serde_json::from_slice(json).map_err(IpynbError::NotJson)?;
    let Value::Object(root) = root else {
        return Err(IpynbError::NotANotebook(
            "the top level is not a JSON object",
        ));
    };
    let mut warnings = Vec::new();

    let minor = check_version(&root, &mut warnings)?;
    let metadata = match root.get("metadata") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(map)) => bounded_metadata(map, None, &mut warnings),
        Some(_) => return Err(malformed("metadata", "must be an object")),
    };
    let cells = match root.get("cells") {
        Some(Value::Array(cells)) => cells,
        Some(_) => return Err(malformed("cells", "must be a list")),
        None => return Err(IpynbError::NotANotebook("it has no `cells` list")),
    };
    if cells.len() > limits.max_cells {
        return Err(IpynbError::TooManyCells {
            count: cells.len(),
            max: limits.max_cells,
        });
    }

    let mut parsed = Vec::with_capacity(cells.len());
    for (index, cell) in cells.iter().enumerate() {
        parsed.push(parse_cell(index, cell, &mut warnings)?);
    }
    let ids = assign_ids(&parsed, rng, &mut warnings);

    let mut outputs = OutputsByCell::new();
    for (cell, id) in parsed.iter_mut().zip(&ids) {
        let run = std::mem::take(&mut cell.run);
        if run.execution_count.is_some() || !run.outputs.is_empty() {
            outputs.insert(id.clone(), run);
        }
    }

    let client_id = rng.gen_range(1..(1u64 << 53));
    let snapshot = build_snapshot(client_id, &parsed, &ids, metadata, minor);
    let max = validate::Limits::default().max_len;
    if snapshot.len() > max {
        return Err(IpynbError::DocumentTooLarge {
            len: snapshot.len(),
            max,
        });
    }
    let notebook = Notebook::load([snapshot.as_slice()]).map_err(IpynbError::Document)?;
    Ok(Imported {
        notebook,
        outputs,
        warnings,
    })
}

/// Exports a notebook and its outputs as nbformat 4.5 JSON.
///
/// Cell ids outside nbformat's pattern (Airlock allows `.` and up to 128 characters) are
/// rewritten (`.` → `_`, cut to 64 characters, made unique); outputs are looked up by the
/// original id. Outputs are [settled](settle_outputs) first.
pub fn export(notebook: &Notebook, outputs: &OutputsByCell) -> Result<Value, IpynbError> {
    // A read-only replica: its client id never appears in an update.
    let doc = Doc::with_client_id(1);
    // Defined before the update arrives, so the roots are read back as an array and a map.
    let cells_ref = doc.get_or_insert_array("cells");
    let meta = doc.get_or_insert_map("meta");
    let update =
        Update::decode_v1(&notebook.snapshot()).map_err(|err| IpynbError::Snapshot(err.into()))?;
    doc.transact_mut()
        .apply_update(update)
        .map_err(|err| IpynbError::Snapshot(err.into()))?;
    let txn = doc.transact();

    let metadata = match meta.get(&txn, "metadata") {
        Some(value) => match any_to_json(&value.to_json(&txn)) {
            Value::Object(map) => map,
            _ => Map::new(),
        },
        None => Map::new(),
    };

    let mut used = HashSet::new();
    let mut cells = Vec::new();
    {
        for value in cells_ref.iter(&txn) {
            let Out::YMap(cell) = value else { continue };
            let Some(id) = string_at(&txn, &cell, "id") else {
                continue;
            };
            let kind = string_at(&txn, &cell, "cell_type")
                .and_then(|s| s.parse::<CellKind>().ok())
                .unwrap_or(CellKind::Raw);
            let source = match cell.get(&txn, "source") {
                Some(Out::YText(text)) => text.get_string(&txn),
                Some(Out::Any(Any::String(s))) => s.to_string(),
                _ => String::new(),
            };
            let metadata = match cell.get(&txn, "metadata").map(|m| m.to_json(&txn)) {
                Some(any) => match any_to_json(&any) {
                    Value::Object(map) => map,
                    _ => Map::new(),
                },
                None => Map::new(),
            };
            let attachments = cell
                .get(&txn, "attachments")
                .map(|a| any_to_json(&a.to_json(&txn)))
                .filter(|a| a.as_object().is_some_and(|a| !a.is_empty()));
            let file_id = unique_export_id(&id, &mut used);
            cells.push(export_cell(
                file_id,
                kind,
                &source,
                metadata,
                attachments,
                outputs.get(&id),
            ));
        }
    }

    let mut root = Map::new();
    root.insert("cells".into(), Value::Array(cells));
    root.insert("metadata".into(), Value::Object(metadata));
    root.insert("nbformat".into(), Value::from(4));
    root.insert("nbformat_minor".into(), Value::from(EXPORT_MINOR));
    Ok(Value::Object(root))
}

/// Writes a notebook as Jupyter does: 1-space indent, keys sorted, non-ASCII kept, and a
/// trailing newline.
pub fn to_string_pretty(notebook: &Value) -> Result<String, IpynbError> {
    use serde::Serialize;
    let mut bytes = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b" ");
    let mut serializer = serde_json::Serializer::with_formatter(&mut bytes, formatter);
    notebook
        .serialize(&mut serializer)
        .map_err(IpynbError::Write)?;
    bytes.push(b'\n');
    String::from_utf8(bytes).map_err(|err| IpynbError::Write(serde::ser::Error::custom(err)))
}

/// Applies the outputs that act on earlier ones, as a Jupyter front end would have shown them:
/// `clear_output` empties the list (with `wait`, just before the next output arrives, and not
/// at all if none does), `update_display_data` replaces the data and metadata of every earlier
/// `display_data` with the same `display_id`, and consecutive stream chunks of the same stream
/// are merged. What remains has only the output types a file holds.
pub fn settle_outputs(outputs: &[Output]) -> Vec<Output> {
    let mut settled: Vec<Output> = Vec::new();
    // Where each display id is shown, so an update costs its displays, not the whole list.
    let mut displays: std::collections::HashMap<&str, Vec<usize>> = Default::default();
    let mut clear_pending = false;
    for output in outputs {
        match output {
            Output::ClearOutput { wait: false } => {
                settled.clear();
                displays.clear();
                clear_pending = false;
            }
            Output::ClearOutput { wait: true } => clear_pending = true,
            Output::UpdateDisplayData {
                data,
                metadata,
                display_id,
            } => {
                for &at in displays.get(display_id.as_str()).into_iter().flatten() {
                    if let Output::DisplayData {
                        data: old_data,
                        metadata: old_metadata,
                        ..
                    } = &mut settled[at]
                    {
                        *old_data = data.clone();
                        *old_metadata = metadata.clone();
                    }
                }
            }
            Output::Unknown => {}
            _ => {
                if std::mem::take(&mut clear_pending) {
                    settled.clear();
                    displays.clear();
                }
                if let Output::Stream { name, text } = output
                    && let Some(Output::Stream {
                        name: last_name,
                        text: last_text,
                    }) = settled.last_mut()
                    && last_name == name
                {
                    last_text.push_str(text);
                    continue;
                }
                if let Output::DisplayData {
                    display_id: Some(id),
                    ..
                } = output
                {
                    displays.entry(id.as_str()).or_default().push(settled.len());
                }
                settled.push(output.clone());
            }
        }
    }
    settled
}

/// Whether `id` matches nbformat 4.5's cell id pattern `^[a-zA-Z0-9-_]+$`, 1 to 64 characters.
pub fn is_nbformat_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

// ---------------------------------------------------------------------------------------------
// Import.

/// One cell as read from the file, before ids are settled.
struct ParsedCell {
    /// The `id` the file gave, if it gave a string.
    declared_id: Option<String>,
    kind: CellKind,
    source: String,
    metadata: Map<String, Value>,
    /// Markdown and raw cells only.
    attachments: Option<Map<String, Value>>,
    run: CellOutputs,
}

/// Checks `nbformat` and returns `nbformat_minor`.
fn check_version(
    root: &Map<String, Value>,
    warnings: &mut Vec<ImportWarning>,
) -> Result<u64, IpynbError> {
    match root.get("nbformat") {
        // `4.0` too: some writers emit every number as a float.
        Some(Value::Number(n)) if n.as_f64() == Some(4.0) => {}
        Some(Value::Number(n)) => {
            return Err(IpynbError::UnsupportedVersion {
                found: n.to_string(),
            });
        }
        Some(_) => return Err(malformed("nbformat", "must be a number")),
        None if root.contains_key("worksheets") => {
            // nbformat 3 and earlier keep cells in worksheets.
            return Err(IpynbError::UnsupportedVersion {
                found: "3 or earlier (it has `worksheets`)".into(),
            });
        }
        None => return Err(IpynbError::NotANotebook("it has no `nbformat` field")),
    }
    let minor = match root.get("nbformat_minor") {
        None | Some(Value::Null) => 0,
        Some(Value::Number(n)) => n
            .as_u64()
            .ok_or_else(|| malformed("nbformat_minor", "must be a whole number"))?,
        Some(_) => return Err(malformed("nbformat_minor", "must be a number")),
    };
    if minor > EXPORT_MINOR {
        warnings.push(ImportWarning::NewerMinorVersion { minor });
    }
    Ok(minor)
}

fn parse_cell(
    index: usize,
    cell: &Value,
    warnings: &mut Vec<ImportWarning>,
) -> Result<ParsedCell, IpynbError> {
    let at = |field: &str| format!("cells[{index}].{field}");
    let Value::Object(cell) = cell else {
        return Err(malformed(format!("cells[{index}]"), "must be an object"));
    };
    let declared_id = match cell.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) => Some(id.clone()),
        Some(_) => return Err(malformed(at("id"), "must be a string")),
    };
    let source = match cell.get("source") {
        None | Some(Value::Null) => String::new(),
        Some(value) => {
            multiline(value).ok_or_else(|| malformed(at("source"), MULTILINE_PROBLEM))?
        }
    };
    let mut metadata = match cell.get("metadata") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(map)) => bounded_metadata(map, Some(index), warnings),
        Some(_) => return Err(malformed(at("metadata"), "must be an object")),
    };
    let cell_type = match cell.get("cell_type") {
        Some(Value::String(t)) => t.as_str(),
        Some(_) => return Err(malformed(at("cell_type"), "must be a string")),
        None => "",
    };
    let kind = match cell_type {
        "code" if take_sql_marker(&mut metadata) => CellKind::Sql,
        "code" => CellKind::Code,
        "markdown" => CellKind::Markdown,
        "raw" => CellKind::Raw,
        other => {
            warnings.push(ImportWarning::UnknownCellType {
                cell: index,
                cell_type: other.to_owned(),
            });
            CellKind::Raw
        }
    };
    let attachments = match cell.get("attachments") {
        None | Some(Value::Null) => None,
        Some(Value::Object(map)) if map.is_empty() => None,
        Some(Value::Object(_)) if matches!(kind, CellKind::Code | CellKind::Sql) => {
            warnings.push(ImportWarning::AttachmentsOnCodeCell { cell: index });
            None
        }
        Some(Value::Object(map)) => {
            if map_depth(map) > MAX_METADATA_DEPTH {
                return Err(malformed(at("attachments"), "nest too deep"));
            }
            Some(map.clone())
        }
        Some(_) => return Err(malformed(at("attachments"), "must be an object")),
    };

    let mut run = CellOutputs::default();
    let raw_outputs = match cell.get("outputs") {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(outputs)) => outputs.as_slice(),
        Some(_) => return Err(malformed(at("outputs"), "must be a list")),
    };
    if matches!(kind, CellKind::Code | CellKind::Sql) {
        run.execution_count = match cell.get("execution_count") {
            None | Some(Value::Null) => None,
            Some(value) => {
                Some(count(value).ok_or_else(|| malformed(at("execution_count"), COUNT_PROBLEM))?)
            }
        };
        for (n, output) in raw_outputs.iter().enumerate() {
            let at = format!("cells[{index}].outputs[{n}]");
            if let Some(output) = parse_output(index, &at, output, run.execution_count, warnings)? {
                run.outputs.push(output);
            }
        }
    } else if !raw_outputs.is_empty() {
        warnings.push(ImportWarning::OutputsOnNonCodeCell { cell: index });
    }

    Ok(ParsedCell {
        declared_id,
        kind,
        source,
        metadata,
        attachments,
        run,
    })
}

/// Removes `airlock.cell_type = "sql"` from a code cell's metadata; true when it was there.
/// `airlock` itself goes when nothing else is left in it.
fn take_sql_marker(metadata: &mut Map<String, Value>) -> bool {
    let Some(Value::Object(airlock)) = metadata.get_mut("airlock") else {
        return false;
    };
    if airlock.get("cell_type").and_then(Value::as_str) != Some("sql") {
        return false;
    }
    airlock.remove("cell_type");
    if airlock.is_empty() {
        metadata.remove("airlock");
    }
    true
}

const MULTILINE_PROBLEM: &str = "must be a string or a list of strings";
const COUNT_PROBLEM: &str = "must be null or a whole number below 2^32";

fn parse_output(
    cell: usize,
    at: &str,
    output: &Value,
    cell_count: Option<u32>,
    warnings: &mut Vec<ImportWarning>,
) -> Result<Option<Output>, IpynbError> {
    let field = |name: &str| format!("{at}.{name}");
    let Value::Object(output) = output else {
        return Err(malformed(at, "must be an object"));
    };
    let output_type = match output.get("output_type") {
        Some(Value::String(t)) => t.as_str(),
        _ => return Err(malformed(field("output_type"), "must be a string")),
    };
    let string = |name: &str| match output.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        _ => Err(malformed(field(name), "must be a string")),
    };
    let metadata = || match output.get("metadata") {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(map)) if map_depth(map) <= MAX_METADATA_DEPTH => Ok(map.clone()),
        Some(Value::Object(_)) => Err(malformed(field("metadata"), "nests too deep")),
        Some(_) => Err(malformed(field("metadata"), "must be an object")),
    };
    let data = |warnings: &mut Vec<ImportWarning>| match output.get("data") {
        Some(Value::Object(map)) => mime_bundle(cell, &field("data"), map, warnings),
        None | Some(Value::Null) => Ok(MimeBundle::new()),
        Some(_) => Err(malformed(field("data"), "must be an object")),
    };
    Ok(Some(match output_type {
        "stream" => {
            let name = match string("name")?.as_str() {
                "stdout" => StreamName::Stdout,
                "stderr" => StreamName::Stderr,
                other => {
                    warnings.push(ImportWarning::UnknownStreamName {
                        cell,
                        name: other.to_owned(),
                    });
                    StreamName::Stdout
                }
            };
            let text = output
                .get("text")
                .and_then(multiline)
                .ok_or_else(|| malformed(field("text"), MULTILINE_PROBLEM))?;
            Output::Stream { name, text }
        }
        "display_data" => Output::DisplayData {
            data: data(warnings)?,
            metadata: metadata()?,
            display_id: None,
        },
        "execute_result" => {
            let execution_count = match output.get("execution_count") {
                None | Some(Value::Null) => cell_count.unwrap_or(0),
                Some(value) => count(value)
                    .ok_or_else(|| malformed(field("execution_count"), COUNT_PROBLEM))?,
            };
            Output::ExecuteResult {
                execution_count,
                data: data(warnings)?,
                metadata: metadata()?,
            }
        }
        "error" => {
            let traceback = match output.get("traceback") {
                Some(Value::Array(lines)) => lines
                    .iter()
                    .map(|line| line.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>(),
                None | Some(Value::Null) => Some(Vec::new()),
                Some(_) => None,
            }
            .ok_or_else(|| malformed(field("traceback"), "must be a list of strings"))?;
            Output::Error {
                ename: string("ename")?,
                evalue: string("evalue")?,
                traceback,
            }
        }
        other => {
            warnings.push(ImportWarning::UnknownOutputType {
                cell,
                output_type: other.to_owned(),
            });
            return Ok(None);
        }
    }))
}

/// A MIME bundle with text values joined: a list of strings becomes one string, except under
/// JSON types, whose values are JSON. Keys that are not MIME types are dropped with a warning.
fn mime_bundle(
    cell: usize,
    at: &str,
    data: &Map<String, Value>,
    warnings: &mut Vec<ImportWarning>,
) -> Result<MimeBundle, IpynbError> {
    let mut bundle = MimeBundle::new();
    for (mime, value) in data {
        if !is_mime_type(mime) {
            warnings.push(ImportWarning::InvalidMimeType {
                cell,
                mime: mime.clone(),
            });
            continue;
        }
        let value = if is_json_mime(mime) {
            if depth(value) > MAX_METADATA_DEPTH {
                return Err(malformed(format!("{at}.{mime}"), "nests too deep"));
            }
            value.clone()
        } else {
            Value::String(
                multiline(value)
                    .ok_or_else(|| malformed(format!("{at}.{mime}"), MULTILINE_PROBLEM))?,
            )
        };
        bundle.insert(mime.clone(), value);
    }
    Ok(bundle)
}

/// nbformat's JSON MIME types (`^application/(.*\+)?json$`): their values are JSON, not text.
fn is_json_mime(mime: &str) -> bool {
    mime.strip_prefix("application/")
        .is_some_and(|subtype| subtype == "json" || subtype.ends_with("+json"))
}

/// nbformat's MIME type pattern: `^[a-zA-Z0-9]+/[a-zA-Z0-9\-\+\.]+$`.
fn is_mime_type(mime: &str) -> bool {
    let Some((kind, subtype)) = mime.split_once('/') else {
        return false;
    };
    !kind.is_empty()
        && kind.bytes().all(|b| b.is_ascii_alphanumeric())
        && !subtype.is_empty()
        && subtype
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'+' | b'.'))
}

/// nbformat's "multiline string": a string, or a list of strings to concatenate.
fn multiline(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => parts.iter().map(Value::as_str).collect(),
        _ => None,
    }
}

fn count(value: &Value) -> Option<u32> {
    value.as_u64().and_then(|n| u32::try_from(n).ok())
}

/// Metadata with every value too deep for the CRDT dropped (and a warning for each).
fn bounded_metadata(
    map: &Map<String, Value>,
    cell: Option<usize>,
    warnings: &mut Vec<ImportWarning>,
) -> Map<String, Value> {
    let mut kept = Map::new();
    for (key, value) in map {
        if depth(value) > MAX_METADATA_DEPTH {
            warnings.push(ImportWarning::MetadataTooDeep {
                cell,
                key: key.clone(),
            });
        } else {
            kept.insert(key.clone(), value.clone());
        }
    }
    kept
}

/// How many arrays and objects nest in `value` (0 for a scalar). Recursion is bounded by
/// `serde_json`'s limit of 128 levels on everything parsed here.
fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => map_depth(map),
        _ => 0,
    }
}

fn map_depth(map: &Map<String, Value>) -> usize {
    1 + map.values().map(depth).max().unwrap_or(0)
}

/// Every cell's final id: its own when valid and not taken by an earlier cell, else a fresh one
/// that no cell in the file uses.
fn assign_ids(
    cells: &[ParsedCell],
    rng: &mut impl Rng,
    warnings: &mut Vec<ImportWarning>,
) -> Vec<String> {
    let declared: HashSet<&str> = cells
        .iter()
        .filter_map(|cell| cell.declared_id.as_deref())
        .filter(|id| is_nbformat_id(id))
        .collect();
    let mut used: HashSet<String> = HashSet::new();
    let mut fresh = |used: &mut HashSet<String>| loop {
        let id = new_cell_id(rng);
        if !declared.contains(id.as_str()) && used.insert(id.clone()) {
            return id;
        }
    };
    cells
        .iter()
        .enumerate()
        .map(|(index, cell)| match &cell.declared_id {
            Some(id) if is_nbformat_id(id) && used.insert(id.clone()) => id.clone(),
            Some(id) if is_nbformat_id(id) => {
                let renamed_to = fresh(&mut used);
                warnings.push(ImportWarning::DuplicateId {
                    cell: index,
                    id: id.clone(),
                    renamed_to: renamed_to.clone(),
                });
                renamed_to
            }
            Some(id) => {
                let replaced_with = fresh(&mut used);
                warnings.push(ImportWarning::InvalidId {
                    cell: index,
                    id: id.clone(),
                    replaced_with: replaced_with.clone(),
                });
                replaced_with
            }
            None => fresh(&mut used),
        })
        .collect()
}

/// A new cell id as Jupyter makes them: the first 8 hex digits of a random (v4) UUID.
fn new_cell_id(rng: &mut impl Rng) -> String {
    let uuid = uuid::Builder::from_random_bytes(rng.r#gen()).into_uuid();
    let mut hex = uuid.simple().to_string();
    hex.truncate(8);
    hex
}

/// The whole notebook as one CRDT update, in the layout [`Notebook`] reads.
fn build_snapshot(
    client_id: u64,
    cells: &[ParsedCell],
    ids: &[String],
    metadata: Map<String, Value>,
    minor: u64,
) -> Vec<u8> {
    let doc = Doc::with_client_id(client_id);
    let cells_ref = doc.get_or_insert_array("cells");
    let meta = doc.get_or_insert_map("meta");
    {
        let mut txn = doc.transact_mut();
        meta.insert(&mut txn, "nbformat", Any::Number(Number::Int(4)));
        let minor = i64::try_from(minor).unwrap_or(i64::MAX);
        meta.insert(&mut txn, "nbformat_minor", Any::Number(Number::Int(minor)));
        meta.insert(&mut txn, "metadata", json_to_any(&Value::Object(metadata)));
        for (cell, id) in cells.iter().zip(ids) {
            let metadata: MapPrelim = cell
                .metadata
                .iter()
                .map(|(key, value)| (key.as_str(), In::Any(json_to_any(value))))
                .collect();
            let mut entries = vec![
                ("id", In::Any(Any::from(id.as_str()))),
                ("cell_type", In::Any(Any::from(cell.kind.as_str()))),
                ("source", In::from(TextPrelim::new(cell.source.as_str()))),
                ("metadata", In::Map(metadata)),
                ("execution_count", In::Any(Any::Null)),
            ];
            if let Some(attachments) = &cell.attachments {
                entries.push((
                    "attachments",
                    In::Any(json_to_any(&Value::Object(attachments.clone()))),
                ));
            }
            cells_ref.push_back(&mut txn, entries.into_iter().collect::<MapPrelim>());
        }
    }
    doc.transact()
        .encode_state_as_update_v1(&StateVector::default())
}

// ---------------------------------------------------------------------------------------------
// Export.

fn export_cell(
    id: String,
    kind: CellKind,
    source: &str,
    mut metadata: Map<String, Value>,
    attachments: Option<Value>,
    run: Option<&CellOutputs>,
) -> Value {
    set_sql_marker(&mut metadata, kind == CellKind::Sql);
    let mut cell = Map::new();
    cell.insert("id".into(), Value::String(id));
    let cell_type = match kind {
        CellKind::Code | CellKind::Sql => "code",
        CellKind::Markdown => "markdown",
        CellKind::Raw => "raw",
    };
    cell.insert("cell_type".into(), cell_type.into());
    cell.insert("metadata".into(), Value::Object(metadata));
    cell.insert("source".into(), lines(source));
    match kind {
        CellKind::Code | CellKind::Sql => {
            let count = run.and_then(|run| run.execution_count);
            cell.insert(
                "execution_count".into(),
                count.map_or(Value::Null, Value::from),
            );
            let outputs = run.map_or_else(Vec::new, |run| settle_outputs(&run.outputs));
            cell.insert(
                "outputs".into(),
                Value::Array(outputs.iter().filter_map(export_output).collect()),
            );
        }
        CellKind::Markdown | CellKind::Raw => {
            if let Some(attachments) = attachments {
                cell.insert("attachments".into(), attachments);
            }
        }
    }
    Value::Object(cell)
}

/// Writes (for SQL cells) or removes (for the rest) `airlock.cell_type = "sql"`.
fn set_sql_marker(metadata: &mut Map<String, Value>, sql: bool) {
    if sql {
        let airlock = metadata
            .entry("airlock")
            .or_insert_with(|| Value::Object(Map::new()));
        if !airlock.is_object() {
            *airlock = Value::Object(Map::new());
        }
        if let Value::Object(airlock) = airlock {
            airlock.insert("cell_type".into(), "sql".into());
        }
    } else {
        take_sql_marker(metadata);
    }
}

/// One settled output in nbformat's shape; `None` for the types a file does not hold.
fn export_output(output: &Output) -> Option<Value> {
    let mut out = Map::new();
    match output {
        Output::Stream { name, text } => {
            out.insert("output_type".into(), "stream".into());
            let name = match name {
                StreamName::Stdout => "stdout",
                StreamName::Stderr => "stderr",
            };
            out.insert("name".into(), name.into());
            out.insert("text".into(), lines(text));
        }
        Output::DisplayData { data, metadata, .. } => {
            out.insert("output_type".into(), "display_data".into());
            out.insert("data".into(), export_bundle(data));
            out.insert("metadata".into(), Value::Object(metadata.clone()));
        }
        Output::ExecuteResult {
            execution_count,
            data,
            metadata,
        } => {
            out.insert("output_type".into(), "execute_result".into());
            out.insert("execution_count".into(), Value::from(*execution_count));
            out.insert("data".into(), export_bundle(data));
            out.insert("metadata".into(), Value::Object(metadata.clone()));
        }
        Output::Error {
            ename,
            evalue,
            traceback,
        } => {
            out.insert("output_type".into(), "error".into());
            out.insert("ename".into(), ename.as_str().into());
            out.insert("evalue".into(), evalue.as_str().into());
            out.insert(
                "traceback".into(),
                Value::Array(traceback.iter().map(|l| l.as_str().into()).collect()),
            );
        }
        Output::UpdateDisplayData { .. } | Output::ClearOutput { .. } | Output::Unknown => {
            return None;
        }
    }
    Some(Value::Object(out))
}

/// Text MIME values split into lines as Jupyter writes them (`text/*`, JavaScript, SVG); base64
/// images and JSON values as they are.
fn export_bundle(data: &MimeBundle) -> Value {
    Value::Object(
        data.iter()
            .map(|(mime, value)| {
                let split = !is_json_mime(mime)
                    && (mime.starts_with("text/")
                        || mime == "application/javascript"
                        || mime == "image/svg+xml");
                let value = match value {
                    Value::String(text) if split => lines(text),
                    other => other.clone(),
                };
                (mime.clone(), value)
            })
            .collect(),
    )
}

/// Jupyter's list-of-lines form: split after every `\n`, which each line keeps.
fn lines(text: &str) -> Value {
    Value::Array(text.split_inclusive('\n').map(Value::from).collect())
}

/// `id` as a valid, unused nbformat id.
fn unique_export_id(id: &str, used: &mut HashSet<String>) -> String {
    let mut base: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if base.is_empty() {
        base.push_str("cell");
    }
    if used.insert(base.clone()) {
        return base;
    }
    (1u64..)
        .map(|n| {
            let suffix = format!("-{n}");
            let keep = base.len().min(64 - suffix.len());
            format!("{}{suffix}", &base[..keep])
        })
        .find(|candidate| used.insert(candidate.clone()))
        .unwrap_or(base)
}

// ---------------------------------------------------------------------------------------------
// JSON ↔ CRDT values.

fn malformed(at: impl Into<String>, problem: &'static str) -> IpynbError {
    IpynbError::Malformed {
        at: at.into(),
        problem,
    }
}

fn string_at<T: ReadTxn>(txn: &T, map: &MapRef, key: &str) -> Option<String> {
    match map.get(txn, key)? {
        Out::Any(Any::String(s)) => Some(s.to_string()),
        _ => None,
    }
}

fn json_to_any(value: &Value) -> Any {
    match value {
        Value::Null => Any::Null,
        Value::Bool(b) => Any::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Any::Number(Number::Int(i)),
            None => Any::Number(Number::Float(n.as_f64().unwrap_or(0.0))),
        },
        Value::String(s) => Any::from(s.as_str()),
        Value::Array(items) => Any::from(items.iter().map(json_to_any).collect::<Vec<_>>()),
        Value::Object(map) => Any::from(
            map.iter()
                .map(|(k, v)| (k.clone(), json_to_any(v)))
                .collect::<std::collections::HashMap<_, _>>(),
        ),
    }
}

fn any_to_json(any: &Any) -> Value {
    match any {
        Any::Null | Any::Undefined => Value::Null,
        Any::Bool(b) => Value::Bool(*b),
        Any::Number(Number::Int(i)) => Value::from(*i),
        Any::Number(Number::Float(f)) => {
            serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number)
        }
        Any::String(s) => Value::String(s.to_string()),
        Any::Buffer(b) => Value::Array(b.iter().map(|&byte| Value::from(byte)).collect()),
        Any::Array(items) => Value::Array(items.iter().map(any_to_json).collect()),
        Any::Map(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), any_to_json(v)))
                .collect(),
        ),
    }
}
