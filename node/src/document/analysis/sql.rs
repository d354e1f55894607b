//! SQL cells: DuckDB queries over the kernel's dataframes.
//!
//! # The convention
//! A SQL cell's text is DuckDB SQL. Its **refs** are the unqualified table names it reads in
//! `FROM` and `JOIN` clauses, subqueries included, that are Python identifiers: DuckDB resolves
//! such a name to the Python variable of that name (a pandas or polars dataframe, an Arrow
//! table) in the namespace it runs in. Names of CTEs (`WITH t AS (…)`), tables the cell creates
//! itself (`CREATE TABLE t …`) and table functions (`read_csv('…')`) are not refs.
//!
//! Its **def** is the result name, given either way:
//! - a comment on the first non-blank line: `-- name: result_df` (this wins), or
//! - the cell metadata field `result_name`.
//!
//! Without one the cell defines nothing and just displays its result. The kernel runs
//! [`kernel_source`]: `result_df = …duckdb.sql('<the SQL, escaped>')…df()` then `result_df`, so the
//! result is both bound and displayed. If `sqlparser` cannot parse the SQL (DuckDB has syntax it
//! does not know), the tables are guessed from the words after `FROM` and `JOIN`, with a warning.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::ops::ControlFlow;

use sqlparser::ast::{ObjectName, Query, Statement, TableFactor, Visit, Visitor};
use sqlparser::dialect::DuckDbDialect;
use sqlparser::keywords::Keyword;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, Tokenizer};

use super::{Analysis, AnalysisError, AnalysisWarning, builtins, is_identifier};

/// Analyses a SQL cell; `metadata_name` is the cell metadata's `result_name`, if any.
pub fn analyze_sql(source: &str, metadata_name: Option<&str>) -> Result<Analysis, AnalysisError> {
    let result_name = result_name(source, metadata_name)?;
    let mut analysis = Analysis::default();
    let tables = match Parser::parse_sql(&DuckDbDialect {}, source) {
        Ok(statements) if statements.is_empty() => {
            // Only comments: nothing to run, nothing bound.
            analysis.kernel_source = Some(String::new());
            return Ok(analysis);
        }
        Ok(statements) => {
            let mut refs = TableRefs::default();
            for statement in &statements {
                let _ = statement.visit(&mut refs);
            }
            refs.into_refs()
        }
        Err(error) => {
            analysis.warnings.push(AnalysisWarning::SqlApproximated {
                message: error.to_string(),
            });
            guess_tables(source)
        }
    };
    for table in tables {
        if builtins::is_builtin(&table) {
            analysis.builtin_refs.insert(table);
        } else {
            analysis.refs.insert(table);
        }
    }
    if let Some(name) = &result_name {
        analysis.defs.insert(name.clone());
    }
    analysis.kernel_source = Some(kernel_source(source, result_name.as_deref()));
    Ok(analysis)
}

/// The result name: the `-- name: x` comment on the first non-blank line, else the metadata's.
pub fn result_name(
    source: &str,
    metadata_name: Option<&str>,
) -> Result<Option<String>, AnalysisError> {
    let from_comment = source
        .lines()
        .find(|line| !line.trim().is_empty())
        .and_then(|line| line.trim().strip_prefix("--"))
        .and_then(|comment| {
            let (key, value) = comment.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case("name")
                .then(|| value.trim())
        });
    let Some(name) = from_comment.or(metadata_name.map(str::trim)) else {
        return Ok(None);
    };
    if is_identifier(name) {
        Ok(Some(name.to_owned()))
    } else {
        Err(AnalysisError::BadResultName(name.to_owned()))
    }
}

/// The Python the kernel runs for a SQL cell. DuckDB finds the dataframes the query names among
/// the variables of the frame that calls `duckdb.sql`, which is the cell's module level here.
/// Statements without a result (`CREATE TABLE …`) give `None` instead of failing on `.df()`.
pub fn kernel_source(sql: &str, result_name: Option<&str>) -> String {
    let query = format!(
        "(lambda r: None if r is None else r.df())(__import__('duckdb').sql({}))",
        python_string_literal(sql)
    );
    match result_name {
        Some(name) => format!("{name} = {query}\n{name}\n"),
        None => format!("{query}\n"),
    }
}

