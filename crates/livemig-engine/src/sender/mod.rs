//! The source side: handshake, pre-copy rounds under the policy's caps, stop-and-copy, and the
//! commit protocol that never loses the guest (`docs/protocol.md`).
//!
//! The source keeps its paused copy until it holds authenticated proof (`Running`) that the
//! destination runs the guest, and then until it has audited that copy against what the
//! destination received (protocol 4 on: every page hashed again, after the resume). Before it
//! sends `Commit` any failure resumes its guest (the
//! destination never runs without `Commit`); after it, a lost answer is settled by reconnecting
//! ([`resolve`]), and when that cannot happen within `resolve_timeout` the outcome is
//! [`SendError::InDoubt`]: the guest stays paused here, for an operator to settle.
//!
//! The sender never holds a copy of guest memory: it encodes one page at a time, straight
//! from guest memory (under the page's region lock), into one frame buffer of at most
//! [`crate::wire::MAX_BATCH_PAGES`] pages (about 1 MiB); the in-flight bound on the source is
//! that frame plus the kernel's socket send buffer.
//!
//! - `config`: [`SenderConfig`] and its checks.
//! - `state`: [`SenderPhase`], [`SendError`].
//!
//! The round sequence itself is the [`Pilot`]'s (`livemig-policy`), as in every executor;
//! `run` is one function per phase: connect, sample, pre-copy, stop-and-copy, commit.
//! - `link`: one connection under deadlines, page frames, the handshake.
//! - `settle`: settling a lost hand-over by reconnecting ([`resolve`]).

mod config;
mod link;
mod settle;
mod state;

pub use config::{ConfigError, SenderConfig};
pub use settle::{hex, resolve, Redial};
pub use state::{SendError, SenderPhase, TransitionError};

use std::time::{Duration, Instant};

use livemig_policy::pilot::{Executor, Next, Pilot, Setup, PEAK_WINDOW_S};
use livemig_policy::report::{
    DowntimeBreakdown, MemoryAudit, MigrationReport, StopCopy, AUDIT_MAX_LISTED,
};
use livemig_policy::{Control, DirtySample, Policy, StopReason};

use crate::auth::Key;
use crate::guest::Guest;
use crate::keepalive::KeepAlive;
use crate::limiter::{TokenBucket, DEFAULT_BURST_S};
use crate::memory::PageSet;
use crate::meter::WireMeter;
use crate::net::Transport;
use crate::pagehash::PageHashes;
use crate::wire::version::incremental_digest;
use crate::wire::{
    Message, Mode, ResolveDecision, ResolveStatus, WireError, PAGE_SIZE, SESSION_ID_LEN,
};

use link::{handshake, sleep_s, Link, Sent};

/// Pause between two attempts to reach the destination while settling a hand-over.
pub const REDIAL_EVERY: Duration = Duration::from_millis(200);

/// Migrates `guest` over `stream` under `policy` (bound the stream's waits with
/// [`crate::net::prepare`] or equivalent), without reconnecting: a lost answer to `Commit`
/// ends in [`SendError::InDoubt`]. On success the guest is paused for good (handed over: the
/// caller destroys it) — unless the report's `summary.audit` failed: then the destination runs
/// a copy that differs from the paused one on the pages it lists, and the caller keeps the
/// paused copy (a hold file) for an operator; see `docs/protocol.md`. On
/// [`SendError::InDoubt`] it is paused and must be kept; on any other failure it is running
/// again.
pub fn migrate<S: Transport>(
    stream: &mut S,
    key: &Key,
    guest: &dyn Guest,
    policy: &mut dyn Policy,
    cfg: &SenderConfig,
    control: &Control,
    observer: &mut dyn FnMut(&Event),
) -> Result<MigrationReport, SendError> {
    migrate_measured(stream, key, guest, policy, cfg, control, observer, None).map(|(r, _)| r)
}

