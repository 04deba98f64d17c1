//! Records to rows and back, for every backend. Writing refuses what would not read back the
//! same; reading turns a bad row into [`StoreError::Corrupt`] naming its table and key, never
//! a panic. A backend binds [`Value`]s and exposes a result row as [`Cells`]; the SQL text is
//! built here from the column lists, with the backend's parameter style.

use livemig_rms::migration::{CancelCause, PendingAsk};
use livemig_rms::{Host, Migration, MigrationId, Reservation, Vm};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::StoreError;

pub(crate) const HOST_COLUMNS: &[&str] = &[
    "name",
    "address",
    "state",
    "memory_total_bytes",
    "memory_free_bytes",
    "last_heard",
    "timeout_s",
    "draining",
];

pub(crate) const VM_COLUMNS: &[&str] = &["name", "memory_bytes", "workload", "kind", "host"];

pub(crate) const MIGRATION_COLUMNS: &[&str] = &[
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
    "budget",
];

/// How a backend writes the `i`th (1-based) statement parameter: `?1` or `$1`.
pub(crate) type Placeholder = fn(usize) -> String;

/// `INSERT … ON CONFLICT (key) DO UPDATE SET …`: an upsert that keeps the row (a `REPLACE`
/// would delete it first, which foreign keys see). Both SQLite and PostgreSQL speak it.
pub(crate) fn upsert_sql(table: &str, columns: &[&str], p: Placeholder) -> String {
    let names = columns.join(", ");
    let params: Vec<String> = (1..=columns.len()).map(p).collect();
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

/// `SELECT columns FROM table [WHERE key = param 1] ORDER BY key`.
pub(crate) fn select_sql(table: &str, columns: &[&str], by_key: bool, p: Placeholder) -> String {
    let filter = if by_key {
        format!("WHERE {} = {}", columns[0], p(1))
    } else {
        String::new()
    };
    format!(
        "SELECT {} FROM {table} {filter} ORDER BY {}",
        columns.join(", "),
        columns[0]
    )
}

/// One column's value on the way in. Each backend maps these to its own types: `Int` is a
/// 64-bit integer, `Real` a double, `Text` text (JSON included), `Flag` a boolean (0/1 in
/// SQLite).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Flag(bool),
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Text(s.to_string())
    }
}

impl From<&String> for Value {
    fn from(s: &String) -> Value {
        Value::Text(s.clone())
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::Real(v)
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Text(s)
    }
}

/// One result row, as a backend reads it: each getter returns the column's value (`None` for
/// NULL) or why it could not (a type the column must not hold).
pub(crate) trait Cells {
    /// Column 0 as text, whatever its type, to name the row in errors.
    fn key(&self) -> String;
    fn text(&self, i: usize) -> Result<Option<String>, String>;
    fn int(&self, i: usize) -> Result<Option<i64>, String>;
    fn real(&self, i: usize) -> Result<Option<f64>, String>;
    fn flag(&self, i: usize) -> Result<Option<bool>, String>;
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

    /// Text without NUL characters: PostgreSQL's text cannot hold them, so neither backend
    /// takes them (a record then stores on both or on neither).
    fn text(&self, field: &str, v: &str) -> Result<Value, StoreError> {
        if v.contains('\0') {
            return Err(self.refuse(format!("{field} contains a NUL character")));
        }
        Ok(Value::Text(v.to_string()))
    }

    fn text_opt(&self, field: &str, v: Option<&str>) -> Result<Value, StoreError> {
        v.map_or(Ok(Value::Null), |v| self.text(field, v))
    }

    fn int(&self, field: &str, v: u64) -> Result<Value, StoreError> {
        i64::try_from(v)
            .map(Value::Int)
            .map_err(|_| self.refuse(format!("{field} = {v} exceeds {}", i64::MAX)))
    }

    /// SQLite stores a NaN as NULL: refuse it rather than lose it (on every backend, so both
    /// accept the same records).
    fn real(&self, field: &str, v: f64) -> Result<Value, StoreError> {
        if v.is_nan() {
            return Err(self.refuse(format!("{field} is not a number")));
        }
        Ok(Value::Real(v))
    }

    /// JSON that reads back equal to `v` (JSON has no NaN or infinity: serde writes `null`).
    fn json<T: Serialize + DeserializeOwned + PartialEq>(
        &self,
        field: &str,
        v: &T,
    ) -> Result<Value, StoreError> {
        let text = serde_json::to_string(v)
            .map_err(|e| self.refuse(format!("{field} does not serialise: {e}")))?;
        match serde_json::from_str::<T>(&text) {
            Ok(back) if back == *v => Ok(Value::Text(text)),
            _ => Err(self.refuse(format!(
                "{field} does not read back the same (a NaN or an infinite number?)"
            ))),
        }
    }

