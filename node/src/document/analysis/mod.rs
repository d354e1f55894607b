//! Static analysis of one cell: which global names it defines, reads and deletes.
//!
//! The reactive graph ([`super::graph`]) needs, for every cell, the *global* names the cell binds
//! (`defs`) and the global names it reads before or without binding them itself (`refs`). This
//! module computes both from the cell's text alone, without running anything.
//!
//! # Python cells
//! The text is first treated the way IPython treats it before Python sees it (see [`ipython`]):
//! leading blank lines, a common indent and pasted `>>>`/`In [1]:` prompts are stripped, a cell
//! magic on the first line (`%%time`, `%%capture out`, `%%bash`, …) decides whether the body is
//! Python at all, and IPython escapes (`%magic`, `!shell`, `x = !ls`, `x?`, `/f a`) are parsed as
//! such by Ruff's parser in its IPython mode and then interpreted like the `get_ipython()` calls
//! IPython turns them into. A one-line cell that is not Python but starts with a common magic's
//! name (`cd ..`, `pip install x`) is read as that magic, as IPython's automagic would. The
//! Python is then walked with Python's scoping rules (see [`python`]):
//!
//! - module-level code runs top to bottom: a name written before it is read is the cell's own;
//!   a name read first is a ref (`x += 1` on a fresh name is both a ref and a def);
//! - function and lambda bodies run later, when called: a global they read is a ref only if the
//!   cell never binds it at module level; parameters and names assigned in the body are local;
//!   decorators, defaults and annotations are evaluated where the `def` is;
//! - class bodies run at once, but their names are invisible to the methods inside;
//! - comprehensions have their own scope; their first iterable is evaluated outside it, and a
//!   walrus (`:=`) inside binds in the enclosing scope;
//! - `global` and `nonlocal`, imports (`import a.b` binds `a`), `del`, `except … as e` (unbound
//!   again after the handler), `with … as f`, `for` targets, `match` captures, annotations
//!   (`x: int` alone binds nothing), f-strings, type parameters and `type` aliases.
//!
//! Builtins (`print`, `len`, …, and IPython's `display`, `get_ipython`, `In`, `Out`, `_`, `_5`, …)
//! are kept apart in `builtin_refs`: they bind to a cell only if one above shadows them.
//!
//! # SQL cells
//! See [`sql`]: refs are the tables named in `FROM`/`JOIN` (CTE names excluded), the def is the
//! result name, and [`Analysis::kernel_source`] is the Python that runs the query in DuckDB.
//!
//! # What this does not do
//! It does not track mutation: `df.append(x)`, `lst.sort()`, `obj.attr = 1` and `d[k] = v` read
//! `df`, `lst`, `obj` and `d` but define nothing. It does not follow `exec`, `globals()[...]`,
//! `%run`, `%store -r` or star imports (those are reported, not resolved). Names in string
//! annotations (`x: "pd.DataFrame"`) are not read. Control flow is ignored: a name written in an
//! `if` branch counts as written for everything after it.

pub mod builtins;
pub mod ipython;
pub mod python;
pub mod sql;

#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

/// What a cell holds, from the notebook's `cell_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CellKind {
    /// Python (with IPython syntax), run by the kernel.
    Code,
    /// SQL run by DuckDB over the kernel's dataframes.
    Sql,
    /// Markdown: never analysed, never run.
    Markdown,
    /// Raw text: never analysed, never run.
    Raw,
}

impl CellKind {
    /// Whether cells of this kind run in the kernel.
    pub fn runs(self) -> bool {
        matches!(self, CellKind::Code | CellKind::Sql)
    }

    /// The notebook's `cell_type` string for this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            CellKind::Code => "code",
            CellKind::Sql => "sql",
            CellKind::Markdown => "markdown",
            CellKind::Raw => "raw",
        }
    }
}

impl fmt::Display for CellKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `cell_type` that is none of `code`, `sql`, `markdown`, `raw`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown cell type {0:?}: expected code, sql, markdown or raw")]
pub struct UnknownCellKind(pub String);

impl FromStr for CellKind {
    type Err = UnknownCellKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "code" => Ok(CellKind::Code),
            "sql" => Ok(CellKind::Sql),
            "markdown" => Ok(CellKind::Markdown),
            "raw" => Ok(CellKind::Raw),
            other => Err(UnknownCellKind(other.to_owned())),
        }
    }
}

