//! `POST /api/v1/outgoing`, `DELETE /api/v1/outgoing/{migration}` and
//! `PUT /api/v1/outgoing/{migration}/grant`: the engine's sender on a thread of its own, under
//! the policy the RMS names, cancellable until its commit point, its cap bounded by a grant
//! until it ends.
//!
//! Every event goes to the RMS; on a hand-over the guest leaves this host (its memory is
//! freed) and the report follows; on a failure or a cancel the guest keeps running here.
//! A `qemu` VM goes through [`super::qemu_out`] once the request is checked.

use std::net::SocketAddr;
use std::sync::Arc;

use livemig_api::{LocalState, MigrationNo, OutgoingRequest, Role};
use livemig_engine::{Control, Guest, Key, SenderConfig};
use livemig_policy::{Event, PolicyKind, Timeouts};

use super::{Entry, MigrationError};
use crate::agent::{Agent, GuestHandle};

/// The engine's page size: the only one a `sim` guest migrates with.
const PAGE: f64 = livemig_engine::wire::PAGE_SIZE as f64;

/// Checks the request, builds the policy and starts the migration; it runs on.
pub fn start(agent: &Arc<Agent>, req: OutgoingRequest) -> Result<(), MigrationError> {
    let key = Key::from_hex(&req.key.0).ok_or(MigrationError::BadKey)?;
    let to: SocketAddr = req
        .data_address
        .parse()
        .map_err(|_| MigrationError::Address(req.data_address.clone()))?;
    let kind: PolicyKind = req
        .policy
        .parse()
        .map_err(|_| MigrationError::Policy(req.policy.clone()))?;
    // The RMS's budget grant at the start bounds round 1 already (a later grant replaces it).
    if req
        .grant_bytes_per_s
        .is_some_and(|g| !(g.is_finite() && g > 0.0))
    {
        return Err(MigrationError::BadGrant);
    }
    if agent.is_stopping() {
        return Err(MigrationError::Stopping);
    }
    let connector = match req.tls {
        false => None,
        true => {
            let issued = agent.tls().issued().ok_or(MigrationError::NoIdentity)?;
            let client = livemig_tls::client_config(&issued.ca_pem, Some(&issued.identity))
                .map_err(|e| MigrationError::Tls(super::incoming::error_chain(&e)))?;
            Some(livemig_tls::Connector::new(client))
        }
    };
    // The destination's certificate names its data IP (an IP SAN).
    let server_name = to.ip().to_string();
    let cfg = agent.migrator().clone();
    let control = Control::new();
    control.grant(req.grant_bytes_per_s);
    let (handle, memory, workload) = {
        let s = agent.lock();
        let vm = s
            .vms
            .get(&req.vm)
            .ok_or_else(|| MigrationError::NoVm(req.vm.clone()))?;
        (vm.guest.clone(), vm.memory_bytes, vm.workload.clone())
    };
    let guest = match handle {
        GuestHandle::Sim(g) => g,
        GuestHandle::Qemu(vm) => {
            return super::qemu_out::start(
                agent,
                super::qemu_out::Request {
                    req,
                    key,
                    to,
                    kind,
                    connector,
                    server_name,
                    control,
                    vm,
                    memory,
                    workload,
                },
            )
        }
    };
    // A small guest stops at an eighth of its memory (the RMS's budget plans by the same rule).
    let spec = req.settings.clone().unwrap_or_default().for_guest(memory);
    let policy_cfg = spec
        .resolve(memory as f64)
        .map_err(|e| MigrationError::Settings(super::incoming::error_chain(&e)))?;
    if policy_cfg.page_size != PAGE {
        return Err(MigrationError::Settings(format!(
            "invalid policy settings: the engine moves {PAGE}-byte pages; page_size must be {PAGE}"
        )));
    }
    let send_cfg = SenderConfig {
        stop_remaining: policy_cfg.stop_remaining,
        sample_s: cfg.sample_s,
        workload: Some(workload),
        timeout: cfg.timeout,
        max_pause: cfg.max_pause,
        resolve_timeout: cfg.resolve_timeout,
        timeouts: Timeouts::default(),
        ..SenderConfig::default()
    };
    send_cfg
        .check(policy_cfg.min_bandwidth)
        .map_err(|e| MigrationError::Settings(format!("invalid sender settings: {e}")))?;
    let mut policy = kind
        .build(policy_cfg)
        .map_err(|e| MigrationError::Settings(format!("invalid policy settings: {e}")))?;
    {
        let mut s = agent.lock();
        if s.migrations.contains(req.migration) {
            return Err(MigrationError::Known(req.migration));
        }
        if !s.vms.contains_key(&req.vm) {
            return Err(MigrationError::NoVm(req.vm.clone()));
        }
        if s.migrations.busy(&req.vm) {
            return Err(MigrationError::Busy(req.vm.clone()));
        }
        let mut e = Entry::new(Role::Source, &req.vm);
        e.control = Some(control.clone());
        e.tls = req.tls;
        s.migrations.insert(req.migration, e);
    }
    let a = Arc::clone(agent);
    let id = req.migration;
    let vm = req.vm.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("outgoing-{id}"))
        .spawn(move || {
            let observe = &mut |e: &Event| a.observe(id, e);
            let not_connected = |e: &dyn std::error::Error| Ended {
                in_doubt: false,
                session: None,
                why: super::incoming::error_chain(e),
                engine_said: false,
            };
            type Stream<'a> = Box<dyn livemig_engine::net::Transport + 'a>;
            type BoxedRedial<'a> = Box<livemig_engine::Redial<'a>>;
            let connected: Result<(Stream<'_>, BoxedRedial<'_>), Ended> = match &connector {
                None => livemig_engine::net::connect(to, cfg.timeout)
                    .map(|stream| {
                        let redial: BoxedRedial<'_> = Box::new(move || {
                            livemig_engine::net::connect(to, cfg.timeout)
                                .map(livemig_engine::net::boxed)
                        });
                        (livemig_engine::net::boxed(stream), redial)
                    })
                    .map_err(|e| not_connected(&e)),
                Some(tls) => tls
                    .connect(to, &server_name, cfg.timeout)
                    .map(|stream| {
                        tracing::info!(migration = id, cipher = ?stream.cipher_suite(), "the data stream runs over TLS");
                        let redial: BoxedRedial<'_> =
                            Box::new(tls.redial(to, &server_name, cfg.timeout));
                        (livemig_engine::net::boxed(stream), redial)
                    })
                    .map_err(|e| not_connected(&e)),
            };
            let result = connected.and_then(|(mut stream, mut redial)| {
                livemig_engine::migrate_measured(
                    &mut stream,
                    &key,
                    guest.as_ref(),
                    policy.as_mut(),
                    &send_cfg,
                    &control,
                    observe,
                    Some(&mut *redial),
                )
                .map(|(report, _)| report)
                .map_err(|e| Ended {
                    in_doubt: e.in_doubt(),
                    session: e.session().map(str::to_string),
                    why: super::incoming::error_chain(&e),
                    engine_said: true,
                })
            });
            match result {
                Ok(report) => {
                    // A failed audit: the destination runs pages that differ from this paused
                    // copy (the report and the `audited` event name them); keep it as evidence.
                    if let (Some(audit), Some(dir)) = (
                        report.summary.audit.as_ref().filter(|a| !a.passed),
                        &cfg.hold_dir,
                    ) {
                        let why = format!(
                            "the audit after the resume found {} page(s) of the paused source that differ from what the destination runs: {:?}",
                            audit.differing, audit.differing_pages
                        );
                        let session = format!("audit{}", livemig_engine::hold::now_unix_s());
                        let digest = guest.memory().digest();
                        match super::hold::save(dir, livemig_engine::hold::AUDIT_ROLE, &session, Some(to.to_string()), &guest, digest, &why) {
                            Ok(p) => tracing::error!(migration = id, path = %p.display(), "the audit failed: the paused source copy is saved"),
                            Err(e) => tracing::error!(migration = id, error = %super::incoming::error_chain(&e), "the audit failed and the paused source copy cannot be saved"),
                        }
                    }
                    drop(guest);
                    // Handed over: the destination runs the guest; this copy is destroyed.
                    let gone = {
                        let mut s = a.lock();
                        let _ = s.book.remove_vm(&vm);
                        s.migrations.finish(id, LocalState::HandedOver);
                        s.vms.remove(&vm)
                    };
                    drop(gone);
                    tracing::info!(migration = id, %vm, "handed over; the source's copy is destroyed");
                    a.report(id, report);
                }
                Err(Ended {
                    in_doubt,
                    session,
                    why,
                    engine_said,
                }) => {
                    if in_doubt {
                        // The guest stays paused here until someone settles the hand-over.
                        if let Some(dir) = &cfg.hold_dir {
                            let session = session.as_deref().unwrap_or("unknown");
                            let digest = guest.memory().digest();
                            match super::hold::save(dir, "source", session, Some(to.to_string()), &guest, digest, &why) {
                                Ok(p) => tracing::warn!(migration = id, path = %p.display(), "outcome unknown: the paused guest is saved"),
                                Err(e) => tracing::error!(migration = id, error = %super::incoming::error_chain(&e), "outcome unknown and the paused guest cannot be saved; it is kept in memory only"),
                            }
                        }
                    }
                    drop(guest);
                    if !engine_said {
                        // The engine never ran: tell the RMS as it would have.
                        a.observe(
                            id,
                            &Event::Failed {
                                error: why.clone(),
                                outcome: "failed_source_running".into(),
                            },
                        );
                    }
                    let state = if control.is_cancelled() && !in_doubt {
                        LocalState::Cancelled
                    } else {
                        LocalState::Failed
                    };
                    // In doubt the guest stays paused here, for an operator to settle.
                    {
                        let mut s = a.lock();
                        if let Some(m) = s.migrations.get_mut(id) {
                            m.in_doubt = in_doubt;
                        }
                        s.migrations.finish(id, state);
                    }
                    tracing::warn!(migration = id, %vm, in_doubt, error = %why, "outgoing migration ended without a hand-over");
                }
            }
        });
    if let Err(e) = spawned {
        agent
            .lock()
            .migrations
            .finish(req.migration, LocalState::Failed);
        return Err(MigrationError::Thread(e));
    }
    tracing::info!(migration = id, vm = %req.vm, target = %req.target, to = %to, policy = %req.policy, "outgoing migration starts");
    Ok(())
}

