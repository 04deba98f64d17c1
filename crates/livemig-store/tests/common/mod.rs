//! Shared test helpers: records with every field set, a database per test on either backend
//! ([`TestDb`]: an SQLite file in a temporary directory, or a PostgreSQL schema of its own),
//! and a driver that applies an orchestrator's `Persist`s to a store.
//!
//! The PostgreSQL tests need a server: its URL comes from `LIVEMIG_TEST_POSTGRES`
//! (`scripts/test.sh` starts one with `scripts/postgres.sh`). Without it they fail, unless
//! `LIVEMIG_SKIP_POSTGRES=1` says to skip them.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};

use livemig_policy::report::{ReportBuilder, RoundRecord, StopCopy};
use livemig_policy::{Audit, Branch, Decision, PolicySpec, StopReason};
use livemig_rms::migration::{CancelCause, PendingAsk};
use livemig_rms::{
    AnswerKind, Attempt, Change, Effect, Host, HostState, Input, Migration, MigrationId,
    MigrationState, Orchestrator, Reservation, Step, Vm, VmKind,
};
use livemig_store::{open, SqliteStore, Store, StoreUrl};

/// A file store in `dir` (created and migrated on first open).
pub fn file_store(dir: &tempfile::TempDir) -> SqliteStore {
    let url = StoreUrl::Sqlite(dir.path().join("rms.db"));
    SqliteStore::open(&url).expect("the store opens")
}

/// The PostgreSQL server's URL, `None` when the PostgreSQL tests are explicitly skipped.
/// Panics (the test fails) when neither variable is set.
pub fn postgres_url() -> Option<String> {
    if let Ok(url) = std::env::var("LIVEMIG_TEST_POSTGRES") {
        if !url.is_empty() {
            return Some(url);
        }
    }
    if std::env::var("LIVEMIG_SKIP_POSTGRES").as_deref() == Ok("1") {
        eprintln!("skipped: LIVEMIG_SKIP_POSTGRES=1");
        return None;
    }
    panic!(
        "LIVEMIG_TEST_POSTGRES is not set: the PostgreSQL store tests need a server \
         (postgres://USER@HOST:PORT/DB; scripts/test.sh starts one with scripts/postgres.sh). \
         Set LIVEMIG_SKIP_POSTGRES=1 to skip them explicitly."
    )
}

/// One database for one test: a fresh SQLite file, or a fresh PostgreSQL schema (dropped
/// with the value) so tests run in parallel on one server.
pub struct TestDb {
    pub url: StoreUrl,
    _dir: Option<tempfile::TempDir>,
    /// The server's URL and the schema, for PostgreSQL.
    pg: Option<(String, String)>,
}

impl TestDb {
    pub fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("a temporary directory");
        TestDb {
            url: StoreUrl::Sqlite(dir.path().join("rms.db")),
            _dir: Some(dir),
            pg: None,
        }
    }

    /// `None` when the PostgreSQL tests are skipped.
    pub fn postgres() -> Option<TestDb> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let base = postgres_url()?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let schema = format!(
            "lm_t{}_{}_{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        admin(&base)
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .expect("the test schema is created");
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-csearch_path%3D{schema}");
        Some(TestDb {
            url: StoreUrl::parse(&url).expect("a PostgreSQL URL"),
            _dir: None,
            pg: Some((base, schema)),
        })
    }

    pub fn is_postgres(&self) -> bool {
        self.pg.is_some()
    }

    /// A new connection to this database (a new process, as far as the store can tell).
    pub fn open(&self) -> Box<dyn Store> {
        open(&self.url).expect("the store opens")
    }

    /// A connection to this database outside any store, to hold a transaction open.
    pub fn raw(&self) -> Raw {
        match &self.pg {
            Some((base, schema)) => {
                let mut c = admin(base);
                c.batch_execute(&format!("SET search_path = {schema}"))
                    .expect("the search path is set");
                Raw::Postgres(c)
            }
            None => {
                let StoreUrl::Sqlite(path) = &self.url else {
                    unreachable!("a file database")
                };
                Raw::Sqlite(rusqlite::Connection::open(path).expect("opens"))
            }
        }
    }

    /// Runs SQL on this database outside any store (PostgreSQL: in the test's schema).
    pub fn sql(&self, sql: &str) {
        match &self.pg {
            Some((base, schema)) => admin(base)
                .batch_execute(&format!("SET search_path = {schema}; {sql}"))
                .expect("the SQL runs"),
            None => {
                let StoreUrl::Sqlite(path) = &self.url else {
                    unreachable!("a file database")
                };
                rusqlite::Connection::open(path)
                    .and_then(|c| c.execute_batch(sql))
                    .expect("the SQL runs")
            }
        }
    }
}

/// A plain connection to a test database.
pub enum Raw {
    Sqlite(rusqlite::Connection),
    Postgres(postgres::Client),
}

impl Raw {
    pub fn batch(&mut self, sql: &str) {
        match self {
            Raw::Sqlite(c) => c.execute_batch(sql).expect("the SQL runs"),
            Raw::Postgres(c) => c.batch_execute(sql).expect("the SQL runs"),
        }
    }

