//! The destination side: handshake, pages into fresh memory, verification, hand-over.
//!
//! The caller bounds every single wait with socket timeouts ([`crate::net`]); the receiver
//! adds deadlines for each whole frame and for the handshake, so that a peer trickling bytes
//! cannot hold it. Memory is allocated only after the source proved the key. `State` and
//! `Ack` must carry the session tag, and `Confirm` carries it. Whatever fails before the
//! source's acknowledgement drops the partial memory: nothing half-migrated survives.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::auth::{self, Key, KeyError, Role, SessionKey};
use crate::guest::{GuestError, SimGuest};
use crate::keepalive::{self, KeepAlive};
use crate::memory::{GuestMemory, MemoryError};
use crate::wire::{self, code, Message, MsgType, WireError, PAGE_SIZE, VERSION};

/// Receiver settings.
#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    /// The largest guest this host accepts (bytes).
    pub max_memory: u64,
    /// From the first byte read to the source's proof of the key.
    pub handshake_deadline: Duration,
    /// Longest time to receive any one frame (from the start of its read).
    pub frame_deadline: Duration,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        ReceiverConfig {
            max_memory: 64 << 30,
            handshake_deadline: Duration::from_secs(10),
            frame_deadline: Duration::from_secs(10),
        }
    }
}

const AWAIT_HELLO: &str = "waiting for hello";
const AWAIT_AUTH: &str = "waiting for the source's proof";

/// Where the receiver is; every message is checked against it.
#[derive(Debug)]
pub enum ReceiverState {
    AwaitHello,
    AwaitAuth {
        source_nonce: [u8; wire::NONCE_LEN],
        dest_nonce: [u8; wire::NONCE_LEN],
        memory_bytes: u64,
    },
    /// Between rounds (after `Ready` or a `RoundEnd`).
    BetweenRounds {
        memory: GuestMemory,
        rounds: u32,
    },
    InRound {
        memory: GuestMemory,
        round: u32,
        expected: u64,
        got: u64,
    },
    StopCopy {
        memory: GuestMemory,
        rounds: u32,
        expected: u64,
        got: u64,
    },
    AwaitAck {
        guest: SimGuest,
        rounds: u32,
    },
}

impl ReceiverState {
    fn name(&self) -> &'static str {
        match self {
            ReceiverState::AwaitHello => AWAIT_HELLO,
            ReceiverState::AwaitAuth { .. } => AWAIT_AUTH,
            ReceiverState::BetweenRounds { .. } => "between rounds",
            ReceiverState::InRound { .. } => "in a pre-copy round",
            ReceiverState::StopCopy { .. } => "in stop-and-copy",
            ReceiverState::AwaitAck { .. } => "waiting for the source's acknowledgement",
        }
    }
}