/// How a migration ended without a hand-over.
struct Ended {
    in_doubt: bool,
    session: Option<String>,
    why: String,
    /// Whether the engine ran (it then told the observer itself).
    engine_said: bool,
}

/// Bounds the cap of outgoing migration `id` by `bytes_per_s` (`None`: lifts the bound).
/// The migration's executor (the engine's sender or the QEMU governor) reads the grant from
/// the same [`Control`] and bounds every round's cap, and the stop-and-copy's, by it.
pub fn grant(
    agent: &Agent,
    id: MigrationNo,
    bytes_per_s: Option<f64>,
) -> Result<(), MigrationError> {
    if !(livemig_api::GrantRequest { bytes_per_s }).is_valid() {
        return Err(MigrationError::BadGrant);
    }
    let s = agent.lock();
    let e = s
        .migrations
        .get(id)
        .ok_or(MigrationError::UnknownOutgoing(id))?;
    if e.role != Role::Source {
        return Err(MigrationError::NotOutgoing(id));
    }
    match (&e.control, e.state) {
        (Some(c), LocalState::Migrating) => {
            c.grant(bytes_per_s);
            tracing::info!(migration = id, ?bytes_per_s, "grant set");
            Ok(())
        }
        _ => Err(MigrationError::Ended(id)),
    }
}

/// Asks migration `id` to stop before its commit point.
pub fn cancel(agent: &Agent, id: MigrationNo) -> Result<(), MigrationError> {
    let s = agent.lock();
    let e = s
        .migrations
        .get(id)
        .filter(|e| e.role == Role::Source)
        .ok_or(MigrationError::UnknownOutgoing(id))?;
    if e.committed {
        return Err(MigrationError::Committed(id));
    }
    match (&e.control, e.state) {
        (Some(c), LocalState::Migrating) => {
            c.cancel();
            tracing::info!(migration = id, "cancel asked");
            Ok(())
        }
        _ => Err(MigrationError::Ended(id)),
    }
}