/// [`migrate`] that settles a lost hand-over by reconnecting with `redial`, also returning
/// the wire meter (10 ms bins from the start of round 1), for benchmarks of cap accuracy.
#[allow(clippy::too_many_arguments)]
pub fn migrate_measured<S: Transport>(
    stream: &mut S,
    key: &Key,
    guest: &dyn Guest,
    policy: &mut dyn Policy,
    cfg: &SenderConfig,
    control: &Control,
    observer: &mut dyn FnMut(&Event),
    mut redial: Option<&mut Redial<'_>>,
) -> Result<(MigrationReport, WireMeter), SendError> {
    let mut session = Session::default();
    let r = run(
        stream,
        key,
        guest,
        policy,
        cfg,
        control,
        observer,
        &mut session,
        redial.as_deref_mut(),
    );
    // The rescue's throttle ends with the migration, whatever its outcome: the guest runs
    // here again at full speed, or is paused for good (the destination's copy never had it).
    guest.set_throttle(0.0);
    if let Err(e) = &r {
        observer(&ended(e));
    }
    match r {
        Err(e) if !e.in_doubt() => {
            if session.paused {
                guest.resume();
            }
            // The destination may hold a verified copy waiting for our word (its connection
            // broke before our `Abort`): tell it, best effort, now that the guest runs here.
            if let (Some(id), Some(dial)) = (session.id, redial) {
                if session.paused {
                    let until = Instant::now() + cfg.resolve_timeout.min(cfg.timeout * 3);
                    let _ = resolve(dial, key, &id, ResolveDecision::Abort, cfg.timeout, until);
                }
            }
            Err(e)
        }
        r => r,
    }
}

/// What the sender tells its observer: the one event type of every executor.
pub use livemig_policy::Event;

/// What the failure path needs to know of a run: whether the guest is paused here, and the
/// session to settle.
#[derive(Debug, Default)]
struct Session {
    paused: bool,
    id: Option<[u8; SESSION_ID_LEN]>,
}

/// What the phases share: the guest, the settings, the live handle, the observer and the
/// hashes of the pages as they were sent.
pub(super) struct Ctx<'a, 'o> {
    guest: &'a dyn Guest,
    cfg: &'a SenderConfig,
    control: &'a Control,
    observer: &'a mut (dyn FnMut(&Event) + 'o),
    /// The xxh3 of every page as last sent (zero pages before round 1).
    sent: PageHashes,
}

impl Ctx<'_, '_> {
    fn emit(&mut self, e: Event) {
        (self.observer)(&e);
    }
}

/// What stop-and-copy sent, and when each of its steps ended (seconds on the link's clock).
struct Stopped {
    pause_at: f64,
    bytes: f64,
    state_bytes: f64,
    /// The last stop-and-copy page on the wire.
    pages_at: f64,
    /// The state (and its digest) on the wire.
    state_at: f64,
    /// The destination's confirmation read.
    confirmed_at: f64,
    /// The destination's digest, as confirmed.
    dest_digest: u64,
    /// Whether the session's version verifies by per-page hashes (and audits after).
    incremental: bool,
}

#[allow(clippy::too_many_arguments)]
fn run<S: Transport>(
    stream: &mut S,
    key: &Key,
    guest: &dyn Guest,
    policy: &mut dyn Policy,
    cfg: &SenderConfig,
    control: &Control,
    observer: &mut dyn FnMut(&Event),
    session: &mut Session,
    redial: Option<&mut Redial<'_>>,
) -> Result<(MigrationReport, WireMeter), SendError> {
    let mut cx = Ctx {
        guest,
        cfg,
        control,
        observer,
        sent: PageHashes::zeroed(guest.memory().pages())?,
    };
    let mut link = Link::new(stream, cfg.timeout);
    link.cancel = Some(control.clone());
    let memory_bytes = guest.memory().bytes();
    let mut pilot = Pilot::new(
        Box::new(policy),
        Setup {
            executor: Executor::Engine,
            memory_bytes: memory_bytes as f64,
            stop_remaining: cfg.stop_remaining,
            workload: cfg.workload.clone(),
            timeouts: cfg.timeouts,
        },
    );
    cx.emit(pilot.started());
    session.id = Some(connect(&mut link, key, memory_bytes, cfg)?);
    cx.emit(Event::Connected { peer: None });
    sample(&mut link, &mut cx, &mut pilot)?;
    let remaining = precopy(&mut link, &mut cx, &mut pilot)?;
    let stopped = stop_and_copy(&mut link, &mut cx, &mut pilot, remaining, session)?;
    commit(&mut link, &mut cx, key, session, redial)?;
    let running_at = link.now();
    let downtime = running_at - stopped.pause_at;
    link.phase.advance(SenderPhase::HandedOver)?;
    cx.emit(Event::HandedOver {
        downtime_s: downtime,
    });
    // The destination runs the guest; the paused copy here is checked before it is let go.
    let audit = stopped.incremental.then(|| audit(&cx, stopped.dest_digest));
    if let Some(a) = &audit {
        cx.emit(Event::Audited { audit: a.clone() });
    }
    let peak = link.meter.peak(PEAK_WINDOW_S);
    let mut report = pilot.finish(
        StopCopy {
            bytes: stopped.bytes,
            state_bytes: stopped.state_bytes,
            downtime_s: downtime,
        },
        peak,
    );
    report.summary.downtime_breakdown = Some(DowntimeBreakdown {
        transfer_s: stopped.pages_at - stopped.pause_at,
        state_s: stopped.state_at - stopped.pages_at,
        verify_s: stopped.confirmed_at - stopped.state_at,
        resume_s: running_at - stopped.confirmed_at,
    });
    report.summary.audit = audit;
    Ok((report, link.meter))
}

