//! A peer without the key gets no guest memory allocated. Its own test binary (one test), so
//! that no other test allocates guest memory in this process while it counts.

mod common;

use common::*;
use livemig_engine::auth::{Role, Transcript};
use livemig_engine::memory::allocated_total;
use livemig_engine::receiver::{receive, ReceiverConfig, RecvError};
use livemig_engine::wire::{self, Frame, Message, MsgType, Versions};

trait Read1 {
    fn from_reader(r: &mut std::net::TcpStream) -> Frame;
}

impl Read1 for Frame {
    fn from_reader(r: &mut std::net::TcpStream) -> Frame {
        wire::read_within(r, &mut Vec::new(), None).expect("a frame")
    }
}
use livemig_engine::Key;

/// A fake source: hello for `memory_bytes`, then the given proof (or the right one).
fn handshake(proof_key: &Key, memory_bytes: u64) -> (Result<(), RecvError>, Message) {
    let (mut a, mut b) = pair();
    let dest = std::thread::spawn(move || {
        receive(&mut b, &key(1), &ReceiverConfig::default()).map(|_| ())
    });
    let hello = Message::Hello {
        versions: Versions::THIS_BUILD,
        nonce: [5; 32],
        memory_bytes,
        page_size: 4096,
        compress: false,
        mode: wire::Mode::Migrate,
    };
    hello.write_to(&mut a).expect("write");
    let m = Frame::from_reader(&mut a).msg;
    let Message::Challenge {
        version, nonce: nd, ..
    } = m
    else {
        panic!("expected a challenge, got {m:?}")
    };
    let t = Transcript {
        hello: &hello.body(),
        version,
        dest_nonce: &nd,
    };
    Message::Auth {
        mac: proof_key.prove(Role::Source, &t),
    }
    .write_to(&mut a)
    .expect("write");
    let reply = Frame::from_reader(&mut a).msg;
    drop(a);
    (dest.join().expect("thread"), reply)
}

#[test]
fn a_source_with_a_wrong_key_gets_no_memory_allocated() {
    let before = allocated_total();
    let (d, reply) = handshake(&key(2), 64 << 20);
    assert!(
        matches!(
            reply,
            Message::Error {
                code: wire::code::AUTH,
                ..
            }
        ),
        "{reply:?}"
    );
    assert!(matches!(d, Err(RecvError::Auth)), "{d:?}");
    assert_eq!(
        allocated_total(),
        before,
        "nothing allocated for a wrong key"
    );

    // The counter does see an authenticated source's memory.
    let (_, reply) = handshake(&key(1), 64 << 20);
    assert_eq!(reply.msg_type(), MsgType::Ready);
    assert_eq!(allocated_total(), before + (64 << 20));
}
