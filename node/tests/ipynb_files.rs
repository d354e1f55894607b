//! `.ipynb` import and export (`airlock_node::collab::ipynb`) on a real notebook and on hostile
//! files: what survives a round trip, what an export looks like to nbformat's rules, and which
//! inputs are refused with which error.
//!
//! `nbformat.validate` runs on an export when a Python with `nbformat` is found: the one named by
//! `AIRLOCK_TEST_NBFORMAT_PYTHON`, else Airlock's managed env; otherwise that part is skipped with
//! a note.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a failed test

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use airlock_node::collab::ipynb::{
    self, CellOutputs, ImportLimits, ImportWarning, Imported, IpynbError, OutputsByCell,
};
use airlock_node::collab::{CellKind, Notebook};
use airlock_protocol::message::{Output, StreamName};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::{Value, json};

fn real_notebook() -> Option<Vec<u8>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/notebooks/pdsh-03.03-operations-in-pandas.ipynb");
    match std::fs::read(&path) {
        Ok(bytes) => Some(bytes),
        Err(err) => {
            println!("skipped: {} is not readable ({err})", path.display());
            None
        }
    }
}

fn import(json: &[u8]) -> Result<Imported, IpynbError> {
    ipynb::import_with_rng(json, ImportLimits::default(), &mut StdRng::seed_from_u64(7))
}

fn import_value(value: &Value) -> Result<Imported, IpynbError> {
    import(&serde_json::to_vec(value).unwrap())
}

/// Joins nbformat's multiline form the way a reader must.
fn joined(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts.iter().map(|p| p.as_str().unwrap()).collect(),
        other => panic!("not a multiline string: {other}"),
    }
}

#[test]
fn the_real_notebook_imports_with_its_cells_sources_metadata_and_outputs() {
    let Some(bytes) = real_notebook() else { return };
    let file: Value = serde_json::from_slice(&bytes).unwrap();
    let imported = import(&bytes).unwrap();
    assert!(
        imported.warnings.is_empty(),
        "warnings: {:?}",
        imported.warnings
    );
    let cells = imported.notebook.cells();
    assert_eq!(cells.len(), 40);
    let count = |kind| cells.iter().filter(|c| c.kind == kind).count();
    assert_eq!(count(CellKind::Code), 20);
    assert_eq!(count(CellKind::Markdown), 20);
    assert_eq!(cells[0].kind, CellKind::Markdown);
    assert_eq!(cells[0].source, "# Operating on Data in Pandas");
    assert_eq!(cells[3].kind, CellKind::Code);
    assert_eq!(cells[3].source, "import pandas as pd\nimport numpy as np");
    assert_eq!(
        cells[4].source,
        "rng = np.random.default_rng(42)\nser = pd.Series(rng.integers(0, 10, 4))\nser"
    );
    // Every source, exactly.
    for (cell, original) in cells.iter().zip(file["cells"].as_array().unwrap()) {
        assert_eq!(cell.source, joined(&original["source"]));
    }

    // nbformat 4.4 has no ids: generated, valid and unique.
    let ids: HashSet<_> = cells.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids.len(), 40);
    assert!(
        ids.iter()
            .all(|id| ipynb::is_nbformat_id(id) && id.len() >= 8)
    );

    let nb = &imported.notebook;
    assert_eq!(nb.meta("nbformat"), Some(json!(4)));
    assert_eq!(nb.meta("nbformat_minor"), Some(json!(4)));
    assert_eq!(nb.meta("metadata"), Some(file["metadata"].clone()));
    assert_eq!(
        nb.meta("metadata").unwrap()["kernelspec"]["name"],
        "python3"
    );

    // Outputs: 18 execute_results, each with its MIME bundle and count.
    let all: Vec<&Output> = imported
        .outputs
        .values()
        .flat_map(|run| &run.outputs)
        .collect();
    assert_eq!(all.len(), 18);
    assert!(
        all.iter()
            .all(|o| matches!(o, Output::ExecuteResult { .. }))
    );
    let ser = &imported.outputs[&cells[4].id];
    assert_eq!(ser.execution_count, Some(2));
    let Output::ExecuteResult {
        execution_count,
        data,
        ..
    } = &ser.outputs[0]
    else {
        panic!("{:?}", ser.outputs)
    };
    assert_eq!(*execution_count, 2);
    let original = &file["cells"][4]["outputs"][0]["data"];
    assert_eq!(
        data["text/plain"],
        Value::String(joined(&original["text/plain"]))
    );
    assert!(
        data["text/plain"]
            .as_str()
            .unwrap()
            .starts_with("0    0\n1    7\n")
    );

    let df = &imported.outputs[&cells[5].id];
    let Output::ExecuteResult { data, .. } = &df.outputs[0] else {
        panic!("{:?}", df.outputs)
    };
    let original = &file["cells"][5]["outputs"][0]["data"];
    assert_eq!(data.keys().collect::<Vec<_>>(), ["text/html", "text/plain"]);
    assert_eq!(
        data["text/html"],
        Value::String(joined(&original["text/html"]))
    );
    assert!(data["text/html"].as_str().unwrap().contains("<table"));

    // A code cell run without outputs keeps its count.
    assert_eq!(imported.outputs[&cells[3].id].execution_count, Some(1));
    assert!(imported.outputs[&cells[3].id].outputs.is_empty());
    // Markdown cells have no entry.
    assert!(!imported.outputs.contains_key(&cells[0].id));
}

