//! Records to rows and back. Writing refuses what would not read back the same; reading
//! turns a bad row into [`StoreError::Corrupt`] naming its table and key, never a panic.

use livemig_rms::migration::{CancelCause, PendingAsk};
use livemig_rms::{Host, Migration, MigrationId, Reservation, Vm};
use rusqlite::types::FromSql;
use rusqlite::{Connection, Row, ToSql};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::StoreError;

const HOST_COLUMNS: &[&str] = &[
    "name",
    "address",
    "state",
    "memory_total_bytes",
    "memory_free_bytes",
    "last_heard",
    "timeout_s",
];

const VM_COLUMNS: &[&str] = &["name", "memory_bytes", "workload", "kind", "host"];

const MIGRATION_COLUMNS: &[&str] = &[
    "id",
    "vm",
    "source",
    "requested_target",
    "target",
    "policy",
    "settings",
    "state",
    "attempts",
    "candidates",
    "pending_host",
    "pending_asked_at",
    "reservation_id",
    "reservation_expires_at",
    "reservation_used",
    "committed",
    "cancel",
    "rounds",
    "report",
    "error",
];

/// `INSERT … ON CONFLICT (key) DO UPDATE SET …`: an upsert that keeps the row (a
/// `REPLACE` would delete it first, which foreign keys see).
fn upsert_sql(table: &str, columns: &[&str]) -> String {
    let names = columns.join(", ");
    let params: Vec<String> = (1..=columns.len()).map(|i| format!("?{i}")).collect();
    let sets: Vec<String> = columns[1..]
        .iter()
        .map(|c| format!("{c} = excluded.{c}"))
        .collect();
    format!(
        "INSERT INTO {table} ({names}) VALUES ({}) ON CONFLICT ({}) DO UPDATE SET {}",
        params.join(", "),
        columns[0],
        sets.join(", ")
    )
}

fn select_sql(table: &str, columns: &[&str], filter: &str) -> String {
    format!(
        "SELECT {} FROM {table} {filter} ORDER BY {}",
        columns.join(", "),
        columns[0]
    )
}

/// Checks on the way in, for one record.
struct Writer {
    table: &'static str,
    key: String,
}

impl Writer {
    fn refuse(&self, reason: String) -> StoreError {
        StoreError::Unrepresentable {
            table: self.table,
            key: self.key.clone(),
            reason,
        }
    }

    fn int(&self, field: &str, v: u64) -> Result<i64, StoreError> {
        i64::try_from(v).map_err(|_| self.refuse(format!("{field} = {v} exceeds {}", i64::MAX)))
    }

    /// SQLite stores a NaN as NULL: refuse it rather than lose it.
    fn real(&self, field: &str, v: f64) -> Result<f64, StoreError> {
        if v.is_nan() {
            return Err(self.refuse(format!("{field} is not a number")));
        }
        Ok(v)
    }

    /// JSON that reads back equal to `v` (JSON has no NaN or infinity: serde writes `null`).
    fn json<T: Serialize + DeserializeOwned + PartialEq>(
        &self,
        field: &str,
        v: &T,
    ) -> Result<String, StoreError> {
        let text = serde_json::to_string(v)
            .map_err(|e| self.refuse(format!("{field} does not serialise: {e}")))?;
        match serde_json::from_str::<T>(&text) {
            Ok(back) if back == *v => Ok(text),
            _ => Err(self.refuse(format!(
                "{field} does not read back the same (a NaN or an infinite number?)"
            ))),
        }
    }

    /// A unit enum's JSON name (`alive`, `sim`, `running`, …).
    fn name<T: Serialize>(&self, field: &str, v: &T) -> Result<String, StoreError> {
        match serde_json::to_value(v) {
            Ok(serde_json::Value::String(s)) => Ok(s),
            _ => Err(self.refuse(format!("{field} has no name"))),
        }
    }
}

/// Checks on the way out, for one row.
struct Reader<'r, 's> {
    row: &'r Row<'s>,
    table: &'static str,
    key: String,
}

impl<'r, 's> Reader<'r, 's> {
    /// Reads the key (column 0) first, so every later error can name the row.
    fn new(row: &'r Row<'s>, table: &'static str) -> Reader<'r, 's> {
        use rusqlite::types::ValueRef;
        let key = match row.get_ref(0) {
            Ok(ValueRef::Text(t)) => String::from_utf8_lossy(t).into_owned(),
            Ok(ValueRef::Integer(i)) => i.to_string(),
            Ok(other) => format!("{other:?}"),
            Err(_) => "?".to_string(),
        };
        Reader { row, table, key }
    }

    fn corrupt(&self, reason: String) -> StoreError {
        StoreError::Corrupt {
            table: self.table,
            key: self.key.clone(),
            reason,
        }
    }

