//! End-to-end migrations on 127.0.0.1:0, one per workload: memory equal page by page at pause,
//! the self-check chain continues on the destination.

mod common;

use std::time::Duration;

use common::*;
use livemig_engine::guest::replay_self_check;
use livemig_engine::pagehash::PageHashes;
use livemig_engine::wire::PAGE_SIZE;
use livemig_engine::{Guest, InitialContent, SenderConfig};
use livemig_policy::PolicyKind;

fn check_workload(workload: &str, content: InitialContent, compress: bool) {
    let mib = 64;
    let gcfg = guest_cfg(mib, workload, content);
    let src = common::guest(mib, workload, content);
    std::thread::sleep(Duration::from_millis(100));
    let (sent, got) = migrate_pair(
        &src,
        PolicyKind::DirtyFactor,
        policy_cfg(mib),
        SenderConfig {
            compress,
            workload: Some(workload.into()),
            sample_s: 0.2,
            ..SenderConfig::default()
        },
    );
    let report = sent.expect("migration succeeds");
    let got = got.expect("destination receives");
    assert!(!src.is_running(), "the source stays paused after hand-over");
    let s = &report.summary;
    let m = (mib << 20) as f64;
    assert_eq!(report.executor, "engine");
    // Every workload here dirties well below the minimum cap: the policy converges before its
    // round limit (8) rather than being cut off by it.
    assert!(s.converged, "{workload}: {:?}", s.stop_reason);
    assert!(s.rounds < 8, "{workload}: {} rounds", s.rounds);
    assert_eq!(report.rounds.len(), s.rounds as usize);
    // Round 1 sends all memory, round k exactly what round k-1 dirtied; the total is the sum
    // of the rounds and the stop-and-copy.
    assert_eq!(report.rounds[0].bytes_sent, m);
    for w in report.rounds.windows(2) {
        assert_eq!(
            w[1].bytes_sent, w[0].dirty_bytes,
            "{workload}: round {}",
            w[1].round
        );
    }
    let last = report.rounds.last().expect("rounds");
    assert!(
        s.stop_copy_bytes >= last.dirty_bytes && s.stop_copy_bytes <= m,
        "{workload}: stop-and-copy {} after a last round dirtying {}",
        s.stop_copy_bytes,
        last.dirty_bytes
    );
    let sum: f64 = report.rounds.iter().map(|r| r.bytes_sent).sum();
    assert_eq!(s.total_bytes, sum + s.stop_copy_bytes, "{workload}");
    // Downtime on loopback: the last few MiB, their hashes and the hand-over.
    assert!(
        s.downtime_s > 0.0 && s.downtime_s < 2.0 && s.downtime_s < s.total_time_s,
        "{workload}: downtime {} s of {} s",
        s.downtime_s,
        s.total_time_s
    );

    // Page by page: the destination holds the source's memory at pause.
    let sm = src.memory();
    let src_bytes = memory_bytes(&src);
    assert_eq!(src_bytes.len(), got.memory_at_handover.len());
    for (p, (a, b)) in src_bytes
        .chunks(PAGE_SIZE)
        .zip(got.memory_at_handover.chunks(PAGE_SIZE))
        .enumerate()
    {
        assert!(a == b, "{workload}: page {p} differs");
    }
    // The hand-over digest is the combined digest of the per-page hashes (protocol 4).
    assert_eq!(
        got.digest,
        PageHashes::of(sm, &mut || {}).expect("table").digest()
    );
    // The audit after the resume read every page and found them all as sent; the pause's
    // parts add up to it.
    let audit = s.audit.as_ref().expect("an audit");
    assert!(
        audit.passed && audit.differing == 0,
        "{workload}: {audit:?}"
    );
    assert_eq!(audit.pages, sm.pages());
    let b = s.downtime_breakdown.expect("a breakdown");
    assert!(
        (b.total_s() - s.downtime_s).abs() < 1e-9,
        "{workload}: {b:?}"
    );

    // The destination continues the source's self-check chain (it runs: the source committed).
    let (n, sum) = src.self_check();
    assert_eq!(got.self_check_at_handover, (n, sum));
    if workload != "idle" {
        assert!(n > 0, "{workload}: the source wrote");
    }
    drop(src);
    std::thread::sleep(Duration::from_millis(150));
    got.guest.pause();
    let (m, sum2) = got.guest.self_check();
    if workload != "idle" {
        assert!(m > n, "{workload}: the destination writes on ({n} -> {m})");
    }
    assert_eq!(sum2, replay_self_check(&gcfg, m).expect("replay"));
}

#[test]
fn uniform() {
    check_workload("uniform:rate=8MiB/s", InitialContent::Random, false);
}

#[test]
fn hotcold_compressed_mixed_content() {
    check_workload(
        "hotcold:rate=24MiB/s,hot=10%,share=90%",
        InitialContent::Mixed { zero_share: 0.5 },
        true,
    );
}

