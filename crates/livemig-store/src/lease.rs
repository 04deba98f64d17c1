//! Leadership with fencing, the same for every backend: one lease row (`leader`, id 1) names
//! the holder, its epoch and when the lease expires by the database's clock. The SQL that
//! reads and writes it is the backend's; what to do with it is decided here.

use std::time::Duration;

use crate::error::StoreError;

/// The lease an RMS asks for (`docs/store.md`, "Leadership and fencing"): with renewals every
/// [`RENEW_EVERY`] and standbys polling as often, a standby takes over within
/// `TTL + RENEW_EVERY` = 13 s of the active RMS's death.
pub const TTL: Duration = Duration::from_secs(10);

/// How often the active RMS renews its lease, and a standby asks for it.
pub const RENEW_EVERY: Duration = Duration::from_secs(3);

/// The longest lease [`crate::Store::lead`] grants: a holder that stops renewing blocks a
/// takeover for at most this long.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// The longest holder name, in bytes.
pub const MAX_HOLDER_LEN: usize = 256;

pub use crate::term::Lease;

/// What [`crate::Store::lead`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leadership {
    /// This store holds the lease at `epoch` for the ttl asked, from the database's now: it
    /// took it (free, expired, or held under its own name by an earlier process) or renewed it.
    Leader { epoch: u64 },
    /// Another holder has a live lease; it expires in `expires_in` unless renewed.
    Follower {
        holder: String,
        epoch: u64,
        expires_in: Duration,
    },
}

impl Leadership {
    /// The epoch this store leads at, `None` when it follows.
    pub fn epoch(&self) -> Option<u64> {
        match self {
            Leadership::Leader { epoch } => Some(*epoch),
            Leadership::Follower { .. } => None,
        }
    }
}

/// The lease row as read, locked, inside a transaction.
#[derive(Debug, Clone)]
pub(crate) struct LeaseRow {
    pub lease: Lease,
    /// Milliseconds until it expires by the database's clock (zero or less: expired).
    pub remaining_ms: i64,
}

impl LeaseRow {
    fn live(&self) -> bool {
        self.remaining_ms > 0 && !self.lease.holder.is_empty()
    }
}

/// What `lead` writes to the row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Set the holder, the epoch and `expires_at = now + ttl`.
    Write(Lease),
    /// Write nothing.
    Follow(Leadership),
}

/// Checks a `lead` request before any SQL runs; the ttl in milliseconds.
pub(crate) fn validate(holder: &str, ttl: Duration) -> Result<i64, StoreError> {
    if holder.is_empty() {
        return Err(StoreError::BadLease("the holder is empty"));
    }
    if holder.len() > MAX_HOLDER_LEN {
        return Err(StoreError::BadLease("the holder is longer than 256 bytes"));
    }
    if ttl < Duration::from_millis(1) {
        return Err(StoreError::BadLease("the ttl is under a millisecond"));
    }
    if ttl > MAX_TTL {
        return Err(StoreError::BadLease("the ttl is longer than a day"));
    }
    // At most a day: it fits.
    i64::try_from(ttl.as_millis()).map_err(|_| StoreError::BadLease("the ttl is too long"))
}

/// `lead(holder)` against the row as it stands, for a store that last led with `ours`.
///
/// - held by `holder` at `ours`' epoch and live: renew, same epoch;
/// - free or expired: take it, epoch + 1;
/// - held live by `holder` under another epoch: a store that never led here (a restarted
///   process of the same name) takes it, epoch + 1, fencing its predecessor; a store that led
///   before follows (a newer process of its name took over: it must not take it back);
/// - held live by another: follow.
pub(crate) fn decide(row: &LeaseRow, holder: &str, ours: Option<&Lease>) -> Step {
    let current = &row.lease;
    let renew = row.live() && current.holder == holder && ours == Some(current);
    if renew {
        return Step::Write(current.clone());
    }
    if !row.live() || (current.holder == holder && ours.is_none()) {
        return Step::Write(Lease {
            holder: holder.to_string(),
            epoch: current.epoch.saturating_add(1),
        });
    }
    Step::Follow(Leadership::Follower {
        holder: current.holder.clone(),
        epoch: current.epoch,
        expires_in: Duration::from_millis(row.remaining_ms.unsigned_abs()),
    })
}

