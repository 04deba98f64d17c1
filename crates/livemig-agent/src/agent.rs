//! The agent's live state: its name, token, clock, capacity book, the VMs it runs and the
//! migrations it takes part in.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use livemig_api::{LocalState, MigrationNo, RunReport, VmInfo};
use livemig_engine::{Guest, InitialContent, SimGuest, SimGuestConfig};
use livemig_http::{ApiError, Token};
use livemig_policy::report::MigrationReport;
use livemig_policy::Event;
use tokio_util::sync::CancellationToken;

use crate::api::{Info, VmKind, VmRequest, VmView};
use crate::capacity::{BookConfig, CapacityBook};
use crate::migrator::{MigratorConfig, Table};
use crate::qemu::{QemuConfig, QemuVm};
use crate::rms::outbox::Outbox;

/// Seconds on the agent's clock (Unix time in the binary; tests drive their own).
pub type Clock = Arc<dyn Fn() -> f64 + Send + Sync>;

/// The system clock as Unix seconds.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    })
}

/// The longest VM name.
pub const MAX_VM_NAME: usize = livemig_api::MAX_NAME;

/// What runs a VM: a simulated guest in this process, or a QEMU process.
#[derive(Debug, Clone)]
pub enum GuestHandle {
    Sim(Arc<SimGuest>),
    Qemu(Arc<QemuVm>),
}

/// A VM this host runs.
#[derive(Debug)]
pub struct Vm {
    pub memory_bytes: u64,
    pub workload: String,
    pub guest: GuestHandle,
}

impl Vm {
    fn view(&self, name: &str) -> VmView {
        let (kind, running, writes) = match &self.guest {
            GuestHandle::Sim(g) => (VmKind::Sim, g.is_running(), g.self_check().0),
            GuestHandle::Qemu(q) => (VmKind::Qemu, q.is_running(), q.heartbeat().unwrap_or(0)),
        };
        VmView {
            name: name.to_string(),
            memory_bytes: self.memory_bytes,
            workload: self.workload.clone(),
            kind,
            running,
            writes,
        }
    }

    fn kind(&self) -> livemig_api::VmKind {
        match self.guest {
            GuestHandle::Sim(_) => livemig_api::VmKind::Sim,
            GuestHandle::Qemu(_) => livemig_api::VmKind::Qemu,
        }
    }

    /// Stops the guest: a QEMU quits (bounded), a simulated guest's writer thread is joined
    /// off the async threads.
    pub async fn shut_down(self) {
        match self.guest {
            GuestHandle::Qemu(q) => q.destroy().await,
            GuestHandle::Sim(g) => drop(tokio::task::spawn_blocking(move || drop(g))),
        }
    }
}

#[derive(Debug)]
pub struct Inner {
    pub book: CapacityBook,
    pub vms: BTreeMap<String, Vm>,
    pub migrations: Table,
}

/// Everything the routes share.
pub struct Agent {
    pub name: String,
    pub token: Token,
    clock: Clock,
    inner: Mutex<Inner>,
    migrator: MigratorConfig,
    qemu: QemuConfig,
    outbox: Option<Outbox>,
    stopping: AtomicBool,
    /// Cancelled when the agent stops (ends the dirty-log samples under way).
    stop: CancellationToken,
    registered: AtomicBool,
    tls: crate::tls::HostTls,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("name", &self.name).finish()
    }
}

impl Agent {
    pub fn new(name: String, token: Token, book: BookConfig, clock: Clock) -> Agent {
        Agent {
            name,
            token,
            clock,
            inner: Mutex::new(Inner {
                book: CapacityBook::new(book),
                vms: BTreeMap::new(),
                migrations: Table::default(),
            }),
            migrator: MigratorConfig::default(),
            qemu: QemuConfig::default(),
            outbox: None,
            stopping: AtomicBool::new(false),
            stop: CancellationToken::new(),
            registered: AtomicBool::new(false),
            tls: crate::tls::HostTls::default(),
        }
    }

