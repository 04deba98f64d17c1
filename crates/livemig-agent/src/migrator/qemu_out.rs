//! `POST /api/v1/outgoing` for a `qemu` VM: the source agent connects to the destination's
//! keyed listener (TLS first when asked) and proves the key ([`super::relay`]) before QEMU
//! is touched; then the `livemig_qemu` [`Governor`] migrates the source QEMU to
//! `unix:<vm-dir>/out-<migration>.sock`, a socket this agent relays onto that connection,
//! under the requested policy (a cap per round, `max-bandwidth`). The governor's events go to
//! the RMS (rounds included), except its `verified`/`handed_over`/`failed`, which only this
//! agent can tell once the destination's verdict is in:
//!
//! - QEMU completed and the destination proves `R` (its QEMU runs): `committed`, then
//!   `handed_over`; the source QEMU quits, its VM and memory leave this host, the report
//!   follows.
//! - QEMU completed and the destination proves `F` (its QEMU was killed): the source QEMU is
//!   resumed (`cont`); `failed` with the source running.
//! - QEMU completed and no verdict came (the connection or the destination was lost): the
//!   outcome is unknown. The source QEMU stays paused (it may already run on the
//!   destination); the migration is `held` here (in doubt) and the RMS marks it unknown. An
//!   operator settles it: `cont` over the VM's QMP socket if the destination does not run it,
//!   `DELETE` of the VM here otherwise is refused while in doubt — quit it over QMP.
//! - Cancelled, timed out or failed before the switch-over: the governor cancels QEMU's
//!   migration (`migrate_cancel`) and puts QEMU's settings back; the guest runs here; the
//!   destination sees its stream end without a running QEMU and kills its copy.
//!
//! From QEMU's stop-and-copy on, a cancel is refused (the governor ignores it from there).
//!
//! If the source agent dies mid-migration, its relay ends with it: QEMU's migration fails on
//! its socket and QEMU resumes the guest on the source (before its last bytes are written),
//! or the source stays paused after QEMU completed into the dead socket (the destination then
//! ran the guest if its stream was whole, else nobody does until an operator `cont`s the
//! source: `docs/qemu-agents.md`). QEMU outlives the agent; its settings changed by the governor are saved in
//! `<vm-dir>/vm.qmp.livemig-params.json` (`livemig qemu restore --qmp <vm-dir>/vm.qmp`).

use std::net::SocketAddr;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use livemig_api::{LocalState, OutgoingRequest, Role};
use livemig_engine::net::Transport;
use livemig_engine::{Control, Key};
use livemig_policy::{Event, PolicyKind};
use livemig_qemu::governor::{Governor, GovernorConfig, GovernorError, CANCEL_WAIT};
use livemig_qemu::saved::default_state_file;
use livemig_qemu::types::{MigrationInfo, StatusInfo};

use super::incoming::error_chain;
use super::qemu_in::{DEST_WAIT, IDLE, KILL_WAIT};
use super::relay::{self, Verdict};
use super::{Entry, MigrationError, MigratorConfig};
use crate::agent::Agent;
use crate::qemu::QemuVm;

/// How long QEMU may take to connect to the relay's socket (the dirty-rate sample and
/// QEMU's setup come first).
pub const QEMU_CONNECT_WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(250);

/// An outgoing request already checked by [`super::outgoing::start`].
#[derive(Debug)]
pub struct Request {
    pub req: OutgoingRequest,
    pub key: Key,
    pub to: SocketAddr,
    pub kind: PolicyKind,
    pub connector: Option<livemig_tls::Connector>,
    pub server_name: String,
    pub control: Control,
    pub vm: Arc<QemuVm>,
    pub memory: u64,
    pub workload: String,
}

type Stream = Box<dyn Transport + Send>;