/// Why a migration failed on the destination. Partial state is discarded.
#[derive(Debug, thiserror::Error)]
pub enum RecvError {
    #[error("the connection failed {state}")]
    Wire {
        state: &'static str,
        #[source]
        source: WireError,
    },
    #[error("unexpected `{got:?}` message {state}")]
    Transition { state: &'static str, got: MsgType },
    #[error("the source gave up {state}: {message} (code {code})")]
    Aborted {
        state: &'static str,
        code: u16,
        message: String,
    },
    #[error("the source could not prove it holds the shared key (wrong key?)")]
    Auth,
    #[error("the source asks for {memory_bytes} bytes in pages of {page_size}; this host takes page size {PAGE_SIZE} and at most {max} bytes")]
    Geometry {
        memory_bytes: u64,
        page_size: u32,
        max: u64,
    },
    #[error("the source announced {expected} pages and sent {got}")]
    Count { expected: u64, got: u64 },
    #[error("bad page from the source")]
    Page(#[from] MemoryError),
    #[error("the memory digest {dest:016x} does not match the source's {source_digest:016x}")]
    Verify { source_digest: u64, dest: u64 },
    #[error("cannot restore the guest from the received memory and state")]
    Restore(#[source] GuestError),
    #[error("cannot make a handshake nonce")]
    Key(#[from] KeyError),
    #[error("the source sent {0} keep-alives in a row without progress")]
    Stalled(u32),
    #[error("the `{msg}` message does not carry a valid session tag (tampered with on the way?)")]
    Forged { msg: &'static str },
}

impl RecvError {
    /// Whether the peer failed before it proved the key (a stray or hostile peer, not a
    /// source): nothing was allocated and a receiver may wait for another connection.
    pub fn before_auth(&self) -> bool {
        match self {
            RecvError::Auth | RecvError::Geometry { .. } => true,
            RecvError::Wire { state, .. }
            | RecvError::Transition { state, .. }
            | RecvError::Aborted { state, .. } => *state == AWAIT_HELLO || *state == AWAIT_AUTH,
            _ => false,
        }
    }
}

/// A verified, acknowledged guest, paused until the caller resumes it.
#[derive(Debug)]
pub struct Received {
    pub guest: SimGuest,
    pub rounds: u32,
    pub digest: u64,
}

fn send<S: Write>(s: &mut S, state: &'static str, m: &Message) -> Result<(), RecvError> {
    m.write_to(s)
        .map_err(|source| RecvError::Wire { state, source })
}

/// Receives one migration from `stream`. On any error the partial memory is dropped and the
/// source is told why when the connection still works.
pub fn receive<S: Read + Write>(
    stream: &mut S,
    key: &Key,
    cfg: &ReceiverConfig,
) -> Result<Received, RecvError> {
    let mut state = ReceiverState::AwaitHello;
    let mut spare = Vec::new();
    let mut session = None;
    let mut waits = 0u32;
    let handshake_end = Instant::now() + cfg.handshake_deadline;
    loop {
        let name = state.name();
        let frame_end = Instant::now() + cfg.frame_deadline;
        let deadline = if matches!(
            state,
            ReceiverState::AwaitHello | ReceiverState::AwaitAuth { .. }
        ) && handshake_end < frame_end
        {
            (handshake_end, cfg.handshake_deadline)
        } else {
            (frame_end, cfg.frame_deadline)
        };
        let msg = match Message::read_within(stream, &mut spare, Some(deadline)) {
            Ok((m, _)) => m,
            Err(e) => {
                let c = match e {
                    WireError::Version { .. } => Some(code::VERSION),
                    WireError::BadMagic(_)
                    | WireError::UnknownType(_)
                    | WireError::TooLong { .. }
                    | WireError::Malformed { .. } => Some(code::PROTOCOL),
                    _ => None,
                };
                if let Some(c) = c {
                    let _ = Message::error(c, &e.to_string()).write_to(stream);
                }
                return Err(RecvError::Wire {
                    state: name,
                    source: e,
                });
            }
        };
        // After authentication a busy source may say it is still working.
        if matches!(msg, Message::Wait) && session.is_some() {
            waits += 1;
            if waits > crate::keepalive::MAX_WAITS {
                return Err(RecvError::Stalled(waits));
            }
            continue;
        }
        waits = 0;
        match step(state, msg, stream, key, cfg, &mut spare, &mut session) {
            Ok(Step::Next(s)) => state = s,
            Ok(Step::Finished(r)) => return Ok(r),
            Err(e) => {
                let c = match &e {
                    RecvError::Auth | RecvError::Forged { .. } => Some(code::AUTH),
                    RecvError::Geometry { .. } => Some(code::RESOURCES),
                    RecvError::Transition { .. } | RecvError::Count { .. } | RecvError::Page(_) => {
                        Some(code::PROTOCOL)
                    }
                    _ => None,
                };
                if let Some(c) = c {
                    let _ = Message::error(c, &e.to_string()).write_to(stream);
                }
                return Err(e);
            }
        }
    }
}

enum Step {
    Next(ReceiverState),
    Finished(Received),
}

fn step<S: Read + Write>(
    state: ReceiverState,
    msg: Message,
    stream: &mut S,
    key: &Key,
    cfg: &ReceiverConfig,
    spare: &mut Vec<u8>,
    session: &mut Option<SessionKey>,
) -> Result<Step, RecvError> {
    use ReceiverState as St;
    let name = state.name();
    if let Message::Error { code, message } = msg {
        return Err(RecvError::Aborted {
            state: name,
            code,
            message,
        });
    }
    Ok(Step::Next(match (state, msg) {
        (
            St::AwaitHello,
            Message::Hello {
                version,
                nonce,
                memory_bytes,
                page_size,
                ..
            },
        ) => {
            if version != VERSION {
                let e = WireError::Version { got: version };
                let _ = Message::error(code::VERSION, &e.to_string()).write_to(stream);
                return Err(RecvError::Wire {
                    state: name,
                    source: e,
                });
            }
            if page_size as usize != PAGE_SIZE
                || memory_bytes == 0
                || memory_bytes % PAGE_SIZE as u64 != 0
                || memory_bytes > cfg.max_memory
            {
                return Err(RecvError::Geometry {
                    memory_bytes,
                    page_size,
                    max: cfg.max_memory,
                });
            }
            let dest_nonce = auth::nonce()?;
            send(
                stream,
                name,
                &Message::Challenge {
                    nonce: dest_nonce,
                    mac: key.prove(Role::Destination, &nonce, &dest_nonce),
                },
            )?;
            St::AwaitAuth {
                source_nonce: nonce,
                dest_nonce,
                memory_bytes,
            }
        }
        (
            St::AwaitAuth {
                source_nonce,
                dest_nonce,
                memory_bytes,
            },
            Message::Auth { mac },
        ) => {
            if !key.verify(Role::Source, &source_nonce, &dest_nonce, &mac) {
                return Err(RecvError::Auth);
            }
            *session = Some(key.session(&source_nonce, &dest_nonce));
            let memory = GuestMemory::new(memory_bytes, cfg.max_memory)?;
            // Prefaulting a large guest takes longer than the source's timeout: keep it posted.
            let mut ka = KeepAlive::new(stream, keepalive::EVERY);
            memory.prefault_with(&mut || ka.tick());
            ka.finish().map_err(|source| RecvError::Wire {
                state: name,
                source,
            })?;
            send(stream, name, &Message::Ready)?;
            St::BetweenRounds { memory, rounds: 0 }
        }
        (St::BetweenRounds { memory, rounds }, Message::RoundStart { round, pages })
            if round == rounds + 1 =>
        {
            St::InRound {
                memory,
                round,
                expected: pages,
                got: 0,
            }
        }
        (
            St::InRound {
                memory,
                round,
                expected,
                got,
            },
            Message::Pages(batch),
        ) => {
            let got = got + store(&memory, &batch)?;
            *spare = batch.into_payload();
            St::InRound {
                memory,
                round,
                expected,
                got,
            }
        }
        (
            St::InRound {
                memory,
                round,
                expected,
                got,
            },
            Message::RoundEnd { round: r, pages },
        ) if r == round => {
            if got != expected || pages != expected {
                return Err(RecvError::Count { expected, got });
            }
            St::BetweenRounds {
                memory,
                rounds: round,
            }
        }
        (St::BetweenRounds { memory, rounds }, Message::StopCopy { pages }) if rounds > 0 => {
            St::StopCopy {
                memory,
                rounds,
                expected: pages,
                got: 0,
            }
        }
        (
            St::StopCopy {
                memory,
                rounds,
                expected,
                got,
            },
            Message::Pages(batch),
        ) => {
            let got = got + store(&memory, &batch)?;
            *spare = batch.into_payload();
            St::StopCopy {
                memory,
                rounds,
                expected,
                got,
            }
        }
        (
            St::StopCopy {
                memory,
                rounds,
                expected,
                got,
            },
            msg @ Message::State { .. },
        ) => {
            let Some(sk) = session.as_ref() else {
                return Err(RecvError::Forged { msg: "state" });
            };
            if !sk.verify(rounds, &msg) {
                return Err(RecvError::Forged { msg: "state" });
            }
            let Message::State { digest, blob, .. } = msg else {
                return Err(RecvError::Forged { msg: "state" });
            };
            if got != expected {
                return Err(RecvError::Count { expected, got });
            }
            let confirm = |ok: bool, digest: u64| {
                sk.seal(
                    rounds,
                    Message::Confirm {
                        ok,
                        digest,
                        tag: [0; wire::TAG_LEN],
                    },
                )
            };
            let mut ka = KeepAlive::new(stream, keepalive::EVERY);
            let mine = memory.digest_with(&mut || ka.tick());
            ka.finish().map_err(|source| RecvError::Wire {
                state: name,
                source,
            })?;
            if mine != digest {
                send(stream, name, &confirm(false, mine))?;
                return Err(RecvError::Verify {
                    source_digest: digest,
                    dest: mine,
                });
            }
            let guest = match SimGuest::restore(memory, &blob) {
                Ok(g) => g,
                Err(e) => {
                    send(stream, name, &confirm(false, mine))?;
                    return Err(RecvError::Restore(e));
                }
            };
            send(stream, name, &confirm(true, mine))?;
            St::AwaitAck { guest, rounds }
        }
        (St::AwaitAck { guest, rounds }, msg @ Message::Ack { .. }) => {
            if !session.as_ref().is_some_and(|sk| sk.verify(rounds, &msg)) {
                return Err(RecvError::Forged { msg: "ack" });
            }
            use crate::guest::Guest;
            let digest = guest.memory().digest();
            return Ok(Step::Finished(Received {
                guest,
                rounds,
                digest,
            }));
        }
        (_, m) => {
            return Err(RecvError::Transition {
                state: name,
                got: m.msg_type(),
            })
        }
    }))
}

fn store(memory: &GuestMemory, batch: &wire::PageBatch) -> Result<u64, RecvError> {
    let mut buf = [0u8; PAGE_SIZE];
    let mut n = 0;
    for e in batch.entries() {
        match <&[u8; PAGE_SIZE]>::try_from(e.data) {
            Ok(raw) if e.encoding == wire::PageEncoding::Raw => memory.write_page(e.index, raw)?,
            _ => {
                e.decode_into(&mut buf).map_err(|source| RecvError::Wire {
                    state: "in a page batch",
                    source,
                })?;
                memory.write_page(e.index, &buf)?;
            }
        }
        n += 1;
    }
    Ok(n)
}
