//! `Pages` payloads: page entries (zero-page elision, raw, lz4) and the batch writer that builds
//! a whole frame in one buffer.

use super::{
    Header, MsgType, WireError, ENTRY_HEADER_LEN, HEADER_LEN, MAX_BATCH_PAGES, MAX_LZ4_PAGE,
    MAX_PAYLOAD, PAGE_SIZE, TAG_LEN, VERSION,
};

/// How a page travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PageEncoding {
    /// All zero: no data follows.
    Zero = 0,
    /// The 4096 bytes as they are.
    Raw = 1,
    /// lz4 block (`lz4_flex`), decompressing to 4096 bytes.
    Lz4 = 2,
}

/// One page of a received batch, borrowing the frame's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageEntry<'a> {
    pub index: u64,
    pub encoding: PageEncoding,
    pub data: &'a [u8],
}

impl PageEntry<'_> {
    /// Writes the page's 4096 bytes into `out`.
    pub fn decode_into(&self, out: &mut [u8; PAGE_SIZE]) -> Result<(), WireError> {
        match self.encoding {
            PageEncoding::Zero => out.fill(0),
            PageEncoding::Raw => out.copy_from_slice(self.data),
            PageEncoding::Lz4 => {
                let n = lz4_flex::block::decompress_into(self.data, out).map_err(|_| {
                    WireError::Malformed {
                        msg: "pages",
                        reason: "an lz4 page does not decompress",
                    }
                })?;
                if n != PAGE_SIZE {
                    return Err(WireError::Malformed {
                        msg: "pages",
                        reason: "an lz4 page does not decompress to 4096 bytes",
                    });
                }
            }
        }
        Ok(())
    }
}

/// A `Pages` payload: a u32 count, then per page `index u64, encoding u8, length u32, data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageBatch {
    payload: Vec<u8>,
}

impl PageBatch {
    /// Validates a payload: count within the cap, every entry well-formed, nothing left over.
    pub fn parse(payload: Vec<u8>) -> Result<PageBatch, WireError> {
        let b = PageBatch { payload };
        let mut n = 0u32;
        for e in b.iter_unchecked() {
            e?;
            n += 1;
        }
        if n != b.count() {
            return Err(WireError::Malformed {
                msg: "pages",
                reason: "the page count does not match the entries",
            });
        }
        Ok(b)
    }

    /// The payload's allocation, for reuse by [`super::read_within`].
    pub fn into_payload(self) -> Vec<u8> {
        self.payload
    }

    /// The payload's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.payload
    }

    /// Pages in the batch.
    pub fn count(&self) -> u32 {
        self.payload
            .get(..4)
            .map_or(0, |c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
    }

    /// The entries (already validated by [`PageBatch::parse`]).
    pub fn entries(&self) -> impl Iterator<Item = PageEntry<'_>> {
        self.iter_unchecked().map_while(Result::ok)
    }

    fn iter_unchecked(&self) -> impl Iterator<Item = Result<PageEntry<'_>, WireError>> {
        let p = &self.payload;
        let mut pos = 4usize;
        let mut failed = p.len() < 4;
        let count = self.count();
        let mut first = true;
        std::iter::from_fn(move || {
            if failed {
                if first {
                    first = false;
                    return Some(Err(WireError::Malformed {
                        msg: "pages",
                        reason: "the payload is shorter than its count",
                    }));
                }
                return None;
            }
            first = false;
            if count > MAX_BATCH_PAGES {
                failed = true;
                return Some(Err(WireError::TooLong {
                    what: "a page batch (in pages)",
                    len: u64::from(count),
                    max: u64::from(MAX_BATCH_PAGES),
                }));
            }
            if pos == p.len() {
                return None;
            }
            let bad = |reason| {
                Some(Err(WireError::Malformed {
                    msg: "pages",
                    reason,
                }))
            };
            let Some(h) = p.get(pos..pos + ENTRY_HEADER_LEN) else {
                failed = true;
                return bad("a page entry header is cut short");
            };
            let index = u64::from_le_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]]);
            let len = u32::from_le_bytes([h[9], h[10], h[11], h[12]]) as usize;
            let encoding = match (h[8], len) {
                (0, 0) => PageEncoding::Zero,
                (1, PAGE_SIZE) => PageEncoding::Raw,
                (2, 1..=MAX_LZ4_PAGE) => PageEncoding::Lz4,
                (0..=2, _) => {
                    failed = true;
                    return bad("a page entry has a length its encoding does not allow");
                }
                _ => {
                    failed = true;
                    return bad("a page entry has an unknown encoding");
                }
            };
            let start = pos + ENTRY_HEADER_LEN;
            let Some(data) = p.get(start..start + len) else {
                failed = true;
                return bad("a page entry's data is cut short");
            };
            pos = start + len;
            Some(Ok(PageEntry {
                index,
                encoding,
                data,
            }))
        })
    }
}

