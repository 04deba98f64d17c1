//! One connection as the source sees it: deadlines (frame, pause, outer), tagged sends and
//! checked receives, page frames under the token bucket, and the source's half of the
//! handshake.

use std::time::{Duration, Instant};

use livemig_policy::pilot::Pilot;
use livemig_policy::Control;
use livemig_policy::TimeoutAction;

use crate::auth::{self, Channel, Key, Role, Transcript};
use crate::keepalive;
use crate::limiter::TokenBucket;
use crate::memory::PageSet;
use crate::meter::WireMeter;
use crate::net::Transport;
use crate::pagehash::page_hash;
use crate::wire::{
    self, read_within, write_within, BatchWriter, Message, Mode, NoCommonVersion, Versions,
    WireError, MAX_BATCH_PAGES, PAGE_SIZE,
};

use super::{Ctx, Event, SendError, SenderConfig, SenderPhase};

pub(super) struct Link<'a, S: Transport> {
    pub(super) stream: &'a mut S,
    pub(super) meter: WireMeter,
    pub(super) start: Instant,
    pub(super) phase: SenderPhase,
    pub(super) chan: Option<Channel>,
    pub(super) timeout: Duration,
    /// While paused and not committed: when the source gives up and resumes.
    pub(super) pause_deadline: Option<(Instant, Duration)>,
    /// A bound on everything this link does (a resolve attempt's share of its window).
    pub(super) outer: Option<(Instant, Duration)>,
    pub(super) spare: Vec<u8>,
    /// Cancellation, honoured while the destination keeps us waiting (`Wait`) before the
    /// commit point.
    pub(super) cancel: Option<Control>,
}

