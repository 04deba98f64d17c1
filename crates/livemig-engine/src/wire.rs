//! The wire protocol: a fixed little-endian header, typed messages, hard caps on every length.
//!
//! A frame is a 12-byte header — magic `LMIG`, version (u16), message type (u16), payload
//! length (u32) — followed by the payload. `docs/protocol.md` describes every message.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

/// First four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"LMIG";
/// The protocol version this build speaks.
pub const VERSION: u16 = 2;
/// Bytes of a frame header.
pub const HEADER_LEN: usize = 12;
/// Page size the protocol moves.
pub const PAGE_SIZE: usize = 4096;
/// Most pages in one `Pages` frame.
pub const MAX_BATCH_PAGES: u32 = 256;
/// Bytes of one page entry's header (index u64, encoding u8, length u32).
pub const ENTRY_HEADER_LEN: usize = 13;
/// Longest lz4 encoding of a page accepted: the sender uses lz4 only when it is shorter than
/// the raw page.
pub const MAX_LZ4_PAGE: usize = PAGE_SIZE - 1;
/// Largest payload of any frame.
pub const MAX_PAYLOAD: u32 = 4 + MAX_BATCH_PAGES * (ENTRY_HEADER_LEN + PAGE_SIZE) as u32;
/// Largest CPU/device state blob.
pub const MAX_STATE: usize = 1 << 20;
/// Longest error text.
pub const MAX_ERROR_TEXT: usize = 1024;
/// Bytes of a handshake nonce.
pub const NONCE_LEN: usize = 32;
/// Bytes of an HMAC-SHA256 tag.
pub const MAC_LEN: usize = 32;

/// Bytes of the session tag on `State`, `Confirm` and `Ack`.
pub const TAG_LEN: usize = MAC_LEN;

/// Message types; `Invalid = 0` is never sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum MsgType {
    Invalid = 0,
    Hello = 1,
    Challenge = 2,
    Auth = 3,
    Ready = 4,
    RoundStart = 5,
    Pages = 6,
    RoundEnd = 7,
    StopCopy = 8,
    State = 9,
    Confirm = 10,
    Ack = 11,
    Error = 12,
    Wait = 13,
}

impl MsgType {
    /// The type of a wire value, `None` for unknown values and `Invalid`.
    pub fn from_u16(v: u16) -> Option<MsgType> {
        use MsgType::*;
        Some(match v {
            1 => Hello,
            2 => Challenge,
            3 => Auth,
            4 => Ready,
            5 => RoundStart,
            6 => Pages,
            7 => RoundEnd,
            8 => StopCopy,
            9 => State,
            10 => Confirm,
            11 => Ack,
            12 => Error,
            13 => Wait,
            _ => return None,
        })
    }
}

/// Why a frame could not be read, written or decoded.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("the peer closed the connection")]
    Closed,
    #[error("the connection ended inside a frame (truncated frame)")]
    Truncated,
    #[error("the peer sent nothing within the timeout")]
    TimedOut,
    #[error("the peer did not complete a frame within its deadline of {0:?}")]
    Deadline(std::time::Duration),
    #[error("the connection failed")]
    Io(#[source] io::Error),
    #[error("the peer does not speak the livemig protocol (bad magic {0:02x?})")]
    BadMagic([u8; 4]),
    #[error(
        "protocol version mismatch: the peer speaks version {got}, this build speaks {VERSION}"
    )]
    Version { got: u16 },
    #[error("unknown message type {0}")]
    UnknownType(u16),
    #[error("{what} of {len} bytes exceeds the limit of {max} bytes")]
    TooLong {
        what: &'static str,
        len: u64,
        max: u64,
    },
    #[error("malformed {msg} message: {reason}")]
    Malformed {
        msg: &'static str,
        reason: &'static str,
    },
}

