//! Faults: a killed destination, a cut during stop-and-copy, a wrong key, a version mismatch,
//! truncated, oversized and garbage frames, a corrupted page, a silent peer. The source guest
//! keeps or resumes running, the error says why, the destination keeps nothing, nothing panics.

mod common;

use std::error::Error as _;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::Duration;

use common::*;
use livemig_engine::auth::{Channel, Role, Transcript};
use livemig_engine::receiver::{receive, ReceiverConfig, RecvError};
use livemig_engine::sender::{migrate, SendError, SenderConfig};
use livemig_engine::wire::{
    self, Header, Message, MsgType, NoCommonVersion, Versions, WireError, MAX_PAYLOAD, VERSION,
};
use livemig_engine::{Guest, InitialContent, SimGuest};
use livemig_policy::PolicyKind;

fn assert_runs(g: &SimGuest) {
    assert!(g.is_running(), "the source guest runs");
    let (a, _) = g.self_check();
    std::thread::sleep(Duration::from_millis(60));
    let (b, _) = g.self_check();
    assert!(b > a, "the source guest keeps writing ({a} -> {b})");
}

fn busy_guest() -> SimGuest {
    guest(32, "uniform:rate=8MiB/s", InitialContent::Random)
}

fn sender_cfg() -> SenderConfig {
    SenderConfig {
        sample_s: 0.0,
        ..SenderConfig::default()
    }
}

/// What the proxy does with a frame from the source.
enum Verdict {
    Forward,
    Cut,
}

/// Source -> proxy -> receiver. The proxy decodes every frame from the source and asks `rule`;
/// the destination's answers pass through untouched.
/// A destination played by the test: answers the source's `Hello` with a proper proof under
/// `key(1)`, reads its `Auth`, and returns the session channel (nothing allocated, no `Ready`).
fn fake_destination_handshake(b: &mut std::net::TcpStream) -> Channel {
    let (hello @ Message::Hello { .. }, _) = read_msg(b).expect("hello") else {
        panic!("not a hello")
    };
    let nd = [9u8; 32];
    let body = hello.body();
    let t = Transcript {
        hello: &body,
        version: VERSION,
        dest_nonce: &nd,
    };
    let mac = key(1).prove(Role::Destination, &t);
    Message::Challenge {
        version: VERSION,
        nonce: nd,
        mac,
    }
    .write_to(b)
    .expect("challenge");
    let _ = read_msg(b).expect("auth");
    Channel::new(key(1).session(&t), Role::Destination)
}

fn migrate_through_proxy(
    g: &SimGuest,
    cfg: livemig_policy::PolicyConfig,
    mut rule: impl FnMut(&Message, &mut Vec<u8>) -> Verdict + Send + 'static,
) -> (Result<(), SendError>, Result<(), RecvError>) {
    let (mut src, mut p_src) = pair();
    let (mut p_dst, mut dst) = pair();
    let dest = std::thread::spawn(move || {
        receive(&mut dst, &key(1), &ReceiverConfig::default()).map(|_| ())
    });
    let mut back_r = p_dst.try_clone().expect("clone");
    let mut back_w = p_src.try_clone().expect("clone");
    let back = std::thread::spawn(move || {
        let _ = std::io::copy(&mut back_r, &mut back_w);
        let _ = back_w.shutdown(Shutdown::Both);
    });
    let proxy = std::thread::spawn(move || loop {
        let Ok((_, mut f)) = wire::read_raw_within(&mut p_src, None) else {
            let _ = p_dst.shutdown(Shutdown::Both);
            return;
        };
        let Ok((m, _)) = msg_from_bytes(&f) else {
            return;
        };
        match rule(&m, &mut f) {
            Verdict::Forward => {
                if p_dst.write_all(&f).is_err() {
                    // The destination closed: its last words (an `Error`) are on their way
                    // back; the back copier closes the source's side once they are through.
                    // Closing it here could lose them.
                    return;
                }
            }
            Verdict::Cut => {
                let _ = p_src.shutdown(Shutdown::Both);
                let _ = p_dst.shutdown(Shutdown::Both);
                return;
            }
        }
    });
    let mut policy = PolicyKind::Fixed.build(cfg).expect("policy");
    let r = migrate(
        &mut src,
        &key(1),
        g,
        policy.as_mut(),
        &sender_cfg(),
        &livemig_engine::Control::new(),
        &mut |_| {},
    )
    .map(|_| ());
    drop(src);
    let d = dest.join().expect("receiver thread");
    let _ = proxy.join();
    let _ = back.join();
    (r, d)
}

