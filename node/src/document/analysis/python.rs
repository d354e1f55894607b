//! Defs and refs of a Python cell: a scope-aware walk over Ruff's syntax tree.
//!
//! The walk keeps a stack of scopes. The module scope is implicit (an empty stack) and
//! sequential: what has been written so far decides whether a read is the cell's own. Class
//! bodies are sequential too, and invisible to scopes nested in them. Function and lambda scopes
//! know their locals up front (a pre-pass collects every name bound in the body, as Python's
//! compiler does) and are *deferred*: their body runs when called, after the whole cell, so a
//! global they read is a ref only if the cell never binds it. Comprehension scopes hold their
//! targets and run at once.
//!
//! Walks are guarded: a cell is lexed first and refused if it nests deeper than
//! [`MAX_NESTING`] (CPython refuses far less), and the walk grows its stack on demand, so no cell
//! text can overflow the stack.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use ruff_python_ast::token::TokenKind;
use ruff_python_ast::visitor::{self, Visitor};
use ruff_python_ast::{
    self as ast, ExceptHandler, Expr, ExprContext, IpyEscapeKind, ModModule, Parameters, Pattern,
    PySourceType, Stmt, TypeParam, TypeParams,
};
use ruff_python_parser::{Mode, ParseError, Parsed};

use super::ipython::{self, MagicCode};
use super::{Analysis, AnalysisError, builtins};

/// Cells nesting deeper than this (brackets, operators, blocks) are refused.
pub const MAX_NESTING: usize = 1000;

/// Stack left before the walk switches to a fresh segment, and that segment's size.
const STACK_RED_ZONE: usize = 64 * 1024;
const STACK_SEGMENT: usize = 1024 * 1024;

/// Analyses a Python cell written with IPython syntax.
pub fn analyze_python(source: &str) -> Result<Analysis, AnalysisError> {
    let cleaned = ipython::cleanup(source);
    if let Some(magic) = ipython::cell_magic(&cleaned.text) {
        // The body starts on the line after the magic.
        return analyze_cell_magic(&magic, cleaned.dropped_lines + 1);
    }
    let parsed = match parse_module(&cleaned.text) {
        Ok(parsed) => parsed,
        Err(failure) => {
            // IPython applies automagic to a one-line cell (`cd ..`, `pip install x`): retry it
            // as a line magic when it is not Python.
            if let Some(line) = ipython::automagic(&cleaned.text)
                && let Ok(analysis) = analyze_python(&format!("%{line}"))
            {
                return Ok(analysis);
            }
            return Err(failure.into_analysis_error(&cleaned.text, cleaned.dropped_lines));
        }
    };
    let mut analyzer = Analyzer::default();
    analyzer.visit_body(&parsed.syntax().body);
    Ok(analyzer.finish())
}

/// A cell that starts with `%%magic`: `body_line` is how many lines precede its body.
fn analyze_cell_magic(
    magic: &ipython::CellMagic<'_>,
    body_line: usize,
) -> Result<Analysis, AnalysisError> {
    let plan = ipython::cell_magic_plan(magic);
    let mut analysis = match plan.body {
        MagicCode::Inline => {
            analyze_python(magic.body).map_err(|error| error.shifted(body_line))?
        }
        MagicCode::Isolated => {
            // `%%timeit`: the setup line, then the body, in a namespace of their own.
            let code = format!("{}\n{}", plan.setup, magic.body);
            let inner = analyze_python(&code).map_err(|error| error.shifted(body_line - 1))?;
            Analysis {
                refs: inner.refs,
                builtin_refs: inner.builtin_refs,
                ..Analysis::default()
            }
        }
        MagicCode::Expanded | MagicCode::Opaque => Analysis::default(),
    };
    if plan.expand_line {
        let mut line = Analyzer::default();
        line.visit_expansions(magic.line);
        let line = line.finish();
        analysis.refs.extend(line.refs);
        analysis.builtin_refs.extend(line.builtin_refs);
    }
    for name in plan.defs {
        analysis.deletes.remove(name);
        analysis.defs.insert(name.to_owned());
    }
    Ok(analysis)
}