#[test]
fn zipf() {
    check_workload("zipf:rate=16MiB/s,s=1.1", InitialContent::Random, false);
}

#[test]
fn scan() {
    check_workload("scan:rate=4MiB/s", InitialContent::Random, false);
}

#[test]
fn phased() {
    check_workload(
        "phased:steps=4MiB/s@0s;32MiB/s@1s,pattern=hotcold,hot=5%,share=95%",
        InitialContent::Zero,
        true,
    );
}

#[test]
fn idle() {
    check_workload("idle", InitialContent::Random, false);
}

/// A grant (the RMS's, later) below the policy's cap slows the round down: the limiter cannot
/// send 16 MiB at 32 MiB/s in less than about half a second, whatever the policy says; the
/// record keeps both the policy's wish and the cap the round ran under.
#[test]
fn a_granted_cap_limits_a_round() {
    let src = common::guest(16, "idle", InitialContent::Random);
    let control = livemig_engine::Control::new();
    control.grant(Some(32.0 * MIB));
    let cfg = livemig_policy::PolicyConfig {
        fixed_bandwidth: Some(1024.0 * MIB),
        max_bandwidth: 1024.0 * MIB,
        max_rounds: 1,
        ..policy_cfg(16)
    };
    let (sent, got) = migrate_pair_with(
        &src,
        PolicyKind::Fixed,
        cfg,
        SenderConfig {
            sample_s: 0.0,
            ..SenderConfig::default()
        },
        &control,
    );
    let r = sent.expect("migration succeeds");
    got.expect("destination receives");
    let round = &r.rounds[0];
    assert_eq!(round.wish_bytes_per_s, 1024.0 * MIB, "the policy's wish");
    assert_eq!(round.cap_bytes_per_s, 32.0 * MIB, "the cap it ran under");
    assert!(
        round.duration_s >= 0.45,
        "16 MiB under a 32 MiB/s external cap took only {} s",
        round.duration_s
    );
}

/// Lowering the grant mid-round is on the wire within 100 ms (the wire meter's 10 ms bins),
/// raising it never exceeds the grant nor the policy's cap, and the event stream reports both
/// changes and a round record whose cap is the time-weighted one.
#[test]
fn a_grant_lowered_mid_round_is_on_the_wire_within_100_ms_and_raising_never_exceeds_it() {
    use livemig_engine::sender::migrate_measured;
    use livemig_policy::Event;
    use std::sync::mpsc;
    use std::time::Instant;

    let src = common::guest(96, "idle", InitialContent::Random);
    let control = livemig_engine::Control::new();
    let wish = 64.0 * MIB;
    let cfg = livemig_policy::PolicyConfig {
        fixed_bandwidth: Some(wish),
        max_bandwidth: 1024.0 * MIB,
        max_rounds: 1,
        ..policy_cfg(96)
    };
    let (mut a, mut b) = common::pair();
    let key = common::key(3);
    let dest = std::thread::spawn(move || {
        livemig_engine::receiver::receive_with(
            &mut b,
            &common::key(3),
            &livemig_engine::receiver::ReceiverConfig::default(),
            &livemig_engine::receiver::Alone,
        )
        .map(|_| ())
    });
    // Steer from another thread, timed from the start of round 1 as the sender reports it.
    let (tx, rx) = mpsc::channel::<Instant>();
    let steer = control.clone();
    let steering = std::thread::spawn(move || {
        let t0 = rx.recv().expect("round 1 starts");
        std::thread::sleep(Duration::from_millis(300));
        let low = t0.elapsed().as_secs_f64();
        steer.grant(Some(8.0 * MIB));
        std::thread::sleep(Duration::from_millis(600));
        let high = t0.elapsed().as_secs_f64();
        steer.grant(Some(512.0 * MIB));
        (low, high)
    });
    let mut events = Vec::new();
    let mut policy = PolicyKind::Fixed.build(cfg).expect("policy");
    let mut tx = Some(tx);
    let sent = migrate_measured(
        &mut a,
        &key,
        &src,
        policy.as_mut(),
        &SenderConfig {
            sample_s: 0.0,
            ..SenderConfig::default()
        },
        &control,
        &mut |e| {
            if matches!(e, Event::RoundStarted { .. }) {
                if let Some(t) = tx.take() {
                    let _ = t.send(Instant::now());
                }
            }
            events.push(e.clone());
        },
        None,
    );
    let (report, meter) = sent.expect("migration succeeds");
    dest.join().expect("thread").expect("destination receives");
    let (low, high) = steering.join().expect("steering");
    // From 100 ms after the lowering to the raising: at most the grant (the bucket's burst
    // is 5 ms; 15 % for window edges and frame granularity).
    let slow = meter.window_rates(low + 0.1, high, 0.1);
    assert!(!slow.is_empty());
    for r in &slow {
        assert!(
            *r <= 8.0 * MIB * 1.15,
            "{} MiB/s after the grant of 8 MiB/s",
            r / MIB
        );
    }
    // After the raising: never above the policy's 64 MiB/s, though 512 MiB/s are granted.
    let fast = meter.window_rates(high + 0.1, report.rounds[0].duration_s, 0.1);
    assert!(!fast.is_empty(), "round 1 lasted past the raise");
    for r in &fast {
        assert!(
            *r <= wish * 1.15,
            "{} MiB/s above the policy's cap",
            r / MIB
        );
    }
    let grants: Vec<f64> = events
        .iter()
        .filter_map(|e| match e {
            Event::CapGranted {
                cap_bytes_per_s, ..
            } => Some(*cap_bytes_per_s),
            _ => None,
        })
        .collect();
    assert_eq!(grants, vec![8.0 * MIB, wish], "both changes reported");
    let round = &report.rounds[0];
    assert_eq!(round.wish_bytes_per_s, wish);
    assert!(
        round.cap_bytes_per_s < wish * 0.9 && round.cap_bytes_per_s > 8.0 * MIB,
        "time-weighted cap {} MiB/s",
        round.cap_bytes_per_s / MIB
    );
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::RoundEnded { record } if record.round == 1)));
}

