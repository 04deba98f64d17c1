//! Which hosts to ask, in which order: with a requested target only it; otherwise every alive
//! host that takes VMs (not drained) but the source, the most free memory first (ties by name, so the order is stable).

use crate::inventory::Host;

/// The hosts to ask for a VM on `source`, best first. A requested target is asked alone (and
/// not at all when it is lost or is the source).
pub fn candidates<'a>(
    hosts: impl IntoIterator<Item = &'a Host>,
    source: &str,
    requested: Option<&str>,
) -> Vec<String> {
    let mut alive: Vec<&Host> = hosts
        .into_iter()
        .filter(|h| h.takes_vms() && h.name != source)
        .filter(|h| requested.is_none_or(|t| h.name == t))
        .collect();
    alive.sort_by(|a, b| {
        b.memory_free_bytes
            .cmp(&a.memory_free_bytes)
            .then_with(|| a.name.cmp(&b.name))
    });
    alive.into_iter().map(|h| h.name.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::HostState;

    fn host(name: &str, free: u64) -> Host {
        let mut h = Host::new(name, "198.18.0.1:7000", 1 << 40, 0.0, 5.0);
        h.memory_free_bytes = free;
        h
    }

    #[test]
    fn ranks_by_free_memory_without_the_source_or_the_lost() {
        let mut lost = host("d", 900);
        lost.state = HostState::Lost;
        let hosts = [
            host("a", 100),
            host("b", 300),
            host("c", 300),
            lost,
            host("src", 1000),
        ];
        assert_eq!(candidates(&hosts, "src", None), ["b", "c", "a"]);
    }

    #[test]
    fn a_requested_target_is_asked_alone() {
        let mut lost = host("d", 900);
        lost.state = HostState::Lost;
        let hosts = [host("a", 100), host("b", 300), lost];
        assert_eq!(candidates(&hosts, "b", Some("a")), ["a"]);
        assert!(candidates(&hosts, "b", Some("d")).is_empty(), "lost");
        assert!(candidates(&hosts, "b", Some("b")).is_empty(), "the source");
        assert!(candidates(&hosts, "b", Some("zz")).is_empty(), "unknown");
    }
}
