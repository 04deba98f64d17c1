//! `POST /api/v1/incoming`: a listener keyed to one migration; the guest it receives becomes
//! a VM of this host, in the memory its reservation held.
//!
//! The reservation is pinned (it no longer expires) while its migration may still arrive;
//! the migration's end claims it for the VM or releases it. Each listener proves its own
//! migration's key, so a stream keyed for another migration is refused by the handshake.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use livemig_api::{IncomingReady, IncomingRequest, LocalState, Role, VmKind};
use livemig_engine::sender::hex;
use livemig_engine::serve::{ServeConfig, ServeEvent, Served};
use livemig_engine::{Guest, Key, ReceiverConfig};
use livemig_policy::Event;

use super::{Entry, MigrationError};
use crate::agent::{check_vm_name, Agent, GuestHandle, Vm};

/// What [`reserve`] set up for one incoming migration: its listener, bound and keyed, and
/// its pinned reservation in the table.
pub(super) struct Slot {
    pub key: Key,
    pub acceptor: Option<livemig_tls::Acceptor>,
    pub listener: TcpListener,
    pub data_address: String,
    pub stop: Arc<AtomicBool>,
    /// The reservation's memory (the VM's).
    pub memory: u64,
}

/// Checks the request (whatever the VM's kind), builds the TLS acceptor when asked, binds the
/// listener, pins the reservation and enters the migration in the table.
pub(super) fn reserve(agent: &Agent, req: &IncomingRequest) -> Result<Slot, MigrationError> {
    let key = Key::from_hex(&req.key.0).ok_or(MigrationError::BadKey)?;
    check_vm_name(&req.vm.name).map_err(|e| MigrationError::Vm(e.message))?;
    if agent.is_stopping() {
        return Err(MigrationError::Stopping);
    }
    let acceptor = match req.tls {
        false => None,
        true => {
            let issued = agent.tls().issued().ok_or(MigrationError::NoIdentity)?;
            let server = livemig_tls::server_config(
                &issued.identity.cert_chain_pem,
                &issued.identity.key,
                Some(&issued.ca_pem),
            )
            .map_err(|e| MigrationError::Tls(error_chain(&e)))?;
            Some(livemig_tls::Acceptor::new(server))
        }
    };
    let cfg = agent.migrator();
    let listener = TcpListener::bind(SocketAddr::new(cfg.data_host, 0)).map_err(|source| {
        MigrationError::Listen {
            addr: cfg.data_host.to_string(),
            source,
        }
    })?;
    let data_address = listener
        .local_addr()
        .map_err(|source| MigrationError::Listen {
            addr: cfg.data_host.to_string(),
            source,
        })?
        .to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let memory = {
        let now = agent.now();
        let mut s = agent.lock();
        if s.migrations.contains(req.migration) {
            return Err(MigrationError::Known(req.migration));
        }
        // The book knows a VM being started (its guest still filling) before `vms` does.
        if s.vms.contains_key(&req.vm.name)
            || s.book.vms().contains_key(&req.vm.name)
            || s.migrations.busy(&req.vm.name)
        {
            return Err(MigrationError::VmHere(req.vm.name.clone()));
        }
        let held = s
            .book
            .reservation(now, &req.reservation)
            .map(|r| r.memory_bytes)
            .ok_or_else(|| {
                crate::capacity::CapacityError::UnknownReservation(req.reservation.clone())
            })?;
        if held != req.vm.memory_bytes {
            return Err(MigrationError::SizeMismatch {
                id: req.reservation.clone(),
                held,
                asked: req.vm.memory_bytes,
            });
        }
        s.book.pin(now, &req.reservation)?;
        let mut e = Entry::new(Role::Destination, &req.vm.name);
        e.stop = Some(Arc::clone(&stop));
        e.reservation = Some(req.reservation.clone());
        e.tls = req.tls;
        s.migrations.insert(req.migration, e);
        held
    };
    Ok(Slot {
        key,
        acceptor,
        listener,
        data_address,
        stop,
        memory,
    })
}

/// Checks the request, pins its reservation, binds the listener and starts serving it on a
/// thread of its own; returns where the source must connect.
pub fn prepare(agent: &Arc<Agent>, req: IncomingRequest) -> Result<IncomingReady, MigrationError> {
    if req.vm.kind != VmKind::Sim {
        return Err(MigrationError::Kind);
    }
    let Slot {
        key,
        acceptor,
        listener,
        data_address,
        stop,
        memory,
    } = reserve(agent, &req)?;
    let cfg = agent.migrator().clone();
    let serve_cfg = ServeConfig {
        receiver: ReceiverConfig {
            // The guest must fit the memory reserved for it.
            max_memory: memory,
            handshake_deadline: cfg.timeout,
            frame_deadline: cfg.timeout,
            ..ReceiverConfig::default()
        },
        timeout: cfg.timeout,
        accept_timeout: cfg.accept_timeout,
        hold_timeout: cfg.hold_timeout,
        ..ServeConfig::default()
    };
    let a = Arc::clone(agent);
    let id = req.migration;
    let vm = req.vm.clone();
    let reservation = req.reservation.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("incoming-{id}"))
        .spawn(move || {
            let log = |e: &ServeEvent<'_>| log_event(&a, id, e);
            let served = match &acceptor {
                Some(tls) => {
                    livemig_engine::serve::serve_with(&listener, &key, &serve_cfg, &stop, &log, tls)
                }
                None => livemig_engine::serve(&listener, &key, &serve_cfg, &stop, &log),
            };
            drop(listener);
            land(&a, id, vm, &reservation, served);
        });
    if let Err(e) = spawned {
        let mut s = agent.lock();
        let _ = s.book.release(&req.reservation);
        s.migrations.finish(req.migration, LocalState::Failed);
        return Err(MigrationError::Thread(e));
    }
    tracing::info!(migration = id, vm = %req.vm.name, %data_address, tls = req.tls, "waiting for an incoming migration");
    Ok(IncomingReady { data_address })
}

