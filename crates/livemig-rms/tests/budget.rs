//! Property tests of the migration-bandwidth budget (`livemig_rms::budget`):
//! - grants never exceed the uplink nor any host's NIC limit, and leave none of them idle;
//! - every admitted migration gets at least its minimum, and the minimums fit;
//! - the queue is ordered, numbered and partitioned (admitted or waiting, never both);
//! - no starvation: under a stream of arrivals of any priority, a waiting migration starts;
//! - the baselines keep their own rules;
//! - no input, however malformed, makes `plan` panic.

use std::collections::BTreeMap;

use livemig_policy::predictive::growth::Growth;
use livemig_rms::budget::allocate::Limits;
use livemig_rms::budget::{minimum, plan, Budget, Constraint, Demand, Need, Plan, Reason, Scheme};
use livemig_rms::MigrationId;
use proptest::prelude::*;

const MIB: f64 = 1024.0 * 1024.0;
const HOSTS: [&str; 4] = ["a", "b", "c", "d"];
/// Relative slack for floating-point sums.
const EPS: f64 = 1e-9;

fn budget() -> impl Strategy<Value = Budget> {
    (
        50.0..1000.0f64,
        prop::collection::vec(prop::option::of(5.0..500.0f64), HOSTS.len()),
        prop::option::of(5.0..500.0f64),
    )
        .prop_map(|(uplink, nics, default)| {
            let mut b = Budget::uplink(uplink * MIB);
            for (h, n) in HOSTS.iter().zip(nics) {
                if let Some(n) = n {
                    b = b.with_host(h, n * MIB);
                }
            }
            b.default_host_nic_bytes_per_s = default.map(|d| d * MIB);
            b
        })
}

fn growth(memory: f64) -> impl Strategy<Value = Option<Growth>> {
    prop::option::of(
        (
            0.0..1.0f64,
            0.01..10.0f64,
            0.0..200.0f64,
            0.3..1.0f64,
            0.0..0.5f64,
        )
            .prop_map(move |(w, tau, c, beta, res)| Growth {
                working_set_bytes: w * memory,
                tau_s: tau,
                linear_bytes_per_s: c * MIB,
                exponent: beta,
                memory_bytes: memory,
                residual: res,
            }),
    )
}

/// A demand with id 0 (numbered later); `running` ones may have progressed.
fn demand(running: bool) -> impl Strategy<Value = Demand> {
    (
        (
            0..HOSTS.len(),
            1..HOSTS.len(),
            64.0..8192.0f64,
            0.0..=1.0f64,
        ),
        (
            0.0..200.0f64,
            if running { 0..30u32 } else { 1..30u32 },
            1e-4..0.5f64,
        ),
        (
            0.1..20.0f64,
            prop::option::of(1.0..50.0f64),
            any::<u8>(),
            0.0..1000.0f64,
        ),
    )
        .prop_flat_map(move |(hosts, more, limits)| {
            let memory = hosts.2 * MIB;
            (Just((hosts, more, limits)), growth(memory))
        })
        .prop_map(
            move |(((s, off, mem, left), (rate, rounds, h), (floor, ceil, prio, at)), g)| {
                let memory = mem * MIB;
                let remaining = if running { left * memory } else { memory };
                Demand {
                    growth: g,
                    ..Demand::new(
                        0,
                        HOSTS[s],
                        HOSTS[(s + off) % HOSTS.len()],
                        memory,
                        rate * MIB,
                        rounds,
                        h * memory,
                    )
                    .progressed(remaining, rounds)
                    .bounds(floor * MIB, ceil.map(|c| c * floor * MIB))
                    .queued(prio, at)
                }
            },
        )
}

fn numbered(mut running: Vec<Demand>, mut waiting: Vec<Demand>) -> (Vec<Demand>, Vec<Demand>) {
    for (i, d) in running.iter_mut().chain(waiting.iter_mut()).enumerate() {
        d.id = MigrationId(i as u64 + 1);
    }
    (running, waiting)
}

