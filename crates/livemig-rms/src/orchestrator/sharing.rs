//! The shared budget in the orchestrator: a queued migration's dirty sample, the plan after
//! every input (who starts, what each running migration is granted, why the others wait),
//! and the grants sent to the sources. Without a budget in [`Config`], `max_active` slots
//! decide alone (the behaviour before the budget). `docs/budget.md` says why.

use livemig_policy::report::RoundRecord;
use livemig_policy::stats::DirtySample;
use livemig_policy::{PolicyConfig, PolicySpec};
use serde::{Deserialize, Serialize};

use super::{Config, Effect, Orchestrator, OrchestratorError};
use crate::budget::{self, Budget, Demand, Scheme};
use crate::migration::{Estimate, Migration, MigrationId, MigrationState, QueueSpot};
use crate::placement;

/// The RMS's shared budget: the network's capacity for migrations and how it is shared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetConfig {
    pub budget: Budget,
    pub scheme: Scheme,
    /// How long a source samples a queued VM's dirtying before it is admitted (seconds;
    /// `budget` only: the baselines do not predict).
    pub sample_s: f64,
}

impl BudgetConfig {
    /// `scheme` over `budget`, with a one-second sample.
    pub fn new(budget: Budget, scheme: Scheme) -> BudgetConfig {
        BudgetConfig {
            budget,
            scheme,
            sample_s: 1.0,
        }
    }

    /// Whether admission waits for a dirty sample.
    pub fn samples(&self) -> bool {
        matches!(self.scheme, Scheme::Budget { .. })
    }
}

/// The most points of a sample the RMS reads (an agent's answer is not trusted to be short).
pub const MAX_SAMPLE_POINTS: usize = 64;

/// A grant that rises is re-sent only when it rises by more than this fraction; one that
/// falls is always sent (the sum of the grants in force must stay within the budget).
const GRANT_RISE: f64 = 0.01;

