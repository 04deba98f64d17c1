//! Guest memory as locked 2 MiB regions of plain bytes, the atomic dirty bitmap and page sets.
//!
//! A region lock is held for one page copy or one word write, so the guest's writer and the
//! sender never wait long for each other, and page copies run at memcpy speed.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};

use xxhash_rust::xxh3::{xxh3_64, Xxh3};

use crate::wire::PAGE_SIZE;

/// 64-bit words in a page.
pub const WORDS_PER_PAGE: usize = PAGE_SIZE / 8;
/// Pages per locked region (2 MiB).
pub const PAGES_PER_REGION: u64 = 512;

/// Bytes of guest memory this process has ever allocated (a diagnostic; tests check that an
/// unauthenticated peer makes none).
static ALLOCATED_TOTAL: AtomicU64 = AtomicU64::new(0);

/// Bytes of guest memory allocated by this process so far (never decreases).
pub fn allocated_total() -> u64 {
    ALLOCATED_TOTAL.load(Relaxed)
}

/// Why guest memory could not be made or addressed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemoryError {
    #[error("guest memory must be a positive multiple of {PAGE_SIZE} bytes, got {0}")]
    Size(u64),
    #[error("guest memory of {got} bytes exceeds the limit of {max} bytes")]
    TooLarge { got: u64, max: u64 },
    #[error("cannot allocate {bytes} bytes of guest memory (the host or a limit refused)")]
    Alloc { bytes: u64 },
    #[error("page {page} is outside guest memory of {pages} pages")]
    Page { page: u64, pages: u64 },
}

/// A guest's memory: pages of 4 KiB in regions of [`PAGES_PER_REGION`] pages, each behind a lock.
#[derive(Debug)]
pub struct GuestMemory {
    regions: Vec<Mutex<Vec<u8>>>,
    pages: u64,
}

impl GuestMemory {
    /// Zeroed memory of `bytes` bytes (a multiple of the page size), at most `max` bytes.
    /// Allocation is fallible: a refusal (a memory limit, `ulimit -v`) is
    /// [`MemoryError::Alloc`], never an abort.
    pub fn new(bytes: u64, max: u64) -> Result<GuestMemory, MemoryError> {
        if bytes == 0 || bytes & (PAGE_SIZE as u64 - 1) != 0 {
            return Err(MemoryError::Size(bytes));
        }
        if bytes > max {
            return Err(MemoryError::TooLarge { got: bytes, max });
        }
        let pages = bytes / PAGE_SIZE as u64;
        let alloc = MemoryError::Alloc { bytes };
        let count = usize::try_from(pages.div_ceil(PAGES_PER_REGION)).map_err(|_| alloc.clone())?;
        let mut regions = Vec::new();
        regions
            .try_reserve_exact(count)
            .map_err(|_| alloc.clone())?;
        for r in 0..pages.div_ceil(PAGES_PER_REGION) {
            let n = (pages - r * PAGES_PER_REGION).min(PAGES_PER_REGION) as usize * PAGE_SIZE;
            let mut v = Vec::new();
            v.try_reserve_exact(n).map_err(|_| alloc.clone())?;
            v.resize(n, 0u8);
            regions.push(Mutex::new(v));
        }
        ALLOCATED_TOTAL.fetch_add(bytes, Relaxed);
        Ok(GuestMemory { regions, pages })
    }

