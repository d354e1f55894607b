//! IPython's syntax, handled the way IPython's input transformer handles it before Python runs.
//!
//! IPython rewrites a cell in two passes: cleanups over the whole text (drop leading blank lines,
//! remove the first line's indent from every line, strip pasted `>>> ` and `In [1]: ` prompts),
//! then, if the first line starts with `%%`, the whole cell becomes
//! `get_ipython().run_cell_magic(name, line, body)`; otherwise every escape at the start of a
//! logical line becomes a call on `get_ipython()`: `%magic args` → `run_line_magic`, `!cmd` →
//! `system`, `x = !cmd` → `x = getoutput(...)`, `x?`/`??x` → `pinfo`, `/f a` → `f(a)`.
//!
//! Such calls read only builtins, so for analysis what matters is what the *magic* does with its
//! arguments. This module knows the magics whose arguments are Python that runs in the user
//! namespace (`%time`, `%%time`, `%%capture`, `%prun`), the ones that run it in a namespace of
//! their own (`%timeit`, `%%timeit`: reads count, writes do not), the ones that bind a name
//! (`%%capture out`, `%%bash --out o --err e`, `%%sql result <<`), and IPython's variable
//! expansion in shell commands and line magics (`!ls {path}`, `!echo $name`), which reads names.
//! Every other cell magic's body is not Python (`%%bash`, `%%sql`, `%%html`, `%%writefile`).

use std::borrow::Cow;

/// The cell after IPython's cleanup transforms, and how many leading lines were dropped.
#[derive(Debug)]
pub struct Cleaned<'a> {
    pub text: Cow<'a, str>,
    pub dropped_lines: usize,
}

/// IPython's `leading_empty_lines`, `leading_indent`, `classic_prompt` and `ipython_prompt`.
pub fn cleanup(source: &str) -> Cleaned<'_> {
    let mut dropped_lines = 0;
    let mut rest = source;
    // `leading_empty_lines`: drop lines that are empty or whitespace only.
    while let Some(end) = rest.find('\n') {
        if rest[..end].trim().is_empty() {
            rest = &rest[end + 1..];
            dropped_lines += 1;
        } else {
            break;
        }
    }
    if rest.trim().is_empty() {
        return Cleaned {
            text: Cow::Borrowed(""),
            dropped_lines,
        };
    }
    let mut text = Cow::Borrowed(rest);

    // `leading_indent`: remove the first line's indent from every line that starts with it.
    let indent_len = rest.len() - rest.trim_start_matches([' ', '\t']).len();
    if indent_len > 0 {
        let indent = &rest[..indent_len];
        text = Cow::Owned(map_lines(&text, |line| {
            line.strip_prefix(indent).unwrap_or(line)
        }));
    }

    // `classic_prompt`: `>>> ` and `... ` when the first line (or the second) has one.
    if prompts_present(&text, classic_first, classic_any) {
        text = Cow::Owned(map_lines(&text, strip_classic));
    }
    // `ipython_prompt`: `In [3]: ` and `   ...: ` likewise.
    if prompts_present(&text, ipython_any, ipython_any) {
        text = Cow::Owned(map_lines(&text, strip_ipython));
    }
    Cleaned {
        text,
        dropped_lines,
    }
}

fn map_lines<'a>(text: &'a str, f: impl Fn(&'a str) -> &'a str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        out.push_str(f(line));
    }
    out
}

fn prompts_present(
    text: &str,
    first: impl Fn(&str) -> Option<usize>,
    second: impl Fn(&str) -> Option<usize>,
) -> bool {
    let mut lines = text.lines();
    let line0 = lines.next().unwrap_or("");
    first(line0).is_some() || lines.next().is_some_and(|line1| second(line1).is_some())
}

/// Length of a `>>>` prompt (`^>>>( |$)`) at the start of `line`.
fn classic_first(line: &str) -> Option<usize> {
    prompt_then_space(line, ">>>")
}

/// Length of a `>>>` or `...` prompt at the start of `line`.
fn classic_any(line: &str) -> Option<usize> {
    prompt_then_space(line, ">>>").or_else(|| prompt_then_space(line, "..."))
}