/// The audit after the hand-over: every page of the paused copy hashed again and compared
/// with the table of what was sent, and the whole with the destination's confirmed digest
/// (the hand-over check proved that table equal to the destination's). A page that differs
/// was written without reaching the dirty log: the destination runs a stale copy of it.
fn audit(cx: &Ctx<'_, '_>, dest_digest: u64) -> MemoryAudit {
    let t0 = Instant::now();
    let f = cx.sent.audit(cx.guest.memory(), AUDIT_MAX_LISTED);
    MemoryAudit {
        passed: f.differing == 0 && f.digest == dest_digest,
        pages: f.pages,
        differing: f.differing,
        differing_pages: f.listed,
        time_s: t0.elapsed().as_secs_f64(),
    }
}

/// The handshake and the destination's `Ready`; returns the session id.
fn connect<S: Transport>(
    link: &mut Link<'_, S>,
    key: &Key,
    memory_bytes: u64,
    cfg: &SenderConfig,
) -> Result<[u8; SESSION_ID_LEN], SendError> {
    link.phase.advance(SenderPhase::Handshake)?;
    let chan = handshake(
        link,
        key,
        memory_bytes,
        cfg.compress,
        Mode::Migrate,
        cfg.versions,
    )?;
    let id = chan.id();
    link.chan = Some(chan);
    match link.recv()? {
        Message::Ready => Ok(id),
        m => Err(link.unexpected(&m)),
    }
}

/// A short dirty-log sample for policies that plan from it.
fn sample<S: Transport>(
    link: &mut Link<'_, S>,
    cx: &mut Ctx<'_, '_>,
    pilot: &mut Pilot<'_>,
) -> Result<(), SendError> {
    if cx.cfg.sample_s <= 0.0 {
        return Ok(());
    }
    cx.guest.fetch_and_clear_dirty();
    let t0 = Instant::now();
    let mut sample = DirtySample::default();
    for i in 1..=5 {
        if cx.control.is_cancelled() {
            return Err(link.cancelled());
        }
        let at = cx.cfg.sample_s * f64::from(i) / 5.0;
        sleep_s(at - t0.elapsed().as_secs_f64());
        let el = t0.elapsed().as_secs_f64();
        sample
            .points
            .push((el, (cx.guest.dirty_pages() * PAGE_SIZE as u64) as f64));
    }
    pilot.sample(&sample);
    cx.emit(Event::Sampled { sample });
    Ok(())
}

/// The pre-copy rounds under the pilot; returns the pages stop-and-copy must send (the last
/// round's dirty set, or what a forced stop left unsent).
fn precopy<S: Transport>(
    link: &mut Link<'_, S>,
    cx: &mut Ctx<'_, '_>,
    pilot: &mut Pilot<'_>,
) -> Result<PageSet, SendError> {
    let mem = cx.guest.memory();
    link.meter = WireMeter::new();
    link.start = Instant::now();
    let mut next = pilot.start(0.0, cx.control.granted())?;
    let mut bucket = TokenBucket::new(next.cap(), DEFAULT_BURST_S, 0.0)?;
    cx.guest.fetch_and_clear_dirty();
    let mut to_send = PageSet::all(mem.pages());
    loop {
        let Next::Round { round, wish, cap } = next else {
            return Ok(to_send);
        };
        if cx.control.is_cancelled() {
            return Err(link.cancelled());
        }
        link.phase.advance(SenderPhase::PreCopy { round })?;
        let pages = to_send.count();
        cx.emit(Event::RoundStarted {
            round,
            wish_bytes_per_s: wish,
            cap_bytes_per_s: cap,
            bytes: (pages * PAGE_SIZE as u64) as f64,
        });
        bucket.set_rate(cap, link.now())?;
        link.send(&Message::RoundStart { round, pages })?;
        // A timeout whose action is `force` cuts the round short: it ends with the pages that
        // went out, and what it did not send joins the stop-and-copy.
        let (sent, mut dirty) = match link.send_pages(cx, pilot, &to_send, &mut bucket, round)? {
            Sent::All => (pages, PageSet::empty(to_send.len())),
            Sent::Cut { sent, unsent } => (sent, unsent),
        };
        link.send(&Message::RoundEnd { round, pages: sent })?;
        dirty.union_with(&cx.guest.fetch_and_clear_dirty());
        let (n, record) = pilot.end_round(
            link.now(),
            (sent * PAGE_SIZE as u64) as f64,
            (dirty.count() * PAGE_SIZE as u64) as f64,
            cx.control.granted(),
        )?;
        let record = Box::new(record.clone());
        next = n;
        cx.emit(Event::RoundEnded { record });
        if matches!(next, Next::Round { .. }) {
            cx.guest.set_throttle(pilot.throttle());
        }
        to_send = dirty;
    }
}

