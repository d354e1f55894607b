//! The table test: snippets with the defs and refs they must give, one trap per row.

use std::collections::BTreeSet;

use super::python::{MAX_NESTING, analyze_python};
use super::sql::{analyze_sql, kernel_source, python_string_literal};
use super::*;

struct Case {
    source: &'static str,
    defs: &'static [&'static str],
    refs: &'static [&'static str],
}

const fn case(
    source: &'static str,
    defs: &'static [&'static str],
    refs: &'static [&'static str],
) -> Case {
    Case { source, defs, refs }
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|name| (*name).to_owned()).collect()
}

const PYTHON: &[Case] = &[
    // Straight-line module code: written-before-read is the cell's own.
    case("x = 1", &["x"], &[]),
    case("y = x + 1", &["y"], &["x"]),
    case("x = x + 1", &["x"], &["x"]),
    case("x += 1", &["x"], &["x"]),
    case("x = 0\nx += 1", &["x"], &[]),
    case("print(len(xs))", &[], &["xs"]),
    case("a = b = c", &["a", "b"], &["c"]),
    case("a, *rest = items", &["a", "rest"], &["items"]),
    case("x = 1; y = x", &["x", "y"], &[]),
    // Mutation is not tracked: reads only.
    case("obj.attr = value", &[], &["obj", "value"]),
    case("d[k] = v", &[], &["d", "k", "v"]),
    case("df.append(row)\nlst.sort()", &[], &["df", "lst", "row"]),
    // Imports.
    case("import numpy as np", &["np"], &[]),
    case("import os.path", &["os"], &[]),
    case("import a.b.c as d", &["d"], &[]),
    case("from x import y as z, w", &["w", "z"], &[]),
    case("from . import sibling", &["sibling"], &[]),
    case("from __future__ import annotations", &[], &[]),
    // Functions: defaults and decorators outside, the body later.
    case(
        "def f(a, b=default):\n    return a + b + g",
        &["f"],
        &["default", "g"],
    ),
    case(
        "def f():\n    return helper()\ndef helper():\n    return 1",
        &["f", "helper"],
        &[],
    ),
    case(
        "def fact(n):\n    return 1 if n < 2 else n * fact(n - 1)",
        &["fact"],
        &[],
    ),
    case(
        "@decorate\ndef f(x: T = dflt) -> R:\n    y = x\n    return y",
        &["f"],
        &["R", "T", "decorate", "dflt"],
    ),
    case(
        "def f():\n    x = 1\n    def g():\n        return x + z\n    return g",
        &["f"],
        &["z"],
    ),
    case(
        "def f():\n    global counter\n    counter = 1",
        &["counter", "f"],
        &[],
    ),
    case(
        "def f():\n    global total\n    return total",
        &["f"],
        &["total"],
    ),
    case(
        "def outer():\n    n = 0\n    def inc():\n        nonlocal n\n        n += 1\n    return inc",
        &["outer"],
        &[],
    ),
    case("def f():\n    print(x)\n    x = 1", &["f"], &[]),
    case(
        "async def fetch(url):\n    async with session.get(url) as r:\n        return await r.json()",
        &["fetch"],
        &["session"],
    ),
    // Classes: the body runs at once; its names are invisible to methods.
    case(
        "class A(Base):\n    x = 1\n    y = x + 1\n    def m(self):\n        return x",
        &["A"],
        &["Base", "x"],
    ),
    case("class A:\n    y = x\n    x = 2", &["A"], &["x"]),
    case(
        "class Node:\n    def child(self):\n        return Node()",
        &["Node"],
        &[],
    ),
    // Lambdas.
    case("f = lambda x, y=k: x + y + z", &["f"], &["k", "z"]),
    case("f = lambda n: f(n - 1)", &["f"], &[]),
    // Comprehensions: own scope, first iterable outside, walrus binds outside.
    case(
        "ys = [x * scale for x in xs if x > lo]",
        &["ys"],
        &["lo", "scale", "xs"],
    ),
    case(
        "pairs = [(i, j) for i in range(n) for j in range(i)]",
        &["pairs"],
        &["n"],
    ),
    case("total = sum(x for x in data)", &["total"], &["data"]),
    case("m = {k: v for k, v in items.items()}", &["m"], &["items"]),
    case("[x for x in xs]\nprint(x)", &[], &["x", "xs"]),
    case(
        "if any((hit := v) > 3 for v in values):\n    print(hit)",
        &["hit"],
        &["values"],
    ),
    case(
        "class A:\n    xs = [1, 2]\n    ys = [x for x in xs]\n    zs = [len(xs) for _ in range(2)]",
        &["A"],
        &["xs"],
    ),
    case(
        "def f(items):\n    return [y for x in items if (y := x)]",
        &["f"],
        &[],
    ),
    // Walrus, try/except, with, for, while.
    case("if (n := len(data)) > 10:\n    print(n)", &["n"], &["data"]),
    case(
        "try:\n    risky()\nexcept ValueError as e:\n    log(e)",
        &[],
        &["log", "risky"],
    ),
    case(
        "try:\n    import ujson as json\nexcept ImportError:\n    import json",
        &["json"],
        &[],
    ),
    case(
        "with open(path) as f, lock:\n    data = f.read()",
        &["data", "f"],
        &["lock", "path"],
    ),
    case(
        "for i, row in enumerate(rows):\n    last = row",
        &["i", "last", "row"],
        &["rows"],
    ),
    case(
        "while cond():\n    n = step(n)",
        &["n"],
        &["cond", "n", "step"],
    ),
    // Match captures; class patterns and value patterns read.
    case(
        "match command:\n    case [\"go\", direction]:\n        move(direction)\n    case Point(x=0, y=yy):\n        pass\n    case {\"k\": v, **rest}:\n        pass\n    case [first, *others] if first > limit:\n        pass\n    case Color.RED as c:\n        pass",
        &["c", "direction", "first", "others", "rest", "v", "yy"],
        &["Color", "Point", "command", "limit", "move"],
    ),
    // Annotations.
    case("x: int = 5", &["x"], &[]),
    case("y: SomeType", &[], &["SomeType"]),
    case(
        "def f(df: pd.DataFrame) -> pd.Series:\n    local: Unused = df.x\n    return local",
        &["f"],
        &["pd"],
    ),
    // f-strings, including PEP 701 nested quotes.
    case(
        "msg = f\"{name!r:>{width}} {value:.2f}\"",
        &["msg"],
        &["name", "value", "width"],
    ),
    case("print(f\"{x['a']}\")", &[], &["x"]),
    // del.
    case("del x", &[], &["x"]),
    case("tmp = 1\ndel tmp", &[], &[]),
    case("del obj.attr, d[k]", &[], &["d", "k", "obj"]),
    // PEP 695 type parameters and aliases.
    case(
        "def first[T](xs: list[T]) -> T:\n    return xs[0]",
        &["first"],
        &[],
    ),
    case("type Pair[T] = tuple[T, Later]", &["Pair"], &["Later"]),
    case("class Box[T](Base[T]):\n    item: T", &["Box"], &["Base"]),
    // `global` at module level, builtins, IPython names.
    case("global g\ng = 1", &["g"], &[]),
    case(
        "print(__name__, display, In, Out, _, __, _3, _i2)",
        &[],
        &[],
    ),
    // IPython's cleanup transforms.
    case("    x = 1\n    y = x\n", &["x", "y"], &[]),
    case(">>> a = 1\n>>> b = a + c", &["a", "b"], &["c"]),
    case("\n\nIn [1]: a = 1\n   ...: b = a", &["a", "b"], &[]),
    // IPython line magics.
    case("%time x = f()", &["x"], &["f"]),
    case("%timeit -n 10 -r 3 y = g(x)", &[], &["g", "x"]),
    case("x = %time f()", &["x"], &["f"]),
    case("%prun -s cumulative model.fit(X)", &[], &["X", "model"]),
    case(
        "%matplotlib inline\nimport matplotlib.pyplot as plt",
        &["plt"],
        &[],
    ),
    case("%load_ext autoreload\n%autoreload 2", &[], &[]),
    case("%config InlineBackend.figure_format = 'retina'", &[], &[]),
    case(
        "out = %sql SELECT * FROM {table_name}",
        &["out"],
        &["table_name"],
    ),
    // Shell escapes, with IPython's variable expansion.
    case("!ls", &[], &[]),
    case("files = !ls {folder}", &["files"], &["folder"]),
    case("!echo $name $$HOME '$quoted'", &[], &["name"]),
    case("!!ls {path}", &[], &["path"]),
    case(
        "for f in files:\n    !cp {f} {dest}",
        &["f"],
        &["dest", "files"],
    ),
    // Automagic: a one-line cell that is not Python but starts with a magic's name.
    case("cd ..", &[], &[]),
    case("pip install pandas", &[], &[]),
    case("cd {workdir}", &[], &["workdir"]),
    case("pwd", &[], &["pwd"]),
    // Help and autocall.
    case("x?", &[], &[]),
    case("??x", &[], &[]),
    case("obj.attr??", &[], &[]),
    case("/print a, b", &[], &["a", "b"]),
    // Cell magics: Python bodies, other bodies, and the names they bind.
    case("%%time\nx = f()\n", &["x"], &["f"]),
    case(
        "%%timeit setup = prep()\nrun(setup, data)",
        &[],
        &["data", "prep", "run"],
    ),
    case(
        "%%capture out\nresult = compute()",
        &["out", "result"],
        &["compute"],
    ),
    case("%%capture --no-stderr\nz = 1", &["z"], &[]),
    case("%%sql\nSELECT * FROM t", &[], &[]),
    case("%%sql result <<\nSELECT 1", &["result"], &[]),
    case("%%bash\necho $x {y}", &[], &[]),
    case(
        "%%bash --out output --err errors\nls",
        &["errors", "output"],
        &[],
    ),
    case(
        "%%writefile script.py\nimport os\nprint(os.environ)",
        &[],
        &[],
    ),
    case("%%html\n<b>{x}</b>", &[], &[]),
    case("\n  %%time\n  x = 1\n", &["x"], &[]),
];

