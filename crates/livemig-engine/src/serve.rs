//! The destination's accept loop: connections served concurrently (a small bound), one
//! migration at a time, a held copy kept until its source settles it.
//!
//! Peers that fail before proving the key (port scans, wrong keys, junk, silent sockets) are
//! logged at a bounded rate and never end the loop; a real source is served while they are
//! pending. After a migration the loop ends with its [`Served`] outcome; a copy held after a
//! lost hand-over is kept for `hold_timeout`, during which the source may reconnect
//! ([`crate::wire::Mode::Resolve`]) to commit or abort it.

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::auth::Key;
use crate::guest::{Guest, SimGuest};
use crate::net::{self, NetError, Plain, Upgrade};
use crate::receiver::{receive_with, Held, Host, Landing, Received, ReceiverConfig, RecvError};
use crate::wire::{ResolveDecision, ResolveStatus, SESSION_ID_LEN};

/// Accept-loop settings.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub receiver: ReceiverConfig,
    /// Socket poll timeout of every accepted connection.
    pub timeout: Duration,
    /// Longest wait for a source to start a migration (over all connections).
    pub accept_timeout: Duration,
    /// Connections that have not proved the key yet, served at once; a new one closes the
    /// oldest (logged).
    pub max_connections: usize,
    /// How long a copy held after a lost hand-over waits for its source to settle it.
    pub hold_timeout: Duration,
    /// Refusals logged per second at most (the rest are counted).
    pub log_per_s: u32,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            receiver: ReceiverConfig::default(),
            timeout: Duration::from_secs(10),
            accept_timeout: Duration::from_secs(600),
            max_connections: 8,
            hold_timeout: Duration::from_secs(300),
            log_per_s: 5,
        }
    }
}

/// How the accept loop ended.
#[derive(Debug)]
pub enum Served {
    /// The guest runs here.
    Migrated(Received),
    /// The migration failed; nothing is kept here and the guest runs on the source.
    Failed(RecvError),
    /// A verified copy is held, paused, and its source did not settle it within the hold
    /// timeout: neither side may run the guest until someone settles it.
    Unknown(Held),
}

/// Why the accept loop could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("no source started a migration within {0:?}")]
    NoSource(Duration),
    #[error("the listener failed")]
    Net(#[from] NetError),
    #[error("stopped before a migration started")]
    Stopped,
}