fn io_err(e: io::Error, inside: bool) -> WireError {
    match e.kind() {
        io::ErrorKind::UnexpectedEof if inside => WireError::Truncated,
        io::ErrorKind::UnexpectedEof => WireError::Closed,
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => WireError::TimedOut,
        _ => WireError::Io(e),
    }
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u16,
    pub msg_type: u16,
    pub len: u32,
}

impl Header {
    /// The header's bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&self.version.to_le_bytes());
        b[6..8].copy_from_slice(&self.msg_type.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// Checks magic, version, type and the length cap.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<(Header, MsgType), WireError> {
        let magic = [b[0], b[1], b[2], b[3]];
        if magic != MAGIC {
            return Err(WireError::BadMagic(magic));
        }
        let h = Header {
            version: u16::from_le_bytes([b[4], b[5]]),
            msg_type: u16::from_le_bytes([b[6], b[7]]),
            len: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
        };
        if h.version != VERSION {
            return Err(WireError::Version { got: h.version });
        }
        let t = MsgType::from_u16(h.msg_type).ok_or(WireError::UnknownType(h.msg_type))?;
        if h.len > MAX_PAYLOAD {
            return Err(WireError::TooLong {
                what: "a frame payload",
                len: u64::from(h.len),
                max: u64::from(MAX_PAYLOAD),
            });
        }
        Ok((h, t))
    }
}

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

    /// The payload's allocation, for reuse by [`Message::read_reusing`].
    pub fn into_payload(self) -> Vec<u8> {
        self.payload
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
    count: u32,
    compress: bool,
}

impl BatchWriter {
    /// An empty batch; `compress` tries lz4 on every non-zero page.
    pub fn new(compress: bool) -> BatchWriter {
        let mut frame = Vec::with_capacity(HEADER_LEN + MAX_PAYLOAD as usize + 2 * PAGE_SIZE);
        frame.extend_from_slice(&[0u8; HEADER_LEN + 4]);
        BatchWriter {
            frame,
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
        true
    }

    /// The finished frame's bytes.
    pub fn frame(&mut self) -> &[u8] {
        let len = (self.frame.len() - HEADER_LEN) as u32;
        let h = Header {
            version: VERSION,
            msg_type: MsgType::Pages as u16,
            len,
        };
        self.frame[..HEADER_LEN].copy_from_slice(&h.encode());
        self.frame[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&self.count.to_le_bytes());
        &self.frame
    }

    /// Empties the batch for reuse.
    pub fn clear(&mut self) {
        self.frame.truncate(HEADER_LEN + 4);
        self.count = 0;
    }
}

/// Every message of the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Source -> destination, first: version, nonce, guest geometry, compression.
    Hello {
        version: u16,
        nonce: [u8; NONCE_LEN],
        memory_bytes: u64,
        page_size: u32,
        compress: bool,
    },
    /// Destination -> source: its nonce and its proof of the key.
    Challenge {
        nonce: [u8; NONCE_LEN],
        mac: [u8; MAC_LEN],
    },
    /// Source -> destination: its proof of the key.
    Auth { mac: [u8; MAC_LEN] },
    /// Destination -> source: authenticated, memory allocated.
    Ready,
    /// A pre-copy round begins with this many pages.
    RoundStart { round: u32, pages: u64 },
    /// Pages.
    Pages(PageBatch),
    /// The round ended after this many pages.
    RoundEnd { round: u32, pages: u64 },
    /// The source paused the guest; this many pages follow.
    StopCopy { pages: u64 },
    /// The CPU/device state and the digest of the source's memory at pause (tagged with
    /// the session key, see [`crate::auth::SessionKey`]).
    State {
        digest: u64,
        tag: [u8; TAG_LEN],
        blob: Vec<u8>,
    },
    /// Destination -> source: the digest of its memory and whether it matches (tagged).
    Confirm {
        ok: bool,
        digest: u64,
        tag: [u8; TAG_LEN],
    },
    /// Source -> destination: the hand-over is complete; resume (tagged).
    Ack { tag: [u8; TAG_LEN] },
    /// Either side: why it gives up.
    Error { code: u16, message: String },
    /// Either side, after authentication: still working (a long prefault or digest), keep
    /// waiting.
    Wait,
}

