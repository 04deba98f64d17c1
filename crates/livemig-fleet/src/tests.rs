//! The drain's properties on small fleets, under every scheme.

use std::collections::BTreeMap;

use crate::{drain, run_scheme, DrainScenario, Outcome, SchemeName};

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

fn small() -> DrainScenario {
    DrainScenario {
        hosts: 6,
        drain: 3,
        vms_per_host: 8,
        host_memory_bytes: 64.0 * GIB,
        vm_memory_bytes: vec![1.0 * GIB, 2.0 * GIB, 4.0 * GIB],
        nic_bytes_per_s: 10e9 / 8.0,
        budget_bytes_per_s: 4e9 / 8.0,
        seed: 7,
        ..DrainScenario::default()
    }
}

#[test]
fn every_vm_leaves_the_draining_hosts_under_every_scheme() {
    let s = small();
    for scheme in SchemeName::ALL {
        let (f, vms) = run_scheme(&s, scheme, &mut |_| {}).expect("runs");
        assert_eq!(f.migrations, 24);
        assert_eq!(vms.len(), 24);
        assert_eq!((f.migrated, f.failed), (24, 0), "{scheme:?}: {f:?}");
        for vm in &vms {
            assert!(matches!(vm.outcome, Outcome::Migrated { .. }), "{vm:?}");
            let target = vm.target.as_deref().expect("placed");
            assert!(
                !["host-000", "host-001", "host-002"].contains(&target),
                "{vm:?}"
            );
        }
        assert!(f.time_to_empty_s > 0.0 && f.total_bytes > 0.0, "{f:?}");
        // The links carry no more than their capacity.
        assert!(
            f.peak_uplink_bytes_per_s <= s.uplink() * (1.0 + 1e-9),
            "{scheme:?}: {f:?}"
        );
    }
}

#[test]
fn the_budgets_grants_never_exceed_it_nor_a_nic_and_its_peak_stays_within() {
    let s = small();
    let mut ticks = 0;
    let (f, _) = run_scheme(&s, SchemeName::Budget, &mut |t| {
        ticks += 1;
        let mut sum = 0.0;
        let mut nic: BTreeMap<&str, f64> = BTreeMap::new();
        for g in &t.plan.grants {
            let b = g.bytes_per_s.expect("the budget always caps");
            sum += b;
            let d = t.running.iter().find(|d| d.id == g.id).expect("running");
            *nic.entry(d.source.as_str()).or_default() += b;
            *nic.entry(d.target.as_str()).or_default() += b;
        }
        assert!(
            sum <= s.budget_bytes_per_s * (1.0 + 1e-9),
            "{sum} at {}",
            t.time_s
        );
        for (host, b) in nic {
            assert!(b <= s.nic_bytes_per_s * (1.0 + 1e-9), "{host}: {b}");
        }
    })
    .expect("runs");
    assert!(ticks > 24, "a plan at every start, end and round: {ticks}");
    assert!(f.peak_over_budget <= 1.0 + 1e-6, "{f:?}");
}

#[test]
fn sequential_runs_one_migration_per_source_at_a_time() {
    let s = small();
    let mut most = 0;
    run_scheme(&s, SchemeName::Sequential, &mut |t| {
        let mut per: BTreeMap<&str, usize> = BTreeMap::new();
        for d in t.running {
            *per.entry(d.source.as_str()).or_default() += 1;
        }
        for (host, n) in per {
            assert!(n <= 1, "{host} runs {n} at {}", t.time_s);
        }
        most = most.max(t.running.len());
    })
    .expect("runs");
    assert_eq!(most, 3, "one per draining host");
}

