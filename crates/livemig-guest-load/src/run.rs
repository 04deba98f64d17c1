//! The write loop: fills the buffer, then writes pages at the rate in 10 ms ticks and prints
//! a heartbeat line at its own period.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::{LoadSpec, PagePicker, HEARTBEAT_PREFIX, PAGE};

/// Length of one write tick.
pub const TICK: Duration = Duration::from_millis(10);

/// Fills every page of a fresh buffer with non-zero bytes, so the whole buffer is real data to
/// migrate (zero pages travel as markers).
pub fn filled_buffer(spec: &LoadSpec) -> Vec<u8> {
    let mut buf = vec![0u8; spec.pages() * PAGE];
    for (i, page) in buf.chunks_mut(PAGE).enumerate() {
        for (j, b) in page.iter_mut().enumerate() {
            *b = (i.wrapping_mul(31) ^ j) as u8 | 1;
        }
    }
    buf
}

/// Writes one 8-byte counter into page `page` (the slot moves within the page).
pub fn touch(buf: &mut [u8], page: usize, counter: u64) {
    let slot = (counter as usize % (PAGE / 8)) * 8;
    let at = page * PAGE + slot;
    if let Some(dst) = buf.get_mut(at..at + 8) {
        dst.copy_from_slice(&counter.to_le_bytes());
    }
}

/// Runs forever: writes at `spec.rate` and prints `livemig-hb N` every `spec.heartbeat_s`.
pub fn run(spec: &LoadSpec, out: &mut dyn Write) -> std::io::Result<()> {
    let mut buf = filled_buffer(spec);
    let mut picker = PagePicker::new(spec.pattern, spec.pages(), 0x5eed);
    writeln!(
        out,
        "livemig-guest-load: {:?}, {} bytes/s over {} pages",
        spec.pattern,
        spec.rate,
        spec.pages()
    )?;
    out.flush()?;
    let writes_per_s = spec.rate / PAGE as f64;
    let start = Instant::now();
    let heartbeat = Duration::from_secs_f64(spec.heartbeat_s);
    let mut next_beat = start;
    let mut beat: u64 = 0;
    let mut done: u64 = 0;
    let mut counter: u64 = 0;
    loop {
        let now = Instant::now();
        let due = (now.duration_since(start).as_secs_f64() * writes_per_s) as u64;
        // Never more than one second of backlog at once, so a stalled guest does not burst.
        let backlog = due.saturating_sub(done).min(writes_per_s as u64 + 1);
        for _ in 0..backlog {
            counter = counter.wrapping_add(1);
            touch(&mut buf, picker.next_page(), counter);
        }
        done = due;
        std::hint::black_box(&mut buf);
        if now >= next_beat {
            beat += 1;
            writeln!(out, "{HEARTBEAT_PREFIX}{beat}")?;
            out.flush()?;
            next_beat += heartbeat;
            if next_beat < now {
                next_beat = now + heartbeat;
            }
        }
        let wake = (now + TICK).min(next_beat);
        if let Some(d) = wake.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Pattern;

    #[test]
    fn filled_buffer_has_no_zero_page_and_touch_changes_the_page() {
        let spec = LoadSpec {
            pattern: Pattern::Uniform,
            rate: 0.0,
            buffer: 4 * PAGE,
            heartbeat_s: 1.0,
        };
        let mut buf = filled_buffer(&spec);
        assert_eq!(buf.len(), 4 * PAGE);
        assert!(buf.chunks(PAGE).all(|p| p.iter().any(|&b| b != 0)));
        let before = buf[2 * PAGE..3 * PAGE].to_vec();
        touch(&mut buf, 2, 77);
        assert_ne!(&buf[2 * PAGE..3 * PAGE], &before[..]);
        // Out of range pages are ignored, not a panic.
        touch(&mut buf, 99, 1);
    }
}
