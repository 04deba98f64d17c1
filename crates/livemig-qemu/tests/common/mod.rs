//! Helpers shared by the governor's integration tests.

use livemig_policy::report::{MigrationReport, RoundRecord};
use livemig_policy::{DirtySample, PolicyConfig, PolicyKind};

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
    livemig_policy::pilot::replay(policy, sample, report).expect("replayed")
}
