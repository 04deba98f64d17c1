//! Events and reports for the RMS, queued from migration threads and delivered in order by
//! one task.
//!
//! Queuing never blocks and never waits on the network. Light events (progress, a grant,
//! a received round, a refused peer) are dropped while [`Outbox::light_cap`] of them wait; every other event
//! and every report is kept (a migration has a bounded number of them) and retried a few
//! times with backoff when the RMS cannot be reached.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use livemig_api::{AgentEvent, AgentReportPost, MigrationNo};
use livemig_policy::report::MigrationReport;
use livemig_policy::Event;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::client::RmsClient;

/// How long a kept event or a report is retried before it is given up (logged): longer than
/// an RMS restart or a standby's takeover (13 s), so a hand-over is not lost to one.
pub const KEPT_FOR: Duration = Duration::from_secs(120);
/// The first pause between two attempts (doubled each time, up to [`MAX_BACKOFF`]).
pub const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// The longest pause between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a stopping agent keeps delivering what is queued.
pub const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// One thing for the RMS.
#[derive(Debug, Clone, PartialEq)]
pub enum Outbound {
    Event(AgentEvent),
    Report(AgentReportPost),
}

impl Outbound {
    /// Whether it may be dropped: it only tells how far a migration got, or that a stray
    /// peer was turned away (a port scan must not fill the queue).
    pub fn light(&self) -> bool {
        matches!(
            self,
            Outbound::Event(AgentEvent {
                event: Event::Progress { .. }
                    | Event::CapGranted { .. }
                    | Event::Received { .. }
                    | Event::Discarded { .. },
                ..
            })
        )
    }
}

/// The queue's sending end (cheap to clone).
#[derive(Debug, Clone)]
pub struct Outbox {
    host: String,
    tx: mpsc::UnboundedSender<Outbound>,
    light_queued: Arc<AtomicUsize>,
    dropped: Arc<AtomicU64>,
    light_cap: usize,
}

/// The queue's receiving end, for [`deliver`].
#[derive(Debug)]
pub struct Inbox {
    rx: mpsc::UnboundedReceiver<Outbound>,
    light_queued: Arc<AtomicUsize>,
}

impl Outbox {
    /// A queue for host `host` holding at most `light_cap` light events.
    pub fn new(host: &str, light_cap: usize) -> (Outbox, Inbox) {
        let (tx, rx) = mpsc::unbounded_channel();
        let light_queued = Arc::new(AtomicUsize::new(0));
        (
            Outbox {
                host: host.to_string(),
                tx,
                light_queued: Arc::clone(&light_queued),
                dropped: Arc::new(AtomicU64::new(0)),
                light_cap,
            },
            Inbox { rx, light_queued },
        )
    }

    pub fn light_cap(&self) -> usize {
        self.light_cap
    }

    /// Light events dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Queues `event` of `migration` (never blocks).
    pub fn event(&self, migration: MigrationNo, event: &Event) {
        self.push(Outbound::Event(AgentEvent {
            host: self.host.clone(),
            migration,
            event: event.clone(),
        }));
    }

    /// Queues the final report of `migration`.
    pub fn report(&self, migration: MigrationNo, report: MigrationReport) {
        self.push(Outbound::Report(AgentReportPost {
            host: self.host.clone(),
            migration,
            report: Box::new(report),
        }));
    }

    fn push(&self, o: Outbound) {
        if o.light() {
            if self.light_queued.load(Ordering::Relaxed) >= self.light_cap {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            self.light_queued.fetch_add(1, Ordering::Relaxed);
        }
        // A closed queue means the agent is stopping: nothing to deliver to.
        let _ = self.tx.send(o);
    }
}

/// Delivers what is queued, in order, until `stop`; then keeps delivering for
/// [`DRAIN_GRACE`] at most.
pub async fn deliver(client: RmsClient, mut inbox: Inbox, stop: CancellationToken) {
    loop {
        let o = tokio::select! {
            o = inbox.rx.recv() => o,
            _ = stop.cancelled() => break,
        };
        let Some(o) = o else { return };
        send(&client, &inbox, o, &stop).await;
    }
    let drain = async {
        while let Ok(o) = inbox.rx.try_recv() {
            send(&client, &inbox, o, &CancellationToken::new()).await;
        }
    };
    if tokio::time::timeout(DRAIN_GRACE, drain).await.is_err() {
        tracing::warn!("events for the RMS left undelivered at stop");
    }
}

async fn send(client: &RmsClient, inbox: &Inbox, o: Outbound, stop: &CancellationToken) {
    let light = o.light();
    if light {
        inbox.light_queued.fetch_sub(1, Ordering::Relaxed);
    }
    let (path, body) = match &o {
        Outbound::Event(e) => ("/api/v1/agents/events", serde_json::to_value(e)),
        Outbound::Report(r) => ("/api/v1/agents/reports", serde_json::to_value(r)),
    };
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "cannot encode an event for the RMS");
            return;
        }
    };
    let give_up = tokio::time::Instant::now() + KEPT_FOR;
    let mut pause = FIRST_BACKOFF;
    loop {
        let e = match client.post(path, &body).await {
            Ok(_) => return,
            Err(e) => e,
        };
        match e.status() {
            // The RMS said no (unknown migration, a contradiction): retrying gets the same.
            Some(s) if (400..500).contains(&s) && s != 429 => {
                tracing::warn!(error = %e, path, "the RMS refused a message");
                return;
            }
            // Unreachable, busy or stopping (5xx, 429): worth another try.
            _ if light => return,
            _ if tokio::time::Instant::now() + pause > give_up || stop.is_cancelled() => {
                tracing::warn!(error = %e, path, "cannot deliver to the RMS; message dropped");
                return;
            }
            _ => {
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.cancelled() => {}
                }
                pause = (pause * 2).min(MAX_BACKOFF);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn light_events_are_dropped_beyond_the_cap_and_others_never() {
        let (out, mut inbox) = Outbox::new("a", 2);
        let progress = Event::Progress {
            round: 1,
            bytes_sent: 1.0,
            bytes_remaining: 1.0,
        };
        for _ in 0..5 {
            out.event(7, &progress);
        }
        for _ in 0..50 {
            out.event(7, &Event::Committed);
        }
        assert_eq!(out.dropped(), 3);
        let mut n = (0, 0);
        while let Ok(o) = inbox.rx.try_recv() {
            if o.light() {
                n.0 += 1;
            } else {
                n.1 += 1;
            }
        }
        assert_eq!(n, (2, 50));
    }
}
