//! Version negotiation in the first message: the destination picks the highest version both
//! ends speak; ends with no version in common are refused on both sides with both ranges
//! named; a peer of version 2 (before negotiation) is refused clearly, never with a panic or a
//! hang.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use livemig_engine::auth::{Channel, Role, Transcript};
use livemig_engine::receiver::{receive, ReceiverConfig, RecvError};
use livemig_engine::sender::{migrate, SendError, SenderConfig};
use livemig_engine::wire::{
    self, Frame, Header, Message, MsgType, NoCommonVersion, Versions, WireError, VERSION,
};
use livemig_engine::{Guest, InitialContent, SimGuest};
use livemig_policy::PolicyKind;

fn range(min: u16, max: u16) -> Versions {
    Versions::new(min, max).expect("a range")
}

fn hello(versions: Versions) -> Message {
    Message::Hello {
        versions,
        nonce: [5; 32],
        memory_bytes: 1 << 20,
        page_size: 4096,
        compress: false,
        mode: wire::Mode::Migrate,
    }
}

fn read_frame(r: &mut TcpStream) -> Frame {
    wire::read_within(r, &mut Vec::new(), None).expect("a frame")
}

/// A source (played by the test) offering `offer` in a `Hello` whose header names `header`,
/// against a real destination. Returns the destination's answer and the destination itself
/// (still running when the answer was a `Challenge`), with the test's end of the connection.
fn offer_to_receiver(
    offer: Versions,
    header: u16,
) -> (
    Frame,
    std::thread::JoinHandle<Result<(), RecvError>>,
    TcpStream,
    Message,
) {
    let (mut a, mut b) = pair();
    let dest = std::thread::spawn(move || {
        receive(&mut b, &key(1), &ReceiverConfig::default()).map(|_| ())
    });
    let h = hello(offer);
    a.write_all(&h.encode_as(header)).expect("write");
    (read_frame(&mut a), dest, a, h)
}

#[test]
fn the_destination_picks_the_highest_common_version() {
    // A version 3 build, this one, a future build that speaks 3 to 5, a build that also kept
    // older versions: each meets this destination (3–4) on the highest version both speak.
    for (offer, header, chosen) in [
        (range(3, 3), 3, 3),
        (range(3, 4), 4, 4),
        (range(3, 5), 5, 4),
        (range(1, 7), 7, 4),
        (range(2, 3), 3, 3),
    ] {
        let (answer, dest, a, h) = offer_to_receiver(offer, header);
        let Message::Challenge {
            version,
            nonce,
            mac,
        } = answer.msg
        else {
            panic!("{offer}: expected a challenge, got {:?}", answer.msg)
        };
        assert_eq!(version, chosen, "{offer}");
        assert_eq!(
            answer.version, chosen,
            "{offer}: answered in the chosen version"
        );
        let body = h.body();
        let t = Transcript {
            hello: &body,
            version,
            dest_nonce: &nonce,
        };
        assert!(
            key(1).verify(Role::Destination, &t, &mac),
            "{offer}: the proof covers the hello and the choice"
        );
        drop(a);
        let e = dest.join().expect("thread").expect_err("the source left");
        assert!(e.before_auth(), "{e}");
    }

    // A version 3 source (offering 3–3) completes the handshake in version 3: `Ready` is
    // sealed under the session of that version.
    let (answer, dest, mut a, h) = offer_to_receiver(range(3, 3), 3);
    let Message::Challenge { version, nonce, .. } = answer.msg else {
        panic!("expected a challenge")
    };
    let body = h.body();
    let t = Transcript {
        hello: &body,
        version,
        dest_nonce: &nonce,
    };
    let auth = Message::Auth {
        mac: key(1).prove(Role::Source, &t),
    };
    a.write_all(&auth.encode_as(version)).expect("auth");
    let mut chan = Channel::new(key(1).session(&t), Role::Source);
    let ready = read_frame(&mut a);
    assert_eq!(ready.version, 3);
    assert_eq!(chan.open(ready).expect("sealed in v3"), Message::Ready);
    drop(a);
    let _ = dest.join().expect("thread");
}

