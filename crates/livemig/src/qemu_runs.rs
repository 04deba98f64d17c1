//! Real QEMU migrations of the test guest for the bench commands (`qemu bench`, `qemu
//! oracle`): a fresh source and destination booted from the same image with the same load,
//! one governed migration, the heartbeat checked across it.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use livemig_policy::{PolicyConfig, PolicyKind, Timeouts};
use livemig_qemu::dirty;
use livemig_qemu::governor::{Governor, GovernorConfig, QemuReport};
use livemig_qemu::heartbeat;
use livemig_qemu::vm::{free_port, GuestImage, Vm, VmSpec};
use serde::Serialize;

use crate::args::Runner;
use crate::out;

/// The test guest's image: `dir`, or what `scripts/build-guest.sh` makes (built when missing
/// and the script is at hand).
pub(crate) fn locate_image(dir: Option<&Path>) -> Result<GuestImage> {
    let cwd = std::env::current_dir()?;
    let dir = dir.map_or_else(|| GuestImage::default_dir(&cwd), Path::to_path_buf);
    match GuestImage::in_dir(&dir) {
        Ok(img) => Ok(img),
        Err(e) if cwd.join("scripts/build-guest.sh").is_file() => {
            out::note(&format!("{e}; building it with scripts/build-guest.sh"));
            Ok(GuestImage::build(&cwd)?)
        }
        Err(e) => Err(e.into()),
    }
}

/// A dirty trace to record on the source just before it migrates.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TraceRecording<'a> {
    /// Where the CSV goes.
    pub path: &'a Path,
    /// The measurement periods, cycled (several: a working-set trace).
    pub periods: &'a [Duration],
    /// How long to record (at least one measurement of each period).
    pub length: Duration,
}

/// The guest's own progress across a migration, from its `livemig-writes` lines: page writes
/// per second of its clock over the 2 s before the migration, and from the migration's start
/// to its first line on the destination (the counter and the guest's clock travel with it, so
/// the throttled end of the run on the source counts too).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct GuestProgress {
    pub before_writes_per_s: f64,
    pub during_writes_per_s: f64,
    /// 1 - during / before, within [0, 1].
    pub slowdown: f64,
    /// The guest's work lost: slowdown x the seconds it ran during the migration.
    pub lost_s: f64,
}

impl GuestProgress {
    /// From the source console's progress points at the migration's start (`at_start`) and
    /// the destination's after the hand-over (`on_destination`).
    fn measure(at_start: &[(u64, u64)], on_destination: &[(u64, u64)]) -> Option<GuestProgress> {
        let start = *at_start.last()?;
        let end = *on_destination.first()?;
        let before_rate = heartbeat::recent_writes_per_s(at_start, 2000)?;
        let during_rate = heartbeat::writes_per_s(start, end)?;
        let slowdown = if before_rate > 0.0 {
            (1.0 - during_rate / before_rate).clamp(0.0, 1.0)
        } else {
            0.0
        };
        Some(GuestProgress {
            before_writes_per_s: before_rate,
            during_writes_per_s: during_rate,
            slowdown,
            lost_s: slowdown * (end.1 - start.1) as f64 / 1000.0,
        })
    }
}

/// One bench migration: its result, the heartbeat verdict, the guest's progress.
pub(crate) struct BenchRun {
    pub result: Result<QemuReport>,
    pub heartbeat: String,
    pub progress: Option<GuestProgress>,
}

/// Boots a fresh source and destination, optionally records a trace, migrates, checks the
/// heartbeat and measures the guest's progress across the migration.
pub(crate) async fn bench_run(
    image: &GuestImage,
    load: &str,
    dir: &Path,
    runner: Runner,
    cfg: &PolicyConfig,
    timeouts: Timeouts,
    trace: Option<TraceRecording<'_>>,
) -> BenchRun {
    let boot = Duration::from_secs(60);
    let mut hb = String::from("not checked");
    let mut progress = None;
    let result = async {
        let uri = format!("tcp:127.0.0.1:{}", free_port()?);
        let spec = VmSpec::new("src", image, load, dir);
        let src_vm = Vm::spawn(spec.clone(), boot).await?;
        let dst_vm = Vm::spawn(spec.destination("dst", &uri), boot).await?;
        src_vm.wait_heartbeat(10, boot).await?;
        let mut src = src_vm.qmp().await?;
        let mut dst = dst_vm.qmp().await?;
        if let Some(t) = trace {
            let rows = dirty::record(&mut src, t.periods, t.length, |_| {}).await?;
            std::fs::write(t.path, dirty::to_csv(&rows))?;
        }
        let mut g = GovernorConfig::new(&uri, cfg.memory_bytes, cfg.stop_remaining);
        g.workload = Some(load.to_string());
        g.timeouts = timeouts;
        // Only `predictive` throttles: the other runs (a constant cap) stay QEMU's own.
        g.rescue = cfg.max_throttle.is_some() && runner == Runner::Policy(PolicyKind::Predictive);
        g.auto_converge = runner.auto_converge();
        let at_start = heartbeat::writes(&src_vm.console());
        let run = Governor::new(g)
            .run(&mut src, Some(&mut dst), runner.control(cfg)?)
            .await?;
        let last = src_vm.last_heartbeat().unwrap_or(0);
        let beat = dst_vm
            .wait_heartbeat(last + 5, Duration::from_secs(20))
            .await;
        progress = GuestProgress::measure(&at_start, &heartbeat::writes(&dst_vm.console()));
        hb = match beat {
            Err(e) => e.to_string(),
            Ok(_) => match heartbeat::continuity(&src_vm.console(), &dst_vm.console()) {
                Ok(c) => format!("ok ({} -> {})", c.last_on_source, c.first_on_destination),
                Err(e) => e.to_string(),
            },
        };
        Ok::<_, anyhow::Error>(run)
    }
    .await;
    BenchRun {
        result,
        heartbeat: hb,
        progress,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_compares_the_run_with_the_two_seconds_before_it() {
        // 1000 writes/s before; 250/s over the 4 s to the first line on the destination.
        let before: Vec<(u64, u64)> = (0..=30).map(|i| (i * 100, i * 100)).collect();
        let after = [(3000 + 1000, 3000 + 4000), (9000, 8000)];
        let p = GuestProgress::measure(&before, &after).expect("measured");
        assert_eq!(p.before_writes_per_s, 1000.0);
        assert_eq!(p.during_writes_per_s, 250.0);
        assert_eq!(p.slowdown, 0.75);
        assert_eq!(p.lost_s, 3.0);
        // Less than half a second of progress before: not measured.
        assert!(GuestProgress::measure(&before[..4], &after).is_none());
        // No progress lines (an older guest): not measured.
        assert!(GuestProgress::measure(&[], &[]).is_none());
    }
}
