//! SQLite's side of the row mapping (`crate::rows`): binding [`Value`]s, reading cells, and
//! the statements for each table.

use livemig_rms::{Host, Migration, MigrationId, Vm};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, Row, ToSql};

use crate::error::StoreError;
use crate::rows::{self, Cells, Value, HOST_COLUMNS, MIGRATION_COLUMNS, VM_COLUMNS};

fn placeholder(i: usize) -> String {
    format!("?{i}")
}

impl ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Int(i) => ToSqlOutput::Borrowed(ValueRef::Integer(*i)),
            Value::Real(r) => ToSqlOutput::Borrowed(ValueRef::Real(*r)),
            Value::Text(t) => ToSqlOutput::Borrowed(ValueRef::Text(t.as_bytes())),
            Value::Flag(b) => ToSqlOutput::Borrowed(ValueRef::Integer(i64::from(*b))),
        })
    }
}

struct SqliteCells<'r, 's>(&'r Row<'s>);

impl Cells for SqliteCells<'_, '_> {
    fn key(&self) -> String {
        match self.0.get_ref(0) {
            Ok(ValueRef::Text(t)) => String::from_utf8_lossy(t).into_owned(),
            Ok(ValueRef::Integer(i)) => i.to_string(),
            Ok(other) => format!("{other:?}"),
            Err(_) => "?".to_string(),
        }
    }

    fn text(&self, i: usize) -> Result<Option<String>, String> {
        self.0.get(i).map_err(|e| e.to_string())
    }

    fn int(&self, i: usize) -> Result<Option<i64>, String> {
        self.0.get(i).map_err(|e| e.to_string())
    }

    fn real(&self, i: usize) -> Result<Option<f64>, String> {
        self.0.get(i).map_err(|e| e.to_string())
    }

    /// 0 or 1 (SQLite has no boolean type).
    fn flag(&self, i: usize) -> Result<Option<bool>, String> {
        match self.int(i)? {
            None => Ok(None),
            Some(0) => Ok(Some(false)),
            Some(1) => Ok(Some(true)),
            Some(v) => Err(format!("is {v}, not 0 or 1")),
        }
    }
}

fn put(
    conn: &Connection,
    table: &str,
    columns: &[&str],
    values: &[Value],
    what: &'static str,
) -> Result<(), StoreError> {
    let sql = rows::upsert_sql(table, columns, placeholder);
    let mut stmt = conn.prepare_cached(&sql).map_err(StoreError::db(what))?;
    stmt.execute(rusqlite::params_from_iter(values))
        .map_err(StoreError::db(what))?;
    Ok(())
}

pub fn put_host(conn: &Connection, h: &Host) -> Result<(), StoreError> {
    put(
        conn,
        "hosts",
        HOST_COLUMNS,
        &rows::host_values(h)?,
        "writing a host",
    )
}

pub fn put_vm(conn: &Connection, v: &Vm) -> Result<(), StoreError> {
    put(
        conn,
        "vms",
        VM_COLUMNS,
        &rows::vm_values(v)?,
        "writing a VM",
    )
}

/// Deletes a VM's row (its migrations keep their records, which name it).
pub fn delete_vm(conn: &Connection, name: &str) -> Result<(), StoreError> {
    let what = "deleting a VM";
    let mut stmt = conn
        .prepare_cached("DELETE FROM vms WHERE name = ?1")
        .map_err(StoreError::db(what))?;
    stmt.execute([name]).map_err(StoreError::db(what))?;
    Ok(())
}

pub fn put_migration(conn: &Connection, m: &Migration) -> Result<(), StoreError> {
    put(
        conn,
        "migrations",
        MIGRATION_COLUMNS,
        &rows::migration_values(m)?,
        "writing a migration",
    )
}

/// Reads `table` (one row when `key` is set) and decodes every row with `decode`.
fn select<T>(
    conn: &Connection,
    table: &str,
    columns: &[&str],
    key: Option<Value>,
    what: &'static str,
    decode: fn(&SqliteCells<'_, '_>) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let sql = rows::select_sql(table, columns, key.is_some(), placeholder);
    let mut stmt = conn.prepare_cached(&sql).map_err(StoreError::db(what))?;
    let mut rows = stmt
        .query(rusqlite::params_from_iter(key.iter()))
        .map_err(StoreError::db(what))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(StoreError::db(what))? {
        out.push(decode(&SqliteCells(row))?);
    }
    Ok(out)
}

pub fn hosts(conn: &Connection, name: Option<&str>) -> Result<Vec<Host>, StoreError> {
    let key = name.map(Value::from);
    select(conn, "hosts", HOST_COLUMNS, key, "reading hosts", |r| {
        rows::host(r)
    })
}

pub fn vms(conn: &Connection, name: Option<&str>) -> Result<Vec<Vm>, StoreError> {
    let key = name.map(Value::from);
    select(conn, "vms", VM_COLUMNS, key, "reading VMs", |r| rows::vm(r))
}

pub fn migrations(
    conn: &Connection,
    id: Option<MigrationId>,
) -> Result<Vec<Migration>, StoreError> {
    let key = match id {
        None => None,
        Some(id) => match rows::migration_key(id) {
            Some(k) => Some(Value::Int(k)),
            // An id past i64 cannot have been stored.
            None => return Ok(Vec::new()),
        },
    };
    select(
        conn,
        "migrations",
        MIGRATION_COLUMNS,
        key,
        "reading migrations",
        |r| rows::migration(r),
    )
}