#[test]
fn a_source_with_no_common_version_is_refused_with_both_ranges() {
    // A future build that dropped versions 3 and 4: its `Hello` (in its own version) still
    // decodes, and it is told which versions this build speaks.
    let (answer, dest, _a, _) = offer_to_receiver(range(5, 6), 6);
    assert_eq!(answer.msg, Message::Versions(Versions::THIS_BUILD));
    let e = dest.join().expect("no panic").expect_err("refused");
    assert!(
        matches!(
            e,
            RecvError::Version(NoCommonVersion { peer, ours: Versions::THIS_BUILD })
                if peer == range(5, 6)
        ),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        "no common protocol version: the peer speaks versions 5–6, this build speaks 3–4"
    );
    assert!(
        e.before_auth(),
        "a stray peer: nothing allocated, the loop goes on"
    );
}

fn busy_guest() -> SimGuest {
    guest(8, "uniform:rate=4MiB/s", InitialContent::Random)
}

/// Runs a real source against `fake`, a destination played by the test; the source must fail
/// within a few timeouts and keep its guest running.
fn migrate_against(fake: impl FnOnce(TcpStream) + Send + 'static) -> SendError {
    let g = busy_guest();
    let (mut a, b) = pair();
    let fake = std::thread::spawn(move || fake(b));
    let mut policy = PolicyKind::Fixed.build(policy_cfg(8)).expect("policy");
    let t0 = Instant::now();
    let e = migrate(
        &mut a,
        &key(1),
        &g,
        policy.as_mut(),
        &SenderConfig {
            sample_s: 0.0,
            timeout: Duration::from_secs(2),
            ..SenderConfig::default()
        },
        &livemig_engine::Control::new(),
        &mut |_| {},
    )
    .expect_err("refused");
    assert!(t0.elapsed() < Duration::from_secs(5), "no hang: {e}");
    fake.join().expect("fake destination");
    assert!(g.is_running(), "the source keeps its guest");
    e
}

/// The source's `Hello`, read by a fake destination.
fn read_hello(b: &mut TcpStream) -> (Message, u16) {
    let f = read_frame(b);
    assert_eq!(f.msg.msg_type(), MsgType::Hello);
    (f.msg, f.version)
}

#[test]
fn a_destination_with_no_common_version_is_reported_with_both_ranges() {
    let e = migrate_against(|mut b| {
        let (h, header) = read_hello(&mut b);
        let Message::Hello { versions, .. } = h else {
            unreachable!()
        };
        assert_eq!(
            versions,
            Versions::THIS_BUILD,
            "the source offers its range"
        );
        assert_eq!(header, VERSION, "in its newest version");
        // A future destination that speaks 5–6 only answers in its own version.
        b.write_all(&Message::Versions(range(5, 6)).encode_as(6))
            .expect("versions");
    });
    let SendError::Wire {
        phase: "handshake",
        source: WireError::NoCommonVersion(v),
    } = &e
    else {
        panic!("{e}")
    };
    assert_eq!((v.peer, v.ours), (range(5, 6), Versions::THIS_BUILD), "{e}");
    let why = std::error::Error::source(&e).map(ToString::to_string);
    assert_eq!(
        why.as_deref(),
        Some("no common protocol version: the peer speaks versions 5–6, this build speaks 3–4")
    );
}

#[test]
fn a_choice_the_source_did_not_offer_is_refused() {
    let e = migrate_against(|mut b| {
        let _ = read_hello(&mut b);
        // Version 5 in the payload (the header names this build's, so that the frame decodes).
        Message::Challenge {
            version: 5,
            nonce: [1; 32],
            mac: [2; 32],
        }
        .write_to(&mut b)
        .expect("challenge");
        let f = read_frame(&mut b);
        assert!(
            matches!(
                f.msg,
                Message::Error {
                    code: wire::code::VERSION,
                    ..
                }
            ),
            "{:?}",
            f.msg
        );
    });
    assert!(
        matches!(
            e,
            SendError::Wire {
                source: WireError::VersionNotOffered { chosen: 5 },
                ..
            }
        ),
        "{e}"
    );
}

/// A version-2 `Hello` as v2 built it: header version 2, payload version u16 (2), nonce,
/// memory bytes u64, page size u32, compress u8 (47 bytes; v2 had no range and no mode).
fn v2_hello() -> Vec<u8> {
    let mut p = 2u16.to_le_bytes().to_vec();
    p.extend_from_slice(&[7; 32]);
    p.extend_from_slice(&(1u64 << 20).to_le_bytes());
    p.extend_from_slice(&4096u32.to_le_bytes());
    p.push(0);
    let h = Header {
        version: 2,
        msg_type: MsgType::Hello as u16,
        len: p.len() as u32,
    };
    let mut f = h.encode().to_vec();
    f.extend_from_slice(&p);
    f
}