/// Stop-and-copy: pause, send what remains and the state, wait for the verified answer, all
/// within the maximum pause. On a failure before the answer the destination is told to abort.
fn stop_and_copy<S: Transport>(
    link: &mut Link<'_, S>,
    cx: &mut Ctx<'_, '_>,
    pilot: &mut Pilot<'_>,
    mut remaining: PageSet,
    session: &mut Session,
) -> Result<Stopped, SendError> {
    let (guest, cfg) = (cx.guest, cx.cfg);
    let mem = guest.memory();
    link.phase.advance(SenderPhase::StopCopy)?;
    let pause_at = link.now();
    guest.pause();
    session.paused = true;
    link.pause_deadline = Some((Instant::now() + cfg.max_pause, cfg.max_pause));
    remaining.union_with(&guest.fetch_and_clear_dirty());
    let pages = remaining.count();
    let (reason, cap) = match pilot.next() {
        Next::StopAndCopy { reason, cap, .. } => (reason, cap),
        Next::Round { cap, .. } => (StopReason::RoundLimit, cap),
    };
    cx.emit(Event::StopAndCopy {
        reason,
        bytes: (pages * PAGE_SIZE as u64) as f64,
        cap_bytes_per_s: cap,
    });
    let mut bucket = TokenBucket::new(cap, DEFAULT_BURST_S, link.now())?;
    link.send(&Message::StopCopy { pages })?;
    let incremental = link
        .chan
        .as_ref()
        .is_some_and(|c| incremental_digest(c.version()));
    let mut marks = [0.0f64; 2];
    let verdict = link
        .send_pages(cx, pilot, &remaining, &mut bucket, 0)
        .and_then(|_| {
            marks[0] = link.now();
            send_state(link, cx, incremental)
        })
        .and_then(|sent| {
            marks[1] = link.now();
            await_confirm(link, sent, cfg.max_pause)
        });
    // The last moment a cancellation can stop the hand-over: past it, it is ignored.
    let verdict = match verdict {
        Ok(_) if cx.control.is_cancelled() => Err(SendError::Cancelled {
            phase: link.phase.name(),
        }),
        v => v,
    };
    match verdict {
        Ok((state_bytes, dest_digest)) => {
            let confirmed_at = link.now();
            cx.emit(Event::Verified {
                how: if incremental {
                    format!(
                        "the destination's per-page xxh3 hashes of all {} pages match the hashes of what the source sent (combined digest; the {pages} stop-and-copy pages hashed as they moved); the paused copy is audited after the resume",
                        mem.pages()
                    )
                } else {
                    format!(
                        "the destination's xxh3 digest of all {} pages matches the source's",
                        mem.pages()
                    )
                },
            });
            Ok(Stopped {
                pause_at,
                bytes: (pages * PAGE_SIZE as u64) as f64,
                state_bytes,
                pages_at: marks[0],
                state_at: marks[1],
                confirmed_at,
                dest_digest,
                incremental,
            })
        }
        Err(e) => {
            // Not committed: the destination must discard what it holds. Best effort on this
            // connection, briefly; the caller also tells it by reconnecting.
            link.timeout = link.timeout.min(Duration::from_millis(500));
            link.pause_deadline = None;
            let _ = link.send(&Message::Abort);
            // The destination reads the Abort (if it arrives), then the end: it stops waiting
            // for us at once and holds what it has for our `Resolve{Abort}` to settle.
            link.stream.close_write();
            Err(e)
        }
    }
}

