//! Helpers shared by the engine's integration tests: loopback pairs, policies, migrations.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use livemig_engine::receiver::{receive, Received, ReceiverConfig, RecvError};
use livemig_engine::sender::{migrate, SendError, SenderConfig};
use livemig_engine::{InitialContent, Key, SimGuest, SimGuestConfig};
use livemig_policy::report::MigrationReport;
use livemig_policy::{PolicyConfig, PolicyKind};

pub const MIB: f64 = 1024.0 * 1024.0;

pub fn key(b: u8) -> Key {
    Key::from_bytes([b; 32])
}

/// A connected pair on 127.0.0.1 with 5 s timeouts.
pub fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let a = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
    let (b, _) = l.accept().expect("accept");
    for s in [&a, &b] {
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s.set_write_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s.set_nodelay(true).expect("nodelay");
    }
    (a, b)
}

pub fn guest(memory_mib: u64, workload: &str, content: InitialContent) -> SimGuest {
    SimGuest::start(&guest_cfg(memory_mib, workload, content), u64::MAX).expect("guest")
}

pub fn guest_cfg(memory_mib: u64, workload: &str, content: InitialContent) -> SimGuestConfig {
    SimGuestConfig {
        memory_bytes: memory_mib << 20,
        workload: workload.into(),
        content,
        seed: 11,
    }
}

pub fn policy_cfg(memory_mib: u64) -> PolicyConfig {
    PolicyConfig {
        memory_bytes: (memory_mib << 20) as f64,
        max_rounds: 8,
        stop_remaining: 4.0 * MIB,
        min_bandwidth: 64.0 * MIB,
        max_bandwidth: 256.0 * MIB,
        ..PolicyConfig::default()
    }
}

/// Runs one migration of `g` to a receiver thread over loopback.
pub fn migrate_pair(
    g: &SimGuest,
    kind: PolicyKind,
    cfg: PolicyConfig,
    send_cfg: SenderConfig,
) -> (
    Result<MigrationReport, SendError>,
    Result<Received, RecvError>,
) {
    let (mut a, mut b) = pair();
    let dest = std::thread::spawn(move || receive(&mut b, &key(1), &ReceiverConfig::default()));
    let mut policy = kind.build(cfg.clone()).expect("policy");
    let send_cfg = SenderConfig {
        stop_remaining: cfg.stop_remaining,
        ..send_cfg
    };
    let r = migrate(&mut a, &key(1), g, policy.as_mut(), &send_cfg, &mut |_| {});
    drop(a);
    (r, dest.join().expect("receiver thread"))
}
