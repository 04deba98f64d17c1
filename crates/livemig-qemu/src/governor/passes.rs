//! Pass accounting: QEMU's `MIGRATION_PASS` events and `query-migrate` counters become the
//! method's rounds (passes queued behind a later one are merged into the round their counters
//! belong to), on QEMU's event clock; and the wire peak from the polls.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use livemig_policy::pilot::PEAK_WINDOW_S;
use tokio::time::Instant;

use crate::qmp::{Event as QmpEvent, QmpClient, QmpError};
use crate::result::PassRecord;
use crate::types::{MigrationInfo, MigrationStatus};

/// Shortest window of the wire-peak measurement (seconds): method.md's 100 ms
/// ([`PEAK_WINDOW_S`]) less 5 % of slack, because `query-migrate` polls drift by a few ms.
pub const MIN_WIRE_WINDOW_S: f64 = PEAK_WINDOW_S * 0.95;
/// How long a pass handler waits for a queued `MIGRATION_PASS` that `query-migrate` already
/// counts but whose event has not been read yet.
/// Short, so that the steering (read between events) keeps its 100 ms bound; when the event
/// has not come by then the round ends at the counters' time.
const QUEUED_PASS_WAIT: Duration = Duration::from_millis(60);

/// Seconds since the epoch on the wall clock.
pub(crate) fn wall_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The governor's time for the [`livemig_policy::Pilot`]: seconds since `MIGRATION_PASS` 1
/// (round 1's start) on QEMU's event clock. Between events it is the last event's timestamp
/// plus the time since the governor read that event (on one host QEMU's timestamps are the
/// wall clock, so this lags the wall clock by the event's read latency, a few ms). Before
/// pass 1 it counts from `migrate`.
#[derive(Debug)]
pub(crate) struct EventClock {
    origin: Option<f64>,
    at: f64,
    read: Instant,
}

impl EventClock {
    /// A clock started now (when `migrate` is issued).
    pub fn new() -> EventClock {
        EventClock {
            origin: None,
            at: 0.0,
            read: Instant::now(),
        }
    }

    /// QEMU's clock now, as estimated from the last event.
    fn estimate(&self) -> f64 {
        match self.origin {
            Some(_) => self.at + self.read.elapsed().as_secs_f64(),
            None => wall_now(),
        }
    }

    /// Pilot time now.
    pub fn now(&self) -> f64 {
        self.at + self.read.elapsed().as_secs_f64() - self.origin.unwrap_or(0.0)
    }

    /// An event stamped `ts` by QEMU was read now: the clock follows it. Returns its pilot
    /// time (0 for the first).
    pub fn event(&mut self, ts: f64) -> f64 {
        let origin = *self.origin.get_or_insert(ts);
        self.at = ts;
        self.read = Instant::now();
        ts - origin
    }
}

/// A round measured between two passes.
#[derive(Debug, Clone)]
pub(crate) struct Measured {
    /// Pilot time of the pass that ended it.
    pub end_s: f64,
    pub bytes_sent: f64,
    pub dirty_bytes: f64,
    /// QEMU's timestamp of that pass (for the reaction time).
    pub event_ts: f64,
    /// The pass's record, for the governor to complete and keep.
    pub record: PassRecord,
}

/// What a `MIGRATION_PASS` means.
#[derive(Debug)]
pub(crate) enum Pass {
    /// Already accounted for (merged into an earlier round).
    Ignored,
    /// Pass 1: round 1 starts.
    First(PassRecord),
    /// QEMU's status is no longer `active`: pre-copy ended without the policy (QEMU switched
    /// over by itself, or the migration is ending). The round this pass ended is not measured.
    NotActive {
        status: MigrationStatus,
        record: PassRecord,
    },
    /// A round ended at this pass.
    Ended(Measured),
}

/// The passes of one migration: where the round under way started, the records, the clock
/// and the wire peak.
#[derive(Debug)]
pub(crate) struct Passes {
    memory_bytes: f64,
    /// Wall time `migrate` was issued.
    pub t0: f64,
    pub clock: EventClock,
    last_pass: u64,
    /// `ram.transferred` where the round under way started (`None` before pass 1).
    start: Option<f64>,
    /// `ram.transferred` where the last measured round ended: stop-and-copy counts from there.
    pub measured_transferred: f64,
    pub records: Vec<PassRecord>,
    pub wire: WirePeak,
}

impl Passes {
    /// Passes of a migration of `memory_bytes` issued now.
    pub fn new(memory_bytes: f64) -> Passes {
        Passes {
            memory_bytes,
            t0: wall_now(),
            clock: EventClock::new(),
            last_pass: 0,
            start: None,
            measured_transferred: 0.0,
            records: Vec::new(),
            wire: WirePeak::default(),
        }
    }

    /// Whether pass 1 came.
    pub fn started(&self) -> bool {
        self.start.is_some()
    }

    /// Bytes sent since the round under way (or the stop-and-copy) started.
    pub fn sent_in_round(&self, transferred: f64) -> f64 {
        (transferred - self.start.unwrap_or(0.0)).max(0.0)
    }