    fn region(&self, page: u64) -> Result<(MutexGuard<'_, Vec<u8>>, usize), MemoryError> {
        if page >= self.pages {
            return Err(MemoryError::Page {
                page,
                pages: self.pages,
            });
        }
        let r = self.regions[(page / PAGES_PER_REGION) as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        Ok((r, (page % PAGES_PER_REGION) as usize * PAGE_SIZE))
    }

    /// Touches every page so the kernel backs it now rather than at the first write (what
    /// `-mem-prealloc` does for QEMU); the destination does this before round 1.
    pub fn prefault(&self) {
        self.prefault_with(&mut || {});
    }

    /// [`GuestMemory::prefault`], calling `each_region` before every 2 MiB region.
    pub fn prefault_with(&self, each_region: &mut dyn FnMut()) {
        for r in &self.regions {
            each_region();
            let mut r = r.lock().unwrap_or_else(|e| e.into_inner());
            for b in r.iter_mut().step_by(PAGE_SIZE) {
                *b = 0;
            }
        }
    }

    /// Pages.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// Bytes.
    pub fn bytes(&self) -> u64 {
        self.pages * PAGE_SIZE as u64
    }

    /// Runs `f` on a page's bytes (under the region's lock: keep `f` short).
    pub fn with_page<T>(
        &self,
        page: u64,
        f: impl FnOnce(&[u8; PAGE_SIZE]) -> T,
    ) -> Result<T, MemoryError> {
        let (r, at) = self.region(page)?;
        let p: &[u8; PAGE_SIZE] =
            r[at..at + PAGE_SIZE]
                .try_into()
                .map_err(|_| MemoryError::Page {
                    page,
                    pages: self.pages,
                })?;
        Ok(f(p))
    }

    /// Runs `f` on a page's bytes for writing (under the region's lock: keep `f` short).
    pub fn with_page_mut<T>(
        &self,
        page: u64,
        f: impl FnOnce(&mut [u8; PAGE_SIZE]) -> T,
    ) -> Result<T, MemoryError> {
        let pages = self.pages;
        let (mut r, at) = self.region(page)?;
        let p: &mut [u8; PAGE_SIZE] = (&mut r[at..at + PAGE_SIZE])
            .try_into()
            .map_err(|_| MemoryError::Page { page, pages })?;
        Ok(f(p))
    }

    /// Copies a page out.
    pub fn read_page(&self, page: u64, out: &mut [u8; PAGE_SIZE]) -> Result<(), MemoryError> {
        self.with_page(page, |p| out.copy_from_slice(p))
    }

    /// Overwrites a page.
    pub fn write_page(&self, page: u64, data: &[u8; PAGE_SIZE]) -> Result<(), MemoryError> {
        self.with_page_mut(page, |p| p.copy_from_slice(data))
    }

    /// One little-endian word of a page (`word` < [`WORDS_PER_PAGE`]; 0 outside memory).
    pub fn word(&self, page: u64, word: usize) -> u64 {
        self.with_page(page, |p| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&p[word * 8..word * 8 + 8]);
            u64::from_le_bytes(b)
        })
        .unwrap_or(0)
    }

    /// Sets one little-endian word of a page (ignored outside memory).
    pub fn set_word(&self, page: u64, word: usize, value: u64) {
        let _ = self.with_page_mut(page, |p| {
            p[word * 8..word * 8 + 8].copy_from_slice(&value.to_le_bytes())
        });
    }

    /// xxh3 of one page's bytes.
    pub fn page_hash(&self, page: u64) -> Result<u64, MemoryError> {
        self.with_page(page, |p| xxh3_64(p))
    }

    /// The memory digest: xxh3 over the little-endian xxh3 of every page, in page order.
    pub fn digest(&self) -> u64 {
        self.digest_with(&mut || {})
    }

    /// Calls `each` with the xxh3 of every page in page order, and `each_region` before every
    /// 2 MiB region (whose lock is held while its pages are hashed).
    pub fn for_each_page_hash(&self, each_region: &mut dyn FnMut(), each: &mut dyn FnMut(u64)) {
        for r in &self.regions {
            each_region();
            let r = r.lock().unwrap_or_else(|e| e.into_inner());
            for page in r.chunks_exact(PAGE_SIZE) {
                each(xxh3_64(page));
            }
        }
    }

    /// [`GuestMemory::digest`], calling `each_region` before every 2 MiB region.
    pub fn digest_with(&self, each_region: &mut dyn FnMut()) -> u64 {
        let mut h = Xxh3::new();
        for r in &self.regions {
            each_region();
            let r = r.lock().unwrap_or_else(|e| e.into_inner());
            for page in r.chunks_exact(PAGE_SIZE) {
                h.update(&xxh3_64(page).to_le_bytes());
            }
        }
        h.digest()
    }
}

