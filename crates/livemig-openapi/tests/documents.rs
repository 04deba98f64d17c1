//! The committed OpenAPI documents against the code: the same text, the same routes, every
//! reference resolved. `LIVEMIG_BLESS=1 cargo test -p livemig-openapi` rewrites them.

use std::collections::BTreeSet;
use std::path::PathBuf;

use livemig_openapi::{Op, AGENT, AGENT_FILE, RMS, RMS_FILE};
use serde_json::Value;

const REGENERATE: &str = "LIVEMIG_BLESS=1 cargo test -p livemig-openapi";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn documents() -> [(&'static str, Value); 2] {
    [
        (RMS_FILE, livemig_openapi::rms()),
        (AGENT_FILE, livemig_openapi::agent()),
    ]
}

#[test]
fn the_committed_documents_match_the_code() {
    let bless = std::env::var_os("LIVEMIG_BLESS").is_some_and(|v| v == "1");
    let mut stale = Vec::new();
    for (file, doc) in documents() {
        let path = root().join(file);
        let fresh = livemig_openapi::to_text(&doc);
        if bless {
            std::fs::write(&path, &fresh).expect("writes the document");
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(committed) if committed == fresh => {}
            Ok(committed) => {
                let n = committed.lines().count().max(fresh.lines().count());
                let (line, (old, new)) = committed
                    .lines()
                    .chain(std::iter::repeat("<end>"))
                    .zip(fresh.lines().chain(std::iter::repeat("<end>")))
                    .take(n)
                    .enumerate()
                    .find(|(_, (a, b))| a != b)
                    .unwrap_or((n, ("(line endings)", "(line endings)")));
                stale.push(format!(
                    "{file} differs from what the code generates, first at line {}:\n  \
                     committed: {}\n  generated: {}",
                    line + 1,
                    old.trim(),
                    new.trim()
                ));
            }
            Err(e) => stale.push(format!("{file} cannot be read: {e}")),
        }
    }
    assert!(
        stale.is_empty(),
        "{}\nRegenerate with `{REGENERATE}`, review the diff and commit it.",
        stale.join("\n")
    );
}

fn table(ops: &[Op]) -> BTreeSet<(String, String)> {
    let mut set = BTreeSet::new();
    for op in ops {
        assert!(
            set.insert((op.method.to_string(), op.path.to_string())),
            "{} {} is in the table twice",
            op.method,
            op.path
        );
    }
    set
}

fn served(routes: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    routes
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .chain([("GET".to_string(), livemig_http::guard::HEALTHZ.to_string())])
        .collect()
}

fn same_routes(name: &str, ops: &[Op], routes: &[(&str, &str)]) {
    let documented = table(ops);
    let served = served(routes);
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty() && unserved.is_empty(),
        "{name}: served but not in livemig-openapi's table: {undocumented:?}; in the table but \
         not served: {unserved:?}. Update the table in crates/livemig-openapi/src/lib.rs, then \
         `{REGENERATE}`."
    );
}

#[test]
fn the_tables_list_exactly_the_routes_the_routers_serve() {
    let rms: Vec<_> = livemig_rms_server::routes::ROUTES
        .iter()
        .chain(livemig_rms_server::routes::OPEN_ROUTES)
        .copied()
        .collect();
    same_routes("RMS", RMS, &rms);
    same_routes("agent", AGENT, livemig_agent::routes::ROUTES);
}

/// Every `$ref` in `v`, with where it is.
fn refs<'a>(v: &'a Value, at: String, out: &mut Vec<(String, &'a str)>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                if k == "$ref" {
                    if let Value::String(s) = x {
                        out.push((at.clone(), s));
                        continue;
                    }
                }
                refs(x, format!("{at}/{k}"), out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                refs(x, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn every_reference_resolves() {
    for (file, doc) in documents() {
        let mut found = Vec::new();
        refs(&doc, String::new(), &mut found);
        assert!(!found.is_empty(), "{file}: no references at all");
        for (at, r) in found {
            let pointer = r
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("{file}{at}: `{r}` is not local"));
            assert!(
                doc.pointer(pointer).is_some(),
                "{file}{at}: `{r}` resolves to nothing"
            );
        }
    }
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer}"))
}

