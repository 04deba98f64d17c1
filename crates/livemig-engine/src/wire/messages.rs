//! Every message of the protocol, its payload codec, and the error codes.
//!
//! A tagged message's payload is its body followed by a [`TAG_LEN`]-byte session tag
//! ([`MsgType::tagged`]); [`Message::body`] is the body alone, which the tag covers.

use super::{
    MsgType, PageBatch, Versions, WireError, MAC_LEN, MAX_ERROR_TEXT, MAX_STATE, NONCE_LEN,
    SESSION_ID_LEN, TAG_LEN,
};

/// What a connection is for, named in `Hello` (and covered by both handshake proofs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// A new migration.
    Migrate = 0,
    /// A source reconnecting to settle a hand-over whose last messages were lost.
    Resolve = 1,
}

/// What a reconnecting source asks of the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ResolveDecision {
    /// The source committed: resume the held guest (if still held) and say so.
    Commit = 1,
    /// The source did not commit and runs the guest again: discard the held copy.
    Abort = 2,
}

/// What the destination did with the session a source asks about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ResolveStatus {
    /// The guest runs on the destination (resumed now or earlier).
    Running = 1,
    /// The held copy was discarded (the source aborted).
    Discarded = 2,
    /// The destination knows no such session: it never held a verified copy of it, or lost it;
    /// it will never run it.
    Unknown = 3,
    /// The session's connection is still open on the destination (waiting for its deadline):
    /// ask again.
    Pending = 4,
}

/// Every message of the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Source -> destination, first: the versions it speaks, nonce, guest geometry,
    /// compression, purpose. Its layout is the same in every version that negotiates.
    Hello {
        versions: Versions,
        nonce: [u8; NONCE_LEN],
        memory_bytes: u64,
        page_size: u32,
        compress: bool,
        mode: Mode,
    },
    /// Destination -> source: the version it chose (the highest both speak), its nonce and its
    /// proof of the key over the transcript (which covers the choice).
    Challenge {
        version: u16,
        nonce: [u8; NONCE_LEN],
        mac: [u8; MAC_LEN],
    },
    /// Source -> destination: its proof of the key over the transcript.
    Auth { mac: [u8; MAC_LEN] },
    /// Destination -> source: memory allocated, rounds may start.
    Ready,
    /// A pre-copy round begins with this many pages.
    RoundStart { round: u32, pages: u64 },
    /// Pages.
    Pages(PageBatch),
    /// The round ended after this many pages.
    RoundEnd { round: u32, pages: u64 },
    /// The source paused the guest; this many pages follow.
    StopCopy { pages: u64 },
    /// The CPU/device state and the digest of the source's memory at pause.
    State { digest: u64, blob: Vec<u8> },
    /// Destination -> source: the digest of its memory and whether it verified. `ok` means the
    /// destination holds a verified, paused copy that it will run only on `Commit`.
    Confirm { ok: bool, digest: u64 },
    /// Source -> destination: the source will never run its copy on its own again; resume.
    Commit,
    /// Destination -> source: the guest runs here; the source may destroy its copy.
    Running,
    /// Source -> destination: the source runs the guest again; discard what you hold.
    Abort,
    /// Source -> destination: the source read `Running` and destroyed its copy; the
    /// destination need not wait for questions about this session.
    Done,
    /// Source -> destination on a [`Mode::Resolve`] connection: what it decided for a session.
    Resolve {
        session: [u8; SESSION_ID_LEN],
        decision: ResolveDecision,
    },
    /// Destination -> source: what it did with that session.
    Resolved { status: ResolveStatus },
    /// Either side: why it gives up (not tagged).
    Error { code: u16, message: String },
    /// Either side, after authentication: still working (a long prefault or digest).
    Wait,
    /// Destination -> source, instead of `Challenge`: no version in common; the versions the
    /// destination speaks (not tagged; the same layout in every version that negotiates).
    Versions(Versions),
}