/// The budget's state as `GET /api/v1/budget` shows it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
pub struct BudgetView {
    /// `budget`, `sequential`, `fixed-slots`, `unlimited`; `slots` without a budget.
    pub scheme: String,
    /// The shared uplink's budget (bytes/s); `None` without a budget.
    pub uplink_bytes_per_s: Option<f64>,
    /// The sum of the grants of the running migrations (bytes/s); uncapped ones count 0.
    pub granted_bytes_per_s: f64,
    /// Running migrations without a cap (the `sequential` and `unlimited` baselines).
    pub uncapped: usize,
    pub running: Vec<GrantView>,
    pub waiting: usize,
    /// Limits the running minimums alone exceed.
    pub overcommitted: Vec<String>,
    /// Why the last plan could not be made (nothing new started then), if it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One running migration's grant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
pub struct GrantView {
    pub id: MigrationId,
    pub vm: String,
    pub source: String,
    pub target: Option<String>,
    pub grant_bytes_per_s: Option<f64>,
    pub minimum_bytes_per_s: Option<f64>,
}

/// The policy's bounds for a guest of `memory` bytes, as the source's agent resolves them
/// (a small guest stops at an eighth of its memory, as in the agent); the defaults when the
/// settings do not resolve (the agent refuses those: the migration fails there).
pub fn policy_bounds(settings: Option<&PolicySpec>, memory: u64) -> PolicyConfig {
    let spec = settings.cloned().unwrap_or_default().for_guest(memory);
    spec.resolve(memory as f64)
        .unwrap_or_else(|_| PolicyConfig {
            memory_bytes: memory as f64,
            ..PolicyConfig::default()
        })
}

/// The estimate from a source's sample: the steepest line through a point, and the
/// predictive fit (at most [`MAX_SAMPLE_POINTS`] points are read).
pub fn estimate_from(sample: &DirtySample, memory: u64) -> Estimate {
    // An agent's numbers are not trusted: a point outside a sample's possible range (longer
    // than the longest sample, more dirty than the guest has memory, shorter than a
    // millisecond) is dropped, and the fit is kept only if every number of it is finite (an
    // infinity could not even be written to the store).
    let memory_f = memory as f64;
    let sample = DirtySample {
        points: sample
            .points
            .iter()
            .take(MAX_SAMPLE_POINTS)
            .copied()
            .filter(|&(t, d)| (1e-3..=MAX_SAMPLE_S).contains(&t) && (0.0..=memory_f).contains(&d))
            .collect(),
        resolution_bytes_per_s: None,
    };
    let (rate, growth) = budget::from_sample(&sample, memory_f);
    Estimate {
        dirty_rate_bytes_per_s: if rate.is_finite() { rate } else { 0.0 },
        growth: growth.filter(sane),
        source: "sample".into(),
    }
}

/// The longest sample an agent takes (seconds), with a margin for QEMU's whole seconds.
const MAX_SAMPLE_S: f64 = 20.0;

/// Every number of a growth fit is finite and none is negative.
fn sane(g: &livemig_policy::predictive::growth::Growth) -> bool {
    [
        g.working_set_bytes,
        g.tau_s,
        g.linear_bytes_per_s,
        g.exponent,
        g.memory_bytes,
        g.residual,
    ]
    .iter()
    .all(|x| x.is_finite() && *x >= 0.0)
}

/// The estimate raised by a finished round: P = the steepest of the sample's and the
/// rounds' `D_k / t_k` (a round's own dirtying is what the next rounds will see).
fn refine(estimate: Option<&Estimate>, record: &RoundRecord) -> Option<Estimate> {
    let r = record.dirty_bytes / record.duration_s;
    if !(r.is_finite() && r >= 0.0 && record.duration_s > 0.0) {
        return None;
    }
    let mut e = estimate.cloned().unwrap_or(Estimate {
        dirty_rate_bytes_per_s: 0.0,
        growth: None,
        source: "rounds".into(),
    });
    if r > e.dirty_rate_bytes_per_s {
        e.dirty_rate_bytes_per_s = r;
        e.source = "rounds".into();
        // The fit came from the sample alone; a round that dirties faster than it says
        // makes it wrong: the line takes over.
        e.growth = None;
    }
    Some(e)
}

impl Orchestrator {
    /// `GET /api/v1/budget`.
    pub fn budget_view(&self) -> BudgetView {
        let Some(bc) = &self.config.budget else {
            return BudgetView {
                scheme: "slots".into(),
                ..BudgetView::default()
            };
        };
        let running: Vec<GrantView> = self
            .migrations
            .values()
            .filter(|m| m.state.is_active())
            .map(|m| GrantView {
                id: m.id,
                vm: m.vm.clone(),
                source: m.source.clone(),
                target: m.target.clone(),
                grant_bytes_per_s: m.budget.grant_bytes_per_s,
                minimum_bytes_per_s: m.budget.minimum_bytes_per_s,
            })
            .collect();
        let plan = self.last_plan.as_ref();
        BudgetView {
            scheme: scheme_name(&bc.scheme).into(),
            uplink_bytes_per_s: Some(bc.budget.uplink_bytes_per_s),
            granted_bytes_per_s: running.iter().filter_map(|g| g.grant_bytes_per_s).sum(),
            uncapped: running
                .iter()
                .filter(|g| g.grant_bytes_per_s.is_none())
                .count(),
            running,
            waiting: self
                .migrations
                .values()
                .filter(|m| m.state == MigrationState::Queued)
                .count(),
            overcommitted: plan
                .map(|p| p.overcommitted.iter().map(|c| c.to_string()).collect())
                .unwrap_or_default(),
            error: self.plan_error.clone(),
        }
    }

    /// A newly queued migration: under the budget its source samples the VM first.
    pub(super) fn ask_sample(&mut self, id: MigrationId, effects: &mut Vec<Effect>) {
        let Some(bc) = &self.config.budget else {
            return;
        };
        if !bc.samples() {
            return;
        }
        let seconds = bc.sample_s;
        let now = self.now;
        let Some(m) = self.migrations.get_mut(&id) else {
            return;
        };
        m.budget.sample_asked_at = Some(now);
        let (host, vm) = (m.source.clone(), m.vm.clone());
        self.save(id, effects);
        effects.push(Effect::Sample {
            migration: id,
            host,
            vm,
            seconds,
        });
    }

    /// The source's sample arrived (or could not be taken: `error`).
    pub(super) fn sampled(
        &mut self,
        id: MigrationId,
        host: &str,
        sample: Option<DirtySample>,
        error: Option<String>,
        effects: &mut Vec<Effect>,
    ) -> Result<(), OrchestratorError> {
        let memory = self.memory_of(id);
        let m = self.migration_mut(id)?;
        if host != m.source {
            return Err(OrchestratorError::NotAParty {
                migration: id,
                host: host.to_string(),
            });
        }
        // Late (already decided, or a second answer): nothing to do.
        if m.state != MigrationState::Queued || m.budget.estimate.is_some() {
            return Ok(());
        }
        m.budget.sample_asked_at = None;
        m.budget.estimate = Some(match (sample, error) {
            (Some(s), None) => estimate_from(&s, memory),
            (_, e) => no_sample(e.as_deref().unwrap_or("no sample in the answer")),
        });
        self.save(id, effects);
        Ok(())
    }

