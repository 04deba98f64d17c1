//! `docs/grafana/livemig.json`, the Grafana dashboard of the RMS's and the agents' metrics:
//! it is JSON Grafana can import, and every metric it queries is one the services export
//! (a renamed metric breaks the dashboard silently otherwise).

use std::collections::BTreeSet;
use std::path::Path;

use livemig_agent::metrics::{MigrationSample, Sample};
use livemig_rms_server::actions::ActionCounters;
use livemig_rms_server::metrics::{render, Picture};

fn exported() -> BTreeSet<String> {
    let rms = render(
        &Picture {
            hosts_alive: 1,
            hosts_lost: 0,
            hosts_draining: 0,
            vms: 0,
            migrations: [("queued", 0), ("running", 1)].into_iter().collect(),
            budget_bytes_per_s: Some(1e8),
            granted_bytes_per_s: 0.0,
            uncapped: 0,
        },
        &ActionCounters::default(),
        &livemig_http::Counters::default(),
    );
    let agent = livemig_agent::metrics::render(&Sample {
        memory_total_bytes: 1,
        memory_free_bytes: 1,
        memory_reserved_bytes: 0,
        vms: 0,
        reservations: 0,
        unauthorized: 0,
        bad_requests: 0,
        timeouts: 0,
        migrations: vec![MigrationSample {
            id: 1,
            role: "source",
            rounds: 1,
            bytes: 1.0,
            cap_bytes_per_s: 1.0,
            avg_dirty_factor: 0.1,
            downtime_s: 0.0,
        }],
        events_dropped: 0,
        registered: true,
    });
    rms.lines()
        .chain(agent.lines())
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// Every `livemig_…` name in `text`.
fn queried(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("livemig_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        out.insert(name);
    }
    out
}

#[test]
fn the_dashboard_queries_only_exported_metrics() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/grafana/livemig.json");
    let text = std::fs::read_to_string(&path).expect("the dashboard is in docs/grafana");
    let v: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let panels = v["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8, "a dashboard with its panels");
    let mut exprs = String::new();
    for p in panels {
        for t in p["targets"].as_array().expect("every panel queries") {
            exprs.push_str(t["expr"].as_str().expect("a PromQL expression"));
            exprs.push('\n');
        }
    }
    let exported = exported();
    let queried = queried(&exprs);
    assert!(queried.contains("livemig_rms_budget_bytes_per_second"));
    assert!(queried.contains("livemig_rms_granted_bytes_per_second"));
    let missing: Vec<&String> = queried.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "not exported: {missing:?}\nexported: {exported:?}"
    );
}