/// Error codes of [`Message::Error`].
pub mod code {
    pub const PROTOCOL: u16 = 1;
    pub const VERSION: u16 = 2;
    pub const AUTH: u16 = 3;
    pub const RESOURCES: u16 = 4;
    pub const VERIFY: u16 = 5;
    pub const BUSY: u16 = 6;
    pub const CANCELLED: u16 = 7;
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

/// A version range at the start of a payload: min u16, max u16, never empty.
fn versions_at(b: &[u8], msg: &'static str) -> Result<Versions, WireError> {
    Versions::new(u16_at(b, 0, msg)?, u16_at(b, 2, msg)?).ok_or(WireError::Malformed {
        msg,
        reason: "the version range is empty (its minimum is above its maximum)",
    })
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

fn flag(v: u8, msg: &'static str, reason: &'static str) -> Result<bool, WireError> {
    match v {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(WireError::Malformed { msg, reason }),
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
            Message::Commit => MsgType::Commit,
            Message::Running => MsgType::Running,
            Message::Abort => MsgType::Abort,
            Message::Done => MsgType::Done,
            Message::Resolve { .. } => MsgType::Resolve,
            Message::Resolved { .. } => MsgType::Resolved,
            Message::Error { .. } => MsgType::Error,
            Message::Wait => MsgType::Wait,
            Message::Versions(_) => MsgType::Versions,
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

    /// The payload's bytes without a tag (what a session tag covers), borrowed for `Pages`.
    pub fn body_ref(&self) -> std::borrow::Cow<'_, [u8]> {
        match self {
            Message::Pages(b) => std::borrow::Cow::Borrowed(b.as_bytes()),
            m => std::borrow::Cow::Owned(m.body()),
        }
    }

    /// The payload's bytes without a tag (what a session tag covers).
    pub fn body(&self) -> Vec<u8> {
        let mut p = Vec::new();
        match self {
            Message::Hello {
                versions,
                nonce,
                memory_bytes,
                page_size,
                compress,
                mode,
            } => {
                p.extend_from_slice(&versions.min().to_le_bytes());
                p.extend_from_slice(&versions.max().to_le_bytes());
                p.extend_from_slice(nonce);
                p.extend_from_slice(&memory_bytes.to_le_bytes());
                p.extend_from_slice(&page_size.to_le_bytes());
                p.push(u8::from(*compress));
                p.push(*mode as u8);
            }
            Message::Challenge {
                version,
                nonce,
                mac,
            } => {
                p.extend_from_slice(&version.to_le_bytes());
                p.extend_from_slice(nonce);
                p.extend_from_slice(mac);
            }
            Message::Versions(v) => {
                p.extend_from_slice(&v.min().to_le_bytes());
                p.extend_from_slice(&v.max().to_le_bytes());
            }
            Message::Auth { mac } => p.extend_from_slice(mac),
            Message::Ready
            | Message::Wait
            | Message::Commit
            | Message::Running
            | Message::Abort
            | Message::Done => {}
            Message::RoundStart { round, pages } | Message::RoundEnd { round, pages } => {
                p.extend_from_slice(&round.to_le_bytes());
                p.extend_from_slice(&pages.to_le_bytes());
            }
            Message::Pages(b) => p.extend_from_slice(b.as_bytes()),
            Message::StopCopy { pages } => p.extend_from_slice(&pages.to_le_bytes()),
            Message::State { digest, blob } => {
                p.extend_from_slice(&digest.to_le_bytes());
                p.extend_from_slice(blob);
            }
            Message::Confirm { ok, digest } => {
                p.push(u8::from(*ok));
                p.extend_from_slice(&digest.to_le_bytes());
            }
            Message::Resolve { session, decision } => {
                p.extend_from_slice(session);
                p.push(*decision as u8);
            }
            Message::Resolved { status } => p.push(*status as u8),
            Message::Error { code, message } => {
                p.extend_from_slice(&code.to_le_bytes());
                p.extend_from_slice(message.as_bytes());
            }
        }
        p
    }

    /// Decodes a payload of type `t`: the message and, for a tagged type, its tag.
    pub fn decode(
        t: MsgType,
        mut p: Vec<u8>,
    ) -> Result<(Message, Option<[u8; TAG_LEN]>), WireError> {
        let tag = if t.tagged() {
            let Some(at) = p.len().checked_sub(TAG_LEN) else {
                return Err(WireError::Malformed {
                    msg: "tagged",
                    reason: "the payload is shorter than its session tag",
                });
            };
            let tag: [u8; TAG_LEN] = arr(&p, at, "tagged")?;
            p.truncate(at);
            Some(tag)
        } else {
            None
        };
        Ok((Message::decode_body(t, p)?, tag))
    }

    fn decode_body(t: MsgType, p: Vec<u8>) -> Result<Message, WireError> {
        Ok(match t {
            MsgType::Invalid => return Err(WireError::UnknownType(0)),
            MsgType::Hello => {
                exact(&p, 4 + NONCE_LEN + 8 + 4 + 2, "hello")?;
                let at = 4 + NONCE_LEN + 12;
                let compress = flag(p[at], "hello", "the compression flag is neither 0 nor 1")?;
                let mode = match p[at + 1] {
                    0 => Mode::Migrate,
                    1 => Mode::Resolve,
                    _ => {
                        return Err(WireError::Malformed {
                            msg: "hello",
                            reason: "the mode is neither 0 (migrate) nor 1 (resolve)",
                        })
                    }
                };
                Message::Hello {
                    versions: versions_at(&p, "hello")?,
                    nonce: arr(&p, 4, "hello")?,
                    memory_bytes: u64_at(&p, 4 + NONCE_LEN, "hello")?,
                    page_size: u32_at(&p, 4 + NONCE_LEN + 8, "hello")?,
                    compress,
                    mode,
                }
            }
            MsgType::Challenge => {
                exact(&p, 2 + NONCE_LEN + MAC_LEN, "challenge")?;
                Message::Challenge {
                    version: u16_at(&p, 0, "challenge")?,
                    nonce: arr(&p, 2, "challenge")?,
                    mac: arr(&p, 2 + NONCE_LEN, "challenge")?,
                }
            }
            MsgType::Versions => {
                exact(&p, 4, "versions")?;
                Message::Versions(versions_at(&p, "versions")?)
            }
            MsgType::Auth => {
                exact(&p, MAC_LEN, "auth")?;
                Message::Auth {
                    mac: arr(&p, 0, "auth")?,
                }
            }
            MsgType::Ready
            | MsgType::Wait
            | MsgType::Commit
            | MsgType::Running
            | MsgType::Abort
            | MsgType::Done => {
                exact(&p, 0, "empty")?;
                match t {
                    MsgType::Ready => Message::Ready,
                    MsgType::Wait => Message::Wait,
                    MsgType::Commit => Message::Commit,
                    MsgType::Running => Message::Running,
                    MsgType::Done => Message::Done,
                    _ => Message::Abort,
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
                if p.len() - 8 > MAX_STATE {
                    return Err(WireError::TooLong {
                        what: "a state blob",
                        len: (p.len() - 8) as u64,
                        max: MAX_STATE as u64,
                    });
                }
                Message::State {
                    digest,
                    blob: p[8..].to_vec(),
                }
            }
            MsgType::Confirm => {
                exact(&p, 9, "confirm")?;
                Message::Confirm {
                    ok: flag(p[0], "confirm", "the verdict is neither 0 nor 1")?,
                    digest: u64_at(&p, 1, "confirm")?,
                }
            }
            MsgType::Resolve => {
                exact(&p, SESSION_ID_LEN + 1, "resolve")?;
                let decision = match p[SESSION_ID_LEN] {
                    1 => ResolveDecision::Commit,
                    2 => ResolveDecision::Abort,
                    _ => {
                        return Err(WireError::Malformed {
                            msg: "resolve",
                            reason: "the decision is neither 1 (commit) nor 2 (abort)",
                        })
                    }
                };
                Message::Resolve {
                    session: arr(&p, 0, "resolve")?,
                    decision,
                }
            }
            MsgType::Resolved => {
                exact(&p, 1, "resolved")?;
                let status = match p[0] {
                    1 => ResolveStatus::Running,
                    2 => ResolveStatus::Discarded,
                    3 => ResolveStatus::Unknown,
                    4 => ResolveStatus::Pending,
                    _ => {
                        return Err(WireError::Malformed {
                            msg: "resolved",
                            reason: "the status is not 1, 2, 3 or 4",
                        })
                    }
                };
                Message::Resolved { status }
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
                let text = std::str::from_utf8(&p[2..]).map_err(|_| WireError::Malformed {
                    msg: "error",
                    reason: "the text is not UTF-8",
                })?;
                // A peer's text never reaches a terminal or a log raw.
                Message::Error {
                    code,
                    message: printable(text),
                }
            }
        })
    }

    /// The whole frame's bytes with `tag` (ignored for an untagged type), in this build's
    /// newest version.
    pub fn encode_tagged(&self, tag: &[u8; TAG_LEN]) -> Vec<u8> {
        self.encode_tagged_as(super::VERSION, tag)
    }

    /// The whole frame's bytes in protocol `version` with `tag` (ignored for an untagged type).
    pub fn encode_tagged_as(&self, version: u16, tag: &[u8; TAG_LEN]) -> Vec<u8> {
        let mut payload = self.body();
        if self.msg_type().tagged() {
            payload.extend_from_slice(tag);
        }
        let h = super::Header {
            version,
            msg_type: self.msg_type() as u16,
            len: payload.len() as u32,
        };
        let mut f = Vec::with_capacity(super::HEADER_LEN + payload.len());
        f.extend_from_slice(&h.encode());
        f.extend_from_slice(&payload);
        f
    }

    /// The whole frame's bytes; a tagged type gets an all-zero tag, which no session accepts
    /// (for untagged messages, tests and hostile peers).
    pub fn encode(&self) -> Vec<u8> {
        self.encode_tagged(&[0; TAG_LEN])
    }

    /// The whole frame's bytes in protocol `version` (for the untagged messages of the
    /// handshake, sent in the version being negotiated).
    pub fn encode_as(&self, version: u16) -> Vec<u8> {
        self.encode_tagged_as(version, &[0; TAG_LEN])
    }
}

/// `text` with every control character, and every character that reorders or hides text on a
/// terminal (bidirectional overrides, zero-width marks), escaped as `\u{..}`: what a peer says
/// can be printed or logged without forging lines, colours or cursor moves.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let hostile = c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}');
        if hostile {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}
