//! The input of a drain: the fleet (hosts, their memory and NICs, the VMs on them), the
//! network (the migration budget U and the uplink's physical capacity), which hosts drain,
//! the policy and its N and h, and the seed that draws the VMs.

use livemig_policy::{PolicyConfig, PolicyKind};
use serde::{Deserialize, Serialize};

use crate::mix::Mix;

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
const MIB: f64 = 1024.0 * 1024.0;

/// The uplink's physical capacity, unless given, as a multiple of the budget: the budget is
/// what the operator lets migrations use, the link carries more (other traffic's share).
pub const UPLINK_OVER_BUDGET: f64 = 1.25;
/// The most hosts a scenario may have.
pub const MAX_HOSTS: u32 = 10_000;
/// The most VMs a scenario may have in all.
pub const MAX_VMS: u64 = 200_000;

/// A drain to simulate. Hosts `host-000`, `host-001`, ... each run `vms_per_host` VMs; the
/// first `drain` hosts are emptied onto the others.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrainScenario {
    /// Hosts in the fleet (> `drain`).
    pub hosts: u32,
    /// How many hosts drain (the first ones); every VM on them migrates.
    pub drain: u32,
    /// VMs each host runs at the start.
    pub vms_per_host: u32,
    /// Every host's memory (bytes).
    pub host_memory_bytes: f64,
    /// The VM sizes a VM's memory is drawn from, uniformly (bytes).
    pub vm_memory_bytes: Vec<f64>,
    /// The workload classes VMs are drawn from.
    pub mix: Mix,
    /// Every host's NIC (bytes/s): a physical limit, and the budget's per-host limit.
    pub nic_bytes_per_s: f64,
    /// U: the shared uplink's budget for migration traffic (bytes/s).
    pub budget_bytes_per_s: f64,
    /// The uplink's physical capacity (bytes/s); `None`: [`UPLINK_OVER_BUDGET`] x U.
    pub uplink_bytes_per_s: Option<f64>,
    /// Every migration's policy.
    pub policy: PolicyKind,
    /// N.
    pub rounds: u32,
    /// h (bytes).
    pub stop_bytes: f64,
    /// Seed of the draws (sizes, classes, measurement noise).
    pub seed: u64,
    /// A host's j-th VM is of the mix's class j (mod the classes) instead of a drawn one.
    #[serde(default)]
    pub in_order: bool,
}

impl Default for DrainScenario {
    fn default() -> Self {
        let cfg = PolicyConfig::default();
        DrainScenario {
            hosts: 40,
            drain: 20,
            vms_per_host: 50,
            host_memory_bytes: 512.0 * GIB,
            vm_memory_bytes: vec![4.0 * GIB],
            mix: Mix::default(),
            nic_bytes_per_s: 25e9 / 8.0,
            budget_bytes_per_s: 10e9 / 8.0,
            uplink_bytes_per_s: None,
            policy: PolicyKind::DirtyFactor,
            rounds: cfg.max_rounds,
            stop_bytes: cfg.stop_remaining,
            seed: 1,
            in_order: false,
        }
    }
}

/// Why a scenario was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScenarioError {
    #[error("the fleet needs at least 2 hosts and at most {MAX_HOSTS}, got {0}")]
    Hosts(u32),
    #[error("{drain} hosts drain out of {hosts}: at least 1 must drain and 1 must stay")]
    Drain { drain: u32, hosts: u32 },
    #[error("{0} VMs per host: at least 1")]
    NoVms(u32),
    #[error("{hosts} hosts x {per_host} VMs is more than {MAX_VMS} VMs")]
    TooManyVms { hosts: u32, per_host: u32 },
    #[error("{field} must be a positive finite number, got {value}")]
    NotPositive { field: &'static str, value: f64 },
    #[error("no VM size given")]
    NoSizes,
    #[error("a VM of {vm} bytes is larger than a host ({host} bytes)")]
    VmLargerThanHost { vm: f64, host: f64 },
    #[error("N (rounds) must be from 1 to 1000, got {0}")]
    Rounds(u32),
    #[error("the uplink's capacity ({link} bytes/s) is below the budget ({budget} bytes/s)")]
    LinkBelowBudget { link: f64, budget: f64 },
}

impl DrainScenario {
    /// The uplink's physical capacity.
    pub fn uplink(&self) -> f64 {
        self.uplink_bytes_per_s
            .unwrap_or(self.budget_bytes_per_s * UPLINK_OVER_BUDGET)
    }

    /// How many VMs migrate.
    pub fn migrations(&self) -> u64 {
        u64::from(self.drain) * u64::from(self.vms_per_host)
    }

    /// The name of host `i`.
    pub fn host_name(i: usize) -> String {
        format!("host-{i:03}")
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        if !(2..=MAX_HOSTS).contains(&self.hosts) {
            return Err(ScenarioError::Hosts(self.hosts));
        }
        if self.drain == 0 || self.drain >= self.hosts {
            return Err(ScenarioError::Drain {
                drain: self.drain,
                hosts: self.hosts,
            });
        }
        if self.vms_per_host == 0 {
            return Err(ScenarioError::NoVms(0));
        }
        if u64::from(self.hosts) * u64::from(self.vms_per_host) > MAX_VMS {
            return Err(ScenarioError::TooManyVms {
                hosts: self.hosts,
                per_host: self.vms_per_host,
            });
        }
        let positive = |field: &'static str, value: f64, max: f64| {
            if value.is_finite() && value > 0.0 && value <= max {
                Ok(())
            } else {
                Err(ScenarioError::NotPositive { field, value })
            }
        };
        let max_rate = livemig_policy::MAX_RATE_BYTES_PER_S;
        let max_mem = livemig_policy::MAX_MEMORY_BYTES;
        positive("the host memory", self.host_memory_bytes, max_mem)?;
        positive("the NIC rate", self.nic_bytes_per_s, max_rate)?;
        positive("the budget", self.budget_bytes_per_s, max_rate)?;
        positive("the uplink's capacity", self.uplink(), max_rate)?;
        positive("h", self.stop_bytes, max_mem)?;
        if self.vm_memory_bytes.is_empty() {
            return Err(ScenarioError::NoSizes);
        }
        for &m in &self.vm_memory_bytes {
            positive("a VM's memory", m, max_mem)?;
            if m < MIB {
                return Err(ScenarioError::NotPositive {
                    field: "a VM's memory (at least 1 MiB)",
                    value: m,
                });
            }
            if m > self.host_memory_bytes {
                return Err(ScenarioError::VmLargerThanHost {
                    vm: m,
                    host: self.host_memory_bytes,
                });
            }
        }
        if !(1..=1000).contains(&self.rounds) {
            return Err(ScenarioError::Rounds(self.rounds));
        }
        if self.uplink() < self.budget_bytes_per_s {
            return Err(ScenarioError::LinkBelowBudget {
                link: self.uplink(),
                budget: self.budget_bytes_per_s,
            });
        }
        Ok(())
    }
}