/// Builds a `Pages` frame in one buffer (header included), so that it goes out in one write.
#[derive(Debug)]
pub struct BatchWriter {
    frame: Vec<u8>,
    /// Where the entries end (a finished frame's tag follows).
    body_end: usize,
    count: u32,
    compress: bool,
}

impl BatchWriter {
    /// An empty batch; `compress` tries lz4 on every non-zero page.
    pub fn new(compress: bool) -> BatchWriter {
        let mut frame =
            Vec::with_capacity(HEADER_LEN + MAX_PAYLOAD as usize + 2 * PAGE_SIZE + TAG_LEN);
        frame.extend_from_slice(&[0u8; HEADER_LEN + 4]);
        BatchWriter {
            frame,
            body_end: HEADER_LEN + 4,
            count: 0,
            compress,
        }
    }

    /// Pages in the batch.
    pub fn len(&self) -> u32 {
        self.count
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether another page fits.
    pub fn is_full(&self) -> bool {
        self.count >= MAX_BATCH_PAGES
    }

    /// Adds a page (zero pages are elided, lz4 used when it is smaller). Returns whether it
    /// fitted (false when the batch already holds [`MAX_BATCH_PAGES`]).
    pub fn push(&mut self, index: u64, page: &[u8; PAGE_SIZE]) -> bool {
        self.frame.truncate(self.body_end);
        if self.is_full() {
            return false;
        }
        self.frame.extend_from_slice(&index.to_le_bytes());
        if page.iter().all(|&b| b == 0) {
            self.frame.push(PageEncoding::Zero as u8);
            self.frame.extend_from_slice(&0u32.to_le_bytes());
        } else {
            let at = self.frame.len();
            let mut done = false;
            if self.compress {
                self.frame.push(PageEncoding::Lz4 as u8);
                self.frame.extend_from_slice(&[0u8; 4]);
                let data_at = self.frame.len();
                let room = lz4_flex::block::get_maximum_output_size(PAGE_SIZE);
                self.frame.resize(data_at + room, 0);
                match lz4_flex::block::compress_into(page, &mut self.frame[data_at..]) {
                    Ok(n) if n < PAGE_SIZE => {
                        self.frame.truncate(data_at + n);
                        self.frame[at + 1..at + 5].copy_from_slice(&(n as u32).to_le_bytes());
                        done = true;
                    }
                    _ => self.frame.truncate(at),
                }
            }
            if !done {
                self.frame.push(PageEncoding::Raw as u8);
                self.frame
                    .extend_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
                self.frame.extend_from_slice(page);
            }
        }
        self.count += 1;
        self.body_end = self.frame.len();
        true
    }

    /// The finished frame's bytes in this build's newest version with an all-zero tag (for
    /// tests; no session accepts it).
    pub fn frame(&mut self) -> &[u8] {
        self.frame_with_tag(VERSION, |_| [0; TAG_LEN])
    }

    /// The finished frame's bytes in protocol `version`, its session tag computed by `tag` over
    /// the payload (count and entries) and appended.
    pub fn frame_with_tag(
        &mut self,
        version: u16,
        tag: impl FnOnce(&[u8]) -> [u8; TAG_LEN],
    ) -> &[u8] {
        self.frame.truncate(self.body_end);
        let len = (self.frame.len() - HEADER_LEN + TAG_LEN) as u32;
        let h = Header {
            version,
            msg_type: MsgType::Pages as u16,
            len,
        };
        self.frame[..HEADER_LEN].copy_from_slice(&h.encode());
        self.frame[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&self.count.to_le_bytes());
        let t = tag(&self.frame[HEADER_LEN..]);
        self.frame.extend_from_slice(&t);
        &self.frame
    }

    /// Empties the batch for reuse.
    pub fn clear(&mut self) {
        self.frame.truncate(HEADER_LEN + 4);
        self.body_end = HEADER_LEN + 4;
        self.count = 0;
    }
}