#[test]
fn fixed_slots_keeps_its_counts_and_unlimited_starts_everything() {
    let s = small();
    let (f, _) = run_scheme(&s, SchemeName::FixedSlots, &mut |t| {
        assert!(t.running.len() <= 5);
        for g in &t.plan.grants {
            assert_eq!(g.bytes_per_s, Some(s.budget_bytes_per_s / 5.0));
        }
    })
    .expect("runs");
    assert_eq!(f.max_concurrent, 5);
    let (u, _) = run_scheme(&s, SchemeName::Unlimited, &mut |_| {}).expect("runs");
    assert_eq!(u.max_concurrent, 24);
    // Uncapped, all at once: the physical uplink (1.25 U) is full.
    assert!(u.peak_over_budget > 1.2, "{u:?}");
}

#[test]
fn the_same_seed_gives_the_same_figures() {
    let s = small();
    let all = SchemeName::ALL;
    let a = drain(&s, &all).expect("runs");
    assert_eq!(a, drain(&s, &all).expect("runs"));
    let other = drain(&DrainScenario { seed: 8, ..s }, &all).expect("runs");
    assert_ne!(a.figures, other.figures);
}

#[test]
fn a_heavy_vm_converges_under_the_budget_but_not_in_a_fixed_slot() {
    // One 4 GiB VM writing 250 MiB/s uniformly. A fixed slot is U / 5 = 2 Gbit/s (238 MiB/s),
    // below its dirtying rate: it cannot converge there. The budget grants it its need
    // (about 1.5 x its rate for N = 10, h = 64 MiB) out of the 10 Gbit/s.
    let s = DrainScenario {
        hosts: 2,
        drain: 1,
        vms_per_host: 1,
        host_memory_bytes: 16.0 * GIB,
        vm_memory_bytes: vec![4.0 * GIB],
        mix: "heavy:1".parse().expect("mix"),
        ..DrainScenario::default()
    };
    let (fixed, _) = run_scheme(&s, SchemeName::FixedSlots, &mut |_| {}).expect("runs");
    let (budget, _) = run_scheme(&s, SchemeName::Budget, &mut |_| {}).expect("runs");
    assert_eq!((fixed.migrated, fixed.not_converged), (1, 1), "{fixed:?}");
    assert_eq!(
        (budget.migrated, budget.not_converged),
        (1, 0),
        "{budget:?}"
    );
    assert!(
        budget.downtime_max_s < fixed.downtime_max_s,
        "{budget:?} {fixed:?}"
    );
}

#[test]
fn vms_that_no_host_can_hold_fail_and_the_rest_migrate() {
    let s = DrainScenario {
        hosts: 3,
        drain: 1,
        vms_per_host: 4,
        host_memory_bytes: 12.0 * GIB,
        vm_memory_bytes: vec![3.0 * GIB],
        mix: "idle:1".parse().expect("mix"),
        ..DrainScenario::default()
    };
    // Each target holds 4 x 3 GiB: nothing is free, every migration fails.
    let (f, vms) = run_scheme(&s, SchemeName::Budget, &mut |_| {}).expect("runs");
    assert_eq!((f.migrated, f.failed), (0, 4), "{f:?}");
    assert!(vms.iter().all(|v| v.target.is_none()));
    let roomy = DrainScenario {
        host_memory_bytes: 18.0 * GIB,
        ..s
    };
    let (f, _) = run_scheme(&roomy, SchemeName::Budget, &mut |_| {}).expect("runs");
    assert_eq!((f.migrated, f.failed), (4, 0), "{f:?}");
}

#[test]
fn bad_scenarios_are_refused() {
    for bad in [
        DrainScenario {
            drain: 6,
            ..small()
        },
        DrainScenario {
            budget_bytes_per_s: f64::NAN,
            ..small()
        },
        DrainScenario {
            vm_memory_bytes: vec![],
            ..small()
        },
        DrainScenario {
            uplink_bytes_per_s: Some(1.0),
            ..small()
        },
        DrainScenario {
            rounds: 0,
            ..small()
        },
    ] {
        assert!(
            run_scheme(&bad, SchemeName::Budget, &mut |_| {}).is_err(),
            "{bad:?}"
        );
    }
}
