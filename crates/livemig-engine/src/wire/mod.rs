//! The wire protocol (versions [`MIN_VERSION`]..=[`VERSION`], negotiated in the first
//! message): a fixed little-endian header, typed messages, a session tag on every control
//! message after the handshake, hard caps on every length.
//!
//! A frame is a 12-byte header — magic `LMIG`, version (u16), message type (u16), payload
//! length (u32) — followed by the payload; a tagged message's payload ends with its 32-byte
//! tag. `docs/protocol.md` describes every message.
//!
//! - [`version`]: the versions this build speaks and the negotiation.
//! - [`header`]: the frame header and its checks.
//! - [`pages`]: `Pages` payloads and the batch writer.
//! - [`messages`]: every message, its payload codec and which messages are tagged.
//! - [`frames`]: reading and writing whole frames under deadlines.

use std::io;

pub mod frames;
pub mod header;
pub mod messages;
pub mod pages;
pub mod version;

pub use frames::{read_raw_within, read_within, write_frame, write_within, Frame};
pub use header::Header;
pub use messages::{code, printable, Message, Mode, ResolveDecision, ResolveStatus};
pub use pages::{BatchWriter, PageBatch, PageEncoding, PageEntry};
pub use version::{NoCommonVersion, Versions, MIN_VERSION, NEGOTIATING_SINCE, VERSION};

/// First four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"LMIG";
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
/// Largest payload of any frame (a full `Pages` batch and its tag).
pub const MAX_PAYLOAD: u32 =
    4 + MAX_BATCH_PAGES * (ENTRY_HEADER_LEN + PAGE_SIZE) as u32 + TAG_LEN as u32;
/// Largest CPU/device state blob.
pub const MAX_STATE: usize = 1 << 20;
/// Longest error text.
pub const MAX_ERROR_TEXT: usize = 1024;
/// Bytes of a handshake nonce.
pub const NONCE_LEN: usize = 32;
/// Bytes of an HMAC-SHA256 tag.
pub const MAC_LEN: usize = 32;
/// Bytes of the session tag at the end of every tagged message.
pub const TAG_LEN: usize = MAC_LEN;
/// Bytes of a session id (names a migration when a source reconnects to resolve it).
pub const SESSION_ID_LEN: usize = 16;
/// Bytes of the largest frame of one page (header, count, one raw entry, tag): what a cap
/// must move within one frame deadline.
pub const ONE_PAGE_FRAME: usize = HEADER_LEN + 4 + ENTRY_HEADER_LEN + PAGE_SIZE + TAG_LEN;

/// Message types; `Invalid = 0` is never sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    Commit = 11,
    Error = 12,
    Wait = 13,
    Running = 14,
    Abort = 15,
    Resolve = 16,
    Resolved = 17,
    Done = 18,
    Versions = 19,
}

impl MsgType {
    /// Every type that is sent, in wire order.
    pub const ALL: [MsgType; 19] = [
        MsgType::Hello,
        MsgType::Challenge,
        MsgType::Auth,
        MsgType::Ready,
        MsgType::RoundStart,
        MsgType::Pages,
        MsgType::RoundEnd,
        MsgType::StopCopy,
        MsgType::State,
        MsgType::Confirm,
        MsgType::Commit,
        MsgType::Error,
        MsgType::Wait,
        MsgType::Running,
        MsgType::Abort,
        MsgType::Resolve,
        MsgType::Resolved,
        MsgType::Done,
        MsgType::Versions,
    ];

    /// The type of a wire value, `None` for unknown values and `Invalid`.
    pub fn from_u16(v: u16) -> Option<MsgType> {
        MsgType::ALL.into_iter().find(|t| *t as u16 == v)
    }

    /// Whether the payload ends with a session tag: every message after the handshake but
    /// `Error`. The handshake precedes the session key; `Error` can only make a migration fail
    /// where failing is safe (see `docs/protocol.md`). `Pages` are tagged so that guest memory
    /// never rests on the (non-cryptographic) xxh3 digest alone.
    pub fn tagged(self) -> bool {
        !matches!(
            self,
            MsgType::Invalid
                | MsgType::Hello
                | MsgType::Challenge
                | MsgType::Auth
                | MsgType::Error
                | MsgType::Versions
        )
    }