/// Error codes of [`Message::Error`].
pub mod code {
    pub const PROTOCOL: u16 = 1;
    pub const VERSION: u16 = 2;
    pub const AUTH: u16 = 3;
    pub const RESOURCES: u16 = 4;
    pub const VERIFY: u16 = 5;
}

fn arr<const N: usize>(b: &[u8], at: usize, msg: &'static str) -> Result<[u8; N], WireError> {
    b.get(at..at + N)
        .and_then(|s| s.try_into().ok())
        .ok_or(WireError::Malformed {
            msg,
            reason: "the payload is too short",
        })
}

fn u16_at(b: &[u8], at: usize, msg: &'static str) -> Result<u16, WireError> {
    Ok(u16::from_le_bytes(arr(b, at, msg)?))
}
fn u32_at(b: &[u8], at: usize, msg: &'static str) -> Result<u32, WireError> {
    Ok(u32::from_le_bytes(arr(b, at, msg)?))
}
fn u64_at(b: &[u8], at: usize, msg: &'static str) -> Result<u64, WireError> {
    Ok(u64::from_le_bytes(arr(b, at, msg)?))
}

fn exact(b: &[u8], n: usize, msg: &'static str) -> Result<(), WireError> {
    if b.len() == n {
        Ok(())
    } else {
        Err(WireError::Malformed {
            msg,
            reason: "the payload has the wrong length",
        })
    }
}

impl Message {
    /// The message's type.
    pub fn msg_type(&self) -> MsgType {
        match self {
            Message::Hello { .. } => MsgType::Hello,
            Message::Challenge { .. } => MsgType::Challenge,
            Message::Auth { .. } => MsgType::Auth,
            Message::Ready => MsgType::Ready,
            Message::RoundStart { .. } => MsgType::RoundStart,
            Message::Pages(_) => MsgType::Pages,
            Message::RoundEnd { .. } => MsgType::RoundEnd,
            Message::StopCopy { .. } => MsgType::StopCopy,
            Message::State { .. } => MsgType::State,
            Message::Confirm { .. } => MsgType::Confirm,
            Message::Ack { .. } => MsgType::Ack,
            Message::Error { .. } => MsgType::Error,
            Message::Wait => MsgType::Wait,
        }
    }

    /// An error message, its text cut to [`MAX_ERROR_TEXT`] bytes.
    pub fn error(code: u16, text: &str) -> Message {
        let mut end = text.len().min(MAX_ERROR_TEXT);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        Message::Error {
            code,
            message: text[..end].to_string(),
        }
    }

    /// The bytes a session tag covers (the payload without the tag), `None` for messages
    /// that carry no tag.
    pub fn signed_body(&self) -> Option<Vec<u8>> {
        let mut p = Vec::new();
        match self {
            Message::State { digest, blob, .. } => {
                p.extend_from_slice(&digest.to_le_bytes());
                p.extend_from_slice(blob);
            }
            Message::Confirm { ok, digest, .. } => {
                p.push(u8::from(*ok));
                p.extend_from_slice(&digest.to_le_bytes());
            }
            Message::Ack { .. } => {}
            _ => return None,
        }
        Some(p)
    }

    /// The session tag, for `State`, `Confirm` and `Ack`.
    pub fn tag(&self) -> Option<&[u8; TAG_LEN]> {
        match self {
            Message::State { tag, .. } | Message::Confirm { tag, .. } | Message::Ack { tag } => {
                Some(tag)
            }
            _ => None,
        }
    }

    /// The session tag to fill in.
    pub fn tag_mut(&mut self) -> Option<&mut [u8; TAG_LEN]> {
        match self {
            Message::State { tag, .. } | Message::Confirm { tag, .. } | Message::Ack { tag } => {
                Some(tag)
            }
            _ => None,
        }
    }

