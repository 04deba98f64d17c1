//! PostgreSQL's side of the row mapping (`crate::rows`): binding [`Value`]s to the column
//! types of `migrations/postgres/` (BIGINT, DOUBLE PRECISION, TEXT, BOOLEAN), reading cells,
//! and the statements for each table.

use std::error::Error;

use bytes::BytesMut;
use livemig_rms::{Host, Migration, MigrationId, Vm};
use postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use postgres::{GenericClient, Row};

use crate::error::StoreError;
use crate::rows::{self, Cells, Value, HOST_COLUMNS, MIGRATION_COLUMNS, VM_COLUMNS};

fn placeholder(i: usize) -> String {
    format!("${i}")
}

type BoxError = Box<dyn Error + Sync + Send>;

/// Writes the value if the column's type is the one it maps to; anything else is a bug in
/// the schema or the mapping, reported as an error (never a value written in the wrong
/// binary format).
fn typed<T: ToSql>(v: &T, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
    if !T::accepts(ty) {
        return Err(format!(
            "a {} value cannot go to a {ty} column",
            std::any::type_name::<T>()
        )
        .into());
    }
    v.to_sql(ty, out)
}

impl ToSql for Value {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(i) => typed(i, ty, out),
            Value::Real(r) => typed(r, ty, out),
            Value::Text(t) => typed(t, ty, out),
            Value::Flag(b) => typed(b, ty, out),
        }
    }

    /// Any type: [`typed`] checks the one each value maps to.
    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

struct PgCells<'r>(&'r Row);

impl PgCells<'_> {
    fn get<'a, T: postgres::types::FromSql<'a>>(&'a self, i: usize) -> Result<Option<T>, String> {
        self.0.try_get(i).map_err(|e| e.to_string())
    }
}

impl Cells for PgCells<'_> {
    fn key(&self) -> String {
        if let Ok(Some(t)) = self.0.try_get::<_, Option<String>>(0) {
            return t;
        }
        match self.0.try_get::<_, Option<i64>>(0) {
            Ok(Some(i)) => i.to_string(),
            _ => "?".to_string(),
        }
    }

    fn text(&self, i: usize) -> Result<Option<String>, String> {
        self.get(i)
    }

    fn int(&self, i: usize) -> Result<Option<i64>, String> {
        self.get(i)
    }

    fn real(&self, i: usize) -> Result<Option<f64>, String> {
        self.get(i)
    }

    fn flag(&self, i: usize) -> Result<Option<bool>, String> {
        self.get(i)
    }
}

fn put<C: GenericClient>(
    client: &mut C,
    table: &str,
    columns: &[&str],
    values: &[Value],
    what: &'static str,
) -> Result<(), StoreError> {
    let sql = rows::upsert_sql(table, columns, placeholder);
    let params: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| v as _).collect();
    client
        .execute(&sql, &params)
        .map_err(StoreError::db(what))?;
    Ok(())
}

pub fn put_host<C: GenericClient>(client: &mut C, h: &Host) -> Result<(), StoreError> {
    put(
        client,
        "hosts",
        HOST_COLUMNS,
        &rows::host_values(h)?,
        "writing a host",
    )
}

pub fn put_vm<C: GenericClient>(client: &mut C, v: &Vm) -> Result<(), StoreError> {
    put(
        client,
        "vms",
        VM_COLUMNS,
        &rows::vm_values(v)?,
        "writing a VM",
    )
}

/// Deletes a VM's row (its migrations keep their records, which name it).
pub fn delete_vm<C: GenericClient>(client: &mut C, name: &str) -> Result<(), StoreError> {
    client
        .execute("DELETE FROM vms WHERE name = $1", &[&name])
        .map_err(StoreError::db("deleting a VM"))?;
    Ok(())
}

pub fn put_migration<C: GenericClient>(client: &mut C, m: &Migration) -> Result<(), StoreError> {
    put(
        client,
        "migrations",
        MIGRATION_COLUMNS,
        &rows::migration_values(m)?,
        "writing a migration",
    )
}

/// Reads `table` (one row when `key` is set) and decodes every row with `decode`.
fn select<C: GenericClient, T>(
    client: &mut C,
    table: &str,
    columns: &[&str],
    key: Option<Value>,
    what: &'static str,
    decode: fn(&PgCells<'_>) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let sql = rows::select_sql(table, columns, key.is_some(), placeholder);
    let params: Vec<&(dyn ToSql + Sync)> = key.iter().map(|v| v as _).collect();
    let found = client.query(&sql, &params).map_err(StoreError::db(what))?;
    found.iter().map(|r| decode(&PgCells(r))).collect()
}

pub fn hosts<C: GenericClient>(
    client: &mut C,
    name: Option<&str>,
) -> Result<Vec<Host>, StoreError> {
    let key = name.map(Value::from);
    select(client, "hosts", HOST_COLUMNS, key, "reading hosts", |r| {
        rows::host(r)
    })
}

pub fn vms<C: GenericClient>(client: &mut C, name: Option<&str>) -> Result<Vec<Vm>, StoreError> {
    let key = name.map(Value::from);
    select(client, "vms", VM_COLUMNS, key, "reading VMs", |r| {
        rows::vm(r)
    })
}

pub fn migrations<C: GenericClient>(
    client: &mut C,
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
        client,
        "migrations",
        MIGRATION_COLUMNS,
        key,
        "reading migrations",
        |r| rows::migration(r),
    )
}