    /// Samples not answered within the sample's length plus the answer timeout count as
    /// failed: the migration is planned at its floor until its first round says more.
    pub(super) fn sample_timeouts(&mut self, effects: &mut Vec<Effect>) {
        let Some(bc) = &self.config.budget else {
            return;
        };
        // As long as the RMS's own call may take: QEMU measures whole seconds (at least one),
        // and the call allows 2 s more.
        let limit = bc.sample_s.ceil().max(1.0) + 2.0 + self.config.answer_timeout_s;
        let now = self.now;
        let overdue: Vec<MigrationId> = self
            .migrations
            .values()
            .filter(|m| m.state == MigrationState::Queued && m.budget.estimate.is_none())
            .filter(|m| m.budget.sample_asked_at.is_some_and(|t| now - t > limit))
            .map(|m| m.id)
            .collect();
        for id in overdue {
            if let Some(m) = self.migrations.get_mut(&id) {
                m.budget.sample_asked_at = None;
                m.budget.estimate = Some(no_sample(&format!("no answer within {limit} s")));
            }
            self.save(id, effects);
        }
    }

    /// The source's agent did not take a grant (not migrating yet, unreachable): it is sent
    /// again at the next plan, if it is still the one in force.
    pub(super) fn grant_unapplied(&mut self, id: MigrationId, bytes_per_s: Option<f64>) {
        if let Some(m) = self.migrations.get_mut(&id) {
            if m.state.is_active() && m.budget.grant_bytes_per_s == bytes_per_s {
                m.budget.grant_unapplied = true;
            }
        }
    }

    /// The source's `round_started` and `round_ended`: what is left and the estimate.
    pub(super) fn round_started(&mut self, id: MigrationId, round: u32, bytes: f64) {
        let memory = self.memory_of(id) as f64;
        if let Some(m) = self.migrations.get_mut(&id) {
            if bytes.is_finite() && bytes >= 0.0 {
                // Never more than the guest's memory, whatever an agent says.
                m.budget.remaining_bytes = Some(bytes.min(memory));
            }
            m.budget.round = round;
        }
    }

    pub(super) fn round_ended(&mut self, id: MigrationId, record: &RoundRecord) {
        if let Some(m) = self.migrations.get_mut(&id) {
            if let Some(e) = refine(m.budget.estimate.as_ref(), record) {
                m.budget.estimate = Some(e);
            }
        }
    }

    /// Starts what may start and re-grants what runs: the slots without a budget, the plan
    /// of the configured scheme with one.
    pub(super) fn schedule(&mut self, effects: &mut Vec<Effect>) {
        match self.config.budget.clone() {
            None => self.schedule_slots(effects),
            Some(bc) => self.schedule_budget(&bc, effects),
        }
    }

