//! The source side: handshake, pre-copy rounds under the policy's caps, stop-and-copy, hand-over.
//!
//! The sender never holds a copy of guest memory: it encodes one page at a time, straight
//! from guest memory (under the page's region lock), into one frame buffer of at most [`crate::wire::MAX_BATCH_PAGES`]
//! pages (about 1 MiB); the in-flight bound on the source is that frame plus the kernel's
//! socket send buffer.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use livemig_policy::report::{MigrationReport, ReportBuilder, StopCopy};
use livemig_policy::{Action, Decision, DirtySample, Policy, RoundStats, StatsError};

use crate::auth::{self, Key, KeyError, Role};
use crate::guest::Guest;
use crate::keepalive::{self, KeepAlive};
use crate::limiter::{SharedCap, TokenBucket, DEFAULT_BURST_S};
use crate::memory::{MemoryError, PageSet};
use crate::meter::WireMeter;
use crate::wire::{self, BatchWriter, Message, WireError, MAX_BATCH_PAGES, PAGE_SIZE, VERSION};

/// A policy that never chooses stop-and-copy is cut off here.
pub const MAX_ROUNDS: u32 = 10_000;
/// Window of the wire-peak measurement (method.md section 8).
pub const PEAK_WINDOW_S: f64 = 0.1;

/// Sender settings.
#[derive(Debug, Clone)]
pub struct SenderConfig {
    /// Try lz4 on every non-zero page.
    pub compress: bool,
    /// h, for the report.
    pub stop_remaining: f64,
    /// How long to sample the dirty log before round 1 (0 = no sample).
    pub sample_s: f64,
    /// The workload spec, for the report.
    pub workload: Option<String>,
    /// An external cap applied on top of the policy's (changeable while rounds run).
    pub external_cap: SharedCap,
}

impl Default for SenderConfig {
    fn default() -> Self {
        SenderConfig {
            compress: false,
            stop_remaining: 0.0,
            sample_s: 0.5,
            workload: None,
            external_cap: SharedCap::new(),
        }
    }
}

/// Where the sender is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SenderPhase {
    Connected,
    Handshake,
    PreCopy { round: u32 },
    StopCopy,
    AwaitConfirm,
    HandedOver,
    Failed,
}

impl SenderPhase {
    fn name(self) -> &'static str {
        match self {
            SenderPhase::Connected => "connected",
            SenderPhase::Handshake => "handshake",
            SenderPhase::PreCopy { .. } => "pre-copy",
            SenderPhase::StopCopy => "stop-and-copy",
            SenderPhase::AwaitConfirm => "waiting for the destination's confirmation",
            SenderPhase::HandedOver => "handed over",
            SenderPhase::Failed => "failed",
        }
    }

    /// Moves to `next` if the protocol allows it.
    pub fn advance(&mut self, next: SenderPhase) -> Result<(), TransitionError> {
        use SenderPhase::*;
        let ok = match (*self, next) {
            (_, Failed) => !matches!(*self, HandedOver),
            (Connected, Handshake) => true,
            (Handshake, PreCopy { round: 1 }) => true,
            (PreCopy { round: a }, PreCopy { round: b }) => b == a + 1,
            (PreCopy { .. }, StopCopy) => true,
            (StopCopy, AwaitConfirm) => true,
            (AwaitConfirm, HandedOver) => true,
            _ => false,
        };
        if ok {
            *self = next;
            Ok(())
        } else {
            Err(TransitionError {
                from: self.name(),
                to: next.name(),
            })
        }
    }
}

/// A state change the protocol does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the sender cannot go from `{from}` to `{to}`")]
pub struct TransitionError {
    pub from: &'static str,
    pub to: &'static str,
}

