//! The destination side of one connection: handshake, pages into fresh memory, verification,
//! and the commit protocol (`docs/protocol.md`).
//!
//! Every wait has a deadline (the handshake as a whole, every frame). Memory is allocated only
//! after the source proved the key over the whole handshake transcript, and only within the
//! destination's limit; an allocation that fails is answered with `Error`. Every control
//! message after the handshake must carry the session tag of its place in the sequence.
//!
//! Once the destination has answered `Confirm{ok}` it holds a verified, paused copy that it
//! runs only on the source's `Commit`; on `Abort` it drops it. When neither arrives (a lost
//! message, a forged one, a cut) it neither runs nor drops the copy: the connection ends
//! [`Landing::Held`], and the caller keeps the copy until the source reconnects to settle it
//! ([`crate::serve`]) or an operator does.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::auth::{self, Channel, Forged, Key, KeyError, Role, Transcript};
use crate::guest::{Guest, GuestError, SimGuest};
use crate::keepalive::{self, KeepAlive};
use crate::memory::{GuestMemory, MemoryError};
use crate::pagehash::{page_hash, PageHashes};
use crate::wire::version::incremental_digest;
use crate::wire::{
    self, code, read_within, write_within, Message, Mode, MsgType, NoCommonVersion,
    ResolveDecision, ResolveStatus, Versions, WireError, PAGE_SIZE, SESSION_ID_LEN,
};

/// Receiver settings.
#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    /// The largest guest this host accepts (bytes).
    pub max_memory: u64,
    /// From the first byte read to the source's proof of the key.
    pub handshake_deadline: Duration,
    /// Longest time to receive or send any one frame.
    pub frame_deadline: Duration,
    /// How often to send `Wait` during long local work (prefault, digest).
    pub keepalive: Duration,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        ReceiverConfig {
            max_memory: crate::hostmem::holdable_bytes(),
            handshake_deadline: Duration::from_secs(10),
            frame_deadline: Duration::from_secs(10),
            keepalive: keepalive::EVERY,
        }
    }
}

const AWAIT_HELLO: &str = "waiting for hello";
const AWAIT_AUTH: &str = "waiting for the source's proof";

