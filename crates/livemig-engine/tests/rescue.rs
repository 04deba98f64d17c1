//! The rescue on the engine (real pages over loopback TCP): a guest that dirties faster than
//! B_max converges only because `predictive` throttles it, by about the share it needs; the
//! throttle is in force during pre-copy and lifted once the migration is over, and the guest
//! runs on at full speed on the destination.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use livemig_engine::receiver::ReceiverConfig;
use livemig_engine::sender::{migrate, SenderConfig};
use livemig_engine::{Control, Event, InitialContent};
use livemig_policy::{PolicyConfig, PolicyKind};

const MEM: u64 = 32;

#[test]
fn rescue_throttles_a_guest_faster_than_b_max_then_lifts_it() {
    // 32 MiB written uniformly at 64 MiB/s; the link allows 16 MiB/s: no bandwidth converges
    // (each round's dirt outgrows what it sent), so the guest must lose most of its speed.
    let src = guest(MEM, "uniform:rate=64MiB/s", InitialContent::Random);
    let cfg = PolicyConfig {
        min_bandwidth: 4.0 * MIB,
        max_bandwidth: 16.0 * MIB,
        max_throttle: Some(0.95),
        stop_remaining: 2.0 * MIB,
        ..policy_cfg(MEM)
    };
    let (mut a, mut b) = pair();
    let dest = std::thread::spawn(move || receive_snapshot(&mut b, &ReceiverConfig::default()));
    let mut policy = PolicyKind::Predictive.build(cfg.clone()).expect("policy");
    let send_cfg = SenderConfig {
        stop_remaining: cfg.stop_remaining,
        sample_s: 0.5,
        ..SenderConfig::default()
    };
    // The guest's throttle as seen at every round's start.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let report = {
        let seen = Arc::clone(&seen);
        let g = &src;
        migrate(
            &mut a,
            &key(1),
            g,
            policy.as_mut(),
            &send_cfg,
            &Control::new(),
            &mut |e| {
                if let Event::RoundStarted { round, .. } = e {
                    seen.lock().expect("lock").push((*round, g.throttle()));
                }
            },
        )
        .expect("the migration completes")
    };
    drop(a);
    let arrived = dest.join().expect("receiver").expect("received");
    let s = &report.summary;
    eprintln!("{}", serde_json::to_string_pretty(&report).expect("json"));
    assert!(s.converged, "{s:?}");
    let asked = s.max_throttle.expect("the policy throttled");
    // 64 MiB/s against 16 MiB/s: at least half the guest's time, not all of it.
    assert!(asked > 0.5 && asked <= 0.95, "throttle {asked}");
    let seen = seen.lock().expect("lock").clone();
    assert!(
        seen.iter().any(|&(_, t)| (t - asked).abs() < 1e-9),
        "the guest ran throttled as asked: {seen:?}"
    );
    assert_eq!(src.throttle(), 0.0, "lifted once the migration was over");
    // The destination's guest was never throttled: it runs at full speed.
    let g = arrived.guest;
    assert_eq!(g.throttle(), 0.0);
    let (w0, _) = g.self_check();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (w1, _) = g.self_check();
    // Unthrottled, 64 MiB/s is 8192 page writes in 0.5 s; throttled by `asked` it would be
    // at most half of that.
    let writes = w1 - w0;
    assert!(writes > 4096, "{writes} writes in 0.5 s on the destination");
}
