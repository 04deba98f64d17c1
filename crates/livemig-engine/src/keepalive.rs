//! Keep-alive `Wait` frames while one end does long local work (prefault, memory digests), so
//! that the peer's timeouts measure silence, not the size of the guest. Every `Wait` is tagged
//! by the session like any control message, so a peer on the path cannot forge them.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::auth::Channel;
use crate::wire::{write_within, Message, WireError};

/// How often a busy end says it is still working (well under any sensible `--timeout`).
pub const EVERY: Duration = Duration::from_millis(500);

/// Most `Wait` frames in a row a reader accepts (at [`EVERY`], about half an hour of work).
pub const MAX_WAITS: u32 = 3600;

/// Sends a tagged `Wait` on `w` whenever [`EVERY`] has passed since the last frame; remembers
/// the first write failure for [`KeepAlive::finish`].
#[derive(Debug)]
pub struct KeepAlive<'a, W: Write> {
    w: &'a mut W,
    chan: &'a mut Channel,
    every: Duration,
    timeout: Duration,
    until: Option<Instant>,
    last: Instant,
    failed: Option<WireError>,
}

impl<'a, W: Write> KeepAlive<'a, W> {
    /// Starts the clock now, sending at most every `every`, each write within `timeout`.
    pub fn new(
        w: &'a mut W,
        chan: &'a mut Channel,
        every: Duration,
        timeout: Duration,
    ) -> KeepAlive<'a, W> {
        KeepAlive {
            w,
            chan,
            every,
            timeout,
            until: None,
            last: Instant::now(),
            failed: None,
        }
    }

    /// Bounds every write by `until` too (the source's pause deadline).
    pub fn until(mut self, until: Option<Instant>) -> Self {
        self.until = until;
        self
    }

    /// Sends a `Wait` if it is time (nothing after a failure).
    pub fn tick(&mut self) {
        if self.failed.is_none() && self.last.elapsed() >= self.every {
            let f = self.chan.seal(&Message::Wait);
            let mut at = Instant::now() + self.timeout;
            if let Some(u) = self.until {
                at = at.min(u);
            }
            let deadline = Some((at, self.timeout));
            if let Err(e) = write_within(self.w, &f, deadline) {
                self.failed = Some(e);
            }
            self.last = Instant::now();
        }
    }

    /// The first write failure, if any.
    pub fn finish(self) -> Result<(), WireError> {
        self.failed.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Key, Role, Transcript};
    use crate::wire::{Frame, VERSION};

    #[test]
    fn waits_go_out_at_most_every_interval_and_are_tagged() {
        let sk = Key::from_bytes([1; 32]).session(&Transcript {
            hello: &[2; 8],
            version: VERSION,
            dest_nonce: &[3; 32],
        });
        let mut chan = Channel::new(sk.clone(), Role::Source);
        let mut out = Vec::new();
        let mut k = KeepAlive::new(
            &mut out,
            &mut chan,
            Duration::from_millis(20),
            Duration::from_secs(1),
        );
        k.tick();
        std::thread::sleep(Duration::from_millis(30));
        k.tick();
        k.tick();
        k.finish().expect("written");
        let f = Frame::from_bytes(&out).expect("one frame");
        assert_eq!(f.wire_len, out.len(), "exactly one Wait");
        let mut peer = Channel::new(sk, Role::Destination);
        assert_eq!(peer.open(f).expect("tagged"), Message::Wait);
    }
}