/// Why a guarded parse failed.
#[derive(Debug)]
enum ParseFailure {
    Syntax(ParseError),
    TooDeep,
    ParserPanicked,
}

impl ParseFailure {
    fn into_analysis_error(self, text: &str, dropped_lines: usize) -> AnalysisError {
        match self {
            ParseFailure::TooDeep => AnalysisError::TooDeep { limit: MAX_NESTING },
            ParseFailure::ParserPanicked => AnalysisError::ParserFailed,
            ParseFailure::Syntax(error) => {
                let offset = usize::try_from(u32::from(error.location.start())).unwrap_or(0);
                let before = text.get(..offset).unwrap_or(text);
                let line_start = before.rfind('\n').map_or(0, |at| at + 1);
                AnalysisError::Syntax {
                    line: before.matches('\n').count() + 1 + dropped_lines,
                    column: before[line_start..].chars().count() + 1,
                    error,
                }
            }
        }
    }
}

impl AnalysisError {
    /// The same error, `lines` lines further down (for code embedded in a larger cell).
    fn shifted(self, lines: usize) -> Self {
        match self {
            AnalysisError::Syntax {
                line,
                column,
                error,
            } => AnalysisError::Syntax {
                line: line + lines,
                column,
                error,
            },
            other => other,
        }
    }
}

/// Parses a module with IPython escapes, refusing input nested deeper than [`MAX_NESTING`].
fn parse_module(text: &str) -> Result<Parsed<ModModule>, ParseFailure> {
    let parsed = contain_panics(|| {
        if nesting_estimate(text, Mode::Ipython) > MAX_NESTING {
            return Err(ParseFailure::TooDeep);
        }
        Ok(ruff_python_parser::parse_unchecked_source(
            text,
            PySourceType::Ipynb,
        ))
    })
    .ok_or(ParseFailure::ParserPanicked)??;
    match parsed.errors().first() {
        Some(error) => Err(ParseFailure::Syntax(error.clone())),
        None => Ok(parsed),
    }
}

/// Parses one expression (an `{expr}` field), with the same guards.
fn parse_expression(text: &str) -> Option<Parsed<ast::ModExpression>> {
    contain_panics(|| {
        if nesting_estimate(text, Mode::Expression) > MAX_NESTING {
            return None;
        }
        ruff_python_parser::parse_expression(text).ok()
    })
    .flatten()
}

/// Runs Ruff's lexer or parser, turning a panic into `None`.
///
/// Ruff's parser crates are published without stability promises, and some inputs reach an
/// `unreachable!` in 0.0.10 (`"lambda\n?"` in IPython mode: error recovery meets a help
/// escape). Cell text comes from users; a parser bug must not take the document down.
fn contain_panics<T>(parse: impl FnOnce() -> T + std::panic::UnwindSafe) -> Option<T> {
    std::panic::catch_unwind(parse).ok()
}