/// May a store that last led with `ours` write now? Checked with the row locked, in the
/// transaction of the write.
///
/// A store that led writes only while its own lease is the current one and live. A store
/// that never led writes unless another holds a live lease.
pub(crate) fn check(row: &LeaseRow, ours: Option<&Lease>) -> Result<(), StoreError> {
    let allowed = match ours {
        Some(o) => *o == row.lease && row.remaining_ms > 0,
        None => !row.live(),
    };
    if allowed {
        return Ok(());
    }
    Err(StoreError::Fenced {
        ours: ours.cloned(),
        current: row.lease.clone(),
        expired: row.remaining_ms <= 0,
    })
}

/// The epoch column, which must be a non-negative integer.
pub(crate) fn epoch(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt {
        table: "leader",
        key: "1".into(),
        reason: format!("column `epoch` is negative ({v})"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(holder: &str, epoch: u64, remaining_ms: i64) -> LeaseRow {
        LeaseRow {
            lease: Lease {
                holder: holder.into(),
                epoch,
            },
            remaining_ms,
        }
    }

    fn lease(holder: &str, epoch: u64) -> Lease {
        Lease {
            holder: holder.into(),
            epoch,
        }
    }

    #[test]
    fn free_or_expired_is_taken_with_the_next_epoch() {
        assert_eq!(
            decide(&row("", 0, -5), "a", None),
            Step::Write(lease("a", 1))
        );
        assert_eq!(
            decide(&row("b", 4, 0), "a", None),
            Step::Write(lease("a", 5))
        );
        let ours = lease("a", 4);
        assert_eq!(
            decide(&row("a", 4, -1), "a", Some(&ours)),
            Step::Write(lease("a", 5)),
            "an expired lease is taken anew even by its holder"
        );
    }

    #[test]
    fn own_live_lease_is_renewed_another_is_followed() {
        let ours = lease("a", 4);
        assert_eq!(
            decide(&row("a", 4, 10), "a", Some(&ours)),
            Step::Write(ours.clone())
        );
        assert_eq!(
            decide(&row("a", 4, 10), "a", None),
            Step::Write(lease("a", 5)),
            "a new process under the same name takes over and fences the old one"
        );
        assert_eq!(
            decide(&row("a", 5, 10), "a", Some(&ours)),
            Step::Follow(Leadership::Follower {
                holder: "a".into(),
                epoch: 5,
                expires_in: Duration::from_millis(10),
            }),
            "the old process of a name never takes its successor's lease back"
        );
        assert_eq!(
            decide(&row("b", 7, 2500), "a", Some(&lease("a", 6))),
            Step::Follow(Leadership::Follower {
                holder: "b".into(),
                epoch: 7,
                expires_in: Duration::from_millis(2500),
            })
        );
    }

    #[test]
    fn fencing() {
        let ours = lease("a", 4);
        assert!(check(&row("a", 4, 1), Some(&ours)).is_ok());
        for r in [row("a", 4, 0), row("b", 5, 100), row("a", 5, 100)] {
            let e = check(&r, Some(&ours)).expect_err("fenced");
            assert!(matches!(e, StoreError::Fenced { .. }), "{e:?}");
        }
        assert!(check(&row("", 0, -1), None).is_ok(), "never led, no lease");
        assert!(check(&row("b", 3, -1), None).is_ok(), "never led, expired");
        let e = check(&row("b", 3, 10), None).expect_err("another leads");
        assert!(e.to_string().contains("this store never led"), "{e}");
        let e = check(&row("a", 4, -3), Some(&ours)).expect_err("expired");
        assert!(e.to_string().contains("has expired"), "{e}");
    }

    #[test]
    fn the_recommended_timing_meets_the_takeover_target() {
        assert!(TTL + RENEW_EVERY < Duration::from_secs(15));
        assert!(
            RENEW_EVERY * 3 <= TTL,
            "two renewals may fail before the lease lapses"
        );
        assert_eq!(Leadership::Leader { epoch: 3 }.epoch(), Some(3));
    }

    #[test]
    fn requests_are_checked() {
        assert!(validate("", Duration::from_secs(1)).is_err());
        assert!(validate("a", Duration::ZERO).is_err());
        assert!(validate("a", MAX_TTL + Duration::from_secs(1)).is_err());
        assert!(validate(&"x".repeat(300), Duration::from_secs(1)).is_err());
        assert_eq!(validate("a", Duration::from_secs(10)).ok(), Some(10_000));
    }
}
