//! One regression test per baseline, reproducing its source's rules (method.md section 7).

use livemig_policy::baselines::{XEN_STEP, XEN_V2_MAX_ROUNDS};
use livemig_policy::config::QEMU_DEFAULT_BANDWIDTH;
use livemig_policy::{Branch, Policy, PolicyConfig, PolicyKind, RoundStats, StopReason};

const MBIT: f64 = 1e6 / 8.0;
const MIB: f64 = 1024.0 * 1024.0;

fn xen_cfg() -> PolicyConfig {
    PolicyConfig {
        memory_bytes: 1024.0 * MIB,
        min_bandwidth: 100.0 * MBIT,
        max_bandwidth: 500.0 * MBIT,
        ..PolicyConfig::default()
    }
}

fn round(k: u32, cap: f64, sent: f64, t: f64, dirty: f64) -> RoundStats {
    RoundStats {
        round: k,
        cap_bytes_per_s: cap,
        bytes_sent: sent,
        duration_s: t,
        dirty_bytes: dirty,
    }
}

fn drive(
    p: &mut dyn Policy,
    k: u32,
    cap: f64,
    sent: f64,
    t: f64,
    dirty: f64,
) -> (Option<f64>, Option<StopReason>, Branch) {
    let d = p
        .after_round(&round(k, cap, sent, t, dirty))
        .expect("valid");
    (d.next_cap(), d.stop_reason(), d.audit.branch)
}

#[test]
fn xen_raises_by_50_mbit_caps_at_500_and_never_lowers() {
    let mut p = PolicyKind::Xen.build(xen_cfg()).expect("valid");
    assert_eq!(p.first_cap(), 100.0 * MBIT);
    // Dirty rate 200 Mbit/s > 100 Mbit/s: rate = 250 Mbit/s.
    let (next, _, b) = drive(
        p.as_mut(),
        1,
        100.0 * MBIT,
        1000.0 * MIB,
        10.0,
        200.0 * MBIT * 10.0,
    );
    assert_eq!(b, Branch::XenRaise);
    assert!((next.expect("continues") - (200.0 * MBIT + XEN_STEP)).abs() < 1e-6);
    // Dirty rate 100 Mbit/s < 250: kept, never lowered.
    let (next, _, b) = drive(
        p.as_mut(),
        2,
        250.0 * MBIT,
        900.0 * MIB,
        10.0,
        100.0 * MBIT * 10.0,
    );
    assert_eq!(b, Branch::XenKeep);
    assert_eq!(next, Some(250.0 * MBIT));
    // Dirty rate 480 Mbit/s: 530 capped at 500.
    let (next, _, _) = drive(
        p.as_mut(),
        3,
        250.0 * MBIT,
        800.0 * MIB,
        10.0,
        480.0 * MBIT * 10.0,
    );
    assert_eq!(next, Some(500.0 * MBIT));
    // At B_max and the round sent more than the last one: stop.
    let (_, stop, _) = drive(
        p.as_mut(),
        4,
        500.0 * MBIT,
        900.0 * MIB,
        10.0,
        480.0 * MBIT * 10.0,
    );
    assert_eq!(stop, Some(StopReason::NotShrinkingAtMax));
}

#[test]
fn xen_stops_on_few_pages_round_30_and_three_times_memory() {
    let cfg = xen_cfg();
    let mut p = PolicyKind::Xen.build(cfg.clone()).expect("valid");
    let (_, stop, _) = drive(
        p.as_mut(),
        1,
        100.0 * MBIT,
        1024.0 * MIB,
        1.0,
        49.0 * 4096.0,
    );
    assert_eq!(stop, Some(StopReason::FewPagesRemain));

    // 30 rounds of shrinking sends: stops exactly at 30.
    let mut p = PolicyKind::Xen.build(cfg.clone()).expect("valid");
    let mut sent = 90.0 * MIB;
    for k in 1..=30 {
        let (_, stop, _) = drive(p.as_mut(), k, 100.0 * MBIT, sent, 1.0, 100.0 * 4096.0);
        assert_eq!(stop.is_some(), k == 30, "round {k}");
        if k == 30 {
            assert_eq!(stop, Some(StopReason::RoundLimit));
        }
        sent -= MIB;
    }

    // Total sent > 3 M stops.
    let mut p = PolicyKind::Xen.build(cfg.clone()).expect("valid");
    let m = cfg.memory_bytes;
    let (_, stop, _) = drive(p.as_mut(), 1, 100.0 * MBIT, m, 1.0, 1e3 * 4096.0);
    assert_eq!(stop, None);
    let (_, stop, _) = drive(p.as_mut(), 2, 100.0 * MBIT, 0.99 * m, 1.0, 1e3 * 4096.0);
    assert_eq!(stop, None);
    let (_, stop, _) = drive(p.as_mut(), 3, 100.0 * MBIT, 0.98 * m, 1.0, 1e3 * 4096.0);
    assert_eq!(stop, None);
    let (_, stop, _) = drive(p.as_mut(), 4, 100.0 * MBIT, 0.97 * m, 1.0, 1e3 * 4096.0);
    assert_eq!(stop, Some(StopReason::TotalSentLimit));
}

