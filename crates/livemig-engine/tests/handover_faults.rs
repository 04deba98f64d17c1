//! The fault-injection matrix: a frame-aware proxy without the key sits between a real source
//! and a real destination (`serve`), and for every message type of the protocol drops the first
//! such frame, flips one bit in it, delays it past the deadline, or forwards it and cuts the
//! connection; plus forged keep-alives and a rewritten `Hello`. In every case:
//!
//! - at most one side runs the guest;
//! - at least one intact copy exists, checked page by page against the source's memory at
//!   pause (the source's own paused or running copy, the destination's copy at the moment the
//!   commit resumed it, or the destination's held copy);
//! - the two outcomes agree (a source that reports migrated has a destination that runs the
//!   guest; a source that runs the guest has a destination that does not);
//! - the pause is bounded by the maximum pause plus the resolve timeout.

mod common;

use std::io::Write;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use livemig_engine::serve::{serve, ServeConfig, ServeError, ServeEvent, Served};
use livemig_engine::wire::{self, Message, MsgType, HEADER_LEN};
use livemig_engine::{Guest, InitialContent, ReceiverConfig, SendError, SenderConfig, SimGuest};
use livemig_policy::{PolicyConfig, PolicyKind};

const TIMEOUT: Duration = Duration::from_millis(400);
const MAX_PAUSE: Duration = Duration::from_millis(1500);
const RESOLVE: Duration = Duration::from_millis(2500);
const HOLD: Duration = Duration::from_millis(4000);

/// Called by the destination->source relay with every frame's type before it is forwarded,
/// with both sockets (to inject frames).
type Inject = Arc<dyn Fn(MsgType, &mut TcpStream, &mut TcpStream) + Send + Sync>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Drop,
    Flip,
    Delay,
    CutAfter,
}

/// What the proxy does, once, to the first frame of `target` (after `primer`, if any, has
/// been applied to the first frame of its type, to make `target` appear at all).
#[derive(Debug, Clone, Copy)]
struct Rule {
    target: MsgType,
    fault: Fault,
    primer: Option<(MsgType, Fault)>,
}

#[derive(Default)]
struct ProxyState {
    primed: bool,
    fired: bool,
}

/// Relays frames from `from` to `to`, applying `rule` (shared by all connections: each fault
/// fires once).
fn relay(
    mut from: TcpStream,
    mut to: TcpStream,
    rule: Option<Rule>,
    state: Arc<Mutex<ProxyState>>,
    extra: Option<Inject>,
) {
    loop {
        let Ok((t, mut f)) = wire::read_raw_within(&mut from, None) else {
            let _ = to.shutdown(Shutdown::Both);
            return;
        };
        if let Some(x) = &extra {
            x(t, &mut from, &mut f_stream(&to));
        }
        let mut act = None;
        if let Some(r) = rule {
            let mut s = state.lock().expect("lock");
            match r.primer {
                Some((pt, pf)) if !s.primed && pt == t => {
                    s.primed = true;
                    act = Some(pf);
                }
                _ if r.target == t && !s.fired && (r.primer.is_none() || s.primed) => {
                    s.fired = true;
                    act = Some(r.fault);
                }
                _ => {}
            }
        }
        match act {
            None => {}
            Some(Fault::Drop) => continue,
            Some(Fault::Flip) => {
                // One bit: in the payload's last byte (the tag for tagged messages), or in the
                // header's type for an empty payload.
                let at = if f.len() > HEADER_LEN { f.len() - 1 } else { 6 };
                f[at] ^= 0x01;
            }
            Some(Fault::Delay) => std::thread::sleep(TIMEOUT * 3),
            Some(Fault::CutAfter) => {
                let _ = to.write_all(&f);
                let _ = to.shutdown(Shutdown::Both);
                let _ = from.shutdown(Shutdown::Both);
                return;
            }
        }
        if to.write_all(&f).is_err() {
            let _ = from.shutdown(Shutdown::Both);
            return;
        }
    }
}

fn f_stream(s: &TcpStream) -> TcpStream {
    s.try_clone().expect("clone")
}