/// An upper bound (up to a small factor) on how deep the syntax tree of `text` nests, from its
/// tokens alone. Every level of an expression tree needs an operator, keyword or bracket token
/// in the same comma-separated segment (or an enclosing one); blocks need an indent.
fn nesting_estimate(text: &str, mode: Mode) -> usize {
    let mut lexer = ruff_python_parser::lexer::lex(text, mode);
    // Operators seen in the current segment of each open bracket level, outermost first.
    let mut levels: Vec<usize> = vec![0];
    let mut total = 0usize;
    let mut indent = 0usize;
    let mut deepest = 0usize;
    loop {
        match lexer.next_token() {
            TokenKind::EndOfFile => break,
            TokenKind::Lpar
            | TokenKind::Lsqb
            | TokenKind::Lbrace
            | TokenKind::FStringStart
            | TokenKind::TStringStart => {
                // The bracket is an operator where it stands (a call, a subscript) and opens a
                // level of its own.
                if let Some(ops) = levels.last_mut() {
                    *ops += 1;
                }
                total += 1;
                levels.push(0);
            }
            TokenKind::Rpar
            | TokenKind::Rsqb
            | TokenKind::Rbrace
            | TokenKind::FStringEnd
            | TokenKind::TStringEnd => {
                if levels.len() > 1 {
                    total -= levels.pop().unwrap_or(0);
                }
            }
            TokenKind::Comma | TokenKind::Semi => {
                if let Some(ops) = levels.last_mut() {
                    total -= *ops;
                    *ops = 0;
                }
            }
            TokenKind::Newline => {
                levels.clear();
                levels.push(0);
                total = 0;
            }
            TokenKind::Indent => indent += 1,
            TokenKind::Dedent => indent = indent.saturating_sub(1),
            TokenKind::Name
            | TokenKind::Int
            | TokenKind::Float
            | TokenKind::Complex
            | TokenKind::String
            | TokenKind::FStringMiddle
            | TokenKind::TStringMiddle
            | TokenKind::Comment
            | TokenKind::NonLogicalNewline
            | TokenKind::IpyEscapeCommand
            | TokenKind::Unknown => {}
            _ => {
                if let Some(ops) = levels.last_mut() {
                    *ops += 1;
                }
                total += 1;
            }
        }
        deepest = deepest.max(indent + total + levels.len());
        if deepest > MAX_NESTING {
            break;
        }
    }
    deepest
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FrameKind {
    Class,
    Function,
    Comprehension,
    /// The scope of PEP 695 type parameters (`def f[T]`, `class C[T]`).
    TypeParams,
}

#[derive(Debug)]
struct Frame {
    kind: FrameKind,
    /// Whether code in this scope runs later than the cell (function and lambda bodies).
    deferred: bool,
    /// Names local to this scope. Function-like scopes know them all up front; class scopes
    /// collect them as the body runs.
    locals: HashSet<String>,
    /// Names declared `global` in this scope.
    globals: HashSet<String>,
}

impl Frame {
    fn new(kind: FrameKind, deferred: bool, locals: HashSet<String>) -> Self {
        Self {
            kind,
            deferred,
            locals,
            globals: HashSet::new(),
        }
    }
}

/// Whether a global is bound or deleted at the end of the cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Final {
    Bound,
    Deleted,
}

/// The walk over one cell.
#[derive(Debug, Default)]
struct Analyzer {
    frames: Vec<Frame>,
    /// Globals the module-level code has written (bound or deleted) so far.
    written: HashSet<String>,
    /// The state each written global is left in.
    finals: BTreeMap<String, Final>,
    refs: BTreeSet<String>,
    builtin_refs: BTreeSet<String>,
    /// Globals read by function bodies: refs unless the cell binds them anywhere.
    deferred_reads: BTreeSet<String>,
    /// Globals bound by function bodies through `global`.
    deferred_defs: BTreeSet<String>,
    star_imports: Vec<String>,
}

impl Analyzer {
    fn finish(mut self) -> Analysis {
        for name in std::mem::take(&mut self.deferred_reads) {
            if !self.written.contains(&name) && !self.deferred_defs.contains(&name) {
                self.record_ref(&name);
            }
        }
        let mut defs = self.deferred_defs;
        let mut deletes = BTreeSet::new();
        for (name, state) in self.finals {
            match state {
                Final::Bound => {
                    defs.insert(name);
                }
                Final::Deleted => {
                    defs.remove(&name);
                    deletes.insert(name);
                }
            }
        }
        Analysis {
            defs,
            refs: self.refs,
            builtin_refs: self.builtin_refs,
            deletes,
            star_imports: self.star_imports,
            kernel_source: None,
            warnings: Vec::new(),
        }
    }

    fn in_deferred(&self) -> bool {
        self.frames.iter().any(|frame| frame.deferred)
    }

    fn record_ref(&mut self, name: &str) {
        if builtins::is_builtin(name) {
            self.builtin_refs.insert(name.to_owned());
        } else {
            self.refs.insert(name.to_owned());
        }
    }

    /// A read of `name` in the innermost scope.
    fn read(&mut self, name: &str) {
        let innermost = self.frames.len().checked_sub(1);
        for (index, frame) in self.frames.iter().enumerate().rev() {
            if Some(index) == innermost {
                if frame.globals.contains(name) {
                    break;
                }
            } else if frame.kind == FrameKind::Class {
                // Class scopes are invisible to the scopes nested in them.
                continue;
            }
            if frame.locals.contains(name) {
                return;
            }
        }
        self.global_read(name);
    }