/// The hand-over digest and the device state; returns the digest and the state's size.
/// From version 4 the digest is the table of what was sent ([`PageHashes::digest`], O(1));
/// version 3 digests the whole memory here, with keep-alives (digesting a large guest takes
/// longer than the destination's frame deadline).
fn send_state<S: Transport>(
    link: &mut Link<'_, S>,
    cx: &mut Ctx<'_, '_>,
    incremental: bool,
) -> Result<(u64, f64), SendError> {
    let digest = if incremental {
        cx.sent.digest()
    } else {
        let Some(chan) = link.chan.as_mut() else {
            return Err(SendError::Auth);
        };
        let mut ka = KeepAlive::new(link.stream, chan, cx.cfg.keepalive, link.timeout)
            .until(link.pause_deadline.map(|(at, _)| at));
        let d = cx.guest.memory().digest_with(&mut || ka.tick());
        ka.finish().map_err(|e| SendError::Wire {
            phase: "stop-and-copy",
            source: e,
        })?;
        d
    };
    link.pause_over()?;
    let blob = cx.guest.state();
    let state_bytes = blob.len() as f64;
    link.send(&Message::State { digest, blob })?;
    Ok((digest, state_bytes))
}

/// The destination's verdict on its copy; returns the state's size and the destination's
/// digest when it matches.
fn await_confirm<S: Transport>(
    link: &mut Link<'_, S>,
    (digest, state_bytes): (u64, f64),
    max_pause: Duration,
) -> Result<(f64, u64), SendError> {
    link.phase.advance(SenderPhase::AwaitConfirm)?;
    match link.recv() {
        Ok(Message::Confirm {
            ok: true,
            digest: d,
        }) if d == digest => Ok((state_bytes, d)),
        Ok(Message::Confirm { digest: d, .. }) => Err(SendError::Verify {
            source_digest: digest,
            dest: d,
        }),
        Ok(m) => Err(link.unexpected(&m)),
        Err(SendError::Wire {
            source: WireError::Deadline(_),
            ..
        }) if link.pause_over().is_err() => Err(SendError::PauseExceeded(max_pause)),
        Err(e) => Err(e),
    }
}

/// The commit point: from here the source never resumes its copy on its own. `Commit`, then
/// the destination's `Running`; a lost answer is settled by reconnecting.
fn commit<S: Transport>(
    link: &mut Link<'_, S>,
    cx: &mut Ctx<'_, '_>,
    key: &Key,
    session: &Session,
    redial: Option<&mut Redial<'_>>,
) -> Result<(), SendError> {
    let cfg = cx.cfg;
    link.phase.advance(SenderPhase::Committed)?;
    link.pause_deadline = None;
    cx.emit(Event::Committed);
    let answer = link
        .send(&Message::Commit)
        .and_then(|()| match link.recv() {
            Ok(Message::Running) => {
                // Tell the destination we know, so it need not wait for our questions (best
                // effort: if this is lost it waits a little longer, nothing else).
                let _ = link.send(&Message::Done);
                Ok(())
            }
            Ok(m) => Err(link.unexpected(&m)),
            Err(e) => Err(e),
        });
    let Err(cause) = answer else {
        return Ok(());
    };
    // Whatever the destination got of this connection, it now sees its end at once and holds
    // its copy for our `Resolve{Commit}` rather than waiting out its deadline.
    link.stream.close_write();
    cx.emit(Event::Resolving {
        cause: error_chain(&cause),
    });
    let id = session.id.unwrap_or_default();
    let until = Instant::now() + cfg.resolve_timeout;
    let status = match redial {
        Some(dial) => resolve(dial, key, &id, ResolveDecision::Commit, cfg.timeout, until),
        None => Err(cause),
    };
    match status {
        Ok(ResolveStatus::Running) => Ok(()),
        // After `Commit`, only `Running` settles anything. `Discarded` cannot answer a commit
        // (only our `Abort` discards, and we never sent one), and `Unknown` comes from a
        // process that never held this session — a restarted or different receiver, whose
        // predecessor may well run the guest. Resuming here could run it twice: the outcome
        // stays unknown and the paused copy is kept.
        other => {
            let cause = match other {
                Err(e) => e,
                Ok(status) => SendError::NotRunning { status },
            };
            Err(SendError::InDoubt {
                session: hex(&id),
                resolve_timeout: cfg.resolve_timeout,
                cause: Box::new(cause),
            })
        }
    }
}

/// The last event of a migration that did not hand over: where the guest is.
fn ended(e: &SendError) -> Event {
    match e {
        SendError::Cancelled { phase } => Event::Cancelled {
            phase: phase.to_string(),
        },
        e => Event::Failed {
            error: error_chain(e),
            outcome: if e.in_doubt() {
                "unknown"
            } else {
                "failed_source_running"
            }
            .to_string(),
        },
    }
}

/// An error and its sources on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