/// Why a connection failed on the destination. Partial state is discarded; nothing runs.
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
    #[error(
        "the source aborted the hand-over and runs the guest; the verified copy was discarded"
    )]
    SourceAborted,
    #[error("the source could not prove it holds the shared key (wrong key, or the handshake was altered on the way)")]
    Auth,
    /// The source offered no version this build speaks; it was told which this build speaks.
    #[error(transparent)]
    Version(#[from] NoCommonVersion),
    #[error("the source asks for {memory_bytes} bytes in pages of {page_size}; this host takes page size {PAGE_SIZE} and at most {max} bytes")]
    Geometry {
        memory_bytes: u64,
        page_size: u32,
        max: u64,
    },
    #[error("this host cannot hold the guest's memory")]
    Alloc(#[source] MemoryError),
    #[error("this destination is busy with another migration")]
    Busy,
    #[error(
        "the connection was closed before the peer proved the key, to make room for newer peers"
    )]
    Evicted,
    #[error("the source announced {expected} pages and sent {got}")]
    Count { expected: u64, got: u64 },
    #[error("bad page from the source")]
    Page(#[source] MemoryError),
    #[error("the memory digest {dest:016x} does not match the source's {source_digest:016x}")]
    Verify { source_digest: u64, dest: u64 },
    #[error("cannot restore the guest from the received memory and state")]
    Restore(#[source] GuestError),
    #[error("cannot make a handshake nonce")]
    Key(#[from] KeyError),
    #[error("the source sent {0} keep-alives in a row without progress")]
    Stalled(u32),
    /// The connection's upgrade (the TLS handshake) failed: the peer never reached the
    /// engine's handshake.
    #[error("the secure channel could not be set up")]
    Secure(#[source] crate::net::UpgradeError),
    #[error("{state}")]
    Forged {
        state: &'static str,
        #[source]
        source: Forged,
    },
}

impl RecvError {
    /// Whether the peer failed before it proved the key (a stray or hostile peer, not a
    /// source): nothing was allocated and a receiver may wait for another connection.
    pub fn before_auth(&self) -> bool {
        match self {
            RecvError::Auth
            | RecvError::Version(_)
            | RecvError::Geometry { .. }
            | RecvError::Secure(_)
            | RecvError::Evicted => true,
            RecvError::Wire { state, .. }
            | RecvError::Transition { state, .. }
            | RecvError::Aborted { state, .. } => *state == AWAIT_HELLO || *state == AWAIT_AUTH,
            _ => false,
        }
    }

    /// The `Error` code that tells the peer why, when there is one to tell.
    fn code(&self) -> Option<u16> {
        match self {
            RecvError::Auth | RecvError::Forged { .. } => Some(code::AUTH),
            RecvError::Geometry { .. } | RecvError::Alloc(_) => Some(code::RESOURCES),
            RecvError::Busy => Some(code::BUSY),
            RecvError::Transition { .. } | RecvError::Count { .. } | RecvError::Page(_) => {
                Some(code::PROTOCOL)
            }
            RecvError::Wire { source, .. } => match source {
                WireError::Version { .. } => Some(code::VERSION),
                WireError::BadMagic(_)
                | WireError::UnknownType(_)
                | WireError::TooLong { .. }
                | WireError::Malformed { .. } => Some(code::PROTOCOL),
                _ => None,
            },
            _ => None,
        }
    }
}

/// A guest that runs here now: verified, committed by the source, resumed.
#[derive(Debug)]
pub struct Received {
    pub guest: SimGuest,
    pub rounds: u32,
    /// The hand-over digest confirmed to the source: from protocol 4 the combined digest of
    /// the per-page hashes of what was received ([`crate::pagehash`]), in version 3 the xxh3
    /// digest of the memory (equal to the source's at pause).
    pub digest: u64,
    /// The guest's self-check counter when it was handed over (before it resumed here).
    pub self_check_at_handover: u64,
    /// The session id.
    pub session: [u8; SESSION_ID_LEN],
    /// Whether the source said `Done` after `Running` (it learnt the outcome); when false
    /// it may reconnect to ask.
    pub source_saw_running: bool,
}

/// A verified, paused copy that the source neither committed nor aborted (the last messages
/// were lost): it must be kept, not run, until the hand-over is settled.
#[derive(Debug)]
pub struct Held {
    pub guest: SimGuest,
    pub rounds: u32,
    pub digest: u64,
    pub session: [u8; SESSION_ID_LEN],
    /// Why the hand-over did not complete on the connection.
    pub reason: RecvError,
}

/// How one migration connection ended without an error.
#[derive(Debug)]
pub enum Landing {
    /// Committed: the guest runs here.
    Migrated(Received),
    /// Verified but not settled: the copy is held, paused.
    Held(Held),
    /// A [`Mode::Resolve`] connection that settled a session of the [`Host`].
    Settled(ResolveStatus),
}

/// What the connection needs from the process that accepts it (see [`crate::serve`]).
pub trait Host: Sync {
    /// Claims the one migration slot for `session` (false: busy).
    fn claim(&self, session: &[u8; SESSION_ID_LEN]) -> bool;
    /// Settles `session` as a reconnecting source asks.
    fn resolve(&self, session: &[u8; SESSION_ID_LEN], decision: ResolveDecision) -> ResolveStatus;
    /// Called with the verified guest, still paused, just before the commit resumes it (a
    /// place for tests to look at the memory as it was handed over).
    fn before_resume(&self, _guest: &SimGuest) {}
    /// The peer proved the key (it no longer counts as a stranger). False when the connection
    /// was already closed to make room for newer peers: it must end here.
    fn authenticated(&self) -> bool {
        true
    }
    /// A reconnecting source said `Done` after learning that `session` runs here.
    fn source_done(&self, _session: &[u8; SESSION_ID_LEN]) {}
    /// A whole round came in (`round` 0: the stop-and-copy), for progress reports.
    fn round_received(&self, _round: u32, _pages: u64) {}
}

/// A host for a single connection: the slot is free, no session is held.
#[derive(Debug, Clone, Copy, Default)]
pub struct Alone;

impl Host for Alone {
    fn claim(&self, _: &[u8; SESSION_ID_LEN]) -> bool {
        true
    }
    fn resolve(&self, _: &[u8; SESSION_ID_LEN], _: ResolveDecision) -> ResolveStatus {
        ResolveStatus::Unknown
    }
}

/// Receives one migration from `stream` on its own (no other connection can settle it).
pub fn receive<S: Read + Write>(
    stream: &mut S,
    key: &Key,
    cfg: &ReceiverConfig,
) -> Result<Landing, RecvError> {
    receive_with(stream, key, cfg, &Alone)
}

struct Conn<'a, S: Read + Write> {
    stream: &'a mut S,
    cfg: &'a ReceiverConfig,
    chan: Option<Channel>,
    spare: Vec<u8>,
    handshake_end: Instant,
}

impl<S: Read + Write> Conn<'_, S> {
    fn deadline(&self) -> wire::frames::Deadline {
        let frame = Instant::now() + self.cfg.frame_deadline;
        if self.chan.is_none() && self.handshake_end < frame {
            Some((self.handshake_end, self.cfg.handshake_deadline))
        } else {
            Some((frame, self.cfg.frame_deadline))
        }
    }

    /// The next message, its tag checked; `Wait` keep-alives skipped (bounded).
    fn recv(&mut self, state: &'static str) -> Result<Message, RecvError> {
        let mut waits = 0u32;
        loop {
            let d = self.deadline();
            let f = read_within(self.stream, &mut self.spare, d)
                .map_err(|source| RecvError::Wire { state, source })?;
            let m = match self.chan.as_mut() {
                Some(c) => c
                    .open(f)
                    .map_err(|source| RecvError::Forged { state, source })?,
                None => f.msg,
            };
            match m {
                Message::Wait if self.chan.is_some() => {
                    waits += 1;
                    if waits > keepalive::MAX_WAITS {
                        return Err(RecvError::Stalled(waits));
                    }
                }
                Message::Error { code, message } => {
                    return Err(RecvError::Aborted {
                        state,
                        code,
                        message,
                    })
                }
                m => return Ok(m),
            }
        }
    }

    fn send(&mut self, state: &'static str, m: &Message) -> Result<(), RecvError> {
        let f = match self.chan.as_mut() {
            Some(c) => c.seal(m),
            None => m.encode(),
        };
        self.write(state, &f)
    }

    fn write(&mut self, state: &'static str, f: &[u8]) -> Result<(), RecvError> {
        let d = Some((
            Instant::now() + self.cfg.frame_deadline,
            self.cfg.frame_deadline,
        ));
        write_within(self.stream, f, d).map_err(|source| RecvError::Wire { state, source })
    }

    /// Tells the peer why, when the socket still works (untagged, briefly): the versions this
    /// build speaks to a source that offered none of them, `Error` with its code otherwise.
    fn refuse(&mut self, e: &RecvError) {
        let answer = match e {
            RecvError::Version(v) => Some(Message::Versions(v.ours)),
            e => e.code().map(|c| Message::error(c, &e.to_string())),
        };
        if let Some(m) = answer {
            let short = Duration::from_millis(500).min(self.cfg.frame_deadline);
            let _ = write_within(
                self.stream,
                &m.encode(),
                Some((Instant::now() + short, short)),
            );
        }
    }
}

/// Receives one connection from `stream` for `host`: a migration, or a reconnecting source
/// settling a session. On any error the partial memory is dropped and the peer is told why
/// when the connection still works.
pub fn receive_with<S: Read + Write>(
    stream: &mut S,
    key: &Key,
    cfg: &ReceiverConfig,
    host: &dyn Host,
) -> Result<Landing, RecvError> {
    let mut c = Conn {
        stream,
        cfg,
        chan: None,
        spare: Vec::new(),
        handshake_end: Instant::now() + cfg.handshake_deadline,
    };
    let r = run(&mut c, key, host);
    if let Err(e) = &r {
        c.refuse(e);
    }
    r
}

fn run<S: Read + Write>(
    c: &mut Conn<'_, S>,
    key: &Key,
    host: &dyn Host,
) -> Result<Landing, RecvError> {
    // Handshake: both proofs cover the whole Hello and the chosen version, so nothing in them
    // can be rewritten (the offered versions included: no downgrade).
    let (hello, version, memory_bytes, mode) = match c.recv(AWAIT_HELLO)? {
        m @ Message::Hello {
            versions,
            memory_bytes,
            page_size,
            mode,
            ..
        } => {
            let version = wire::version::choose(Versions::THIS_BUILD, versions)?;
            if mode == Mode::Migrate
                && (page_size as usize != PAGE_SIZE
                    || memory_bytes == 0
                    || memory_bytes % PAGE_SIZE as u64 != 0
                    || memory_bytes > c.cfg.max_memory)
            {
                return Err(RecvError::Geometry {
                    memory_bytes,
                    page_size,
                    max: c.cfg.max_memory,
                });
            }
            (m.body(), version, memory_bytes, mode)
        }
        m => {
            return Err(RecvError::Transition {
                state: AWAIT_HELLO,
                got: m.msg_type(),
            })
        }
    };
    let nd = auth::nonce()?;
    let t = Transcript {
        hello: &hello,
        version,
        dest_nonce: &nd,
    };
    let challenge = Message::Challenge {
        version,
        nonce: nd,
        mac: key.prove(Role::Destination, &t),
    };
    c.write(AWAIT_HELLO, &challenge.encode_as(version))?;
    match c.recv(AWAIT_AUTH)? {
        Message::Auth { mac } if key.verify(Role::Source, &t, &mac) => {}
        Message::Auth { .. } => return Err(RecvError::Auth),
        m => {
            return Err(RecvError::Transition {
                state: AWAIT_AUTH,
                got: m.msg_type(),
            })
        }
    }
    let chan = Channel::new(key.session(&t), Role::Destination);
    let session = chan.id();
    c.chan = Some(chan);
    if !host.authenticated() {
        return Err(RecvError::Evicted);
    }

    if mode == Mode::Resolve {
        const STATE: &str = "settling a hand-over";
        return match c.recv(STATE)? {
            Message::Resolve { session, decision } => {
                let status = host.resolve(&session, decision);
                c.send(STATE, &Message::Resolved { status })?;
                // A source told `Running` says `Done`: this end need not wait for it any more.
                if status == ResolveStatus::Running && matches!(c.recv(STATE), Ok(Message::Done)) {
                    host.source_done(&session);
                }
                Ok(Landing::Settled(status))
            }
            m => Err(RecvError::Transition {
                state: STATE,
                got: m.msg_type(),
            }),
        };
    }

    if !host.claim(&session) {
        return Err(RecvError::Busy);
    }
    let memory = GuestMemory::new(memory_bytes, c.cfg.max_memory).map_err(RecvError::Alloc)?;
    // From version 4 every page is hashed as it is stored, so that the check at the hand-over
    // costs what the stop-and-copy moved; version 3 digests the whole memory then.
    let incremental = incremental_digest(version);
    let mut table = if incremental {
        Some(PageHashes::zeroed(memory.pages()).map_err(RecvError::Alloc)?)
    } else {
        None
    };
    // Prefaulting a large guest takes longer than the source's timeout: keep it posted.
    {
        let Some(chan) = c.chan.as_mut() else {
            return Err(RecvError::Auth);
        };
        let mut ka = KeepAlive::new(c.stream, chan, c.cfg.keepalive, c.cfg.frame_deadline);
        memory.prefault_with(&mut || ka.tick());
        ka.finish().map_err(|source| RecvError::Wire {
            state: "preparing memory",
            source,
        })?;
    }
    c.send("preparing memory", &Message::Ready)?;

    // Pre-copy rounds, then stop-and-copy.
    let mut rounds = 0u32;
    // A round cut short (fewer pages than announced) must be the last: only `StopCopy` may
    // follow it.
    let mut cut = false;
    let state_msg = loop {
        const BETWEEN: &str = "between rounds";
        match c.recv(BETWEEN)? {
            Message::RoundStart { round, pages } if round == rounds.wrapping_add(1) && !cut => {
                let got =
                    receive_pages(c, &memory, &mut table, "in a pre-copy round", |m| match m {
                        Message::RoundEnd { round: r, pages: p } if *r == round => Some(*p),
                        _ => None,
                    })?;
                // A round may end early (the source's timeout forced stop-and-copy): its
                // `RoundEnd` then counts fewer pages than announced, and they must have come.
                if got.0 != got.1 || got.1 > pages {
                    return Err(RecvError::Count {
                        expected: got.1.min(pages),
                        got: got.0,
                    });
                }
                rounds = round;
                cut = got.1 < pages;
                host.round_received(round, got.0);
            }
            Message::StopCopy { pages } if rounds > 0 => {
                let mut state = None;
                let (got, _) =
                    receive_pages(c, &memory, &mut table, "in stop-and-copy", |m| match m {
                        Message::State { digest, blob } => {
                            state = Some((*digest, blob.clone()));
                            Some(0)
                        }
                        _ => None,
                    })?;
                if got != pages {
                    return Err(RecvError::Count {
                        expected: pages,
                        got,
                    });
                }
                host.round_received(0, got);
                break state;
            }
            m => {
                return Err(RecvError::Transition {
                    state: BETWEEN,
                    got: m.msg_type(),
                })
            }
        }
    };
    let Some((digest, blob)) = state_msg else {
        return Err(RecvError::Transition {
            state: "in stop-and-copy",
            got: MsgType::State,
        });
    };

    // Verify, rebuild paused, confirm.
    const VERIFY: &str = "verifying the guest";
    let mine = if let Some(t) = &table {
        t.digest()
    } else {
        let Some(chan) = c.chan.as_mut() else {
            return Err(RecvError::Auth);
        };
        let mut ka = KeepAlive::new(c.stream, chan, c.cfg.keepalive, c.cfg.frame_deadline);
        let d = memory.digest_with(&mut || ka.tick());
        ka.finish().map_err(|source| RecvError::Wire {
            state: VERIFY,
            source,
        })?;
        d
    };
    if mine != digest {
        c.send(
            VERIFY,
            &Message::Confirm {
                ok: false,
                digest: mine,
            },
        )?;
        return Err(RecvError::Verify {
            source_digest: digest,
            dest: mine,
        });
    }
    let guest = match SimGuest::restore(memory, &blob) {
        Ok(g) => g,
        Err(e) => {
            c.send(
                VERIFY,
                &Message::Confirm {
                    ok: false,
                    digest: mine,
                },
            )?;
            return Err(RecvError::Restore(e));
        }
    };
    // A held copy carries the memory's digest (a hold file is checked against it on load):
    // from version 4 it is computed only if the copy is held, never in the pause.
    let held_digest = |g: &SimGuest| {
        if incremental {
            g.memory().digest()
        } else {
            mine
        }
    };
    // From here the copy is kept whatever happens, until Commit runs it or Abort drops it.
    const PREPARED: &str = "holding a verified copy, waiting for the source's commit";
    let decision = match c.send(
        PREPARED,
        &Message::Confirm {
            ok: true,
            digest: mine,
        },
    ) {
        Ok(()) => c.recv(PREPARED),
        Err(e) => Err(e),
    };
    match decision {
        Ok(Message::Commit) => {
            let (at_handover, _) = guest.self_check();
            host.before_resume(&guest);
            guest.resume();
            let sent = c.send("running the guest", &Message::Running).is_ok();
            // The source says `Done` once it read `Running`; without it (lost, or the source
            // never saw `Running`) the caller keeps answering its questions for a while.
            let saw = sent && matches!(c.recv("running the guest"), Ok(Message::Done));
            Ok(Landing::Migrated(Received {
                guest,
                rounds,
                digest: mine,
                self_check_at_handover: at_handover,
                session,
                source_saw_running: saw,
            }))
        }
        Ok(Message::Abort) => Err(RecvError::SourceAborted),
        Ok(m) => Ok(Landing::Held(Held {
            digest: held_digest(&guest),
            guest,
            rounds,
            session,
            reason: RecvError::Transition {
                state: PREPARED,
                got: m.msg_type(),
            },
        })),
        Err(reason) => Ok(Landing::Held(Held {
            digest: held_digest(&guest),
            guest,
            rounds,
            session,
            reason,
        })),
    }
}

/// Receives `Pages` into `memory` until `end` recognises the closing message (returning its
/// page count); returns the pages stored and that count.
fn receive_pages<S: Read + Write>(
    c: &mut Conn<'_, S>,
    memory: &GuestMemory,
    table: &mut Option<PageHashes>,
    state: &'static str,
    mut end: impl FnMut(&Message) -> Option<u64>,
) -> Result<(u64, u64), RecvError> {
    let mut got = 0u64;
    loop {
        match c.recv(state)? {
            Message::Pages(batch) => {
                got += store(memory, table.as_mut(), &batch)?;
                c.spare = batch.into_payload();
            }
            m => {
                return match end(&m) {
                    Some(n) => Ok((got, n)),
                    None => Err(RecvError::Transition {
                        state,
                        got: m.msg_type(),
                    }),
                }
            }
        }
    }
}

/// Stores a batch's pages, hashing each into `table` (when the version keeps one) as it is
/// stored: the table holds what was received.
fn store(
    memory: &GuestMemory,
    mut table: Option<&mut PageHashes>,
    batch: &wire::PageBatch,
) -> Result<u64, RecvError> {
    let mut buf = [0u8; PAGE_SIZE];
    let mut n = 0;
    for e in batch.entries() {
        let page = match <&[u8; PAGE_SIZE]>::try_from(e.data) {
            Ok(raw) if e.encoding == wire::PageEncoding::Raw => raw,
            _ => {
                e.decode_into(&mut buf).map_err(|source| RecvError::Wire {
                    state: "in a page batch",
                    source,
                })?;
                &buf
            }
        };
        memory.write_page(e.index, page).map_err(RecvError::Page)?;
        if let Some(t) = table.as_deref_mut() {
            t.set(e.index, page_hash(page)).map_err(RecvError::Page)?;
        }
        n += 1;
    }
    Ok(n)
}
