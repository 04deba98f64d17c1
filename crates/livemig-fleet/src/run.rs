//! The drain, event by event: every draining VM is submitted at t = 0; the RMS's allocator
//! (`livemig_rms::budget::plan`, the scheme under test) admits and grants whenever a
//! migration starts, ends or finishes a round; each running migration advances under the
//! simulator's per-round model ([`Stepper`]) at min(its policy's wish, its grant), as fast as
//! the physical links, shared max-min fairly, let it. Time jumps from one step's end to the
//! next (rates are constant in between).

use std::collections::BTreeMap;

use livemig_policy::{ConfigError, PolicyConfig, PolicyKind};
use livemig_rms::budget::{self, Budget, BudgetError, Demand, Plan, Scheme};
use livemig_rms::MigrationId;
use livemig_sim::run::Setup;
use livemig_sim::run::PEAK_WINDOW_S;
use livemig_sim::{Link, SimError, Stepped, Stepper};
use livemig_workload::{DirtyModel, SpecError, Workload};
use serde::{Deserialize, Serialize};

use crate::figures::{DrainFigures, Outcome, VmOutcome};
use crate::fleet::{self, Overfull};
use crate::mix::class_spec;
use crate::scenario::{DrainScenario, ScenarioError};
use crate::share::{self, Flow};

/// The allocation schemes compared, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SchemeName {
    /// livemig's budget: admission by prediction, minimums first, the rest
    /// shortest-remaining-first.
    Budget,
    /// One migration per source host, no cap (Nova's default).
    Sequential,
    /// 2 outbound per host, 5 in all, U / 5 each (KubeVirt's defaults).
    FixedSlots,
    /// Everything at once, no cap.
    Unlimited,
}

impl SchemeName {
    /// Every scheme, the budget first.
    pub const ALL: [SchemeName; 4] = [
        SchemeName::Budget,
        SchemeName::Sequential,
        SchemeName::FixedSlots,
        SchemeName::Unlimited,
    ];

    /// The name in reports.
    pub fn name(self) -> &'static str {
        match self {
            SchemeName::Budget => "budget",
            SchemeName::Sequential => "sequential",
            SchemeName::FixedSlots => "fixed-slots",
            SchemeName::Unlimited => "unlimited",
        }
    }

    /// The allocator's scheme, with its defaults.
    pub fn scheme(self) -> Scheme {
        match self {
            SchemeName::Budget => Scheme::BUDGET,
            SchemeName::Sequential => Scheme::Sequential,
            SchemeName::FixedSlots => Scheme::FIXED_SLOTS,
            SchemeName::Unlimited => Scheme::Unlimited,
        }
    }
}

/// Why a drain could not be simulated.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("invalid scenario")]
    Scenario(#[from] ScenarioError),
    #[error("the fleet does not fit")]
    Overfull(#[from] Overfull),
    #[error("workload class `{class}`")]
    Workload {
        class: String,
        #[source]
        source: Box<SpecError>,
    },
    #[error("the policy's settings for a VM of {memory_bytes} bytes")]
    Policy {
        memory_bytes: f64,
        #[source]
        source: ConfigError,
    },
    #[error("the allocator refused its input")]
    Budget(#[from] BudgetError),
    #[error("at {time_s} s no running migration can send (every rate is zero)")]
    Stalled { time_s: f64 },
}

/// What the observer of a run sees after every plan.
#[derive(Debug)]
pub struct Tick<'t> {
    /// Simulated seconds since the drain started.
    pub time_s: f64,
    /// The allocator's answer.
    pub plan: &'t Plan,
    /// The running migrations, those just admitted included.
    pub running: &'t [Demand],
}

struct Mig<'a> {
    stepper: Stepper<'a>,
    started: bool,
    grant: Option<f64>,
    source: usize,
    target: usize,
}

/// The fixed inputs of every migration: workloads per class, models per (class, size),
/// links per VM, policy settings per size.
struct Inputs {
    workloads: Vec<Workload>,
    models: Vec<DirtyModel>,
    model_of: Vec<usize>,
    links: Vec<Link>,
}