    fn json_opt<T: Serialize + DeserializeOwned + PartialEq>(
        &self,
        field: &str,
        v: Option<&T>,
    ) -> Result<Value, StoreError> {
        v.map_or(Ok(Value::Null), |v| self.json(field, v))
    }

    /// A unit enum's JSON name (`alive`, `sim`, `running`, …).
    fn name<T: Serialize>(&self, field: &str, v: &T) -> Result<Value, StoreError> {
        match serde_json::to_value(v) {
            Ok(serde_json::Value::String(s)) => Ok(Value::Text(s)),
            _ => Err(self.refuse(format!("{field} has no name"))),
        }
    }
}

/// A host's row, in [`HOST_COLUMNS`] order.
pub(crate) fn host_values(h: &Host) -> Result<Vec<Value>, StoreError> {
    let w = Writer {
        table: "hosts",
        key: h.name.clone(),
    };
    Ok(vec![
        w.text("name", &h.name)?,
        w.text("address", &h.address)?,
        w.name("state", &h.state)?,
        w.int("memory_total_bytes", h.memory_total_bytes)?,
        w.int("memory_free_bytes", h.memory_free_bytes)?,
        w.real("last_heard", h.last_heard)?,
        w.real("timeout_s", h.timeout_s)?,
        Value::Flag(h.draining),
    ])
}

/// A VM's row, in [`VM_COLUMNS`] order.
pub(crate) fn vm_values(v: &Vm) -> Result<Vec<Value>, StoreError> {
    let w = Writer {
        table: "vms",
        key: v.name.clone(),
    };
    Ok(vec![
        w.text("name", &v.name)?,
        w.int("memory_bytes", v.memory_bytes)?,
        w.text("workload", &v.workload)?,
        w.name("kind", &v.kind)?,
        w.text("host", &v.host)?,
    ])
}

/// A migration's row, in [`MIGRATION_COLUMNS`] order.
pub(crate) fn migration_values(m: &Migration) -> Result<Vec<Value>, StoreError> {
    let w = Writer {
        table: "migrations",
        key: m.id.to_string(),
    };
    let pending_at = match &m.pending {
        Some(p) => w.real("pending.asked_at", p.asked_at)?,
        None => Value::Null,
    };
    let expires_at = match &m.reservation {
        Some(r) => w.real("reservation.expires_at", r.expires_at)?,
        None => Value::Null,
    };
    Ok(vec![
        w.int("id", m.id.0)?,
        w.text("vm", &m.vm)?,
        w.text("source", &m.source)?,
        w.text_opt("requested_target", m.requested_target.as_deref())?,
        w.text_opt("target", m.target.as_deref())?,
        w.text("policy", &m.policy)?,
        w.json_opt("settings", m.settings.as_ref())?,
        m.state.name().into(),
        w.json("attempts", &m.attempts)?,
        w.json("candidates", &m.candidates)?,
        w.text_opt("pending.host", m.pending.as_ref().map(|p| p.host.as_str()))?,
        pending_at,
        w.text_opt(
            "reservation.id",
            m.reservation.as_ref().map(|r| r.id.as_str()),
        )?,
        expires_at,
        Value::Flag(m.reservation_used),
        Value::Flag(m.committed),
        w.json_opt("cancel", m.cancel.as_ref())?,
        w.json("rounds", &m.rounds)?,
        w.json_opt("report", m.report.as_ref())?,
        w.text_opt("error", m.error.as_deref())?,
        w.json("budget", &m.budget)?,
    ])
}

/// Checks on the way out, for one row.
struct Reader<'c, C: Cells + ?Sized> {
    cells: &'c C,
    table: &'static str,
    key: String,
}