#[test]
fn destination_killed_mid_round() {
    let g = busy_guest();
    let mut frames = 0;
    let (r, d) = migrate_through_proxy(&g, slow_cfg(), move |m, _| {
        if matches!(m, Message::Pages(_)) {
            frames += 1;
            if frames == 20 {
                return Verdict::Cut;
            }
        }
        Verdict::Forward
    });
    let e = r.expect_err("the source fails");
    assert!(
        matches!(
            e,
            SendError::Wire {
                phase: "pre-copy",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("pre-copy"), "{e}");
    let d = d.expect_err("the destination fails");
    assert!(matches!(d, RecvError::Wire { .. }), "{d}");
    assert_runs(&g);
}

/// A fixed 32 MiB/s cap: round 1 of a 32 MiB guest takes about a second.
fn slow_cfg() -> livemig_policy::PolicyConfig {
    livemig_policy::PolicyConfig {
        fixed_bandwidth: Some(32.0 * MIB),
        max_rounds: 2,
        ..policy_cfg(32)
    }
}

#[test]
fn connection_cut_during_stop_and_copy_resumes_the_source() {
    let g = busy_guest();
    let mut stopping = false;
    let (r, d) = migrate_through_proxy(&g, slow_cfg(), move |m, _| {
        if matches!(m, Message::StopCopy { .. }) {
            stopping = true;
        }
        if stopping && matches!(m, Message::Pages(_) | Message::State { .. }) {
            return Verdict::Cut;
        }
        Verdict::Forward
    });
    let e = r.expect_err("the source fails");
    assert!(
        matches!(
            e,
            SendError::Wire {
                phase: "stop-and-copy" | "waiting for the destination's confirmation",
                ..
            }
        ),
        "{e}"
    );
    assert!(d.is_err(), "the destination discards its partial memory");
    assert_runs(&g);
}

#[test]
fn a_corrupted_page_fails_its_tag_and_the_source_resumes() {
    let g = guest(16, "idle", InitialContent::Random);
    let mut done = false;
    let (r, d) = migrate_through_proxy(&g, slow_cfg_16(), move |m, f| {
        if !done && matches!(m, Message::Pages(_)) {
            let n = f.len();
            f[n - 1] ^= 0xff;
            done = true;
        }
        Verdict::Forward
    });
    // Pages are tagged: the altered batch is refused where it arrives, long before the digest.
    let e = r.expect_err("the source refuses the hand-over");
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
    let d = d.expect_err("the destination fails");
    assert!(matches!(d, RecvError::Forged { .. }), "{d}");
    assert!(g.is_running(), "the source guest runs again");
}

fn slow_cfg_16() -> livemig_policy::PolicyConfig {
    livemig_policy::PolicyConfig {
        fixed_bandwidth: Some(64.0 * MIB),
        max_rounds: 1,
        ..policy_cfg(16)
    }
}

#[test]
fn wrong_key_is_refused_by_both_ends() {
    let g = busy_guest();
    let (mut a, mut b) = pair();
    let dest = std::thread::spawn(move || receive(&mut b, &key(2), &ReceiverConfig::default()));
    let mut policy = PolicyKind::Fixed.build(policy_cfg(32)).expect("policy");
    let e = migrate(
        &mut a,
        &key(1),
        &g,
        policy.as_mut(),
        &sender_cfg(),
        &livemig_engine::Control::new(),
        &mut |_| {},
    )
    .expect_err("refused");
    assert!(matches!(e, SendError::Auth), "{e}");
    assert!(e.to_string().contains("wrong key"), "{e}");
    let d = dest.join().expect("thread").expect_err("refused");
    assert!(
        matches!(
            d,
            RecvError::Aborted {
                code: wire::code::AUTH,
                ..
            }
        ),
        "{d}"
    );
    assert_runs(&g);
}

fn raw_to_receiver(bytes: Vec<u8>, close: bool) -> (RecvError, Vec<u8>) {
    let (mut a, mut b) = pair();
    let dest = std::thread::spawn(move || receive(&mut b, &key(1), &ReceiverConfig::default()));
    let _ = a.write_all(&bytes);
    if close {
        let _ = a.shutdown(Shutdown::Write);
    }
    let d = dest.join().expect("no panic").expect_err("refused");
    let mut reply = Vec::new();
    let _ = a.read_to_end(&mut reply);
    (d, reply)
}

#[test]
fn version_mismatch_is_answered_and_refused() {
    let mut f = Message::Hello {
        versions: Versions::THIS_BUILD,
        nonce: [1; 32],
        memory_bytes: 1 << 20,
        page_size: 4096,
        compress: false,
        mode: wire::Mode::Migrate,
    }
    .encode();
    // An older peer (version 1 had no session tags).
    f[4..6].copy_from_slice(&1u16.to_le_bytes());
    let (d, reply) = raw_to_receiver(f, false);
    assert!(
        matches!(
            d,
            RecvError::Wire {
                source: WireError::Version { got: 1 },
                ..
            }
        ),
        "{d}"
    );
    let why = d.source().map(|s| s.to_string()).unwrap_or_default();
    assert!(why.contains("version mismatch"), "{why}");
    let (m, _) = msg_from_bytes(&reply).expect("an error frame");
    assert!(
        matches!(
            m,
            Message::Error {
                code: wire::code::VERSION,
                ..
            }
        ),
        "{m:?}"
    );

    // The versions offered inside the hello count too: none in common is refused with the
    // versions this build speaks.
    let nine = Versions::new(9, 9).expect("a range");
    let f = Message::Hello {
        versions: nine,
        nonce: [1; 32],
        memory_bytes: 1 << 20,
        page_size: 4096,
        compress: false,
        mode: wire::Mode::Migrate,
    }
    .encode();
    let (d, reply) = raw_to_receiver(f, false);
    assert!(
        matches!(
            d,
            RecvError::Version(NoCommonVersion {
                peer,
                ours: Versions::THIS_BUILD,
            }) if peer == nine
        ),
        "{d}"
    );
    let (m, _) = msg_from_bytes(&reply).expect("an answer");
    assert_eq!(m, Message::Versions(Versions::THIS_BUILD));
}

#[test]
fn truncated_oversized_and_garbage_frames_are_refused() {
    let f = Message::Hello {
        versions: Versions::THIS_BUILD,
        nonce: [1; 32],
        memory_bytes: 1 << 20,
        page_size: 4096,
        compress: false,
        mode: wire::Mode::Migrate,
    }
    .encode();
    let (d, _) = raw_to_receiver(f[..20].to_vec(), true);
    assert!(
        matches!(
            d,
            RecvError::Wire {
                source: WireError::Truncated,
                ..
            }
        ),
        "{d}"
    );

    let h = Header {
        version: VERSION,
        msg_type: MsgType::Pages as u16,
        len: MAX_PAYLOAD + 1,
    };
    let (d, reply) = raw_to_receiver(h.encode().to_vec(), false);
    assert!(
        matches!(
            d,
            RecvError::Wire {
                source: WireError::TooLong { .. },
                ..
            }
        ),
        "{d}"
    );
    assert!(msg_from_bytes(&reply).is_ok(), "the source is told why");

    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let (d, _) = raw_to_receiver(garbage, true);
    assert!(
        matches!(
            d,
            RecvError::Wire {
                source: WireError::BadMagic(_),
                ..
            }
        ),
        "{d}"
    );

    // A hello asking for more memory than the host takes is refused before any allocation.
    let f = Message::Hello {
        versions: Versions::THIS_BUILD,
        nonce: [1; 32],
        memory_bytes: 1 << 50,
        page_size: 4096,
        compress: false,
        mode: wire::Mode::Migrate,
    }
    .encode();
    let (d, _) = raw_to_receiver(f, false);
    assert!(matches!(d, RecvError::Geometry { .. }), "{d}");

    // A page frame before the handshake is a protocol violation.
    let mut w = wire::BatchWriter::new(false);
    w.push(0, &[1; 4096]);
    let (d, _) = raw_to_receiver(w.frame().to_vec(), false);
    assert!(matches!(d, RecvError::Transition { .. }), "{d}");
}

#[test]
fn a_garbage_speaking_destination_leaves_the_source_running() {
    let g = busy_guest();
    let (mut a, mut b) = pair();
    let fake = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        let _ = b.read(&mut buf);
        let _ = b.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
    });
    let mut policy = PolicyKind::Fixed.build(policy_cfg(32)).expect("policy");
    let e = migrate(
        &mut a,
        &key(1),
        &g,
        policy.as_mut(),
        &sender_cfg(),
        &livemig_engine::Control::new(),
        &mut |_| {},
    )
    .expect_err("refused");
    assert!(
        matches!(
            e,
            SendError::Wire {
                source: WireError::BadMagic(_),
                ..
            }
        ),
        "{e}"
    );
    fake.join().expect("thread");
    assert_runs(&g);
}

