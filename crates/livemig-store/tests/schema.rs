//! The schema: applied once, reopening changes nothing, a newer schema is refused, and the
//! durability settings hold on a file database.

mod common;

use common::*;
use livemig_rms::Change;
use livemig_store::sqlite::schema;
use livemig_store::{SqliteStore, Store, StoreError, StoreUrl};

#[test]
fn reopening_is_idempotent_and_keeps_the_data() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    {
        let mut store = file_store(&dir);
        assert_eq!(store.schema_version().expect("reads"), schema::latest());
        store
            .apply(&Change::Host(Box::new(host("a"))))
            .expect("host");
    }
    for _ in 0..2 {
        let store = file_store(&dir);
        assert_eq!(store.schema_version().expect("reads"), schema::latest());
        assert_eq!(store.hosts().expect("reads"), vec![host("a")]);
        let rows: i64 = store
            .connection()
            .query_row("SELECT count(*) FROM schema_version", [], |r| r.get(0))
            .expect("counts");
        assert_eq!(rows, schema::MIGRATIONS.len() as i64);
    }
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    {
        let store = file_store(&dir);
        store
            .connection()
            .execute(
                "INSERT INTO schema_version (version) VALUES (?1)",
                [schema::latest() + 1],
            )
            .expect("a future version");
    }
    let url = StoreUrl::Sqlite(dir.path().join("rms.db"));
    let e = SqliteStore::open(&url).expect_err("too new");
    assert!(
        matches!(e, StoreError::SchemaTooNew { found, supported }
            if found == schema::latest() + 1 && supported == schema::latest()),
        "{e:?}"
    );
    assert!(e.to_string().contains("use a newer livemig"), "{e}");
}

#[test]
fn a_file_database_is_wal_synchronous_full_with_foreign_keys() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = file_store(&dir);
    let conn = store.connection();
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .expect("reads");
    let sync: i64 = conn
        .pragma_query_value(None, "synchronous", |r| r.get(0))
        .expect("reads");
    let fk: i64 = conn
        .pragma_query_value(None, "foreign_keys", |r| r.get(0))
        .expect("reads");
    assert_eq!((mode.as_str(), sync, fk), ("wal", 2, 1));
}

#[test]
fn not_a_database_is_an_error() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("rms.db");
    std::fs::write(
        &path,
        b"this is not an SQLite file, it is long enough to have a header...",
    )
    .expect("writes");
    assert!(SqliteStore::open(&StoreUrl::Sqlite(path)).is_err());
}

/// PostgreSQL: migrating is idempotent, every version is recorded once, and a database at a
/// newer schema is refused.
#[test]
fn postgres_schema_versions() {
    use livemig_store::pg::{schema as pg_schema, PgStore};
    let Some(db) = TestDb::postgres() else { return };
    {
        let mut store = PgStore::open(&db.url).expect("opens");
        assert_eq!(store.schema_version().expect("reads"), pg_schema::latest());
        store
            .apply(&Change::Host(Box::new(host("a"))))
            .expect("host");
    }
    let store = PgStore::open(&db.url).expect("reopens");
    assert_eq!(store.hosts().expect("reads"), vec![host("a")]);
    let rows: i64 = store
        .client()
        .expect("connected")
        .query_one("SELECT count(*) FROM schema_version", &[])
        .and_then(|r| r.try_get(0))
        .expect("counts");
    assert_eq!(rows, pg_schema::MIGRATIONS.len() as i64);
    drop(store);

    db.sql(&format!(
        "INSERT INTO schema_version (version) VALUES ({})",
        pg_schema::latest() + 1
    ));
    let e = PgStore::open(&db.url).expect_err("too new");
    assert!(
        matches!(e, StoreError::SchemaTooNew { found, supported }
            if found == pg_schema::latest() + 1 && supported == pg_schema::latest()),
        "{e:?}"
    );
}

/// Two processes opening one new PostgreSQL database at once apply each migration once.
#[test]
fn postgres_concurrent_opens_migrate_once() {
    use livemig_store::pg::{schema as pg_schema, PgStore};
    let Some(db) = TestDb::postgres() else { return };
    std::thread::scope(|s| {
        let opens: Vec<_> = (0..3)
            .map(|_| s.spawn(|| PgStore::open(&db.url).map(|_| ())))
            .collect();
        for o in opens {
            o.join().expect("runs").expect("opens");
        }
    });
    let store = PgStore::open(&db.url).expect("opens");
    assert_eq!(store.schema_version().expect("reads"), pg_schema::latest());
}