/// Builds the policy and the governor's settings, enters the migration and starts it on a
/// thread of its own.
pub fn start(agent: &Arc<Agent>, r: Request) -> Result<(), MigrationError> {
    let cfg = agent.migrator().clone();
    let spec = r
        .req
        .settings
        .clone()
        .unwrap_or_default()
        .for_guest(r.memory);
    let policy_cfg = spec
        .resolve(r.memory as f64)
        .map_err(|e| MigrationError::Settings(error_chain(&e)))?;
    let policy = r
        .kind
        .build(policy_cfg.clone())
        .map_err(|e| MigrationError::Settings(format!("invalid policy settings: {e}")))?;
    let id = r.req.migration;
    let sock = r.vm.dir().join(format!("out-{id}.sock"));
    let mut gcfg = GovernorConfig::new(
        &format!("unix:{}", sock.display()),
        policy_cfg.memory_bytes,
        policy_cfg.stop_remaining,
    );
    gcfg.workload = Some(r.workload.clone());
    gcfg.sample = (cfg.sample_s > 0.0)
        .then(|| Duration::from_secs(cfg.sample_s.ceil().clamp(1.0, 60.0) as u64));
    gcfg.state_file = Some(default_state_file(&r.vm.qmp_path()));
    gcfg.rescue = policy_cfg.max_throttle.is_some();
    // QMP is async: the migration's thread drives it on the agent's runtime.
    let handle = tokio::runtime::Handle::try_current()
        .map_err(|e| MigrationError::Thread(std::io::Error::other(e)))?;
    {
        let mut s = agent.lock();
        if s.migrations.contains(id) {
            return Err(MigrationError::Known(id));
        }
        if !s.vms.contains_key(&r.req.vm) {
            return Err(MigrationError::NoVm(r.req.vm.clone()));
        }
        if s.migrations.busy(&r.req.vm) {
            return Err(MigrationError::Busy(r.req.vm.clone()));
        }
        let mut e = Entry::new(Role::Source, &r.req.vm);
        e.control = Some(r.control.clone());
        e.tls = r.req.tls;
        s.migrations.insert(id, e);
    }
    let a = Arc::clone(agent);
    let (vm_name, to, policy_name, target) = (
        r.req.vm.clone(),
        r.to,
        r.req.policy.clone(),
        r.req.target.clone(),
    );
    let spawned = std::thread::Builder::new()
        .name(format!("outgoing-{id}"))
        .spawn(move || {
            let run = Run {
                agent: &a,
                id,
                cfg: &cfg,
                r: &r,
                sock: &sock,
                handle: &handle,
            };
            run.go(gcfg, policy);
            let _ = std::fs::remove_file(&sock);
        });
    if let Err(e) = spawned {
        agent.lock().migrations.finish(id, LocalState::Failed);
        return Err(MigrationError::Thread(e));
    }
    tracing::info!(migration = id, vm = %vm_name, %target, %to, policy = %policy_name, "outgoing QEMU migration starts");
    Ok(())
}

/// What becomes of one of the governor's events.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Route {
    /// To the RMS as it is.
    Forward,
    /// To the RMS, and from now on a cancel is refused (QEMU's stop-and-copy: the governor
    /// ignores a cancel from there).
    ForwardPastCancel,
    /// Kept back: QEMU's downtime, for the `handed_over` told once the destination proved
    /// its QEMU runs.
    Downtime(f64),
    /// Kept back: the outcome (`verified`, `failed`) is this agent's to tell.
    Keep,
}

/// Routes one of the governor's events.
pub fn route(e: &Event) -> Route {
    match e {
        Event::HandedOver { downtime_s } => Route::Downtime(*downtime_s),
        Event::Verified { .. } | Event::Failed { .. } => Route::Keep,
        Event::StopAndCopy { .. } => Route::ForwardPastCancel,
        _ => Route::Forward,
    }
}

/// How the relay ended.
struct RelayEnd {
    copied: Result<u64, relay::RelayError>,
    verdict: Option<Result<Verdict, relay::RelayError>>,
}