    fn global_read(&mut self, name: &str) {
        if self.in_deferred() {
            self.deferred_reads.insert(name.to_owned());
        } else if !self.written.contains(name) {
            self.record_ref(name);
        }
    }

    /// A binding of `name` in the innermost scope.
    fn write(&mut self, name: &str) {
        match self.frames.len().checked_sub(1) {
            Some(index) => self.write_in(index, name),
            None => self.module_write(name, Final::Bound),
        }
    }

    fn write_in(&mut self, index: usize, name: &str) {
        let Some(frame) = self.frames.get_mut(index) else {
            return;
        };
        if frame.globals.contains(name) {
            self.global_write(name);
        } else if frame.kind == FrameKind::Class {
            frame.locals.insert(name.to_owned());
        }
        // Function, lambda and comprehension locals are known up front; nothing to record.
    }

    /// A walrus binds in the nearest scope that is not a comprehension.
    fn walrus_write(&mut self, name: &str) {
        match self
            .frames
            .iter()
            .rposition(|frame| frame.kind != FrameKind::Comprehension)
        {
            Some(index) => self.write_in(index, name),
            None => self.module_write(name, Final::Bound),
        }
    }

    fn global_write(&mut self, name: &str) {
        if self.in_deferred() {
            self.deferred_defs.insert(name.to_owned());
        } else {
            self.module_write(name, Final::Bound);
        }
    }

    fn module_write(&mut self, name: &str, state: Final) {
        self.written.insert(name.to_owned());
        self.finals.insert(name.to_owned(), state);
    }

    /// `del name` in the innermost scope.
    fn delete(&mut self, name: &str) {
        match self.frames.last_mut() {
            None => {
                // Deleting needs the name to exist: a ref unless the cell bound it first.
                if !self.written.contains(name) {
                    self.record_ref(name);
                }
                self.module_write(name, Final::Deleted);
            }
            Some(frame) if frame.globals.contains(name) => self.global_read(name),
            Some(frame) if frame.kind == FrameKind::Class => {
                frame.locals.remove(name);
            }
            Some(_) => {}
        }
    }

    fn stmt(&mut self, stmt: &Stmt) {
        match stmt {
            Stmt::FunctionDef(def) => self.function_def(def),
            Stmt::ClassDef(class) => self.class_def(class),
            Stmt::Import(import) => {
                for alias in &import.names {
                    self.write(import_binding(alias));
                }
            }
            Stmt::ImportFrom(import) => {
                let module = import.module.as_ref().map_or("", |m| m.as_str());
                if module == "__future__" {
                    return;
                }
                for alias in &import.names {
                    if alias.name.as_str() == "*" {
                        let dots = ".".repeat(usize::try_from(import.level).unwrap_or(0));
                        self.star_imports.push(format!("{dots}{module}"));
                    } else {
                        self.write(import_binding(alias));
                    }
                }
            }
            Stmt::Global(global) => {
                // Function scopes collected theirs up front; a class body declares as it runs.
                if let Some(frame) = self.frames.last_mut()
                    && frame.kind == FrameKind::Class
                {
                    frame
                        .globals
                        .extend(global.names.iter().map(|n| n.as_str().to_owned()));
                }
            }
            Stmt::Delete(delete) => {
                for target in &delete.targets {
                    match target {
                        Expr::Name(name) => self.delete(name.id.as_str()),
                        other => self.visit_expr(other),
                    }
                }
            }
            Stmt::AugAssign(assign) => {
                self.visit_expr(&assign.value);
                match &*assign.target {
                    Expr::Name(name) => {
                        self.read(name.id.as_str());
                        self.write(name.id.as_str());
                    }
                    other => self.visit_expr(other),
                }
            }
            Stmt::AnnAssign(assign) => {
                if let Some(value) = &assign.value {
                    self.visit_expr(value);
                }
                // Annotations of a function's locals are never evaluated.
                if self.frames.last().map(|f| f.kind) != Some(FrameKind::Function) {
                    self.visit_annotation(&assign.annotation);
                }
                match &*assign.target {
                    // `x: int` alone binds nothing.
                    Expr::Name(name) => {
                        if assign.value.is_some() {
                            self.write(name.id.as_str());
                        }
                    }
                    other => self.visit_expr(other),
                }
            }
            Stmt::TypeAlias(alias) => {
                let pushed = self.push_type_params(alias.type_params.as_deref());
                // The value is evaluated lazily, like a function body.
                self.frames
                    .push(Frame::new(FrameKind::Function, true, HashSet::new()));
                self.visit_expr(&alias.value);
                self.frames.pop();
                if pushed {
                    self.frames.pop();
                }
                if let Expr::Name(name) = &*alias.name {
                    self.write(name.id.as_str());
                }
            }
            Stmt::IpyEscapeCommand(command) => self.escape(command.kind, &command.value),
            _ => visitor::walk_stmt(self, stmt),
        }
    }