impl<'a, S: Transport> Link<'a, S> {
    /// A fresh link on `stream`, frames bounded by `timeout`.
    pub(super) fn new(stream: &'a mut S, timeout: Duration) -> Link<'a, S> {
        Link {
            stream,
            meter: WireMeter::new(),
            start: Instant::now(),
            phase: SenderPhase::Connected,
            chan: None,
            timeout,
            pause_deadline: None,
            outer: None,
            spare: Vec::new(),
            cancel: None,
        }
    }

    pub(super) fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// The deadline of the next frame: the timeout, or the pause deadline if earlier.
    pub(super) fn deadline(&self) -> wire::frames::Deadline {
        let mut d = (Instant::now() + self.timeout, self.timeout);
        for bound in [self.pause_deadline, self.outer].into_iter().flatten() {
            if bound.0 < d.0 {
                d = bound;
            }
        }
        Some(d)
    }

    pub(super) fn pause_over(&self) -> Result<(), SendError> {
        match self.pause_deadline {
            Some((at, limit)) if Instant::now() >= at => Err(SendError::PauseExceeded(limit)),
            _ => Ok(()),
        }
    }

    pub(super) fn send(&mut self, m: &Message) -> Result<(), SendError> {
        let f = match self.chan.as_mut() {
            Some(c) => c.seal(m),
            None => m.encode(),
        };
        self.send_raw(&f)
    }

    pub(super) fn send_raw(&mut self, f: &[u8]) -> Result<(), SendError> {
        let d = self.deadline();
        write_within(self.stream, f, d).map_err(|e| self.write_failed(e))?;
        let t = self.now();
        self.meter.record(t, f.len() as u64);
        Ok(())
    }

    pub(super) fn recv(&mut self) -> Result<Message, SendError> {
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
                    let before_commit =
                        !matches!(self.phase, SenderPhase::Committed | SenderPhase::HandedOver);
                    if before_commit && self.cancel.as_ref().is_some_and(Control::is_cancelled) {
                        return Err(self.cancelled());
                    }
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
    pub(super) fn write_failed(&mut self, source: WireError) -> SendError {
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
    pub(super) fn cancelled(&mut self) -> SendError {
        let short = Duration::from_millis(500).min(self.timeout);
        let f = Message::error(wire::code::CANCELLED, "the source was cancelled").encode();
        let _ = write_within(self.stream, &f, Some((Instant::now() + short, short)));
        SendError::Cancelled {
            phase: self.phase.name(),
        }
    }

    pub(super) fn wire(&self, source: WireError) -> SendError {
        SendError::Wire {
            phase: self.phase.name(),
            source,
        }
    }

    pub(super) fn unexpected(&self, m: &Message) -> SendError {
        SendError::Unexpected {
            phase: self.phase.name(),
            got: m.msg_type(),
        }
    }

    /// Sends `pages` under `bucket` for `round` (0: stop-and-copy). Before every frame it
    /// applies the grant through the pilot (a lowered grant is on the wire within one frame,
    /// about 2 ms of traffic) and checks cancellation and the pilot's timeouts; at most every
    /// [`PROGRESS_EVERY_S`] it reports progress.
    pub(super) fn send_pages(
        &mut self,
        cx: &mut Ctx<'_, '_>,
        pilot: &mut Pilot<'_>,
        pages: &PageSet,
        bucket: &mut TokenBucket,
        round: u32,
    ) -> Result<Sent, SendError> {
        let (guest, control, compress) = (cx.guest, cx.control, cx.cfg.compress);
        let total = pages.count();
        let mut batch = BatchWriter::new(compress);
        let mut sent = 0u64;
        let mut last_report = f64::NEG_INFINITY;
        let mut last_probe = 0.0;
        let mut it = pages.iter().peekable();
        while it.peek().is_some() {
            self.pause_over()?;
            if control.is_cancelled() {
                return Err(self.cancelled());
            }
            let now = self.now();
            let granted = control.granted();
            if let Some(cap) = pilot.steer(now, granted) {
                cx.emit(Event::CapGranted {
                    granted_bytes_per_s: granted,
                    cap_bytes_per_s: cap,
                });
            }
            // The mid-round check, every PROBE_EVERY_S of a pre-copy round: the dirty log
            // was cleared when the round began, so its count is what the round has dirtied.
            if round > 0 && now - last_probe >= PROBE_EVERY_S {
                last_probe = now;
                let dirtied = (guest.dirty_pages() * PAGE_SIZE as u64) as f64;
                let bytes = (sent * PAGE_SIZE as u64) as f64;
                if let Some((raise, cap)) = pilot.probe(now, bytes, Some(dirtied), granted) {
                    cx.emit(Event::Raised {
                        round,
                        elapsed_s: pilot.round_elapsed(now),
                        wish_bytes_per_s: raise.wish_bytes_per_s,
                        cap_bytes_per_s: cap,
                        reason: raise.reason,
                    });
                }
            }
            let left = ((total - sent) * PAGE_SIZE as u64) as f64;
            if let Some(overdue) = pilot.progress(now, left) {
                cx.emit(Event::TimedOut { overdue });
                match overdue.action {
                    TimeoutAction::Abort => {
                        let _ = self.cancelled();
                        return Err(SendError::TimedOut(overdue));
                    }
                    TimeoutAction::Force => {
                        pilot.force_stop(overdue, granted);
                        let mut unsent = PageSet::empty(pages.len());
                        for p in it {
                            unsent.insert(p);
                        }
                        return Ok(Sent::Cut { sent, unsent });
                    }
                }
            }
            let rate = pilot.cap();
            if rate.is_nan() || rate < SenderConfig::min_cap(self.timeout) {
                return Err(SendError::CapTooLow {
                    cap: rate,
                    timeout: self.timeout,
                });
            }
            if rate != bucket.rate() {
                bucket.set_rate(rate, now)?;
            }
            // About 2 ms of traffic per frame: a 100 ms window holds ~50 frames, so the window
            // edges cut at most ~2 % off or on at low caps.
            let want = (rate * 0.002 / PAGE_SIZE as f64).clamp(1.0, f64::from(MAX_BATCH_PAGES));
            batch.clear();
            while batch.len() < want as u32 {
                let Some(p) = it.next() else { break };
                // Hashed as it goes out, under the same lock: the table holds what was sent.
                let (pushed, h) = guest
                    .memory()
                    .with_page(p, |page| (batch.push(p, page), page_hash(page)))?;
                if pushed {
                    cx.sent.set(p, h)?;
                }
            }
            sent += u64::from(batch.len());
            let Some(chan) = self.chan.as_mut() else {
                return Err(SendError::Auth);
            };
            let frame = chan.seal_pages(&mut batch);
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
            if t - last_report >= PROGRESS_EVERY_S || sent == total {
                last_report = t;
                cx.emit(Event::Progress {
                    round,
                    bytes_sent: (sent * PAGE_SIZE as u64) as f64,
                    bytes_remaining: ((total - sent) * PAGE_SIZE as u64) as f64,
                });
            }
        }
        Ok(Sent::All)
    }
}

/// How a page set went out.
pub(super) enum Sent {
    All,
    /// A timeout forced stop-and-copy: `sent` pages went out, `unsent` did not.
    Cut {
        sent: u64,
        unsent: PageSet,
    },
}

/// Longest gap between two progress events while pages move (seconds).
pub const PROGRESS_EVERY_S: f64 = 0.25;
/// How often a pre-copy round asks the policy's mid-round check (seconds).
pub const PROBE_EVERY_S: f64 = 0.1;

/// Sleeps `s` seconds; nothing for zero, negative or NaN, and no panic for huge values.
pub(super) fn sleep_s(s: f64) {
    if s > 0.0 {
        std::thread::sleep(Duration::try_from_secs_f64(s).unwrap_or(Duration::MAX));
    }
}

/// The source's half of the handshake on `link`: `Hello` in `mode` offering `offer` (this
/// build's versions, or a range within them), the destination's choice and proof over the
/// transcript, ours. Returns the session channel, in the chosen version.
pub(super) fn handshake<S: Transport>(
    link: &mut Link<'_, S>,
    key: &Key,
    memory_bytes: u64,
    compress: bool,
    mode: Mode,
    offer: Versions,
) -> Result<Channel, SendError> {
    // Only versions this build speaks are ever offered.
    let within =
        Versions::THIS_BUILD.contains(offer.min()) && Versions::THIS_BUILD.contains(offer.max());
    let ours = if within { offer } else { Versions::THIS_BUILD };
    let hello = Message::Hello {
        versions: ours,
        nonce: auth::nonce()?,
        memory_bytes,
        page_size: PAGE_SIZE as u32,
        compress,
        mode,
    };
    let hello_body = hello.body();
    // The whole handshake, however the destination trickles it, within one timeout.
    let end = Instant::now() + link.timeout;
    link.pause_deadline = Some((end, link.timeout));
    link.send(&hello)?;
    let (version, nd) = match link.recv()? {
        Message::Challenge {
            version,
            nonce,
            mac,
        } => {
            if !ours.contains(version) {
                let _ = link.send(&Message::error(
                    wire::code::VERSION,
                    "the destination chose a version the source did not offer",
                ));
                return Err(link.wire(WireError::VersionNotOffered { chosen: version }));
            }
            let t = Transcript {
                hello: &hello_body,
                version,
                dest_nonce: &nonce,
            };
            if !key.verify(Role::Destination, &t, &mac) {
                let _ = link.send(&Message::error(
                    wire::code::AUTH,
                    "the destination's proof of the key does not verify",
                ));
                return Err(SendError::Auth);
            }
            (version, nonce)
        }
        Message::Versions(peer) => {
            return Err(link.wire(NoCommonVersion { peer, ours }.into()));
        }
        m => return Err(link.unexpected(&m)),
    };
    let t = Transcript {
        hello: &hello_body,
        version,
        dest_nonce: &nd,
    };
    let auth = Message::Auth {
        mac: key.prove(Role::Source, &t),
    };
    link.send_raw(&auth.encode_as(version))?;
    link.pause_deadline = None;
    Ok(Channel::new(key.session(&t), Role::Source))
}