#[test]
fn the_real_notebook_round_trips() {
    let Some(bytes) = real_notebook() else { return };
    let first = import(&bytes).unwrap();
    let exported = ipynb::export(&first.notebook, &first.outputs).unwrap();
    assert_nbformat4(&exported);
    let text = ipynb::to_string_pretty(&exported).unwrap();
    assert!(
        text.starts_with("{\n \"cells\": [\n  {\n"),
        "{}",
        &text[..40]
    );
    assert!(text.ends_with("}\n"));

    let second = import(text.as_bytes()).unwrap();
    assert!(second.warnings.is_empty(), "{:?}", second.warnings);
    assert_eq!(second.notebook.cells(), first.notebook.cells());
    assert_eq!(second.outputs, first.outputs);
    assert_eq!(
        second.notebook.meta("metadata"),
        first.notebook.meta("metadata")
    );
    assert_eq!(second.notebook.meta("nbformat_minor"), Some(json!(5)));

    // Exporting again gives the same file, and the sources are lists of lines.
    let again = ipynb::export(&second.notebook, &second.outputs).unwrap();
    assert_eq!(again, exported);
    let file: Value = serde_json::from_slice(&bytes).unwrap();
    for (ours, theirs) in exported["cells"]
        .as_array()
        .unwrap()
        .iter()
        .zip(file["cells"].as_array().unwrap())
    {
        assert_eq!(ours["source"], theirs["source"]);
        assert_eq!(ours["metadata"], theirs["metadata"]);
        assert_eq!(ours["outputs"], theirs["outputs"]);
        assert_eq!(ours["execution_count"], theirs["execution_count"]);
    }
    validate_with_nbformat(&text);
}

/// Every nbformat 4.x shape in one file: 4.0 without ids, strings where lists are usual and the
/// reverse, JSON MIME values, attachments, a SQL cell, every output type.
fn kitchen_sink() -> Value {
    json!({
        "nbformat": 4,
        "nbformat_minor": 0,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3"}},
        "cells": [
            {"cell_type": "markdown", "metadata": {}, "source": "# Title 🚀 naïve\r\n\n![x](attachment:x.png)",
             "attachments": {"x.png": {"image/png": "iVBORw0KGgo=\n"}}},
            {"cell_type": "code", "metadata": {"tags": ["setup"]}, "execution_count": 3,
             "source": ["import json\n", "print('hi')"],
             "outputs": [
                {"output_type": "stream", "name": "stdout", "text": "hi\n"},
                {"output_type": "stream", "name": "stdout", "text": ["there\n", "you\n"]},
                {"output_type": "stream", "name": "stderr", "text": "careful\n"},
                {"output_type": "display_data", "metadata": {"image/png": {"width": 10}},
                 "data": {"image/png": "iVBORw0KGgo=\n", "text/plain": ["<Figure>"]}},
                {"output_type": "execute_result", "execution_count": 3, "metadata": {},
                 "data": {"application/json": {"a": [1, 2.5, null, true]},
                          "application/vnd.custom+json": ["kept", "as", "a", "list"],
                          "text/plain": ["{'a': [1, 2.5, None, True]}"]}},
                {"output_type": "error", "ename": "ValueError", "evalue": "bad",
                 "traceback": ["\u{1b}[0;31mValueError\u{1b}[0m", "bad"]}
             ]},
            {"cell_type": "code", "execution_count": null, "outputs": [], "source": "",
             "metadata": {"airlock": {"cell_type": "sql", "result_name": "top"}, "collapsed": true}},
            {"cell_type": "raw", "metadata": {"format": "text/restructuredtext"}, "source": ["raw\n", "text"]}
        ]
    })
}