struct Run<'a> {
    agent: &'a Agent,
    id: u64,
    cfg: &'a MigratorConfig,
    r: &'a Request,
    sock: &'a Path,
    handle: &'a tokio::runtime::Handle,
}

impl Run<'_> {
    fn observe(&self, e: Event) {
        self.agent.observe(self.id, &e);
    }

    fn finish(&self, state: LocalState, in_doubt: bool) {
        let mut s = self.agent.lock();
        if let Some(m) = s.migrations.get_mut(self.id) {
            m.in_doubt = in_doubt;
        }
        s.migrations.finish(self.id, state);
    }

    /// Failed with the guest running here.
    fn failed_running(&self, why: String) {
        tracing::warn!(migration = self.id, error = %why, "outgoing QEMU migration failed; the guest runs here");
        self.observe(Event::Failed {
            error: why,
            outcome: "failed_source_running".into(),
        });
        self.finish(LocalState::Failed, false);
    }

    /// The outcome is unknown: the source QEMU stays paused, the migration in doubt.
    fn in_doubt(&self, why: String) {
        self.r.vm.set_paused(true);
        tracing::error!(migration = self.id, error = %why, "outcome unknown: the source QEMU stays paused");
        self.observe(Event::Failed {
            error: why,
            outcome: "unknown".into(),
        });
        self.finish(LocalState::Failed, true);
    }

    fn connect(&self) -> Result<(Stream, relay::Session), String> {
        let t = self.cfg.timeout;
        let mut stream: Stream = match &self.r.connector {
            None => {
                Box::new(livemig_engine::net::connect(self.r.to, t).map_err(|e| error_chain(&e))?)
            }
            Some(tls) => Box::new(
                tls.connect(self.r.to, &self.r.server_name, t)
                    .map_err(|e| error_chain(&e))?,
            ),
        };
        let session = relay::open(&mut stream, &self.r.key, t).map_err(|e| e.to_string())?;
        Ok((stream, session))
    }

    fn go(&self, gcfg: GovernorConfig, policy: Box<dyn livemig_policy::Policy>) {
        // QMP first: without it nothing is sent to QEMU, so the guest certainly runs on as it
        // was (a later failure to reach QEMU is a different matter: the outcome is asked).
        let mut qmp = match self.handle.block_on(self.r.vm.qmp()) {
            Ok(q) => q,
            Err(e) => {
                return self.failed_running(format!(
                    "cannot reach QEMU's QMP socket, nothing was started: {}",
                    error_chain(&e)
                ))
            }
        };
        let (stream, session) = match self.connect() {
            Ok(x) => x,
            Err(why) => return self.failed_running(format!("cannot reach the destination: {why}")),
        };
        let _ = std::fs::remove_file(self.sock);
        let listener = match UnixListener::bind(self.sock) {
            Ok(l) => l,
            Err(e) => {
                return self
                    .failed_running(format!("cannot listen on {}: {e}", self.sock.display()))
            }
        };
        let abandon = Arc::new(AtomicBool::new(false));
        let relay = {
            let abandon = Arc::clone(&abandon);
            let (key, session) = (self.r.key.clone(), session.clone());
            // The destination's longest path to a verdict: QEMU not running within DEST_WAIT,
            // then killed within KILL_WAIT; plus the data timeout and some slack.
            let verdict_wait = DEST_WAIT + KILL_WAIT + self.cfg.timeout + Duration::from_secs(5);
            std::thread::Builder::new()
                .name(format!("relay-{}", self.id))
                .spawn(move || relay_out(listener, stream, &key, &session, &abandon, verdict_wait))
        };
        let relay = match relay {
            Ok(j) => j,
            Err(e) => return self.failed_running(format!("cannot start the relay: {e}")),
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
        let (agent, id) = (self.agent, self.id);
        let result = std::thread::scope(|scope| {
            // The governor's events, forwarded as they come (rounds included); the outcome's
            // events are this agent's to tell.
            let forward = scope.spawn(move || {
                let mut downtime = None;
                while let Some(e) = rx.blocking_recv() {
                    match route(&e) {
                        Route::Forward => agent.observe(id, &e),
                        Route::ForwardPastCancel => {
                            if let Some(m) = agent.lock().migrations.get_mut(id) {
                                m.committed = true;
                            }
                            agent.observe(id, &e);
                        }
                        Route::Downtime(d) => downtime = Some(d),
                        Route::Keep => {}
                    }
                }
                downtime
            });
            let result = self.handle.block_on(async {
                Governor::new(gcfg)
                    .with_events(tx)
                    .with_steering(self.r.control.clone())
                    .run(
                        &mut qmp,
                        None,
                        livemig_qemu::governor::Control::Policy(policy),
                    )
                    .await
            });
            let downtime = forward.join().ok().flatten();
            result.map(|rep| (rep, downtime))
        });
        // QEMU serves one QMP client at a time: what follows (resuming the guest, asking
        // where it runs) opens its own session.
        drop(qmp);
        if result.is_err() {
            abandon.store(true, Ordering::Relaxed);
        }
        let ended = relay.join().unwrap_or(RelayEnd {
            copied: Err(relay::RelayError::Stopped),
            verdict: None,
        });
        match result {
            Ok((report, downtime)) => self.completed(report, downtime, ended),
            Err(GovernorError::Cancelled {
                source_running: Some(true),
            }) => {
                tracing::info!(
                    migration = id,
                    "outgoing QEMU migration cancelled; the guest runs here"
                );
                self.finish(LocalState::Cancelled, false);
            }
            Err(e) => {
                let mut running = match &e {
                    GovernorError::Failed { source_running, .. }
                    | GovernorError::TimedOut { source_running, .. }
                    | GovernorError::Cancelled { source_running } => *source_running,
                    _ => None,
                };
                if running.is_none() {
                    // Ask QEMU afresh (a QMP session that broke, a refusal before anything
                    // started), cancelling a migration still under way.
                    running = self.handle.block_on(source_state(&self.r.vm));
                }
                let why = error_chain(&e);
                match running {
                    Some(true) => self.failed_running(why),
                    _ => self.in_doubt(why),
                }
            }
        }
    }

    /// QEMU completed: the destination's verdict decides.
    fn completed(&self, report: livemig_qemu::QemuReport, downtime: Option<f64>, ended: RelayEnd) {
        self.observe(Event::Committed);
        let verdict = match (&ended.copied, ended.verdict) {
            (Ok(_), Some(Ok(v))) => Ok(v),
            (Err(e), _) => Err(format!("the relay failed: {e}")),
            (Ok(_), Some(Err(e))) => Err(format!("no verdict from the destination: {e}")),
            (Ok(_), None) => Err("no verdict from the destination".into()),
        };
        match verdict {
            Ok(Verdict::Resumed) => {
                let vm = &self.r.req.vm;
                let gone = {
                    let mut s = self.agent.lock();
                    let _ = s.book.remove_vm(vm);
                    s.migrations.finish(self.id, LocalState::HandedOver);
                    s.vms.remove(vm)
                };
                self.handle.block_on(self.r.vm.destroy());
                drop(gone);
                tracing::info!(migration = self.id, %vm, "handed over; the source QEMU quit");
                self.observe(Event::HandedOver {
                    downtime_s: downtime.unwrap_or(report.report.summary.downtime_s),
                });
                self.agent.report(self.id, report.report);
            }
            Ok(Verdict::Failed) => {
                let resumed = self.handle.block_on(async {
                    let mut q = self.r.vm.qmp().await.ok()?;
                    q.execute("cont", None).await.ok()
                });
                match resumed {
                    Some(_) => self.failed_running(
                        "the destination QEMU did not run the guest; it runs here again".into(),
                    ),
                    None => self.in_doubt(
                        "the destination QEMU did not run the guest, and `cont` failed here".into(),
                    ),
                }
            }
            Err(why) => self.in_doubt(why),
        }
    }
}

