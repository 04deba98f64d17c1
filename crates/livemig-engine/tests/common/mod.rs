//! Helpers shared by the engine's integration tests: loopback pairs, policies, migrations.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::sync::Mutex;
use std::time::Duration;

use livemig_engine::receiver::{receive_with, Host, Landing, ReceiverConfig, RecvError};
use livemig_engine::sender::{migrate, SendError, SenderConfig};
use livemig_engine::wire::{
    self, Frame, Message, ResolveDecision, ResolveStatus, WireError, PAGE_SIZE, SESSION_ID_LEN,
};
use livemig_engine::{Control, Guest};
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

/// What arrived on the destination: the guest (running: the source committed), and its
/// memory and self-check as they were handed over (before it resumed).
pub struct Arrived {
    pub guest: SimGuest,
    pub digest: u64,
    pub rounds: u32,
    pub memory_at_handover: Vec<u8>,
    pub self_check_at_handover: (u64, u64),
}

/// A single-connection host that snapshots the guest before the commit resumes it.
#[derive(Default)]
pub struct Snapshot(pub Mutex<Option<Taken>>);

/// Memory and self-check of a guest at one moment.
pub type Taken = (Vec<u8>, (u64, u64));

impl Host for Snapshot {
    fn claim(&self, _: &[u8; SESSION_ID_LEN]) -> bool {
        true
    }
    fn resolve(&self, _: &[u8; SESSION_ID_LEN], _: ResolveDecision) -> ResolveStatus {
        ResolveStatus::Unknown
    }
    fn before_resume(&self, g: &SimGuest) {
        *self.0.lock().expect("lock") = Some((memory_bytes(g), g.self_check()));
    }
}

/// All of a guest's memory, page after page.
pub fn memory_bytes(g: &dyn Guest) -> Vec<u8> {
    let m = g.memory();
    let mut out = vec![0u8; m.bytes() as usize];
    for (p, chunk) in out.chunks_mut(PAGE_SIZE).enumerate() {
        m.with_page(p as u64, |b| chunk.copy_from_slice(b))
            .expect("page");
    }
    out
}

/// Receives one migration on `stream` and snapshots it at the hand-over.
pub fn receive_snapshot(
    stream: &mut TcpStream,
    cfg: &ReceiverConfig,
) -> Result<Arrived, RecvError> {
    let host = Snapshot::default();
    match receive_with(stream, &key(1), cfg, &host)? {
        Landing::Migrated(r) => {
            let (mem, sc) = host.0.lock().expect("lock").take().expect("snapshot");
            Ok(Arrived {
                guest: r.guest,
                digest: r.digest,
                rounds: r.rounds,
                memory_at_handover: mem,
                self_check_at_handover: sc,
            })
        }
        Landing::Held(h) => Err(h.reason),
        Landing::Settled(s) => panic!("a migration connection settled {s:?}"),
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
    Result<Arrived, RecvError>,
) {
    migrate_pair_with(g, kind, cfg, send_cfg, &Control::new())
}

/// [`migrate_pair`] steered by `control`.
pub fn migrate_pair_with(
    g: &SimGuest,
    kind: PolicyKind,
    cfg: PolicyConfig,
    send_cfg: SenderConfig,
    control: &Control,
) -> (
    Result<MigrationReport, SendError>,
    Result<Arrived, RecvError>,
) {
    let (mut a, mut b) = pair();
    let dest = std::thread::spawn(move || receive_snapshot(&mut b, &ReceiverConfig::default()));
    let mut policy = kind.build(cfg.clone()).expect("policy");
    let send_cfg = SenderConfig {
        stop_remaining: cfg.stop_remaining,
        ..send_cfg
    };
    let r = migrate(
        &mut a,
        &key(1),
        g,
        policy.as_mut(),
        &send_cfg,
        control,
        &mut |_| {},
    );
    drop(a);
    (r, dest.join().expect("receiver thread"))
}

/// Reads one frame (tag not checked): its message and size on the wire.
pub fn read_msg(r: &mut impl std::io::Read) -> Result<(Message, usize), WireError> {
    wire::read_within(r, &mut Vec::new(), None).map(|f| (f.msg, f.wire_len))
}

/// Decodes one frame from bytes (tag not checked).
pub fn msg_from_bytes(b: &[u8]) -> Result<(Message, usize), WireError> {
    Frame::from_bytes(b).map(|f| (f.msg, f.wire_len))
}