    fn col<T: FromSql>(&self, i: usize, name: &str) -> Result<T, StoreError> {
        self.row
            .get(i)
            .map_err(|e| self.corrupt(format!("column `{name}`: {e}")))
    }

    fn uint(&self, i: usize, name: &str) -> Result<u64, StoreError> {
        let v: i64 = self.col(i, name)?;
        u64::try_from(v).map_err(|_| self.corrupt(format!("column `{name}` is negative ({v})")))
    }

    fn flag(&self, i: usize, name: &str) -> Result<bool, StoreError> {
        match self.col::<i64>(i, name)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(self.corrupt(format!("column `{name}` is {v}, not 0 or 1"))),
        }
    }

    fn json<T: DeserializeOwned>(&self, i: usize, name: &str) -> Result<T, StoreError> {
        let text: String = self.col(i, name)?;
        serde_json::from_str(&text).map_err(|e| self.corrupt(format!("column `{name}`: {e}")))
    }

    fn json_opt<T: DeserializeOwned>(&self, i: usize, name: &str) -> Result<Option<T>, StoreError> {
        let text: Option<String> = self.col(i, name)?;
        text.map(|t| {
            serde_json::from_str(&t).map_err(|e| self.corrupt(format!("column `{name}`: {e}")))
        })
        .transpose()
    }

    fn named<T: DeserializeOwned>(&self, i: usize, name: &str) -> Result<T, StoreError> {
        let text: String = self.col(i, name)?;
        serde_json::from_value(serde_json::Value::String(text.clone()))
            .map_err(|_| self.corrupt(format!("column `{name}` holds an unknown value `{text}`")))
    }

    /// Two columns that are both NULL or both set.
    fn pair<A: FromSql, B: FromSql>(
        &self,
        i: usize,
        a: &str,
        b: &str,
    ) -> Result<Option<(A, B)>, StoreError> {
        match (
            self.col::<Option<A>>(i, a)?,
            self.col::<Option<B>>(i + 1, b)?,
        ) {
            (Some(x), Some(y)) => Ok(Some((x, y))),
            (None, None) => Ok(None),
            _ => Err(self.corrupt(format!("`{a}` and `{b}` must both be set or both NULL"))),
        }
    }
}

pub fn put_host(conn: &Connection, h: &Host) -> Result<(), StoreError> {
    let w = Writer {
        table: "hosts",
        key: h.name.clone(),
    };
    let params: [&dyn ToSql; 7] = [
        &h.name,
        &h.address,
        &w.name("state", &h.state)?,
        &w.int("memory_total_bytes", h.memory_total_bytes)?,
        &w.int("memory_free_bytes", h.memory_free_bytes)?,
        &w.real("last_heard", h.last_heard)?,
        &w.real("timeout_s", h.timeout_s)?,
    ];
    execute(
        conn,
        &upsert_sql("hosts", HOST_COLUMNS),
        &params,
        "writing a host",
    )
}

pub fn put_vm(conn: &Connection, v: &Vm) -> Result<(), StoreError> {
    let w = Writer {
        table: "vms",
        key: v.name.clone(),
    };
    let params: [&dyn ToSql; 5] = [
        &v.name,
        &w.int("memory_bytes", v.memory_bytes)?,
        &v.workload,
        &w.name("kind", &v.kind)?,
        &v.host,
    ];
    execute(
        conn,
        &upsert_sql("vms", VM_COLUMNS),
        &params,
        "writing a VM",
    )
}

/// Deletes a VM's row (its migrations keep their records, which name it).
pub fn delete_vm(conn: &Connection, name: &str) -> Result<(), StoreError> {
    execute(
        conn,
        "DELETE FROM vms WHERE name = ?1",
        &[&name],
        "deleting a VM",
    )
}

pub fn put_migration(conn: &Connection, m: &Migration) -> Result<(), StoreError> {
    let w = Writer {
        table: "migrations",
        key: m.id.to_string(),
    };
    let pending_at = m
        .pending
        .as_ref()
        .map(|p| w.real("pending.asked_at", p.asked_at))
        .transpose()?;
    let expires_at = m
        .reservation
        .as_ref()
        .map(|r| w.real("reservation.expires_at", r.expires_at))
        .transpose()?;
    let params: [&dyn ToSql; 20] = [
        &w.int("id", m.id.0)?,
        &m.vm,
        &m.source,
        &m.requested_target,
        &m.target,
        &m.policy,
        &m.settings
            .as_ref()
            .map(|s| w.json("settings", s))
            .transpose()?,
        &m.state.name(),
        &w.json("attempts", &m.attempts)?,
        &w.json("candidates", &m.candidates)?,
        &m.pending.as_ref().map(|p| p.host.as_str()),
        &pending_at,
        &m.reservation.as_ref().map(|r| r.id.as_str()),
        &expires_at,
        &m.reservation_used,
        &m.committed,
        &m.cancel.as_ref().map(|c| w.json("cancel", c)).transpose()?,
        &w.json("rounds", &m.rounds)?,
        &m.report.as_ref().map(|r| w.json("report", r)).transpose()?,
        &m.error,
    ];
    execute(
        conn,
        &upsert_sql("migrations", MIGRATION_COLUMNS),
        &params,
        "writing a migration",
    )
}