/// The proxy: accepts on its own listener, connects each connection to `dest`.
fn proxy(
    listener: TcpListener,
    dest: std::net::SocketAddr,
    rule: Option<Rule>,
    stop: Arc<AtomicBool>,
    extra: Option<Inject>,
    partition: bool,
    state: Arc<Mutex<ProxyState>>,
) -> std::thread::JoinHandle<()> {
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let Ok((s, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            s.set_nonblocking(false).expect("blocking");
            if partition && state.lock().expect("lock").fired {
                // The network between the hosts is gone: reconnections die at once.
                drop(s);
                continue;
            }
            let Ok(d) = TcpStream::connect(dest) else {
                continue;
            };
            let (s2, d2) = (s.try_clone().expect("clone"), d.try_clone().expect("clone"));
            let (st, st2) = (Arc::clone(&state), Arc::clone(&state));
            let x = extra.clone();
            std::thread::spawn(move || relay(s, d, rule, st, None));
            std::thread::spawn(move || relay(d2, s2, rule, st2, x));
        }
    })
}

struct Run {
    /// Whether the fault was applied (the target frame appeared).
    fired: bool,
    source: Result<(), SendError>,
    dest: Result<Served, ServeError>,
    pause: Option<Duration>,
    at_pause: Option<Vec<u8>>,
    dest_at_handover: Option<Vec<u8>>,
    src: SimGuest,
}

fn run_case(rule: Option<Rule>, extra: Option<Inject>) -> Run {
    run_case_with(rule, extra, false)
}

fn run_case_with(rule: Option<Rule>, extra: Option<Inject>, partition: bool) -> Run {
    let dl = TcpListener::bind("127.0.0.1:0").expect("bind");
    let daddr = dl.local_addr().expect("addr");
    let pl = TcpListener::bind("127.0.0.1:0").expect("bind");
    let paddr = pl.local_addr().expect("addr");
    let stop = Arc::new(AtomicBool::new(false));
    let state = Arc::new(Mutex::new(ProxyState::default()));
    let px = proxy(
        pl,
        daddr,
        rule,
        Arc::clone(&stop),
        extra,
        partition,
        Arc::clone(&state),
    );

    let snap: Arc<Mutex<Option<Vec<u8>>>> = Arc::default();
    let snap2 = Arc::clone(&snap);
    let dest = std::thread::spawn(move || {
        let cfg = ServeConfig {
            receiver: ReceiverConfig {
                max_memory: 1 << 30,
                handshake_deadline: TIMEOUT,
                frame_deadline: TIMEOUT,
                keepalive: Duration::ZERO,
            },
            timeout: TIMEOUT,
            // Long enough for the source to connect on a loaded machine; the cases where no
            // source ever authenticates wait it out, four times per matrix test.
            accept_timeout: Duration::from_millis(2500),
            hold_timeout: HOLD,
            ..ServeConfig::default()
        };
        let log = move |e: &ServeEvent<'_>| {
            if let ServeEvent::Resuming { guest } = e {
                *snap2.lock().expect("lock") = Some(memory_bytes(*guest));
            }
        };
        serve(&dl, &key(1), &cfg, &AtomicBool::new(false), &log)
    });

    let src = guest(4, "uniform:rate=2MiB/s", InitialContent::Random);
    let cfg = PolicyConfig {
        max_rounds: 3,
        ..policy_cfg(4)
    };
    let mut policy = PolicyKind::Fixed.build(cfg.clone()).expect("policy");
    let send_cfg = SenderConfig {
        sample_s: 0.0,
        stop_remaining: cfg.stop_remaining,
        timeout: TIMEOUT,
        max_pause: MAX_PAUSE,
        resolve_timeout: RESOLVE,
        keepalive: Duration::ZERO,
        ..SenderConfig::default()
    };
    let mut paused_at = None;
    let mut at_pause = None;
    let src_ref = &src;
    let mut s = livemig_engine::net::connect(paddr, TIMEOUT).expect("connect");
    let mut redial =
        || livemig_engine::net::connect(paddr, TIMEOUT).map(livemig_engine::net::boxed);
    let r = livemig_engine::migrate_measured(
        &mut s,
        &key(1),
        &src,
        policy.as_mut(),
        &send_cfg,
        &livemig_engine::Control::new(),
        &mut |e| {
            if let livemig_engine::Event::StopAndCopy { .. } = e {
                paused_at = Some(Instant::now());
                at_pause = Some(memory_bytes(src_ref));
            }
        },
        Some(&mut redial),
    )
    .map(|_| ());
    let pause = paused_at.map(|t| t.elapsed());
    drop(s);
    let dest = dest.join().expect("destination thread");
    stop.store(true, Ordering::Relaxed);
    let _ = px.join();
    let dest_at_handover = snap.lock().expect("lock").take();
    let fired = state.lock().expect("lock").fired;
    Run {
        fired,
        source: r,
        dest,
        pause,
        at_pause,
        dest_at_handover,
        src,
    }
}