    fn expr(&mut self, expr: &Expr) {
        match expr {
            Expr::Name(name) => match name.ctx {
                ExprContext::Load => self.read(name.id.as_str()),
                ExprContext::Store => self.write(name.id.as_str()),
                ExprContext::Del => self.delete(name.id.as_str()),
                ExprContext::Invalid => {}
            },
            Expr::Named(named) => {
                self.visit_expr(&named.value);
                match &*named.target {
                    Expr::Name(name) => self.walrus_write(name.id.as_str()),
                    other => self.visit_expr(other),
                }
            }
            Expr::Lambda(lambda) => {
                if let Some(parameters) = &lambda.parameters {
                    self.visit_defaults(parameters);
                }
                let frame = function_frame(lambda.parameters.as_deref(), |collector| {
                    collector.visit_expr(&lambda.body);
                });
                self.frames.push(frame);
                self.visit_expr(&lambda.body);
                self.frames.pop();
            }
            Expr::ListComp(comp) => self.comprehension(&comp.generators, &[&comp.elt]),
            Expr::SetComp(comp) => self.comprehension(&comp.generators, &[&comp.elt]),
            Expr::Generator(comp) => self.comprehension(&comp.generators, &[&comp.elt]),
            Expr::DictComp(comp) => match &comp.key {
                Some(key) => self.comprehension(&comp.generators, &[key, &comp.value]),
                None => self.comprehension(&comp.generators, &[&comp.value]),
            },
            Expr::IpyEscapeCommand(command) => self.escape(command.kind, &command.value),
            _ => visitor::walk_expr(self, expr),
        }
    }

    fn function_def(&mut self, def: &ast::StmtFunctionDef) {
        for decorator in &def.decorator_list {
            self.visit_decorator(decorator);
        }
        self.visit_defaults(&def.parameters);
        let pushed = self.push_type_params(def.type_params.as_deref());
        for parameter in def.parameters.iter() {
            if let Some(annotation) = &parameter.as_parameter().annotation {
                self.visit_annotation(annotation);
            }
        }
        if let Some(returns) = &def.returns {
            self.visit_annotation(returns);
        }
        let frame = function_frame(Some(&def.parameters), |collector| {
            collector.visit_body(&def.body);
        });
        self.frames.push(frame);
        self.visit_body(&def.body);
        self.frames.pop();
        if pushed {
            self.frames.pop();
        }
        self.write(def.name.as_str());
    }

    fn class_def(&mut self, class: &ast::StmtClassDef) {
        for decorator in &class.decorator_list {
            self.visit_decorator(decorator);
        }
        let pushed = self.push_type_params(class.type_params.as_deref());
        if let Some(arguments) = &class.arguments {
            self.visit_arguments(arguments);
        }
        self.frames
            .push(Frame::new(FrameKind::Class, false, HashSet::new()));
        self.visit_body(&class.body);
        self.frames.pop();
        if pushed {
            self.frames.pop();
        }
        self.write(class.name.as_str());
    }

    fn visit_defaults(&mut self, parameters: &Parameters) {
        for parameter in parameters.iter_non_variadic_params() {
            if let Some(default) = &parameter.default {
                self.visit_expr(default);
            }
        }
    }

    /// Opens the scope of PEP 695 type parameters, if there are any; returns whether it did.
    fn push_type_params(&mut self, type_params: Option<&TypeParams>) -> bool {
        let Some(type_params) = type_params else {
            return false;
        };
        let names = type_params
            .type_params
            .iter()
            .map(|param| type_param_name(param).to_owned())
            .collect();
        self.frames
            .push(Frame::new(FrameKind::TypeParams, false, names));
        self.visit_type_params(type_params);
        true
    }