/// What the loop tells its logger (refused peers, held copies, settlements).
#[derive(Debug)]
pub enum ServeEvent<'a> {
    /// A peer failed before proving the key (or was turned away); `suppressed` more were not
    /// logged since the last one.
    Refused {
        peer: &'a str,
        error: &'a RecvError,
        suppressed: u64,
    },
    /// More unauthenticated connections than the bound: the oldest, this one, was closed.
    TooMany { peer: &'a str },
    /// The hand-over was interrupted; the verified copy is held.
    Holding { reason: &'a RecvError },
    /// The source committed: the verified guest, still paused, is about to resume here.
    Resuming { guest: &'a SimGuest },
    /// A reconnecting source settled a session.
    Settled { status: ResolveStatus },
    /// An authenticated source claimed the migration slot: its migration starts.
    Claimed { peer: &'a str },
    /// The claimant's round came in whole (`round` 0: the stop-and-copy).
    Received {
        peer: &'a str,
        round: u32,
        pages: u64,
    },
}

enum Slot {
    Idle,
    Busy([u8; SESSION_ID_LEN]),
    Held(Held, Instant),
    Done(Result<Received, RecvError>),
    /// The loop has decided its outcome: no connection may claim the slot any more; the
    /// session being saved to a hold file, if any, is answered `Pending`.
    Closed(Option<[u8; SESSION_ID_LEN]>),
}

/// The loop's logger.
type Log<'a> = &'a (dyn Fn(&ServeEvent<'_>) + Sync);

struct Shared<'l> {
    log: Log<'l>,
    /// The socket of the connection that claimed the slot, to cut it when the loop is stopped.
    claimant: Mutex<Option<std::net::TcpStream>>,
    slot: Mutex<Slot>,
    /// Sessions settled here and what became of them (answers to later questions).
    settled: Mutex<HashMap<[u8; SESSION_ID_LEN], ResolveStatus>>,
    hold_timeout: Duration,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Host for Shared<'_> {
    fn claim(&self, session: &[u8; SESSION_ID_LEN]) -> bool {
        let mut s = lock(&self.slot);
        if matches!(*s, Slot::Idle) {
            *s = Slot::Busy(*session);
            true
        } else {
            false
        }
    }

    fn resolve(&self, session: &[u8; SESSION_ID_LEN], decision: ResolveDecision) -> ResolveStatus {
        let mut s = lock(&self.slot);
        let status = match &*s {
            // Its connection is still open here: it may yet get the Commit or Abort itself.
            Slot::Busy(id) if id == session => return ResolveStatus::Pending,
            Slot::Held(h, _) if &h.session == session => match decision {
                ResolveDecision::Commit => {
                    // Taken out of the slot (which says `Busy` meanwhile, so no one claims it
                    // and a repeated question gets `Pending`); resumed with no lock held.
                    let old = std::mem::replace(&mut *s, Slot::Busy(*session));
                    drop(s);
                    let Slot::Held(h, _) = old else {
                        return ResolveStatus::Pending;
                    };
                    let (at, _) = h.guest.self_check();
                    (self.log)(&ServeEvent::Resuming { guest: &h.guest });
                    h.guest.resume();
                    // The source knows once it says `Done` on its resolve connection.
                    lock(&self.settled).insert(*session, ResolveStatus::Running);
                    *lock(&self.slot) = Slot::Done(Ok(Received {
                        guest: h.guest,
                        rounds: h.rounds,
                        digest: h.digest,
                        self_check_at_handover: at,
                        session: h.session,
                        source_saw_running: false,
                    }));
                    return ResolveStatus::Running;
                }
                ResolveDecision::Abort => {
                    *s = Slot::Done(Err(RecvError::SourceAborted));
                    ResolveStatus::Discarded
                }
            },
            Slot::Done(Ok(r)) if &r.session == session => return ResolveStatus::Running,
            // Being saved to a hold file as the loop ends: it is neither run nor dropped here.
            Slot::Closed(Some(id)) if id == session => return ResolveStatus::Pending,
            _ => {
                return lock(&self.settled)
                    .get(session)
                    .copied()
                    .unwrap_or(ResolveStatus::Unknown)
            }
        };
        lock(&self.settled).insert(*session, status);
        status
    }

    fn source_done(&self, session: &[u8; SESSION_ID_LEN]) {
        if let Slot::Done(Ok(r)) = &mut *lock(&self.slot) {
            if &r.session == session {
                r.source_saw_running = true;
            }
        }
    }
}

/// Refusal log with a rate bound.
struct Limiter {
    per_s: u32,
    window: Instant,
    in_window: u32,
    suppressed: u64,
}

impl Limiter {
    fn allow(&mut self) -> Option<u64> {
        if self.window.elapsed() >= Duration::from_secs(1) {
            self.window = Instant::now();
            self.in_window = 0;
        }
        if self.in_window < self.per_s {
            self.in_window += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

/// Serves `listener` until one migration ends (see [`Served`]), `accept_timeout` passes
/// without one, or `stop` is set: before a migration starts that ends the loop
/// ([`ServeError::Stopped`]); during one it cuts the migrating connection, which fails it
/// (nothing kept) — unless the destination already holds a verified copy, which is then held
/// and returned as [`Served::Unknown`] at once; after a success it ends the linger. `log` hears about refusals (rate-bounded)
/// and held copies; it is called from the connections' threads, so it must be `Sync`.
pub fn serve(
    listener: &TcpListener,
    key: &Key,
    cfg: &ServeConfig,
    stop: &AtomicBool,
    log: &(dyn Fn(&ServeEvent<'_>) + Sync),
) -> Result<Served, ServeError> {
    serve_with(listener, key, cfg, stop, log, &Plain)
}

/// [`serve`] with every accepted connection first going through `upgrade` (a TLS handshake,
/// bounded by the receiver's handshake deadline) on its own thread; the engine's handshake
/// then runs on the upgraded stream. A failed upgrade is a refusal
/// ([`RecvError::Secure`]): logged, never the end of the loop. Connections still upgrading
/// count against `max_connections` like any peer that has not proved the key.
pub fn serve_with<U: Upgrade>(
    listener: &TcpListener,
    key: &Key,
    cfg: &ServeConfig,
    stop: &AtomicBool,
    log: &(dyn Fn(&ServeEvent<'_>) + Sync),
    upgrade: &U,
) -> Result<Served, ServeError> {
    listener.set_nonblocking(true).map_err(NetError::Io)?;
    let shared = Arc::new(Shared {
        log,
        claimant: Mutex::new(None),
        slot: Mutex::new(Slot::Idle),
        settled: Mutex::new(HashMap::new()),
        hold_timeout: cfg.hold_timeout,
    });
    let waiting = Mutex::new(PreAuth::default());
    let limiter = Mutex::new(Limiter {
        per_s: cfg.log_per_s,
        window: Instant::now(),
        in_window: 0,
        suppressed: 0,
    });
    let start = Instant::now();
    // After a success whose `Running` the source may not have seen: answer its questions
    // for a while before ending.
    let mut linger_until: Option<Instant> = None;
    std::thread::scope(|scope| loop {
        // Has the migration ended?
        // Stopped mid-migration: cut the migrating connection. Before the destination holds a
        // verified copy that fails it (nothing kept); after, the copy is held and saved.
        if stop.load(Ordering::Relaxed) {
            if let Some(c) = lock(&shared.claimant).take() {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
        }
        let end = outcome(&mut lock(&shared.slot), &mut linger_until, cfg, start, stop);
        if let Some(end) = end {
            // Peers that never proved the key are cut off now, so that ending the loop (which
            // joins every connection's thread) does not wait for their deadlines.
            for (_, c, _) in lock(&waiting).conns.drain(..) {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
            return end;
        }
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // A connection that died in the queue (ECONNABORTED) or a transient shortage of
            // descriptors: not fatal, try again shortly.
            Err(_) => {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let peer = stream
            .peer_addr()
            .map_or_else(|_| "an unknown peer".to_string(), |a| a.to_string());
        if stream.set_nonblocking(false).is_err()
            || net::prepare(&stream, net::poll(cfg.timeout)).is_err()
        {
            continue;
        }
        // At most `max_connections` peers that have not proved the key: the oldest gives way
        // to the newest (a real source finishes its handshake in milliseconds; junk that
        // holds sockets open cannot keep it out).
        let (id, evicted) = {
            let mut w = lock(&waiting);
            let mut evicted = Vec::new();
            while w.conns.len() >= cfg.max_connections.max(1) {
                let Some((_, old, old_peer)) = w.conns.pop_front() else {
                    break;
                };
                let _ = old.shutdown(std::net::Shutdown::Both);
                evicted.push(old_peer);
            }
            w.next += 1;
            let id = w.next;
            // A connection that cannot be registered (and so cannot be evicted) is not served.
            let registered = match stream.try_clone() {
                Ok(c) => {
                    w.conns.push_back((id, c, peer.clone()));
                    true
                }
                Err(_) => false,
            };
            (registered.then_some(id), evicted)
        };
        // Logged with no lock held: a slow log must not stall the loop.
        for old_peer in evicted {
            let allowed = lock(&limiter).allow();
            if allowed.is_some() {
                log(&ServeEvent::TooMany { peer: &old_peer });
            }
        }
        let Some(id) = id else {
            continue;
        };
        let (shared, waiting, limiter) = (Arc::clone(&shared), &waiting, &limiter);
        scope.spawn(move || {
            let host = ConnHost {
                shared: shared.as_ref(),
                claimed: AtomicBool::new(false),
                socket: Mutex::new(stream.try_clone().ok()),
                id,
                waiting,
                peer: peer.clone(),
            };
            let r = match upgrade.upgrade(stream, cfg.receiver.handshake_deadline) {
                Ok(mut stream) => receive_with(&mut stream, key, &cfg.receiver, &host),
                Err(e) => Err(RecvError::Secure(e)),
            };
            let claimed = host.claimed.load(Ordering::Relaxed);
            match r {
                Ok(Landing::Migrated(rx)) => {
                    let mut s = lock(&shared.slot);
                    lock(&shared.settled).insert(rx.session, ResolveStatus::Running);
                    *s = Slot::Done(Ok(rx));
                }
                Ok(Landing::Held(h)) => {
                    log(&ServeEvent::Holding { reason: &h.reason });
                    let until = Instant::now() + shared.hold_timeout;
                    *lock(&shared.slot) = Slot::Held(h, until);
                }
                Ok(Landing::Settled(status)) => log(&ServeEvent::Settled { status }),
                // Only the connection that claimed the slot ends the migration.
                Err(e) if claimed => *lock(&shared.slot) = Slot::Done(Err(e)),
                Err(e) => {
                    let allowed = lock(limiter).allow();
                    if let Some(suppressed) = allowed {
                        log(&ServeEvent::Refused {
                            peer: &peer,
                            error: &e,
                            suppressed,
                        });
                    }
                }
            }
            let _ = host.proved();
        });
    })
}

/// The loop's result once the migration has ended (or cannot start); `None` to go on.
fn outcome(
    slot: &mut Slot,
    linger_until: &mut Option<Instant>,
    cfg: &ServeConfig,
    start: Instant,
    stop: &AtomicBool,
) -> Option<Result<Served, ServeError>> {
    let now = Instant::now();
    let stopping = stop.load(Ordering::Relaxed);
    let end = match &*slot {
        // A source that missed `Running` may ask for as long as a copy would be held.
        Slot::Done(Ok(r)) => {
            let until = *linger_until.get_or_insert(now + cfg.hold_timeout);
            r.source_saw_running || now >= until || stopping
        }
        Slot::Done(Err(_)) => true,
        // Stopped while holding: the copy is saved now rather than at the hold deadline.
        Slot::Held(_, until) => now >= *until || stopping,
        Slot::Idle if stop.load(Ordering::Relaxed) => {
            *slot = Slot::Closed(None);
            return Some(Err(ServeError::Stopped));
        }
        Slot::Idle if start.elapsed() >= cfg.accept_timeout => {
            *slot = Slot::Closed(None);
            return Some(Err(ServeError::NoSource(cfg.accept_timeout)));
        }
        Slot::Idle | Slot::Busy(_) | Slot::Closed(_) => false,
    };
    if !end {
        return None;
    }
    // Decided under the slot's lock: from now on nothing claims it (a source finishing its
    // handshake meanwhile is refused as busy) and a held session is answered `Pending`.
    let held = match &*slot {
        Slot::Held(h, _) => Some(h.session),
        _ => None,
    };
    match std::mem::replace(slot, Slot::Closed(held)) {
        Slot::Done(Ok(r)) => Some(Ok(Served::Migrated(r))),
        Slot::Done(Err(e)) => Some(Ok(Served::Failed(e))),
        Slot::Held(h, _) => Some(Ok(Served::Unknown(h))),
        other => {
            *slot = other;
            None
        }
    }
}

/// One connection's view of the shared host: remembers whether it claimed the slot.
struct ConnHost<'a, 'l> {
    shared: &'a Shared<'l>,
    claimed: AtomicBool,
    /// This connection's socket, handed to the shared state if it claims the slot.
    socket: Mutex<Option<std::net::TcpStream>>,
    id: u64,
    waiting: &'a Mutex<PreAuth>,
    peer: String,
}

impl ConnHost<'_, '_> {
    /// The peer proved the key (or the connection ended): it no longer counts against the
    /// bound on unauthenticated peers.
    /// Returns whether it was still registered (false: it was evicted meanwhile).
    fn proved(&self) -> bool {
        let mut w = lock(self.waiting);
        let before = w.conns.len();
        w.conns.retain(|(i, _, _)| *i != self.id);
        w.conns.len() < before
    }
}

/// Connections that have not proved the key yet, oldest first.
#[derive(Default)]
struct PreAuth {
    next: u64,
    conns: std::collections::VecDeque<(u64, std::net::TcpStream, String)>,
}

impl Host for ConnHost<'_, '_> {
    fn claim(&self, session: &[u8; SESSION_ID_LEN]) -> bool {
        let ok = self.shared.claim(session);
        self.claimed.store(ok, Ordering::Relaxed);
        if ok {
            *lock(&self.shared.claimant) = lock(&self.socket).take();
            (self.shared.log)(&ServeEvent::Claimed { peer: &self.peer });
        }
        ok
    }
    fn round_received(&self, round: u32, pages: u64) {
        (self.shared.log)(&ServeEvent::Received {
            peer: &self.peer,
            round,
            pages,
        });
    }
    fn resolve(&self, session: &[u8; SESSION_ID_LEN], decision: ResolveDecision) -> ResolveStatus {
        self.shared.resolve(session, decision)
    }
    fn before_resume(&self, guest: &SimGuest) {
        (self.shared.log)(&ServeEvent::Resuming { guest });
    }
    fn authenticated(&self) -> bool {
        self.proved()
    }
    fn source_done(&self, session: &[u8; SESSION_ID_LEN]) {
        self.shared.source_done(session);
    }
}
