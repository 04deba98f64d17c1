//! Carrying out the orchestrator's actions against the agents. Each job runs as its own task;
//! what an agent answers comes back to the driver as an input.
//!
//! Starting a migration is two calls: the destination first (`POST /api/v1/incoming` with the
//! reservation and the migration's fresh key; it answers where it listens), then the source
//! (`POST /api/v1/outgoing` with that address and the same key). When either refuses, the
//! source never started and the guest runs there: the driver hears `failed` with the outcome
//! `failed_source_running`. When the source's answer is lost, whether it started is not
//! known: the outcome says so and the migration goes `unknown` until an agent's report or an
//! operator settles it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use livemig_api::{IncomingRequest, OutgoingRequest, VmInfo};
use livemig_policy::event::Event;
use livemig_rms::orchestrator::Answer;
use livemig_rms::{Effect, Input, MigrationId, VmKind};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::client::AgentClient;
use crate::driver::{Driver, Job};
use crate::grants::Grants;
use crate::keys;

/// The `outcome` of a synthesised `failed` event when the source's start was not confirmed.
pub const OUTCOME_START_UNCONFIRMED: &str = "start_unconfirmed";

/// What the dispatcher counts (for `/metrics`).
#[derive(Debug, Default)]
pub struct ActionCounters {
    pub asks: AtomicU64,
    pub starts: AtomicU64,
    pub start_failures: AtomicU64,
    pub cancels: AtomicU64,
    pub releases: AtomicU64,
    pub flags: AtomicU64,
    pub agent_errors: AtomicU64,
    /// Agents that registered a VM the RMS places on another host.
    pub location_conflicts: AtomicU64,
    pub samples: AtomicU64,
    pub grants: AtomicU64,
}

/// Runs jobs until `shutdown`; every task is joined (or aborted after it) before returning.
pub async fn dispatch(
    mut jobs: UnboundedReceiver<Job>,
    driver: Driver,
    client: AgentClient,
    counters: Arc<ActionCounters>,
    tls: bool,
    shutdown: CancellationToken,
) {
    let mut tasks = JoinSet::new();
    let grants = Grants::default();
    loop {
        while let Some(r) = tasks.try_join_next() {
            if let Err(e) = r {
                tracing::error!(error = %e, "an action task failed");
            }
        }
        let job = tokio::select! {
            _ = shutdown.cancelled() => break,
            j = jobs.recv() => match j {
                Some(j) => j,
                None => break,
            },
        };
        let (driver, client, counters) = (driver.clone(), client.clone(), Arc::clone(&counters));
        // Taken here, in the orchestrator's order, not in the task.
        let ticket = match &job.effect {
            Effect::Grant { migration, .. } => grants.ticket(*migration),
            _ => 0,
        };
        let grants = grants.clone();
        tasks.spawn(async move {
            carry_out(job, &driver, &client, &counters, &grants, ticket, tls).await
        });
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
}

async fn carry_out(
    job: Job,
    driver: &Driver,
    client: &AgentClient,
    counters: &ActionCounters,
    grants: &Grants,
    ticket: u64,
    tls: bool,
) {
    match job.effect.clone() {
        Effect::AskCapacity {
            migration,
            host,
            memory_bytes,
            ..
        } => {
            counters.asks.fetch_add(1, Ordering::Relaxed);
            let answer = match job.address(&host) {
                None => Answer::Refused {
                    reason: format!("no address is known for `{host}`"),
                },
                Some(a) => match client.ask(a, memory_bytes).await {
                    Ok(answer) => answer,
                    Err(e) => {
                        counters.agent_errors.fetch_add(1, Ordering::Relaxed);
                        Answer::Refused {
                            reason: format!("no usable answer: {e}"),
                        }
                    }
                },
            };
            feed(
                driver,
                Input::Answer {
                    migration,
                    host,
                    answer,
                },
            )
            .await;
        }
        Effect::Release { host, reservation } => {
            counters.releases.fetch_add(1, Ordering::Relaxed);
            if let Some(a) = job.address(&host) {
                if let Err(e) = client.release(a, &reservation).await {
                    // It expires on its own; nothing else depends on it.
                    tracing::info!(%host, %reservation, error = %e, "could not release a reservation (it expires by itself)");
                }
            }
        }
        Effect::Cancel { migration, host } => {
            counters.cancels.fetch_add(1, Ordering::Relaxed);
            match job.address(&host) {
                Some(a) => {
                    if let Err(e) = client.cancel(a, migration.0).await {
                        tracing::warn!(%migration, %host, error = %e, "the source did not take the cancel");
                    }
                }
                None => tracing::warn!(%migration, %host, "no address to cancel at"),
            }
        }
        Effect::StartMigration { .. } => {
            counters.starts.fetch_add(1, Ordering::Relaxed);
            start(job, driver, client, counters, tls).await;
        }
        Effect::Sample {
            migration,
            host,
            vm,
            seconds,
        } => {
            counters.samples.fetch_add(1, Ordering::Relaxed);
            let (sample, error) = match job.address(&host) {
                None => (None, Some(format!("no address is known for `{host}`"))),
                Some(a) => match client.sample(a, &vm, seconds).await {
                    Ok(s) => (Some(s), None),
                    Err(e) => {
                        counters.agent_errors.fetch_add(1, Ordering::Relaxed);
                        (None, Some(e.to_string()))
                    }
                },
            };
            feed(
                driver,
                Input::Sampled {
                    migration,
                    host,
                    sample,
                    error,
                },
            )
            .await;
        }
        Effect::Grant {
            migration,
            host,
            bytes_per_s,
        } => {
            counters.grants.fetch_add(1, Ordering::Relaxed);
            if let Some(a) = job.address(&host) {
                grants
                    .send(client, driver, a, migration, ticket, bytes_per_s)
                    .await;
            }
        }
        Effect::SetLocation { vm, host } => {
            tracing::info!(%vm, %host, "the VM runs on its new host");
        }
        Effect::Flag { migration, reason } => {
            counters.flags.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%migration, %reason, "a migration needs an operator (livemig migration show; docs/operations.md)");
        }
        Effect::Persist(_) => {}
    }
}