    /// A comprehension: the first iterable outside its scope, everything else inside.
    fn comprehension(&mut self, generators: &[ast::Comprehension], elements: &[&Expr]) {
        let Some(first) = generators.first() else {
            for element in elements {
                self.visit_expr(element);
            }
            return;
        };
        self.visit_expr(&first.iter);
        let mut locals = HashSet::new();
        for generator in generators {
            target_names(&generator.target, &mut locals);
        }
        self.frames
            .push(Frame::new(FrameKind::Comprehension, false, locals));
        for (index, generator) in generators.iter().enumerate() {
            if index > 0 {
                self.visit_expr(&generator.iter);
            }
            self.visit_expr(&generator.target);
            for condition in &generator.ifs {
                self.visit_expr(condition);
            }
        }
        for element in elements {
            self.visit_expr(element);
        }
        self.frames.pop();
    }

    /// An IPython escape, interpreted like the `get_ipython()` call IPython makes of it.
    fn escape(&mut self, kind: IpyEscapeKind, value: &str) {
        match kind {
            IpyEscapeKind::Magic => {
                let (name, args) = ipython::split_magic(value);
                let (code, options) = ipython::line_magic(name);
                let args = ipython::strip_options(args, options);
                match code {
                    MagicCode::Inline => self.visit_inline(args),
                    MagicCode::Isolated => self.visit_isolated(args),
                    MagicCode::Expanded => self.visit_expansions(args),
                    MagicCode::Opaque => {}
                }
            }
            IpyEscapeKind::Shell | IpyEscapeKind::ShCap => self.visit_expansions(value),
            IpyEscapeKind::Paren => {
                // `/f a, b` is `f(a, b)`.
                let (callee, args) = ipython::split_magic(value);
                if let Some(call) = parse_expression(&format!("{callee}({args})")) {
                    self.visit_expr(call.expr());
                }
            }
            IpyEscapeKind::Quote | IpyEscapeKind::Quote2 => {
                // `,f a b` is `f("a", "b")`: only the callee is read.
                let (callee, _) = ipython::split_magic(value);
                if let Some(call) = parse_expression(callee) {
                    self.visit_expr(call.expr());
                }
            }
            // `%%` after the first line is an error in IPython; help reads nothing.
            IpyEscapeKind::Magic2 | IpyEscapeKind::Help | IpyEscapeKind::Help2 => {}
        }
    }

    /// Python a magic runs in the user namespace (`%time x = f()`), walked in place.
    fn visit_inline(&mut self, code: &str) {
        if let Ok(parsed) = parse_module(code.trim()) {
            self.visit_body(&parsed.syntax().body);
        }
    }

    /// Python a magic runs in a namespace of its own (`%timeit`): only its reads count.
    fn visit_isolated(&mut self, code: &str) {
        if let Ok(inner) = analyze_python(code.trim()) {
            for name in inner.refs.iter().chain(&inner.builtin_refs) {
                self.read(name);
            }
        }
    }

    /// What IPython's variable expansion evaluates in a shell command or magic line.
    fn visit_expansions(&mut self, text: &str) {
        for expansion in ipython::expansions(text) {
            match expansion {
                ipython::Expansion::Name(name) => self.read(name),
                ipython::Expansion::Expression(field) => {
                    for candidate in ipython::field_candidates(field) {
                        if let Some(parsed) = parse_expression(candidate.trim()) {
                            self.visit_expr(parsed.expr());
                            break;
                        }
                    }
                }
            }
        }
    }
}

impl<'a> Visitor<'a> for Analyzer {
    fn visit_stmt(&mut self, stmt: &'a Stmt) {
        stacker::maybe_grow(STACK_RED_ZONE, STACK_SEGMENT, || self.stmt(stmt));
    }

    fn visit_expr(&mut self, expr: &'a Expr) {
        stacker::maybe_grow(STACK_RED_ZONE, STACK_SEGMENT, || self.expr(expr));
    }

