//! The hand-over is authenticated: a man-in-the-middle that relays the handshake cannot forge
//! or alter `State`, `Confirm` or `Ack`; the source keeps its guest. An untouched relay works.
//! Keep-alives (`Wait`) hold a peer through long local work.

mod common;

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use common::*;
use livemig_engine::receiver::{receive, ReceiverConfig, RecvError};
use livemig_engine::sender::{migrate, SendError, SenderConfig};
use livemig_engine::wire::{self, Message};
use livemig_engine::{Guest, InitialContent, SimGuest};
use livemig_policy::PolicyKind;

/// What the relay does with a frame.
enum Verdict {
    Forward,
    /// Drop the frame and answer its sender with these bytes instead.
    Answer(Vec<u8>),
    /// Write these frames instead, pausing before each.
    Slowly(Vec<Vec<u8>>, Duration),
}

type Rule = Box<dyn FnMut(&Message, &mut Vec<u8>) -> Verdict + Send>;

/// Decodes frames from `from` and writes them (as `rule` says) to `to`; answers go to `back`.
fn relay(mut from: TcpStream, mut to: TcpStream, mut back: TcpStream, mut rule: Rule) {
    while let Ok((m, _)) = Message::read_from(&mut from) {
        let mut f = m.encode();
        let sent = match rule(&m, &mut f) {
            Verdict::Forward => to.write_all(&f),
            Verdict::Answer(a) => back.write_all(&a),
            Verdict::Slowly(frames, pause) => frames.iter().try_for_each(|f| {
                std::thread::sleep(pause);
                to.write_all(f)
            }),
        };
        if sent.is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

/// Source -> relay -> destination, both directions decoded and subject to a rule.
fn migrate_through_mitm(
    g: &SimGuest,
    forward: Rule,
    backward: Rule,
) -> (
    Result<livemig_policy::report::MigrationReport, SendError>,
    Result<livemig_engine::Received, RecvError>,
) {
    migrate_through_mitm_within(g, forward, backward, Duration::from_secs(5))
}

/// [`migrate_through_mitm`] with the source's socket read timeout at `src_timeout`.
fn migrate_through_mitm_within(
    g: &SimGuest,
    forward: Rule,
    backward: Rule,
    src_timeout: Duration,
) -> (
    Result<livemig_policy::report::MigrationReport, SendError>,
    Result<livemig_engine::Received, RecvError>,
) {
    let (mut src, p_src) = pair();
    src.set_read_timeout(Some(src_timeout)).expect("timeout");
    let (p_dst, mut dst) = pair();
    let dest = std::thread::spawn(move || receive(&mut dst, &key(1), &ReceiverConfig::default()));
    let clone = |s: &TcpStream| s.try_clone().expect("clone");
    let fwd = {
        let (a, b, c) = (clone(&p_src), clone(&p_dst), clone(&p_src));
        std::thread::spawn(move || relay(a, b, c, forward))
    };
    let bwd = {
        let (a, b, c) = (clone(&p_dst), clone(&p_src), clone(&p_dst));
        std::thread::spawn(move || relay(a, b, c, backward))
    };
    let cfg = livemig_policy::PolicyConfig {
        fixed_bandwidth: Some(256.0 * MIB),
        max_rounds: 2,
        ..policy_cfg(8)
    };
    let mut policy = PolicyKind::Fixed.build(cfg).expect("policy");
    let send_cfg = SenderConfig {
        sample_s: 0.0,
        ..SenderConfig::default()
    };
    let r = migrate(
        &mut src,
        &key(1),
        g,
        policy.as_mut(),
        &send_cfg,
        &mut |_| {},
    );
    drop(src);
    let d = dest.join().expect("receiver thread");
    let _ = p_src.shutdown(Shutdown::Both);
    let _ = p_dst.shutdown(Shutdown::Both);
    let _ = fwd.join();
    let _ = bwd.join();
    (r, d)
}

fn small_guest() -> SimGuest {
    guest(8, "uniform:rate=4MiB/s", InitialContent::Random)
}

fn assert_runs(g: &SimGuest) {
    assert!(g.is_running(), "the source guest runs");
    let (a, _) = g.self_check();
    std::thread::sleep(Duration::from_millis(60));
    let (b, _) = g.self_check();
    assert!(b > a, "the source guest keeps writing ({a} -> {b})");
}

fn pass() -> Rule {
    Box::new(|_, _| Verdict::Forward)
}

#[test]
fn an_untouched_relay_migrates() {
    let g = small_guest();
    let (r, d) = migrate_through_mitm(&g, pass(), pass());
    r.expect("the source hands over");
    let d = d.expect("the destination verifies");
    assert_eq!(d.digest, g.memory().digest());
}

#[test]
fn a_forged_confirm_is_refused_and_the_source_keeps_its_guest() {
    let g = small_guest();
    // The relay keeps the state from the destination and answers the source itself with a
    // `Confirm{ok}` carrying the digest it read in the plaintext `State` (and, for good
    // measure, the state's own tag).
    let forge: Rule = Box::new(|m, _| match m {
        Message::State { digest, tag, .. } => Verdict::Answer(
            Message::Confirm {
                ok: true,
                digest: *digest,
                tag: *tag,
            }
            .encode(),
        ),
        _ => Verdict::Forward,
    });
    let (r, d) = migrate_through_mitm(&g, forge, pass());
    let e = r.expect_err("the source refuses the forged confirmation");
    assert!(matches!(e, SendError::Forged), "{e}");
    assert!(d.is_err(), "the destination has nothing");
    assert_runs(&g);
}

#[test]
fn a_flipped_byte_in_confirm_or_state_is_refused() {
    // In the destination's confirmation: the tag.
    let g = small_guest();
    let flip: Rule = Box::new(|m, f| {
        if matches!(m, Message::Confirm { .. }) {
            let n = f.len();
            f[n - 1] ^= 1;
        }
        Verdict::Forward
    });
    let (r, d) = migrate_through_mitm(&g, pass(), flip);
    let e = r.expect_err("refused");
    assert!(matches!(e, SendError::Forged), "{e}");
    assert!(d.is_err(), "no Ack, no guest on the destination");
    assert_runs(&g);

    // In the source's state: the destination refuses and says why.
    let g = small_guest();
    let flip: Rule = Box::new(|m, f| {
        if matches!(m, Message::State { .. }) {
            let n = f.len();
            f[n - 1] ^= 1;
        }
        Verdict::Forward
    });
    let (r, d) = migrate_through_mitm(&g, flip, pass());
    let d = d.expect_err("the destination refuses the state");
    assert!(matches!(d, RecvError::Forged { msg: "state" }), "{d}");
    let e = r.expect_err("the source is told");
    assert!(
        matches!(
            e,
            SendError::Refused {
                code: wire::code::AUTH,
                ..
            }
        ),
        "{e}"
    );
    assert_runs(&g);
}

#[test]
fn a_forged_ack_does_not_resume_a_guest() {
    // The relay swallows the real Ack and sends one with a bad tag.
    let g = small_guest();
    let forge: Rule = Box::new(|m, f| {
        if let Message::Ack { .. } = m {
            *f = Message::Ack {
                tag: [7; wire::TAG_LEN],
            }
            .encode();
        }
        Verdict::Forward
    });
    let (_, d) = migrate_through_mitm(&g, forge, pass());
    let d = d.expect_err("the destination refuses the ack");
    assert!(matches!(d, RecvError::Forged { msg: "ack" }), "{d}");
}

/// The destination's `Ready` comes 1.6 s late (a long prefault) with or without keep-alives
/// every 400 ms, to a source whose socket gives up after 1 s of silence.
fn late_ready(keepalive: bool) -> Result<livemig_policy::report::MigrationReport, SendError> {
    let g = small_guest();
    let slow: Rule = Box::new(move |m, f| {
        if !matches!(m, Message::Ready) {
            return Verdict::Forward;
        }
        let mut frames = vec![Message::Wait.encode(); 3];
        if !keepalive {
            frames = vec![Vec::new(); 3];
        }
        frames.push(f.clone());
        Verdict::Slowly(frames, Duration::from_millis(400))
    });
    let (r, _) = migrate_through_mitm_within(&g, pass(), slow, Duration::from_secs(1));
    if r.is_err() {
        assert_runs(&g);
    }
    r
}

#[test]
fn keep_alives_carry_the_source_through_a_long_prefault() {
    late_ready(true).expect("the source waits for a destination that says it is working");
    let e = late_ready(false).expect_err("silence times out");
    assert!(
        matches!(
            e,
            SendError::Wire {
                source: wire::WireError::TimedOut,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn a_keep_alive_before_authentication_is_refused() {
    let (mut a, mut b) = pair();
    let dest = std::thread::spawn(move || receive(&mut b, &key(1), &ReceiverConfig::default()));
    Message::Wait.write_to(&mut a).expect("write");
    let d = dest.join().expect("thread").expect_err("refused");
    assert!(matches!(d, RecvError::Transition { .. }), "{d}");
}