/// The accept loop's events, told to the RMS and counted.
fn log_event(agent: &Agent, id: u64, e: &ServeEvent<'_>) {
    let event = match e {
        ServeEvent::Claimed { peer } => Event::Accepted {
            peer: peer.to_string(),
        },
        ServeEvent::Received { round, pages, .. } => Event::Received {
            round: *round,
            pages: *pages,
        },
        ServeEvent::Refused { peer, error, .. } => {
            tracing::warn!(migration = id, %peer, error = %error, "refused a data stream");
            Event::Discarded {
                peer: peer.to_string(),
                reason: format!("refused: {error}"),
            }
        }
        ServeEvent::TooMany { peer } => Event::Discarded {
            peer: peer.to_string(),
            reason: "closed: too many connections at once".into(),
        },
        ServeEvent::Holding { reason } => {
            if let Some(m) = agent.lock().migrations.get_mut(id) {
                m.state = LocalState::Held;
            }
            Event::Held {
                reason: reason.to_string(),
            }
        }
        ServeEvent::Settled { status } => Event::Settled {
            status: format!("{status:?}"),
        },
        ServeEvent::Resuming { .. } => return,
    };
    agent.observe(id, &event);
}

/// An incoming migration failed (the guest runs on its source): its reservation is released,
/// its entry ends `failed`, the RMS is told.
pub(super) fn give_back(agent: &Agent, id: u64, reservation: &str, why: String) {
    {
        let mut s = agent.lock();
        let _ = s.book.release(reservation);
        s.migrations.finish(id, LocalState::Failed);
    }
    agent.observe(
        id,
        &Event::Failed {
            error: why,
            outcome: "failed_source_running".into(),
        },
    );
}

/// The migration ended: the guest becomes a VM here, or the reservation is given back, or a
/// held copy is kept.
fn land(
    agent: &Agent,
    id: u64,
    vm: livemig_api::VmInfo,
    reservation: &str,
    served: Result<Served, livemig_engine::ServeError>,
) {
    let failed = |why: String| {
        tracing::info!(migration = id, error = %why, "incoming migration failed; its reservation is released");
        give_back(agent, id, reservation, why);
    };
    match served {
        Ok(Served::Migrated(received)) => {
            let session = hex(&received.session);
            let now = agent.now();
            {
                let mut s = agent.lock();
                let claimed = s
                    .book
                    .claim(now, reservation, &vm.name)
                    .map(|_| ())
                    .or_else(|_| s.book.admit(now, &vm.name, received.guest.memory().bytes()));
                if let Err(e) = claimed {
                    // The guest runs here: keeping it matters more than the book's count.
                    tracing::error!(migration = id, error = %e, "the received guest does not fit the book; kept anyway");
                }
                s.vms.insert(
                    vm.name.clone(),
                    Vm {
                        memory_bytes: vm.memory_bytes,
                        workload: vm.workload.clone(),
                        guest: GuestHandle::Sim(Arc::new(received.guest)),
                    },
                );
                s.migrations.finish(id, LocalState::HandedOver);
            }
            tracing::info!(migration = id, vm = %vm.name, %session, "the migrated guest runs here");
            agent.observe(id, &Event::Resumed { session });
        }
        Ok(Served::Failed(e)) => failed(error_chain(&e)),
        Ok(Served::Unknown(held)) => {
            let mut reason = error_chain(&held.reason);
            if let Some(dir) = &agent.migrator().hold_dir {
                let session = hex(&held.session);
                match super::hold::save(
                    dir,
                    "destination",
                    &session,
                    None,
                    &held.guest,
                    held.digest,
                    &reason,
                ) {
                    Ok(p) => {
                        reason = format!("{reason}; the held copy is saved in {}", p.display())
                    }
                    Err(e) => {
                        tracing::error!(migration = id, error = %error_chain(&e), "cannot save the held copy; it is kept in memory only")
                    }
                }
            }
            {
                let mut s = agent.lock();
                if let Some(m) = s.migrations.get_mut(id) {
                    m.state = LocalState::Held;
                    m.stop = None;
                    // The reservation stays pinned: the held copy uses its memory.
                    m.held = Some(held);
                }
            }
            tracing::warn!(migration = id, %reason, "a verified copy is held until its source settles it");
            agent.observe(id, &Event::Held { reason });
        }
        Err(e) => failed(error_chain(&e)),
    }
}

pub use crate::chain::error_chain;
