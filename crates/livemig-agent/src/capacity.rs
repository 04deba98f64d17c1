//! The capacity book: the host's memory, what its VMs use, what reservations hold (sans-IO).
//!
//! Time is a parameter (`now`, seconds on the caller's clock, Unix time in the agent); nothing
//! here reads a clock, sleeps or locks. The invariant every operation keeps: the VMs' memory
//! plus the reserved memory never exceeds the total, so free memory never goes negative.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How the book is set up.
#[derive(Debug, Clone, PartialEq)]
pub struct BookConfig {
    /// The memory this host gives to VMs, bytes.
    pub total_bytes: u64,
    /// How long an unused reservation holds its memory, seconds.
    pub reservation_ttl_s: f64,
    /// At most this many reservations at once (each is a record a peer made us keep).
    pub max_reservations: usize,
    /// At most this many VMs.
    pub max_vms: usize,
    /// Reservation ids are `{prefix}-{n}`; a prefix per agent start keeps ids from an earlier
    /// run from naming a new reservation.
    pub id_prefix: String,
}

impl BookConfig {
    /// A book of `total_bytes` with 30 s reservations, 256 reservations and 256 VMs at most.
    pub fn new(total_bytes: u64) -> BookConfig {
        BookConfig {
            total_bytes,
            reservation_ttl_s: 30.0,
            max_reservations: 256,
            max_vms: 256,
            id_prefix: "res".to_string(),
        }
    }
}

/// Memory held for an incoming migration until `expires_at`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reservation {
    pub id: String,
    pub memory_bytes: u64,
    pub expires_at: f64,
}

/// The part of a reservation the asker needs (the RMS's `Reservation` shape).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
pub struct Granted {
    pub id: String,
    pub expires_at: f64,
}

/// The answer to a capacity inquiry (the RMS's `Answer` shape: `{"answer": "accepted",
/// "reservation": {id, expires_at}}` or `{"answer": "refused", "reason": "..."}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum Answer {
    Accepted { reservation: Granted },
    Refused { reason: String },
}

/// Why the book refused a change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapacityError {
    #[error("no reservation `{0}` (unknown, released, claimed or expired)")]
    UnknownReservation(String),
    #[error("a VM named `{0}` already runs here")]
    VmExists(String),
    #[error("no VM named `{0}` runs here")]
    UnknownVm(String),
    #[error("not enough memory: {asked} bytes asked, {free} bytes free")]
    NoMemory { asked: u64, free: u64 },
    #[error("memory_bytes must be positive")]
    ZeroMemory,
    #[error("too many VMs (at most {0})")]
    TooManyVms(usize),
}

/// The book itself.
#[derive(Debug, Clone)]
pub struct CapacityBook {
    cfg: BookConfig,
    vms: BTreeMap<String, u64>,
    reservations: BTreeMap<String, Reservation>,
    vm_bytes: u64,
    reserved_bytes: u64,
    next_id: u64,
}

impl CapacityBook {
    pub fn new(cfg: BookConfig) -> CapacityBook {
        CapacityBook {
            cfg,
            vms: BTreeMap::new(),
            reservations: BTreeMap::new(),
            vm_bytes: 0,
            reserved_bytes: 0,
            next_id: 1,
        }
    }

    pub fn total_bytes(&self) -> u64 {
        self.cfg.total_bytes
    }

    /// Memory neither used by a VM nor reserved.
    pub fn free_bytes(&self) -> u64 {
        self.cfg
            .total_bytes
            .saturating_sub(self.vm_bytes)
            .saturating_sub(self.reserved_bytes)
    }

    pub fn vm_bytes(&self) -> u64 {
        self.vm_bytes
    }

    pub fn reserved_bytes(&self) -> u64 {
        self.reserved_bytes
    }

    /// The VMs and their memory, by name.
    pub fn vms(&self) -> &BTreeMap<String, u64> {
        &self.vms
    }

    /// The live reservations, by id (call [`CapacityBook::expire`] first for an exact view).
    pub fn reservations(&self) -> impl Iterator<Item = &Reservation> {
        self.reservations.values()
    }