    fn visit_pattern(&mut self, pattern: &'a Pattern) {
        stacker::maybe_grow(STACK_RED_ZONE, STACK_SEGMENT, || {
            visitor::walk_pattern(self, pattern);
            if let Some(name) = pattern_capture(pattern) {
                self.write(name);
            }
        });
    }

    fn visit_except_handler(&mut self, handler: &'a ExceptHandler) {
        let ExceptHandler::ExceptHandler(handler) = handler;
        if let Some(type_) = &handler.type_ {
            self.visit_expr(type_);
        }
        let Some(name) = &handler.name else {
            self.visit_body(&handler.body);
            return;
        };
        // Python unbinds `e` when the handler ends, so it is not a def of the cell.
        let name = name.as_str();
        let saved_final = self.finals.get(name).copied();
        let saved_class_local = self
            .frames
            .last()
            .filter(|frame| frame.kind == FrameKind::Class)
            .map(|frame| frame.locals.contains(name));
        self.write(name);
        self.visit_body(&handler.body);
        if self.frames.is_empty() {
            match saved_final {
                Some(state) => {
                    self.finals.insert(name.to_owned(), state);
                }
                None => {
                    self.finals.remove(name);
                }
            }
        } else if let (Some(false), Some(frame)) = (saved_class_local, self.frames.last_mut()) {
            frame.locals.remove(name);
        }
    }
}

/// The name `import a.b.c` or `import a.b as c` binds: `a` and `c`.
fn import_binding(alias: &ast::Alias) -> &str {
    match &alias.asname {
        Some(asname) => asname.as_str(),
        None => {
            let name = alias.name.as_str();
            name.split('.').next().unwrap_or(name)
        }
    }
}

fn type_param_name(param: &TypeParam) -> &str {
    match param {
        TypeParam::TypeVar(var) => var.name.as_str(),
        TypeParam::TypeVarTuple(var) => var.name.as_str(),
        TypeParam::ParamSpec(spec) => spec.name.as_str(),
    }
}

/// The name a pattern binds by itself (`case x`, `case [*rest]`, `case {**kw}`, `case _ as y`).
fn pattern_capture(pattern: &Pattern) -> Option<&str> {
    match pattern {
        Pattern::MatchAs(ast::PatternMatchAs { name, .. })
        | Pattern::MatchStar(ast::PatternMatchStar { name, .. })
        | Pattern::MatchMapping(ast::PatternMatchMapping { rest: name, .. }) => {
            name.as_ref().map(|name| name.as_str())
        }
        _ => None,
    }
}

/// The names an assignment target binds (`a`, `a, *b`, `[a, (b, c)]`).
fn target_names(target: &Expr, names: &mut HashSet<String>) {
    match target {
        Expr::Name(name) => {
            names.insert(name.id.as_str().to_owned());
        }
        Expr::Tuple(tuple) => tuple.elts.iter().for_each(|e| target_names(e, names)),
        Expr::List(list) => list.elts.iter().for_each(|e| target_names(e, names)),
        Expr::Starred(starred) => target_names(&starred.value, names),
        _ => {}
    }
}

/// The scope of a function or lambda body: its parameters and every name the body binds.
fn function_frame(parameters: Option<&Parameters>, body: impl FnOnce(&mut Collector)) -> Frame {
    let mut collector = Collector::default();
    body(&mut collector);
    let mut locals: HashSet<String> = collector.bound;
    if let Some(parameters) = parameters {
        for parameter in parameters.iter() {
            locals.insert(parameter.as_parameter().name.as_str().to_owned());
        }
    }
    for name in collector.globals.iter().chain(&collector.nonlocals) {
        locals.remove(name);
    }
    Frame {
        kind: FrameKind::Function,
        deferred: true,
        locals,
        globals: collector.globals,
    }
}

/// The pre-pass over a function body: what it binds and declares, nested scopes excluded
/// (except a comprehension's walrus, which binds here).
#[derive(Debug, Default)]
struct Collector {
    bound: HashSet<String>,
    globals: HashSet<String>,
    nonlocals: HashSet<String>,
}

impl Collector {
    fn bind(&mut self, name: &str) {
        self.bound.insert(name.to_owned());
    }