fn inputs(s: &DrainScenario, vms: &[fleet::DrainingVm]) -> Result<Inputs, DrainError> {
    let workloads = s
        .mix
        .entries
        .iter()
        .map(|(class, _)| {
            let spec = class_spec(class).unwrap_or("idle");
            Workload::parse_self_contained(spec).map_err(|e| DrainError::Workload {
                class: class.clone(),
                source: Box::new(e),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let page = PolicyConfig::default().page_size;
    let mut index: BTreeMap<(usize, u64), usize> = BTreeMap::new();
    let mut models = Vec::new();
    let mut model_of = Vec::with_capacity(vms.len());
    for vm in vms {
        let key = (vm.class, vm.memory_bytes.to_bits());
        let i = *index.entry(key).or_insert_with(|| {
            models.push(DirtyModel::new(&workloads[vm.class], vm.memory_bytes, page));
            models.len() - 1
        });
        model_of.push(i);
    }
    let links = vms
        .iter()
        .map(|vm| Link {
            // Physical rates are the fleet's business (`share`), not the per-migration link's.
            capacity: None,
            seed: s.seed ^ (vm.id + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            ..Link::default()
        })
        .collect();
    Ok(Inputs {
        workloads,
        models,
        model_of,
        links,
    })
}

fn config(s: &DrainScenario, memory_bytes: f64) -> PolicyConfig {
    PolicyConfig {
        memory_bytes,
        max_rounds: s.rounds,
        stop_remaining: s.stop_bytes,
        ..PolicyConfig::default()
    }
}

struct Run<'a, 'o> {
    s: &'a DrainScenario,
    scheme: Scheme,
    budget: Budget,
    uplink: f64,
    nics: Vec<f64>,
    t: f64,
    migs: Vec<Option<Mig<'a>>>,
    /// Running migrations: their index in `migs` and their current demand, aligned.
    running: Vec<usize>,
    running_d: Vec<Demand>,
    waiting_d: Vec<Demand>,
    outcomes: Vec<VmOutcome>,
    uplink_segments: Vec<(f64, f64, f64)>,
    max_concurrent: usize,
    plans: u64,
    outside_guarantee: u64,
    sent_by_failed: f64,
    observer: &'o mut dyn FnMut(&Tick<'_>),
}

/// Runs the drain of `s` under `scheme`, telling `observer` every plan. Returns the figures
/// and every draining VM's outcome, by id.
pub fn run_scheme(
    s: &DrainScenario,
    scheme: SchemeName,
    observer: &mut dyn FnMut(&Tick<'_>),
) -> Result<(DrainFigures, Vec<VmOutcome>), DrainError> {
    s.validate()?;
    let fleet = fleet::draw(s)?;
    let inputs = inputs(s, &fleet.vms)?;
    let mut run = Run {
        s,
        scheme: scheme.scheme(),
        budget: Budget {
            uplink_bytes_per_s: s.budget_bytes_per_s,
            host_nic_bytes_per_s: BTreeMap::new(),
            default_host_nic_bytes_per_s: Some(s.nic_bytes_per_s),
        },
        uplink: s.uplink(),
        nics: vec![s.nic_bytes_per_s; s.hosts as usize],
        t: 0.0,
        migs: Vec::with_capacity(fleet.vms.len()),
        running: Vec::new(),
        running_d: Vec::new(),
        waiting_d: Vec::new(),
        outcomes: Vec::with_capacity(fleet.vms.len()),
        uplink_segments: Vec::new(),
        max_concurrent: 0,
        plans: 0,
        outside_guarantee: 0,
        sent_by_failed: 0.0,
        observer,
    };
    for vm in &fleet.vms {
        run.outcomes.push(VmOutcome {
            id: vm.id,
            source: DrainScenario::host_name(vm.source),
            target: vm.target.map(DrainScenario::host_name),
            memory_bytes: vm.memory_bytes,
            class: s.mix.entries[vm.class].0.clone(),
            outcome: Outcome::Waiting,
        });
        let Some(target) = vm.target else {
            run.outcomes[vm.id as usize].outcome = Outcome::Failed {
                reason: "no host can hold it".into(),
            };
            run.migs.push(None);
            continue;
        };
        let cfg = config(s, vm.memory_bytes);
        let policy = s
            .policy
            .build(cfg.clone())
            .map_err(|source| DrainError::Policy {
                memory_bytes: vm.memory_bytes,
                source,
            })?;
        let i = vm.id as usize;
        let setup = Setup {
            workload: &inputs.workloads[vm.class],
            model: &inputs.models[inputs.model_of[i]],
            link: &inputs.links[i],
            memory_bytes: vm.memory_bytes,
            stop_remaining: s.stop_bytes,
        };
        let stepper = Stepper::new(policy, setup);
        let (rate, growth) = match stepper.sample() {
            Some(sample) => budget::from_sample(sample, vm.memory_bytes),
            None => (0.0, None),
        };
        let mut d = Demand::new(
            vm.id,
            &DrainScenario::host_name(vm.source),
            &DrainScenario::host_name(target),
            vm.memory_bytes,
            rate,
            s.rounds,
            s.stop_bytes,
        )
        .bounds(cfg.min_bandwidth, Some(cfg.max_bandwidth))
        .queued(0, 0.0);
        if s.policy == PolicyKind::Predictive {
            if let Some(g) = growth {
                d = d.with_growth(g);
            }
        }
        run.waiting_d.push(d);
        run.migs.push(Some(Mig {
            stepper,
            started: false,
            grant: None,
            source: vm.source,
            target,
        }));
    }
    run.replan()?;
    run.go()?;
    Ok(run.figures(scheme))
}

impl<'a> Run<'a, '_> {
    /// Asks the allocator, starts the admitted, hands out the grants. When nothing runs and
    /// nothing was admitted, the queue's head starts anyway (all that waits cannot converge
    /// within what it could get: the policy's own infeasible branch, outside the guarantee).
    fn replan(&mut self) -> Result<(), DrainError> {
        let mut plan = self.plan_once()?;
        if self.running.is_empty() && !self.waiting_d.is_empty() {
            if let Some(head) = plan.waiting.first().map(|w| w.id) {
                self.admit(&[head])?;
                self.outside_guarantee += 1;
                plan = self.plan_once()?;
            }
        }
        for g in &plan.grants {
            if let Some(m) = self.migs.get_mut(g.id.0 as usize).and_then(Option::as_mut) {
                m.grant = g.bytes_per_s;
            }
        }
        (self.observer)(&Tick {
            time_s: self.t,
            plan: &plan,
            running: &self.running_d,
        });
        Ok(())
    }

    fn plan_once(&mut self) -> Result<Plan, DrainError> {
        self.plans += 1;
        let plan = budget::plan(
            &self.scheme,
            &self.budget,
            &self.running_d,
            &self.waiting_d,
            self.t,
        )?;
        self.admit(&plan.admitted)?;
        Ok(plan)
    }

    /// Moves `ids` from the queue to the running and starts them (their grant comes with the
    /// plan; until then, none).
    fn admit(&mut self, ids: &[MigrationId]) -> Result<(), DrainError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut chosen = vec![false; self.migs.len()];
        for id in ids {
            if let Some(c) = chosen.get_mut(id.0 as usize) {
                *c = true;
            }
        }
        let (go, stay): (Vec<Demand>, Vec<Demand>) = std::mem::take(&mut self.waiting_d)
            .into_iter()
            .partition(|d| chosen[d.id.0 as usize]);
        self.waiting_d = stay;
        for d in go {
            let i = d.id.0 as usize;
            self.running.push(i);
            self.running_d.push(d);
        }
        self.max_concurrent = self.max_concurrent.max(self.running.len());
        Ok(())
    }

    fn go(&mut self) -> Result<(), DrainError> {
        loop {
            // Start the newly admitted and settle steps with nothing to send.
            let mut ended = false;
            for k in 0..self.running.len() {
                ended |= self.settle(k)?;
            }
            if ended {
                self.drop_ended();
                self.replan()?;
                continue;
            }
            if self.running.is_empty() {
                if self.waiting_d.is_empty() {
                    return Ok(());
                }
                return Err(DrainError::Stalled { time_s: self.t });
            }
            let flows: Vec<Flow> = self
                .running
                .iter()
                .map(|&i| match &mut self.migs[i] {
                    Some(m) => {
                        m.stepper.steer(m.grant);
                        Flow {
                            source: m.source,
                            target: m.target,
                            cap: m.stepper.ceiling(),
                        }
                    }
                    None => Flow {
                        source: 0,
                        target: 0,
                        cap: 0.0,
                    },
                })
                .collect();
            let rates = share::max_min(&flows, self.uplink, &self.nics);
            let dt = self
                .running
                .iter()
                .zip(&rates)
                .filter(|(_, &r)| r > 0.0)
                .filter_map(|(&i, &r)| self.migs[i].as_ref().map(|m| m.stepper.left() / r))
                .fold(f64::INFINITY, f64::min);
            if !dt.is_finite() {
                return Err(DrainError::Stalled { time_s: self.t });
            }
            let aggregate: f64 = rates.iter().sum();
            self.segment(dt, aggregate);
            let mut done = Vec::new();
            for (k, (&i, &r)) in self.running.iter().zip(&rates).enumerate() {
                if let Some(m) = &mut self.migs[i] {
                    if m.stepper.advance(dt, r) {
                        done.push(k);
                    }
                }
            }
            self.t += dt;
            for k in done {
                self.end_step(k)?;
            }
            self.drop_ended();
            self.replan()?;
        }
    }

    /// Records the uplink's aggregate rate over the next `dt` seconds.
    fn segment(&mut self, dt: f64, rate: f64) {
        match self.uplink_segments.last_mut() {
            Some(last) if last.1 > 0.0 && (last.2 / last.1 - rate).abs() <= 1e-12 * rate => {
                last.1 += dt;
                last.2 += rate * dt;
            }
            _ => self.uplink_segments.push((self.t, dt, rate * dt)),
        }
    }

    /// Starts migration `k` if it has not started, and ends its steps while they have nothing
    /// to send. Returns whether it ended.
    fn settle(&mut self, k: usize) -> Result<bool, DrainError> {
        let i = self.running[k];
        let Some(m) = &mut self.migs[i] else {
            return Ok(true);
        };
        if !m.started {
            m.started = true;
            if let Err(e) = m.stepper.start(m.grant) {
                self.fail(k, &e);
                return Ok(true);
            }
        }
        while self.migs[i]
            .as_ref()
            .is_some_and(|m| m.stepper.left() <= 0.0)
        {
            if self.end_step(k)? {
                return Ok(true);
            }
        }
        Ok(self.migs[i].is_none())
    }

    /// Ends the step of running migration `k` whose bytes are sent. Returns whether the
    /// migration ended (finished or failed).
    fn end_step(&mut self, k: usize) -> Result<bool, DrainError> {
        let i = self.running[k];
        let Some(m) = &mut self.migs[i] else {
            return Ok(true);
        };
        match m.stepper.end_step(m.grant) {
            Ok(Stepped::Round {
                round,
                duration_s,
                dirty_bytes,
                ..
            }) => {
                let d = &mut self.running_d[k];
                d.remaining_bytes = dirty_bytes.min(d.memory_bytes).max(0.0);
                d.rounds_left = self.s.rounds.saturating_sub(round);
                if duration_s > 0.0 {
                    let seen = dirty_bytes / duration_s;
                    if seen.is_finite() {
                        d.dirty_rate_bytes_per_s = d.dirty_rate_bytes_per_s.max(seen);
                    }
                }
                Ok(false)
            }
            Ok(Stepped::Finished(report)) => {
                let s = &report.summary;
                self.outcomes[i].outcome = Outcome::Migrated {
                    converged: s.converged,
                    rounds: s.rounds,
                    downtime_s: s.downtime_s,
                    total_bytes: s.total_bytes + s.state_bytes,
                    ended_at_s: self.t,
                };
                self.migs[i] = None;
                Ok(true)
            }
            Err(e) => {
                self.fail(k, &e);
                Ok(true)
            }
        }
    }

    fn fail(&mut self, k: usize, e: &SimError) {
        let i = self.running[k];
        if let Some(m) = self.migs[i].take() {
            self.sent_by_failed += m.stepper.sent();
        }
        self.outcomes[i].outcome = Outcome::Failed {
            reason: e.to_string(),
        };
    }

    /// Removes the ended migrations from the running.
    fn drop_ended(&mut self) {
        let migs = &self.migs;
        let mut keep = self.running.iter().map(|&i| migs[i].is_some());
        self.running_d.retain(|_| keep.next().unwrap_or(false));
        self.running.retain(|&i| migs[i].is_some());
    }

    fn figures(self, scheme: SchemeName) -> (DrainFigures, Vec<VmOutcome>) {
        let peak = livemig_sim::peak::window(&self.uplink_segments, PEAK_WINDOW_S);
        let f = DrainFigures::collect(
            scheme.name(),
            &self.outcomes,
            self.t,
            peak,
            self.s.budget_bytes_per_s,
            self.sent_by_failed,
            self.max_concurrent as u64,
            self.plans,
            self.outside_guarantee,
        );
        (f, self.outcomes)
    }
}