    /// Can this host take `memory_bytes` more? Expired reservations are dropped first; an
    /// acceptance holds the memory until `now + ttl`.
    pub fn inquire(&mut self, now: f64, memory_bytes: u64) -> Answer {
        self.expire(now);
        let free = self.free_bytes();
        let refuse = |reason: String| Answer::Refused { reason };
        if memory_bytes == 0 {
            return refuse(CapacityError::ZeroMemory.to_string());
        }
        if memory_bytes > free {
            return refuse(
                CapacityError::NoMemory {
                    asked: memory_bytes,
                    free,
                }
                .to_string(),
            );
        }
        if self.reservations.len() >= self.cfg.max_reservations {
            return refuse(format!(
                "too many reservations (at most {})",
                self.cfg.max_reservations
            ));
        }
        if self.vms.len() + self.reservations.len() >= self.cfg.max_vms {
            return refuse(CapacityError::TooManyVms(self.cfg.max_vms).to_string());
        }
        let id = format!("{}-{}", self.cfg.id_prefix, self.next_id);
        self.next_id += 1;
        let expires_at = now + self.cfg.reservation_ttl_s;
        self.reserved_bytes += memory_bytes;
        self.reservations.insert(
            id.clone(),
            Reservation {
                id: id.clone(),
                memory_bytes,
                expires_at,
            },
        );
        Answer::Accepted {
            reservation: Granted { id, expires_at },
        }
    }

    /// Drops a reservation nobody will use; its memory is free again.
    pub fn release(&mut self, id: &str) -> Result<Reservation, CapacityError> {
        let r = self
            .reservations
            .remove(id)
            .ok_or_else(|| CapacityError::UnknownReservation(id.to_string()))?;
        self.reserved_bytes -= r.memory_bytes;
        Ok(r)
    }

    /// Drops every reservation that expired at or before `now`; returns them.
    pub fn expire(&mut self, now: f64) -> Vec<Reservation> {
        let gone: Vec<String> = self
            .reservations
            .values()
            .filter(|r| r.expires_at <= now)
            .map(|r| r.id.clone())
            .collect();
        gone.iter().filter_map(|id| self.release(id).ok()).collect()
    }

    /// A migration arrived on reservation `id`: its memory now belongs to the VM `vm`.
    pub fn claim(&mut self, now: f64, id: &str, vm: &str) -> Result<Reservation, CapacityError> {
        self.expire(now);
        if self.vms.contains_key(vm) {
            return Err(CapacityError::VmExists(vm.to_string()));
        }
        let r = self.release(id)?;
        self.vm_bytes += r.memory_bytes;
        self.vms.insert(vm.to_string(), r.memory_bytes);
        Ok(r)
    }

    /// An incoming migration took reservation `id`: it no longer expires; the migration's end
    /// claims it ([`CapacityBook::claim`]) or releases it ([`CapacityBook::release`]).
    pub fn pin(&mut self, now: f64, id: &str) -> Result<Reservation, CapacityError> {
        self.expire(now);
        let r = self
            .reservations
            .get_mut(id)
            .ok_or_else(|| CapacityError::UnknownReservation(id.to_string()))?;
        r.expires_at = f64::INFINITY;
        Ok(r.clone())
    }

    /// The live reservation `id`, if any (expired ones are dropped first).
    pub fn reservation(&mut self, now: f64, id: &str) -> Option<&Reservation> {
        self.expire(now);
        self.reservations.get(id)
    }

    /// A VM started here directly (not by migration), if its memory is free.
    pub fn admit(&mut self, now: f64, vm: &str, memory_bytes: u64) -> Result<(), CapacityError> {
        self.expire(now);
        if memory_bytes == 0 {
            return Err(CapacityError::ZeroMemory);
        }
        if self.vms.contains_key(vm) {
            return Err(CapacityError::VmExists(vm.to_string()));
        }
        if self.vms.len() + self.reservations.len() >= self.cfg.max_vms {
            return Err(CapacityError::TooManyVms(self.cfg.max_vms));
        }
        let free = self.free_bytes();
        if memory_bytes > free {
            return Err(CapacityError::NoMemory {
                asked: memory_bytes,
                free,
            });
        }
        self.vm_bytes += memory_bytes;
        self.vms.insert(vm.to_string(), memory_bytes);
        Ok(())
    }

