//! Per-page hash tables kept as pages move, and the combinable digest over them (sans-IO).
//!
//! Each end keeps one xxh3 per page: the source of the bytes it sent, the destination of the
//! bytes it stored. The table's digest is the wrapping sum over pages of
//! `xxh3_with_seed(hash, page)`, updated in O(1) when a page's hash changes, so comparing the
//! two ends at the hand-over costs what the stop-and-copy moved (its pages are hashed as they
//! go), not the size of memory. Both tables start as if every page were zero, as the
//! destination's fresh memory is.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::memory::{GuestMemory, MemoryError};
use crate::wire::PAGE_SIZE;

/// xxh3 of one page's bytes.
pub fn page_hash(page: &[u8; PAGE_SIZE]) -> u64 {
    xxh3_64(page)
}

/// The hash of a page of zeros.
pub fn zero_page_hash() -> u64 {
    xxh3_64(&[0u8; PAGE_SIZE])
}

/// One page's share of the digest: bound to its index, so a page moved elsewhere counts.
fn term(page: u64, hash: u64) -> u64 {
    xxh3_64_with_seed(&hash.to_le_bytes(), page)
}

/// One hash per page and the digest over them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageHashes {
    hashes: Vec<u64>,
    digest: u64,
}

impl PageHashes {
    /// A table of `pages` zero pages. Allocation is fallible (8 bytes a page).
    pub fn zeroed(pages: u64) -> Result<PageHashes, MemoryError> {
        let bytes = pages.saturating_mul(8);
        let n = usize::try_from(pages).map_err(|_| MemoryError::Alloc { bytes })?;
        let mut hashes = Vec::new();
        hashes
            .try_reserve_exact(n)
            .map_err(|_| MemoryError::Alloc { bytes })?;
        let z = zero_page_hash();
        hashes.resize(n, z);
        let digest = (0..pages).fold(0u64, |d, p| d.wrapping_add(term(p, z)));
        Ok(PageHashes { hashes, digest })
    }

    /// The table of `memory` as it is now (every page read under its region's lock),
    /// calling `each_region` before every 2 MiB region.
    pub fn of(
        memory: &GuestMemory,
        each_region: &mut dyn FnMut(),
    ) -> Result<PageHashes, MemoryError> {
        let pages = memory.pages();
        let bytes = pages.saturating_mul(8);
        let n = usize::try_from(pages).map_err(|_| MemoryError::Alloc { bytes })?;
        let mut hashes = Vec::new();
        hashes
            .try_reserve_exact(n)
            .map_err(|_| MemoryError::Alloc { bytes })?;
        memory.for_each_page_hash(each_region, &mut |h| hashes.push(h));
        let digest = hashes
            .iter()
            .enumerate()
            .fold(0u64, |d, (p, &h)| d.wrapping_add(term(p as u64, h)));
        Ok(PageHashes { hashes, digest })
    }

    /// Pages in the table.
    pub fn pages(&self) -> u64 {
        self.hashes.len() as u64
    }

    /// The hash of `page` (`None` outside the table).
    pub fn get(&self, page: u64) -> Option<u64> {
        usize::try_from(page)
            .ok()
            .and_then(|i| self.hashes.get(i))
            .copied()
    }

    /// Records `hash` for `page`, updating the digest in O(1).
    pub fn set(&mut self, page: u64, hash: u64) -> Result<(), MemoryError> {
        let pages = self.pages();
        let slot = usize::try_from(page)
            .ok()
            .and_then(|i| self.hashes.get_mut(i))
            .ok_or(MemoryError::Page { page, pages })?;
        self.digest = self
            .digest
            .wrapping_sub(term(page, *slot))
            .wrapping_add(term(page, hash));
        *slot = hash;
        Ok(())
    }

    /// Hashes `bytes` and records it for `page`.
    pub fn record(&mut self, page: u64, bytes: &[u8; PAGE_SIZE]) -> Result<(), MemoryError> {
        self.set(page, page_hash(bytes))
    }

    /// The digest of the table (O(1): kept up to date by [`PageHashes::set`]).
    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// The pages whose hashes differ between the two tables, in increasing order (pages one
    /// table has and the other has not count as differing).
    pub fn differing(&self, other: &PageHashes) -> Vec<u64> {
        let n = self.hashes.len().max(other.hashes.len());
        (0..n)
            .filter(|&i| self.hashes.get(i) != other.hashes.get(i))
            .map(|i| i as u64)
            .collect()
    }
}

/// What [`PageHashes::audit`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditFindings {
    /// Pages read.
    pub pages: u64,
    /// The digest of the memory as read (compare with the other end's).
    pub digest: u64,
    /// Pages whose bytes no longer hash to the table's entry.
    pub differing: u64,
    /// The first `max_listed` of them, in increasing order.
    pub listed: Vec<u64>,
}