    /// Whether the type's layout is the same in every version that negotiates, so that a
    /// reader takes it whatever negotiating version its header names: `Hello` (the offer),
    /// `Versions` (the refusal of an offer) and `Error` (a reason), so that two ends with no
    /// version in common still learn why.
    pub fn frozen(self) -> bool {
        matches!(self, MsgType::Hello | MsgType::Versions | MsgType::Error)
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
    #[error("protocol version mismatch: the peer sent a frame of version {got}{}, this build speaks versions {}", if *.got < NEGOTIATING_SINCE { " (a version without negotiation)" } else { "" }, Versions::THIS_BUILD)]
    Version { got: u16 },
    #[error(transparent)]
    NoCommonVersion(#[from] NoCommonVersion),
    #[error("the destination chose protocol version {chosen}, which this build did not offer (it speaks versions {})", Versions::THIS_BUILD)]
    VersionNotOffered { chosen: u16 },
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{self, Read, Write};
    use std::time::{Duration, Instant};

    fn round_trip(m: Message) {
        let bytes = m.encode_tagged(&[8; TAG_LEN]);
        let f = Frame::from_bytes(&bytes).expect("decodes");
        assert_eq!(f.msg, m);
        assert_eq!(f.wire_len, bytes.len());
        assert_eq!(f.tag.is_some(), m.msg_type().tagged());
        if let Some(t) = f.tag {
            assert_eq!(t, [8; TAG_LEN]);
        }
    }

    #[test]
    fn every_message_round_trips() {
        round_trip(Message::Hello {
            versions: Versions::THIS_BUILD,
            nonce: [7; NONCE_LEN],
            memory_bytes: 1 << 30,
            page_size: 4096,
            compress: true,
            mode: Mode::Resolve,
        });
        round_trip(Message::Hello {
            versions: Versions::new(3, 9).expect("a range"),
            nonce: [7; NONCE_LEN],
            memory_bytes: 4096,
            page_size: 4096,
            compress: false,
            mode: Mode::Migrate,
        });
        round_trip(Message::Challenge {
            version: VERSION,
            nonce: [1; NONCE_LEN],
            mac: [2; MAC_LEN],
        });
        round_trip(Message::Versions(Versions::new(4, 5).expect("a range")));
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
            blob: b"{}".to_vec(),
        });
        round_trip(Message::Confirm {
            ok: true,
            digest: 42,
        });
        round_trip(Message::Commit);
        round_trip(Message::Running);
        round_trip(Message::Abort);
        round_trip(Message::Done);
        round_trip(Message::Resolve {
            session: [3; SESSION_ID_LEN],
            decision: ResolveDecision::Abort,
        });
        round_trip(Message::Resolved {
            status: ResolveStatus::Pending,
        });
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
            let f = Frame::from_bytes(&frame).expect("decodes");
            let Message::Pages(b) = f.msg else {
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
        let e = read_within(&mut slow, &mut Vec::new(), Some((t0 + limit, limit)))
            .expect_err("too slow");
        assert!(matches!(e, WireError::Deadline(_)), "{e}");
        assert!(t0.elapsed() < Duration::from_millis(500));
        let mut fast = Trickle {
            bytes: &f,
            pause: Duration::ZERO,
        };
        let far = Instant::now() + Duration::from_secs(5);
        let f = read_within(&mut fast, &mut Vec::new(), Some((far, limit))).expect("in time");
        assert_eq!(f.msg, Message::RoundStart { round: 1, pages: 2 });
    }

    #[test]
    fn every_type_has_its_value_and_tagging() {
        for t in MsgType::ALL {
            assert_eq!(MsgType::from_u16(t as u16), Some(t));
        }
        assert_eq!(MsgType::from_u16(0), None);
        assert_eq!(MsgType::from_u16(20), None);
        let untagged = [
            MsgType::Hello,
            MsgType::Challenge,
            MsgType::Auth,
            MsgType::Error,
            MsgType::Versions,
        ];
        for t in MsgType::ALL {
            assert_eq!(t.tagged(), !untagged.contains(&t), "{t:?}");
        }
        // A tagged message cut shorter than its tag is malformed, not a panic.
        let mut f = Message::Commit.encode();
        f.truncate(HEADER_LEN + 5);
        f[8..12].copy_from_slice(&5u32.to_le_bytes());
        assert!(matches!(
            Frame::from_bytes(&f),
            Err(WireError::Malformed { .. })
        ));
    }

    #[test]
    fn peer_text_is_escaped() {
        let forged = "ok\n\u{1b}[32mhanded over\u{1b}[0m\u{202e}";
        let f = Message::error(1, forged).encode();
        let Message::Error { message, .. } = Frame::from_bytes(&f).expect("decodes").msg else {
            panic!("an error")
        };
        assert!(
            !message.chars().any(|c| c.is_control() || c == '\u{202e}'),
            "{message:?}"
        );
        assert!(message.contains("handed over"));
        assert_eq!(printable("plain text, ünïcode"), "plain text, ünïcode");
    }

    #[test]
    fn a_write_to_a_peer_that_stops_reading_ends_at_its_deadline() {
        struct Stuck;
        impl Write for Stuck {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                std::thread::sleep(Duration::from_millis(10));
                Err(io::ErrorKind::WouldBlock.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let limit = Duration::from_millis(60);
        let t0 = Instant::now();
        let e = write_within(&mut Stuck, &[1, 2, 3], Some((t0 + limit, limit))).expect_err("stuck");
        assert!(matches!(e, WireError::Deadline(_)), "{e}");
        assert!(t0.elapsed() < Duration::from_millis(500));
    }

    #[test]
    fn bad_headers_are_refused() {
        let mut f = Message::Ready.encode();
        f[0] = b'X';
        assert!(matches!(Frame::from_bytes(&f), Err(WireError::BadMagic(_))));
        let mut f = Message::Ready.encode();
        f[4] = 9;
        assert!(matches!(
            Frame::from_bytes(&f),
            Err(WireError::Version { got: 9 })
        ));
        // An unknown type of an unknown version is a version problem first.
        let mut f = Message::Ready.encode();
        f[4] = 9;
        f[6] = 99;
        assert!(matches!(
            Frame::from_bytes(&f),
            Err(WireError::Version { got: 9 })
        ));
        let mut f = Message::Ready.encode();
        f[6] = 0;
        assert!(matches!(
            Frame::from_bytes(&f),
            Err(WireError::UnknownType(0))
        ));
        let mut f = Message::Ready.encode();
        f[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Frame::from_bytes(&f),
            Err(WireError::TooLong { .. })
        ));
        let f = Message::RoundStart { round: 1, pages: 1 }.encode();
        assert!(matches!(
            Frame::from_bytes(&f[..f.len() - 1]),
            Err(WireError::Truncated)
        ));
        assert!(matches!(Frame::from_bytes(&[]), Err(WireError::Closed)));
    }

    /// `Hello`, `Versions` and `Error` are read whatever negotiating version their header
    /// names (a peer outside this build's range still offers its range or says why); every
    /// other type only in a version this build speaks; nothing of a version before
    /// negotiation.
    #[test]
    fn frozen_types_cross_versions_that_negotiate() {
        let hello = Message::Hello {
            versions: Versions::new(7, 9).expect("a range"),
            nonce: [7; NONCE_LEN],
            memory_bytes: 4096,
            page_size: 4096,
            compress: false,
            mode: Mode::Migrate,
        };
        let refusal = Message::Versions(Versions::new(7, 9).expect("a range"));
        for m in [hello, refusal, Message::error(code::VERSION, "no")] {
            let f = Frame::from_bytes(&m.encode_as(9)).expect("a negotiating version");
            assert_eq!((f.msg, f.version), (m.clone(), 9));
            let old = m.encode_as(NEGOTIATING_SINCE - 1);
            assert!(matches!(
                Frame::from_bytes(&old),
                Err(WireError::Version { got: 2 })
            ));
        }
        let challenge = Message::Challenge {
            version: 9,
            nonce: [1; NONCE_LEN],
            mac: [2; MAC_LEN],
        };
        assert!(matches!(
            Frame::from_bytes(&challenge.encode_as(9)),
            Err(WireError::Version { got: 9 })
        ));
        // An empty range is malformed.
        let mut f = Message::Versions(Versions::THIS_BUILD).encode();
        f[HEADER_LEN..HEADER_LEN + 2].copy_from_slice(&8u16.to_le_bytes());
        f[HEADER_LEN + 2..HEADER_LEN + 4].copy_from_slice(&7u16.to_le_bytes());
        assert!(matches!(
            Frame::from_bytes(&f),
            Err(WireError::Malformed { .. })
        ));
        let e = WireError::Version { got: 2 }.to_string();
        assert_eq!(
            e,
            format!(
                "protocol version mismatch: the peer sent a frame of version 2 (a version without \
                 negotiation), this build speaks versions {}",
                Versions::THIS_BUILD
            )
        );
    }

    #[test]
    fn batch_counts_and_lengths_are_checked() {
        let mut w = BatchWriter::new(false);
        w.push(1, &[1u8; PAGE_SIZE]);
        let mut f = w.frame().to_vec();
        // Claim two pages where there is one.
        f[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&2u32.to_le_bytes());
        assert!(matches!(
            Frame::from_bytes(&f),
            Err(WireError::Malformed { .. })
        ));
        // A raw page with a short length.
        let mut f = w.frame().to_vec();
        let at = HEADER_LEN + 4 + 9;
        f[at..at + 4].copy_from_slice(&100u32.to_le_bytes());
        assert!(Frame::from_bytes(&f).is_err());
        // Too many pages claimed.
        let mut f = w.frame().to_vec();
        f[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&(MAX_BATCH_PAGES + 1).to_le_bytes());
        assert!(matches!(
            Frame::from_bytes(&f),
            Err(WireError::TooLong { .. })
        ));
    }
}