fn prompt_then_space(line: &str, prompt: &str) -> Option<usize> {
    let rest = line.strip_prefix(prompt)?;
    let rest_trimmed = rest.trim_end_matches(['\n', '\r']);
    if rest_trimmed.is_empty() {
        Some(prompt.len())
    } else if rest.starts_with(' ') {
        Some(prompt.len() + 1)
    } else {
        None
    }
}

fn strip_classic(line: &str) -> &str {
    match classic_any(line) {
        Some(n) => &line[n..],
        None => line,
    }
}

/// Length of an IPython prompt, `^(In \[\d+\]: |\s*\.{3,}: ?)`, at the start of `line`.
fn ipython_any(line: &str) -> Option<usize> {
    if let Some(rest) = line.strip_prefix("In [") {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && rest[digits..].starts_with("]: ") {
            return Some(4 + digits + 3);
        }
        return None;
    }
    let spaces = line.len() - line.trim_start().len();
    let rest = &line[spaces..];
    let dots = rest.bytes().take_while(|&b| b == b'.').count();
    if dots < 3 || !rest[dots..].starts_with(':') {
        return None;
    }
    let after = spaces + dots + 1;
    Some(if line[after..].starts_with(' ') {
        after + 1
    } else {
        after
    })
}

fn strip_ipython(line: &str) -> &str {
    match ipython_any(line) {
        Some(n) => &line[n..],
        None => line,
    }
}

/// A cell that starts with `%%name line`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellMagic<'a> {
    pub name: &'a str,
    /// The rest of the first line.
    pub line: &'a str,
    /// Everything after the first line.
    pub body: &'a str,
}

/// The cell magic heading `cleaned` (the output of [`cleanup`]), if any.
pub fn cell_magic(cleaned: &str) -> Option<CellMagic<'_>> {
    let rest = cleaned.strip_prefix("%%")?;
    let (first, body) = rest.split_once('\n').unwrap_or((rest, ""));
    let first = first.trim_end_matches('\r');
    let (name, line) = split_magic(first);
    Some(CellMagic { name, line, body })
}

/// Splits `name args` (a magic's text after its `%` or `%%`) into the name and the arguments.
pub fn split_magic(text: &str) -> (&str, &str) {
    let text = text.trim_start();
    match text.find(char::is_whitespace) {
        Some(i) => (&text[..i], text[i..].trim_start()),
        None => (text, ""),
    }
}

/// Line magics IPython's automagic commonly lets a one-line cell call without the `%`.
const AUTOMAGICS: &[&str] = &[
    "alias",
    "autoreload",
    "bookmark",
    "cd",
    "conda",
    "config",
    "dhist",
    "env",
    "history",
    "load_ext",
    "ls",
    "lsmagic",
    "magic",
    "matplotlib",
    "pip",
    "pwd",
    "reload_ext",
    "reset",
    "run",
    "store",
    "who",
    "who_ls",
    "whos",
    "xdel",
];

/// The cell as a line magic, if IPython's automagic would make it one: a single line starting
/// with a common magic's name. Only consulted when the cell is not valid Python.
pub fn automagic(cleaned: &str) -> Option<&str> {
    let line = cleaned.trim_end();
    if line.contains('\n') {
        return None;
    }
    let (name, _) = split_magic(line);
    AUTOMAGICS.contains(&name).then_some(line)
}

/// How a magic treats the Python in its arguments or body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MagicCode {
    /// Runs it in the user namespace, like a normal cell (`%time`, `%%capture`, `%prun`).
    Inline,
    /// Runs it in a namespace of its own: reads are refs, writes are not defs (`%timeit`).
    Isolated,
    /// The arguments are not Python; IPython expands `{expr}` and `$name` in them.
    Expanded,
    /// Nothing in the arguments is read (`%%time`'s line, help).
    Opaque,
}

/// What a line magic (`%name args`) does with `args`, and the `getopt` spec of its options.
pub fn line_magic(name: &str) -> (MagicCode, &'static str) {
    match name {
        "time" => (MagicCode::Inline, ""),
        "prun" => (MagicCode::Inline, "D:l:rs:T:q"),
        "timeit" => (MagicCode::Isolated, "n:r:tcp:qo"),
        _ => (MagicCode::Expanded, ""),
    }
}

/// What a cell magic's body is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellMagicPlan<'a> {
    /// How the body's Python (if it is Python) runs.
    pub body: MagicCode,
    /// The Python that runs before the body in the same namespace (`%%timeit`'s setup line).
    pub setup: &'a str,
    /// Names the magic itself binds (`%%capture out`).
    pub defs: Vec<&'a str>,
    /// Whether IPython expands `{expr}` and `$name` in the first line.
    pub expand_line: bool,
}