impl PageHashes {
    /// Reads every page of `memory` (a paused guest's) and compares it with this table,
    /// without allocating a second table: the pages that differ and the memory's digest.
    pub fn audit(&self, memory: &GuestMemory, max_listed: usize) -> AuditFindings {
        let mut f = AuditFindings {
            pages: 0,
            digest: 0,
            differing: 0,
            listed: Vec::new(),
        };
        memory.for_each_page_hash(&mut || {}, &mut |h| {
            let p = f.pages;
            f.digest = f.digest.wrapping_add(term(p, h));
            if self.get(p) != Some(h) {
                f.differing += 1;
                if f.listed.len() < max_listed {
                    f.listed.push(p);
                }
            }
            f.pages += 1;
        });
        // Pages the table has beyond the memory's end differ too (never with equal sizes).
        let extra = self.pages().saturating_sub(f.pages);
        f.differing += extra;
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(fill: u8) -> [u8; PAGE_SIZE] {
        [fill; PAGE_SIZE]
    }

    #[test]
    fn a_zeroed_table_is_the_table_of_zeroed_memory() {
        let m = GuestMemory::new(300 * PAGE_SIZE as u64, u64::MAX).expect("alloc");
        let z = PageHashes::zeroed(300).expect("alloc");
        let of = PageHashes::of(&m, &mut || {}).expect("alloc");
        assert_eq!(z, of);
        assert_eq!(z.digest(), of.digest());
        assert!(z.differing(&of).is_empty());
    }

    #[test]
    fn the_incremental_digest_equals_the_digest_from_scratch() {
        let m = GuestMemory::new(1100 * PAGE_SIZE as u64, u64::MAX).expect("alloc");
        let mut t = PageHashes::zeroed(1100).expect("alloc");
        // Writes in any order, pages written twice, a page written back to zero.
        for (p, fill) in [(5u64, 1u8), (1099, 2), (5, 3), (600, 4), (600, 0), (0, 9)] {
            m.write_page(p, &page(fill)).expect("in range");
            t.record(p, &page(fill)).expect("in range");
        }
        let fresh = PageHashes::of(&m, &mut || {}).expect("alloc");
        assert_eq!(t.digest(), fresh.digest());
        assert_eq!(t, fresh);
    }

    #[test]
    fn one_changed_page_changes_the_digest_and_is_named() {
        let mut a = PageHashes::zeroed(64).expect("alloc");
        let mut b = a.clone();
        a.record(7, &page(1)).expect("in range");
        assert_ne!(a.digest(), b.digest());
        assert_eq!(a.differing(&b), vec![7]);
        b.record(7, &page(1)).expect("in range");
        assert_eq!(a.digest(), b.digest());
        // The same bytes on two different pages are two different tables.
        let (mut c, mut d) = (
            PageHashes::zeroed(64).expect("a"),
            PageHashes::zeroed(64).expect("a"),
        );
        c.record(1, &page(5)).expect("in range");
        d.record(2, &page(5)).expect("in range");
        assert_ne!(c.digest(), d.digest());
        assert_eq!(c.differing(&d), vec![1, 2]);
    }

    #[test]
    fn the_audit_names_pages_written_behind_the_tables_back() {
        let m = GuestMemory::new(2000 * PAGE_SIZE as u64, u64::MAX).expect("alloc");
        let mut t = PageHashes::zeroed(2000).expect("alloc");
        for p in [3u64, 700, 1999] {
            m.write_page(p, &page(p as u8)).expect("in range");
            t.record(p, &page(p as u8)).expect("in range");
        }
        let clean = t.audit(&m, 10);
        assert_eq!((clean.pages, clean.differing), (2000, 0));
        assert_eq!(clean.digest, t.digest());
        // Two writes the table never saw (a dirty log that missed them), one in a region
        // past the first.
        m.set_word(700, 3, 42);
        m.set_word(1500, 0, 1);
        let f = t.audit(&m, 10);
        assert_eq!((f.differing, f.listed.clone()), (2, vec![700, 1500]));
        assert_ne!(f.digest, t.digest());
        assert_eq!(
            t.audit(&m, 1).listed,
            vec![700],
            "the list is capped, the count is not"
        );
        assert_eq!(t.audit(&m, 1).differing, 2);
    }

    proptest::proptest! {
        /// Any sequence of updates leaves the digest equal to the sum over the table.
        #[test]
        fn any_updates_keep_the_digest_exact(
            ups in proptest::collection::vec((0u64..200, proptest::prelude::any::<u64>()), 0..300)
        ) {
            let mut t = PageHashes::zeroed(200).expect("alloc");
            for (p, h) in ups {
                t.set(p, h).expect("in range");
            }
            let scratch = t
                .hashes
                .iter()
                .enumerate()
                .fold(0u64, |d, (p, &h)| d.wrapping_add(term(p as u64, h)));
            proptest::prop_assert_eq!(t.digest(), scratch);
        }
    }

    #[test]
    fn pages_outside_the_table_are_refused() {
        let mut t = PageHashes::zeroed(4).expect("alloc");
        let d = t.digest();
        assert!(t.set(4, 1).is_err());
        assert!(t.set(u64::MAX, 1).is_err());
        assert_eq!(t.digest(), d, "a refused page leaves the digest alone");
        assert_eq!(t.get(4), None);
        assert_eq!(t.get(3), Some(zero_page_hash()));
    }
}