#[test]
fn a_version_2_source_is_refused_clearly() {
    let (mut a, mut b) = pair();
    let dest = std::thread::spawn(move || receive(&mut b, &key(1), &ReceiverConfig::default()));
    a.write_all(&v2_hello()).expect("write");
    let e = dest.join().expect("no panic").expect_err("refused");
    let RecvError::Wire {
        source: ref source @ WireError::Version { got: 2 },
        ..
    } = e
    else {
        panic!("{e}")
    };
    assert_eq!(
        source.to_string(),
        "protocol version mismatch: the peer sent a frame of version 2 (a version without \
         negotiation), this build speaks versions 3–4"
    );
    assert!(e.before_auth());
    // The answer: `Error` code 2, in a frame a v2 build refuses by its header (it reports a
    // mismatch with version 3 on its side).
    let mut reply = Vec::new();
    let _ = a.read_to_end(&mut reply);
    let f = Frame::from_bytes(&reply).expect("an error frame");
    assert!(
        matches!(
            f.msg,
            Message::Error {
                code: wire::code::VERSION,
                ..
            }
        ),
        "{:?}",
        f.msg
    );
    assert_eq!(u16::from_le_bytes([reply[4], reply[5]]), VERSION);
}

#[test]
fn a_version_2_destination_is_reported_clearly() {
    // A v2 destination refuses our version-3 Hello by its header and says so in a v2 frame.
    let e = migrate_against(|mut b| {
        let mut head = [0u8; 12];
        b.read_exact(&mut head).expect("a header");
        assert_eq!(u16::from_le_bytes([head[4], head[5]]), VERSION);
        // Read the payload too, so that closing does not reset the connection.
        let len = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
        let mut payload = vec![0u8; len as usize];
        b.read_exact(&mut payload).expect("the payload");
        let text = b"protocol version mismatch: the peer speaks version 3, this build speaks 2";
        let mut p = wire::code::VERSION.to_le_bytes().to_vec();
        p.extend_from_slice(text);
        let h = Header {
            version: 2,
            msg_type: MsgType::Error as u16,
            len: p.len() as u32,
        };
        b.write_all(&h.encode()).expect("header");
        b.write_all(&p).expect("payload");
    });
    assert!(
        matches!(
            e,
            SendError::Wire {
                phase: "handshake",
                source: WireError::Version { got: 2 },
            }
        ),
        "{e}"
    );
}

#[test]
fn a_version_3_migration_still_verifies_by_full_digests_and_skips_the_audit() {
    // This build as a version 3 source (offering 3–3) against this build's destination: the
    // hand-over digest is the whole memory's, computed in the pause, and there is no audit.
    let g = guest(16, "uniform:rate=4MiB/s", InitialContent::Random);
    let (mut a, mut b) = pair();
    let dest = std::thread::spawn(move || receive_snapshot(&mut b, &ReceiverConfig::default()));
    let cfg = policy_cfg(16);
    let mut policy = PolicyKind::DirtyFactor.build(cfg.clone()).expect("policy");
    let mut how = Vec::new();
    let report = migrate(
        &mut a,
        &key(1),
        &g,
        policy.as_mut(),
        &SenderConfig {
            stop_remaining: cfg.stop_remaining,
            sample_s: 0.0,
            versions: range(3, 3),
            ..SenderConfig::default()
        },
        &livemig_engine::Control::new(),
        &mut |e| {
            if let livemig_engine::Event::Verified { how: h } = e {
                how.push(h.clone());
            }
        },
    )
    .expect("migrated in version 3");
    drop(a);
    let got = dest.join().expect("thread").expect("received");
    assert_eq!(got.digest, g.memory().digest(), "version 3's digest");
    assert_eq!(report.summary.audit, None);
    let b = report.summary.downtime_breakdown.expect("a breakdown");
    assert!((b.total_s() - report.summary.downtime_s).abs() < 1e-9);
    assert!(how[0].contains("xxh3 digest of all"), "{how:?}");
}
