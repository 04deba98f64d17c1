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

use std::net::TcpStream;
use std::time::{Duration, Instant};

use livemig_policy::report::{MigrationReport, ReportBuilder, StopCopy};
use livemig_policy::{Action, Control, Decision, DirtySample, Policy, RoundStats, StatsError};

use crate::auth::{self, Channel, Forged, Key, KeyError, Role};
use crate::guest::Guest;
use crate::keepalive::{self, KeepAlive};
use crate::limiter::{TokenBucket, DEFAULT_BURST_S};
use crate::memory::{MemoryError, PageSet};
use crate::meter::WireMeter;
use crate::net::{NetError, Transport};
use crate::wire::{
    self, read_within, write_within, BatchWriter, Message, Mode, ResolveDecision, ResolveStatus,
    WireError, MAX_BATCH_PAGES, ONE_PAGE_FRAME, PAGE_SIZE, SESSION_ID_LEN, VERSION,
};

/// A policy that never chooses stop-and-copy is cut off here.
pub const MAX_ROUNDS: u32 = 10_000;
/// Window of the wire-peak measurement (method.md section 8).
pub const PEAK_WINDOW_S: f64 = 0.1;
/// Pause between two attempts to reach the destination while settling a hand-over.
pub const REDIAL_EVERY: Duration = Duration::from_millis(200);

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
    /// Deadline of the handshake, of every frame read or written, and of every keep-alive gap.
    pub timeout: Duration,
    /// Longest pause of the guest before the source has committed: past it, the source aborts
    /// the hand-over and resumes its guest.
    pub max_pause: Duration,
    /// After `Commit`, how long the source keeps trying to learn the destination's outcome
    /// (reconnecting) before it reports the outcome unknown.
    pub resolve_timeout: Duration,
    /// How often to send `Wait` during long local work (the digest at pause).
    pub keepalive: Duration,
}

impl Default for SenderConfig {
    fn default() -> Self {
        SenderConfig {
            compress: false,
            stop_remaining: 0.0,
            sample_s: 0.5,
            workload: None,
            timeout: Duration::from_secs(10),
            max_pause: Duration::from_secs(30),
            resolve_timeout: Duration::from_secs(60),
            keepalive: keepalive::EVERY,
        }
    }
}

/// Why sender settings cannot work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("a cap of {cap:.0} bytes/s cannot move one page frame ({ONE_PAGE_FRAME} bytes) within half the timeout of {timeout:?}; raise the cap to at least {need:.0} bytes/s or the timeout")]
    CapTooLow {
        cap: f64,
        timeout: Duration,
        need: f64,
    },
    #[error("the {what} must be positive")]
    Zero { what: &'static str },
    #[error("the maximum pause ({max_pause:?}) must be longer than the timeout ({timeout:?}): the destination's digest and answer must fit in it")]
    PauseTooShort {
        max_pause: Duration,
        timeout: Duration,
    },
    #[error("the resolve timeout ({resolve_timeout:?}) must be longer than the timeout ({timeout:?}): a destination may take that long to notice a lost commit")]
    ResolveTooShort {
        resolve_timeout: Duration,
        timeout: Duration,
    },
    #[error("the dirty-log sample ({sample_s} s) must be shorter than half the timeout ({timeout:?}): the destination hears nothing while it runs")]
    SampleTooLong { sample_s: f64, timeout: Duration },
}

impl SenderConfig {
    /// The lowest cap accepted: one frame of one page in half the timeout (the other half is
    /// margin for the token bucket's burst and the peer's deadline).
    pub fn min_cap(timeout: Duration) -> f64 {
        2.0 * ONE_PAGE_FRAME as f64 / timeout.as_secs_f64().max(1e-9)
    }

