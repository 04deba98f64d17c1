//! The driver: one thread owns the [`Orchestrator`] and the store. Inputs arrive on a
//! channel (from the routes, the agents' answers, the clock); each step's effects are carried
//! out in order: a `Persist` is written and durable before the next effect, and the actions
//! are handed, with what they need to know, to the [`crate::actions`] dispatcher.
//!
//! A store that fails (or fences this process off) stops the driver: no later input is taken
//! and no later effect is acted on, so the store stays the truth a restart recovers from.

use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use livemig_rms::{Effect, Input, Orchestrator, OrchestratorError, Step, Vm};
use livemig_store::lease::{self, Leadership};
use livemig_store::{Store, StoreError};
use tokio::sync::oneshot;

/// Seconds on the RMS's clock (Unix time in the binary; persisted times are on it).
pub type Clock = Arc<dyn Fn() -> f64 + Send + Sync>;

/// The system clock as Unix seconds.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    })
}

/// Why an input was not handled.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DriverError {
    #[error(transparent)]
    Refused(#[from] OrchestratorError),
    #[error("the RMS stopped taking changes: {0}")]
    Stopped(String),
}

/// An action effect with what carrying it out needs (addresses, the VM), resolved by the
/// driver when the effect was produced.
#[derive(Debug, Clone)]
pub struct Job {
    pub effect: Effect,
    /// The agent address of every host the effect names.
    pub addresses: Vec<(String, String)>,
    /// The VM a `StartMigration` moves.
    pub vm: Option<Vm>,
}

impl Job {
    pub fn address(&self, host: &str) -> Option<&str> {
        self.addresses
            .iter()
            .find(|(h, _)| h == host)
            .map(|(_, a)| a.as_str())
    }
}

type Reply = oneshot::Sender<Result<Step, DriverError>>;
type Reader = Box<dyn FnOnce(&Orchestrator) + Send>;

enum Command {
    Input(Box<Input>, Option<Reply>),
    Read(Reader),
}

/// A handle to the driver (cheap to clone).
#[derive(Clone)]
pub struct Driver {
    tx: mpsc::Sender<Command>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Driver")
    }
}

impl Driver {
    /// Handles `input`; resolves once its effects were persisted and dispatched.
    pub async fn input(&self, input: Input) -> Result<Step, DriverError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Input(Box::new(input), Some(tx)))
            .map_err(|_| DriverError::Stopped("the driver has ended".into()))?;
        rx.await
            .map_err(|_| DriverError::Stopped("the driver has ended".into()))?
    }

    /// Reads the orchestrator's picture.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Orchestrator) -> T + Send + 'static,
    ) -> Result<T, DriverError> {
        let (tx, rx) = oneshot::channel();
        let reader: Reader = Box::new(move |o| {
            let _ = tx.send(f(o));
        });
        self.tx
            .send(Command::Read(reader))
            .map_err(|_| DriverError::Stopped("the driver has ended".into()))?;
        rx.await
            .map_err(|_| DriverError::Stopped("the driver has ended".into()))
    }
}

/// The driver's thread; dropping every [`Driver`] handle ends it.
#[derive(Debug)]
pub struct Running {
    pub driver: Driver,
    pub thread: JoinHandle<Result<(), Stop>>,
}

/// The lease this RMS leads under (see `livemig_store::lease`): renewed every
/// [`lease::RENEW_EVERY`]; lost when a renewal fails or says another leads, or when
/// [`lease::TTL`] passed since the last renewal that succeeded.
#[derive(Debug, Clone)]
pub struct Leading {
    pub holder: String,
    pub epoch: u64,
    /// When the call that granted the lease started (the lease runs from no earlier).
    pub granted: Instant,
}