    /// A VM stopped or left: its memory is free again.
    pub fn remove_vm(&mut self, vm: &str) -> Result<u64, CapacityError> {
        let bytes = self
            .vms
            .remove(vm)
            .ok_or_else(|| CapacityError::UnknownVm(vm.to_string()))?;
        self.vm_bytes -= bytes;
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;

    fn book(total: u64) -> CapacityBook {
        CapacityBook::new(BookConfig::new(total))
    }

    fn accepted(a: Answer) -> Granted {
        match a {
            Answer::Accepted { reservation } => reservation,
            Answer::Refused { reason } => panic!("refused: {reason}"),
        }
    }

    #[test]
    fn accepts_until_full_then_refuses_with_the_numbers() {
        let mut b = book(10 * MIB);
        let r = accepted(b.inquire(100.0, 6 * MIB));
        assert_eq!(r.id, "res-1");
        assert_eq!(r.expires_at, 130.0);
        assert_eq!(b.free_bytes(), 4 * MIB);
        match b.inquire(101.0, 5 * MIB) {
            Answer::Refused { reason } => assert_eq!(
                reason,
                format!(
                    "not enough memory: {} bytes asked, {} bytes free",
                    5 * MIB,
                    4 * MIB
                )
            ),
            a => panic!("{a:?}"),
        }
        assert_eq!(b.free_bytes(), 4 * MIB, "a refusal changes nothing");
    }

    #[test]
    fn expiry_and_release_free_the_memory() {
        let mut b = book(10 * MIB);
        let r = accepted(b.inquire(0.0, 8 * MIB));
        assert!(b.expire(29.9).is_empty());
        assert_eq!(b.expire(30.0).len(), 1);
        assert_eq!(b.free_bytes(), 10 * MIB);
        assert!(matches!(
            b.release(&r.id),
            Err(CapacityError::UnknownReservation(_))
        ));
        let r = accepted(b.inquire(40.0, 8 * MIB));
        assert_eq!(b.release(&r.id).map(|x| x.memory_bytes), Ok(8 * MIB));
        assert_eq!(b.free_bytes(), 10 * MIB);
        // An inquiry expires old reservations before it counts.
        accepted(b.inquire(50.0, 8 * MIB));
        accepted(b.inquire(80.0, 8 * MIB));
    }

    #[test]
    fn claim_moves_the_memory_to_the_vm() {
        let mut b = book(10 * MIB);
        let r = accepted(b.inquire(0.0, 4 * MIB));
        b.claim(1.0, &r.id, "vm1").expect("claimed");
        assert_eq!((b.vm_bytes(), b.reserved_bytes()), (4 * MIB, 0));
        assert!(
            b.claim(1.0, &r.id, "vm2").is_err(),
            "a reservation is claimed once"
        );
        let late = accepted(b.inquire(0.0, 4 * MIB));
        assert!(matches!(
            b.claim(31.0, &late.id, "vm3"),
            Err(CapacityError::UnknownReservation(_))
        ));
        assert_eq!(b.remove_vm("vm1"), Ok(4 * MIB));
        assert_eq!(b.free_bytes(), 10 * MIB);
    }

    #[test]
    fn a_pinned_reservation_never_expires_until_claimed_or_released() {
        let mut b = book(10 * MIB);
        let r = accepted(b.inquire(0.0, 4 * MIB));
        assert_eq!(b.pin(1.0, &r.id).map(|x| x.memory_bytes), Ok(4 * MIB));
        assert!(b.expire(1e9).is_empty());
        assert_eq!(
            b.reservation(1e9, &r.id).map(|x| x.memory_bytes),
            Some(4 * MIB)
        );
        b.claim(1e9, &r.id, "vm1").expect("claimed");
        assert_eq!((b.vm_bytes(), b.reserved_bytes()), (4 * MIB, 0));
        let late = accepted(b.inquire(0.0, MIB));
        assert!(matches!(
            b.pin(31.0, &late.id),
            Err(CapacityError::UnknownReservation(_))
        ));
    }

    #[test]
    fn admit_is_bounded_and_names_are_unique() {
        let mut b = book(10 * MIB);
        b.admit(0.0, "a", 6 * MIB).expect("fits");
        assert_eq!(
            b.admit(0.0, "a", MIB),
            Err(CapacityError::VmExists("a".into()))
        );
        assert!(matches!(
            b.admit(0.0, "b", 5 * MIB),
            Err(CapacityError::NoMemory { .. })
        ));
        assert_eq!(b.admit(0.0, "c", 0), Err(CapacityError::ZeroMemory));
        assert!(matches!(b.inquire(0.0, 0), Answer::Refused { .. }));
    }

    #[test]
    fn counts_are_capped() {
        let mut cfg = BookConfig::new(100 * MIB);
        cfg.max_reservations = 2;
        cfg.max_vms = 3;
        let mut b = CapacityBook::new(cfg);
        accepted(b.inquire(0.0, MIB));
        accepted(b.inquire(0.0, MIB));
        assert!(
            matches!(b.inquire(0.0, MIB), Answer::Refused { reason } if reason.contains("too many reservations"))
        );
        b.admit(0.0, "a", MIB).expect("third");
        assert_eq!(b.admit(0.0, "b", MIB), Err(CapacityError::TooManyVms(3)));
    }

    #[test]
    fn answers_have_the_rms_shape() {
        let a = Answer::Accepted {
            reservation: Granted {
                id: "res-1".into(),
                expires_at: 30.0,
            },
        };
        assert_eq!(
            serde_json::to_string(&a).expect("json"),
            r#"{"answer":"accepted","reservation":{"id":"res-1","expires_at":30.0}}"#
        );
        let r = Answer::Refused { reason: "x".into() };
        assert_eq!(
            serde_json::to_string(&r).expect("json"),
            r#"{"answer":"refused","reason":"x"}"#
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Inquire(f64, u64),
        Release(u64),
        Expire(f64),
        Claim(f64, u64, u8),
        Admit(f64, u8, u64),
        Remove(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        let t = 0.0..200.0f64;
        let m = 0..=12 * MIB;
        prop_oneof![
            (t.clone(), m.clone()).prop_map(|(t, m)| Op::Inquire(t, m)),
            (1..20u64).prop_map(Op::Release),
            t.clone().prop_map(Op::Expire),
            (t.clone(), 1..20u64, 0..6u8).prop_map(|(t, r, v)| Op::Claim(t, r, v)),
            (t, 0..6u8, m).prop_map(|(t, v, m)| Op::Admit(t, v, m)),
            (0..6u8).prop_map(Op::Remove),
        ]
    }

    proptest! {
        /// Whatever happens, used + reserved never exceeds the total and the counters match
        /// the records.
        #[test]
        fn free_memory_never_goes_negative(ops in proptest::collection::vec(op(), 1..60)) {
            let mut b = book(16 * MIB);
            for op in ops {
                match op {
                    Op::Inquire(t, m) => { b.inquire(t, m); }
                    Op::Release(n) => { let _ = b.release(&format!("res-{n}")); }
                    Op::Expire(t) => { b.expire(t); }
                    Op::Claim(t, n, v) => { let _ = b.claim(t, &format!("res-{n}"), &format!("vm{v}")); }
                    Op::Admit(t, v, m) => { let _ = b.admit(t, &format!("vm{v}"), m); }
                    Op::Remove(v) => { let _ = b.remove_vm(&format!("vm{v}")); }
                }
                let vms: u64 = b.vms().values().sum();
                let reserved: u64 = b.reservations().map(|r| r.memory_bytes).sum();
                prop_assert_eq!(vms, b.vm_bytes());
                prop_assert_eq!(reserved, b.reserved_bytes());
                prop_assert!(vms + reserved <= b.total_bytes());
                prop_assert_eq!(b.free_bytes(), b.total_bytes() - vms - reserved);
            }
        }
    }
}
