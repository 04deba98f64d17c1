//! `GET /metrics`: the Prometheus text exposition format (version 0.0.4), written by hand.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters the server keeps.
#[derive(Debug, Default)]
pub struct Counters {
    /// Requests refused for a missing or wrong token.
    pub unauthorized: AtomicU64,
    /// Requests refused for their body (malformed, too large).
    pub bad_requests: AtomicU64,
    /// Requests that ran out of time.
    pub timeouts: AtomicU64,
}

/// One sample of everything `/metrics` shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub memory_total_bytes: u64,
    pub memory_free_bytes: u64,
    pub memory_reserved_bytes: u64,
    pub vms: usize,
    pub reservations: usize,
    pub unauthorized: u64,
    pub bad_requests: u64,
    pub timeouts: u64,
}

impl Counters {
    pub fn load(&self) -> (u64, u64, u64) {
        (
            self.unauthorized.load(Ordering::Relaxed),
            self.bad_requests.load(Ordering::Relaxed),
            self.timeouts.load(Ordering::Relaxed),
        )
    }
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
        };
        let text = render(&s);
        assert!(
            text.contains("\nlivemig_agent_memory_free_bytes 4\n"),
            "{text}"
        );
        let samples = text.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(samples, 8);
        assert_eq!(text.lines().filter(|l| l.starts_with("# TYPE")).count(), 8);
    }
}