#[test]
fn python_table() {
    assert!(PYTHON.len() >= 40);
    let mut failures = Vec::new();
    for case in PYTHON {
        match analyze_python(case.source) {
            Ok(analysis) => {
                if analysis.defs != set(case.defs) || analysis.refs != set(case.refs) {
                    failures.push(format!(
                        "{:?}\n  want defs {:?} refs {:?}\n  got  defs {:?} refs {:?}",
                        case.source, case.defs, case.refs, analysis.defs, analysis.refs
                    ));
                }
            }
            Err(error) => failures.push(format!("{:?}: {error}", case.source)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        PYTHON.len(),
        failures.join("\n")
    );
}

#[test]
fn builtins_are_kept_apart() {
    let analysis = analyze_python("print(len(xs), display(df), _)").unwrap();
    assert_eq!(analysis.refs, set(&["df", "xs"]));
    assert_eq!(
        analysis.builtin_refs,
        set(&["_", "display", "len", "print"])
    );

    // A shadowed builtin read after the cell binds it is the cell's own.
    let analysis = analyze_python("list = [1]\nprint(list)").unwrap();
    assert_eq!(analysis.defs, set(&["list"]));
    assert_eq!(analysis.builtin_refs, set(&["print"]));
}

#[test]
fn deletes_are_recorded() {
    let analysis = analyze_python("del df").unwrap();
    assert_eq!(analysis.deletes, set(&["df"]));
    assert!(analysis.defs.is_empty());

    let analysis = analyze_python("tmp = load()\nuse(tmp)\ndel tmp").unwrap();
    assert_eq!(analysis.deletes, set(&["tmp"]));
    assert!(analysis.defs.is_empty());

    let analysis = analyze_python("del x\nx = 2").unwrap();
    assert_eq!(analysis.defs, set(&["x"]));
    assert!(analysis.deletes.is_empty());
}

#[test]
fn star_imports_are_flagged() {
    let analysis = analyze_python("from pylab import *\nfrom .local import *\nx = 1").unwrap();
    assert_eq!(analysis.star_imports, vec!["pylab", ".local"]);
    assert_eq!(analysis.defs, set(&["x"]));
}

#[test]
fn except_names_are_unbound_after_the_handler() {
    let analysis = analyze_python("e = 1\ntry:\n    f()\nexcept E as e:\n    pass").unwrap();
    assert_eq!(analysis.defs, set(&["e"]));
    let analysis = analyze_python("try:\n    f()\nexcept E as e:\n    pass\nprint(e)").unwrap();
    assert!(analysis.defs.is_empty());
    assert!(
        !analysis.refs.contains("e"),
        "a read after the handler is not another cell's"
    );
}

#[test]
fn syntax_errors_are_values_with_positions() {
    let error = analyze_python("def f(:\n    pass").unwrap_err();
    assert!(
        matches!(error, AnalysisError::Syntax { line: 1, .. }),
        "{error:?}"
    );

    let error = analyze_python("x = 1\ny = (").unwrap_err();
    assert!(
        matches!(error, AnalysisError::Syntax { line: 2, .. }),
        "{error:?}"
    );

    let error = analyze_python("\n\nx = 1\n  y = 2").unwrap_err();
    assert!(
        matches!(error, AnalysisError::Syntax { line: 4, .. }),
        "{error:?}"
    );

    let error = analyze_python("%%capture out\nx = 1\nx = (").unwrap_err();
    assert!(
        matches!(error, AnalysisError::Syntax { line: 3, .. }),
        "{error:?}"
    );
    assert!(error.to_string().starts_with("syntax error at line 3"));
}

#[test]
fn pathological_nesting_is_refused_not_a_crash() {
    let deep_sum = format!("x = {}1", "1 + ".repeat(20_000));
    assert_eq!(
        analyze_python(&deep_sum),
        Err(AnalysisError::TooDeep { limit: MAX_NESTING })
    );
    let deep_calls = format!("x = f{}", "()".repeat(20_000));
    assert!(matches!(
        analyze_python(&deep_calls),
        Err(AnalysisError::TooDeep { .. })
    ));
    let deep_blocks: String = (0..2_000)
        .map(|depth| format!("{}if x:\n", "    ".repeat(depth)))
        .collect::<String>()
        + &"    ".repeat(2_000)
        + "pass\n";
    assert!(matches!(
        analyze_python(&deep_blocks),
        Err(AnalysisError::TooDeep { .. })
    ));

    // Wide is fine, and so is nesting CPython accepts.
    let wide = format!("data = [{}]", vec!["-1"; 50_000].join(", "));
    assert_eq!(analyze_python(&wide).unwrap().defs, set(&["data"]));
    let nested = format!("x = {}y{}", "(".repeat(150), ")".repeat(150));
    assert_eq!(analyze_python(&nested).unwrap().refs, set(&["y"]));
    let chain = format!("x = df{}", ".pipe(f)".repeat(100));
    assert_eq!(analyze_python(&chain).unwrap().refs, set(&["df", "f"]));
}

#[test]
fn a_parser_panic_is_an_error_value() {
    // Ruff 0.0.10 reaches an `unreachable!` on these (IPython mode, help escape after an
    // unfinished statement).
    for source in ["lambda\n?", "import[\n?", "lambda\n... ?"] {
        assert_eq!(
            analyze_python(source),
            Err(AnalysisError::ParserFailed),
            "{source:?}"
        );
    }
}

#[test]
fn oversized_cells_are_refused() {
    let cell = CellContent::code("x = 1\n".repeat(MAX_CELL_BYTES / 6 + 1));
    assert!(matches!(
        analyze(&cell),
        Err(AnalysisError::TooLarge { .. })
    ));
}

#[test]
fn markdown_and_raw_cells_are_empty() {
    let cell = CellContent::markdown("# x = y");
    assert_eq!(analyze(&cell), Ok(Analysis::default()));
    assert_eq!("raw".parse::<CellKind>(), Ok(CellKind::Raw));
    assert!("python".parse::<CellKind>().is_err());
}

struct SqlCase {
    source: &'static str,
    metadata_name: Option<&'static str>,
    defs: &'static [&'static str],
    refs: &'static [&'static str],
}

