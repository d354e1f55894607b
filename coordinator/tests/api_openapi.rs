//! The OpenAPI document describes exactly the routes the API serves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use airlock_coordinator::api::{ErrorCode, OPENAPI, ROUTES};

#[test]
fn openapi_lists_exactly_the_served_routes() {
    let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
    assert_eq!(
        doc["openapi"].as_str().unwrap().split('.').next(),
        Some("3")
    );
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.insert((method.to_uppercase(), path.clone()));
            let operation = &item[method];
            assert!(
                operation["summary"].is_string(),
                "{method} {path} has a summary"
            );
            assert!(
                operation["responses"]
                    .as_object()
                    .is_some_and(|r| !r.is_empty()),
                "{method} {path} documents its responses"
            );
            // Every path parameter is declared.
            for segment in path.split('/').filter(|s| s.starts_with('{')) {
                let name = segment.trim_matches(|c| c == '{' || c == '}');
                let declared = operation["parameters"]
                    .as_array()
                    .is_some_and(|ps| ps.iter().any(|p| p["name"] == name && p["in"] == "path"));
                assert!(declared, "{method} {path} declares its {name} parameter");
            }
        }
    }
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(method, path, _)| (method.to_string(), path.to_string()))
        .collect();
    assert_eq!(documented, served);
    // Every schema reference resolves.
    let text = OPENAPI;
    for reference in text.split("\"$ref\": \"#/components/schemas/").skip(1) {
        let name = reference.split('"').next().unwrap();
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "schema {name} is defined"
        );
    }
}

#[test]
fn openapi_lists_exactly_the_error_codes() {
    let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
    let documented: Vec<&str> =
        doc["components"]["schemas"]["Error"]["properties"]["error"]["enum"]
            .as_array()
            .expect("the Error schema lists its codes")
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
    let served: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(documented, served);
}