/// Interprets a cell magic.
pub fn cell_magic_plan<'a>(magic: &CellMagic<'a>) -> CellMagicPlan<'a> {
    let mut plan = CellMagicPlan {
        body: MagicCode::Opaque,
        setup: "",
        defs: Vec::new(),
        expand_line: true,
    };
    match magic.name {
        "time" => {
            plan.body = MagicCode::Inline;
            plan.expand_line = false;
        }
        "prun" => {
            plan.body = MagicCode::Inline;
            plan.expand_line = false;
        }
        "timeit" => {
            plan.body = MagicCode::Isolated;
            plan.setup = strip_options(magic.line, "n:r:tcp:qo");
            plan.expand_line = false;
        }
        "capture" => {
            // `%%capture [--no-stderr] [--no-stdout] [--no-display] [output]`
            plan.body = MagicCode::Inline;
            plan.defs = magic
                .line
                .split_whitespace()
                .filter(|word| !word.starts_with('-'))
                .take(1)
                .collect();
        }
        "bash" | "sh" | "script" | "python" | "python2" | "python3" | "pypy" | "perl" | "ruby"
        | "js" | "javascript" | "node" => {
            // IPython's script magics: `--out NAME`, `--err NAME`, `--proc NAME` bind names.
            let mut words = magic.line.split_whitespace();
            while let Some(word) = words.next() {
                let option = word.split_once('=').map_or(word, |(option, _)| option);
                if matches!(option, "--out" | "--err" | "--proc") {
                    let value = match word.split_once('=') {
                        Some((_, value)) => Some(value),
                        None => words.next(),
                    };
                    plan.defs.extend(value);
                }
            }
            if matches!(magic.name, "js" | "javascript") {
                plan.defs.clear();
            }
        }
        "sql" => {
            // ipython-sql / JupySQL: `%%sql result <<` stores the result in `result`.
            if let Some((before, _)) = magic.line.split_once("<<") {
                plan.defs.extend(before.split_whitespace().last());
            }
        }
        _ => {}
    }
    plan.defs.retain(|name| super::is_identifier(name));
    plan
}

/// Strips leading `getopt`-style options (`spec` as in Python's `getopt`: `"n:r:t"` means `-n`
/// and `-r` take a value, `-t` does not) and returns the rest of `args` unchanged.
pub fn strip_options<'a>(args: &'a str, spec: &str) -> &'a str {
    let mut rest = args.trim_start();
    loop {
        let Some(option) = rest.strip_prefix('-') else {
            return rest;
        };
        if option.is_empty() || option.starts_with(char::is_whitespace) {
            return rest;
        }
        let word_end = option.find(char::is_whitespace).unwrap_or(option.len());
        let word = &option[..word_end];
        if word == "-" {
            // `--` ends the options.
            return option[word_end..].trim_start();
        }
        let mut takes_value_from_next = false;
        for (i, c) in word.char_indices() {
            let Some(at) = spec.find(c) else {
                // Not an option of this magic: IPython would fail; keep it as code.
                return rest;
            };
            if spec[at + c.len_utf8()..].starts_with(':') {
                takes_value_from_next = i + c.len_utf8() == word.len();
                break;
            }
        }
        rest = option[word_end..].trim_start();
        if takes_value_from_next {
            let value_end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            rest = rest[value_end..].trim_start();
        }
    }
}

