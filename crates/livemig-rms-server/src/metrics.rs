//! `GET /metrics`: the Prometheus text exposition format (version 0.0.4), written by hand.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::Ordering;

use livemig_http::Counters;

use crate::actions::ActionCounters;

/// The orchestrator's picture at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct Picture {
    pub hosts_alive: u64,
    pub hosts_lost: u64,
    pub vms: u64,
    /// Migrations by state name (every state present).
    pub migrations: BTreeMap<&'static str, u64>,
    pub hosts_draining: u64,
    /// The shared budget (bytes/s), when the RMS has one.
    pub budget_bytes_per_s: Option<f64>,
    /// What the running migrations are granted together (bytes/s).
    pub granted_bytes_per_s: f64,
    /// Running migrations without a cap.
    pub uncapped: u64,
}

/// The exposition text.
pub fn render(p: &Picture, a: &ActionCounters, c: &Counters) -> String {
    let mut s = String::new();
    let mut gauge = |name: &str, help: &str, kind: &str, rows: &[(String, u64)]| {
        let _ = writeln!(s, "# HELP livemig_rms_{name} {help}");
        let _ = writeln!(s, "# TYPE livemig_rms_{name} {kind}");
        for (labels, v) in rows {
            let _ = writeln!(s, "livemig_rms_{name}{labels} {v}");
        }
    };
    gauge(
        "hosts",
        "Hosts by liveness.",
        "gauge",
        &[
            ("{state=\"alive\"}".into(), p.hosts_alive),
            ("{state=\"lost\"}".into(), p.hosts_lost),
        ],
    );
    gauge(
        "hosts_draining",
        "Hosts drained by an operator (they take no new VMs).",
        "gauge",
        &[(String::new(), p.hosts_draining)],
    );
    if let Some(b) = p.budget_bytes_per_s {
        gauge(
            "budget_bytes_per_second",
            "The shared migration budget.",
            "gauge",
            &[(String::new(), b.round() as u64)],
        );
    }
    gauge(
        "granted_bytes_per_second",
        "What the running migrations are granted together.",
        "gauge",
        &[(String::new(), p.granted_bytes_per_s.round() as u64)],
    );
    gauge(
        "uncapped_migrations",
        "Running migrations without a grant (no cap).",
        "gauge",
        &[(String::new(), p.uncapped)],
    );
    gauge(
        "vms",
        "VMs in the location table.",
        "gauge",
        &[(String::new(), p.vms)],
    );
    let rows: Vec<(String, u64)> = p
        .migrations
        .iter()
        .map(|(k, v)| (format!("{{state=\"{k}\"}}"), *v))
        .collect();
    gauge("migrations", "Migrations by state.", "gauge", &rows);
    let load = |x: &std::sync::atomic::AtomicU64| x.load(Ordering::Relaxed);
    for (name, help, v) in [
        (
            "capacity_asks_total",
            "Capacity questions sent to agents.",
            load(&a.asks),
        ),
        (
            "migration_starts_total",
            "Migrations started on agents.",
            load(&a.starts),
        ),
        (
            "migration_start_failures_total",
            "Starts an agent refused or did not confirm.",
            load(&a.start_failures),
        ),
        (
            "cancels_total",
            "Cancels sent to sources.",
            load(&a.cancels),
        ),
        (
            "releases_total",
            "Reservations released.",
            load(&a.releases),
        ),
        (
            "flags_total",
            "Migrations raised to an operator.",
            load(&a.flags),
        ),
        (
            "agent_errors_total",
            "Agent calls without a usable answer.",
            load(&a.agent_errors),
        ),
        (
            "samples_total",
            "Dirty samples asked of sources (budget admission).",
            load(&a.samples),
        ),
        (
            "grants_total",
            "Grants sent to sources.",
            load(&a.grants),
        ),
        (
            "location_conflicts_total",
            "Registrations of a VM the RMS places on another host (two hosts may run it: an operator must look).",
            load(&a.location_conflicts),
        ),
    ] {
        gauge(name, help, "counter", &[(String::new(), v)]);
    }
    let (unauthorized, bad, timeouts) = c.load();
    gauge(
        "unauthorized_total",
        "Requests refused for their token.",
        "counter",
        &[(String::new(), unauthorized)],
    );
    gauge(
        "bad_requests_total",
        "Requests refused for their body.",
        "counter",
        &[(String::new(), bad)],
    );
    gauge(
        "request_timeouts_total",
        "Requests that ran out of time.",
        "counter",
        &[(String::new(), timeouts)],
    );
    s
}