    /// The payload's bytes.
    pub fn payload(&self) -> Vec<u8> {
        let mut p = Vec::new();
        match self {
            Message::Hello {
                version,
                nonce,
                memory_bytes,
                page_size,
                compress,
            } => {
                p.extend_from_slice(&version.to_le_bytes());
                p.extend_from_slice(nonce);
                p.extend_from_slice(&memory_bytes.to_le_bytes());
                p.extend_from_slice(&page_size.to_le_bytes());
                p.push(u8::from(*compress));
            }
            Message::Challenge { nonce, mac } => {
                p.extend_from_slice(nonce);
                p.extend_from_slice(mac);
            }
            Message::Auth { mac } => p.extend_from_slice(mac),
            Message::Ready | Message::Wait => {}
            Message::Ack { tag } => p.extend_from_slice(tag),
            Message::RoundStart { round, pages } | Message::RoundEnd { round, pages } => {
                p.extend_from_slice(&round.to_le_bytes());
                p.extend_from_slice(&pages.to_le_bytes());
            }
            Message::Pages(b) => p.extend_from_slice(&b.payload),
            Message::StopCopy { pages } => p.extend_from_slice(&pages.to_le_bytes()),
            Message::State { digest, tag, blob } => {
                p.extend_from_slice(&digest.to_le_bytes());
                p.extend_from_slice(tag);
                p.extend_from_slice(blob);
            }
            Message::Confirm { ok, digest, tag } => {
                p.push(u8::from(*ok));
                p.extend_from_slice(&digest.to_le_bytes());
                p.extend_from_slice(tag);
            }
            Message::Error { code, message } => {
                p.extend_from_slice(&code.to_le_bytes());
                p.extend_from_slice(message.as_bytes());
            }
        }
        p
    }

    /// Decodes a payload of type `t`.
    pub fn decode(t: MsgType, p: Vec<u8>) -> Result<Message, WireError> {
        Ok(match t {
            MsgType::Invalid => return Err(WireError::UnknownType(0)),
            MsgType::Hello => {
                exact(&p, 2 + NONCE_LEN + 8 + 4 + 1, "hello")?;
                let compress = match p[2 + NONCE_LEN + 12] {
                    0 => false,
                    1 => true,
                    _ => {
                        return Err(WireError::Malformed {
                            msg: "hello",
                            reason: "the compression flag is neither 0 nor 1",
                        })
                    }
                };
                Message::Hello {
                    version: u16_at(&p, 0, "hello")?,
                    nonce: arr(&p, 2, "hello")?,
                    memory_bytes: u64_at(&p, 2 + NONCE_LEN, "hello")?,
                    page_size: u32_at(&p, 2 + NONCE_LEN + 8, "hello")?,
                    compress,
                }
            }
            MsgType::Challenge => {
                exact(&p, NONCE_LEN + MAC_LEN, "challenge")?;
                Message::Challenge {
                    nonce: arr(&p, 0, "challenge")?,
                    mac: arr(&p, NONCE_LEN, "challenge")?,
                }
            }
            MsgType::Auth => {
                exact(&p, MAC_LEN, "auth")?;
                Message::Auth {
                    mac: arr(&p, 0, "auth")?,
                }
            }
            MsgType::Ready => {
                exact(&p, 0, "ready")?;
                Message::Ready
            }
            MsgType::Wait => {
                exact(&p, 0, "wait")?;
                Message::Wait
            }
            MsgType::Ack => {
                exact(&p, TAG_LEN, "ack")?;
                Message::Ack {
                    tag: arr(&p, 0, "ack")?,
                }
            }
            MsgType::RoundStart | MsgType::RoundEnd => {
                exact(&p, 12, "round")?;
                let round = u32_at(&p, 0, "round")?;
                let pages = u64_at(&p, 4, "round")?;
                if t == MsgType::RoundStart {
                    Message::RoundStart { round, pages }
                } else {
                    Message::RoundEnd { round, pages }
                }
            }
            MsgType::Pages => Message::Pages(PageBatch::parse(p)?),
            MsgType::StopCopy => {
                exact(&p, 8, "stop-copy")?;
                Message::StopCopy {
                    pages: u64_at(&p, 0, "stop-copy")?,
                }
            }
            MsgType::State => {
                let digest = u64_at(&p, 0, "state")?;
                let tag = arr(&p, 8, "state")?;
                let head = 8 + TAG_LEN;
                if p.len() - head > MAX_STATE {
                    return Err(WireError::TooLong {
                        what: "a state blob",
                        len: (p.len() - head) as u64,
                        max: MAX_STATE as u64,
                    });
                }
                Message::State {
                    digest,
                    tag,
                    blob: p[head..].to_vec(),
                }
            }
            MsgType::Confirm => {
                exact(&p, 9 + TAG_LEN, "confirm")?;
                let ok = match p[0] {
                    0 => false,
                    1 => true,
                    _ => {
                        return Err(WireError::Malformed {
                            msg: "confirm",
                            reason: "the verdict is neither 0 nor 1",
                        })
                    }
                };
                Message::Confirm {
                    ok,
                    digest: u64_at(&p, 1, "confirm")?,
                    tag: arr(&p, 9, "confirm")?,
                }
            }
            MsgType::Error => {
                let code = u16_at(&p, 0, "error")?;
                if p.len() - 2 > MAX_ERROR_TEXT {
                    return Err(WireError::TooLong {
                        what: "an error text",
                        len: (p.len() - 2) as u64,
                        max: MAX_ERROR_TEXT as u64,
                    });
                }
                let message =
                    String::from_utf8(p[2..].to_vec()).map_err(|_| WireError::Malformed {
                        msg: "error",
                        reason: "the text is not UTF-8",
                    })?;
                Message::Error { code, message }
            }
        })
    }