fn case() -> impl Strategy<Value = (Budget, Vec<Demand>, Vec<Demand>, Scheme, f64)> {
    (
        budget(),
        prop::collection::vec(demand(true), 0..6),
        prop::collection::vec(demand(false), 0..8),
        (0.001..10.0f64, any::<bool>()),
        1000.0..5000.0f64,
    )
        .prop_map(|(b, r, w, (aging_per_s, backfill), now)| {
            let (r, w) = numbered(r, w);
            (
                b,
                r,
                w,
                Scheme::Budget {
                    aging_per_s,
                    backfill,
                },
                now,
            )
        })
}

/// The bytes/s `p`'s grants put on each limit.
fn load(p: &Plan, all: &[&Demand], limits: &Limits) -> BTreeMap<Constraint, f64> {
    let by_id: BTreeMap<MigrationId, &Demand> = all.iter().map(|d| (d.id, *d)).collect();
    limits.usage(
        p.grants
            .iter()
            .filter_map(|g| Some((*by_id.get(&g.id)?, g.bytes_per_s.unwrap_or(f64::INFINITY)))),
    )
}

proptest! {
    #[test]
    fn grants_never_exceed_a_limit_and_leave_none_idle((b, running, waiting, scheme, now) in case()) {
        let p = plan(&scheme, &b, &running, &waiting, now).expect("valid input");
        let all: Vec<&Demand> = running.iter().chain(&waiting).collect();
        let limits = Limits::new(&b, all.iter().copied());
        for (c, used) in load(&p, &all, &limits) {
            let cap = limits.cap(&c);
            prop_assert!(used <= cap * (1.0 + EPS), "{c}: {used} > {cap}");
        }
        let used = load(&p, &all, &limits);
        for g in &p.grants {
            let cap = g.bytes_per_s.expect("the budget caps every grant");
            prop_assert!(cap.is_finite() && cap >= 0.0, "{g:?}");
            // Work-conserving: a migration below its ceiling has a full limit in its way.
            let d = all.iter().find(|d| d.id == g.id).expect("a grant for a known migration");
            let at_ceiling = d.ceiling_bytes_per_s.is_some_and(|c| cap >= c * (1.0 - EPS));
            let blocked = limits.crossed(d).iter().any(|c| {
                limits.cap(c) - used.get(c).copied().unwrap_or(0.0) <= limits.cap(c) * EPS
            });
            prop_assert!(at_ceiling || blocked, "{g:?} could have more");
        }
    }

    #[test]
    fn every_admitted_migration_gets_its_minimum_and_the_minimums_fit(
        (b, running, waiting, scheme, now) in case()
    ) {
        let p = plan(&scheme, &b, &running, &waiting, now).expect("valid input");
        let all: Vec<&Demand> = running.iter().chain(&waiting).collect();
        let limits = Limits::new(&b, all.iter().copied());
        for id in &p.admitted {
            let d = waiting.iter().find(|d| d.id == *id).expect("admitted from the queue");
            let g = p.grant(*id).expect("an admitted migration has a grant");
            let min = g.minimum_bytes_per_s.expect("the budget sets minimums");
            // Its minimum is the converging rate of its estimate, within what it can reach.
            prop_assert_eq!(minimum(d, limits.reach(d)), Need::Converges(min));
            prop_assert!(g.converges);
            prop_assert!(g.bytes_per_s.expect("capped") >= min * (1.0 - EPS), "{g:?}");
        }
        if p.overcommitted.is_empty() {
            for g in &p.grants {
                let min = g.minimum_bytes_per_s.expect("the budget sets minimums");
                prop_assert!(g.bytes_per_s.expect("capped") >= min * (1.0 - EPS), "{g:?}");
            }
            let by_id: BTreeMap<MigrationId, &Demand> = all.iter().map(|d| (d.id, *d)).collect();
            let mins = limits.usage(p.grants.iter().map(|g| {
                (by_id[&g.id], g.minimum_bytes_per_s.unwrap_or(0.0))
            }));
            for (c, sum) in mins {
                let cap = limits.cap(&c);
                prop_assert!(sum <= cap * (1.0 + EPS), "minimums on {c}: {sum} > {cap}");
            }
        } else {
            // Nothing new starts across a limit the running minimums already exceed.
            for id in &p.admitted {
                let d = by_id_of(&waiting, *id);
                for c in limits.crossed(d) {
                    prop_assert!(!p.overcommitted.contains(&c), "{id} admitted across {c}");
                }
            }
        }
    }

    #[test]
    fn the_queue_is_ordered_numbered_and_partitioned((b, running, waiting, scheme, now) in case()) {
        let p = plan(&scheme, &b, &running, &waiting, now).expect("valid input");
        prop_assert_eq!(p.admitted.len() + p.waiting.len(), waiting.len());
        for (i, w) in p.waiting.iter().enumerate() {
            prop_assert_eq!(w.position, i + 1);
            prop_assert!(!p.admitted.contains(&w.id));
            prop_assert!(p.grant(w.id).is_none());
        }
        for pair in p.waiting.windows(2) {
            prop_assert!(pair[0].effective_priority >= pair[1].effective_priority);
        }
        prop_assert_eq!(p.grants.len(), running.len() + p.admitted.len());
        // The reasons say what is true: the head is the first feasible waiting migration, a
        // missing room is really missing, and only the head is waited behind.
        let head = p
            .waiting
            .iter()
            .find(|w| !matches!(w.reason, Reason::CannotConverge { .. }))
            .map(|w| w.id);
        for w in &p.waiting {
            match &w.reason {
                Reason::NoRoom { need_bytes_per_s, free_bytes_per_s, .. } => {
                    prop_assert!(need_bytes_per_s > free_bytes_per_s, "{w:?}");
                }
                Reason::Reserved { head: h, .. } | Reason::BehindHead { head: h } => {
                    prop_assert_eq!(Some(*h), head);
                    prop_assert!(Some(w.id) != head);
                }
                Reason::CannotConverge { .. } => {}
                other => prop_assert!(false, "a baseline's reason under the budget: {other:?}"),
            }
        }
        if let Some(h) = head {
            let first = p.waiting.iter().find(|w| w.id == h).map(|w| &w.reason);
            prop_assert!(matches!(first, Some(Reason::NoRoom { .. })), "{first:?}");
        }
    }

    #[test]
    fn a_waiting_migration_starts_however_many_arrive_ahead_of_it(
        victim in (30.0..=60.0f64, 0..HOSTS.len(), 1..HOSTS.len()),
        arrivals in prop::collection::vec(
            prop::collection::vec((any::<u8>(), 5.0..=60.0f64, 0..HOSTS.len(), 1..HOSTS.len(), 1..=5u32), 0..=3),
            300,
        ),
        backfill in any::<bool>(),
        nic in prop::option::of(60.0..=100.0f64),
    ) {
        // Needs are set through the floor (an idle guest needs exactly its floor), lives in
        // ticks of 1 s; the lowest priority ages past 255 after 255 / 20 < 13 ticks.
        let scheme = Scheme::Budget { aging_per_s: 20.0, backfill };
        let mut b = Budget::uplink(100.0 * MIB);
        if let Some(n) = nic {
            b = b.with_host("a", n * MIB);
        }
        let make = |id: u64, need: f64, s: usize, off: usize, prio: u8, at: f64| {
            Demand::new(id, HOSTS[s], HOSTS[(s + off) % HOSTS.len()], 1024.0 * MIB, 0.0, 10, MIB)
                .bounds(need * MIB, None)
                .queued(prio, at)
        };
        let victim_id = MigrationId(1);
        let mut waiting = vec![make(1, victim.0, victim.1, victim.2, 0, 0.0)];
        let mut running: Vec<(Demand, u32)> = Vec::new();
        let mut next = 2;
        let mut started = None;
        let mut lives: BTreeMap<MigrationId, u32> = BTreeMap::new();
        for (tick, batch) in arrivals.iter().enumerate() {
            let now = tick as f64;
            for &(prio, need, s, off, life) in batch {
                waiting.push(make(next, need, s, off, prio, now));
                lives.insert(MigrationId(next), life);
                next += 1;
            }
            let run: Vec<Demand> = running.iter().map(|(d, _)| d.clone()).collect();
            let p = plan(&scheme, &b, &run, &waiting, now).expect("valid input");
            let sum: f64 = p.grants.iter().filter_map(|g| g.bytes_per_s).sum();
            prop_assert!(sum <= 100.0 * MIB * (1.0 + EPS));
            for id in &p.admitted {
                if *id == victim_id {
                    started = Some(tick);
                }
                let pos = waiting.iter().position(|d| d.id == *id).expect("queued");
                let d = waiting.remove(pos);
                let life = lives.get(id).copied().unwrap_or(3);
                running.push((d, life));
            }
            if started.is_some() {
                break;
            }
            for r in &mut running {
                r.1 = r.1.saturating_sub(1);
            }
            running.retain(|r| r.1 > 0);
        }
        // After 13 ticks nothing new outranks it; at most 42 arrived before; each head starts
        // within 6 ticks (lives are at most 5 and nothing new loads the limit it waits on).
        let tick = started.ok_or_else(|| TestCaseError::fail("starved"))?;
        prop_assert!(tick <= 13 + 43 * 6, "started only at tick {tick}");
    }

    #[test]
    fn the_baselines_keep_their_rules(
        (b, _, waiting, _, now) in case(),
        running_sources in prop::collection::vec(0..HOSTS.len(), 0..6),
    ) {
        // Running migrations that respect both counting rules (one per source at most for
        // `sequential`; the first two per source and five in all for `fixed-slots`).
        let mk = |i: usize, s: usize| {
            Demand::new(1000 + i as u64, HOSTS[s], HOSTS[(s + 1) % HOSTS.len()], MIB, 0.0, 5, 1.0)
        };
        let mut seen = BTreeMap::new();
        let seq_running: Vec<Demand> = running_sources
            .iter()
            .enumerate()
            .filter(|(_, s)| seen.insert(**s, ()).is_none())
            .map(|(i, s)| mk(i, *s))
            .collect();
        let p = plan(&Scheme::Sequential, &b, &seq_running, &waiting, now).expect("valid");
        let mut per: BTreeMap<&str, usize> = BTreeMap::new();
        for d in seq_running.iter().chain(waiting.iter().filter(|d| p.admitted.contains(&d.id))) {
            *per.entry(d.source.as_str()).or_default() += 1;
        }
        prop_assert!(per.values().all(|n| *n <= 1), "{per:?}");
        prop_assert!(p.grants.iter().all(|g| g.bytes_per_s.is_none()));

        let mut count: BTreeMap<usize, usize> = BTreeMap::new();
        let slot_running: Vec<Demand> = running_sources
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                let n = count.entry(**s).or_default();
                *n += 1;
                *n <= 2
            })
            .take(5)
            .map(|(i, s)| mk(i, *s))
            .collect();
        let p = plan(&Scheme::FIXED_SLOTS, &b, &slot_running, &waiting, now).expect("valid");
        let mut per: BTreeMap<&str, usize> = BTreeMap::new();
        let active: Vec<&Demand> = slot_running
            .iter()
            .chain(waiting.iter().filter(|d| p.admitted.contains(&d.id)))
            .collect();
        for d in &active {
            *per.entry(d.source.as_str()).or_default() += 1;
        }
        prop_assert!(per.values().all(|n| *n <= 2), "{per:?}");
        prop_assert!(active.len() <= 5);
        let cap = b.uplink_bytes_per_s / 5.0;
        prop_assert!(p.grants.iter().all(|g| g.bytes_per_s == Some(cap)));
        let sum: f64 = p.grants.iter().filter_map(|g| g.bytes_per_s).sum();
        prop_assert!(sum <= b.uplink_bytes_per_s * (1.0 + EPS));
        // A migration waits only when a slot it needs is taken.
        if active.len() < 5 {
            for w in &p.waiting {
                let d = by_id_of(&waiting, w.id);
                prop_assert_eq!(per.get(d.source.as_str()).copied(), Some(2));
            }
        }

        let p = plan(&Scheme::Unlimited, &b, &slot_running, &waiting, now).expect("valid");
        prop_assert_eq!(p.admitted.len(), waiting.len());
        prop_assert!(p.waiting.is_empty());
        prop_assert!(p.grants.iter().all(|g| g.bytes_per_s.is_none()));
    }

    #[test]
    fn no_input_makes_it_panic(
        nums in prop::collection::vec(
            prop_oneof![
                Just(f64::NAN), Just(f64::INFINITY), Just(f64::NEG_INFINITY), Just(0.0),
                Just(-1.0), Just(f64::MAX), Just(f64::MIN_POSITIVE), 0.0..1e12f64
            ],
            16,
        ),
        rounds in any::<u32>(),
        scheme in prop_oneof![
            Just(Scheme::BUDGET), Just(Scheme::Sequential), Just(Scheme::FIXED_SLOTS),
            Just(Scheme::Unlimited)
        ],
    ) {
        let d = Demand {
            memory_bytes: nums[0],
            remaining_bytes: nums[1],
            dirty_rate_bytes_per_s: nums[2],
            stop_bytes: nums[3],
            floor_bytes_per_s: nums[4],
            ceiling_bytes_per_s: Some(nums[5]),
            submitted_at: nums[6],
            rounds_left: rounds,
            growth: Some(Growth {
                working_set_bytes: nums[7],
                tau_s: nums[8],
                linear_bytes_per_s: nums[9],
                exponent: nums[10],
                memory_bytes: nums[11],
                residual: nums[12],
            }),
            ..Demand::new(1, "a", "b", 1.0, 0.0, 1, 1.0)
        };
        let b = Budget::uplink(nums[13]).with_host("a", nums[14]);
        let _ = plan(&scheme, &b, std::slice::from_ref(&d), &[], nums[15]);
        let _ = plan(&scheme, &b, &[], &[d], nums[15]);
    }
}

