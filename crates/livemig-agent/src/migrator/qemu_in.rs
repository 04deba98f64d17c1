//! `POST /api/v1/incoming` for a `qemu` VM: the destination QEMU starts with `-incoming` on a
//! UNIX socket in the VM's directory (`in.sock`), and the same keyed per-migration TCP
//! listener as for a simulated guest waits for the source (TLS first when asked). Once a
//! connection proves the migration's key ([`super::relay`]), its bytes are relayed into
//! QEMU's socket; other connections are refused (a `discarded` event) and the listener waits
//! on, until its accept timeout.
//!
//! When the source closes the stream, QEMU's socket is closed too and QEMU's status decides:
//! `running` within [`DEST_WAIT`] → the VM is registered here (the reservation becomes its
//! memory), `resumed` goes to the RMS and the `R` verdict to the source; anything else → QEMU
//! is killed, the reservation released, `failed` goes to the RMS and `F` to the source (which
//! may then run the guest again). A stopping agent, a silent stream ([`IDLE`]) or a failed
//! relay kill the destination QEMU likewise: the guest never runs on two hosts.

use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use livemig_api::{IncomingReady, IncomingRequest, LocalState, VmInfo};
use livemig_engine::net::Transport;
use livemig_engine::Key;
use livemig_policy::Event;
use livemig_qemu::types::StatusInfo;

use super::incoming::{error_chain, reserve, Slot};
use super::relay::{self, Verdict};
use super::MigrationError;
use crate::agent::{Agent, GuestHandle, Vm};
use crate::qemu::{vm_dir, QemuVm};

/// How long the destination QEMU may take to run once the stream ended.
pub const DEST_WAIT: Duration = Duration::from_secs(30);
/// A relayed stream silent this long is given up (QEMU sends continuously once it started;
/// the source's dirty-rate sample and setup come before).
pub const IDLE: Duration = Duration::from_secs(60);
/// How long a killed destination QEMU may take to be gone before `F` is sent.
pub const KILL_WAIT: Duration = Duration::from_secs(5);
/// The socket's read and write timeouts (polls: the deadlines decide).
const POLL: Duration = Duration::from_millis(250);

/// Checks the request, pins the reservation, starts the destination QEMU, binds the keyed
/// listener and relays on a thread of its own; returns where the source must connect.
pub async fn prepare(
    agent: &Arc<Agent>,
    req: IncomingRequest,
) -> Result<IncomingReady, MigrationError> {
    crate::qemu::memory_arg(req.vm.memory_bytes)?;
    crate::qemu::check_load(&req.vm.workload, req.vm.memory_bytes)?;
    let slot = reserve(agent, &req)?;
    let id = req.migration;
    let sock = vm_dir(&agent.qemu().state_dir, &req.vm.name).join("in.sock");
    let started = QemuVm::start(
        agent.qemu(),
        &req.vm.name,
        req.vm.memory_bytes,
        &req.vm.workload,
        Some(&sock),
    )
    .await;
    let q = match started {
        Ok(q) => Arc::new(q),
        Err(e) => {
            let mut s = agent.lock();
            let _ = s.book.release(&req.reservation);
            s.migrations.finish(id, LocalState::Failed);
            return Err(e.into());
        }
    };
    let data_address = slot.data_address.clone();
    let handle = tokio::runtime::Handle::current();
    let a = Arc::clone(agent);
    let vm = req.vm.clone();
    let reservation = req.reservation.clone();
    let qq = Arc::clone(&q);
    let spawned = std::thread::Builder::new()
        .name(format!("incoming-{id}"))
        .spawn(move || {
            let ended = receive(&a, id, &slot, &qq, &sock, &handle);
            let _ = std::fs::remove_file(&sock);
            land(&a, id, vm, &reservation, qq, ended, &handle);
        });
    if let Err(e) = spawned {
        q.kill();
        let mut s = agent.lock();
        let _ = s.book.release(&req.reservation);
        s.migrations.finish(id, LocalState::Failed);
        return Err(MigrationError::Thread(e));
    }
    tracing::info!(migration = id, vm = %req.vm.name, %data_address, tls = req.tls, "waiting for an incoming QEMU migration");
    Ok(IncomingReady { data_address })
}

type Stream = Box<dyn Transport + Send>;

/// Waits for the source, relays its stream into QEMU and answers the verdict; `Ok(session)`
/// when the destination QEMU runs the guest.
fn receive(
    agent: &Agent,
    id: u64,
    slot: &Slot,
    q: &QemuVm,
    sock: &Path,
    handle: &tokio::runtime::Handle,
) -> Result<String, String> {
    let cfg = agent.migrator().clone();
    let (mut stream, session) = accept_source(agent, id, slot, &cfg)?;
    let session_id = session.id(&slot.key);
    let mut local = UnixStream::connect(sock)
        .map_err(|e| format!("cannot reach the destination QEMU's socket: {e}"))?;
    local
        .set_write_timeout(Some(POLL))
        .and_then(|()| local.set_read_timeout(Some(POLL)))
        .map_err(|e| format!("the QEMU socket: {e}"))?;
    let copied = relay::copy(&mut stream, &mut local, IDLE, &slot.stop);
    // QEMU reads to the end of what it got: a truncated stream fails at once.
    drop(local);
    // `F` tells the source it may run the guest again: only once this QEMU is gone for sure.
    let verdict = |v: Verdict, stream: &mut Stream| {
        if v == Verdict::Failed && !q.kill_and_wait(KILL_WAIT) {
            tracing::error!(
                migration = id,
                "the destination QEMU does not die; no verdict is sent (the source stays paused)"
            );
            return;
        }
        let b = session.verdict(&slot.key, v);
        if let Err(e) = relay::write_full(stream, &b, cfg.timeout) {
            tracing::warn!(migration = id, error = %e, ?v, "cannot send the verdict to the source");
        }
        stream.close_write();
    };
    let bytes = match copied {
        Ok(n) => n,
        Err(e) => {
            verdict(Verdict::Failed, &mut stream);
            return Err(format!("the relay failed: {e}"));
        }
    };
    tracing::info!(
        migration = id,
        bytes,
        "the QEMU stream ended; waiting for QEMU to run"
    );
    if handle.block_on(wait_running(q, DEST_WAIT)) {
        verdict(Verdict::Resumed, &mut stream);
        Ok(session_id)
    } else {
        verdict(Verdict::Failed, &mut stream);
        Err(format!(
            "the destination QEMU did not run within {DEST_WAIT:?} after {bytes} bytes"
        ))
    }
}

