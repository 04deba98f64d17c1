//! Every persisted record goes into a database and comes back equal; a change replaces the
//! record it names; what cannot be stored faithfully is refused and writes nothing. On both
//! backends.

mod common;

use common::*;
use livemig_rms::{Change, HostState, MigrationId, MigrationState};
use livemig_store::{open, Snapshot, StoreError, StoreUrl};

both_backends!(
    every_record_round_trips,
    a_change_replaces_its_record,
    what_cannot_be_stored_faithfully_is_refused,
    foreign_keys_hold,
    a_deleted_vm_leaves_its_migrations_on_record,
);

fn every_record_round_trips(db: &TestDb) {
    let mut store = db.open();
    let hosts = [host("a"), host("b"), host("c")];
    for h in &hosts {
        store
            .apply(&Change::Host(Box::new(h.clone())))
            .expect("host");
    }
    let vm1 = vm("vm1", "a");
    store.apply(&Change::Vm(Box::new(vm1.clone()))).expect("vm");
    let full = full_migration(7, "vm1", "a", "b");
    let bare = livemig_rms::Migration::new(MigrationId(8), "vm1", "a", None, "xen");
    for m in [&full, &bare] {
        store
            .apply(&Change::Migration(Box::new(m.clone())))
            .expect("migration");
    }

    assert_eq!(store.host("b").expect("reads"), Some(hosts[1].clone()));
    assert_eq!(store.host("zz").expect("reads"), None);
    assert_eq!(store.vm("vm1").expect("reads"), Some(vm1.clone()));
    assert_eq!(
        store.migration(MigrationId(7)).expect("reads"),
        Some(full.clone())
    );
    assert_eq!(
        store.migration(MigrationId(8)).expect("reads"),
        Some(bare.clone())
    );
    assert_eq!(store.migration(MigrationId(u64::MAX)).expect("reads"), None);
    assert_eq!(
        store.load().expect("loads"),
        Snapshot {
            hosts: hosts.to_vec(),
            vms: vec![vm1],
            migrations: vec![full, bare],
        }
    );
}

fn a_change_replaces_its_record(db: &TestDb) {
    let mut store = db.open();
    for h in ["a", "b"] {
        store.apply(&Change::Host(Box::new(host(h)))).expect("host");
    }
    store
        .apply(&Change::Vm(Box::new(vm("vm1", "a"))))
        .expect("vm");
    let mut m = full_migration(1, "vm1", "a", "b");
    store
        .apply(&Change::Migration(Box::new(m.clone())))
        .expect("running");
    m.state = MigrationState::Completed;
    m.pending = None;
    m.reservation = None;
    m.cancel = None;
    m.error = None;
    store
        .apply(&Change::Migration(Box::new(m.clone())))
        .expect("completed");
    store
        .apply(&Change::Vm(Box::new(vm("vm1", "b"))))
        .expect("moved");
    store.apply(&lost(host("a"))).expect("lost");

    assert_eq!(store.migrations().expect("reads"), vec![m]);
    assert_eq!(
        store.vm("vm1").expect("reads").map(|v| v.host),
        Some("b".into())
    );
    let a = store.host("a").expect("reads").expect("there");
    assert_eq!(a.state, HostState::Lost);
    assert_eq!(store.hosts().expect("reads").len(), 2);
}

fn what_cannot_be_stored_faithfully_is_refused(db: &TestDb) {
    let mut store = db.open();
    let mut h = host("a");
    h.last_heard = f64::NAN;
    let e = store.apply(&Change::Host(Box::new(h))).expect_err("NaN");
    assert!(
        matches!(&e, StoreError::Unrepresentable { table: "hosts", key, .. } if key == "a"),
        "{e:?}"
    );
    let mut h = host("a");
    h.memory_total_bytes = u64::MAX;
    assert!(store.apply(&Change::Host(Box::new(h))).is_err());
    store
        .apply(&Change::Host(Box::new(host("a"))))
        .expect("host");
    store
        .apply(&Change::Host(Box::new(host("b"))))
        .expect("host");
    store
        .apply(&Change::Vm(Box::new(vm("vm1", "a"))))
        .expect("vm");
    let mut m = full_migration(3, "vm1", "a", "b");
    m.rounds[0].factor = f64::INFINITY; // JSON has no infinity: it would read back as null
    let e = store
        .apply(&Change::Migration(Box::new(m)))
        .expect_err("infinite");
    assert!(e.to_string().contains("migrations record `3`"), "{e}");
    assert!(e.to_string().contains("rounds"), "{e}");
    assert_eq!(
        store.migrations().expect("reads"),
        vec![],
        "nothing written"
    );
    assert_eq!(store.hosts().expect("reads").len(), 2);

    // PostgreSQL's text cannot hold NUL: neither backend takes it.
    let mut m = full_migration(4, "vm1", "a", "b");
    m.error = Some("agent said \0".into());
    let e = store
        .apply(&Change::Migration(Box::new(m)))
        .expect_err("NUL");
    assert!(
        matches!(&e, StoreError::Unrepresentable { table: "migrations", key, reason }
            if key == "4" && reason.contains("error contains a NUL")),
        "{e:?}"
    );
    assert_eq!(store.migrations().expect("reads"), vec![]);
}

