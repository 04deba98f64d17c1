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

use crate::api::{Info, VmKind, VmRequest, VmView};
use crate::capacity::{BookConfig, CapacityBook};
use crate::migrator::{MigratorConfig, Table};
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

/// A VM this host runs.
#[derive(Debug)]
pub struct Vm {
    pub memory_bytes: u64,
    pub workload: String,
    pub guest: Arc<SimGuest>,
}

impl Vm {
    fn view(&self, name: &str) -> VmView {
        VmView {
            name: name.to_string(),
            memory_bytes: self.memory_bytes,
            workload: self.workload.clone(),
            kind: VmKind::Sim,
            running: self.guest.is_running(),
            writes: self.guest.self_check().0,
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
    outbox: Option<Outbox>,
    stopping: AtomicBool,
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
            outbox: None,
            stopping: AtomicBool::new(false),
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

    /// The agent stops: no new migrations; outgoing ones are cancelled (those past their
    /// commit point complete), listeners waiting for a source stop.
    pub fn stop_migrations(&self) {
        self.stopping.store(true, Ordering::Relaxed);
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
                kind: livemig_api::VmKind::Sim,
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

    /// Starts a VM: checks the request, takes its memory in the book, then builds the guest
    /// (slow: it fills memory; the caller runs this off the async threads). On failure the
    /// memory is given back.
    pub fn start_vm(&self, req: VmRequest) -> Result<VmView, ApiError> {
        check_vm_name(&req.name)?;
        if req.kind != VmKind::Sim {
            return Err(ApiError::unprocessable(
                "kind `qemu` is not supported by this agent yet; use `sim`",
            ));
        }
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
        let now = self.now();
        let total = {
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
            s.book.total_bytes()
        };
        let cfg = SimGuestConfig {
            memory_bytes: req.memory_bytes,
            workload: req.workload.clone(),
            content: InitialContent::Zero,
            seed: 1,
        };
        let guest = match SimGuest::start(&cfg, total) {
            Ok(g) => Arc::new(g),
            Err(e) => {
                let _ = self.lock().book.remove_vm(&req.name);
                return Err(ApiError::unprocessable(format!(
                    "cannot start the guest: {e}"
                )));
            }
        };
        let vm = Vm {
            memory_bytes: req.memory_bytes,
            workload: req.workload,
            guest,
        };
        let view = vm.view(&req.name);
        self.lock().vms.insert(req.name, vm);
        Ok(view)
    }

    /// Stops a VM and frees its memory; returns it so that the caller drops it (joining its
    /// writer thread) off the async threads.
    pub fn remove_vm(&self, name: &str) -> Result<(VmView, Vm), ApiError> {
        let mut s = self.lock();
        if s.migrations.busy(name) {
            return Err(ApiError::new(
                axum::http::StatusCode::CONFLICT,
                format!("the VM `{name}` is migrating"),
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
