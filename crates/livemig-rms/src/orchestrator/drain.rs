//! Evacuating a host: it takes no new VMs, and every VM it runs is submitted for migration
//! (placed by capacity, admitted and granted by the budget like any other). A drain's
//! progress is read from the picture (`drain_progress`), not stored apart.

use serde::{Deserialize, Serialize};

use super::{Effect, Orchestrator, OrchestratorError};
use crate::api::MigrationRequest;
use crate::migration::{MigrationId, MigrationState};

/// `GET /api/v1/hosts/{name}/drain`: how far a drain is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
pub struct DrainProgress {
    pub host: String,
    pub draining: bool,
    /// VMs the location table still puts on the host.
    pub vms_left: usize,
    /// Of those, how many a migration is moving or waits to move.
    pub migrating: usize,
    pub queued: usize,
    /// VMs of the host whose last migration failed or was cancelled (they stay; drain again
    /// to retry).
    pub stuck: Vec<String>,
    /// What the host's migrations still have to send: the round under way's bytes for a
    /// running one, the whole memory for one not started (bytes).
    pub bytes_left: f64,
    /// What those migrations are granted together (bytes/s; uncapped ones count 0).
    pub granted_bytes_per_s: f64,
    /// `bytes_left` over the grants, when there are grants: a lower bound, since pre-copy
    /// re-sends what the guests dirty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_s: Option<f64>,
    /// The host is drained and empty.
    pub done: bool,
}

impl Orchestrator {
    /// Marks `host` drained and submits a migration for each of its VMs that no migration
    /// holds yet; returns their ids.
    pub(super) fn drain(
        &mut self,
        host: &str,
        effects: &mut Vec<Effect>,
    ) -> Result<Vec<MigrationId>, OrchestratorError> {
        // Checked before anything changes: a refused input changes nothing.
        match self.hosts.get(host) {
            None => return Err(OrchestratorError::UnknownHost(host.to_string())),
            Some(h) if !h.is_alive() => {
                return Err(OrchestratorError::HostLost {
                    host: host.to_string(),
                })
            }
            Some(_) => {}
        }
        let policy = &self.config.default_policy;
        if policy.parse::<livemig_policy::PolicyKind>().is_err() {
            return Err(OrchestratorError::UnknownPolicy(policy.clone()));
        }
        if let Some(h) = self.hosts.get_mut(host) {
            if !h.draining {
                h.draining = true;
                self.save_host(host, effects);
            }
        }
        let vms: Vec<String> = self
            .vms
            .values()
            .filter(|v| v.host == host && self.holding(&v.name).is_none())
            .map(|v| v.name.clone())
            .collect();
        let mut ids = Vec::new();
        for vm in vms {
            let req = MigrationRequest {
                vm,
                target: None,
                policy: None,
                settings: None,
                priority: None,
            };
            // The VM exists on an alive host, is free and the policy is known: submit cannot
            // refuse it (checked above).
            if let Ok(id) = self.submit(req, effects) {
                self.ask_sample(id, effects);
                ids.push(id);
            }
        }
        Ok(ids)
    }

    /// Submits `vm`'s migration when `host`, where it runs, is drained and alive.
    pub(super) fn evacuate_if_drained(&mut self, vm: &str, host: &str, effects: &mut Vec<Effect>) {
        if !self
            .hosts
            .get(host)
            .is_some_and(|h| h.draining && h.is_alive())
        {
            return;
        }
        let req = MigrationRequest {
            vm: vm.to_string(),
            target: None,
            policy: None,
            settings: None,
            priority: None,
        };
        if let Ok(id) = self.submit(req, effects) {
            self.ask_sample(id, effects);
        }
    }

    /// `host` takes VMs again.
    pub(super) fn undrain(
        &mut self,
        host: &str,
        effects: &mut Vec<Effect>,
    ) -> Result<(), OrchestratorError> {
        let h = self
            .hosts
            .get_mut(host)
            .ok_or_else(|| OrchestratorError::UnknownHost(host.to_string()))?;
        if h.draining {
            h.draining = false;
            self.save_host(host, effects);
        }
        Ok(())
    }

    /// How far `host`'s drain is (`None`: no such host).
    pub fn drain_progress(&self, host: &str) -> Option<DrainProgress> {
        let h = self.hosts.get(host)?;
        let mut p = DrainProgress {
            host: host.to_string(),
            draining: h.draining,
            vms_left: 0,
            migrating: 0,
            queued: 0,
            stuck: Vec::new(),
            bytes_left: 0.0,
            granted_bytes_per_s: 0.0,
            eta_s: None,
            done: false,
        };
        for v in self.vms.values().filter(|v| v.host == host) {
            p.vms_left += 1;
            match self.holding(&v.name) {
                Some(m) if m.state == MigrationState::Queued => {
                    p.queued += 1;
                    p.bytes_left += v.memory_bytes as f64;
                }
                Some(m) if m.state.is_active() => {
                    p.migrating += 1;
                    p.bytes_left += m.budget.remaining_bytes.unwrap_or(v.memory_bytes as f64);
                    p.granted_bytes_per_s += m.budget.grant_bytes_per_s.unwrap_or(0.0);
                }
                Some(_) => p.migrating += 1,
                None => p.stuck.push(v.name.clone()),
            }
        }
        if p.granted_bytes_per_s > 0.0 {
            p.eta_s = Some(p.bytes_left / p.granted_bytes_per_s);
        }
        p.done = h.draining && p.vms_left == 0;
        Some(p)
    }
}
