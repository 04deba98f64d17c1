//! Which page each write hits ([`PageStream`]), and the write loop: fills the buffer, then
//! writes pages at the rate in 10 ms ticks and prints a heartbeat line at its own period.

use std::io::Write;
use std::time::{Duration, Instant};

use livemig_workload::sampler::SplitMix64;
use livemig_workload::PageSampler;

use crate::{LoadSpec, HEARTBEAT_PREFIX, PAGE, WRITES_PREFIX};

/// Length of one write tick.
pub const TICK: Duration = Duration::from_millis(10);
/// Seed of the guest's page choice.
pub const SEED: u64 = 0x5eed;

/// The pages the guest writes, in order: the workload crate's [`PageSampler`] for the spec's
/// pattern over the buffer's pages, drawing from a [`SplitMix64`] seeded with [`SEED`] (the
/// same sampler the engine's simulated guest uses and the simulator's model predicts).
#[derive(Debug, Clone)]
pub struct PageStream {
    sampler: PageSampler,
    rng: SplitMix64,
    seq: u64,
}

impl PageStream {
    /// The stream of `spec` (at least one page).
    pub fn new(spec: &LoadSpec) -> PageStream {
        PageStream {
            sampler: PageSampler::new(spec.pattern, spec.pages() as u64),
            rng: SplitMix64::new(SEED),
            seq: 0,
        }
    }

    /// The sampler the stream draws from.
    pub fn sampler(&self) -> &PageSampler {
        &self.sampler
    }

    /// The next page to write.
    pub fn next_page(&mut self) -> usize {
        let page = self.sampler.sample(&mut self.rng, self.seq);
        self.seq = self.seq.wrapping_add(1);
        page as usize
    }
}

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

/// `rounds` of a multiply-xorshift mix of `x`: CPU work the compiler cannot skip.
pub fn churn(mut x: u64, rounds: u32) -> u64 {
    for _ in 0..rounds {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
    }
    x
}

/// Writes one 8-byte counter into page `page` (the slot moves within the page).
pub fn touch(buf: &mut [u8], page: usize, counter: u64) {
    let slot = (counter as usize % (PAGE / 8)) * 8;
    let at = page * PAGE + slot;
    if let Some(dst) = buf.get_mut(at..at + 8) {
        dst.copy_from_slice(&counter.to_le_bytes());
    }
}

/// Runs forever: writes at `spec.rate` and prints `livemig-hb N` then `livemig-writes K T`
/// (writes so far, milliseconds since the start, both as the line is printed) every
/// `spec.heartbeat_s`. With `work`, a batch ends at the tick, so a guest whose vCPU cannot keep
/// up still beats on time (and drops the writes it is behind on).
pub fn run(spec: &LoadSpec, out: &mut dyn Write) -> std::io::Result<()> {
    let mut buf = filled_buffer(spec);
    let mut pages = PageStream::new(spec);
    let hot = match pages.sampler().hot_pages() {
        Some(n) => format!(" ({n} hot)"),
        None => String::new(),
    };
    writeln!(
        out,
        "livemig-guest-load: {:?}, {} bytes/s over {} pages{hot}",
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
    let mut writes: u64 = 0;
    loop {
        let now = Instant::now();
        let due = (now.duration_since(start).as_secs_f64() * writes_per_s) as u64;
        // Never more than one second of backlog at once, so a stalled guest does not burst.
        let backlog = due.saturating_sub(done).min(writes_per_s as u64 + 1);
        // With work, a batch ends at the tick: a vCPU that cannot keep up (or is throttled)
        // still beats on time, and drops the writes it is behind on.
        let until = now + TICK;
        let mut n = 0;
        while n < backlog {
            counter = counter.wrapping_add(1);
            let value = if spec.work == 0 {
                counter
            } else {
                churn(counter, spec.work)
            };
            touch(&mut buf, pages.next_page(), value);
            n += 1;
            if spec.work > 0 && n % 64 == 0 && Instant::now() >= until {
                break;
            }
        }
        writes += n;
        done = due;
        std::hint::black_box(&mut buf);
        let now = Instant::now();
        if now >= next_beat {
            beat += 1;
            writeln!(out, "{HEARTBEAT_PREFIX}{beat}")?;
            let ms = now.duration_since(start).as_millis();
            writeln!(out, "{WRITES_PREFIX}{writes} {ms}")?;
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
    use livemig_workload::Pattern;

    #[test]
    fn scan_sweeps_in_order_and_wraps() {
        let spec = LoadSpec::parse("scan:rate=1MiB/s,buffer=12KiB").expect("valid");
        let mut p = PageStream::new(&spec);
        let got: Vec<usize> = (0..7).map(|_| p.next_page()).collect();
        assert_eq!(got, vec![0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn uniform_stays_in_range_and_covers_it() {
        let spec = LoadSpec::parse("uniform:rate=1MiB/s,buffer=200KiB").expect("valid");
        let mut p = PageStream::new(&spec);
        let mut seen = [false; 50];
        for _ in 0..5000 {
            let i = p.next_page();
            assert!(i < 50);
            seen[i] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn filled_buffer_has_no_zero_page_and_touch_changes_the_page() {
        let spec = LoadSpec {
            pattern: Pattern::Uniform,
            rate: 0.0,
            buffer: 4 * PAGE,
            heartbeat_s: 1.0,
            work: 0,
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

    #[test]
    fn churn_is_work_that_changes_the_value_and_none_is_the_identity() {
        assert_eq!(churn(12345, 0), 12345);
        assert_ne!(churn(12345, 1), 12345);
        assert_eq!(churn(12345, 1000), churn(12345, 1000));
        assert_ne!(churn(12345, 1000), churn(12346, 1000));
    }
}