/// Why a migration failed on the source. The guest keeps (or resumes) running on the source.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("the connection failed during {phase}")]
    Wire {
        phase: &'static str,
        #[source]
        source: WireError,
    },
    #[error("the destination refused during {phase}: {message} (code {code})")]
    Refused {
        phase: &'static str,
        code: u16,
        message: String,
    },
    #[error("the destination could not prove it holds the shared key (wrong key?)")]
    Auth,
    #[error("the destination sent `{got:?}` during {phase}")]
    Unexpected {
        phase: &'static str,
        got: wire::MsgType,
    },
    #[error("the destination sent {0} keep-alives in a row without progress")]
    Stalled(u32),
    #[error("the destination's confirmation does not carry a valid session tag (forged or tampered with on the way?)")]
    Forged,
    #[error("the destination's memory digest {dest:016x} does not match the source's {source_digest:016x}")]
    Verify { source_digest: u64, dest: u64 },
    #[error("the policy refused a round")]
    Policy(#[from] StatsError),
    #[error("the policy ran {MAX_ROUNDS} rounds without choosing stop-and-copy")]
    Endless,
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error("cannot read guest memory")]
    Memory(#[from] MemoryError),
    #[error("cannot make a handshake nonce")]
    Key(#[from] KeyError),
    #[error("the policy set an invalid cap")]
    Limiter(#[from] crate::limiter::LimiterError),
}

/// What the sender tells its observer (progress lines, tests).
#[derive(Debug)]
pub enum Event<'a> {
    /// Authenticated; the dirty-log sample follows.
    Connected,
    /// The dirty-log sample taken before round 1.
    Sampled(&'a DirtySample),
    /// A round starts with this cap and this many pages.
    RoundStarted { round: u32, cap: f64, pages: u64 },
    /// Pages of the current round sent so far.
    Progress { round: u32, sent: u64, total: u64 },
    /// A round ended; the policy decided.
    RoundEnded {
        stats: &'a RoundStats,
        decision: &'a Decision,
    },
    /// The guest is paused; this many pages remain.
    Paused { pages: u64 },
    /// The destination verified its memory; the source acknowledged.
    HandedOver { downtime_s: f64 },
}

struct Link<'a, S: Read + Write> {
    stream: &'a mut S,
    meter: WireMeter,
    start: Instant,
    phase: SenderPhase,
    /// The destination proved the key: its `Wait` frames are accepted.
    authenticated: bool,
}

impl<S: Read + Write> Link<'_, S> {
    fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    fn send(&mut self, m: &Message) -> Result<(), SendError> {
        let f = m.encode();
        wire::write_frame(self.stream, &f).map_err(|e| self.write_failed(e))?;
        let t = self.now();
        self.meter.record(t, f.len() as u64);
        Ok(())
    }

    fn recv(&mut self) -> Result<Message, SendError> {
        let mut waits = 0u32;
        loop {
            return match Message::read_from(self.stream) {
                Ok((Message::Error { code, message }, _)) => Err(SendError::Refused {
                    phase: self.phase.name(),
                    code,
                    message,
                }),
                // A busy destination (prefault, digest) says it is still working.
                Ok((Message::Wait, _)) if self.authenticated => {
                    waits += 1;
                    if waits > keepalive::MAX_WAITS {
                        return Err(SendError::Stalled(waits));
                    }
                    continue;
                }
                Ok((m, _)) => Ok(m),
                Err(e) => Err(self.wire(e)),
            };
        }
    }

    /// A failed write: when the destination refused and closed, its `Error` (and the reason)
    /// is usually waiting to be read, so report that rather than "connection failed". The
    /// read is bounded by the socket's timeout.
    fn write_failed(&mut self, source: WireError) -> SendError {
        if self.authenticated {
            if let Ok((Message::Error { code, message }, _)) = Message::read_from(self.stream) {
                return SendError::Refused {
                    phase: self.phase.name(),
                    code,
                    message,
                };
            }
        }
        self.wire(source)
    }

    fn wire(&self, source: WireError) -> SendError {
        SendError::Wire {
            phase: self.phase.name(),
            source,
        }
    }

    fn unexpected(&self, m: &Message) -> SendError {
        SendError::Unexpected {
            phase: self.phase.name(),
            got: m.msg_type(),
        }
    }

    /// Sends `pages` under `bucket`, re-reading the external cap before every frame.
    #[allow(clippy::too_many_arguments)]
    fn send_pages(
        &mut self,
        guest: &dyn Guest,
        pages: &PageSet,
        bucket: &mut TokenBucket,
        cap: f64,
        ext: &SharedCap,
        compress: bool,
        round: u32,
        observer: &mut dyn FnMut(&Event<'_>),
    ) -> Result<(), SendError> {
        let total = pages.count();
        let mut batch = BatchWriter::new(compress);
        let mut sent = 0u64;
        let mut it = pages.iter().peekable();
        while it.peek().is_some() {
            let rate = ext.get().map_or(cap, |e| e.min(cap));
            if rate != bucket.rate() {
                let now = self.now();
                bucket.set_rate(rate, now)?;
            }
            // About 2 ms of traffic per frame: a 100 ms window holds ~50 frames, so the window
            // edges cut at most ~2 % off or on at low caps.
            let want = (rate * 0.002 / PAGE_SIZE as f64).clamp(1.0, f64::from(MAX_BATCH_PAGES));
            batch.clear();
            while batch.len() < want as u32 {
                let Some(p) = it.next() else { break };
                guest.memory().with_page(p, |page| batch.push(p, page))?;
            }
            sent += u64::from(batch.len());
            let frame = batch.frame();
            let wait = bucket.take(frame.len() as f64, self.start.elapsed().as_secs_f64());
            sleep_s(wait);
            if let Err(e) = wire::write_frame(self.stream, frame) {
                return Err(self.write_failed(e));
            }
            let (t, n) = (self.now(), frame.len() as u64);
            self.meter.record(t, n);
            observer(&Event::Progress { round, sent, total });
        }
        Ok(())
    }
}

/// Sleeps `s` seconds; nothing for zero, negative or NaN, and no panic for huge values.
fn sleep_s(s: f64) {
    if s > 0.0 {
        std::thread::sleep(Duration::try_from_secs_f64(s).unwrap_or(Duration::MAX));
    }
}

/// Migrates `guest` over `stream` under `policy` (bound the stream's waits with
/// [`crate::net::prepare`] or equivalent). On success the guest is paused for good
/// (handed over: the caller destroys it); on failure it is running again.
pub fn migrate<S: Read + Write>(
    stream: &mut S,
    key: &Key,
    guest: &dyn Guest,
    policy: &mut dyn Policy,
    cfg: &SenderConfig,
    observer: &mut dyn FnMut(&Event<'_>),
) -> Result<MigrationReport, SendError> {
    migrate_measured(stream, key, guest, policy, cfg, observer).map(|(r, _)| r)
}

/// [`migrate`], also returning the wire meter (10 ms bins from the start of round 1), for
/// benchmarks of cap accuracy.
pub fn migrate_measured<S: Read + Write>(
    stream: &mut S,
    key: &Key,
    guest: &dyn Guest,
    policy: &mut dyn Policy,
    cfg: &SenderConfig,
    observer: &mut dyn FnMut(&Event<'_>),
) -> Result<(MigrationReport, WireMeter), SendError> {
    let mut paused = false;
    let r = run(stream, key, guest, policy, cfg, observer, &mut paused);
    if r.is_err() && paused {
        guest.resume();
    }
    r
}

fn run<S: Read + Write>(
    stream: &mut S,
    key: &Key,
    guest: &dyn Guest,
    policy: &mut dyn Policy,
    cfg: &SenderConfig,
    observer: &mut dyn FnMut(&Event<'_>),
    paused: &mut bool,
) -> Result<(MigrationReport, WireMeter), SendError> {
    let mut link = Link {
        stream,
        meter: WireMeter::new(),
        start: Instant::now(),
        phase: SenderPhase::Connected,
        authenticated: false,
    };
    let mem = guest.memory();
    let memory_bytes = mem.bytes();

    // Handshake: version and nonce first; the destination proves the key, then we do.
    link.phase.advance(SenderPhase::Handshake)?;
    let ns = auth::nonce()?;
    link.send(&Message::Hello {
        version: VERSION,
        nonce: ns,
        memory_bytes,
        page_size: PAGE_SIZE as u32,
        compress: cfg.compress,
    })?;
    let nd = match link.recv()? {
        Message::Challenge { nonce, mac } => {
            if !key.verify(Role::Destination, &ns, &nonce, &mac) {
                let _ = link.send(&Message::error(
                    wire::code::AUTH,
                    "the destination's proof of the key does not verify",
                ));
                return Err(SendError::Auth);
            }
            link.authenticated = true;
            nonce
        }
        m => return Err(link.unexpected(&m)),
    };
    link.send(&Message::Auth {
        mac: key.prove(Role::Source, &ns, &nd),
    })?;
    match link.recv()? {
        Message::Ready => {}
        m => return Err(link.unexpected(&m)),
    }
    // The hand-over (State, Confirm, Ack) is tagged with a key only this session knows.
    let session = key.session(&ns, &nd);
    observer(&Event::Connected);

    // A short dirty-log sample for policies that plan from it.
    if cfg.sample_s > 0.0 {
        guest.fetch_and_clear_dirty();
        let t0 = Instant::now();
        let mut sample = DirtySample::default();
        for i in 1..=5 {
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
            &cfg.external_cap,
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

    // Stop-and-copy: pause, send what remains and the state, wait for the verified answer.
    link.phase.advance(SenderPhase::StopCopy)?;
    let pause_at = link.now();
    guest.pause();
    *paused = true;
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
        &cfg.external_cap,
        cfg.compress,
        round + 1,
        observer,
    )?;
    // Digesting a large guest takes longer than the destination's frame deadline.
    let mut ka = KeepAlive::new(link.stream, keepalive::EVERY);
    let digest = mem.digest_with(&mut || ka.tick());
    ka.finish().map_err(|e| link.wire(e))?;
    let blob = guest.state();
    let state_bytes = blob.len();
    link.send(&session.seal(
        round,
        Message::State {
            digest,
            tag: [0; wire::TAG_LEN],
            blob,
        },
    ))?;
    link.phase.advance(SenderPhase::AwaitConfirm)?;
    match link.recv()? {
        m @ Message::Confirm { .. } if !session.verify(round, &m) => {
            let _ = link.send(&Message::error(
                wire::code::AUTH,
                "the confirmation does not carry a valid session tag",
            ));
            return Err(SendError::Forged);
        }
        Message::Confirm { ok, digest: d, .. } => {
            if !ok || d != digest {
                return Err(SendError::Verify {
                    source_digest: digest,
                    dest: d,
                });
            }
        }
        m => return Err(link.unexpected(&m)),
    }
    link.send(&session.seal(
        round,
        Message::Ack {
            tag: [0; wire::TAG_LEN],
        },
    ))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_follow_the_protocol() {
        let mut p = SenderPhase::Connected;
        assert!(p.advance(SenderPhase::StopCopy).is_err());
        p.advance(SenderPhase::Handshake).expect("ok");
        assert!(p.advance(SenderPhase::PreCopy { round: 2 }).is_err());
        p.advance(SenderPhase::PreCopy { round: 1 }).expect("ok");
        p.advance(SenderPhase::PreCopy { round: 2 }).expect("ok");
        assert!(p.advance(SenderPhase::HandedOver).is_err());
        p.advance(SenderPhase::StopCopy).expect("ok");
        p.advance(SenderPhase::AwaitConfirm).expect("ok");
        p.advance(SenderPhase::HandedOver).expect("ok");
        assert!(
            p.advance(SenderPhase::Failed).is_err(),
            "no failing after hand-over"
        );
    }
}