/// Accepts connections until one proves the key (others are refused and reported), within
/// the accept timeout, unless stopped.
fn accept_source(
    agent: &Agent,
    id: u64,
    slot: &Slot,
    cfg: &super::MigratorConfig,
) -> Result<(Stream, relay::Session), String> {
    let listener: &TcpListener = &slot.listener;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("the listener: {e}"))?;
    let until = Instant::now() + cfg.accept_timeout;
    loop {
        if slot.stop.load(Ordering::Relaxed) {
            return Err("the agent is stopping".into());
        }
        if Instant::now() >= until {
            return Err(format!(
                "no source connected within {:?}",
                cfg.accept_timeout
            ));
        }
        let (sock, peer) = match listener.accept() {
            Ok(x) => x,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(e) => return Err(format!("accept failed: {e}")),
        };
        match handshake(sock, &slot.key, slot.acceptor.as_ref(), cfg.timeout) {
            Ok((stream, session)) => {
                agent.observe(
                    id,
                    &Event::Accepted {
                        peer: peer.to_string(),
                    },
                );
                return Ok((stream, session));
            }
            Err(e) => {
                tracing::warn!(migration = id, %peer, error = %e, "refused a data stream");
                agent.observe(
                    id,
                    &Event::Discarded {
                        peer: peer.to_string(),
                        reason: format!("refused: {e}"),
                    },
                );
            }
        }
    }
}

/// TLS (when asked) and the keyed handshake on one accepted connection.
fn handshake(
    sock: std::net::TcpStream,
    key: &Key,
    acceptor: Option<&livemig_tls::Acceptor>,
    timeout: Duration,
) -> Result<(Stream, relay::Session), String> {
    sock.set_nonblocking(false)
        .map_err(|e| format!("the socket: {e}"))?;
    livemig_engine::net::prepare(&sock, livemig_engine::net::poll(timeout))
        .map_err(|e| error_chain(&e))?;
    let mut stream: Stream = match acceptor {
        None => Box::new(sock),
        Some(tls) => Box::new(tls.accept(sock, timeout).map_err(|e| error_chain(&e))?),
    };
    let session = relay::accept(&mut stream, key, timeout).map_err(|e| e.to_string())?;
    Ok((stream, session))
}

/// Whether QEMU reports `running` within `wait` (it exits when its incoming load fails);
/// `wait` bounds the whole, QMP calls included.
async fn wait_running(q: &QemuVm, wait: Duration) -> bool {
    tokio::time::timeout(wait, poll_running(q, wait))
        .await
        .unwrap_or(false)
}

async fn poll_running(q: &QemuVm, wait: Duration) -> bool {
    let until = tokio::time::Instant::now() + wait;
    let mut qmp = None;
    while tokio::time::Instant::now() < until && q.is_alive() {
        if qmp.is_none() {
            qmp = q.qmp().await.ok();
        }
        if let Some(c) = qmp.as_mut() {
            match c.execute_as::<StatusInfo>("query-status", None).await {
                Ok(st) if st.running => return true,
                Ok(_) => {}
                Err(_) => qmp = None,
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// The guest runs here (the VM is registered, `resumed` told) or the copy is gone (the
/// reservation released, `failed` told).
fn land(
    agent: &Agent,
    id: u64,
    vm: VmInfo,
    reservation: &str,
    q: Arc<QemuVm>,
    ended: Result<String, String>,
    handle: &tokio::runtime::Handle,
) {
    match ended {
        Ok(session) => {
            let now = agent.now();
            {
                let mut s = agent.lock();
                let claimed = s
                    .book
                    .claim(now, reservation, &vm.name)
                    .map(|_| ())
                    .or_else(|_| s.book.admit(now, &vm.name, vm.memory_bytes));
                if let Err(e) = claimed {
                    tracing::error!(migration = id, error = %e, "the received guest does not fit the book; kept anyway");
                }
                s.vms.insert(
                    vm.name.clone(),
                    Vm {
                        memory_bytes: vm.memory_bytes,
                        workload: vm.workload.clone(),
                        guest: GuestHandle::Qemu(q),
                    },
                );
                s.migrations.finish(id, LocalState::HandedOver);
            }
            tracing::info!(migration = id, vm = %vm.name, %session, "the migrated QEMU guest runs here");
            agent.observe(id, &Event::Resumed { session });
        }
        Err(why) => {
            handle.block_on(q.destroy());
            tracing::info!(migration = id, error = %why, "incoming QEMU migration failed; its QEMU is gone and its reservation released");
            super::incoming::give_back(agent, id, reservation, why);
        }
    }
}