    /// The host's TLS key, request and issued certificate.
    pub fn tls(&self) -> &crate::tls::HostTls {
        &self.tls
    }

    /// Migrations run under `cfg` (listeners on its `data_host`).
    pub fn with_migrator(mut self, cfg: MigratorConfig) -> Agent {
        self.migrator = cfg;
        self
    }

    /// Migration events and reports go to the RMS through `outbox`.
    pub fn with_outbox(mut self, outbox: Outbox) -> Agent {
        self.outbox = Some(outbox);
        self
    }

    /// QEMU VMs live under `cfg.state_dir` and boot the image in `cfg.guest_dir`.
    pub fn with_qemu(mut self, cfg: QemuConfig) -> Agent {
        self.qemu = cfg;
        self
    }

    pub fn qemu(&self) -> &QemuConfig {
        &self.qemu
    }

    pub fn migrator(&self) -> &MigratorConfig {
        &self.migrator
    }

    pub fn outbox(&self) -> Option<&Outbox> {
        self.outbox.as_ref()
    }

    /// Whether the RMS has this host registered (as far as the agent knows).
    pub fn is_registered(&self) -> bool {
        self.registered.load(Ordering::Relaxed)
    }

    pub fn set_registered(&self, yes: bool) {
        self.registered.store(yes, Ordering::Relaxed);
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Cancelled once the agent stops.
    pub fn stop_token(&self) -> &CancellationToken {
        &self.stop
    }

    /// An event of migration `id`: counted, remembered (the commit), sent to the RMS.
    pub fn observe(&self, id: MigrationNo, e: &Event) {
        if !matches!(e, Event::Progress { .. }) {
            tracing::debug!(migration = id, event = ?e, "migration event");
        }
        {
            let mut s = self.lock();
            if let Some(m) = s.migrations.get_mut(id) {
                m.stats.observe(e);
                if matches!(e, Event::Committed) {
                    m.committed = true;
                }
            }
        }
        if let Some(o) = &self.outbox {
            o.event(id, e);
        }
    }

    /// The final report of migration `id`, for the RMS.
    pub fn report(&self, id: MigrationNo, report: MigrationReport) {
        if let Some(o) = &self.outbox {
            o.report(id, report);
        }
    }

    /// The agent stops: no new migrations nor samples; outgoing ones are cancelled (those past
    /// their commit point complete), listeners waiting for a source stop, dirty-log samples
    /// under way end with an error.
    pub fn stop_migrations(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.stop.cancel();
        let s = self.lock();
        for (id, m) in s.migrations.iter() {
            if m.state != LocalState::Migrating {
                continue;
            }
            if let Some(c) = &m.control {
                if !m.committed {
                    tracing::info!(
                        migration = id,
                        "stopping: cancelling the outgoing migration"
                    );
                    c.cancel();
                }
            }
            if let Some(stop) = &m.stop {
                stop.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Dirty-log samples under way here.
    pub fn sampling(&self) -> usize {
        self.lock().migrations.samples()
    }

    /// Migrations still running here.
    pub fn migrating(&self) -> usize {
        self.lock()
            .migrations
            .iter()
            .filter(|(_, m)| m.state == LocalState::Migrating)
            .count()
    }

    /// The VMs as the RMS knows them.
    pub fn vm_infos(&self) -> Vec<VmInfo> {
        self.lock()
            .vms
            .iter()
            .map(|(n, v)| VmInfo {
                name: n.clone(),
                memory_bytes: v.memory_bytes,
                workload: v.workload.clone(),
                kind: v.kind(),
                content: None,
            })
            .collect()
    }

    /// `GET /api/v1/report`.
    pub fn run_report(&self) -> RunReport {
        let vms = self.vm_infos();
        let s = self.lock();
        RunReport {
            host: self.name.clone(),
            vms,
            migrations: s
                .migrations
                .iter()
                .map(|(id, m)| (*id, m.local()))
                .collect(),
        }
    }

    pub fn now(&self) -> f64 {
        (self.clock)()
    }

    /// The state, locked (never held across an await or a slow call).
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn info(&self) -> Info {
        let now = self.now();
        let mut s = self.lock();
        s.book.expire(now);
        Info {
            name: self.name.clone(),
            memory_total_bytes: s.book.total_bytes(),
            memory_free_bytes: s.book.free_bytes(),
            memory_reserved_bytes: s.book.reserved_bytes(),
            vms: s.vms.keys().cloned().collect(),
            reservations: s.book.reservations().count(),
        }
    }

    pub fn vm_views(&self) -> Vec<VmView> {
        self.lock().vms.iter().map(|(n, v)| v.view(n)).collect()
    }

    pub fn vm_view(&self, name: &str) -> Option<VmView> {
        self.lock().vms.get(name).map(|v| v.view(name))
    }

    /// Checks a request to start a VM and takes its memory in the book (given back by
    /// [`Agent::forget_vm`] if the guest then fails to start).
    fn admit_vm(&self, req: &VmRequest) -> Result<u64, ApiError> {
        check_vm_name(&req.name)?;
        match req.kind {
            VmKind::Sim => {
                // (`is_multiple_of` is newer than the workspace's rust-version.)
                let page = livemig_engine::wire::PAGE_SIZE as u64;
                if req.memory_bytes / page * page != req.memory_bytes {
                    return Err(ApiError::unprocessable(
                        "memory_bytes must be a whole number of 4096-byte pages",
                    ));
                }
                // A workload from the network must not name a file on this host.
                livemig_workload::Workload::parse_self_contained(&req.workload)
                    .map_err(|e| ApiError::unprocessable(format!("invalid workload: {e}")))?;
            }
            VmKind::Qemu => {
                crate::qemu::memory_arg(req.memory_bytes)?;
                crate::qemu::check_load(&req.workload, req.memory_bytes)?;
            }
        }
        let now = self.now();
        let mut s = self.lock();
        if s.migrations.busy(&req.name) {
            return Err(ApiError::new(
                axum::http::StatusCode::CONFLICT,
                format!(
                    "a VM named `{}` is migrating to or from this host",
                    req.name
                ),
            ));
        }
        s.book.admit(now, &req.name, req.memory_bytes)?;
        Ok(s.book.total_bytes())
    }

    fn forget_vm(&self, name: &str) {
        let _ = self.lock().book.remove_vm(name);
    }

    /// Starts a `sim` VM: checks the request, takes its memory in the book, then builds the
    /// guest (slow: it fills memory; the caller runs this off the async threads). On failure
    /// the memory is given back.
    pub fn start_vm(&self, req: VmRequest) -> Result<VmView, ApiError> {
        if req.kind != VmKind::Sim {
            return Err(ApiError::unprocessable(
                "a qemu VM starts through Agent::start_qemu_vm",
            ));
        }
        let content = match req.content.as_deref() {
            None => InitialContent::Zero,
            Some(c) => c.parse::<InitialContent>().map_err(|_| {
                ApiError::unprocessable(format!(
                    "content `{c}` is not zero, random or mixed:FRACTION"
                ))
            })?,
        };
        let total = self.admit_vm(&req)?;
        let cfg = SimGuestConfig {
            memory_bytes: req.memory_bytes,
            workload: req.workload.clone(),
            content,
            seed: 1,
        };
        let guest = match SimGuest::start(&cfg, total) {
            Ok(g) => Arc::new(g),
            Err(e) => {
                self.forget_vm(&req.name);
                return Err(ApiError::unprocessable(format!(
                    "cannot start the guest: {e}"
                )));
            }
        };
        let vm = Vm {
            memory_bytes: req.memory_bytes,
            workload: req.workload,
            guest: GuestHandle::Sim(guest),
        };
        let view = vm.view(&req.name);
        self.lock().vms.insert(req.name, vm);
        Ok(view)
    }

    /// Starts a `qemu` VM: checks the request, takes its memory in the book, starts QEMU
    /// (waiting for its QMP socket; the guest then boots on its own). On failure the memory
    /// is given back: 503 when QEMU or the guest image is missing, 422 for a bad request.
    pub async fn start_qemu_vm(&self, req: VmRequest) -> Result<VmView, ApiError> {
        self.admit_vm(&req)?;
        let started =
            QemuVm::start(&self.qemu, &req.name, req.memory_bytes, &req.workload, None).await;
        let q = match started {
            Ok(q) => Arc::new(q),
            Err(e) => {
                self.forget_vm(&req.name);
                return Err(e.into());
            }
        };
        let vm = Vm {
            memory_bytes: req.memory_bytes,
            workload: req.workload,
            guest: GuestHandle::Qemu(q),
        };
        let view = vm.view(&req.name);
        self.lock().vms.insert(req.name, vm);
        Ok(view)
    }

    /// The agent stops: its QEMU VMs quit (bounded) and leave the table. A QEMU VM that is
    /// still migrating, or paused after a hand-over in doubt, is left as it is (its QEMU may
    /// hold the only copy of the guest): logged, and unmanaged from then on (settle it over its
    /// QMP socket, `docs/qemu-agents.md`). Simulated guests stop when the agent is dropped.
    pub async fn stop_qemu_vms(&self) {
        let vms: Vec<(String, Vm)> = {
            let mut s = self.lock();
            let (busy, names): (Vec<String>, Vec<String>) = s
                .vms
                .iter()
                .filter(|(_, v)| matches!(v.guest, GuestHandle::Qemu(_)))
                .map(|(n, _)| n.clone())
                // (A sample under way is no reason to leave QEMU running: it ends at the stop.)
                .partition(|n| s.migrations.in_migration(n));
            for name in &busy {
                if let Some(Vm {
                    guest: GuestHandle::Qemu(q),
                    ..
                }) = s.vms.get(name)
                {
                    q.detach();
                }
                tracing::error!(vm = %name, "stopping: this QEMU VM is migrating or its hand-over is in doubt; its QEMU is left running as it is, unmanaged (see docs/qemu-agents.md)");
            }
            names
                .into_iter()
                .filter_map(|n| {
                    let _ = s.book.remove_vm(&n);
                    s.vms.remove(&n).map(|v| (n, v))
                })
                .collect()
        };
        for (name, vm) in vms {
            tracing::info!(vm = %name, "stopping: QEMU quits");
            vm.shut_down().await;
        }
    }

    /// Stops a VM and frees its memory; returns it so that the caller drops it (joining its
    /// writer thread) off the async threads.
    pub fn remove_vm(&self, name: &str) -> Result<(VmView, Vm), ApiError> {
        let mut s = self.lock();
        if s.migrations.busy(name) {
            return Err(ApiError::new(
                axum::http::StatusCode::CONFLICT,
                format!("the VM `{name}` is migrating or being sampled"),
            ));
        }
        let vm = s
            .vms
            .remove(name)
            .ok_or_else(|| ApiError::not_found(format!("no VM named `{name}` runs here")))?;
        let _ = s.book.remove_vm(name);
        Ok((vm.view(name), vm))
    }
}

/// A VM name: 1 to [`MAX_VM_NAME`] characters of `A-Z a-z 0-9 . _ -`.
pub fn check_vm_name(name: &str) -> Result<(), ApiError> {
    if livemig_api::is_valid_name(name) {
        Ok(())
    } else {
        Err(ApiError::unprocessable(format!(
            "a VM name is 1 to {MAX_VM_NAME} characters of A-Z a-z 0-9 . _ -"
        )))
    }
}