/// Why the driver stopped taking changes.
#[derive(Debug, thiserror::Error)]
pub enum Stop {
    #[error("a store write failed")]
    Store(#[from] StoreError),
    #[error("this RMS lost its lease: {0}")]
    LostLease(String),
}

/// Starts the driver over `orchestrator` and `store`; `jobs` receives the actions in order;
/// the clock ticks the orchestrator every `tick` once `Input::Restarted` (recovery) was
/// handled; `leading` is renewed while it runs.
pub fn start(
    orchestrator: Orchestrator,
    store: Box<dyn Store>,
    clock: Clock,
    tick: Duration,
    leading: Option<Leading>,
    jobs: tokio::sync::mpsc::UnboundedSender<Job>,
) -> std::io::Result<Running> {
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("rms-driver".into())
        .spawn(move || run(orchestrator, store, clock, tick, leading, rx, jobs))?;
    Ok(Running {
        driver: Driver { tx },
        thread,
    })
}

fn run(
    mut o: Orchestrator,
    mut store: Box<dyn Store>,
    clock: Clock,
    tick: Duration,
    leading: Option<Leading>,
    rx: mpsc::Receiver<Command>,
    jobs: tokio::sync::mpsc::UnboundedSender<Job>,
) -> Result<(), Stop> {
    let mut next_tick = Instant::now();
    let mut ticking = false;
    // When the last renewal that succeeded started (the lease runs from the database's now,
    // which is no earlier).
    let mut renewed = leading.as_ref().map_or_else(Instant::now, |l| l.granted);
    // Renew at once: loading the store and binding the address took some of the lease.
    let mut next_renewal = Instant::now();
    loop {
        let due = next_tick.min(next_renewal);
        let wait = due.saturating_duration_since(Instant::now());
        let cmd = match rx.recv_timeout(wait) {
            Ok(c) => Some(c),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // A clean stop hands the lease over at once instead of letting it run out.
                if leading.is_some() {
                    if let Err(e) = store.resign() {
                        tracing::warn!(error = %e, "could not give the lease up; it runs out by itself");
                    }
                }
                return Ok(());
            }
        };
        if let Some(l) = &leading {
            if Instant::now() >= next_renewal {
                let started = Instant::now();
                match store.lead(&l.holder, lease::TTL) {
                    Ok(Leadership::Leader { epoch }) if epoch == l.epoch => renewed = started,
                    Ok(other) => return Err(lost(format!("the store says {other:?}"))),
                    Err(e) => tracing::warn!(error = %e, "renewing the lease failed; retrying"),
                }
                next_renewal = Instant::now() + lease::RENEW_EVERY;
            }
            // Past the ttl since the last renewal, another RMS may lead: act on nothing more.
            if renewed.elapsed() >= lease::TTL {
                return Err(lost("no renewal succeeded within the lease's ttl".into()));
            }
        }
        let input = match cmd {
            Some(Command::Read(f)) => {
                f(&o);
                continue;
            }
            Some(Command::Input(input, reply)) => Some((*input, reply)),
            None => None,
        };
        // No clock before recovery: while agents are being asked what they run, nobody's
        // heartbeat is heard, and a tick would call every host lost.
        if ticking && Instant::now() >= next_tick {
            next_tick = Instant::now() + tick;
            // A tick is never refused; only the store can fail it.
            if let Err(e) = step(&mut o, &mut *store, &jobs, Input::Tick { now: clock() }) {
                return Err(failed(&mut *store, leading.is_some(), e));
            }
        }
        let Some((input, reply)) = input else {
            continue;
        };
        if matches!(input, Input::Restarted { .. }) {
            ticking = true;
            next_tick = Instant::now();
        }
        let result = match step(&mut o, &mut *store, &jobs, input) {
            Ok(r) => r,
            Err(e) => return Err(failed(&mut *store, leading.is_some(), e)),
        };
        if let Some(reply) = reply {
            let _ = reply.send(result.map_err(DriverError::from));
        }
    }
}

fn lost(why: String) -> Stop {
    tracing::error!(%why, "this RMS lost its lease: it stops acting (a standby takes over)");
    Stop::LostLease(why)
}

/// A store write failed: this RMS stops. Its picture may be ahead of the store now, so it
/// must not act again; if it leads (and was not fenced off), it gives the lease up so that a
/// standby takes over from the store at once rather than after the lease's ttl.
fn failed(store: &mut dyn Store, leading: bool, e: StoreError) -> Stop {
    tracing::error!(error = %e, "the store failed: this RMS stops taking changes; restart it to recover from the store");
    if leading && !matches!(e, StoreError::Fenced { .. }) {
        match store.resign() {
            Ok(()) => tracing::info!("gave the lease up: a standby can take over now"),
            Err(r) => {
                tracing::warn!(error = %r, "could not give the lease up; it runs out by itself")
            }
        }
    }
    Stop::from(e)
}

/// One input: the orchestrator decides, then every effect in order. An `Err` is the store's
/// (fatal); the inner result is the orchestrator's refusal (nothing changed).
fn step(
    o: &mut Orchestrator,
    store: &mut dyn Store,
    jobs: &tokio::sync::mpsc::UnboundedSender<Job>,
    input: Input,
) -> Result<Result<Step, OrchestratorError>, StoreError> {
    let step = match o.handle(input) {
        Ok(s) => s,
        Err(e) => return Ok(Err(e)),
    };
    for effect in &step.effects {
        match effect {
            Effect::Persist(change) => store.apply(change)?,
            action => {
                let _ = jobs.send(job(o, action.clone()));
            }
        }
    }
    Ok(Ok(step))
}

