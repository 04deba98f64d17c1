//! The migrations this agent took part in: role, VM, local state, the live handles, and the
//! numbers `/metrics` shows per migration; and the VMs a dirty-log sample holds.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use livemig_api::{LocalMigration, LocalState, MigrationNo, Role};
use livemig_engine::{Control, Held};
use livemig_policy::Event;

/// Finished migrations kept for `GET /api/v1/report` and `/metrics` (the oldest go first).
pub const MAX_FINISHED: usize = 128;

/// Per-migration numbers, updated from its events.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// Pre-copy rounds ended (source) or received whole (destination).
    pub rounds: u32,
    /// Memory bytes sent (source) or received (destination) so far.
    pub bytes: f64,
    /// The cap in force, bytes/s (source).
    pub cap_bytes_per_s: f64,
    /// The policy's running average dirty factor after the last round (source).
    pub avg_dirty_factor: f64,
    /// The guest's pause, once handed over (source).
    pub downtime_s: f64,
    /// Bytes of the rounds already ended (`bytes` adds the round under way).
    ended_rounds_bytes: f64,
}

impl Stats {
    /// Takes one event into account.
    pub fn observe(&mut self, e: &Event) {
        match e {
            Event::RoundStarted {
                cap_bytes_per_s, ..
            }
            | Event::CapGranted {
                cap_bytes_per_s, ..
            }
            | Event::StopAndCopy {
                cap_bytes_per_s, ..
            } => self.cap_bytes_per_s = *cap_bytes_per_s,
            Event::Progress { bytes_sent, .. } => {
                self.bytes = self.ended_rounds_bytes + bytes_sent;
            }
            Event::RoundEnded { record } => {
                self.rounds = record.round;
                self.ended_rounds_bytes += record.bytes_sent;
                self.bytes = self.ended_rounds_bytes;
                self.avg_dirty_factor = record.avg_factor;
            }
            Event::HandedOver { downtime_s } => self.downtime_s = *downtime_s,
            Event::Received { round, pages } => {
                self.rounds = self.rounds.max(*round);
                self.bytes += (*pages as f64) * livemig_engine::wire::PAGE_SIZE as f64;
            }
            _ => {}
        }
        if !self.bytes.is_finite() {
            self.bytes = 0.0;
        }
    }
}

/// One migration this agent took part in.
#[derive(Debug)]
pub struct Entry {
    pub role: Role,
    pub vm: String,
    pub state: LocalState,
    /// Source: the migration's live handle (cancel, grant).
    pub control: Option<Control>,
    /// Source: the commit event was seen (a cancel is too late from here on).
    pub committed: bool,
    /// Destination: stops its listener.
    pub stop: Option<Arc<AtomicBool>>,
    /// Destination: the reservation the guest lands in.
    pub reservation: Option<String>,
    /// Destination: a verified copy, paused, that its source did not settle.
    pub held: Option<Held>,
    /// Source: committed but the outcome is unknown; the guest stays paused here and its VM
    /// may neither migrate again nor be deleted until someone settles it.
    pub in_doubt: bool,
    pub stats: Stats,
    /// The data stream runs over mutual TLS.
    pub tls: bool,
    /// Order of ending (for dropping the oldest finished entries).
    finished: Option<u64>,
}

impl Entry {
    /// A migration that starts now.
    pub fn new(role: Role, vm: &str) -> Entry {
        Entry {
            role,
            vm: vm.to_string(),
            state: LocalState::Migrating,
            control: None,
            committed: false,
            stop: None,
            reservation: None,
            held: None,
            in_doubt: false,
            stats: Stats::default(),
            tls: false,
            finished: None,
        }
    }

    /// What the RMS is told. A source whose hand-over is in doubt keeps its copy paused: it
    /// reports `held`, never `failed` (which would say the guest runs here).
    pub fn local(&self) -> LocalMigration {
        LocalMigration {
            role: self.role,
            vm: self.vm.clone(),
            state: if self.in_doubt {
                LocalState::Held
            } else {
                self.state
            },
            tls: self.tls,
        }
    }
}

/// Every migration by its RMS number, and the VMs whose dirty log is being sampled (held
/// like a migrating VM: a sample clears the log a migration tracks).
#[derive(Debug, Default)]
pub struct Table {
    entries: BTreeMap<MigrationNo, Entry>,
    ended: u64,
    sampling: BTreeSet<String>,
}

