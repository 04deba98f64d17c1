//! A peer without the key gets no guest memory allocated. Its own test binary (one test), so
//! that no other test allocates guest memory in this process while it counts.

mod common;

use common::*;
use livemig_engine::memory::allocated_total;
use livemig_engine::receiver::{receive, ReceiverConfig, RecvError};
use livemig_engine::wire::{self, Message, MsgType, VERSION};
use livemig_engine::Key;

/// A fake source: hello for `memory_bytes`, then the given proof (or the right one).
fn handshake(proof_key: &Key, memory_bytes: u64) -> (Result<(), RecvError>, Message) {
    let (mut a, mut b) = pair();
    let dest = std::thread::spawn(move || {
        receive(&mut b, &key(1), &ReceiverConfig::default()).map(|_| ())
    });
    let nonce = [5; 32];
    Message::Hello {
        version: VERSION,
        nonce,
        memory_bytes,
        page_size: 4096,
        compress: false,
    }
    .write_to(&mut a)
    .expect("write");
    let (m, _) = Message::read_from(&mut a).expect("challenge");
    let Message::Challenge { nonce: nd, .. } = m else {
        panic!("expected a challenge, got {m:?}")
    };
    Message::Auth {
        mac: proof_key.prove(livemig_engine::auth::Role::Source, &nonce, &nd),
    }
    .write_to(&mut a)
    .expect("write");
    let (reply, _) = Message::read_from(&mut a).expect("a reply");
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