#[test]
fn every_nbformat_4_shape_imports_and_round_trips() {
    let imported = import_value(&kitchen_sink()).unwrap();
    assert!(imported.warnings.is_empty(), "{:?}", imported.warnings);
    let cells = imported.notebook.cells();
    let kinds: Vec<_> = cells.iter().map(|c| c.kind).collect();
    assert_eq!(
        kinds,
        [
            CellKind::Markdown,
            CellKind::Code,
            CellKind::Sql,
            CellKind::Raw
        ]
    );
    assert_eq!(cells[1].source, "import json\nprint('hi')");
    assert_eq!(cells[3].source, "raw\ntext");

    let run = &imported.outputs[&cells[1].id];
    assert_eq!(run.execution_count, Some(3));
    assert_eq!(run.outputs.len(), 6);
    assert_eq!(
        run.outputs[1],
        Output::Stream {
            name: StreamName::Stdout,
            text: "there\nyou\n".into()
        }
    );
    let Output::ExecuteResult { data, .. } = &run.outputs[4] else {
        panic!()
    };
    assert_eq!(data["application/json"], json!({"a": [1, 2.5, null, true]}));
    assert_eq!(
        data["application/vnd.custom+json"],
        json!(["kept", "as", "a", "list"])
    );
    assert_eq!(data["text/plain"], json!("{'a': [1, 2.5, None, True]}"));
    // The SQL cell never ran: no entry.
    assert!(!imported.outputs.contains_key(&cells[2].id));

    let exported = ipynb::export(&imported.notebook, &imported.outputs).unwrap();
    assert_nbformat4(&exported);
    let out = &exported["cells"];
    // Attachments and metadata kept; the SQL marker written back beside result_name.
    assert_eq!(
        out[0]["attachments"]["x.png"]["image/png"],
        "iVBORw0KGgo=\n"
    );
    assert_eq!(
        out[2]["metadata"],
        json!({"airlock": {"cell_type": "sql", "result_name": "top"}, "collapsed": true})
    );
    assert_eq!(out[2]["cell_type"], "code");
    assert_eq!(out[3]["metadata"]["format"], "text/restructuredtext");
    assert_eq!(out[1]["metadata"]["tags"], json!(["setup"]));
    // Streams merged, text split into lines, images left whole, JSON left as JSON.
    let outputs = out[1]["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 5);
    assert_eq!(outputs[0]["text"], json!(["hi\n", "there\n", "you\n"]));
    assert_eq!(outputs[1]["name"], "stderr");
    assert_eq!(outputs[2]["data"]["image/png"], "iVBORw0KGgo=\n");
    assert_eq!(outputs[2]["data"]["text/plain"], json!(["<Figure>"]));
    assert_eq!(outputs[2]["metadata"]["image/png"]["width"], 10);
    assert_eq!(outputs[3]["execution_count"], 3);
    assert_eq!(outputs[3]["data"]["application/json"]["a"][1], 2.5);
    assert_eq!(outputs[4]["traceback"][1], "bad");
    assert_eq!(exported["nbformat_minor"], 5);

    let text = ipynb::to_string_pretty(&exported).unwrap();
    let second = import(text.as_bytes()).unwrap();
    assert_eq!(second.notebook.cells(), cells);
    let again = ipynb::export(&second.notebook, &second.outputs).unwrap();
    assert_eq!(again, exported);
    validate_with_nbformat(&text);
}

#[test]
fn outputs_settle_before_export() {
    let display = |id: &str, text: &str| Output::DisplayData {
        data: BTreeMap::from([("text/plain".to_owned(), json!(text))]),
        metadata: Default::default(),
        display_id: Some(id.to_owned()),
    };
    let stdout = |text: &str| Output::Stream {
        name: StreamName::Stdout,
        text: text.into(),
    };
    let outputs = vec![
        stdout("gone"),
        Output::ClearOutput { wait: false },
        stdout("a"),
        display("bar", "0%"),
        stdout("b"),
        stdout("c"),
        display("other", "x"),
        Output::UpdateDisplayData {
            data: BTreeMap::from([("text/plain".to_owned(), json!("100%"))]),
            metadata: Default::default(),
            display_id: "bar".into(),
        },
        Output::Unknown,
    ];
    let settled = ipynb::settle_outputs(&outputs);
    assert_eq!(
        settled,
        [
            stdout("a"),
            display("bar", "100%"),
            stdout("bc"),
            display("other", "x")
        ]
    );

    // `wait` clears just before the next output, and not at all without one.
    let waited = ipynb::settle_outputs(&[
        stdout("old"),
        Output::ClearOutput { wait: true },
        stdout("new"),
    ]);
    assert_eq!(waited, [stdout("new")]);
    let pending = ipynb::settle_outputs(&[stdout("kept"), Output::ClearOutput { wait: true }]);
    assert_eq!(pending, [stdout("kept")]);

    // Exported: no display ids, no update or clear outputs.
    let nb = Notebook::new();
    nb.insert_cell(0, "c1", CellKind::Code, "for i in range(3): print(i)")
        .unwrap();
    let runs = OutputsByCell::from([(
        "c1".to_owned(),
        CellOutputs {
            execution_count: Some(9),
            outputs,
        },
    )]);
    let exported = ipynb::export(&nb, &runs).unwrap();
    assert_nbformat4(&exported);
    let cell = &exported["cells"][0];
    assert_eq!(cell["execution_count"], 9);
    assert_eq!(cell["outputs"].as_array().unwrap().len(), 4);
    assert_eq!(cell["outputs"][1]["data"]["text/plain"], json!(["100%"]));
    assert!(cell["outputs"][1].get("display_id").is_none());
}

#[test]
fn ids_outside_the_nbformat_pattern_are_rewritten_on_export() {
    let nb = Notebook::new();
    nb.insert_cell(0, "a.b", CellKind::Code, "1").unwrap();
    nb.insert_cell(1, "a_b", CellKind::Markdown, "x").unwrap();
    let long = "x".repeat(100);
    nb.insert_cell(2, &long, CellKind::Raw, "").unwrap();
    let runs = OutputsByCell::from([(
        "a.b".to_owned(),
        CellOutputs {
            execution_count: Some(1),
            outputs: vec![],
        },
    )]);
    let exported = ipynb::export(&nb, &runs).unwrap();
    assert_nbformat4(&exported);
    let ids: Vec<_> = exported["cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids[0], "a_b");
    assert_eq!(ids[1], "a_b-1");
    assert_eq!(ids[2], "x".repeat(64));
    assert_eq!(exported["cells"][0]["execution_count"], 1);
    // Empty source is an empty list, as Jupyter writes it.
    assert_eq!(exported["cells"][2]["source"], json!([]));
}

#[test]
fn ids_are_drawn_from_the_given_rng() {
    let file = serde_json::to_vec(&kitchen_sink()).unwrap();
    let ids = |seed| {
        let imported = ipynb::import_with_rng(
            &file,
            ImportLimits::default(),
            &mut StdRng::seed_from_u64(seed),
        )
        .unwrap();
        imported
            .notebook
            .cells()
            .into_iter()
            .map(|c| c.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(1), ids(1));
    assert_ne!(ids(1), ids(2));
    // And `import` itself works with the thread's RNG.
    assert_eq!(
        ipynb::import(&file, ImportLimits::default())
            .unwrap()
            .notebook
            .len(),
        4
    );
}

// ---------------------------------------------------------------------------------------------
// Hostile and broken files.

fn cell(id: Option<&str>, cell_type: &str, source: Value) -> Value {
    let mut cell = json!({"cell_type": cell_type, "metadata": {}, "source": source});
    if let Some(id) = id {
        cell["id"] = json!(id);
    }
    if cell_type == "code" {
        cell["outputs"] = json!([]);
        cell["execution_count"] = Value::Null;
    }
    cell
}

fn notebook(cells: Vec<Value>) -> Value {
    json!({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": cells})
}

#[test]
fn nbformat_3_is_refused_with_the_conversion_command() {
    let v3 = json!({"nbformat": 3, "nbformat_minor": 0, "metadata": {"name": ""},
                    "worksheets": [{"cells": [{"cell_type": "code", "input": "1", "outputs": []}]}]});
    let err = import_value(&v3).unwrap_err();
    assert!(
        matches!(&err, IpynbError::UnsupportedVersion { found } if found == "3"),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("nbformat 3"), "{message}");
    assert!(
        message.contains("jupyter nbconvert --to notebook --nbformat 4"),
        "{message}"
    );

    let mut without_version = v3.clone();
    without_version.as_object_mut().unwrap().remove("nbformat");
    assert!(matches!(
        import_value(&without_version),
        Err(IpynbError::UnsupportedVersion { .. })
    ));
    assert!(matches!(
        import_value(&json!({"nbformat": 5, "cells": []})),
        Err(IpynbError::UnsupportedVersion { found }) if found == "5"
    ));
    assert!(matches!(
        import_value(&json!({"nbformat": "4", "cells": []})),
        Err(IpynbError::Malformed { .. })
    ));
}

#[test]
fn broken_structure_gets_typed_errors() {
    let missing_cells = json!({"nbformat": 4, "nbformat_minor": 5, "metadata": {}});
    assert!(matches!(
        import_value(&missing_cells),
        Err(IpynbError::NotANotebook(_))
    ));
    assert!(matches!(
        import(b"[1, 2, 3]"),
        Err(IpynbError::NotANotebook(_))
    ));
    assert!(matches!(
        import(b"{\"nbformat\": 4, "),
        Err(IpynbError::NotJson(_))
    ));
    assert!(matches!(
        import(b"\xff\xfe not utf-8"),
        Err(IpynbError::NotJson(_))
    ));

    let number_source = notebook(vec![cell(None, "code", json!(42))]);
    match import_value(&number_source) {
        Err(IpynbError::Malformed { at, .. }) => assert_eq!(at, "cells[0].source"),
        other => panic!("{other:?}"),
    }
    let mixed_list = notebook(vec![cell(None, "markdown", json!(["a", 1]))]);
    assert!(matches!(
        import_value(&mixed_list),
        Err(IpynbError::Malformed { .. })
    ));
    let mut bad_count = cell(None, "code", json!("x"));
    bad_count["execution_count"] = json!(-1);
    match import_value(&notebook(vec![bad_count])) {
        Err(IpynbError::Malformed { at, .. }) => assert_eq!(at, "cells[0].execution_count"),
        other => panic!("{other:?}"),
    }
    let mut bad_output = cell(None, "code", json!("x"));
    bad_output["outputs"] = json!([{"output_type": "stream", "name": "stdout", "text": 5}]);
    match import_value(&notebook(vec![bad_output])) {
        Err(IpynbError::Malformed { at, .. }) => assert_eq!(at, "cells[0].outputs[0].text"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        import_value(&notebook(vec![json!("not a cell")])),
        Err(IpynbError::Malformed { .. })
    ));
}

#[test]
fn unknown_types_are_imported_as_raw_or_dropped_with_warnings() {
    let mut code = cell(Some("c"), "code", json!("x"));
    code["outputs"] = json!([
        {"output_type": "hologram", "data": {}},
        {"output_type": "stream", "name": "stdlog", "text": "t"}
    ]);
    code["attachments"] = json!({"a.png": {"image/png": "AA=="}});
    let mut markdown = cell(Some("m"), "markdown", json!("m"));
    markdown["outputs"] = json!([{"output_type": "stream", "name": "stdout", "text": "t"}]);
    let file = notebook(vec![cell(Some("u"), "widget", json!("w")), code, markdown]);
    let imported = import_value(&file).unwrap();
    assert_eq!(imported.notebook.cells()[0].kind, CellKind::Raw);
    assert_eq!(imported.notebook.cells()[0].source, "w");
    assert_eq!(
        imported.outputs["c"].outputs,
        [Output::Stream {
            name: StreamName::Stdout,
            text: "t".into()
        }]
    );
    let w = &imported.warnings;
    assert!(w.contains(&ImportWarning::UnknownCellType {
        cell: 0,
        cell_type: "widget".into()
    }));
    assert!(w.contains(&ImportWarning::UnknownOutputType {
        cell: 1,
        output_type: "hologram".into()
    }));
    assert!(w.contains(&ImportWarning::UnknownStreamName {
        cell: 1,
        name: "stdlog".into()
    }));
    assert!(w.contains(&ImportWarning::AttachmentsOnCodeCell { cell: 1 }));
    assert!(w.contains(&ImportWarning::OutputsOnNonCodeCell { cell: 2 }));
    assert_eq!(w.len(), 5);
    // Every warning reads as a sentence.
    assert!(w.iter().all(|w| !w.to_string().is_empty()));
    let exported = ipynb::export(&imported.notebook, &imported.outputs).unwrap();
    assert_nbformat4(&exported);
}

#[test]
fn duplicate_and_invalid_ids_are_renamed_with_warnings() {
    let mut first = cell(Some("same"), "code", json!("1"));
    first["outputs"] = json!([{"output_type": "stream", "name": "stdout", "text": "first"}]);
    let mut second = cell(Some("same"), "code", json!("2"));
    second["outputs"] = json!([{"output_type": "stream", "name": "stdout", "text": "second"}]);
    let file = notebook(vec![
        first,
        second,
        cell(Some("has space/../x"), "markdown", json!("3")),
        cell(Some(""), "markdown", json!("4")),
        cell(None, "markdown", json!("5")),
    ]);
    let imported = import_value(&file).unwrap();
    let cells = imported.notebook.cells();
    assert_eq!(cells[0].id, "same");
    assert_ne!(cells[1].id, "same");
    let ids: HashSet<_> = cells.iter().map(|c| c.id.clone()).collect();
    assert_eq!(ids.len(), 5);
    assert!(ids.iter().all(|id| ipynb::is_nbformat_id(id)));
    assert_eq!(
        imported.warnings[0],
        ImportWarning::DuplicateId {
            cell: 1,
            id: "same".into(),
            renamed_to: cells[1].id.clone()
        }
    );
    assert!(matches!(
        &imported.warnings[1],
        ImportWarning::InvalidId { cell: 2, .. }
    ));
    assert!(matches!(
        &imported.warnings[2],
        ImportWarning::InvalidId { cell: 3, .. }
    ));
    assert_eq!(imported.warnings.len(), 3);
    // Each cell keeps its own outputs under its final id.
    let text = |id: &str| match &imported.outputs[id].outputs[0] {
        Output::Stream { text, .. } => text.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(text("same"), "first");
    assert_eq!(text(&cells[1].id), "second");
}

#[test]
fn deep_nesting_is_refused_without_overflowing_the_stack() {
    // 100k levels: serde_json stops at 128 and says so.
    let depth = 100_000;
    let mut deep = String::from("{\"nbformat\": 4, \"cells\": [], \"metadata\": {\"x\": ");
    deep.push_str(&"[".repeat(depth));
    deep.push_str(&"]".repeat(depth));
    deep.push_str("}}");
    match import(deep.as_bytes()) {
        Err(IpynbError::NotJson(err)) => {
            assert!(err.to_string().contains("recursion limit"), "{err}")
        }
        other => panic!("{other:?}"),
    }

    // 100 levels parse, but are too deep for the CRDT: that metadata key is dropped, the rest
    // kept, and the document reloads from its own snapshot.
    let nested = (0..100).fold(json!(1), |inner, _| json!([inner]));
    let mut code = cell(Some("c"), "code", json!("x"));
    code["metadata"] = json!({"deep": nested, "tags": ["t"]});
    let mut file = notebook(vec![code]);
    file["metadata"] = json!({"deep": nested, "kernelspec": {"name": "python3"}});
    let imported = import_value(&file).unwrap();
    assert_eq!(
        imported.warnings,
        [
            ImportWarning::MetadataTooDeep {
                cell: None,
                key: "deep".into()
            },
            ImportWarning::MetadataTooDeep {
                cell: Some(0),
                key: "deep".into()
            },
        ]
    );
    let reloaded = Notebook::load([imported.notebook.snapshot().as_slice()]).unwrap();
    assert_eq!(reloaded.cells(), imported.notebook.cells());
    let exported = ipynb::export(&reloaded, &imported.outputs).unwrap();
    assert_eq!(exported["cells"][0]["metadata"], json!({"tags": ["t"]}));
    assert_eq!(
        exported["metadata"],
        json!({"kernelspec": {"name": "python3"}})
    );
}

#[test]
fn size_and_cell_limits_are_enforced() {
    let huge = "x".repeat(50 << 20);
    // In a source: under the default file limit, but over what one document may hold.
    let file = serde_json::to_vec(&notebook(vec![cell(None, "code", json!(huge))])).unwrap();
    assert!(matches!(
        import(&file),
        Err(IpynbError::DocumentTooLarge { .. })
    ));
    // Under a 1 MiB file limit: refused before parsing.
    let small = ImportLimits {
        max_bytes: 1 << 20,
        ..ImportLimits::default()
    };
    assert!(matches!(
        ipynb::import_with_rng(&file, small, &mut StdRng::seed_from_u64(1)),
        Err(IpynbError::TooLarge { .. })
    ));
    // In an output: outputs are not in the document, so it imports.
    let mut code = cell(Some("c"), "code", json!("print('x' * 50_000_000)"));
    code["outputs"] = json!([{"output_type": "stream", "name": "stdout", "text": huge}]);
    drop(huge);
    let file = serde_json::to_vec(&notebook(vec![code])).unwrap();
    let imported = import(&file).unwrap();
    assert!(matches!(
        &imported.outputs["c"].outputs[0],
        Output::Stream { text, .. } if text.len() == 50 << 20
    ));

    let many = notebook((0..11).map(|_| cell(None, "raw", json!(""))).collect());
    let ten = ImportLimits {
        max_cells: 10,
        ..ImportLimits::default()
    };
    let bytes = serde_json::to_vec(&many).unwrap();
    assert!(matches!(
        ipynb::import_with_rng(&bytes, ten, &mut StdRng::seed_from_u64(1)),
        Err(IpynbError::TooManyCells { count: 11, max: 10 })
    ));
}

#[test]
fn the_cell_limit_is_reachable() {
    let cells = (0..10_000)
        .map(|i| cell(None, "code", json!(format!("x = {i}\nprint(x)\n"))))
        .collect();
    let bytes = serde_json::to_vec(&notebook(cells)).unwrap();
    let started = std::time::Instant::now();
    let imported = import(&bytes).unwrap();
    let exported = ipynb::export(&imported.notebook, &imported.outputs).unwrap();
    println!("10,000 cells: import and export in {:?}", started.elapsed());
    assert_eq!(imported.notebook.len(), 10_000);
    assert_eq!(exported["cells"].as_array().unwrap().len(), 10_000);
    assert_eq!(
        exported["cells"][9_999]["source"],
        json!(["x = 9999\n", "print(x)\n"])
    );
}

#[test]
fn mutated_files_never_panic() {
    // Every single-byte truncation and a spread of byte flips of a valid file.
    let file = serde_json::to_vec(&kitchen_sink()).unwrap();
    for len in 0..file.len() {
        let _ = import(&file[..len]);
    }
    for at in (0..file.len()).step_by(3) {
        for byte in [b'[', b'{', b'"', b'0', b'n', b'}', b' '] {
            let mut mutated = file.clone();
            mutated[at] = byte;
            if let Ok(imported) = import(&mutated) {
                let exported = ipynb::export(&imported.notebook, &imported.outputs).unwrap();
                assert_nbformat4(&exported);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// nbformat 4 rules, checked by hand.

/// The nbformat 4.5 schema's structural rules: required and allowed keys per cell and output
/// type, the id pattern, counts as integers or null, no outputs outside code cells.
fn assert_nbformat4(nb: &Value) {
    let top = nb.as_object().expect("top level is an object");
    assert_keys(
        top,
        &["cells", "metadata", "nbformat", "nbformat_minor"],
        &[],
    );
    assert_eq!(nb["nbformat"], 4);
    assert!(nb["nbformat_minor"].as_u64().unwrap() >= 5, "ids need 4.5");
    assert!(nb["metadata"].is_object());
    let mut ids = HashSet::new();
    for cell in nb["cells"].as_array().expect("cells is a list") {
        let cell = cell.as_object().expect("a cell is an object");
        let id = cell["id"].as_str().expect("id is a string");
        assert!(
            (1..=64).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "id {id:?} does not match ^[a-zA-Z0-9-_]+$"
        );
        assert!(ids.insert(id.to_owned()), "id {id:?} repeats");
        assert!(cell["metadata"].is_object());
        assert_multiline(&cell["source"]);
        match cell["cell_type"].as_str().unwrap() {
            "code" => {
                assert_keys(
                    cell,
                    &[
                        "id",
                        "cell_type",
                        "metadata",
                        "source",
                        "outputs",
                        "execution_count",
                    ],
                    &[],
                );
                assert_count(&cell["execution_count"]);
                for output in cell["outputs"].as_array().unwrap() {
                    assert_output(output.as_object().unwrap());
                }
            }
            "markdown" | "raw" => {
                assert_keys(
                    cell,
                    &["id", "cell_type", "metadata", "source"],
                    &["attachments"],
                );
                if let Some(attachments) = cell.get("attachments") {
                    for bundle in attachments.as_object().unwrap().values() {
                        assert!(bundle.is_object());
                    }
                }
            }
            other => panic!("cell type {other:?}"),
        }
    }
}

fn assert_output(output: &serde_json::Map<String, Value>) {
    match output["output_type"].as_str().unwrap() {
        "stream" => {
            assert_keys(output, &["output_type", "name", "text"], &[]);
            assert!(output["name"].is_string());
            assert_multiline(&output["text"]);
        }
        "display_data" => {
            assert_keys(output, &["output_type", "data", "metadata"], &[]);
            assert_bundle(&output["data"]);
            assert!(output["metadata"].is_object());
        }
        "execute_result" => {
            assert_keys(
                output,
                &["output_type", "execution_count", "data", "metadata"],
                &[],
            );
            assert_count(&output["execution_count"]);
            assert_bundle(&output["data"]);
            assert!(output["metadata"].is_object());
        }
        "error" => {
            assert_keys(
                output,
                &["output_type", "ename", "evalue", "traceback"],
                &[],
            );
            assert!(output["ename"].is_string() && output["evalue"].is_string());
            assert!(
                output["traceback"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(Value::is_string)
            );
        }
        other => panic!("output type {other:?} does not belong in a file"),
    }
}

fn assert_keys(map: &serde_json::Map<String, Value>, required: &[&str], optional: &[&str]) {
    for key in required {
        assert!(map.contains_key(*key), "missing {key:?} in {map:?}");
    }
    for key in map.keys() {
        assert!(
            required.contains(&key.as_str()) || optional.contains(&key.as_str()),
            "unexpected {key:?}"
        );
    }
}

fn assert_multiline(value: &Value) {
    match value {
        Value::String(_) => {}
        Value::Array(lines) => assert!(lines.iter().all(Value::is_string)),
        other => panic!("not a multiline string: {other}"),
    }
}

fn assert_count(value: &Value) {
    assert!(
        value.is_null() || value.is_u64(),
        "count {value} is not null or a non-negative integer"
    );
}

fn assert_bundle(value: &Value) {
    for (mime, data) in value.as_object().unwrap() {
        assert!(mime.contains('/'), "{mime:?} is not a MIME type");
        if !(mime == "application/json" || mime.ends_with("+json")) {
            assert_multiline(data);
        }
    }
}

/// `nbformat.validate` on `text`, when a Python with `nbformat` is available.
fn validate_with_nbformat(text: &str) {
    let candidates = std::env::var_os("AIRLOCK_TEST_NBFORMAT_PYTHON")
        .map(PathBuf::from)
        .into_iter()
        .chain(
            std::env::var_os("HOME")
                .map(|home| PathBuf::from(home).join(".local/share/airlock/python/bin/python")),
        );
    let python = candidates.into_iter().find(|python| {
        std::process::Command::new(python)
            .args(["-c", "import nbformat"])
            .output()
            .is_ok_and(|out| out.status.success())
    });
    let Some(python) = python else {
        println!(
            "note: nbformat.validate skipped: no Python with nbformat (set \
             AIRLOCK_TEST_NBFORMAT_PYTHON to one)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("exported.ipynb");
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(&python)
        .args([
            "-c",
            "import sys, nbformat\n\
             nb = nbformat.read(sys.argv[1], as_version=4)\n\
             nbformat.validate(nb)\n\
             ours = open(sys.argv[1]).read()\n\
             theirs = nbformat.writes(nb) + '\\n'\n\
             import difflib\n\
             assert ours == theirs, ''.join(list(difflib.unified_diff(ours.splitlines(True), theirs.splitlines(True)))[:80])\n\
             print('valid')",
        ])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nbformat.validate refused the export:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("nbformat.validate ({}): ok", python.display());
}