/// A piece of a shell command or magic line that IPython evaluates in the user namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expansion<'a> {
    /// `{expr}`: a Python expression.
    Expression(&'a str),
    /// `$name` or `$name.attr`: the name read.
    Name(&'a str),
}

/// What IPython's `var_expand` evaluates in `text`: `{expr}` fields (not `{{`) and `$name`
/// (not `$$`, not inside single quotes).
pub fn expansions(text: &str) -> Vec<Expansion<'_>> {
    let mut found = Vec::new();
    let bytes = text.as_bytes();

    // `{expr}` fields, with nested braces balanced.
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'{' if bytes.get(i + 1) == Some(&b'{') => i += 2,
            b'{' => {
                let mut depth = 1;
                let mut j = i + 1;
                while j < bytes.len() && depth > 0 {
                    match bytes[j] {
                        b'{' => depth += 1,
                        b'}' => depth -= 1,
                        _ => {}
                    }
                    j += 1;
                }
                if depth == 0 {
                    found.push(Expansion::Expression(&text[i + 1..j - 1]));
                }
                i = j;
            }
            _ => i += 1,
        }
    }

    // `$name`, skipping `$$` and dollars inside single quotes.
    let mut in_quotes = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\'' => in_quotes = !in_quotes,
            b'$' if bytes.get(i + 1) == Some(&b'$') => i += 1,
            b'$' if !in_quotes => {
                let rest = &text[i + 1..];
                let len = rest
                    .char_indices()
                    .find(|&(_, c)| !(c == '_' || c.is_alphanumeric()))
                    .map_or(rest.len(), |(at, _)| at);
                let name = &rest[..len];
                if super::is_identifier(name) {
                    found.push(Expansion::Name(name));
                }
                i += len;
            }
            _ => {}
        }
        i += 1;
    }
    found
}

/// The expression of an `{expr}` field: the whole field if it parses, otherwise the part before
/// a format conversion or spec (`{x!r}`, `{x:>10}`), as `string.Formatter` splits it.
pub fn field_candidates(field: &str) -> [&str; 2] {
    let cut = field
        .char_indices()
        .scan(0i32, |depth, (i, c)| {
            match c {
                '[' | '(' => *depth += 1,
                ']' | ')' => *depth -= 1,
                _ => {}
            }
            Some((i, c, *depth))
        })
        .find(|&(_, c, depth)| depth == 0 && (c == '!' || c == ':'))
        .map_or(field.len(), |(i, _, _)| i);
    [field, &field[..cut]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleanup_matches_ipython() {
        let c = cleanup("\n  \n    x = 1\n    if x:\n        y = 2\n");
        assert_eq!(c.text, "x = 1\nif x:\n    y = 2\n");
        assert_eq!(c.dropped_lines, 2);

        let c = cleanup(">>> x = 1\n>>> if x:\n...     y = 2\n");
        assert_eq!(c.text, "x = 1\nif x:\n    y = 2\n");

        let c = cleanup("In [1]: x = 1\n   ...: y = x\n");
        assert_eq!(c.text, "x = 1\ny = x\n");

        let c = cleanup("x = 1\n");
        assert!(matches!(c.text, Cow::Borrowed("x = 1\n")));
    }

    #[test]
    fn cell_magics_are_split() {
        let m = cell_magic("%%capture out --no-stderr\nx = 1\n");
        assert_eq!(
            m,
            Some(CellMagic {
                name: "capture",
                line: "out --no-stderr",
                body: "x = 1\n"
            })
        );
        assert_eq!(cell_magic("x = 1\n%%time\n"), None);
        assert_eq!(
            cell_magic("%%time").map(|m| (m.name, m.body)),
            Some(("time", ""))
        );
    }

    #[test]
    fn options_are_stripped_like_getopt() {
        let spec = "n:r:tcp:qo";
        assert_eq!(strip_options("-n 10 -r3 x = f()", spec), "x = f()");
        assert_eq!(strip_options("-qo f(x)", spec), "f(x)");
        assert_eq!(strip_options("-n10 -- -x", spec), "-x");
        assert_eq!(strip_options("f(-1)", spec), "f(-1)");
        assert_eq!(strip_options("-x + 1", spec), "-x + 1");
    }

    #[test]
    fn expansions_follow_var_expand() {
        assert_eq!(
            expansions("ls {path} $HOME {{literal}} $$ '$quoted' {d['a']}"),
            vec![
                Expansion::Expression("path"),
                Expansion::Expression("d['a']"),
                Expansion::Name("HOME"),
            ]
        );
        assert_eq!(field_candidates("x!r"), ["x!r", "x"]);
        assert_eq!(field_candidates("d['a:b']:>4"), ["d['a:b']:>4", "d['a:b']"]);
    }

    #[test]
    fn script_magics_bind_their_outputs() {
        let plan = cell_magic_plan(&CellMagic {
            name: "bash",
            line: "--out o --err=e --bg",
            body: "echo hi",
        });
        assert_eq!(plan.defs, vec!["o", "e"]);
        assert_eq!(plan.body, MagicCode::Opaque);
    }
}
