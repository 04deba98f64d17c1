//! The fleet drawn from a scenario: every VM's host, memory and workload class, and where each
//! draining VM goes.
//!
//! Placement follows the RMS's rule (`livemig_rms::placement::candidates`): the host with the
//! most free memory, ties by name, among those that do not drain; a VM that no such host can
//! hold fails. Every migration is submitted at t = 0 and the targets only receive, so placing
//! them at submission in queue order (by id) reserves what placing them at admission would,
//! up to which of two equal hosts each one gets; the allocator needs the target anyway, to
//! count the target's NIC.

use livemig_workload::sampler::SplitMix64;

use crate::scenario::DrainScenario;

/// One VM that migrates.
#[derive(Debug, Clone, PartialEq)]
pub struct DrainingVm {
    /// Its migration's id (0, 1, ... in the order of the draining hosts).
    pub id: u64,
    /// The host it leaves.
    pub source: usize,
    /// Where it goes; `None`: no host can hold it.
    pub target: Option<usize>,
    pub memory_bytes: f64,
    /// Index into the scenario's mix.
    pub class: usize,
}

/// The drawn fleet.
#[derive(Debug, Clone, PartialEq)]
pub struct Fleet {
    pub vms: Vec<DrainingVm>,
    /// Every host's free memory after the placement (bytes).
    pub free_bytes: Vec<f64>,
}

/// Why a fleet could not be drawn.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("host {host}'s {vms} VMs need {need} bytes, more than its {memory} bytes of memory")]
pub struct Overfull {
    pub host: String,
    pub vms: u32,
    pub need: f64,
    pub memory: f64,
}

/// Draws every VM (size and class, in host order, from the scenario's seed) and places the
/// draining ones.
pub fn draw(s: &DrainScenario) -> Result<Fleet, Overfull> {
    let mut rng = SplitMix64::new(s.seed);
    let total = s.mix.total().max(1);
    let sizes = s.vm_memory_bytes.len().max(1) as u64;
    let hosts = s.hosts as usize;
    let mut free = vec![s.host_memory_bytes; hosts];
    let mut vms = Vec::new();
    for (h, room) in free.iter_mut().enumerate() {
        let mut used = 0.0;
        for j in 0..s.vms_per_host as usize {
            let memory = s
                .vm_memory_bytes
                .get(rng.below(sizes) as usize)
                .copied()
                .unwrap_or(0.0);
            let class = if s.in_order {
                j % s.mix.entries.len().max(1)
            } else {
                s.mix.pick(rng.below(total))
            };
            used += memory;
            if h < s.drain as usize {
                vms.push(DrainingVm {
                    id: vms.len() as u64,
                    source: h,
                    target: None,
                    memory_bytes: memory,
                    class,
                });
            }
        }
        if used > *room {
            return Err(Overfull {
                host: DrainScenario::host_name(h),
                vms: s.vms_per_host,
                need: used,
                memory: *room,
            });
        }
        *room -= used;
    }
    for vm in &mut vms {
        // The most free memory first, ties by name (the lower index).
        let best = (s.drain as usize..hosts)
            .filter(|&h| free[h] >= vm.memory_bytes)
            .max_by(|&a, &b| free[a].total_cmp(&free[b]).then(b.cmp(&a)));
        if let Some(h) = best {
            free[h] -= vm.memory_bytes;
            vm.target = Some(h);
        }
    }
    Ok(Fleet {
        vms,
        free_bytes: free,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

    #[test]
    fn spreads_over_the_most_free_and_fails_what_does_not_fit() {
        let s = DrainScenario {
            hosts: 3,
            drain: 1,
            vms_per_host: 4,
            host_memory_bytes: 8.0 * GIB,
            vm_memory_bytes: vec![2.0 * GIB],
            ..DrainScenario::default()
        };
        let f = draw(&s).expect("fits");
        let targets: Vec<Option<usize>> = f.vms.iter().map(|v| v.target).collect();
        // Hosts 1 and 2 hold 8 GiB each with nothing free: every VM fails.
        assert_eq!(targets, [None; 4]);
        let s = DrainScenario {
            host_memory_bytes: 12.0 * GIB,
            ..s
        };
        let f = draw(&s).expect("fits");
        let targets: Vec<Option<usize>> = f.vms.iter().map(|v| v.target).collect();
        assert_eq!(targets, [Some(1), Some(2), Some(1), Some(2)]);
        // The draining host keeps its VMs' memory until they leave.
        assert_eq!(f.free_bytes, [4.0 * GIB, 0.0, 0.0]);
        assert_eq!(draw(&s), draw(&s), "deterministic");
        let crowded = DrainScenario {
            host_memory_bytes: 7.0 * GIB,
            ..s
        };
        assert!(draw(&crowded).is_err());
    }
}
