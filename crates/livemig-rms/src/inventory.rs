//! What the RMS knows of hosts and VMs: their records, the VM location table, and host
//! liveness (a host not heard from within its timeout is lost).

use serde::{Deserialize, Serialize};

use crate::api::{HostState, HostView, VmKind};

/// A host as the RMS records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Host {
    pub name: String,
    /// Where its agent listens.
    pub address: String,
    pub state: HostState,
    pub memory_total_bytes: u64,
    /// As last reported by its agent (reservations included).
    pub memory_free_bytes: u64,
    /// When the RMS last heard from it (seconds, the RMS's clock).
    pub last_heard: f64,
    /// How long it may stay silent before it is lost (seconds).
    pub timeout_s: f64,
    /// Drained by an operator: it takes no new VMs (its own VMs are migrated away).
    #[serde(default)]
    pub draining: bool,
}

impl Host {
    /// A host heard from at `now`.
    pub fn new(
        name: &str,
        address: &str,
        memory_total_bytes: u64,
        now: f64,
        timeout_s: f64,
    ) -> Host {
        Host {
            name: name.to_string(),
            address: address.to_string(),
            state: HostState::Alive,
            memory_total_bytes,
            memory_free_bytes: memory_total_bytes,
            last_heard: now,
            timeout_s,
            draining: false,
        }
    }

    /// Whether the RMS hears from it.
    pub fn is_alive(&self) -> bool {
        self.state == HostState::Alive
    }

    /// Whether it may receive VMs and reservations: alive and not drained.
    pub fn takes_vms(&self) -> bool {
        self.is_alive() && !self.draining
    }

    /// Whether an alive host has been silent past its timeout at `now`.
    pub fn lapsed(&self, now: f64) -> bool {
        self.is_alive() && now - self.last_heard > self.timeout_s
    }

    /// The API's shape, with the VMs the location table puts here.
    pub fn view(&self, vms: Vec<String>) -> HostView {
        HostView {
            name: self.name.clone(),
            address: self.address.clone(),
            state: self.state,
            memory_total_bytes: self.memory_total_bytes,
            memory_free_bytes: self.memory_free_bytes,
            draining: self.draining,
            vms,
        }
    }
}

/// A VM and where it runs: `host` is the location table's entry, changed only by a confirmed
/// hand-over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
pub struct Vm {
    pub name: String,
    pub memory_bytes: u64,
    pub workload: String,
    pub kind: VmKind,
    pub host: String,
}

/// The alive hosts silent past their timeout at `now`, by name.
pub fn lapsed<'a>(hosts: impl IntoIterator<Item = &'a Host>, now: f64) -> Vec<String> {
    hosts
        .into_iter()
        .filter(|h| h.lapsed(now))
        .map(|h| h.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_lapses_after_its_own_timeout() {
        let a = Host::new("a", "198.18.0.1:7000", 1 << 30, 10.0, 5.0);
        let b = Host::new("b", "198.18.0.2:7000", 1 << 30, 10.0, 20.0);
        assert!(!a.lapsed(15.0), "exactly at the timeout is still in time");
        assert!(a.lapsed(15.1));
        assert_eq!(lapsed([&a, &b], 16.0), vec!["a".to_string()]);
        let mut lost = a.clone();
        lost.state = HostState::Lost;
        assert!(!lost.lapsed(100.0), "a lost host is not lost again");
        assert_eq!(lapsed([&lost, &b], 31.0), vec!["b".to_string()]);
    }

    #[test]
    fn the_view_matches_the_api() {
        let a = Host::new("a", "198.18.0.1:7000", 1024, 0.0, 5.0);
        let json = serde_json::to_value(a.view(vec!["vm1".into()])).expect("serialises");
        assert_eq!(
            json,
            serde_json::json!({"name": "a", "address": "198.18.0.1:7000", "state": "alive",
                "memory_total_bytes": 1024, "memory_free_bytes": 1024, "draining": false,
                "vms": ["vm1"]})
        );
    }
}
