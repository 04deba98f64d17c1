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

/// Boots a fresh source and destination, optionally records a trace, migrates, checks the
/// heartbeat. Returns the result and the heartbeat verdict.
pub(crate) async fn bench_one(
    image: &GuestImage,
    load: &str,
    dir: &Path,
    runner: Runner,
    cfg: &PolicyConfig,
    timeouts: Timeouts,
    trace: Option<TraceRecording<'_>>,
) -> (Result<QemuReport>, String) {
    let boot = Duration::from_secs(60);
    let mut hb = String::from("not checked");
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
        let run = Governor::new(g)
            .run(&mut src, Some(&mut dst), runner.control(cfg)?)
            .await?;
        let last = src_vm.last_heartbeat().unwrap_or(0);
        hb = match dst_vm
            .wait_heartbeat(last + 5, Duration::from_secs(20))
            .await
        {
            Err(e) => e.to_string(),
            Ok(_) => match heartbeat::continuity(&src_vm.console(), &dst_vm.console()) {
                Ok(c) => format!("ok ({} -> {})", c.last_on_source, c.first_on_destination),
                Err(e) => e.to_string(),
            },
        };
        Ok::<_, anyhow::Error>(run)
    }
    .await;
    (result, hb)
}
