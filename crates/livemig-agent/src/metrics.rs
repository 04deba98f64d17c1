//! `GET /metrics`: the Prometheus text exposition format (version 0.0.4), written by hand.

use std::fmt::Write;

/// One sample of everything `/metrics` shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub memory_total_bytes: u64,
    pub memory_free_bytes: u64,
    pub memory_reserved_bytes: u64,
    pub vms: usize,
    pub reservations: usize,
    /// The guard's counters (`livemig_http::Counters`).
    pub unauthorized: u64,
    pub bad_requests: u64,
    pub timeouts: u64,
    /// The migrations this agent knows of.
    pub migrations: Vec<MigrationSample>,
    /// Light events for the RMS dropped because too many were queued.
    pub events_dropped: u64,
    /// Whether the RMS has this host registered.
    pub registered: bool,
}

/// One migration's numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct MigrationSample {
    pub id: u64,
    /// `source` or `destination`.
    pub role: &'static str,
    pub rounds: u32,
    /// Bytes sent (source) or received (destination).
    pub bytes: f64,
    pub cap_bytes_per_s: f64,
    pub avg_dirty_factor: f64,
    pub downtime_s: f64,
}

/// The exposition text.
pub fn render(s: &Sample) -> String {
    let rows: [(&str, &str, &str, u64); 8] = [
        (
            "livemig_agent_memory_total_bytes",
            "gauge",
            "Memory this host gives to VMs.",
            s.memory_total_bytes,
        ),
        (
            "livemig_agent_memory_free_bytes",
            "gauge",
            "Memory neither used by a VM nor reserved.",
            s.memory_free_bytes,
        ),
        (
            "livemig_agent_memory_reserved_bytes",
            "gauge",
            "Memory held by reservations.",
            s.memory_reserved_bytes,
        ),
        (
            "livemig_agent_vms",
            "gauge",
            "VMs this host runs.",
            s.vms as u64,
        ),
        (
            "livemig_agent_reservations",
            "gauge",
            "Live capacity reservations.",
            s.reservations as u64,
        ),
        (
            "livemig_agent_unauthorized_requests_total",
            "counter",
            "Requests refused for a missing or wrong token.",
            s.unauthorized,
        ),
        (
            "livemig_agent_bad_requests_total",
            "counter",
            "Requests refused with 400 or 413.",
            s.bad_requests,
        ),
        (
            "livemig_agent_request_timeouts_total",
            "counter",
            "Requests that ran out of time.",
            s.timeouts,
        ),
    ];
    let mut out = String::new();
    for (name, kind, help, value) in rows {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
    for (name, kind, help, value) in [
        (
            "livemig_agent_rms_events_dropped_total",
            "counter",
            "Progress events for the RMS dropped because too many were queued.",
            s.events_dropped,
        ),
        (
            "livemig_agent_rms_registered",
            "gauge",
            "1 when the RMS has this host registered.",
            u64::from(s.registered),
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
    type Field = fn(&MigrationSample) -> f64;
    let per_migration: [(&str, &str, Field); 5] = [
        (
            "livemig_agent_migration_rounds",
            "Pre-copy rounds ended (source) or received (destination).",
            |m| f64::from(m.rounds),
        ),
        (
            "livemig_agent_migration_bytes",
            "Memory bytes sent (source) or received (destination).",
            |m| m.bytes,
        ),
        (
            "livemig_agent_migration_cap_bytes_per_second",
            "The bandwidth cap in force.",
            |m| m.cap_bytes_per_s,
        ),
        (
            "livemig_agent_migration_avg_dirty_factor",
            "The policy's average dirty factor after the last round.",
            |m| m.avg_dirty_factor,
        ),
        (
            "livemig_agent_migration_downtime_seconds",
            "The guest's pause, once handed over.",
            |m| m.downtime_s,
        ),
    ];
    for (name, help, field) in per_migration {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for m in &s.migrations {
            let _ = writeln!(
                out,
                "{name}{{migration=\"{}\",role=\"{}\"}} {}",
                m.id,
                m.role,
                field(m)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_has_help_type_and_one_value() {
        let s = Sample {
            memory_total_bytes: 10,
            memory_free_bytes: 4,
            memory_reserved_bytes: 6,
            vms: 0,
            reservations: 1,
            unauthorized: 2,
            bad_requests: 0,
            timeouts: 0,
            migrations: vec![MigrationSample {
                id: 7,
                role: "source",
                rounds: 3,
                bytes: 1e6,
                cap_bytes_per_s: 5e5,
                avg_dirty_factor: 0.5,
                downtime_s: 0.1,
            }],
            events_dropped: 0,
            registered: true,
        };
        let text = render(&s);
        assert!(
            text.contains("\nlivemig_agent_migration_rounds{migration=\"7\",role=\"source\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("\nlivemig_agent_memory_free_bytes 4\n"),
            "{text}"
        );
        let samples = text.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(samples, 8 + 2 + 5);
        assert_eq!(
            text.lines().filter(|l| l.starts_with("# TYPE")).count(),
            8 + 2 + 5
        );
    }
}