/// The structure OpenAPI 3.1 requires of what these documents use (no validator crate: the
/// fields below are the ones the specification makes mandatory or constrains).
#[test]
fn the_documents_have_the_shape_of_openapi_3_1() {
    for (file, doc) in documents() {
        assert_eq!(str_at(&doc, "/openapi"), "3.1.0", "{file}");
        assert!(!str_at(&doc, "/info/title").is_empty(), "{file}");
        assert!(!str_at(&doc, "/info/version").is_empty(), "{file}");
        let schemes = doc["components"]["securitySchemes"]
            .as_object()
            .expect("security schemes");
        let mut ids = BTreeSet::new();
        let paths = doc["paths"].as_object().expect("paths");
        for (path, item) in paths {
            assert!(path.starts_with('/'), "{file}: path `{path}`");
            for (method, op) in item.as_object().expect("a path item") {
                let here = format!("{file}: {method} {path}");
                assert!(
                    ["get", "put", "post", "delete", "patch", "head", "options", "trace"]
                        .contains(&method.as_str()),
                    "{here}: not a method"
                );
                assert!(
                    ids.insert(op["operationId"].as_str().expect("operationId")),
                    "{here}: operationId used twice"
                );
                let responses = op["responses"].as_object().expect("responses");
                assert!(!responses.is_empty(), "{here}: no responses");
                for (status, r) in responses {
                    assert!(
                        status.len() == 3 && status.parse::<u16>().is_ok(),
                        "{here}: status `{status}`"
                    );
                    assert!(r["description"].is_string(), "{here} {status}: description");
                }
                let declared: BTreeSet<&str> = op["parameters"]
                    .as_array()
                    .map(|ps| {
                        ps.iter()
                            .inspect(|p| {
                                assert!(p["in"] == "path" || p["in"] == "query", "{here}");
                                assert_eq!(
                                    p["required"],
                                    p["in"] == "path",
                                    "{here}: path parameters are required, query ones not"
                                );
                                assert!(p["schema"].is_object(), "{here}: parameter schema");
                            })
                            .filter(|p| p["in"] == "path")
                            .map(|p| p["name"].as_str().expect("a parameter's name"))
                            .collect()
                    })
                    .unwrap_or_default();
                let templated: BTreeSet<&str> = path
                    .split('/')
                    .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
                    .collect();
                assert_eq!(declared, templated, "{here}: path parameters");
                let security = op.get("security").unwrap_or(&doc["security"]);
                for requirement in security.as_array().expect("security") {
                    for scheme in requirement.as_object().expect("a requirement").keys() {
                        assert!(schemes.contains_key(scheme), "{here}: scheme `{scheme}`");
                    }
                }
            }
        }
        let schemas = doc["components"]["schemas"].as_object().expect("schemas");
        for name in schemas.keys() {
            // schemars numbers a second type of the same name (`VmKind2`): name it apart.
            let base = name.trim_end_matches(|c: char| c.is_ascii_digit());
            assert!(
                base == name || !schemas.contains_key(base),
                "{file}: two types are named `{base}`: give one a `schemars(rename)`"
            );
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-_".contains(&b)),
                "{file}: component name `{name}`"
            );
        }
    }
}

/// The schemas follow the serde attributes: refused unknown fields, optional fields, tagged
/// and renamed enums.
#[test]
fn the_schemas_follow_the_serde_attributes() {
    let rms = livemig_openapi::rms();
    let s = |name: &str| rms["components"]["schemas"][name].clone();

    let register = s("Register");
    assert_eq!(
        register["additionalProperties"], false,
        "deny_unknown_fields"
    );
    let required: BTreeSet<&str> = register["required"]
        .as_array()
        .expect("required")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for field in ["name", "address", "data_host", "memory_total_bytes"] {
        assert!(required.contains(field), "{field} is required");
    }
    for field in ["timeout_s", "vms", "csr_pem"] {
        assert!(!required.contains(field), "{field} is optional");
    }

    let state = s("MigrationState");
    let names: Vec<&str> = state["oneOf"]
        .as_array()
        .expect("one name per state")
        .iter()
        .filter_map(|v| v["const"].as_str())
        .collect();
    assert!(names.contains(&"switching_over"), "snake_case: {names:?}");

    let event = s("Event").to_string();
    assert!(event.contains("\"round_started\""), "tagged by `event`");
    assert!(rms["paths"]["/healthz"]["get"]["security"] == serde_json::json!([]));
    for path in ["/", "/assets/dashboard.js", "/assets/dashboard.css"] {
        let op = &rms["paths"][path]["get"];
        assert!(op["security"] == serde_json::json!([]), "{path} is open");
        assert!(
            op["responses"].get("401").is_none(),
            "{path} wants no token"
        );
    }
    assert!(rms["paths"]["/api/v1/hosts"]["get"]
        .get("security")
        .is_none());
}