fn same_pages(a: &[u8], b: &[u8]) -> Result<(), usize> {
    if a.len() != b.len() {
        return Err(usize::MAX);
    }
    for (p, (x, y)) in a
        .chunks(wire::PAGE_SIZE)
        .zip(b.chunks(wire::PAGE_SIZE))
        .enumerate()
    {
        if x != y {
            return Err(p);
        }
    }
    Ok(())
}

/// Checks the invariants of one run; returns a one-word summary "source/destination".
fn check(name: &str, run: Run) -> String {
    let src_running = run.src.is_running();
    let (src_word, src_ok) = match &run.source {
        Ok(()) => ("migrated", !src_running),
        Err(e) if e.in_doubt() => ("unknown", !src_running),
        Err(_) => ("failed", src_running),
    };
    assert!(
        src_ok,
        "{name}: the source reports {src_word} but its guest running={src_running}"
    );
    let dest_word = match &run.dest {
        Ok(Served::Migrated(r)) => {
            assert!(r.guest.is_running(), "{name}: a migrated guest runs");
            "migrated"
        }
        Ok(Served::Failed(_)) => "failed",
        Ok(Served::Unknown(h)) => {
            assert!(!h.guest.is_running(), "{name}: a held copy is paused");
            "held"
        }
        Err(_) => "none",
    };
    // At most one side runs the guest.
    assert!(
        !(src_running && dest_word == "migrated"),
        "{name}: both sides run the guest"
    );
    // The outcomes agree.
    match src_word {
        "migrated" => assert_eq!(dest_word, "migrated", "{name}"),
        "failed" => assert_ne!(dest_word, "migrated", "{name}"),
        _ => {}
    }
    // At least one intact copy, page by page against the source's memory at pause.
    if let Some(at_pause) = &run.at_pause {
        match (src_word, &run.dest) {
            ("migrated", _) => {
                let d = run
                    .dest_at_handover
                    .as_ref()
                    .unwrap_or_else(|| panic!("{name}: no snapshot of the handed-over guest"));
                same_pages(at_pause, d)
                    .unwrap_or_else(|p| panic!("{name}: destination page {p} differs"));
            }
            ("unknown", Ok(Served::Unknown(h))) => {
                same_pages(at_pause, &memory_bytes(&h.guest))
                    .unwrap_or_else(|p| panic!("{name}: held page {p} differs"));
                same_pages(at_pause, &memory_bytes(&run.src))
                    .unwrap_or_else(|p| panic!("{name}: paused source page {p} differs"));
            }
            ("unknown", _) => {
                same_pages(at_pause, &memory_bytes(&run.src))
                    .unwrap_or_else(|p| panic!("{name}: paused source page {p} differs"));
            }
            _ => {} // the source runs its own original
        }
        // The pause is bounded.
        let pause = run.pause.unwrap_or_default();
        if src_word != "unknown" {
            assert!(
                pause <= MAX_PAUSE + RESOLVE + Duration::from_millis(1500),
                "{name}: paused {pause:?}"
            );
        }
    }
    format!("{src_word}/{dest_word}")
}

fn rule(target: MsgType, fault: Fault) -> Rule {
    let primer = match target {
        // Only sent when a hand-over is settled by reconnecting: lose `Running` first.
        MsgType::Resolve | MsgType::Resolved => Some((MsgType::Running, Fault::Drop)),
        // Only sent when the source does not commit: spoil `Confirm` first.
        MsgType::Abort => Some((MsgType::Confirm, Fault::Flip)),
        // Only sent on failure: spoil a page batch's count first.
        MsgType::Error => Some((MsgType::Pages, Fault::Flip)),
        _ => None,
    };
    Rule {
        target,
        fault,
        primer,
    }
}

