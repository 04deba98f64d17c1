//! Whole frames in and out: reads and writes bounded by a deadline for the whole frame, so that
//! a peer trickling bytes (or reading them one at a time) cannot hold an end longer than the
//! deadline plus one socket poll.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use super::{io_err, Header, Message, MsgType, WireError, HEADER_LEN, TAG_LEN};

/// A decoded frame: the message, its session tag (tagged types only), its size on the wire and
/// the protocol version its header names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub msg: Message,
    pub tag: Option<[u8; TAG_LEN]>,
    pub wire_len: usize,
    pub version: u16,
}

impl Frame {
    /// Decodes one frame from the start of `bytes` (for tests and fuzzing).
    pub fn from_bytes(bytes: &[u8]) -> Result<Frame, WireError> {
        let mut r = bytes;
        read_within(&mut r, &mut Vec::new(), None)
    }
}

impl Message {
    /// Writes the frame (an untagged message, or a tagged one with an all-zero tag).
    pub fn write_to(&self, w: &mut impl Write) -> Result<(), WireError> {
        write_frame(w, &self.encode())
    }
}

/// A deadline for a whole frame: `(at, limit)` fails with [`WireError::Deadline`]`(limit)`
/// once `at` has passed.
pub type Deadline = Option<(Instant, Duration)>;

fn late(deadline: Deadline) -> Result<(), WireError> {
    match deadline {
        Some((at, limit)) if Instant::now() >= at => Err(WireError::Deadline(limit)),
        _ => Ok(()),
    }
}

/// Reads one frame, its payload into `spare`'s allocation (taken; give it back with
/// [`super::PageBatch::into_payload`] to avoid an allocation per frame). With a deadline, a
/// socket timeout is a poll: the read goes on until the deadline, checked after every read.
pub fn read_within(
    r: &mut impl Read,
    spare: &mut Vec<u8>,
    deadline: Deadline,
) -> Result<Frame, WireError> {
    let (h, t, payload) = read_payload(r, spare, deadline)?;
    let wire_len = HEADER_LEN + payload.len();
    let (msg, tag) = Message::decode(t, payload)?;
    Ok(Frame {
        msg,
        tag,
        wire_len,
        version: h.version,
    })
}

/// Reads one frame without decoding its payload: its type and its bytes exactly as they came
/// (header included), for relays that must forward tags untouched.
pub fn read_raw_within(
    r: &mut impl Read,
    deadline: Deadline,
) -> Result<(MsgType, Vec<u8>), WireError> {
    let (h, t, payload) = read_payload(r, &mut Vec::new(), deadline)?;
    let mut f = h.encode().to_vec();
    f.extend_from_slice(&payload);
    Ok((t, f))
}

fn read_payload(
    r: &mut impl Read,
    spare: &mut Vec<u8>,
    deadline: Deadline,
) -> Result<(Header, MsgType, Vec<u8>), WireError> {
    let mut hb = [0u8; HEADER_LEN];
    fill(r, &mut hb, true, deadline)?;
    let (h, t) = Header::decode(&hb)?;
    let mut payload = std::mem::take(spare);
    let len = h.len as usize;
    if payload.len() >= len {
        payload.truncate(len);
    } else {
        payload.resize(len, 0);
    }
    fill(r, &mut payload, false, deadline)?;
    Ok((h, t, payload))
}

/// Reads exactly `buf.len()` bytes, checking the deadline after every read. `first`: nothing
/// of the frame has been read before `buf` (an end of stream at its start is `Closed`).
fn fill(
    r: &mut impl Read,
    buf: &mut [u8],
    first: bool,
    deadline: Deadline,
) -> Result<(), WireError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 && first => return Err(WireError::Closed),
            Ok(0) => return Err(WireError::Truncated),
            Ok(n) => got += n,
            Err(e) if try_again(&e, deadline) => {}
            Err(e) => return Err(io_err(e, got > 0 || !first)),
        }
        if got < buf.len() {
            late(deadline)?;
        }
    }
    Ok(())
}

/// Whether a failed socket call is only a pause: interrupted, or (under a deadline, which
/// then decides) a socket timeout, which is a poll.
fn try_again(e: &io::Error, deadline: Deadline) -> bool {
    match e.kind() {
        io::ErrorKind::Interrupted => true,
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => deadline.is_some(),
        _ => false,
    }
}

/// Writes a raw frame; each write is bounded by the socket's timeout only.
pub fn write_frame(w: &mut impl Write, frame: &[u8]) -> Result<(), WireError> {
    write_within(w, frame, None)
}

/// Writes a raw frame within a deadline for the whole frame (a peer that stops reading is
/// detected within the deadline plus one socket poll, however many partial writes it takes).
pub fn write_within(w: &mut impl Write, frame: &[u8], deadline: Deadline) -> Result<(), WireError> {
    let mut done = 0;
    while done < frame.len() {
        match w.write(&frame[done..]) {
            Ok(0) => return Err(WireError::Closed),
            Ok(n) => done += n,
            Err(e) if try_again(&e, deadline) => {}
            Err(e) => return Err(io_err(e, true)),
        }
        if done < frame.len() {
            late(deadline)?;
        }
    }
    // A buffering transport (TLS) may still hold part of the frame: flushing it is bounded by
    // the same deadline (a socket's flush does nothing).
    loop {
        match w.flush() {
            Ok(()) => return Ok(()),
            Err(e) if try_again(&e, deadline) => late(deadline)?,
            Err(e) => return Err(io_err(e, true)),
        }
    }
}
