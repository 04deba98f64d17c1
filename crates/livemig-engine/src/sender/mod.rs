//! The source side: handshake, pre-copy rounds under the policy's caps, stop-and-copy, and the
//! commit protocol that never loses the guest (`docs/protocol.md`).
//!
//! The source keeps its paused copy until it holds authenticated proof (`Running`) that the
//! destination runs the guest. Before it sends `Commit` any failure resumes its guest (the
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
//! - `state`: [`SenderPhase`], [`SendError`], [`Event`].
//! - `link`: one connection under deadlines, page frames, the handshake.
//! - `settle`: settling a lost hand-over by reconnecting ([`resolve`]).

mod config;
mod link;
mod settle;
mod state;

pub use config::{ConfigError, SenderConfig};
pub use settle::{hex, resolve, Redial};
pub use state::{Event, SendError, SenderPhase, TransitionError};

use std::time::{Duration, Instant};

use livemig_policy::report::{MigrationReport, ReportBuilder, StopCopy};
use livemig_policy::{Action, Control, DirtySample, Policy, RoundStats};

use crate::auth::Key;
use crate::guest::Guest;
use crate::keepalive::KeepAlive;
use crate::limiter::{TokenBucket, DEFAULT_BURST_S};
use crate::memory::PageSet;
use crate::meter::WireMeter;
use crate::net::Transport;
use crate::wire::{
    Message, Mode, ResolveDecision, ResolveStatus, WireError, PAGE_SIZE, SESSION_ID_LEN,
};

use link::{handshake, sleep_s, Link};

/// A policy that never chooses stop-and-copy is cut off here.
pub const MAX_ROUNDS: u32 = 10_000;
/// Window of the wire-peak measurement (method.md section 8).
pub const PEAK_WINDOW_S: f64 = 0.1;
/// Pause between two attempts to reach the destination while settling a hand-over.
pub const REDIAL_EVERY: Duration = Duration::from_millis(200);