    /// Checks the settings against the lowest cap the policy may set.
    pub fn check(&self, lowest_cap: f64) -> Result<(), ConfigError> {
        for (what, d) in [
            ("timeout", self.timeout),
            ("maximum pause", self.max_pause),
            ("resolve timeout", self.resolve_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::Zero { what });
            }
        }
        if self.max_pause <= self.timeout {
            return Err(ConfigError::PauseTooShort {
                max_pause: self.max_pause,
                timeout: self.timeout,
            });
        }
        if self.resolve_timeout <= self.timeout {
            return Err(ConfigError::ResolveTooShort {
                resolve_timeout: self.resolve_timeout,
                timeout: self.timeout,
            });
        }
        // The destination hears nothing during the sample: it must end well within its
        // frame deadline (taken to be ours).
        if self.sample_s >= self.timeout.as_secs_f64() / 2.0 {
            return Err(ConfigError::SampleTooLong {
                sample_s: self.sample_s,
                timeout: self.timeout,
            });
        }
        let need = SenderConfig::min_cap(self.timeout);
        if lowest_cap.is_nan() || lowest_cap < need {
            return Err(ConfigError::CapTooLow {
                cap: lowest_cap,
                timeout: self.timeout,
                need,
            });
        }
        Ok(())
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
    Committed,
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
            SenderPhase::Committed => "waiting for the destination to run the guest",
            SenderPhase::HandedOver => "handed over",
            SenderPhase::Failed => "failed",
        }
    }

    /// Moves to `next` if the protocol allows it.
    pub fn advance(&mut self, next: SenderPhase) -> Result<(), TransitionError> {
        use SenderPhase::*;
        let ok = match (*self, next) {
            (_, Failed) => !matches!(*self, HandedOver | Committed),
            (Connected, Handshake) => true,
            (Handshake, PreCopy { round: 1 }) => true,
            (PreCopy { round: a }, PreCopy { round: b }) => b == a + 1,
            (PreCopy { .. }, StopCopy) => true,
            (StopCopy, AwaitConfirm) => true,
            (AwaitConfirm, Committed) => true,
            (Committed, HandedOver) => true,
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

/// Why a migration did not hand over. Every variant but [`SendError::InDoubt`] leaves the guest
/// running on the source.
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
    #[error("the destination could not prove it holds the shared key (wrong key, or the handshake was altered on the way)")]
    Auth,
    #[error("the destination sent `{got:?}` during {phase}")]
    Unexpected {
        phase: &'static str,
        got: wire::MsgType,
    },
    #[error("the destination sent {0} keep-alives in a row without progress")]
    Stalled(u32),
    #[error("during {phase}")]
    Forged {
        phase: &'static str,
        #[source]
        source: Forged,
    },
    #[error("the destination's memory digest {dest:016x} does not match the source's {source_digest:016x}")]
    Verify { source_digest: u64, dest: u64 },
    #[error("the guest stayed paused for the maximum pause of {0:?} without the destination's confirmation; the source aborted the hand-over")]
    PauseExceeded(Duration),
    #[error("cancelled during {phase}; the guest keeps running on the source")]
    Cancelled { phase: &'static str },
    #[error("the cap fell to {cap:.0} bytes/s, too low to move one frame within the timeout of {timeout:?}")]
    CapTooLow { cap: f64, timeout: Duration },
    #[error("the destination answered {status:?}, not that it runs the guest")]
    NotRunning { status: ResolveStatus },
    #[error("outcome unknown: the source committed the hand-over but could not learn within {resolve_timeout:?} whether the destination runs the guest; the guest stays paused here (session {session})")]
    InDoubt {
        session: String,
        resolve_timeout: Duration,
        #[source]
        cause: Box<SendError>,
    },
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
    #[error("cannot reach the destination")]
    Dial(#[from] NetError),
}

impl SendError {
    /// Whether the outcome is unknown: the guest is paused on the source and may or may not
    /// run on the destination. Every other error leaves the guest running on the source.
    pub fn in_doubt(&self) -> bool {
        matches!(self, SendError::InDoubt { .. })
    }

    /// The session id (hex) of an outcome in doubt.
    pub fn session(&self) -> Option<&str> {
        match self {
            SendError::InDoubt { session, .. } => Some(session),
            _ => None,
        }
    }
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
    /// The destination holds a verified copy; the source commits.
    Committed,
    /// The answer to `Commit` was lost; the source reconnects to learn the outcome.
    Resolving { cause: String },
    /// The destination runs the guest; the source's copy may go.
    HandedOver { downtime_s: f64 },
}

/// Reconnects to the destination (a fresh TCP connection, timeouts set) to settle a hand-over.
pub type Redial<'a> = dyn FnMut() -> Result<TcpStream, NetError> + 'a;

struct Link<'a, S: Transport> {
    stream: &'a mut S,
    meter: WireMeter,
    start: Instant,
    phase: SenderPhase,
    chan: Option<Channel>,
    timeout: Duration,
    /// While paused and not committed: when the source gives up and resumes.
    pause_deadline: Option<(Instant, Duration)>,
    /// A bound on everything this link does (a resolve attempt's share of its window).
    outer: Option<(Instant, Duration)>,
    spare: Vec<u8>,
}

impl<S: Transport> Link<'_, S> {
    fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// The deadline of the next frame: the timeout, or the pause deadline if earlier.
    fn deadline(&self) -> wire::frames::Deadline {
        let mut d = (Instant::now() + self.timeout, self.timeout);
        for bound in [self.pause_deadline, self.outer].into_iter().flatten() {
            if bound.0 < d.0 {
                d = bound;
            }
        }
        Some(d)
    }

    fn pause_over(&self) -> Result<(), SendError> {
        match self.pause_deadline {
            Some((at, limit)) if Instant::now() >= at => Err(SendError::PauseExceeded(limit)),
            _ => Ok(()),
        }
    }

    fn send(&mut self, m: &Message) -> Result<(), SendError> {
        let f = match self.chan.as_mut() {
            Some(c) => c.seal(m),
            None => m.encode(),
        };
        self.send_raw(&f)
    }

    fn send_raw(&mut self, f: &[u8]) -> Result<(), SendError> {
        let d = self.deadline();
        write_within(self.stream, f, d).map_err(|e| self.write_failed(e))?;
        let t = self.now();
        self.meter.record(t, f.len() as u64);
        Ok(())
    }

    fn recv(&mut self) -> Result<Message, SendError> {
        let mut waits = 0u32;
        loop {
            let d = self.deadline();
            let f = read_within(self.stream, &mut self.spare, d).map_err(|e| self.wire(e))?;
            let m = match self.chan.as_mut() {
                Some(c) => c.open(f).map_err(|source| SendError::Forged {
                    phase: self.phase.name(),
                    source,
                })?,
                None => f.msg,
            };
            return match m {
                Message::Error { code, message } => Err(SendError::Refused {
                    phase: self.phase.name(),
                    code,
                    message,
                }),
                // A busy destination (prefault, digest) says it is still working; each Wait is
                // tagged, and the pause deadline bounds them while the guest is paused.
                Message::Wait if self.chan.is_some() => {
                    waits += 1;
                    if waits > keepalive::MAX_WAITS {
                        return Err(SendError::Stalled(waits));
                    }
                    continue;
                }
                m => Ok(m),
            };
        }
    }

    /// A failed write: when the destination refused and closed, its `Error` (and the reason)
    /// is usually waiting to be read, so report that rather than "connection failed". The
    /// read is bounded by one short deadline.
    fn write_failed(&mut self, source: WireError) -> SendError {
        if self.chan.is_some() {
            let short = Duration::from_millis(500).min(self.timeout);
            if let Ok(f) = read_within(
                self.stream,
                &mut Vec::new(),
                Some((Instant::now() + short, short)),
            ) {
                if let Message::Error { code, message } = f.msg {
                    return SendError::Refused {
                        phase: self.phase.name(),
                        code,
                        message,
                    };
                }
            }
        }
        self.wire(source)
    }

    /// Cancelled from outside: tell the destination why (best effort, briefly) and fail.
    fn cancelled(&mut self) -> SendError {
        let short = Duration::from_millis(500).min(self.timeout);
        let f = Message::error(wire::code::CANCELLED, "the source was cancelled").encode();
        let _ = write_within(self.stream, &f, Some((Instant::now() + short, short)));
        SendError::Cancelled {
            phase: self.phase.name(),
        }
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
        control: &Control,
        compress: bool,
        round: u32,
        observer: &mut dyn FnMut(&Event<'_>),
    ) -> Result<(), SendError> {
        let total = pages.count();
        let mut batch = BatchWriter::new(compress);
        let mut sent = 0u64;
        let mut it = pages.iter().peekable();
        while it.peek().is_some() {
            self.pause_over()?;
            if control.is_cancelled() {
                return Err(self.cancelled());
            }
            let rate = control.effective(cap);
            if rate.is_nan() || rate < SenderConfig::min_cap(self.timeout) {
                return Err(SendError::CapTooLow {
                    cap: rate,
                    timeout: self.timeout,
                });
            }
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
            let Some(chan) = self.chan.as_mut() else {
                return Err(SendError::Auth);
            };
            let frame = batch.frame_with_tag(|body| chan.tag_next(wire::MsgType::Pages, body));
            let wait = bucket.take(frame.len() as f64, self.start.elapsed().as_secs_f64());
            // Never sleep past the timeout (the peer would give up) or the pause deadline.
            let pause_left = self.pause_deadline.map_or(f64::INFINITY, |(at, _)| {
                at.saturating_duration_since(Instant::now()).as_secs_f64()
            });
            sleep_s(wait.min(self.timeout.as_secs_f64()).min(pause_left));
            self.pause_over()?;
            let d = self.deadline();
            if let Err(e) = write_within(self.stream, frame, d) {
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

/// The source's half of the handshake on `link`: `Hello` in `mode`, the destination's proof
/// over the transcript, ours. Returns the session channel.
fn handshake<S: Transport>(
    link: &mut Link<'_, S>,
    key: &Key,
    memory_bytes: u64,
    compress: bool,
    mode: Mode,
) -> Result<Channel, SendError> {
    let hello = Message::Hello {
        version: VERSION,
        nonce: auth::nonce()?,
        memory_bytes,
        page_size: PAGE_SIZE as u32,
        compress,
        mode,
    };
    let transcript = hello.body();
    // The whole handshake, however the destination trickles it, within one timeout.
    let end = Instant::now() + link.timeout;
    link.pause_deadline = Some((end, link.timeout));
    link.send(&hello)?;
    let nd = match link.recv()? {
        Message::Challenge { nonce, mac } => {
            if !key.verify(Role::Destination, &transcript, &nonce, &mac) {
                let _ = link.send(&Message::error(
                    wire::code::AUTH,
                    "the destination's proof of the key does not verify",
                ));
                return Err(SendError::Auth);
            }
            nonce
        }
        m => return Err(link.unexpected(&m)),
    };
    link.send(&Message::Auth {
        mac: key.prove(Role::Source, &transcript, &nd),
    })?;
    link.pause_deadline = None;
    Ok(Channel::new(key.session(&transcript, &nd), Role::Source))
}

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

/// A session id as hex.
pub fn hex(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// Settles session `id` with the destination: reconnects with `dial` (an authenticated
/// [`Mode::Resolve`] handshake), tells it `decision` and returns what it did, retrying until
/// `until` while the destination is unreachable or still has the session's connection open.
pub fn resolve(
    dial: &mut Redial<'_>,
    key: &Key,
    id: &[u8; SESSION_ID_LEN],
    decision: ResolveDecision,
    timeout: Duration,
    until: Instant,
) -> Result<ResolveStatus, SendError> {
    loop {
        let r = dial()
            .map_err(SendError::from)
            .and_then(|mut s| resolve_once(&mut s, key, id, decision, timeout, until));
        // Telling a destination to discard: if nothing listens there any more, no process
        // holds a copy to discard (a hold file it may have saved is for an operator).
        let gone = matches!(
            &r,
            Err(SendError::Dial(NetError::Connect { source, .. }))
                if source.kind() == std::io::ErrorKind::ConnectionRefused
        );
        match r {
            Err(_) if gone && decision == ResolveDecision::Abort => return r,
            Ok(ResolveStatus::Pending) | Err(_) if Instant::now() + REDIAL_EVERY < until => {
                std::thread::sleep(REDIAL_EVERY);
            }
            r => return r,
        }
    }
}

fn resolve_once(
    stream: &mut TcpStream,
    key: &Key,
    id: &[u8; SESSION_ID_LEN],
    decision: ResolveDecision,
    timeout: Duration,
    until: Instant,
) -> Result<ResolveStatus, SendError> {
    let mut link = Link {
        stream,
        meter: WireMeter::new(),
        start: Instant::now(),
        phase: SenderPhase::Handshake,
        chan: None,
        timeout,
        pause_deadline: None,
        outer: Some((until, timeout)),
        spare: Vec::new(),
    };
    let chan = handshake(&mut link, key, 0, false, Mode::Resolve)?;
    link.chan = Some(chan);
    link.send(&Message::Resolve {
        session: *id,
        decision,
    })?;
    match link.recv()? {
        Message::Resolved { status } => {
            if status == ResolveStatus::Running {
                // Best effort: the destination stops waiting for our questions.
                let _ = link.send(&Message::Done);
            }
            Ok(status)
        }
        m => Err(link.unexpected(&m)),
    }
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
        assert!(p.advance(SenderPhase::HandedOver).is_err(), "commit first");
        p.advance(SenderPhase::Committed).expect("ok");
        assert!(
            p.advance(SenderPhase::Failed).is_err(),
            "no failing (resuming) after the commit point"
        );
        p.advance(SenderPhase::HandedOver).expect("ok");
        assert!(
            p.advance(SenderPhase::Failed).is_err(),
            "no failing after hand-over"
        );
    }

    #[test]
    fn caps_too_low_for_one_frame_are_refused() {
        let cfg = SenderConfig {
            timeout: Duration::from_secs(10),
            ..SenderConfig::default()
        };
        assert!(matches!(cfg.check(1.0), Err(ConfigError::CapTooLow { .. })));
        assert!(matches!(
            cfg.check(f64::NAN),
            Err(ConfigError::CapTooLow { .. })
        ));
        assert!(cfg.check(SenderConfig::min_cap(cfg.timeout)).is_ok());
        let short = SenderConfig {
            max_pause: Duration::from_secs(5),
            ..cfg.clone()
        };
        assert!(matches!(
            short.check(1e9),
            Err(ConfigError::PauseTooShort { .. })
        ));
        let resolve = SenderConfig {
            resolve_timeout: Duration::from_secs(10),
            ..cfg.clone()
        };
        assert!(matches!(
            resolve.check(1e9),
            Err(ConfigError::ResolveTooShort { .. })
        ));
        let sample = SenderConfig {
            sample_s: 5.0,
            ..cfg.clone()
        };
        assert!(matches!(
            sample.check(1e9),
            Err(ConfigError::SampleTooLong { .. })
        ));
    }
}
