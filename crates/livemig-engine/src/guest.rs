//! The guest abstraction with dirty tracking, and `SimGuest`: real memory, a real writer thread.
//!
//! `SimGuest`'s writer follows a [`Workload`]: at guest time t it has made
//! `rate.written(0, t) / 4096` page writes, each to a page drawn by the workload's
//! [`PageSampler`], each marking its page in the dirty log. Its "CPU state" (the state blob) is
//! what the writer needs to continue exactly: generator state, write count, guest time. Page 0
//! holds the self-check region: word 0 counts writes, word 1 chains a checksum over them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use livemig_workload::sampler::SplitMix64;
use livemig_workload::{PageSampler, Workload};
use serde::{Deserialize, Serialize};

use crate::memory::{DirtyBitmap, GuestMemory, MemoryError, PageSet, WORDS_PER_PAGE};
use crate::wire::PAGE_SIZE;

/// A migratable guest: memory, a dirty log, pause/resume and a state blob.
pub trait Guest: Send + Sync + std::fmt::Debug {
    /// The guest's memory (size and page size: [`GuestMemory::bytes`], [`PAGE_SIZE`]).
    fn memory(&self) -> &GuestMemory;
    /// The pages written since the last call, clearing the log.
    fn fetch_and_clear_dirty(&self) -> PageSet;
    /// Pages dirty now, without clearing.
    fn dirty_pages(&self) -> u64;
    /// Stops the guest's CPUs; returns once nothing writes any more.
    fn pause(&self);
    /// Lets the guest run again.
    fn resume(&self);
    /// Whether the guest runs.
    fn is_running(&self) -> bool;
    /// The CPU/device state (valid while paused).
    fn state(&self) -> Vec<u8>;
    /// Takes `share` (0 to 0.99) of the guest's CPU time away from now on, so that it runs and
    /// writes that much slower (the rescue's throttle); 0 lifts it. Guests that cannot be
    /// throttled ignore it.
    fn set_throttle(&self, share: f64) {
        let _ = share;
    }
}

/// Why a guest could not be built or restored.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error("the workload `{spec}` is invalid")]
    Workload {
        spec: String,
        #[source]
        source: Box<livemig_workload::SpecError>,
    },
    #[error("the state blob is not a SimGuest state")]
    State(#[source] serde_json::Error),
    #[error("the state blob is for {state} bytes of memory, the memory has {memory}")]
    StateSize { state: u64, memory: u64 },
    #[error("the self-check region does not match the state blob (counter {memory} in memory, {state} in the state): memory and state are not from the same instant")]
    SelfCheck { memory: u64, state: u64 },
    #[error(
        "initial content `{0}` is not zero, random or mixed:P (P = share of zero pages, e.g. 30%)"
    )]
    Content(String),
}

/// Initial memory content.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum InitialContent {
    /// All pages zero.
    Zero,
    /// Every page random (incompressible).
    Random,
    /// A share of zero pages, the rest random.
    Mixed { zero_share: f64 },
}

impl std::str::FromStr for InitialContent {
    type Err = GuestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "zero" => Ok(InitialContent::Zero),
            "random" => Ok(InitialContent::Random),
            other => other
                .strip_prefix("mixed:")
                .and_then(|f| livemig_workload::units::parse_fraction(f).ok())
                .filter(|f| (0.0..=1.0).contains(f))
                .map(|zero_share| InitialContent::Mixed { zero_share })
                .ok_or_else(|| GuestError::Content(s.to_string())),
        }
    }
}

/// What a `SimGuest` is made of.
#[derive(Debug, Clone, PartialEq)]
pub struct SimGuestConfig {
    pub memory_bytes: u64,
    /// Workload spec (`livemig_workload::spec`).
    pub workload: String,
    pub content: InitialContent,
    pub seed: u64,
}