/// `predictive` on real bytes: round 1 is planned from SimGuest's dirty-log sample (not B_min),
/// the migration converges, and the destination holds the source's memory at pause.
#[test]
fn predictive_plans_round_one_from_the_sample_and_converges() {
    let mib = 64;
    let workload = "hotcold:rate=24MiB/s,hot=10%,share=90%";
    let src = common::guest(mib, workload, InitialContent::Random);
    std::thread::sleep(Duration::from_millis(100));
    let cfg = livemig_policy::PolicyConfig {
        min_bandwidth: 4.0 * MIB,
        ..policy_cfg(mib)
    };
    let (sent, got) = migrate_pair(
        &src,
        PolicyKind::Predictive,
        cfg.clone(),
        SenderConfig {
            workload: Some(workload.into()),
            sample_s: 0.3,
            ..SenderConfig::default()
        },
    );
    let report = sent.expect("migration succeeds");
    let got = got.expect("destination receives");
    assert_eq!(report.policy, "predictive");
    assert!(report.summary.converged, "{:?}", report.summary);
    let first = report.rounds.first().expect("rounds").cap_bytes_per_s;
    assert!(first > cfg.min_bandwidth, "round 1 at {first} is B_min");
    let table = PageHashes::of(src.memory(), &mut || {}).expect("table");
    assert_eq!(got.digest, table.digest());
    assert_eq!(got.self_check_at_handover, src.self_check());
}

/// The completion timeout (per GiB; a 32 MiB guest counts as one GiB) fires in round 1.
/// `force`: the round is cut short and stop-and-copy sends the rest, the hand-over verifies.
/// `abort`: the source stops with `TimedOut`, its guest running, and the destination keeps
/// nothing.
#[test]
fn a_completion_timeout_forces_stop_and_copy_or_aborts() {
    use livemig_policy::{StopReason, TimeoutAction, Timeouts};
    let cfg = livemig_policy::PolicyConfig {
        fixed_bandwidth: Some(32.0 * MIB),
        max_bandwidth: 1024.0 * MIB,
        max_rounds: 5,
        ..policy_cfg(32)
    };
    let timeouts = |action| Timeouts {
        completion_per_gib_s: Some(0.3),
        progress_s: None,
        action,
    };
    let src = common::guest(32, "uniform:rate=2MiB/s", InitialContent::Random);
    let (sent, got) = migrate_pair(
        &src,
        PolicyKind::Fixed,
        cfg.clone(),
        SenderConfig {
            sample_s: 0.0,
            timeouts: timeouts(TimeoutAction::Force),
            ..SenderConfig::default()
        },
    );
    let r = sent.expect("a forced stop still hands over");
    let got = got.expect("destination receives");
    assert_eq!(r.summary.stop_reason, StopReason::TimedOut);
    assert_eq!(r.rounds.len(), 1, "cut in round 1");
    assert!(
        r.rounds[0].bytes_sent < 30.0 * MIB,
        "round 1 was cut: {} MiB sent",
        r.rounds[0].bytes_sent / MIB
    );
    assert!(
        r.summary.stop_copy_bytes > 1.0 * MIB,
        "the rest went in stop-and-copy"
    );
    assert_eq!(got.self_check_at_handover, src.self_check());

    let src = common::guest(32, "uniform:rate=2MiB/s", InitialContent::Random);
    let (sent, got) = migrate_pair(
        &src,
        PolicyKind::Fixed,
        cfg,
        SenderConfig {
            sample_s: 0.0,
            timeouts: timeouts(TimeoutAction::Abort),
            ..SenderConfig::default()
        },
    );
    let e = sent.expect_err("the timeout aborts");
    assert!(matches!(e, livemig_engine::SendError::TimedOut(_)), "{e:?}");
    assert!(got.is_err(), "the destination keeps nothing");
    let before = src.self_check().0;
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        src.self_check().0 > before,
        "the source guest keeps running"
    );
}