    /// The whole frame's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let payload = self.payload();
        let h = Header {
            version: VERSION,
            msg_type: self.msg_type() as u16,
            len: payload.len() as u32,
        };
        let mut f = Vec::with_capacity(HEADER_LEN + payload.len());
        f.extend_from_slice(&h.encode());
        f.extend_from_slice(&payload);
        f
    }

    /// Writes the frame.
    pub fn write_to(&self, w: &mut impl Write) -> Result<(), WireError> {
        w.write_all(&self.encode()).map_err(|e| io_err(e, true))?;
        w.flush().map_err(|e| io_err(e, true))
    }

    /// Reads one frame. Returns the message and the frame's size on the wire.
    pub fn read_from(r: &mut impl Read) -> Result<(Message, usize), WireError> {
        Message::read_reusing(r, &mut Vec::new())
    }

    /// [`Message::read_from`], reading the payload into `spare`'s allocation (taken; give it
    /// back with [`PageBatch::into_payload`] to avoid an allocation per frame).
    pub fn read_reusing(
        r: &mut impl Read,
        spare: &mut Vec<u8>,
    ) -> Result<(Message, usize), WireError> {
        Message::read_within(r, spare, None)
    }

    /// [`Message::read_reusing`] with a deadline for the whole frame: `Some((at, limit))`
    /// fails with [`WireError::Deadline`]`(limit)` once `at` has passed, checked after every
    /// read, so that a peer trickling bytes cannot hold the reader longer than the deadline
    /// plus one socket timeout.
    pub fn read_within(
        r: &mut impl Read,
        spare: &mut Vec<u8>,
        deadline: Option<(Instant, Duration)>,
    ) -> Result<(Message, usize), WireError> {
        let late = || match deadline {
            Some((at, limit)) if Instant::now() >= at => Err(WireError::Deadline(limit)),
            _ => Ok(()),
        };
        let mut hb = [0u8; HEADER_LEN];
        fill(r, &mut hb, true, &late)?;
        let (h, t) = Header::decode(&hb)?;
        let mut payload = std::mem::take(spare);
        let len = h.len as usize;
        if payload.len() >= len {
            payload.truncate(len);
        } else {
            payload.resize(len, 0);
        }
        fill(r, &mut payload, false, &late)?;
        Ok((Message::decode(t, payload)?, HEADER_LEN + h.len as usize))
    }

    /// Decodes one frame from the start of `bytes` (for tests and fuzzing).
    pub fn from_bytes(bytes: &[u8]) -> Result<(Message, usize), WireError> {
        let mut r = bytes;
        Message::read_from(&mut r)
    }
}