    fn stmt(&mut self, stmt: &Stmt) {
        match stmt {
            Stmt::FunctionDef(def) => {
                self.bind(def.name.as_str());
                for decorator in &def.decorator_list {
                    self.visit_decorator(decorator);
                }
                for parameter in def.parameters.iter_non_variadic_params() {
                    if let Some(default) = &parameter.default {
                        self.visit_expr(default);
                    }
                }
            }
            Stmt::ClassDef(class) => {
                self.bind(class.name.as_str());
                for decorator in &class.decorator_list {
                    self.visit_decorator(decorator);
                }
                if let Some(arguments) = &class.arguments {
                    self.visit_arguments(arguments);
                }
            }
            Stmt::Global(global) => {
                self.globals
                    .extend(global.names.iter().map(|n| n.as_str().to_owned()));
            }
            Stmt::Nonlocal(nonlocal) => {
                self.nonlocals
                    .extend(nonlocal.names.iter().map(|n| n.as_str().to_owned()));
            }
            Stmt::Import(import) => {
                for alias in &import.names {
                    self.bind(import_binding(alias));
                }
            }
            Stmt::ImportFrom(import) => {
                for alias in &import.names {
                    if alias.name.as_str() != "*" {
                        self.bind(import_binding(alias));
                    }
                }
            }
            Stmt::TypeAlias(alias) => {
                if let Expr::Name(name) = &*alias.name {
                    self.bind(name.id.as_str());
                }
            }
            _ => visitor::walk_stmt(self, stmt),
        }
    }

    fn expr(&mut self, expr: &Expr) {
        match expr {
            Expr::Name(name) => {
                if matches!(name.ctx, ExprContext::Store | ExprContext::Del) {
                    self.bind(name.id.as_str());
                }
            }
            Expr::Named(named) => {
                if let Expr::Name(name) = &*named.target {
                    self.bind(name.id.as_str());
                }
                self.visit_expr(&named.value);
            }
            Expr::Lambda(lambda) => {
                if let Some(parameters) = &lambda.parameters {
                    for parameter in parameters.iter_non_variadic_params() {
                        if let Some(default) = &parameter.default {
                            self.visit_expr(default);
                        }
                    }
                }
            }
            Expr::ListComp(ast::ExprListComp {
                elt, generators, ..
            })
            | Expr::SetComp(ast::ExprSetComp {
                elt, generators, ..
            })
            | Expr::Generator(ast::ExprGenerator {
                elt, generators, ..
            }) => {
                self.comprehension(generators);
                self.visit_expr(elt);
            }
            Expr::DictComp(comp) => {
                self.comprehension(&comp.generators);
                if let Some(key) = &comp.key {
                    self.visit_expr(key);
                }
                self.visit_expr(&comp.value);
            }
            _ => visitor::walk_expr(self, expr),
        }
    }

    /// Only a walrus in a comprehension binds in the enclosing scope; its targets do not.
    fn comprehension(&mut self, generators: &[ast::Comprehension]) {
        for generator in generators {
            self.visit_expr(&generator.iter);
            for condition in &generator.ifs {
                self.visit_expr(condition);
            }
        }
    }
}

impl<'a> Visitor<'a> for Collector {
    fn visit_stmt(&mut self, stmt: &'a Stmt) {
        stacker::maybe_grow(STACK_RED_ZONE, STACK_SEGMENT, || self.stmt(stmt));
    }

    fn visit_expr(&mut self, expr: &'a Expr) {
        stacker::maybe_grow(STACK_RED_ZONE, STACK_SEGMENT, || self.expr(expr));
    }

    fn visit_pattern(&mut self, pattern: &'a Pattern) {
        stacker::maybe_grow(STACK_RED_ZONE, STACK_SEGMENT, || {
            visitor::walk_pattern(self, pattern);
            if let Some(name) = pattern_capture(pattern) {
                self.bind(name);
            }
        });
    }

    fn visit_except_handler(&mut self, handler: &'a ExceptHandler) {
        let ExceptHandler::ExceptHandler(inner) = handler;
        if let Some(name) = &inner.name {
            self.bind(name.as_str());
        }
        visitor::walk_except_handler(self, handler);
    }
}