/// Where the guest is, asked on a fresh QMP session: `Some(true)` when it runs here with no
/// migration under way (one still running with the guest running is cancelled first);
/// `None` when QEMU does not answer or is switching over (paused mid-migration).
async fn source_state(vm: &QemuVm) -> Option<bool> {
    let ask = async {
        let mut c = vm.qmp().await.ok()?;
        let info: MigrationInfo = c.execute_as("query-migrate", None).await.ok()?;
        if info.status.is_running() {
            let st: StatusInfo = c.execute_as("query-status", None).await.ok()?;
            if !st.running {
                return None;
            }
            c.execute("migrate_cancel", None).await.ok()?;
            let until = tokio::time::Instant::now() + CANCEL_WAIT;
            loop {
                let q: MigrationInfo = c.execute_as("query-migrate", None).await.ok()?;
                if !q.status.is_running() {
                    break;
                }
                if tokio::time::Instant::now() >= until {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let st: StatusInfo = c.execute_as("query-status", None).await.ok()?;
        Some(st.running)
    };
    tokio::time::timeout(CANCEL_WAIT + Duration::from_secs(10), ask)
        .await
        .ok()
        .flatten()
}

/// Accepts QEMU's connection on `listener` (bounded; `abandon` ends the wait), relays it onto
/// `stream`, ends the writing and reads the destination's verdict.
fn relay_out(
    listener: UnixListener,
    mut stream: Stream,
    key: &Key,
    session: &relay::Session,
    abandon: &AtomicBool,
    verdict_wait: Duration,
) -> RelayEnd {
    let local = match accept_qemu(&listener, abandon) {
        Ok(l) => l,
        Err(e) => {
            return RelayEnd {
                copied: Err(e),
                verdict: None,
            }
        }
    };
    drop(listener);
    let mut local = local;
    let copied = relay::copy(&mut local, &mut stream, IDLE, abandon);
    drop(local);
    if copied.is_err() {
        return RelayEnd {
            copied,
            verdict: None,
        };
    }
    stream.close_write();
    let mut b = [0u8; relay::VERDICT_LEN];
    let verdict = relay::read_full(&mut stream, &mut b, verdict_wait)
        .and_then(|()| session.check_verdict(key, &b));
    RelayEnd {
        copied,
        verdict: Some(verdict),
    }
}

fn accept_qemu(
    listener: &UnixListener,
    abandon: &AtomicBool,
) -> Result<UnixStream, relay::RelayError> {
    listener.set_nonblocking(true)?;
    let until = Instant::now() + QEMU_CONNECT_WAIT;
    loop {
        if abandon.load(Ordering::Relaxed) {
            return Err(relay::RelayError::Stopped);
        }
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)?;
                s.set_read_timeout(Some(POLL))?;
                s.set_write_timeout(Some(POLL))?;
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= until {
                    return Err(relay::RelayError::Idle(QEMU_CONNECT_WAIT));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outcome_events_are_the_agents_to_tell() {
        assert_eq!(
            route(&Event::HandedOver { downtime_s: 0.5 }),
            Route::Downtime(0.5)
        );
        let failed = Event::Failed {
            error: "x".into(),
            outcome: "the source VM is still running".into(),
        };
        assert_eq!(route(&failed), Route::Keep);
        assert_eq!(route(&Event::Verified { how: "qemu".into() }), Route::Keep);
        let round = Event::RoundStarted {
            round: 1,
            wish_bytes_per_s: 1.0,
            cap_bytes_per_s: 1.0,
            bytes: 1.0,
        };
        assert_eq!(route(&round), Route::Forward);
        assert_eq!(route(&Event::Committed), Route::Forward);
    }
}