/// What each cell must end in, "source/destination" (`none`: the destination never saw an
/// authenticated source and is still waiting at its accept deadline).
fn expected(target: MsgType, fault: Fault) -> &'static str {
    use Fault::*;
    use MsgType::*;
    match (target, fault) {
        // Before authentication: the source fails; the destination keeps waiting.
        (Hello | Challenge, _) | (Auth, Drop | Flip | Delay) => "failed/none",
        (Auth, CutAfter) => "failed/failed",
        // Before the destination holds a verified copy: both fail, the source runs the guest.
        (Ready | RoundStart | Pages | RoundEnd | StopCopy | State | Wait | Abort | Error, _) => {
            "failed/failed"
        }
        // The verdict lost, forged or late: the source never commits.
        (Confirm, Drop | Flip | Delay) => "failed/failed",
        // The verdict arrived, then the cut: the source commits by reconnecting.
        (Confirm, CutAfter) => "migrated/migrated",
        // After the commit point every single fault is settled by reconnecting.
        (Commit | Running | Done | Resolve | Resolved, _) => "migrated/migrated",
        // Never sent between two ends of one build (they share their versions).
        (Versions, _) => "failed/none",
        (Invalid, _) => "failed/failed",
    }
}

fn matrix(target: MsgType) {
    let mut outcomes = Vec::new();
    for fault in [Fault::Drop, Fault::Flip, Fault::Delay, Fault::CutAfter] {
        let name = format!("{fault:?} {target:?}");
        let run = run_case(Some(rule(target, fault)), None);
        assert!(run.fired, "{name}: the fault never applied (no such frame)");
        let o = check(&name, run);
        assert_eq!(o, expected(target, fault), "{name}");
        outcomes.push(format!("{name}: {o}"));
    }
    eprintln!("{}", outcomes.join("\n"));
}

macro_rules! matrix_tests {
    ($($name:ident => $t:expr,)*) => {
        $(
            #[test]
            fn $name() {
                matrix($t);
            }
        )*
    };
}

matrix_tests! {
    hello => MsgType::Hello,
    challenge => MsgType::Challenge,
    auth => MsgType::Auth,
    ready => MsgType::Ready,
    round_start => MsgType::RoundStart,
    pages => MsgType::Pages,
    round_end => MsgType::RoundEnd,
    stop_copy => MsgType::StopCopy,
    state => MsgType::State,
    confirm => MsgType::Confirm,
    commit => MsgType::Commit,
    error => MsgType::Error,
    wait => MsgType::Wait,
    running => MsgType::Running,
    abort => MsgType::Abort,
    resolve => MsgType::Resolve,
    resolved => MsgType::Resolved,
    done => MsgType::Done,
}

#[test]
fn an_untouched_proxy_migrates() {
    let run = run_case(None, None);
    assert_eq!(check("clean", run), "migrated/migrated");
}

#[test]
fn forged_keep_alives_do_not_hold_a_paused_guest() {
    // When the source sends `State`, the proxy answers it with a stream of untagged `Wait`
    // frames, as v2 accepted 3600 of them.
    let inject: Inject = Arc::new(|t, _from, to| {
        // Runs on the destination->source relay: before the destination's first answer
        // after `State` (its `Confirm`), flood the source with forged keep-alives.
        if t == MsgType::Confirm {
            for _ in 0..50 {
                let _ = to.write_all(&Message::Wait.encode());
            }
        }
    });
    let t0 = Instant::now();
    let run = run_case(None, Some(inject));
    let o = check("forged waits", run);
    assert!(
        o.starts_with("failed/"),
        "a forged keep-alive fails the hand-over: {o}"
    );
    assert!(t0.elapsed() < Duration::from_secs(15));
}

