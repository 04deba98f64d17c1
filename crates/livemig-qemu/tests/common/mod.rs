//! Helpers shared by the governor's integration tests.

use livemig_policy::pilot::{Executor, Pilot, Setup, Timeouts};
use livemig_policy::report::{MigrationReport, RoundRecord};
use livemig_policy::{DirtySample, PolicyConfig, PolicyKind, RoundStats};

/// Replays a governed migration's measured rounds (what each round sent, how long it took,
/// what it left dirty, the cap it ran under) through a fresh Pilot with a fresh `kind` policy
/// built from `cfg`, fed the same pre-migration `sample`: the records it produces.
pub fn replay(
    kind: PolicyKind,
    cfg: &PolicyConfig,
    sample: Option<&DirtySample>,
    report: &MigrationReport,
) -> Vec<RoundRecord> {
    let policy = kind.build(cfg.clone()).expect("valid config");
    let mut pilot = Pilot::new(
        policy,
        Setup {
            executor: Executor::Qemu,
            memory_bytes: report.memory_bytes,
            stop_remaining: report.stop_remaining_bytes,
            workload: report.workload.clone(),
            timeouts: Timeouts::none(),
        },
    );
    if let Some(s) = sample {
        pilot.sample(s);
    }
    pilot.start(0.0, None).expect("start");
    report
        .rounds
        .iter()
        .map(|r| {
            let stats = RoundStats {
                round: r.round,
                cap_bytes_per_s: r.cap_bytes_per_s,
                bytes_sent: r.bytes_sent,
                duration_s: r.duration_s,
                dirty_bytes: r.dirty_bytes,
            };
            let (_, rec) = pilot.end_measured(stats, None).expect("replayed round");
            rec.clone()
        })
        .collect()
}