/// The writer's continuation state: the state blob's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct WriterState {
    workload: String,
    memory_bytes: u64,
    seed: u64,
    rng: SplitMix64,
    writes: u64,
    checksum: u64,
    guest_time_s: f64,
}

#[derive(Debug, Default)]
struct Control {
    paused: bool,
    parked: bool,
    stop: bool,
}

#[derive(Debug)]
struct Shared {
    memory: GuestMemory,
    dirty: DirtyBitmap,
    control: Mutex<Control>,
    changed: Condvar,
    pause_requested: AtomicBool,
    writer: Mutex<WriterState>,
    /// The throttle: the share of its time the guest does not run, as f64 bits.
    throttle: AtomicU64,
}

impl Shared {
    fn control(&self) -> MutexGuard<'_, Control> {
        self.control.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn writer(&self) -> MutexGuard<'_, WriterState> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A simulated guest: real anonymous memory written by a real thread.
#[derive(Debug)]
pub struct SimGuest {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One page write: a word of the page, the dirty bit, the self-check region.
fn write_once(
    memory: &GuestMemory,
    dirty: &DirtyBitmap,
    sampler: &PageSampler,
    s: &mut WriterState,
) {
    let page = sampler.sample(&mut s.rng, s.writes);
    let word = 2 + (s.writes % (WORDS_PER_PAGE as u64 - 2)) as usize;
    memory.set_word(page, word, mix(s.seed, s.writes));
    dirty.mark(page);
    s.writes += 1;
    s.checksum = mix(s.checksum ^ page, s.writes);
    memory.set_word(0, 0, s.writes);
    memory.set_word(0, 1, s.checksum);
    dirty.mark(0);
}

/// The self-check checksum after `writes` writes of a fresh guest (for tests: a resumed guest
/// must continue the same chain).
pub fn replay_self_check(cfg: &SimGuestConfig, writes: u64) -> Result<u64, GuestError> {
    let workload = parse_workload(&cfg.workload)?;
    let pages = cfg.memory_bytes / PAGE_SIZE as u64;
    let sampler = PageSampler::new(workload.pattern, pages);
    let mut rng = SplitMix64::new(cfg.seed);
    let mut checksum = 0u64;
    for i in 0..writes {
        let page = sampler.sample(&mut rng, i);
        checksum = mix(checksum ^ page, i + 1);
    }
    Ok(checksum)
}

fn workload_err(spec: &str) -> impl FnOnce(livemig_workload::SpecError) -> GuestError + '_ {
    move |source| GuestError::Workload {
        spec: spec.to_string(),
        source: Box::new(source),
    }
}

/// A local spec (a `trace:` may name a local file).
fn parse_workload(spec: &str) -> Result<Workload, GuestError> {
    spec.parse().map_err(workload_err(spec))
}

/// A spec from a state blob, i.e. from the peer: it must not name a file.
fn parse_peer_workload(spec: &str) -> Result<Workload, GuestError> {
    Workload::parse_self_contained(spec).map_err(|source| GuestError::Workload {
        spec: spec.to_string(),
        source: Box::new(source),
    })
}

fn fill(memory: &GuestMemory, content: InitialContent, seed: u64) {
    let share = match content {
        InitialContent::Zero => return,
        InitialContent::Random => 0.0,
        InitialContent::Mixed { zero_share } => zero_share,
    };
    let mut choose = SplitMix64::new(seed ^ 0x5EED);
    let mut rng = SplitMix64::new(seed.wrapping_add(1));
    for page in 0..memory.pages() {
        if share > 0.0 && choose.unit() < share {
            continue;
        }
        let _ = memory.with_page_mut(page, |p| {
            for w in p.chunks_exact_mut(8) {
                w.copy_from_slice(&rng.next_u64().to_le_bytes());
            }
        });
    }
}

/// The writer thread: catches up with the workload's cumulative write count, then naps 1 ms.
fn run_writer(shared: Arc<Shared>, workload: Workload) {
    let sampler = PageSampler::new(workload.pattern, shared.memory.pages());
    let mut s = shared.writer().clone();
    let mut last = Instant::now();
    loop {
        if shared.pause_requested.load(Ordering::Acquire) {
            *shared.writer() = s.clone();
            let mut c = shared.control();
            c.parked = true;
            shared.changed.notify_all();
            while c.paused && !c.stop {
                c = shared.changed.wait(c).unwrap_or_else(|e| e.into_inner());
            }
            c.parked = false;
            if c.stop {
                return;
            }
            drop(c);
            last = Instant::now();
            continue;
        }
        let now = Instant::now();
        // A throttled guest runs `1 - throttle` of the wall time: its own clock, and so its
        // writes, go that much slower.
        let keep = 1.0 - f64::from_bits(shared.throttle.load(Ordering::Acquire));
        s.guest_time_s += keep * now.duration_since(last).as_secs_f64();
        last = now;
        let target = (workload.rate.written(0.0, s.guest_time_s) / PAGE_SIZE as f64) as u64;
        let mut budget = 4096;
        while s.writes < target && budget > 0 {
            write_once(&shared.memory, &shared.dirty, &sampler, &mut s);
            budget -= 1;
        }
        if s.writes >= target {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl SimGuest {
    /// A new guest, filled with its initial content, running.
    pub fn start(cfg: &SimGuestConfig, max_memory: u64) -> Result<SimGuest, GuestError> {
        let workload = parse_workload(&cfg.workload)?;
        let memory = GuestMemory::new(cfg.memory_bytes, max_memory)?;
        fill(&memory, cfg.content, cfg.seed);
        // The state blob carries a self-contained spec (a trace becomes its phased steps): the
        // destination never opens a file named by its peer.
        let inline = workload
            .inline_spec()
            .map_err(workload_err(&cfg.workload))?;
        let state = WriterState {
            workload: inline,
            memory_bytes: cfg.memory_bytes,
            seed: cfg.seed,
            rng: SplitMix64::new(cfg.seed),
            writes: 0,
            checksum: 0,
            guest_time_s: 0.0,
        };
        memory.set_word(0, 0, 0);
        memory.set_word(0, 1, 0);
        let g = SimGuest::assemble(memory, state, false);
        g.spawn(workload);
        Ok(g)
    }

    /// A guest from migrated memory and its state blob, paused until [`Guest::resume`].
    pub fn restore(memory: GuestMemory, blob: &[u8]) -> Result<SimGuest, GuestError> {
        let state: WriterState = serde_json::from_slice(blob).map_err(GuestError::State)?;
        if state.memory_bytes != memory.bytes() {
            return Err(GuestError::StateSize {
                state: state.memory_bytes,
                memory: memory.bytes(),
            });
        }
        let (counter, checksum) = (memory.word(0, 0), memory.word(0, 1));
        if counter != state.writes || checksum != state.checksum {
            return Err(GuestError::SelfCheck {
                memory: counter,
                state: state.writes,
            });
        }
        let workload = parse_peer_workload(&state.workload)?;
        let g = SimGuest::assemble(memory, state, true);
        g.spawn(workload);
        Ok(g)
    }

    fn assemble(memory: GuestMemory, state: WriterState, paused: bool) -> SimGuest {
        let pages = memory.pages();
        SimGuest {
            shared: Arc::new(Shared {
                memory,
                dirty: DirtyBitmap::new(pages),
                control: Mutex::new(Control {
                    paused,
                    parked: false,
                    stop: false,
                }),
                changed: Condvar::new(),
                pause_requested: AtomicBool::new(paused),
                writer: Mutex::new(state),
                throttle: AtomicU64::new(0f64.to_bits()),
            }),
            thread: Mutex::new(None),
        }
    }

    fn spawn(&self, workload: Workload) {
        let shared = Arc::clone(&self.shared);
        let h = std::thread::Builder::new()
            .name("simguest-writer".into())
            .spawn(move || run_writer(shared, workload));
        if let Ok(h) = h {
            *self.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(h);
        }
    }

    /// The self-check region: (write counter, checksum).
    pub fn self_check(&self) -> (u64, u64) {
        (self.shared.memory.word(0, 0), self.shared.memory.word(0, 1))
    }

    /// FAULT INJECTION, for tests of the verification: writes `value` into a word of `page`
    /// without marking the page dirty, as a dirty log that missed a write would. A migration
    /// under way then hands over a stale copy of the page, which the source's audit after the
    /// hand-over must name. Never part of a guest's normal operation. Words 0 and 1 of page 0
    /// (the self-check region) are left alone; a page outside memory is ignored.
    pub fn inject_unlogged_write(&self, page: u64, value: u64) {
        self.shared.memory.set_word(page, WORDS_PER_PAGE - 1, value);
    }

    /// The rescue's throttle in force (0: none).
    pub fn throttle(&self) -> f64 {
        f64::from_bits(self.shared.throttle.load(Ordering::Acquire))
    }

    /// Guest time (seconds the guest has run, pauses excluded, a throttle slowing it) as of
    /// the last pause.
    pub fn guest_time_s(&self) -> f64 {
        self.shared.writer().guest_time_s
    }
}

impl Guest for SimGuest {
    fn memory(&self) -> &GuestMemory {
        &self.shared.memory
    }

    fn fetch_and_clear_dirty(&self) -> PageSet {
        self.shared.dirty.fetch_and_clear()
    }

    fn dirty_pages(&self) -> u64 {
        self.shared.dirty.count()
    }

    fn pause(&self) {
        let mut c = self.shared.control();
        c.paused = true;
        self.shared.pause_requested.store(true, Ordering::Release);
        let alive = self
            .thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|h| !h.is_finished());
        while alive && !c.parked && !c.stop {
            c = self
                .shared
                .changed
                .wait(c)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    fn resume(&self) {
        let mut c = self.shared.control();
        c.paused = false;
        self.shared.pause_requested.store(false, Ordering::Release);
        self.shared.changed.notify_all();
        drop(c);
    }

    fn is_running(&self) -> bool {
        !self.shared.control().paused
    }

    fn state(&self) -> Vec<u8> {
        serde_json::to_vec(&*self.shared.writer()).unwrap_or_default()
    }

    fn set_throttle(&self, share: f64) {
        let share = if share.is_finite() {
            share.clamp(0.0, 0.99)
        } else {
            0.0
        };
        self.shared
            .throttle
            .store(share.to_bits(), Ordering::Release);
    }
}

impl Drop for SimGuest {
    fn drop(&mut self) {
        {
            let mut c = self.shared.control();
            c.stop = true;
            self.shared.pause_requested.store(true, Ordering::Release);
            self.shared.changed.notify_all();
        }
        if let Some(h) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(workload: &str) -> SimGuestConfig {
        SimGuestConfig {
            memory_bytes: 4 << 20,
            workload: workload.into(),
            content: InitialContent::Random,
            seed: 3,
        }
    }

    #[test]
    fn writer_dirties_pages_and_pause_stops_it() {
        let g = SimGuest::start(&cfg("uniform:rate=40MiB/s"), u64::MAX).expect("start");
        std::thread::sleep(Duration::from_millis(100));
        assert!(g.dirty_pages() > 10);
        g.pause();
        let (n, _) = g.self_check();
        assert!(n > 0);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(g.self_check().0, n, "a paused guest does not write");
        g.resume();
        std::thread::sleep(Duration::from_millis(50));
        assert!(g.self_check().0 > n, "a resumed guest writes again");
    }

    #[test]
    fn restore_continues_the_self_check_chain() {
        let c = cfg("hotcold:rate=20MiB/s,hot=10%,share=90%");
        let g = SimGuest::start(&c, u64::MAX).expect("start");
        std::thread::sleep(Duration::from_millis(50));
        g.pause();
        let blob = g.state();
        let copy = GuestMemory::new(c.memory_bytes, u64::MAX).expect("alloc");
        let mut buf = [0u8; PAGE_SIZE];
        for p in 0..copy.pages() {
            g.memory().read_page(p, &mut buf).expect("read");
            copy.write_page(p, &buf).expect("write");
        }
        let (n, sum) = g.self_check();
        assert_eq!(sum, replay_self_check(&c, n).expect("replay"));
        let r = SimGuest::restore(copy, &blob).expect("restore");
        assert!(!r.is_running());
        r.resume();
        std::thread::sleep(Duration::from_millis(50));
        r.pause();
        let (m, sum2) = r.self_check();
        assert!(m > n);
        assert_eq!(sum2, replay_self_check(&c, m).expect("replay"));
    }

    #[test]
    fn restore_refuses_mismatched_memory_and_state() {
        let c = cfg("uniform:rate=20MiB/s");
        let g = SimGuest::start(&c, u64::MAX).expect("start");
        std::thread::sleep(Duration::from_millis(30));
        g.pause();
        let blob = g.state();
        let fresh = GuestMemory::new(c.memory_bytes, u64::MAX).expect("alloc");
        assert!(matches!(
            SimGuest::restore(fresh, &blob),
            Err(GuestError::SelfCheck { .. })
        ));
        let small = GuestMemory::new(1 << 20, u64::MAX).expect("alloc");
        assert!(matches!(
            SimGuest::restore(small, &blob),
            Err(GuestError::StateSize { .. })
        ));
        assert!("mixed:30%".parse::<InitialContent>().is_ok());
        assert!("lots".parse::<InitialContent>().is_err());
    }

    fn copy_of(g: &SimGuest) -> GuestMemory {
        let copy = GuestMemory::new(g.memory().bytes(), u64::MAX).expect("alloc");
        let mut buf = [0u8; PAGE_SIZE];
        for p in 0..copy.pages() {
            g.memory().read_page(p, &mut buf).expect("read");
            copy.write_page(p, &buf).expect("write");
        }
        copy
    }

    #[test]
    fn a_trace_workload_travels_inline_and_restore_opens_no_peer_named_file() {
        let path = std::env::temp_dir().join(format!("livemig-guest-{}.csv", std::process::id()));
        std::fs::write(
            &path,
            "time_s,dirty_rate_bytes_per_s\n0,8000000\n0.5,4000000\n",
        )
        .expect("trace");
        let g = SimGuest::start(
            &cfg(&format!("trace:file={},pattern=scan", path.display())),
            u64::MAX,
        )
        .expect("start");
        let _ = std::fs::remove_file(&path);
        std::thread::sleep(Duration::from_millis(30));
        g.pause();
        let blob = g.state();
        let mut v: serde_json::Value = serde_json::from_slice(&blob).expect("json");
        let spec = v["workload"].as_str().expect("spec").to_string();
        assert!(spec.starts_with("phased:steps="), "{spec}");
        assert!(spec.contains("pattern=scan"), "{spec}");
        // The trace file is gone: the guest is restored from the inline spec alone.
        let r = SimGuest::restore(copy_of(&g), &blob).expect("restore");
        drop(r);
        // A peer naming a file is refused, before anything reads it.
        v["workload"] = serde_json::Value::from("trace:file=/dev/zero");
        let forged = serde_json::to_vec(&v).expect("json");
        let e = SimGuest::restore(copy_of(&g), &forged).expect_err("refused");
        assert!(matches!(e, GuestError::Workload { .. }), "{e}");
        let chain = format!("{e}: {}", std::error::Error::source(&e).expect("source"));
        assert!(chain.contains("names a file"), "{chain}");
    }
}