/// `tls`: the RMS has a CA, so both agents carry the data stream over mutual TLS.
async fn start(
    job: Job,
    driver: &Driver,
    client: &AgentClient,
    counters: &ActionCounters,
    tls: bool,
) {
    let Effect::StartMigration {
        migration,
        vm,
        source,
        target,
        reservation,
        policy,
        settings,
        grant_bytes_per_s,
        ..
    } = job.effect.clone()
    else {
        return;
    };
    let fail = |error: String, outcome: &str| Input::AgentEvent {
        migration,
        host: source.clone(),
        event: Event::Failed {
            error,
            outcome: outcome.to_string(),
        },
    };
    let source_running = livemig_rms::orchestrator::OUTCOME_SOURCE_RUNNING;
    let (Some(src_addr), Some(dst_addr), Some(record)) =
        (job.address(&source), job.address(&target), job.vm.as_ref())
    else {
        counters.start_failures.fetch_add(1, Ordering::Relaxed);
        let e = "the RMS no longer knows the source, the destination or the VM".to_string();
        feed(driver, fail(e, source_running)).await;
        return;
    };
    let key = match keys::generate() {
        Ok(k) => k,
        Err(e) => {
            counters.start_failures.fetch_add(1, Ordering::Relaxed);
            feed(driver, fail(e.to_string(), source_running)).await;
            return;
        }
    };
    let incoming = IncomingRequest {
        migration: migration.0,
        reservation,
        vm: VmInfo {
            name: vm.clone(),
            memory_bytes: record.memory_bytes,
            workload: record.workload.clone(),
            kind: match record.kind {
                VmKind::Sim => livemig_api::VmKind::Sim,
                VmKind::Qemu => livemig_api::VmKind::Qemu,
            },
            content: None,
        },
        key: key.clone(),
        tls,
    };
    let ready = match client.incoming(dst_addr, &incoming).await {
        Ok(r) => r,
        Err(e) => {
            counters.start_failures.fetch_add(1, Ordering::Relaxed);
            let error = format!("the destination `{target}` could not get ready: {e}");
            feed(driver, fail(error, source_running)).await;
            return;
        }
    };
    let outgoing = OutgoingRequest {
        migration: migration.0,
        vm,
        target: target.clone(),
        data_address: ready.data_address,
        key,
        policy,
        settings: settings.map(|s| *s),
        tls,
        grant_bytes_per_s,
    };
    match client.outgoing(src_addr, &outgoing).await {
        Ok(()) => tracing::info!(%migration, %source, %target, "the source migrates"),
        Err(e) => {
            counters.start_failures.fetch_add(1, Ordering::Relaxed);
            let outcome = if e.is_refusal() {
                source_running
            } else {
                OUTCOME_START_UNCONFIRMED
            };
            let error = format!("the source `{source}` did not start: {e}");
            feed(driver, fail(error, outcome)).await;
        }
    }
}

/// Hands an agent's answer to the driver; a refusal is logged (the record did not allow it).
async fn feed(driver: &Driver, input: Input) {
    let what = format!("{input:?}").chars().take(120).collect::<String>();
    if let Err(e) = driver.input(input).await {
        tracing::warn!(error = %e, input = %what, "the orchestrator refused an agent's answer");
    }
}

/// A migration id from a path segment.
pub fn parse_id(s: &str) -> Option<MigrationId> {
    s.parse::<u64>().ok().map(MigrationId)
}