impl Table {
    pub fn get(&self, id: MigrationNo) -> Option<&Entry> {
        self.entries.get(&id)
    }

    pub fn get_mut(&mut self, id: MigrationNo) -> Option<&mut Entry> {
        self.entries.get_mut(&id)
    }

    pub fn contains(&self, id: MigrationNo) -> bool {
        self.entries.contains_key(&id)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&MigrationNo, &Entry)> {
        self.entries.iter()
    }

    /// Whether `vm` may not migrate, be sampled or be deleted now: it is in a migration
    /// ([`Table::in_migration`]) or its dirty log is being sampled.
    pub fn busy(&self, vm: &str) -> bool {
        self.sampling.contains(vm) || self.in_migration(vm)
    }

    /// Whether `vm` is in a migration that has not ended (either way), held here, or paused
    /// here after a hand-over in doubt.
    pub fn in_migration(&self, vm: &str) -> bool {
        self.entries.values().any(|e| {
            e.vm == vm
                && (e.in_doubt || matches!(e.state, LocalState::Migrating | LocalState::Held))
        })
    }

    /// Marks `vm` as being sampled; false (and nothing marked) if it is busy.
    pub fn start_sample(&mut self, vm: &str) -> bool {
        if self.busy(vm) {
            return false;
        }
        self.sampling.insert(vm.to_string())
    }

    /// The sample of `vm` ended (either way).
    pub fn end_sample(&mut self, vm: &str) {
        self.sampling.remove(vm);
    }

    /// Samples under way.
    pub fn samples(&self) -> usize {
        self.sampling.len()
    }

    pub fn insert(&mut self, id: MigrationNo, e: Entry) {
        self.entries.insert(id, e);
    }

    /// Migration `id` ended in `state`; the oldest finished entries beyond
    /// [`MAX_FINISHED`] are forgotten.
    pub fn finish(&mut self, id: MigrationNo, state: LocalState) {
        self.ended += 1;
        let n = self.ended;
        if let Some(e) = self.entries.get_mut(&id) {
            e.state = state;
            e.finished = Some(n);
            e.control = None;
            e.stop = None;
        }
        let mut done: Vec<(u64, MigrationNo)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.state != LocalState::Held && !e.in_doubt)
            .filter_map(|(id, e)| e.finished.map(|n| (n, *id)))
            .collect();
        if done.len() > MAX_FINISHED {
            done.sort_unstable();
            for (_, id) in &done[..done.len() - MAX_FINISHED] {
                self.entries.remove(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_entries_are_bounded_and_busy_tracks_running_ones() {
        let mut t = Table::default();
        for id in 0..(MAX_FINISHED as u64 + 10) {
            t.insert(id, Entry::new(Role::Source, "vm"));
            assert!(t.busy("vm"));
            t.finish(id, LocalState::Failed);
        }
        assert!(!t.busy("vm"));
        assert_eq!(t.iter().count(), MAX_FINISHED);
        assert!(!t.contains(0), "the oldest are forgotten first");
    }

    #[test]
    fn a_sample_and_a_migration_exclude_each_other() {
        let mut t = Table::default();
        assert!(t.start_sample("vm"));
        assert!(t.busy("vm") && !t.in_migration("vm"));
        assert!(!t.start_sample("vm"), "one sample at a time");
        t.end_sample("vm");
        assert!(!t.busy("vm"));
        t.insert(1, Entry::new(Role::Source, "vm"));
        assert!(!t.start_sample("vm"), "no sample of a migrating VM");
        assert_eq!(t.samples(), 0);
    }

    #[test]
    fn stats_follow_the_rounds() {
        let mut s = Stats::default();
        s.observe(&Event::RoundStarted {
            round: 1,
            wish_bytes_per_s: 10.0,
            cap_bytes_per_s: 8.0,
            bytes: 100.0,
        });
        s.observe(&Event::Progress {
            round: 1,
            bytes_sent: 40.0,
            bytes_remaining: 60.0,
        });
        assert_eq!((s.cap_bytes_per_s, s.bytes), (8.0, 40.0));
        s.observe(&Event::HandedOver { downtime_s: 0.25 });
        assert_eq!(s.downtime_s, 0.25);
    }
}