#[test]
fn a_trickling_peer_is_cut_off_by_the_handshake_deadline() {
    // One byte every 100 ms: each read is well within the socket timeout (5 s), but the
    // handshake must be complete within 500 ms.
    let (mut a, mut b) = pair();
    let cfg = ReceiverConfig {
        handshake_deadline: Duration::from_millis(500),
        ..ReceiverConfig::default()
    };
    let dest = std::thread::spawn(move || {
        let t0 = std::time::Instant::now();
        (receive(&mut b, &key(1), &cfg), t0.elapsed())
    });
    let hello = Message::Hello {
        versions: Versions::THIS_BUILD,
        nonce: [1; 32],
        memory_bytes: 1 << 20,
        page_size: 4096,
        compress: false,
        mode: wire::Mode::Migrate,
    }
    .encode();
    for byte in hello {
        if a.write_all(&[byte]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        if dest.is_finished() {
            break;
        }
    }
    let (d, took) = dest.join().expect("no panic");
    let d = d.expect_err("cut off");
    assert!(
        matches!(
            d,
            RecvError::Wire {
                source: WireError::Deadline(_),
                ..
            }
        ),
        "{d}"
    );
    assert!(d.before_auth(), "a stray peer, not a source");
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

#[test]
fn a_silent_peer_times_out() {
    let (a, mut b) = pair();
    b.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let short = ReceiverConfig {
        handshake_deadline: Duration::from_millis(300),
        frame_deadline: Duration::from_millis(300),
        ..ReceiverConfig::default()
    };
    let d = receive(&mut b, &key(1), &short).expect_err("times out");
    assert!(
        matches!(
            d,
            RecvError::Wire {
                source: WireError::Deadline(_),
                ..
            }
        ),
        "{d}"
    );
    drop(a);

    let g = busy_guest();
    let (mut a, b) = pair();
    a.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut policy = PolicyKind::Fixed.build(policy_cfg(32)).expect("policy");
    let e = migrate(
        &mut a,
        &key(1),
        &g,
        policy.as_mut(),
        &SenderConfig {
            timeout: Duration::from_millis(300),
            max_pause: Duration::from_secs(1),
            ..sender_cfg()
        },
        &livemig_engine::Control::new(),
        &mut |_| {},
    )
    .expect_err("times out");
    assert!(
        matches!(
            e,
            SendError::Wire {
                source: WireError::Deadline(_),
                ..
            }
        ),
        "{e}"
    );
    drop(b);
    assert_runs(&g);
}

#[test]
fn a_destination_refusing_mid_round_is_reported_with_its_reason() {
    // A destination that authenticates properly, reads a little of round 1, then refuses and
    // closes with unread data in its socket.
    let g = busy_guest();
    let (mut a, mut b) = pair();
    let fake = std::thread::spawn(move || {
        let mut chan = fake_destination_handshake(&mut b);
        b.write_all(&chan.seal(&Message::Ready)).expect("ready");
        for _ in 0..3 {
            let _ = read_msg(&mut b).expect("a frame");
        }
        Message::error(wire::code::RESOURCES, "the destination ran out of disk")
            .write_to(&mut b)
            .expect("error");
        drop(b);
    });
    let mut policy = PolicyKind::Fixed.build(slow_cfg()).expect("policy");
    let e = migrate(
        &mut a,
        &key(1),
        &g,
        policy.as_mut(),
        &sender_cfg(),
        &livemig_engine::Control::new(),
        &mut |_| {},
    )
    .expect_err("refused");
    fake.join().expect("thread");
    assert!(
        matches!(
            e,
            SendError::Refused {
                phase: "pre-copy",
                code: wire::code::RESOURCES,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("ran out of disk"), "{e}");
    assert_runs(&g);
}

#[test]
fn a_cancelled_migration_leaves_the_guest_running_and_the_destination_empty() {
    let g = busy_guest();
    let control = livemig_engine::Control::new();
    let later = control.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        later.cancel();
    });
    // 32 MiB at 8 MiB/s: round 1 alone takes about 4 s, so the cancel lands mid-round.
    let cfg = livemig_policy::PolicyConfig {
        fixed_bandwidth: Some(8.0 * MIB),
        ..policy_cfg(32)
    };
    let t0 = std::time::Instant::now();
    let (r, d) = migrate_pair_with(&g, PolicyKind::Fixed, cfg, sender_cfg(), &control);
    t.join().expect("canceller");
    let e = r.expect_err("cancelled");
    assert!(matches!(e, SendError::Cancelled { .. }), "{e}");
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "stopped within a frame or so"
    );
    let d = d.err().expect("the destination keeps nothing");
    assert!(
        matches!(
            d,
            RecvError::Aborted {
                code: wire::code::CANCELLED,
                ..
            }
        ),
        "{d}"
    );
    assert_runs(&g);
}

/// A round cut short (its `RoundEnd` counts fewer pages than its `RoundStart` announced, as a
/// forced stop does) must be the last: a source that starts another round after it is refused.
#[test]
fn a_round_cut_short_must_be_followed_by_the_stop_and_copy() {
    let (mut a, mut b) = pair();
    let dest = std::thread::spawn(move || receive(&mut b, &key(1), &ReceiverConfig::default()));
    let hello = Message::Hello {
        versions: Versions::THIS_BUILD,
        nonce: [5; 32],
        memory_bytes: 16 * 4096,
        page_size: 4096,
        compress: false,
        mode: wire::Mode::Migrate,
    };
    let body = hello.body();
    hello.write_to(&mut a).expect("hello");
    let (Message::Challenge { version, nonce, .. }, _) = read_msg(&mut a).expect("challenge")
    else {
        panic!("no challenge")
    };
    let t = Transcript {
        hello: &body,
        version,
        dest_nonce: &nonce,
    };
    Message::Auth {
        mac: key(1).prove(Role::Source, &t),
    }
    .write_to(&mut a)
    .expect("auth");
    let mut chan = Channel::new(key(1).session(&t), Role::Source);
    loop {
        match read_msg(&mut a).expect("ready").0 {
            Message::Ready => break,
            Message::Wait => continue,
            m => panic!("{m:?}"),
        }
    }
    a.write_all(&chan.seal(&Message::RoundStart {
        round: 1,
        pages: 16,
    }))
    .expect("start");
    let mut batch = wire::BatchWriter::new(false);
    assert!(batch.push(0, &[7u8; 4096]));
    a.write_all(chan.seal_pages(&mut batch)).expect("pages");
    a.write_all(&chan.seal(&Message::RoundEnd { round: 1, pages: 1 }))
        .expect("a short end");
    a.write_all(&chan.seal(&Message::RoundStart { round: 2, pages: 1 }))
        .expect("another round");
    let e = dest.join().expect("no panic").expect_err("refused");
    assert!(
        matches!(
            e,
            RecvError::Transition {
                got: MsgType::RoundStart,
                ..
            }
        ),
        "{e:?}"
    );
}

/// A destination that keeps the source waiting (`Wait` after `Wait`, as during a long
/// prefault) cannot hold a cancellation back: the source stops within a keep-alive or two,
/// its guest running.
#[test]
fn a_cancel_is_honoured_while_the_destination_keeps_the_source_waiting() {
    let g = busy_guest();
    let (mut a, mut b) = pair();
    let fake = std::thread::spawn(move || {
        let mut chan = fake_destination_handshake(&mut b);
        // "Still preparing memory", for up to 20 s, never `Ready`.
        for _ in 0..100 {
            if b.write_all(&chan.seal(&Message::Wait)).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let control = livemig_engine::Control::new();
    let later = control.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(600));
        later.cancel();
    });
    let started = std::time::Instant::now();
    let mut policy = PolicyKind::Fixed.build(slow_cfg()).expect("policy");
    let e = migrate(
        &mut a,
        &key(1),
        &g,
        policy.as_mut(),
        &sender_cfg(),
        &control,
        &mut |_| {},
    )
    .expect_err("cancelled");
    assert!(matches!(e, SendError::Cancelled { .. }), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stopped after {:?}",
        started.elapsed()
    );
    drop(a);
    let _ = fake.join();
    assert_runs(&g);
}