/// Reads exactly `buf.len()` bytes, asking `late` after every read. `first`: nothing of the
/// frame has been read before `buf` (an end of stream at its start is `Closed`).
fn fill(
    r: &mut impl Read,
    buf: &mut [u8],
    first: bool,
    late: &dyn Fn() -> Result<(), WireError>,
) -> Result<(), WireError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 && first => return Err(WireError::Closed),
            Ok(0) => return Err(WireError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err(e, got > 0 || !first)),
        }
        if got < buf.len() {
            late()?;
        }
    }
    Ok(())
}

/// Writes a raw frame (used by [`BatchWriter`] callers).
pub fn write_frame(w: &mut impl Write, frame: &[u8]) -> Result<(), WireError> {
    w.write_all(frame).map_err(|e| io_err(e, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(m: Message) {
        let bytes = m.encode();
        let (back, n) = Message::from_bytes(&bytes).expect("decodes");
        assert_eq!(back, m);
        assert_eq!(n, bytes.len());
    }

    #[test]
    fn every_message_round_trips() {
        round_trip(Message::Hello {
            version: VERSION,
            nonce: [7; NONCE_LEN],
            memory_bytes: 1 << 30,
            page_size: 4096,
            compress: true,
        });
        round_trip(Message::Challenge {
            nonce: [1; NONCE_LEN],
            mac: [2; MAC_LEN],
        });
        round_trip(Message::Auth { mac: [3; MAC_LEN] });
        round_trip(Message::Ready);
        round_trip(Message::RoundStart {
            round: 3,
            pages: 99,
        });
        round_trip(Message::RoundEnd {
            round: 3,
            pages: 98,
        });
        round_trip(Message::StopCopy { pages: 5 });
        round_trip(Message::State {
            digest: 0xdead_beef,
            tag: [4; TAG_LEN],
            blob: b"{}".to_vec(),
        });
        round_trip(Message::Confirm {
            ok: true,
            digest: 42,
            tag: [5; TAG_LEN],
        });
        round_trip(Message::Ack { tag: [6; TAG_LEN] });
        round_trip(Message::Wait);
        round_trip(Message::error(code::AUTH, "wrong key"));
    }

    #[test]
    fn page_batches_round_trip_with_each_encoding() {
        let zero = [0u8; PAGE_SIZE];
        let mut text = [0u8; PAGE_SIZE];
        for (i, b) in text.iter_mut().enumerate() {
            *b = b"livemig "[i % 8];
        }
        let mut noise = [0u8; PAGE_SIZE];
        let mut x = 1u64;
        for b in noise.iter_mut() {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *b = (x >> 56) as u8;
        }
        for compress in [false, true] {
            let mut w = BatchWriter::new(compress);
            assert!(w.push(0, &zero));
            assert!(w.push(5, &text));
            assert!(w.push(9, &noise));
            let frame = w.frame().to_vec();
            let (m, _) = Message::from_bytes(&frame).expect("decodes");
            let Message::Pages(b) = m else {
                panic!("not a batch")
            };
            let entries: Vec<_> = b.entries().collect();
            assert_eq!(entries.len(), 3);
            assert_eq!(entries[0].encoding, PageEncoding::Zero);
            let want_text = if compress {
                PageEncoding::Lz4
            } else {
                PageEncoding::Raw
            };
            assert_eq!(entries[1].encoding, want_text);
            assert_eq!(entries[2].encoding, PageEncoding::Raw, "noise stays raw");
            let mut out = [1u8; PAGE_SIZE];
            for (e, want) in entries.iter().zip([&zero, &text, &noise]) {
                e.decode_into(&mut out).expect("decodes");
                assert_eq!(&out, want);
            }
            assert_eq!(
                entries.iter().map(|e| e.index).collect::<Vec<_>>(),
                vec![0, 5, 9]
            );
        }
    }

    #[test]
    fn a_frame_must_complete_within_its_deadline() {
        /// Hands out one byte per read, each after `pause`.
        struct Trickle<'a> {
            bytes: &'a [u8],
            pause: Duration,
        }
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                std::thread::sleep(self.pause);
                let n = self.bytes.len().min(buf.len()).min(1);
                buf[..n].copy_from_slice(&self.bytes[..n]);
                self.bytes = &self.bytes[n..];
                Ok(n)
            }
        }
        let f = Message::RoundStart { round: 1, pages: 2 }.encode();
        let mut slow = Trickle {
            bytes: &f,
            pause: Duration::from_millis(10),
        };
        let limit = Duration::from_millis(50);
        let t0 = Instant::now();
        let e = Message::read_within(&mut slow, &mut Vec::new(), Some((t0 + limit, limit)))
            .expect_err("too slow");
        assert!(matches!(e, WireError::Deadline(_)), "{e}");
        assert!(t0.elapsed() < Duration::from_millis(500));
        let mut fast = Trickle {
            bytes: &f,
            pause: Duration::ZERO,
        };
        let far = Instant::now() + Duration::from_secs(5);
        let (m, _) =
            Message::read_within(&mut fast, &mut Vec::new(), Some((far, limit))).expect("in time");
        assert_eq!(m, Message::RoundStart { round: 1, pages: 2 });
    }

    #[test]
    fn bad_headers_are_refused() {
        let mut f = Message::Ready.encode();
        f[0] = b'X';
        assert!(matches!(
            Message::from_bytes(&f),
            Err(WireError::BadMagic(_))
        ));
        let mut f = Message::Ready.encode();
        f[4] = 9;
        assert!(matches!(
            Message::from_bytes(&f),
            Err(WireError::Version { got: 9 })
        ));
        let mut f = Message::Ready.encode();
        f[6] = 0;
        assert!(matches!(
            Message::from_bytes(&f),
            Err(WireError::UnknownType(0))
        ));
        let mut f = Message::Ready.encode();
        f[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Message::from_bytes(&f),
            Err(WireError::TooLong { .. })
        ));
        let f = Message::RoundStart { round: 1, pages: 1 }.encode();
        assert!(matches!(
            Message::from_bytes(&f[..f.len() - 1]),
            Err(WireError::Truncated)
        ));
        assert!(matches!(Message::from_bytes(&[]), Err(WireError::Closed)));
    }

    #[test]
    fn batch_counts_and_lengths_are_checked() {
        let mut w = BatchWriter::new(false);
        w.push(1, &[1u8; PAGE_SIZE]);
        let mut f = w.frame().to_vec();
        // Claim two pages where there is one.
        f[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&2u32.to_le_bytes());
        assert!(matches!(
            Message::from_bytes(&f),
            Err(WireError::Malformed { .. })
        ));
        // A raw page with a short length.
        let mut f = w.frame().to_vec();
        let at = HEADER_LEN + 4 + 9;
        f[at..at + 4].copy_from_slice(&100u32.to_le_bytes());
        assert!(Message::from_bytes(&f).is_err());
        // Too many pages claimed.
        let mut f = w.frame().to_vec();
        f[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&(MAX_BATCH_PAGES + 1).to_le_bytes());
        assert!(matches!(
            Message::from_bytes(&f),
            Err(WireError::TooLong { .. })
        ));
    }
}