/// The dirty log: one atomic bit per page, set by every write.
#[derive(Debug)]
pub struct DirtyBitmap {
    words: Vec<AtomicU64>,
    pages: u64,
}

impl DirtyBitmap {
    /// A clean log for `pages` pages.
    pub fn new(pages: u64) -> DirtyBitmap {
        DirtyBitmap {
            words: (0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            pages,
        }
    }

    /// Marks a page dirty.
    pub fn mark(&self, page: u64) {
        if page < self.pages {
            self.words[(page / 64) as usize].fetch_or(1 << (page % 64), Relaxed);
        }
    }

    /// The dirty pages, clearing the log (word by word, atomically).
    pub fn fetch_and_clear(&self) -> PageSet {
        PageSet {
            words: self.words.iter().map(|w| w.swap(0, Relaxed)).collect(),
            pages: self.pages,
        }
    }

    /// Dirty pages now, without clearing.
    pub fn count(&self) -> u64 {
        self.words
            .iter()
            .map(|w| u64::from(w.load(Relaxed).count_ones()))
            .sum()
    }
}

/// A set of pages (a plain bitmap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageSet {
    words: Vec<u64>,
    pages: u64,
}

impl PageSet {
    /// Every page of `pages`.
    pub fn all(pages: u64) -> PageSet {
        let mut words = vec![u64::MAX; pages.div_ceil(64) as usize];
        if pages & 63 != 0 {
            if let Some(last) = words.last_mut() {
                *last = (1u64 << (pages % 64)) - 1;
            }
        }
        PageSet { words, pages }
    }

    /// No page of `pages`.
    pub fn empty(pages: u64) -> PageSet {
        PageSet {
            words: vec![0; pages.div_ceil(64) as usize],
            pages,
        }
    }

    /// The number of pages the set ranges over (not how many it holds).
    pub fn len(&self) -> u64 {
        self.pages
    }

    /// Whether the set ranges over no page at all.
    pub fn is_empty(&self) -> bool {
        self.pages == 0
    }

    /// Adds `page` (ignored past the end).
    pub fn insert(&mut self, page: u64) {
        if page < self.pages {
            self.words[(page / 64) as usize] |= 1 << (page % 64);
        }
    }

    /// Pages in the set.
    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Adds every page of `other`.
    pub fn union_with(&mut self, other: &PageSet) {
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= b;
        }
    }

    /// The pages in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let b = w.trailing_zeros();
                w &= w - 1;
                Some(i as u64 * 64 + u64::from(b))
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_round_trip_and_bounds_are_checked() {
        let m = GuestMemory::new(4 * PAGE_SIZE as u64, u64::MAX).expect("alloc");
        let mut p = [0u8; PAGE_SIZE];
        p[17] = 9;
        m.write_page(2, &p).expect("in range");
        let mut q = [1u8; PAGE_SIZE];
        m.read_page(2, &mut q).expect("in range");
        assert_eq!(p, q);
        assert!(m.write_page(4, &p).is_err());
        assert!(GuestMemory::new(100, u64::MAX).is_err());
        assert!(GuestMemory::new(1 << 20, 1 << 12).is_err());
        let d = m.digest();
        m.set_word(3, 0, 1);
        assert_ne!(d, m.digest());
    }

    #[test]
    fn dirty_log_fetch_and_clear() {
        let d = DirtyBitmap::new(130);
        d.mark(0);
        d.mark(129);
        d.mark(129);
        d.mark(500);
        assert_eq!(d.count(), 2);
        let s = d.fetch_and_clear();
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0, 129]);
        assert_eq!(d.count(), 0);
        assert_eq!(PageSet::all(130).count(), 130);
        assert_eq!(PageSet::all(130).iter().last(), Some(129));
    }
}
