//! Protocol versions: the range this build speaks and the negotiation in the first message
//! (sans-IO: the source offers a range in `Hello`, the destination picks the highest common
//! version and names it in `Challenge`, or answers `Versions` when there is none).

use std::fmt;

/// The oldest protocol version this build speaks.
pub const MIN_VERSION: u16 = 3;
/// The newest protocol version this build speaks (what it prefers).
pub const VERSION: u16 = 4;
/// The first version that negotiates. Frames of older versions (2 and before had one version
/// per build and no negotiation) are refused by their header alone.
pub const NEGOTIATING_SINCE: u16 = 3;

/// The first version whose hand-over digest is the combinable digest of per-page hash tables
/// kept as pages move ([`crate::pagehash`]), checked in time proportional to what the
/// stop-and-copy moved, with the source's full audit after the destination resumed. Version
/// 3 digests the whole memory on both ends while the guest is paused; messages and layouts
/// are the same in both.
pub const INCREMENTAL_DIGEST_SINCE: u16 = 4;

/// Whether a session of version `v` verifies with per-page hash tables (version 4 on).
pub fn incremental_digest(v: u16) -> bool {
    v >= INCREMENTAL_DIGEST_SINCE
}

/// A non-empty range of protocol versions, `min..=max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Versions {
    min: u16,
    max: u16,
}

impl Versions {
    /// The versions this build speaks.
    pub const THIS_BUILD: Versions = Versions {
        min: MIN_VERSION,
        max: VERSION,
    };

    /// `min..=max`; `None` when the range is empty.
    pub fn new(min: u16, max: u16) -> Option<Versions> {
        (min <= max).then_some(Versions { min, max })
    }

    /// The oldest version of the range.
    pub fn min(self) -> u16 {
        self.min
    }

    /// The newest version of the range.
    pub fn max(self) -> u16 {
        self.max
    }

    /// Whether `v` is in the range.
    pub fn contains(self, v: u16) -> bool {
        (self.min..=self.max).contains(&v)
    }

    /// The highest version both ranges hold, if any.
    pub fn highest_common(self, other: Versions) -> Option<u16> {
        let (lo, hi) = (self.min.max(other.min), self.max.min(other.max));
        (lo <= hi).then_some(hi)
    }
}

impl fmt::Display for Versions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}–{}", self.min, self.max)
    }
}

/// Two ends that speak no version in common.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no common protocol version: the peer speaks versions {peer}, this build speaks {ours}")]
pub struct NoCommonVersion {
    /// What the peer speaks.
    pub peer: Versions,
    /// What this end speaks.
    pub ours: Versions,
}

/// The destination's choice for a source that offers `offer`, when the destination speaks
/// `ours`: the highest version both speak.
pub fn choose(ours: Versions, offer: Versions) -> Result<u16, NoCommonVersion> {
    ours.highest_common(offer)
        .ok_or(NoCommonVersion { peer: offer, ours })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(min: u16, max: u16) -> Versions {
        Versions::new(min, max).expect("a range")
    }

    #[test]
    fn the_destination_picks_the_highest_common_version() {
        assert_eq!(choose(v(3, 3), v(3, 3)), Ok(3));
        // A v4 build that keeps v3 meets this build on v3, and another v4 build on v4.
        assert_eq!(choose(v(3, 4), v(3, 3)), Ok(3));
        assert_eq!(choose(v(3, 3), v(3, 4)), Ok(3));
        assert_eq!(choose(v(3, 4), v(3, 5)), Ok(4));
        assert_eq!(choose(v(3, 4), v(4, 9)), Ok(4));
        assert_eq!(choose(v(1, 7), v(5, 5)), Ok(5));
    }

    #[test]
    fn disjoint_ranges_name_both() {
        let e = choose(v(3, 3), v(1, 2)).expect_err("nothing in common");
        assert_eq!(
            e,
            NoCommonVersion {
                peer: v(1, 2),
                ours: v(3, 3)
            }
        );
        assert_eq!(
            e.to_string(),
            "no common protocol version: the peer speaks versions 1–2, this build speaks 3–3"
        );
        assert!(choose(v(3, 3), v(4, 5)).is_err());
    }

    #[test]
    fn ranges_are_never_empty() {
        assert_eq!(Versions::new(4, 3), None);
        assert_eq!(
            Versions::new(3, 3).map(|r| (r.min(), r.max())),
            Some((3, 3))
        );
        assert!(v(3, 5).contains(4) && !v(3, 5).contains(6) && !v(3, 5).contains(2));
        assert!(Versions::THIS_BUILD.contains(VERSION));
        assert!(Versions::THIS_BUILD.min() >= NEGOTIATING_SINCE);
        // This build still speaks version 3 (full digests in the pause) beside version 4.
        assert!(Versions::THIS_BUILD.contains(3) && Versions::THIS_BUILD.contains(4));
        assert!(!incremental_digest(3) && incremental_digest(4));
    }
}