fn foreign_keys_hold(db: &TestDb) {
    let mut store = db.open();
    let e = store
        .apply(&Change::Vm(Box::new(vm("vm1", "nowhere"))))
        .expect_err("no such host");
    assert!(matches!(e, StoreError::Db { .. }), "{e:?}");
    assert_eq!(store.vms().expect("reads"), vec![]);
}

fn a_deleted_vm_leaves_its_migrations_on_record(db: &TestDb) {
    let mut store = db.open();
    for h in ["a", "b"] {
        store
            .apply(&Change::Host(Box::new(host(h))))
            .expect("a host");
    }
    store
        .apply(&Change::Vm(Box::new(vm("vm1", "a"))))
        .expect("a VM");
    let m = full_migration(1, "vm1", "a", "b");
    store
        .apply(&Change::Migration(Box::new(m.clone())))
        .expect("a migration");
    store
        .apply(&Change::VmRemoved { name: "vm1".into() })
        .expect("deleted");
    drop(store);
    let store = db.open();
    assert_eq!(store.vm("vm1").expect("reads"), None);
    assert_eq!(store.migration(MigrationId(1)).expect("reads"), Some(m));
}

#[test]
fn the_memory_database_works_too() {
    let mut store = open(&StoreUrl::SqliteMemory).expect("opens");
    store
        .apply(&Change::Host(Box::new(host("a"))))
        .expect("host");
    assert_eq!(store.hosts().expect("reads"), vec![host("a")]);
}

#[test]
fn an_unreachable_postgres_is_an_open_error_without_the_password() {
    // Port 1 on the loopback: nothing listens, the connection is refused at once.
    let url = StoreUrl::parse("postgres://rms:s3cret@127.0.0.1:1/livemig").expect("parses");
    let e = open(&url).expect_err("nothing listens");
    assert!(matches!(e, StoreError::Open { .. }), "{e:?}");
    assert!(
        e.to_string()
            .contains("postgres://rms:***@127.0.0.1:1/livemig"),
        "{e}"
    );
    assert!(!format!("{e:?}").contains("s3cret"), "{e:?}");
}

#[test]
fn a_missing_directory_is_an_open_error() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let url = StoreUrl::Sqlite(dir.path().join("no/such/dir/rms.db"));
    let e = open(&url).expect_err("no directory");
    assert!(matches!(e, StoreError::Open { .. }), "{e:?}");
    assert!(e.to_string().contains("no/such/dir/rms.db"), "{e}");
}

/// PostgreSQL: when the server ends the connection (a restart, an administrator), the store
/// connects anew on its next call, and keeps leading under the same lease.
#[test]
fn postgres_reconnects_after_the_connection_broke() {
    use livemig_store::pg::PgStore;
    use livemig_store::{Leadership, Store};
    let Some(db) = TestDb::postgres() else { return };
    let mut store = PgStore::open(&db.url).expect("opens");
    let lead = store
        .lead("rms-a", std::time::Duration::from_secs(30))
        .expect("leads");
    assert_eq!(lead, Leadership::Leader { epoch: 1 });
    let pid: i32 = store
        .client()
        .expect("connected")
        .query_one("SELECT pg_backend_pid()", &[])
        .and_then(|r| r.try_get(0))
        .expect("reads");
    db.sql(&format!("SELECT pg_terminate_backend({pid})"));
    // The client notices the closed connection on its own, or at the first failed call.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let first = store.apply(&Change::Host(Box::new(host("a"))));
    if first.is_err() {
        store
            .apply(&Change::Host(Box::new(host("a"))))
            .expect("written after reconnecting");
    }
    assert_eq!(store.hosts().expect("reads"), vec![host("a")]);
    assert_eq!(
        store
            .lead("rms-a", std::time::Duration::from_secs(30))
            .expect("renews"),
        Leadership::Leader { epoch: 1 },
        "the same term"
    );
}