fn by_id_of(all: &[Demand], id: MigrationId) -> &Demand {
    all.iter()
        .find(|d| d.id == id)
        .unwrap_or_else(|| panic!("{id} is listed"))
}

/// A steady stream of small migrations, each fitting beside the others, would keep a big
/// one out for ever if backfill could use what the head is promised (regression guard for
/// the reservation).
#[test]
fn a_stream_of_small_ones_does_not_starve_a_big_head() {
    let scheme = Scheme::Budget {
        aging_per_s: 20.0,
        backfill: true,
    };
    let b = Budget::uplink(100.0 * MIB);
    let make = |id: u64, need: f64, prio: u8, at: f64| {
        Demand::new(id, "a", "b", 1024.0 * MIB, 0.0, 10, MIB)
            .bounds(need * MIB, None)
            .queued(prio, at)
    };
    let mut waiting = vec![make(1, 60.0, 0, 0.0)];
    // The stream's steady load at every plan: 3 a tick, each for 3 ticks, 60 of the 100.
    let mut running: Vec<(Demand, u32)> = (2..8)
        .map(|id| (make(id, 10.0, 255, -1.0), if id < 5 { 1 } else { 2 }))
        .collect();
    let mut next = 8;
    for tick in 0..100u32 {
        let now = f64::from(tick);
        for _ in 0..3 {
            waiting.push(make(next, 10.0, 255, now));
            next += 1;
        }
        let run: Vec<Demand> = running.iter().map(|(d, _)| d.clone()).collect();
        let p = plan(&scheme, &b, &run, &waiting, now).expect("valid input");
        if p.admitted.contains(&MigrationId(1)) {
            // 255 / 20: it outranks newcomers from tick 13; what runs drains in 2 ticks.
            assert!(tick <= 16, "started only at tick {tick}");
            return;
        }
        for id in &p.admitted {
            let pos = waiting.iter().position(|d| d.id == *id).expect("queued");
            running.push((waiting.remove(pos), 3));
        }
        for r in &mut running {
            r.1 -= 1;
        }
        running.retain(|r| r.1 > 0);
    }
    panic!("the big migration never started");
}