/// A source and a destination with a proxy between them that applies `rewrite` to the `Hello`
/// frame (header included) and relays everything else untouched. Returns both ends' errors.
fn rewrite_hello(
    rewrite: impl FnOnce(&mut Vec<u8>) + Send + 'static,
) -> (SendError, livemig_engine::RecvError) {
    let dl = TcpListener::bind("127.0.0.1:0").expect("bind");
    let daddr = dl.local_addr().expect("addr");
    let (mut s, mut p) = pair();
    let d = std::thread::spawn(move || {
        let (mut c, _) = dl.accept().expect("accept");
        c.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        let cfg = ReceiverConfig {
            max_memory: 2 << 30,
            handshake_deadline: TIMEOUT,
            frame_deadline: TIMEOUT,
            ..ReceiverConfig::default()
        };
        livemig_engine::receive(&mut c, &key(1), &cfg).map(|_| ())
    });
    let mut to_d = TcpStream::connect(daddr).expect("connect");
    let relay_hello = std::thread::spawn(move || {
        let (_, mut f) = wire::read_raw_within(&mut p, None).expect("hello");
        rewrite(&mut f);
        to_d.write_all(&f).expect("forward");
        let mut back = to_d.try_clone().expect("clone");
        let mut p2 = p.try_clone().expect("clone");
        let t = std::thread::spawn(move || {
            let _ = std::io::copy(&mut back, &mut p2);
        });
        let _ = std::io::copy(&mut p, &mut to_d);
        let _ = t.join();
    });
    let src = guest(4, "idle", InitialContent::Random);
    let mut policy = PolicyKind::Fixed.build(policy_cfg(4)).expect("policy");
    let e = livemig_engine::migrate(
        &mut s,
        &key(1),
        &src,
        policy.as_mut(),
        &SenderConfig {
            sample_s: 0.0,
            timeout: TIMEOUT,
            max_pause: MAX_PAUSE,
            ..SenderConfig::default()
        },
        &livemig_engine::Control::new(),
        &mut |_| {},
    )
    .expect_err("refused");
    assert!(src.is_running());
    drop(s);
    let de = d
        .join()
        .expect("thread")
        .expect_err("the destination gets no source");
    let _ = relay_hello.join();
    (e, de)
}

#[test]
fn a_rewritten_hello_is_refused_and_nothing_is_allocated() {
    // The proxy rewrites `memory_bytes` in `Hello` (4 MiB -> 1 GiB) and fixes nothing else: the
    // destination's proof covers what it received, the source's check fails, and the source
    // never proves the key, so the destination never allocates.
    let (e, de) = rewrite_hello(|f| {
        let at = HEADER_LEN + 4 + 32;
        f[at..at + 8].copy_from_slice(&(1u64 << 30).to_le_bytes());
    });
    assert!(matches!(e, SendError::Auth), "{e}");
    assert!(
        de.before_auth(),
        "the source never proved the key, so nothing was allocated: {de}"
    );
}

#[test]
fn a_rewritten_version_range_fails_authentication() {
    // A downgrade: the proxy rewrites the versions the source offers (as if it also spoke an
    // older version; with a v4 source it would narrow 3–4 to 3–3 so that both settle on v3).
    // The destination still finds a common version and answers, but both proofs cover the
    // Hello as each end saw it: the source refuses the destination's proof and never proves
    // the key.
    let (e, de) = rewrite_hello(|f| {
        f[HEADER_LEN..HEADER_LEN + 2].copy_from_slice(&1u16.to_le_bytes());
    });
    assert!(matches!(e, SendError::Auth), "{e}");
    assert!(de.before_auth(), "{de}");
    assert!(
        matches!(
            de,
            livemig_engine::RecvError::Aborted {
                code: wire::code::AUTH,
                ..
            }
        ),
        "the source says why: {de}"
    );
}

#[test]
fn a_partition_after_commit_leaves_both_copies_paused_and_intact() {
    // `Commit` is lost and the network stays down: the source cannot learn whether the
    // destination runs the guest, and the destination never heard the commit. Neither may run
    // it; both keep an intact copy; both say so.
    let run = run_case_with(Some(rule(MsgType::Commit, Fault::Drop)), None, true);
    let at_pause = run.at_pause.clone().expect("paused");
    let src_paused = !run.src.is_running();
    let Err(e) = &run.source else {
        panic!("the source cannot have handed over")
    };
    assert!(e.in_doubt(), "{e}");
    assert!(src_paused, "the source keeps its copy paused");
    let Ok(Served::Unknown(h)) = &run.dest else {
        panic!(
            "the destination holds its copy: {:?}",
            run.dest.as_ref().map(|_| ())
        )
    };
    assert!(!h.guest.is_running());
    assert_eq!(h.session.len(), 16);
    same_pages(&at_pause, &memory_bytes(&h.guest)).expect("the held copy is intact");
    same_pages(&at_pause, &memory_bytes(&run.src)).expect("the source copy is intact");
    assert_eq!(check("partition", run), "unknown/held");
}