    /// Accounts for the pass event `e`; `round` is the round under way, for the notes of
    /// merged passes. Pass 1 starts round 1; pass k+1 ends round k, measured from the
    /// `query-migrate` read at once.
    pub async fn on_pass(
        &mut self,
        src: &mut QmpClient,
        e: &QmpEvent,
        round: u32,
    ) -> Result<Pass, QmpError> {
        let mut ts = e.timestamp.unwrap_or_else(|| self.clock.estimate());
        let mut pass = e.data_u64("pass").unwrap_or(0);
        if pass != 0 && pass <= self.last_pass {
            return Ok(Pass::Ignored);
        }
        let mut record = PassRecord {
            pass,
            round: 0,
            at_s: ts - self.t0,
            transferred: 0.0,
            remaining: self.memory_bytes,
            cap_set_bytes_per_s: None,
            cap_read_back_bytes_per_s: None,
            downtime_limit_read_back_ms: None,
            reaction_s: None,
            note: None,
        };
        let Some(start) = self.start else {
            self.clock.event(ts);
            self.last_pass = pass;
            self.start = Some(0.0);
            return Ok(Pass::First(record));
        };
        let q: MigrationInfo = src.execute_as("query-migrate", None).await?;
        let ram = q.ram_or_default();
        record.transferred = ram.transferred;
        record.remaining = ram.remaining;
        if q.status != MigrationStatus::Active {
            // Its counters now include the stop-and-copy: its bytes count there.
            self.last_pass = pass;
            record.note = Some(format!(
                "QEMU's status was already {:?}: the policy was not asked",
                q.status
            ));
            return Ok(Pass::NotActive {
                status: q.status,
                record,
            });
        }
        // Several passes may have happened since this event (the governor was slow, or QEMU
        // synced twice in a row): `ram.dirty-sync-count` counts them. The counters belong to
        // the latest pass, so the round ends there: the queued passes are merged into it, each
        // recorded with a note. 0 means QEMU does not report the count.
        let synced = ram.dirty_sync_count.max(0.0) as u64;
        let mut merged = Vec::new();
        while synced > pass {
            let later = src
                .take_event(
                    |e| {
                        e.name == "MIGRATION_PASS"
                            && e.data_u64("pass").is_some_and(|p| p > pass && p <= synced)
                    },
                    QUEUED_PASS_WAIT,
                )
                .await?;
            merged.push(record.clone());
            match later {
                Some(l) => {
                    ts = l.timestamp.unwrap_or_else(|| self.clock.estimate());
                    pass = l.data_u64("pass").unwrap_or(synced);
                }
                None => {
                    // The event never came: end the round now, at the counters' time.
                    ts = self.clock.estimate();
                    pass = synced;
                }
            }
            record.pass = pass;
            record.at_s = ts - self.t0;
        }
        self.last_pass = pass;
        for mut m in merged {
            m.note = Some(format!(
                "queued behind pass {pass}: merged into round {round}"
            ));
            self.records.push(m);
        }
        let end_s = self.clock.event(ts);
        self.start = Some(ram.transferred);
        self.measured_transferred = ram.transferred;
        record.round = round;
        Ok(Pass::Ended(Measured {
            end_s,
            bytes_sent: (ram.transferred - start).max(0.0),
            dirty_bytes: ram.remaining.max(0.0),
            event_ts: ts,
            record,
        }))
    }
}

/// The highest rate on the wire over windows of at least [`MIN_WIRE_WINDOW_S`] between
/// `query-migrate` polls.
#[derive(Debug, Default)]
pub(crate) struct WirePeak {
    /// The last window's start (seconds, ram.transferred).
    window: Option<(f64, f64)>,
    pub peak: f64,
}

impl WirePeak {
    /// Folds one `ram.transferred` poll at `now` (seconds) into the peak.
    pub fn sample(&mut self, now: f64, transferred: f64) {
        match self.window {
            Some((t, b)) if now - t >= MIN_WIRE_WINDOW_S => {
                self.peak = self.peak.max((transferred - b) / (now - t));
                self.window = Some((now, transferred));
            }
            Some(_) => {}
            None => self.window = Some((now, transferred)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_peak_uses_windows_of_at_least_95_ms() {
        let mut w = WirePeak::default();
        w.sample(0.0, 0.0);
        // 20 ms later: too short a window, ignored (it would read 50 MB/s).
        w.sample(0.02, 1e6);
        assert_eq!(w.peak, 0.0);
        w.sample(0.1, 2e6);
        assert!((w.peak - 2e7).abs() < 1.0, "{}", w.peak);
        w.sample(0.3, 3e6);
        assert!(
            (w.peak - 2e7).abs() < 1.0,
            "a slower window does not lower the peak"
        );
    }

    #[test]
    fn the_clock_counts_from_pass_one_and_follows_each_event() {
        let mut c = EventClock::new();
        assert!(c.now() < 1.0, "from migrate before pass 1");
        assert_eq!(c.event(1000.0), 0.0);
        assert!(c.now() >= 0.0 && c.now() < 1.0);
        // A fake (or a remote) clock that jumps: the clock follows QEMU's stamps.
        assert_eq!(c.event(1002.5), 2.5);
        assert!(c.now() >= 2.5 && c.now() < 3.5);
    }
}