    fn schedule_budget(&mut self, bc: &BudgetConfig, effects: &mut Vec<Effect>) {
        // A queued migration the RMS never asked about (queued before the budget was
        // configured, or before a restart that lost the ask) is asked now.
        if bc.samples() {
            let unasked: Vec<MigrationId> = self
                .migrations
                .values()
                .filter(|m| m.state == MigrationState::Queued)
                .filter(|m| m.budget.estimate.is_none() && m.budget.sample_asked_at.is_none())
                .map(|m| m.id)
                .collect();
            for id in unasked {
                self.ask_sample(id, effects);
            }
        }
        let mut running = Vec::new();
        let mut waiting = Vec::new();
        let mut sampling = Vec::new();
        for m in self.migrations.values() {
            if m.state.is_active() {
                running.push(self.demand(m, bc));
            } else if m.state == MigrationState::Queued {
                if bc.samples() && m.budget.estimate.is_none() {
                    sampling.push(m.id);
                } else {
                    waiting.push(self.demand(m, bc));
                }
            }
        }
        // Inputs are clamped when they arrive, so a refusal is a bug or a hostile number that
        // got through: the migration at fault is left out (it keeps its grant, or waits), so
        // that one agent cannot stop every other migration's plan; what names none fails
        // closed (nothing new starts, grants stay as sent).
        self.plan_error = None;
        let plan = loop {
            match budget::plan(&bc.scheme, &bc.budget, &running, &waiting, self.now) {
                Ok(p) => break p,
                Err(e) => {
                    self.plan_error = Some(e.to_string());
                    let Some(bad) = e.culprit() else {
                        return;
                    };
                    if waiting.iter().any(|d| d.id == bad) {
                        let spot = QueueSpot {
                            position: 0,
                            effective_priority: 0.0,
                            reason: format!("the budget cannot plan it: {e}"),
                            code: "invalid".into(),
                        };
                        self.set_spot(bad, spot, effects);
                    }
                    let before = running.len() + waiting.len();
                    running.retain(|d| d.id != bad);
                    waiting.retain(|d| d.id != bad);
                    if running.len() + waiting.len() == before {
                        return;
                    }
                }
            }
        };
        for id in &plan.admitted {
            if let Some(m) = self.migrations.get_mut(id) {
                m.budget.waiting = None;
            }
            self.start_placing(*id, effects);
        }
        let sampling_from = plan.waiting.len();
        for w in &plan.waiting {
            let spot = QueueSpot {
                position: w.position,
                effective_priority: w.effective_priority,
                reason: w.reason.to_string(),
                code: w.reason.code().into(),
            };
            self.set_spot(w.id, spot, effects);
        }
        for (i, id) in sampling.iter().enumerate() {
            let spot = QueueSpot {
                position: sampling_from + i + 1,
                effective_priority: 0.0,
                reason: "its source is sampling how fast it dirties memory".into(),
                code: "sampling".into(),
            };
            self.set_spot(*id, spot, effects);
        }
        for g in &plan.grants {
            self.apply_grant(g, effects);
        }
        self.last_plan = Some(plan);
    }

    fn set_spot(&mut self, id: MigrationId, spot: QueueSpot, effects: &mut Vec<Effect>) {
        let Some(m) = self.migrations.get_mut(&id) else {
            return;
        };
        let changed = m
            .budget
            .waiting
            .as_ref()
            .is_none_or(|s| s.position != spot.position || s.code != spot.code);
        m.budget.waiting = Some(spot);
        if changed {
            self.save(id, effects);
        }
    }

    fn apply_grant(&mut self, g: &budget::Grant, effects: &mut Vec<Effect>) {
        let Some(m) = self.migrations.get_mut(&g.id) else {
            return;
        };
        m.budget.minimum_bytes_per_s = g.minimum_bytes_per_s;
        let changed = match (m.budget.grant_bytes_per_s, g.bytes_per_s) {
            (None, None) => false,
            (Some(old), Some(new)) => new < old || new > old * (1.0 + GRANT_RISE),
            _ => true,
        };
        // A grant the source did not take is sent again, changed or not.
        if !changed && !m.budget.grant_unapplied {
            return;
        }
        m.budget.grant_bytes_per_s = g.bytes_per_s;
        m.budget.grant_unapplied = false;
        // A placing migration's grant travels with its start; a running one's is sent.
        let send = matches!(
            m.state,
            MigrationState::Running | MigrationState::SwitchingOver
        ) && !m.committed;
        let host = m.source.clone();
        self.save(g.id, effects);
        if send {
            effects.push(Effect::Grant {
                migration: g.id,
                host,
                bytes_per_s: g.bytes_per_s,
            });
        }
    }

