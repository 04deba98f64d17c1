//! Keep-alive `Wait` frames while one end does long local work (prefault, memory digests), so
//! that the peer's timeouts measure silence, not the size of the guest.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::wire::{Message, WireError};

/// How often a busy end says it is still working (well under any sensible `--timeout`).
pub const EVERY: Duration = Duration::from_millis(500);

/// Most `Wait` frames in a row a reader accepts (at [`EVERY`], about half an hour of work).
pub const MAX_WAITS: u32 = 3600;

/// Sends `Wait` on `w` whenever [`EVERY`] has passed since the last frame; remembers the first
/// write failure for [`KeepAlive::finish`].
#[derive(Debug)]
pub struct KeepAlive<'a, W: Write> {
    w: &'a mut W,
    every: Duration,
    last: Instant,
    failed: Option<WireError>,
}

impl<'a, W: Write> KeepAlive<'a, W> {
    /// Starts the clock now, sending at most every `every`.
    pub fn new(w: &'a mut W, every: Duration) -> KeepAlive<'a, W> {
        KeepAlive {
            w,
            every,
            last: Instant::now(),
            failed: None,
        }
    }

    /// Sends a `Wait` if it is time (nothing after a failure).
    pub fn tick(&mut self) {
        if self.failed.is_none() && self.last.elapsed() >= self.every {
            if let Err(e) = Message::Wait.write_to(self.w) {
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

    #[test]
    fn waits_go_out_at_most_every_interval() {
        let mut out = Vec::new();
        let mut k = KeepAlive::new(&mut out, Duration::from_millis(20));
        k.tick();
        std::thread::sleep(Duration::from_millis(30));
        k.tick();
        k.tick();
        k.finish().expect("written");
        assert_eq!(out, Message::Wait.encode());
    }
}
