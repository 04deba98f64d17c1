//! A row that cannot be read back as a record is a typed error naming its table and key,
//! never a panic (rows edited by hand, with the CHECK constraints turned off).

mod common;

use common::*;
use livemig_rms::{Change, MigrationId};
use livemig_store::{SqliteStore, Store, StoreError, StoreUrl};

fn store_with_everything() -> SqliteStore {
    let mut store = SqliteStore::open(&StoreUrl::SqliteMemory).expect("opens");
    for h in ["a", "b"] {
        store.apply(&Change::Host(Box::new(host(h)))).expect("host");
    }
    store
        .apply(&Change::Vm(Box::new(vm("vm1", "a"))))
        .expect("vm");
    let m = full_migration(7, "vm1", "a", "b");
    store
        .apply(&Change::Migration(Box::new(m)))
        .expect("migration");
    store
        .connection()
        .execute_batch("PRAGMA ignore_check_constraints = ON")
        .expect("checks off");
    store
}

fn corrupt(sql: &str) -> StoreError {
    let store = store_with_everything();
    store.connection().execute_batch(sql).expect("the edit");
    store.load().expect_err("a corrupt row")
}

fn names(e: &StoreError, table: &str, key: &str, column: &str) {
    match e {
        StoreError::Corrupt {
            table: t,
            key: k,
            reason,
        } => {
            assert_eq!((*t, k.as_str()), (table, key), "{e}");
            assert!(reason.contains(column), "{e}");
        }
        other => panic!("not a corrupt-row error: {other:?}"),
    }
}

#[test]
fn bad_rows_name_their_table_and_key() {
    let e = corrupt("UPDATE migrations SET attempts = '[{\"host\": 3' WHERE id = 7");
    names(&e, "migrations", "7", "attempts");
    assert!(
        e.to_string()
            .contains("the row `7` of table `migrations` is corrupt"),
        "{e}"
    );

    let e = corrupt("UPDATE migrations SET state = 'teleporting' WHERE id = 7");
    names(&e, "migrations", "7", "teleporting");

    let e = corrupt("UPDATE migrations SET report = '{}' WHERE id = 7");
    names(&e, "migrations", "7", "report");

    let e = corrupt("UPDATE migrations SET reservation_expires_at = NULL WHERE id = 7");
    names(&e, "migrations", "7", "reservation_expires_at");

    let e = corrupt("UPDATE migrations SET committed = 2 WHERE id = 7");
    names(&e, "migrations", "7", "committed");

    let e = corrupt("UPDATE hosts SET memory_total_bytes = -1 WHERE name = 'b'");
    names(&e, "hosts", "b", "memory_total_bytes");

    let e = corrupt("UPDATE hosts SET state = 'asleep' WHERE name = 'a'");
    names(&e, "hosts", "a", "state");

    let e = corrupt("UPDATE vms SET kind = 'xen' WHERE name = 'vm1'");
    names(&e, "vms", "vm1", "kind");
}

#[test]
fn a_get_meets_the_same_error() {
    let store = store_with_everything();
    store
        .connection()
        .execute_batch("UPDATE migrations SET rounds = 'null' WHERE id = 7")
        .expect("the edit");
    let e = store.migration(MigrationId(7)).expect_err("corrupt");
    names(&e, "migrations", "7", "rounds");
    assert!(store.host("a").is_ok(), "other tables read on");
}

/// PostgreSQL: a row edited by hand past what the mapping accepts is the same typed error.
#[test]
fn postgres_bad_rows_name_their_table_and_key() {
    let Some(db) = TestDb::postgres() else { return };
    let mut store = db.open();
    for h in ["a", "b"] {
        store.apply(&Change::Host(Box::new(host(h)))).expect("host");
    }
    store
        .apply(&Change::Vm(Box::new(vm("vm1", "a"))))
        .expect("vm");
    store
        .apply(&Change::Migration(Box::new(full_migration(
            7, "vm1", "a", "b",
        ))))
        .expect("migration");
    db.sql("UPDATE migrations SET attempts = '[{\"host\": 3' WHERE id = 7");
    names(
        &store.load().expect_err("corrupt"),
        "migrations",
        "7",
        "attempts",
    );
    db.sql("UPDATE migrations SET attempts = '[]', rounds = 'null' WHERE id = 7");
    let e = store.migration(MigrationId(7)).expect_err("corrupt");
    names(&e, "migrations", "7", "rounds");
    assert!(store.host("a").is_ok(), "other tables read on");
}