    /// What the allocator knows of `m`.
    fn demand(&self, m: &Migration, bc: &BudgetConfig) -> Demand {
        let memory = self.vms.get(&m.vm).map_or(0, |v| v.memory_bytes).max(1);
        let pc = policy_bounds(m.settings.as_ref(), memory);
        let rate = m
            .budget
            .estimate
            .as_ref()
            .map_or(0.0, |e| e.dirty_rate_bytes_per_s);
        // The growth fit is the predictive policy's own model: it plans by it, so its need is
        // the planner's. Another policy does not follow it; its need is the closed form from
        // the steepest line, which does not extrapolate a saturation from a short sample.
        let growth = if m.policy == "predictive" {
            m.budget.estimate.as_ref().and_then(|e| e.growth)
        } else {
            None
        };
        let (remaining, rounds_left) = match m.state {
            MigrationState::Queued | MigrationState::Placing => (memory as f64, pc.max_rounds),
            // Pausing: only what stop-and-copy sends is left; the floor is its need.
            MigrationState::SwitchingOver => (pc.stop_remaining, pc.max_rounds),
            _ => (
                m.budget.remaining_bytes.unwrap_or(memory as f64),
                pc.max_rounds
                    .saturating_sub(m.budget.round.saturating_sub(1))
                    .max(1),
            ),
        };
        // The planner's work grows with the rounds left: a huge N is planned as the most the
        // allocator takes (its need only falls with more rounds).
        let rounds_left = rounds_left.min(budget::validate::MAX_ROUNDS_LEFT);
        let remaining = remaining.min(memory as f64);
        let floor = pc.min_bandwidth.min(bc.budget.uplink_bytes_per_s);
        Demand {
            id: m.id,
            source: m.source.clone(),
            target: self.tentative_target(m),
            memory_bytes: memory as f64,
            remaining_bytes: remaining.max(0.0),
            dirty_rate_bytes_per_s: rate,
            growth,
            rounds_left,
            // h = 0 never converges; a page is the least that is ever left.
            stop_bytes: pc.stop_remaining.max(4096.0),
            floor_bytes_per_s: floor,
            ceiling_bytes_per_s: Some(pc.max_bandwidth.max(floor)),
            priority: m.budget.priority,
            submitted_at: m.budget.submitted_at,
        }
    }

    /// Where a migration goes, or would go: its target, the host being asked, the next
    /// candidate, the requested host, or the best-ranked host now (`?` when none: it
    /// crosses no NIC but the uplink, and its placement will fail).
    fn tentative_target(&self, m: &Migration) -> String {
        m.target
            .clone()
            .or_else(|| m.pending.as_ref().map(|p| p.host.clone()))
            .or_else(|| m.candidates.first().cloned())
            .or_else(|| m.requested_target.clone())
            .or_else(|| {
                placement::candidates(self.hosts.values(), &m.source, None)
                    .into_iter()
                    .next()
            })
            .unwrap_or_else(|| "?".into())
    }

    fn memory_of(&self, id: MigrationId) -> u64 {
        self.migrations
            .get(&id)
            .and_then(|m| self.vms.get(&m.vm))
            .map_or(0, |v| v.memory_bytes)
    }

    /// Fills every `StartMigration` of a step with the grant the step ended with (a grant
    /// of a migration started in the same step is not sent apart: it travels with the
    /// start, so it cannot arrive before it).
    pub(super) fn grants_travel_with_starts(&self, effects: &mut Vec<Effect>) {
        let started: Vec<MigrationId> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::StartMigration { migration, .. } => Some(*migration),
                _ => None,
            })
            .collect();
        if started.is_empty() {
            return;
        }
        effects.retain(
            |e| !matches!(e, Effect::Grant { migration, .. } if started.contains(migration)),
        );
        // The start's grant is the step's last; its record is persisted (again) just before
        // the start, so that nothing is acted on before it is written.
        let mut out = Vec::with_capacity(effects.len() + started.len());
        for mut e in effects.drain(..) {
            if let Effect::StartMigration {
                migration,
                grant_bytes_per_s,
                ..
            } = &mut e
            {
                if let Some(m) = self.migrations.get(migration) {
                    if *grant_bytes_per_s != m.budget.grant_bytes_per_s {
                        *grant_bytes_per_s = m.budget.grant_bytes_per_s;
                        out.push(Effect::Persist(super::Change::Migration(Box::new(
                            m.clone(),
                        ))));
                    }
                }
            }
            out.push(e);
        }
        *effects = out;
    }
}

fn no_sample(why: &str) -> Estimate {
    Estimate {
        dirty_rate_bytes_per_s: 0.0,
        growth: None,
        source: format!("no_sample: {why}"),
    }
}

/// The scheme's name on the command line and in the API.
pub fn scheme_name(s: &Scheme) -> &'static str {
    match s {
        Scheme::Budget { .. } => "budget",
        Scheme::Sequential => "sequential",
        Scheme::FixedSlots { .. } => "fixed-slots",
        Scheme::Unlimited => "unlimited",
    }
}

impl Config {
    /// The same settings with `budget` shared by its scheme.
    pub fn with_budget(mut self, budget: BudgetConfig) -> Config {
        self.budget = Some(budget);
        self
    }
}