    /// `BEGIN` that takes the write lock at once (SQLite: `IMMEDIATE`).
    pub fn begin_write(&mut self) {
        match self {
            Raw::Sqlite(_) => self.batch("BEGIN IMMEDIATE"),
            Raw::Postgres(_) => self.batch("BEGIN"),
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((base, schema)) = &self.pg {
            let dropped = postgres::Client::connect(base, postgres::NoTls)
                .and_then(|mut c| c.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")));
            if let Err(e) = dropped {
                eprintln!("cannot drop the test schema {schema}: {e}");
            }
        }
    }
}

fn admin(base: &str) -> postgres::Client {
    postgres::Client::connect(base, postgres::NoTls)
        .unwrap_or_else(|e| panic!("cannot connect to LIVEMIG_TEST_POSTGRES ({base}): {e}"))
}

/// Runs each named `fn(&TestDb)` as two tests, `NAME::sqlite` and `NAME::postgres`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn sqlite() {
                    super::$name(&$crate::common::TestDb::sqlite());
                }

                #[test]
                fn postgres() {
                    if let Some(db) = $crate::common::TestDb::postgres() {
                        super::$name(&db);
                    }
                }
            }
        )*
    };
}

pub fn host(name: &str) -> Host {
    let mut h = Host::new(name, "198.18.0.1:7000", 8 << 30, 12.5, 10.0);
    h.memory_free_bytes = 3 << 30;
    h
}

pub fn vm(name: &str, host: &str) -> Vm {
    Vm {
        name: name.into(),
        memory_bytes: 1 << 30,
        workload: "uniform:rate=64MiB/s".into(),
        kind: VmKind::Qemu,
        host: host.into(),
    }
}

pub fn round(k: u32) -> RoundRecord {
    let audit = Audit {
        round: k,
        cap_bytes_per_s: 1.25e8,
        effective_bytes_per_s: 1.1999e8,
        dirty_rate_bytes_per_s: 3.3e7 / 7.0,
        factor: 0.1 + 0.2,
        avg_factor: 1.0 / 3.0,
        threshold: Some(0.8),
        mean_dirty_rate_bytes_per_s: 2.0e7,
        estimate_bytes_per_s: None,
        remaining_bytes: 4096.0 * 1000.0,
        branch: Branch::Stop,
        clamped: true,
        infeasible: false,
        throttle: None,
        predicted_remaining_bytes: None,
        note: Some("a note".into()),
    };
    RoundRecord {
        round: k,
        cap_bytes_per_s: 1.25e8,
        wish_bytes_per_s: 1.5e8,
        bytes_sent: 1.073741824e9,
        duration_s: 8.589934592,
        effective_bytes_per_s: 1.1999e8,
        dirty_bytes: 4096.0 * 1000.0,
        dirty_rate_bytes_per_s: 3.3e7 / 7.0,
        factor: 0.1 + 0.2,
        avg_factor: 1.0 / 3.0,
        decision: Decision::next(1.375e8, Branch::XenKeep, audit),
        raises: Vec::new(),
        probes: Vec::new(),
        throttle_applied: None,
    }
}

pub fn report() -> livemig_policy::report::MigrationReport {
    let mut b = ReportBuilder::new("dirty-factor", "qemu", 1.073741824e9, 5e6, Some(0.8))
        .workload("uniform:rate=64MiB/s");
    b.set_stop_reason(StopReason::RemainingBelowStopLevel);
    b.finish(
        StopCopy {
            bytes: 4.2e6,
            state_bytes: 1.5e5,
            downtime_s: 0.031,
        },
        1.3e8,
    )
}

/// A migration with every optional field set.
pub fn full_migration(id: u64, vm: &str, source: &str, target: &str) -> Migration {
    let mut m = Migration::new(
        MigrationId(id),
        vm,
        source,
        Some(target.into()),
        "dirty-factor",
    );
    m.target = Some(target.into());
    m.settings = Some(PolicySpec {
        rounds: Some(30),
        max_bandwidth: Some("1GiB/s".into()),
        ..PolicySpec::default()
    });
    m.state = MigrationState::Running;
    m.attempts = vec![
        Attempt {
            host: "c".into(),
            answer: AnswerKind::Refused,
            reason: "not enough memory".into(),
        },
        Attempt {
            host: target.into(),
            answer: AnswerKind::Accepted,
            reason: String::new(),
        },
    ];
    m.candidates = vec!["d".into()];
    m.pending = Some(PendingAsk {
        host: target.into(),
        asked_at: 17.25,
    });
    m.reservation = Some(Reservation {
        id: "r-7f3a".into(),
        expires_at: 47.125,
    });
    m.reservation_used = true;
    m.committed = true;
    m.cancel = Some(CancelCause::Abandoned {
        reason: "reservation expired".into(),
    });
    m.rounds = vec![round(1), round(2)];
    m.report = Some(Box::new(report()));
    m.error = Some("no host took vm1 (c: not enough memory)".into());
    m
}

/// Hands `input` to the orchestrator and writes its `Persist`s to the store, in order, as the
/// shell does; returns the step.
pub fn drive(o: &mut Orchestrator, store: &mut dyn Store, input: Input) -> Step {
    let step = o.handle(input).expect("the orchestrator takes the input");
    persist(store, &step.effects);
    step
}

pub fn persist(store: &mut dyn Store, effects: &[Effect]) {
    for e in effects {
        if let Effect::Persist(c) = e {
            store.apply(c).expect("the change is written");
        }
    }
}

pub fn lost(mut h: Host) -> Change {
    h.state = HostState::Lost;
    Change::Host(Box::new(h))
}
