//! Every persisted record goes into a file database and comes back equal; a change replaces
//! the record it names; what cannot be stored faithfully is refused and writes nothing.

mod common;

use common::*;
use livemig_rms::{Change, HostState, MigrationId, MigrationState};
use livemig_store::{open, Snapshot, Store, StoreError, StoreUrl};

#[test]
fn every_record_round_trips_through_a_file() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut store = file_store(&dir);
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

#[test]
fn a_change_replaces_its_record() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut store = file_store(&dir);
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

#[test]
fn what_cannot_be_stored_faithfully_is_refused() {
    let mut store = open(&StoreUrl::SqliteMemory).expect("opens");
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
}

#[test]
fn foreign_keys_hold() {
    let mut store = open(&StoreUrl::SqliteMemory).expect("opens");
    let e = store
        .apply(&Change::Vm(Box::new(vm("vm1", "nowhere"))))
        .expect_err("no such host");
    assert!(matches!(e, StoreError::Db { .. }), "{e:?}");
    assert_eq!(store.vms().expect("reads"), vec![]);
}

#[test]
fn a_deleted_vm_leaves_its_migrations_on_record() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut store = file_store(&dir);
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
    let store = file_store(&dir);
    assert_eq!(store.vm("vm1").expect("reads"), None);
    assert_eq!(store.migration(MigrationId(1)).expect("reads"), Some(m));
}

#[test]
fn postgres_parses_but_does_not_open_yet() {
    let url = StoreUrl::parse("postgres://rms@db/livemig").expect("parses");
    let e = open(&url).expect_err("not yet");
    assert!(matches!(e, StoreError::Unsupported(_)));
    assert_eq!(e.to_string(), "PostgreSQL support follows");
}

#[test]
fn a_missing_directory_is_an_open_error() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let url = StoreUrl::Sqlite(dir.path().join("no/such/dir/rms.db"));
    let e = open(&url).expect_err("no directory");
    assert!(matches!(e, StoreError::Open { .. }), "{e:?}");
    assert!(e.to_string().contains("no/such/dir/rms.db"), "{e}");
}
