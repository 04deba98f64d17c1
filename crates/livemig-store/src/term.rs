//! One leadership term: who held the lease, at which epoch (shared by the lease rules and
//! the errors that name a fenced term).

/// A holder and the epoch it led at. The epoch grows by one at every takeover, so a lease
/// names one leadership term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub holder: String,
    pub epoch: u64,
}