const SQL: &[SqlCase] = &[
    SqlCase {
        source: "SELECT * FROM df",
        metadata_name: None,
        defs: &[],
        refs: &["df"],
    },
    SqlCase {
        source: "-- name: result_df\nSELECT a, b FROM sales JOIN customers ON sales.id = customers.id",
        metadata_name: None,
        defs: &["result_df"],
        refs: &["customers", "sales"],
    },
    SqlCase {
        source: "WITH recent AS (SELECT * FROM orders WHERE d > '2024-01-01')\nSELECT * FROM recent",
        metadata_name: None,
        defs: &[],
        refs: &["orders"],
    },
    SqlCase {
        source: "SELECT * FROM (SELECT * FROM inner_df) AS sub WHERE x IN (SELECT y FROM other_df)",
        metadata_name: None,
        defs: &[],
        refs: &["inner_df", "other_df"],
    },
    SqlCase {
        source: "SELECT * FROM read_csv('data.csv')",
        metadata_name: None,
        defs: &[],
        refs: &[],
    },
    SqlCase {
        source: "SELECT * FROM main.tbl, df AS d",
        metadata_name: None,
        defs: &[],
        refs: &["df"],
    },
    SqlCase {
        source: "CREATE TABLE t AS SELECT * FROM df;\nSELECT * FROM t",
        metadata_name: None,
        defs: &[],
        refs: &["df"],
    },
    SqlCase {
        source: "SELECT 'it''s' AS s, \"odd \"\"col\" FROM df WHERE note = 'FROM x'",
        metadata_name: Some("quoted"),
        defs: &["quoted"],
        refs: &["df"],
    },
    SqlCase {
        source: "--name:  first\nSELECT 1",
        metadata_name: Some("second"),
        defs: &["first"],
        refs: &[],
    },
    SqlCase {
        source: "SELECT a FROM t1 UNION ALL SELECT a FROM t2 ORDER BY a",
        metadata_name: None,
        defs: &[],
        refs: &["t1", "t2"],
    },
];