/// Migrates `guest` over `stream` under `policy` (bound the stream's waits with
/// [`crate::net::prepare`] or equivalent), without reconnecting: a lost answer to `Commit`
/// ends in [`SendError::InDoubt`]. On success the guest is paused for good (handed over: the
/// caller destroys it); on [`SendError::InDoubt`] it is paused and must be kept; on any other
/// failure it is running again.
pub fn migrate<S: Transport>(
    stream: &mut S,
    key: &Key,
    guest: &dyn Guest,
    policy: &mut dyn Policy,
    cfg: &SenderConfig,
    control: &Control,
    observer: &mut dyn FnMut(&Event<'_>),
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
    observer: &mut dyn FnMut(&Event<'_>),
    mut redial: Option<&mut Redial<'_>>,
) -> Result<(MigrationReport, WireMeter), SendError> {
    let mut paused = false;
    let mut session = None;
    let r = run(
        stream,
        key,
        guest,
        policy,
        cfg,
        control,
        observer,
        &mut paused,
        &mut session,
        redial.as_deref_mut(),
    );
    match r {
        Err(e) if !e.in_doubt() => {
            if paused {
                guest.resume();
            }
            // The destination may hold a verified copy waiting for our word (its connection
            // broke before our `Abort`): tell it, best effort, now that the guest runs here.
            if let (Some(id), Some(dial)) = (session, redial) {
                if paused {
                    let until = Instant::now() + cfg.resolve_timeout.min(cfg.timeout * 3);
                    let _ = resolve(dial, key, &id, ResolveDecision::Abort, cfg.timeout, until);
                }
            }
            Err(e)
        }
        r => r,
    }
}

#[allow(clippy::too_many_arguments)]
fn run<S: Transport>(
    stream: &mut S,
    key: &Key,
    guest: &dyn Guest,
    policy: &mut dyn Policy,
    cfg: &SenderConfig,
    control: &Control,
    observer: &mut dyn FnMut(&Event<'_>),
    paused: &mut bool,
    session: &mut Option<[u8; SESSION_ID_LEN]>,
    redial: Option<&mut Redial<'_>>,
) -> Result<(MigrationReport, WireMeter), SendError> {
    let mut link = Link {
        stream,
        meter: WireMeter::new(),
        start: Instant::now(),
        phase: SenderPhase::Connected,
        chan: None,
        timeout: cfg.timeout,
        pause_deadline: None,
        outer: None,
        spare: Vec::new(),
    };
    let mem = guest.memory();
    let memory_bytes = mem.bytes();

    link.phase.advance(SenderPhase::Handshake)?;
    let chan = handshake(&mut link, key, memory_bytes, cfg.compress, Mode::Migrate)?;
    *session = Some(chan.id());
    link.chan = Some(chan);
    match link.recv()? {
        Message::Ready => {}
        m => return Err(link.unexpected(&m)),
    }
    observer(&Event::Connected);

    // A short dirty-log sample for policies that plan from it.
    if cfg.sample_s > 0.0 {
        guest.fetch_and_clear_dirty();
        let t0 = Instant::now();
        let mut sample = DirtySample::default();
        for i in 1..=5 {
            if control.is_cancelled() {
                return Err(link.cancelled());
            }
            let at = cfg.sample_s * f64::from(i) / 5.0;
            sleep_s(at - t0.elapsed().as_secs_f64());
            let el = t0.elapsed().as_secs_f64();
            sample
                .points
                .push((el, (guest.dirty_pages() * PAGE_SIZE as u64) as f64));
        }
        policy.observe_sample(&sample);
        observer(&Event::Sampled(&sample));
    }

    let mut report = ReportBuilder::new(
        policy.name(),
        "engine",
        memory_bytes as f64,
        cfg.stop_remaining,
        policy.threshold(),
    );
    if let Some(w) = &cfg.workload {
        report = report.workload(w);
    }
    link.meter = WireMeter::new();
    link.start = Instant::now();
    let mut cap = policy.first_cap();
    let mut bucket = TokenBucket::new(cap, DEFAULT_BURST_S, 0.0)?;
    guest.fetch_and_clear_dirty();
    let mut to_send = PageSet::all(mem.pages());
    let mut round = 0u32;
    let remaining = loop {
        round += 1;
        if round > MAX_ROUNDS {
            return Err(SendError::Endless);
        }
        if control.is_cancelled() {
            return Err(link.cancelled());
        }
        link.phase.advance(SenderPhase::PreCopy { round })?;
        let pages = to_send.count();
        observer(&Event::RoundStarted { round, cap, pages });
        let t0 = link.now();
        bucket.set_rate(cap, t0)?;
        link.send(&Message::RoundStart { round, pages })?;
        link.send_pages(
            guest,
            &to_send,
            &mut bucket,
            cap,
            control,
            cfg.compress,
            round,
            observer,
        )?;
        link.send(&Message::RoundEnd { round, pages })?;
        let duration = link.now() - t0;
        let dirty = guest.fetch_and_clear_dirty();
        let stats = RoundStats {
            round,
            cap_bytes_per_s: cap,
            bytes_sent: (pages * PAGE_SIZE as u64) as f64,
            duration_s: duration,
            dirty_bytes: (dirty.count() * PAGE_SIZE as u64) as f64,
        };
        let decision = policy.after_round(&stats)?;
        report.round(&stats, &decision);
        observer(&Event::RoundEnded {
            stats: &stats,
            decision: &decision,
        });
        match decision.action {
            Action::Continue {
                next_cap_bytes_per_s,
            } => {
                cap = next_cap_bytes_per_s;
                to_send = dirty;
            }
            Action::StopAndCopy { .. } => break dirty,
        }
    };

    // Stop-and-copy: pause, send what remains and the state, wait for the verified answer,
    // all within the maximum pause.
    link.phase.advance(SenderPhase::StopCopy)?;
    let pause_at = link.now();
    guest.pause();
    *paused = true;
    link.pause_deadline = Some((Instant::now() + cfg.max_pause, cfg.max_pause));
    let mut remaining = remaining;
    remaining.union_with(&guest.fetch_and_clear_dirty());
    let pages = remaining.count();
    observer(&Event::Paused { pages });
    let stop_cap = policy.stop_copy_cap();
    bucket.set_rate(stop_cap, link.now())?;
    link.send(&Message::StopCopy { pages })?;
    link.send_pages(
        guest,
        &remaining,
        &mut bucket,
        stop_cap,
        control,
        cfg.compress,
        round + 1,
        observer,
    )?;
    // Digesting a large guest takes longer than the destination's frame deadline.
    let digest = {
        let Some(chan) = link.chan.as_mut() else {
            return Err(SendError::Auth);
        };
        let mut ka = KeepAlive::new(link.stream, chan, cfg.keepalive, link.timeout)
            .until(link.pause_deadline.map(|(at, _)| at));
        let d = mem.digest_with(&mut || ka.tick());
        ka.finish().map_err(|e| SendError::Wire {
            phase: "stop-and-copy",
            source: e,
        })?;
        d
    };
    link.pause_over()?;
    let blob = guest.state();
    let state_bytes = blob.len();
    link.send(&Message::State { digest, blob })?;
    link.phase.advance(SenderPhase::AwaitConfirm)?;
    let verdict = match link.recv() {
        Ok(Message::Confirm {
            ok: true,
            digest: d,
        }) if d == digest => Ok(()),
        Ok(Message::Confirm { digest: d, .. }) => Err(SendError::Verify {
            source_digest: digest,
            dest: d,
        }),
        Ok(m) => Err(link.unexpected(&m)),
        Err(SendError::Wire {
            source: WireError::Deadline(_),
            ..
        }) if link.pause_over().is_err() => Err(SendError::PauseExceeded(cfg.max_pause)),
        Err(e) => Err(e),
    };
    // The last moment a cancellation can stop the hand-over: past it, it is ignored.
    let verdict = match verdict {
        Ok(()) if control.is_cancelled() => Err(SendError::Cancelled {
            phase: link.phase.name(),
        }),
        v => v,
    };
    if let Err(e) = verdict {
        // Not committed: the destination must discard what it holds. Best effort on this
        // connection, briefly; the caller also tells it by reconnecting.
        link.timeout = link.timeout.min(Duration::from_millis(500));
        link.pause_deadline = None;
        let _ = link.send(&Message::Abort);
        // The destination reads the Abort (if it arrives), then the end: it stops waiting for
        // us at once and holds what it has for our `Resolve{Abort}` to settle.
        link.stream.close_write();
        return Err(e);
    }

    // The commit point: from here the source never resumes its copy on its own.
    link.phase.advance(SenderPhase::Committed)?;
    link.pause_deadline = None;
    observer(&Event::Committed);
    let answer = match link.send(&Message::Commit) {
        Ok(()) => match link.recv() {
            Ok(Message::Running) => {
                // Tell the destination we know, so it need not wait for our questions (best
                // effort: if this is lost it waits a little longer, nothing else).
                let _ = link.send(&Message::Done);
                Ok(())
            }
            Ok(m) => Err(link.unexpected(&m)),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    if let Err(cause) = answer {
        // Whatever the destination got of this connection, it now sees its end at once and
        // holds its copy for our `Resolve{Commit}` rather than waiting out its deadline.
        link.stream.close_write();
        observer(&Event::Resolving {
            cause: error_chain(&cause),
        });
        let id = session.unwrap_or_default();
        let until = Instant::now() + cfg.resolve_timeout;
        let status = match redial {
            Some(dial) => resolve(dial, key, &id, ResolveDecision::Commit, cfg.timeout, until),
            None => Err(cause),
        };
        match status {
            Ok(ResolveStatus::Running) => {}
            // After `Commit`, only `Running` settles anything. `Discarded` cannot answer a
            // commit (only our `Abort` discards, and we never sent one), and `Unknown` comes
            // from a process that never held this session — a restarted or different receiver,
            // whose predecessor may well run the guest. Resuming here could run it twice: the
            // outcome stays unknown and the paused copy is kept.
            other => {
                let cause = match other {
                    Err(e) => e,
                    Ok(status) => SendError::NotRunning { status },
                };
                return Err(SendError::InDoubt {
                    session: hex(&id),
                    resolve_timeout: cfg.resolve_timeout,
                    cause: Box::new(cause),
                });
            }
        }
    }
    let downtime = link.now() - pause_at;
    link.phase.advance(SenderPhase::HandedOver)?;
    observer(&Event::HandedOver {
        downtime_s: downtime,
    });
    let peak = link.meter.peak(PEAK_WINDOW_S);
    let report = report.finish(
        StopCopy {
            bytes: (pages * PAGE_SIZE as u64) as f64,
            state_bytes: state_bytes as f64,
            downtime_s: downtime,
        },
        peak,
    );
    Ok((report, link.meter))
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