fn job(o: &Orchestrator, effect: Effect) -> Job {
    let hosts: Vec<&str> = match &effect {
        Effect::AskCapacity { host, .. }
        | Effect::Release { host, .. }
        | Effect::Cancel { host, .. }
        | Effect::SetLocation { host, .. }
        | Effect::Sample { host, .. }
        | Effect::Grant { host, .. } => vec![host],
        Effect::StartMigration { source, target, .. } => vec![source, target],
        Effect::Flag { .. } | Effect::Persist(_) => vec![],
    };
    let addresses = hosts
        .into_iter()
        .filter_map(|h| o.host(h).map(|x| (h.to_string(), x.address.clone())))
        .collect();
    let vm = match &effect {
        Effect::StartMigration { vm, .. } => o.vm(vm).cloned(),
        _ => None,
    };
    Job {
        effect,
        addresses,
        vm,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use livemig_rms::Config;
    use livemig_store::{Snapshot, StoreUrl};

    use super::*;

    /// A store whose writes fail on demand and which remembers a resignation.
    #[derive(Debug)]
    struct Flaky {
        inner: Box<dyn Store>,
        fail: Arc<AtomicBool>,
        resigned: Arc<AtomicBool>,
    }

    impl Store for Flaky {
        fn apply(&mut self, change: &livemig_rms::Change) -> Result<(), StoreError> {
            if self.fail.load(Ordering::SeqCst) {
                return Err(StoreError::BadLease("the disk is gone (test)"));
            }
            self.inner.apply(change)
        }
        fn lead(&mut self, holder: &str, ttl: Duration) -> Result<Leadership, StoreError> {
            self.inner.lead(holder, ttl)
        }
        fn resign(&mut self) -> Result<(), StoreError> {
            self.resigned.store(true, Ordering::SeqCst);
            self.inner.resign()
        }
        fn load(&self) -> Result<Snapshot, StoreError> {
            self.inner.load()
        }
        fn hosts(&self) -> Result<Vec<livemig_rms::Host>, StoreError> {
            self.inner.hosts()
        }
        fn host(&self, name: &str) -> Result<Option<livemig_rms::Host>, StoreError> {
            self.inner.host(name)
        }
        fn vms(&self) -> Result<Vec<Vm>, StoreError> {
            self.inner.vms()
        }
        fn vm(&self, name: &str) -> Result<Option<Vm>, StoreError> {
            self.inner.vm(name)
        }
        fn migrations(&self) -> Result<Vec<livemig_rms::Migration>, StoreError> {
            self.inner.migrations()
        }
        fn migration(
            &self,
            id: livemig_rms::MigrationId,
        ) -> Result<Option<livemig_rms::Migration>, StoreError> {
            self.inner.migration(id)
        }
    }

    #[test]
    fn a_failed_write_stops_the_driver_and_gives_the_lease_up() {
        let url = StoreUrl::parse("sqlite::memory:").expect("url");
        let mut inner = livemig_store::open(&url).expect("store");
        let Ok(Leadership::Leader { epoch }) = inner.lead("rms-a", lease::TTL) else {
            panic!("leads")
        };
        let fail = Arc::new(AtomicBool::new(false));
        let resigned = Arc::new(AtomicBool::new(false));
        let store = Flaky {
            inner,
            fail: Arc::clone(&fail),
            resigned: Arc::clone(&resigned),
        };
        let leading = Leading {
            holder: "rms-a".into(),
            epoch,
            granted: Instant::now(),
        };
        let (jobs, _rx) = tokio::sync::mpsc::unbounded_channel();
        let running = start(
            Orchestrator::new(Config::default(), 0.0),
            Box::new(store),
            Arc::new(|| 0.0),
            Duration::from_millis(20),
            Some(leading),
            jobs,
        )
        .expect("starts");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let add = |name: &str| Input::AddHost {
            name: name.into(),
            address: "127.0.0.1:1".into(),
            memory_total_bytes: 1 << 30,
            timeout_s: None,
        };
        rt.block_on(running.driver.input(add("a")))
            .expect("written");
        assert!(!resigned.load(Ordering::SeqCst));
        fail.store(true, Ordering::SeqCst);
        assert!(rt.block_on(running.driver.input(add("b"))).is_err());
        let ended = running.thread.join().expect("no panic");
        assert!(matches!(ended, Err(Stop::Store(_))), "{ended:?}");
        assert!(
            resigned.load(Ordering::SeqCst),
            "the lease was not given up"
        );
    }
}