fn execute(
    conn: &Connection,
    sql: &str,
    params: &[&dyn ToSql],
    what: &'static str,
) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(sql).map_err(StoreError::db(what))?;
    stmt.execute(params).map_err(StoreError::db(what))?;
    Ok(())
}

fn host(row: &Row<'_>) -> Result<Host, StoreError> {
    let r = Reader::new(row, "hosts");
    Ok(Host {
        name: r.col(0, "name")?,
        address: r.col(1, "address")?,
        state: r.named(2, "state")?,
        memory_total_bytes: r.uint(3, "memory_total_bytes")?,
        memory_free_bytes: r.uint(4, "memory_free_bytes")?,
        last_heard: r.col(5, "last_heard")?,
        timeout_s: r.col(6, "timeout_s")?,
    })
}

fn vm(row: &Row<'_>) -> Result<Vm, StoreError> {
    let r = Reader::new(row, "vms");
    Ok(Vm {
        name: r.col(0, "name")?,
        memory_bytes: r.uint(1, "memory_bytes")?,
        workload: r.col(2, "workload")?,
        kind: r.named(3, "kind")?,
        host: r.col(4, "host")?,
    })
}

fn migration(row: &Row<'_>) -> Result<Migration, StoreError> {
    let r = Reader::new(row, "migrations");
    let pending = r
        .pair::<String, f64>(10, "pending_host", "pending_asked_at")?
        .map(|(host, asked_at)| PendingAsk { host, asked_at });
    let reservation = r
        .pair::<String, f64>(12, "reservation_id", "reservation_expires_at")?
        .map(|(id, expires_at)| Reservation { id, expires_at });
    Ok(Migration {
        id: MigrationId(r.uint(0, "id")?),
        vm: r.col(1, "vm")?,
        source: r.col(2, "source")?,
        requested_target: r.col(3, "requested_target")?,
        target: r.col(4, "target")?,
        policy: r.col(5, "policy")?,
        settings: r.json_opt(6, "settings")?,
        state: r.named(7, "state")?,
        attempts: r.json(8, "attempts")?,
        candidates: r.json(9, "candidates")?,
        pending,
        reservation,
        reservation_used: r.flag(14, "reservation_used")?,
        committed: r.flag(15, "committed")?,
        cancel: r.json_opt::<CancelCause>(16, "cancel")?,
        rounds: r.json(17, "rounds")?,
        report: r.json_opt(18, "report")?,
        error: r.col(19, "error")?,
    })
}

/// Runs `sql` with `params` and decodes every row with `decode`.
fn select<T>(
    conn: &Connection,
    sql: &str,
    params: &[&dyn ToSql],
    what: &'static str,
    decode: fn(&Row<'_>) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut stmt = conn.prepare_cached(sql).map_err(StoreError::db(what))?;
    let mut rows = stmt.query(params).map_err(StoreError::db(what))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(StoreError::db(what))? {
        out.push(decode(row)?);
    }
    Ok(out)
}

pub fn hosts(conn: &Connection, name: Option<&str>) -> Result<Vec<Host>, StoreError> {
    let (filter, params): (&str, Vec<&dyn ToSql>) = match &name {
        Some(n) => ("WHERE name = ?1", vec![n]),
        None => ("", vec![]),
    };
    let sql = select_sql("hosts", HOST_COLUMNS, filter);
    select(conn, &sql, &params, "reading hosts", host)
}

pub fn vms(conn: &Connection, name: Option<&str>) -> Result<Vec<Vm>, StoreError> {
    let (filter, params): (&str, Vec<&dyn ToSql>) = match &name {
        Some(n) => ("WHERE name = ?1", vec![n]),
        None => ("", vec![]),
    };
    let sql = select_sql("vms", VM_COLUMNS, filter);
    select(conn, &sql, &params, "reading VMs", vm)
}

pub fn migrations(
    conn: &Connection,
    id: Option<MigrationId>,
) -> Result<Vec<Migration>, StoreError> {
    let Some(id) = id else {
        let sql = select_sql("migrations", MIGRATION_COLUMNS, "");
        return select(conn, &sql, &[], "reading migrations", migration);
    };
    // An id past i64 cannot have been stored.
    let Ok(id) = i64::try_from(id.0) else {
        return Ok(Vec::new());
    };
    let sql = select_sql("migrations", MIGRATION_COLUMNS, "WHERE id = ?1");
    select(conn, &sql, &[&id], "reading a migration", migration)
}
