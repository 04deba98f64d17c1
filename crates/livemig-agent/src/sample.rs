//! `POST /api/v1/vms/{name}/sample`: a dirty-log sample of a VM that sends nothing, the VM held
//! for its length exactly as a migration holds it.
//!
//! - `sim`: the guest's dirty log is cleared, then read at five points, `seconds·i/5` (the
//!   shape of the engine's pre-round-1 sample): distinct dirty pages × the page size.
//! - `qemu`: QEMU's `calc-dirty-rate` for `ceil(seconds)` whole seconds (1 to 10) over the VM's
//!   QMP socket: one point.
//!
//! Clearing a guest's dirty log while a migration tracks it would lose dirty pages and corrupt
//! the destination's copy; QEMU serves one QMP client at a time. So a sample marks its VM busy
//! in the migration table ([`crate::migrator::Table::start_sample`]): no migration, delete or
//! second sample of it starts meanwhile, and a sample of a migrating VM is refused. The mark is
//! a guard, dropped on every path (answer, error, the agent's stop). The sample runs in a task
//! of its own, so a request given up by its client does not cut a QEMU measurement short (its
//! QMP session and the mark end together); the agent's stop ends it at once with an error.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use livemig_api::rms_to_agent::MAX_SAMPLE_S;
use livemig_api::{SampleRequest, VmSample};
use livemig_engine::{Guest, SimGuest};
use livemig_http::ApiError;
use livemig_policy::DirtySample;

use crate::agent::{Agent, GuestHandle};
use crate::chain::error_chain;
use crate::qemu::QemuVm;

/// Points of a `sim` sample.
pub const POINTS: u32 = 5;
/// The engine's page size (the `sim` guests' only one).
const PAGE: u64 = livemig_engine::wire::PAGE_SIZE as u64;

/// Why a sample was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    #[error("seconds must be a finite number from 0.2 to 10")]
    Seconds,
    #[error("no VM named `{0}` runs here")]
    NoVm(String),
    #[error("the VM `{0}` is migrating or being sampled")]
    Busy(String),
    #[error("the agent is stopping")]
    Stopping,
    #[error("cannot reach QEMU's QMP socket: {0}")]
    Qmp(String),
    #[error("QEMU's dirty-rate measurement failed: {0}")]
    Measure(String),
    #[error("the sample's task ended abnormally: {0}")]
    Task(String),
}

impl From<SampleError> for ApiError {
    fn from(e: SampleError) -> ApiError {
        let status = match e {
            SampleError::Seconds => StatusCode::UNPROCESSABLE_ENTITY,
            SampleError::NoVm(_) => StatusCode::NOT_FOUND,
            SampleError::Busy(_) => StatusCode::CONFLICT,
            SampleError::Stopping | SampleError::Qmp(_) | SampleError::Measure(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            SampleError::Task(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

/// A VM marked busy for a sample; the mark goes with it.
struct Hold {
    agent: Arc<Agent>,
    vm: String,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.agent.lock().migrations.end_sample(&self.vm);
    }
}

/// Checks the request, holds the VM and samples it in a task of its own; the answer once it
/// has ended (or the agent stops).
pub async fn take(
    agent: &Arc<Agent>,
    vm: String,
    req: SampleRequest,
) -> Result<VmSample, SampleError> {
    if !req.is_valid() {
        return Err(SampleError::Seconds);
    }
    if agent.is_stopping() {
        return Err(SampleError::Stopping);
    }
    let (guest, hold) = {
        let mut s = agent.lock();
        let guest = s
            .vms
            .get(&vm)
            .ok_or_else(|| SampleError::NoVm(vm.clone()))?
            .guest
            .clone();
        if !s.migrations.start_sample(&vm) {
            return Err(SampleError::Busy(vm));
        }
        let hold = Hold {
            agent: Arc::clone(agent),
            vm: vm.clone(),
        };
        (guest, hold)
    };
    let stop = agent.stop_token().clone();
    let task = tokio::spawn(async move {
        let sample = tokio::select! {
            biased;
            _ = stop.cancelled() => Err(SampleError::Stopping),
            r = run(&guest, req.seconds) => r,
        };
        drop(hold);
        sample
    });
    let sample = task.await.map_err(|e| SampleError::Task(e.to_string()))??;
    tracing::info!(%vm, points = sample.points.len(), "sampled the dirty log");
    Ok(VmSample { vm, sample })
}

async fn run(guest: &GuestHandle, seconds: f64) -> Result<DirtySample, SampleError> {
    match guest {
        GuestHandle::Sim(g) => Ok(sim(g, seconds).await),
        GuestHandle::Qemu(q) => qemu(q, seconds).await,
    }
}

/// Clears the log, then reads it at `seconds·i/5` (tokio sleeps; reading and clearing are a
/// pass over the dirty bitmap, no wait).
async fn sim(guest: &SimGuest, seconds: f64) -> DirtySample {
    guest.fetch_and_clear_dirty();
    let t0 = tokio::time::Instant::now();
    let mut sample = DirtySample::default();
    for i in 1..=POINTS {
        let at = seconds * f64::from(i) / f64::from(POINTS);
        tokio::time::sleep_until(t0 + Duration::from_secs_f64(at)).await;
        let elapsed = t0.elapsed().as_secs_f64();
        sample
            .points
            .push((elapsed, (guest.dirty_pages() * PAGE) as f64));
    }
    sample
}

/// Whole seconds of QEMU's measurement for `seconds`: `ceil`, 1 to 10.
pub fn qemu_period(seconds: f64) -> Duration {
    Duration::from_secs(seconds.ceil().clamp(1.0, MAX_SAMPLE_S) as u64)
}

/// QEMU's `calc-dirty-rate` over a QMP session of its own (bounded by `livemig_qemu`'s wait).
async fn qemu(vm: &QemuVm, seconds: f64) -> Result<DirtySample, SampleError> {
    let mut qmp = vm
        .qmp()
        .await
        .map_err(|e| SampleError::Qmp(error_chain(&e)))?;
    let m = livemig_qemu::dirty::measure(&mut qmp, qemu_period(seconds))
        .await
        .map_err(|e| SampleError::Measure(error_chain(&e)))?;
    Ok(m.sample())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_measures_whole_seconds_from_one_to_ten() {
        assert_eq!(qemu_period(0.2), Duration::from_secs(1));
        assert_eq!(qemu_period(1.0), Duration::from_secs(1));
        assert_eq!(qemu_period(1.5), Duration::from_secs(2));
        assert_eq!(qemu_period(10.0), Duration::from_secs(10));
    }

    #[test]
    fn statuses() {
        let s = |e| ApiError::from(e).status;
        assert_eq!(s(SampleError::Seconds), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(s(SampleError::NoVm("a".into())), StatusCode::NOT_FOUND);
        assert_eq!(s(SampleError::Busy("a".into())), StatusCode::CONFLICT);
        assert_eq!(s(SampleError::Stopping), StatusCode::SERVICE_UNAVAILABLE);
    }
}