impl<'c, C: Cells + ?Sized> Reader<'c, C> {
    /// Reads the key (column 0) first, so every later error can name the row.
    fn new(cells: &'c C, table: &'static str) -> Reader<'c, C> {
        Reader {
            key: cells.key(),
            cells,
            table,
        }
    }

    fn corrupt(&self, reason: String) -> StoreError {
        StoreError::Corrupt {
            table: self.table,
            key: self.key.clone(),
            reason,
        }
    }

    fn bad(&self, name: &str) -> impl FnOnce(String) -> StoreError + '_ {
        let name = name.to_string();
        move |e| self.corrupt(format!("column `{name}`: {e}"))
    }

    fn some<T>(&self, v: Option<T>, name: &str) -> Result<T, StoreError> {
        v.ok_or_else(|| self.corrupt(format!("column `{name}` is NULL")))
    }

    fn text_opt(&self, i: usize, name: &str) -> Result<Option<String>, StoreError> {
        self.cells.text(i).map_err(self.bad(name))
    }

    fn text(&self, i: usize, name: &str) -> Result<String, StoreError> {
        self.some(self.text_opt(i, name)?, name)
    }

    fn real_opt(&self, i: usize, name: &str) -> Result<Option<f64>, StoreError> {
        self.cells.real(i).map_err(self.bad(name))
    }

    fn real(&self, i: usize, name: &str) -> Result<f64, StoreError> {
        self.some(self.real_opt(i, name)?, name)
    }

    fn uint(&self, i: usize, name: &str) -> Result<u64, StoreError> {
        let v = self.some(self.cells.int(i).map_err(self.bad(name))?, name)?;
        u64::try_from(v).map_err(|_| self.corrupt(format!("column `{name}` is negative ({v})")))
    }

    fn flag(&self, i: usize, name: &str) -> Result<bool, StoreError> {
        self.some(self.cells.flag(i).map_err(self.bad(name))?, name)
    }

    fn json<T: DeserializeOwned>(&self, i: usize, name: &str) -> Result<T, StoreError> {
        let text = self.text(i, name)?;
        serde_json::from_str(&text).map_err(|e| self.corrupt(format!("column `{name}`: {e}")))
    }

    fn json_opt<T: DeserializeOwned>(&self, i: usize, name: &str) -> Result<Option<T>, StoreError> {
        self.text_opt(i, name)?
            .map(|t| {
                serde_json::from_str(&t).map_err(|e| self.corrupt(format!("column `{name}`: {e}")))
            })
            .transpose()
    }

    fn named<T: DeserializeOwned>(&self, i: usize, name: &str) -> Result<T, StoreError> {
        let text = self.text(i, name)?;
        serde_json::from_value(serde_json::Value::String(text.clone()))
            .map_err(|_| self.corrupt(format!("column `{name}` holds an unknown value `{text}`")))
    }

    /// A text and a real column that are both NULL or both set.
    fn pair(&self, i: usize, a: &str, b: &str) -> Result<Option<(String, f64)>, StoreError> {
        match (self.text_opt(i, a)?, self.real_opt(i + 1, b)?) {
            (Some(x), Some(y)) => Ok(Some((x, y))),
            (None, None) => Ok(None),
            _ => Err(self.corrupt(format!("`{a}` and `{b}` must both be set or both NULL"))),
        }
    }
}

pub(crate) fn host<C: Cells + ?Sized>(row: &C) -> Result<Host, StoreError> {
    let r = Reader::new(row, "hosts");
    Ok(Host {
        name: r.text(0, "name")?,
        address: r.text(1, "address")?,
        state: r.named(2, "state")?,
        memory_total_bytes: r.uint(3, "memory_total_bytes")?,
        memory_free_bytes: r.uint(4, "memory_free_bytes")?,
        last_heard: r.real(5, "last_heard")?,
        timeout_s: r.real(6, "timeout_s")?,
        draining: r.flag(7, "draining")?,
    })
}

pub(crate) fn vm<C: Cells + ?Sized>(row: &C) -> Result<Vm, StoreError> {
    let r = Reader::new(row, "vms");
    Ok(Vm {
        name: r.text(0, "name")?,
        memory_bytes: r.uint(1, "memory_bytes")?,
        workload: r.text(2, "workload")?,
        kind: r.named(3, "kind")?,
        host: r.text(4, "host")?,
    })
}

pub(crate) fn migration<C: Cells + ?Sized>(row: &C) -> Result<Migration, StoreError> {
    let r = Reader::new(row, "migrations");
    let pending = r
        .pair(10, "pending_host", "pending_asked_at")?
        .map(|(host, asked_at)| PendingAsk { host, asked_at });
    let reservation = r
        .pair(12, "reservation_id", "reservation_expires_at")?
        .map(|(id, expires_at)| Reservation { id, expires_at });
    Ok(Migration {
        id: MigrationId(r.uint(0, "id")?),
        vm: r.text(1, "vm")?,
        source: r.text(2, "source")?,
        requested_target: r.text_opt(3, "requested_target")?,
        target: r.text_opt(4, "target")?,
        policy: r.text(5, "policy")?,
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
        error: r.text_opt(19, "error")?,
        budget: r.json_opt(20, "budget")?.unwrap_or_default(),
    })
}

/// A migration id as the key column holds it (`None`: past i64, so it cannot be stored).
pub(crate) fn migration_key(id: MigrationId) -> Option<i64> {
    i64::try_from(id.0).ok()
}