/// Everything about a cell that its analysis depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellContent {
    pub kind: CellKind,
    pub source: String,
    /// SQL cells only: the cell metadata's `result_name`, the Python name the query's result is
    /// bound to. A `-- name: …` comment on the cell's first line takes precedence.
    pub result_name: Option<String>,
}

impl CellContent {
    /// A Python cell.
    pub fn code(source: impl Into<String>) -> Self {
        Self {
            kind: CellKind::Code,
            source: source.into(),
            result_name: None,
        }
    }

    /// A SQL cell without a `result_name` in its metadata.
    pub fn sql(source: impl Into<String>) -> Self {
        Self {
            kind: CellKind::Sql,
            source: source.into(),
            result_name: None,
        }
    }

    /// A markdown cell.
    pub fn markdown(source: impl Into<String>) -> Self {
        Self {
            kind: CellKind::Markdown,
            source: source.into(),
            result_name: None,
        }
    }
}

/// What one cell defines, reads and deletes at global scope.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Analysis {
    /// Global names the cell binds (and has not deleted again by its end).
    pub defs: BTreeSet<String>,
    /// Global names, not builtins, the cell reads before or without binding them.
    pub refs: BTreeSet<String>,
    /// Builtin names the cell reads before binding them. They resolve to a cell only if a cell
    /// above shadows the builtin; otherwise they are the builtin, never an error.
    pub builtin_refs: BTreeSet<String>,
    /// Global names the cell `del`etes and does not bind again.
    pub deletes: BTreeSet<String>,
    /// Modules imported with `from m import *` (relative ones with their leading dots). The names
    /// these bind cannot be known statically, so the graph reports them as a cell error.
    pub star_imports: Vec<String>,
    /// The Python the kernel runs for this cell when it is not the cell's own text (SQL cells).
    pub kernel_source: Option<String>,
    /// Things the analysis could only approximate.
    pub warnings: Vec<AnalysisWarning>,
}

/// An approximation the analysis had to make; the cell still runs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnalysisWarning {
    /// `sqlparser` could not parse the SQL (a dialect extension, say); table names were taken
    /// from the words after `FROM` and `JOIN` instead.
    #[error("the SQL was not fully understood ({message}); table names were guessed")]
    SqlApproximated { message: String },
}

/// Why a cell could not be analysed. The graph shows it on the cell and does not run the cell.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnalysisError {
    /// The Python does not parse. `line` and `column` are 1-based, in the cell's text.
    #[error("syntax error at line {line}, column {column}: {error}")]
    Syntax {
        line: usize,
        column: usize,
        #[source]
        error: ruff_python_parser::ParseError,
    },
    /// Nesting so deep that walking it could exhaust the stack. CPython itself refuses such code.
    #[error("the cell nests more than {limit} levels deep")]
    TooDeep { limit: usize },
    /// The cell's text is larger than the analysis accepts.
    #[error("the cell is {len} bytes; cells over {limit} bytes are not analysed")]
    TooLarge { len: usize, limit: usize },
    /// The parser itself failed on this text (a bug in the parser, caught). The text is
    /// almost certainly not valid Python either.
    #[error("the Python parser failed on this cell; check its syntax")]
    ParserFailed,
    /// A SQL cell's result name is not a Python identifier.
    #[error("the SQL result name {0:?} is not a Python identifier")]
    BadResultName(String),
}

/// Cells larger than this are not analysed ([`AnalysisError::TooLarge`]).
pub const MAX_CELL_BYTES: usize = 4 * 1024 * 1024;

/// Analyses a cell of any kind. Markdown and raw cells define and read nothing.
pub fn analyze(cell: &CellContent) -> Result<Analysis, AnalysisError> {
    if cell.source.len() > MAX_CELL_BYTES {
        return Err(AnalysisError::TooLarge {
            len: cell.source.len(),
            limit: MAX_CELL_BYTES,
        });
    }
    match cell.kind {
        CellKind::Code => python::analyze_python(&cell.source),
        CellKind::Sql => sql::analyze_sql(&cell.source, cell.result_name.as_deref()),
        CellKind::Markdown | CellKind::Raw => Ok(Analysis::default()),
    }
}

/// Whether `name` is a Python identifier that can be bound (not a keyword).
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    (first == '_' || first.is_alphabetic())
        && chars.all(|c| c == '_' || c.is_alphanumeric())
        && !builtins::is_keyword(name)
}