#[test]
fn sql_table() {
    let mut failures = Vec::new();
    for case in SQL {
        match analyze_sql(case.source, case.metadata_name) {
            Ok(analysis) => {
                if analysis.defs != set(case.defs) || analysis.refs != set(case.refs) {
                    failures.push(format!(
                        "{:?}\n  want defs {:?} refs {:?}\n  got  defs {:?} refs {:?} ({:?})",
                        case.source,
                        case.defs,
                        case.refs,
                        analysis.defs,
                        analysis.refs,
                        analysis.warnings
                    ));
                }
            }
            Err(error) => failures.push(format!("{:?}: {error}", case.source)),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn sql_the_parser_does_not_know_is_guessed() {
    let analysis = analyze_sql(
        "SELECT * FROM sales s, regions r POSITIONAL JOIN extra USING SAMPLE 10%",
        None,
    )
    .unwrap();
    assert_eq!(analysis.refs, set(&["extra", "regions", "sales"]));
    assert!(matches!(
        analysis.warnings.as_slice(),
        [AnalysisWarning::SqlApproximated { .. }]
    ));
    let analysis = analyze_sql("SUMMARIZE df", None).unwrap();
    assert_eq!(analysis.refs, set(&["df"]));
    let analysis = analyze_sql(
        "WITH t AS (SELECT 1) SELECT * FROM t, df USING SAMPLE 5",
        None,
    )
    .unwrap();
    assert_eq!(
        analysis.refs,
        set(&["df"]),
        "CTEs are not guessed as tables"
    );
    assert!(matches!(
        analysis.warnings.as_slice(),
        [AnalysisWarning::SqlApproximated { .. }]
    ));
}

#[test]
fn sql_result_names_must_be_identifiers() {
    assert_eq!(
        analyze_sql("-- name: 2bad\nSELECT 1", None),
        Err(AnalysisError::BadResultName("2bad".to_owned()))
    );
    assert_eq!(
        analyze_sql("SELECT 1", Some("class")),
        Err(AnalysisError::BadResultName("class".to_owned()))
    );
}

#[test]
fn sql_kernel_source_round_trips_any_text() {
    let sql = "SELECT 'it''s', \"q\" FROM df -- \\ back\\slash ''' \"\"\"\n\ttab\r\x00\u{85}é 😀";
    let source = kernel_source(sql, Some("out"));
    assert!(source.starts_with("out = (lambda r: None if r is None else r.df())("));
    assert!(source.ends_with("\nout\n"));

    // Parse the generated Python and read the string literal back.
    let parsed = ruff_python_parser::parse_module(&source).unwrap();
    let body = &parsed.syntax().body;
    assert_eq!(body.len(), 2);
    let ruff_python_ast::Stmt::Assign(assign) = &body[0] else {
        panic!("not an assignment: {:?}", body[0]);
    };
    let ruff_python_ast::Expr::Call(outer) = &*assign.value else {
        panic!("not a call");
    };
    let ruff_python_ast::Expr::Call(sql_call) = &outer.arguments.args[0] else {
        panic!("not a call");
    };
    let ruff_python_ast::Expr::StringLiteral(literal) = &sql_call.arguments.args[0] else {
        panic!("not a string literal");
    };
    assert_eq!(literal.value.to_str(), sql);

    assert_eq!(python_string_literal("a'b\\c\n"), "'a\\'b\\\\c\\n'");
    assert_eq!(
        kernel_source("SELECT 1", None),
        "(lambda r: None if r is None else r.df())(__import__('duckdb').sql('SELECT 1'))\n"
    );
}

#[test]
fn sql_cells_through_analyze() {
    let cell = CellContent {
        kind: CellKind::Sql,
        source: "SELECT * FROM df".to_owned(),
        result_name: Some("top".to_owned()),
    };
    let analysis = analyze(&cell).unwrap();
    assert_eq!(analysis.defs, set(&["top"]));
    assert_eq!(analysis.refs, set(&["df"]));
    assert!(
        analysis
            .kernel_source
            .as_deref()
            .is_some_and(|code| code.starts_with("top = "))
    );
    let empty = analyze(&CellContent::sql("-- nothing yet\n")).unwrap();
    assert_eq!(empty.kernel_source.as_deref(), Some(""));
    assert!(empty.defs.is_empty());
}

use crate::document::test_rng::Rng;

#[test]
fn arbitrary_text_never_panics() {
    const FRAGMENTS: &[&str] = &[
        "x",
        "df",
        " = ",
        "(",
        ")",
        "[",
        "]",
        "{",
        "}",
        "'",
        "\"",
        "\"\"\"",
        "f'",
        "{x}",
        "%",
        "%%",
        "%%time\n",
        "%timeit ",
        "!",
        "?",
        "??",
        "$",
        "$$",
        "\n",
        "    ",
        "\t",
        "\r\n",
        "def ",
        "class ",
        "lambda ",
        ":",
        ",",
        "*",
        "**",
        ":=",
        "del ",
        "global ",
        "nonlocal ",
        "import ",
        "from ",
        " as ",
        "match ",
        "case ",
        "for ",
        " in ",
        "if ",
        "else",
        "try:",
        "except ",
        "with ",
        "é",
        "😀",
        "\u{3000}",
        "\\",
        "#",
        "-- name: ",
        "SELECT ",
        "FROM ",
        "WITH ",
        "JOIN ",
        ">>> ",
        "In [1]: ",
        "   ...: ",
        "/",
        ";",
        ",",
        "\0",
        "type ",
        "[T]",
    ];
    let mut rng = Rng(0x5eed_cafe_f00d_1234);
    for _ in 0..4_000 {
        let len = rng.next() % 40;
        let text: String = (0..len).map(|_| rng.pick(FRAGMENTS)).collect();
        for kind in [CellKind::Code, CellKind::Sql] {
            let cell = CellContent {
                kind,
                source: text.clone(),
                result_name: None,
            };
            // Any result is fine; returning at all is the point.
            let _ = analyze(&cell);
        }
    }
}