#[test]
fn xen_v2_is_unlimited_and_stops_at_five_rounds_or_few_pages() {
    let cfg = xen_cfg();
    let mut p = PolicyKind::XenV2.build(cfg.clone()).expect("valid");
    assert_eq!(p.first_cap(), cfg.max_bandwidth);
    for k in 1..=XEN_V2_MAX_ROUNDS {
        let (next, stop, _) = drive(p.as_mut(), k, cfg.max_bandwidth, MIB, 1.0, 1e4 * 4096.0);
        if k < XEN_V2_MAX_ROUNDS {
            assert_eq!(next, Some(cfg.max_bandwidth));
        } else {
            assert_eq!(stop, Some(StopReason::RoundLimit));
        }
    }
    let mut p = PolicyKind::XenV2.build(cfg).expect("valid");
    let (_, stop, _) = drive(p.as_mut(), 1, 1.0, MIB, 1.0, 10.0 * 4096.0);
    assert_eq!(stop, Some(StopReason::FewPagesRemain));
}

#[test]
fn qemu_keeps_its_cap_and_switches_over_when_remaining_fits_the_downtime_limit() {
    let cfg = PolicyConfig::default();
    let mut p = PolicyKind::Qemu.build(cfg.clone()).expect("valid");
    assert_eq!(p.first_cap(), QEMU_DEFAULT_BANDWIDTH);
    // 100 MiB/s measured x 0.3 s = 30 MiB: 31 MiB does not fit, 29 MiB does.
    let (next, stop, _) = drive(
        p.as_mut(),
        1,
        QEMU_DEFAULT_BANDWIDTH,
        100.0 * MIB,
        1.0,
        31.0 * MIB,
    );
    assert_eq!((next, stop), (Some(QEMU_DEFAULT_BANDWIDTH), None));
    let (_, stop, _) = drive(
        p.as_mut(),
        2,
        QEMU_DEFAULT_BANDWIDTH,
        100.0 * MIB,
        1.0,
        29.0 * MIB,
    );
    assert_eq!(stop, Some(StopReason::DowntimeFits));

    let mut p = PolicyKind::Qemu
        .build(PolicyConfig {
            safety_rounds: 3,
            ..cfg
        })
        .expect("valid");
    for k in 1..=3 {
        let (_, stop, _) = drive(p.as_mut(), k, QEMU_DEFAULT_BANDWIDTH, MIB, 1.0, 500.0 * MIB);
        assert_eq!(stop.is_some(), k == 3);
    }
}

#[test]
fn fixed_keeps_its_cap_and_stops_at_n_or_h() {
    let cfg = PolicyConfig {
        fixed_bandwidth: Some(300.0 * MIB),
        max_rounds: 3,
        ..PolicyConfig::default()
    };
    let mut p = PolicyKind::Fixed.build(cfg.clone()).expect("valid");
    assert_eq!(p.first_cap(), 300.0 * MIB);
    for k in 1..=3 {
        let (next, stop, _) = drive(
            p.as_mut(),
            k,
            300.0 * MIB,
            MIB,
            1.0,
            2.0 * cfg.stop_remaining,
        );
        if k < 3 {
            assert_eq!(next, Some(300.0 * MIB));
        } else {
            assert_eq!(stop, Some(StopReason::RoundLimit));
        }
    }
}

#[test]
fn unknown_policy_names_the_value() {
    let err = "nope".parse::<PolicyKind>().expect_err("unknown");
    assert!(err.to_string().contains("`nope`"));
    for k in PolicyKind::ALL {
        assert_eq!(k.name().parse::<PolicyKind>(), Ok(k));
    }
}