/// `text` as a single-quoted Python string literal that evaluates back to exactly `text`.
pub fn python_string_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('\'');
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                // `\x..` for the C0 range and DEL, `\u....` for C1; never a raw control char.
                let code = u32::from(c);
                if code <= 0xff {
                    let _ = write!(out, "\\x{code:02x}");
                } else {
                    let _ = write!(out, "\\u{code:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// Collects the tables a statement reads, minus CTEs in scope and tables it creates.
#[derive(Debug, Default)]
struct TableRefs {
    /// The CTE names of each enclosing query, lowercased.
    ctes: Vec<Vec<String>>,
    reads: BTreeSet<String>,
    created: BTreeSet<String>,
}

impl TableRefs {
    fn into_refs(self) -> BTreeSet<String> {
        let created = self.created;
        self.reads
            .into_iter()
            .filter(|name| !created.contains(&name.to_lowercase()))
            .collect()
    }
}

/// The name of an unqualified relation (`df`, not `main.df`).
fn single_name(name: &ObjectName) -> Option<&str> {
    match name.0.as_slice() {
        [part] => part.as_ident().map(|ident| ident.value.as_str()),
        _ => None,
    }
}

/// The last part of a possibly qualified name, lowercased.
fn last_name(name: &ObjectName) -> Option<String> {
    name.0
        .last()
        .and_then(|part| part.as_ident())
        .map(|ident| ident.value.to_lowercase())
}

impl Visitor for TableRefs {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        let names = query.with.as_ref().map_or_else(Vec::new, |with| {
            with.cte_tables
                .iter()
                .map(|cte| cte.alias.name.value.to_lowercase())
                .collect()
        });
        self.ctes.push(names);
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _query: &Query) -> ControlFlow<()> {
        self.ctes.pop();
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        if let TableFactor::Table {
            name, args: None, ..
        } = factor
            && let Some(table) = single_name(name)
            && is_identifier(table)
        {
            let lower = table.to_lowercase();
            if !self.ctes.iter().any(|scope| scope.contains(&lower)) {
                self.reads.insert(table.to_owned());
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<()> {
        let created = match statement {
            Statement::CreateTable(create) => last_name(&create.name),
            Statement::CreateView(create) => last_name(&create.name),
            _ => None,
        };
        self.created.extend(created);
        ControlFlow::Continue(())
    }
}

/// Words after which DuckDB expects a table name.
const TABLE_BEFORE: &[&str] = &["from", "join", "summarize", "describe", "pivot", "unpivot"];

/// Words that end a `FROM` list or cannot be a table name.
const NOT_TABLES: &[&str] = &[
    "select",
    "where",
    "group",
    "order",
    "limit",
    "join",
    "left",
    "right",
    "inner",
    "outer",
    "full",
    "cross",
    "natural",
    "on",
    "using",
    "lateral",
    "union",
    "except",
    "intersect",
    "having",
    "window",
    "qualify",
    "as",
    "values",
    "unnest",
    "offset",
    "positional",
    "asof",
    "anti",
    "semi",
    "pivot",
    "unpivot",
];

/// Table names from SQL `sqlparser` could not parse: the words after `FROM`, `JOIN` (and after
/// commas in a `FROM` list), `SUMMARIZE`, `DESCRIBE`, `PIVOT`, `UNPIVOT`, not followed by `(` or
/// `.`, minus `name AS (` CTEs.
fn guess_tables(sql: &str) -> BTreeSet<String> {
    let Ok(tokens) = Tokenizer::new(&DuckDbDialect {}, sql).tokenize() else {
        return BTreeSet::new();
    };
    let tokens: Vec<&Token> = tokens
        .iter()
        .filter(|token| !matches!(token, Token::Whitespace(_)))
        .collect();
    let word = |i: usize| match tokens.get(i) {
        Some(Token::Word(word)) => Some(word),
        _ => None,
    };
    let is_word =
        |i: usize, text: &str| word(i).is_some_and(|w| w.value.eq_ignore_ascii_case(text));

    let mut ctes = BTreeSet::new();
    for i in 0..tokens.len() {
        if let Some(w) = word(i)
            && is_word(i + 1, "as")
            && matches!(tokens.get(i + 2), Some(Token::LParen))
        {
            ctes.insert(w.value.to_lowercase());
        }
    }

    let mut tables = BTreeSet::new();
    for i in 0..tokens.len() {
        if !TABLE_BEFORE.iter().any(|keyword| is_word(i, keyword)) {
            continue;
        }
        let mut j = i + 1;
        while let Some(w) = word(j) {
            let lower = w.value.to_lowercase();
            if NOT_TABLES.contains(&lower.as_str()) {
                break;
            }
            let next = tokens.get(j + 1);
            if !matches!(next, Some(Token::LParen | Token::Period))
                && is_identifier(&w.value)
                && !ctes.contains(&lower)
            {
                tables.insert(w.value.clone());
            }
            j += 1;
            // An alias: `AS t` or a bare word that is not a clause keyword.
            if is_word(j, "as") {
                j += 2;
            } else if let Some(alias) = word(j)
                && alias.keyword == Keyword::NoKeyword
                && !NOT_TABLES.contains(&alias.value.to_lowercase().as_str())
            {
                j += 1;
            }
            if matches!(tokens.get(j), Some(Token::Comma)) {
                j += 1;
            } else {
                break;
            }
        }
    }
    tables
}
