//! What the running QEMU offers beyond Debian 12's 7.2, probed over QMP before a migration
//! (never assumed from a version alone where QEMU can be asked): its version and accelerator,
//! how `calc-dirty-rate` can measure best, `avail-switchover-bandwidth` (8.2+), the
//! `switchover-ack` (8.1+) and `dirty-limit` (8.1+, KVM's dirty ring only) capabilities.

use serde::Serialize;
use serde_json::Value;

use crate::qmp::QmpClient;

/// The first QEMU whose `calc-dirty-rate` is asked for the `dirty-bitmap` mode, and only under
/// KVM: under TCG, 7.2 crashes on it and 10.0 reads 0 MiB/s for a guest dirtying 32 MiB/s.
pub const DIRTY_BITMAP_FROM: (u64, u64) = (10, 0);
/// The first QEMU with `calc-dirty-rate`'s `sample-pages`.
pub const SAMPLE_PAGES_FROM: (u64, u64) = (6, 1);
/// Pages sampled per GiB in page-sampling mode: QEMU's maximum (its default is 512, which
/// samples 128 pages of the test guest; 7.2 and 10.0 read 1-10 MiB/s for a guest dirtying
/// about 7.7 MiB/s of distinct pages, and 6-8 MiB/s with 16384).
pub const SAMPLE_PAGES: u64 = 16384;

/// How `calc-dirty-rate` measures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DirtyMode {
    /// QEMU's default: hashes a sample of pages (512 per GiB) of RAM blocks of 128 MiB or
    /// more, before and after the period.
    #[default]
    PageSampling,
    /// Counts every page dirtied during the period in the dirty bitmap (exact; QEMU still
    /// reports whole MiB/s). Used only under KVM ([`DIRTY_BITMAP_FROM`]).
    DirtyBitmap,
}

impl DirtyMode {
    /// The `mode` argument of `calc-dirty-rate`.
    pub fn as_qmp(self) -> &'static str {
        match self {
            DirtyMode::PageSampling => "page-sampling",
            DirtyMode::DirtyBitmap => "dirty-bitmap",
        }
    }
}

/// What the source QEMU offers, as recorded in the report (`qemu.features`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct QemuFeatures {
    /// `major.minor.micro` from `query-version` (empty when it did not say).
    pub version: String,
    /// KVM runs the guest (`query-kvm`); false under TCG.
    pub kvm: bool,
    /// The mode of the pre-migration `calc-dirty-rate` sample.
    pub dirty_rate_mode: DirtyMode,
    /// Pages per GiB the page-sampling mode is asked to sample (`None`: QEMU's default).
    pub dirty_sample_pages: Option<u64>,
    /// QEMU has `avail-switchover-bandwidth` (8.2+): the governor sets it to the
    /// stop-and-copy cap when it switches over.
    pub avail_switchover_bandwidth: bool,
    /// QEMU offers the `switchover-ack` capability (8.1+). Not used: only devices that
    /// precopy their state (VFIO) ask for the acknowledgement.
    pub switchover_ack: bool,
    /// `dirty-limit` could throttle dirtying vCPUs: only with KVM's dirty ring.
    pub dirty_limit: bool,
    /// One line per feature absent or not used, and why.
    pub notes: Vec<String>,
}

/// The answers [`probe`] collects; `None` where QEMU refused or did not answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Answers {
    pub version: Option<(u64, u64, u64)>,
    pub kvm: Option<bool>,
    /// The keys of `query-migrate-parameters`.
    pub parameters: Option<Vec<String>>,
    /// The names of `query-migrate-capabilities`.
    pub capabilities: Option<Vec<String>>,
}

/// Asks the source QEMU what it offers. Never fails: a command QEMU refuses or does not know
/// leaves its feature off, with a note.
pub async fn probe(qmp: &mut QmpClient) -> QemuFeatures {
    let version = qmp.execute("query-version", None).await.ok().and_then(|v| {
        let q = v.get("qemu")?;
        Some((
            q.get("major")?.as_u64()?,
            q.get("minor")?.as_u64()?,
            q.get("micro")?.as_u64()?,
        ))
    });
    let kvm = qmp
        .execute("query-kvm", None)
        .await
        .ok()
        .and_then(|v| v.get("enabled")?.as_bool());
    let parameters = qmp
        .execute("query-migrate-parameters", None)
        .await
        .ok()
        .and_then(|v| v.as_object().map(|o| o.keys().cloned().collect()));
    let capabilities = qmp
        .execute("query-migrate-capabilities", None)
        .await
        .ok()
        .and_then(|v| names(&v));
    decide(&Answers {
        version,
        kvm,
        parameters,
        capabilities,
    })
}

fn names(v: &Value) -> Option<Vec<String>> {
    v.as_array().map(|caps| {
        caps.iter()
            .filter_map(|c| c.get("capability")?.as_str().map(str::to_string))
            .collect()
    })
}

/// What the governor uses, from the answers (pure).
pub fn decide(a: &Answers) -> QemuFeatures {
    let mut notes = Vec::new();
    let has = |list: &Option<Vec<String>>, name: &str| {
        list.as_ref().is_some_and(|l| l.iter().any(|n| n == name))
    };
    let kvm = a.kvm.unwrap_or(false);
    let version = a
        .version
        .map(|(x, y, z)| format!("{x}.{y}.{z}"))
        .unwrap_or_default();
    let from = |v: (u64, u64)| a.version.is_some_and(|(x, y, _)| (x, y) >= v);
    let dirty_rate_mode = if kvm && from(DIRTY_BITMAP_FROM) {
        DirtyMode::DirtyBitmap
    } else {
        notes.push(format!(
            "calc-dirty-rate samples pages: its dirty-bitmap mode is used only under KVM from \
             QEMU {}.{} (under TCG 7.2 crashes on it and 10.0 reads 0)",
            DIRTY_BITMAP_FROM.0, DIRTY_BITMAP_FROM.1
        ));
        DirtyMode::PageSampling
    };
    let dirty_sample_pages = (dirty_rate_mode == DirtyMode::PageSampling
        && from(SAMPLE_PAGES_FROM))
    .then_some(SAMPLE_PAGES);
    let avail_switchover_bandwidth = has(&a.parameters, "avail-switchover-bandwidth");
    if !avail_switchover_bandwidth {
        notes.push(
            "no avail-switchover-bandwidth (QEMU 8.2+): QEMU's switch-over threshold uses the \
             bandwidth it measured"
                .into(),
        );
    }
    let switchover_ack = has(&a.capabilities, "switchover-ack");
    if switchover_ack {
        notes.push(
            "switchover-ack not enabled: only devices that precopy their state (VFIO) ask for \
             it, and it needs the return path on both sides"
                .into(),
        );
    }
    let dirty_limit = has(&a.capabilities, "dirty-limit") && kvm;
    if has(&a.capabilities, "dirty-limit") && !kvm {
        notes.push("dirty-limit unavailable: it needs KVM's dirty ring; this QEMU runs TCG".into());
    }
    QemuFeatures {
        version,
        kvm,
        dirty_rate_mode,
        dirty_sample_pages,
        avail_switchover_bandwidth,
        switchover_ack,
        dirty_limit,
        notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(s: &[&str]) -> Option<Vec<String>> {
        Some(s.iter().map(|n| n.to_string()).collect())
    }

    #[test]
    fn qemu_7_2_under_tcg_samples_pages_and_has_none_of_the_rest() {
        let f = decide(&Answers {
            version: Some((7, 2, 22)),
            kvm: Some(false),
            parameters: list(&["max-bandwidth", "downtime-limit"]),
            capabilities: list(&["events", "postcopy-ram"]),
        });
        assert_eq!(f.version, "7.2.22");
        assert_eq!(f.dirty_rate_mode, DirtyMode::PageSampling);
        assert_eq!(f.dirty_sample_pages, Some(SAMPLE_PAGES));
        assert!(!f.avail_switchover_bandwidth && !f.switchover_ack && !f.dirty_limit);
        assert_eq!(f.notes.len(), 2, "{:?}", f.notes);
    }

    #[test]
    fn qemu_10_under_tcg_samples_pages_and_cannot_limit_dirtying() {
        let f = decide(&Answers {
            version: Some((10, 0, 2)),
            kvm: Some(false),
            parameters: list(&["max-bandwidth", "avail-switchover-bandwidth"]),
            capabilities: list(&["events", "switchover-ack", "dirty-limit"]),
        });
        assert_eq!(f.dirty_rate_mode, DirtyMode::PageSampling);
        assert_eq!(f.dirty_sample_pages, Some(SAMPLE_PAGES));
        assert!(f.avail_switchover_bandwidth && f.switchover_ack);
        assert!(!f.dirty_limit);
        assert!(f.notes.iter().any(|n| n.contains("TCG")), "{:?}", f.notes);
    }

    #[test]
    fn a_qemu_that_answers_nothing_gets_the_7_2_path() {
        let f = decide(&Answers::default());
        assert_eq!(f.version, "");
        assert_eq!(f.dirty_rate_mode, DirtyMode::PageSampling);
        assert_eq!(
            f.dirty_sample_pages, None,
            "QEMU's default for an unknown QEMU"
        );
        assert!(!f.avail_switchover_bandwidth);
    }

    #[test]
    fn dirty_limit_counts_only_under_kvm() {
        let f = decide(&Answers {
            version: Some((10, 0, 0)),
            kvm: Some(true),
            parameters: None,
            capabilities: list(&["dirty-limit"]),
        });
        assert!(f.dirty_limit && f.kvm);
        assert_eq!(f.dirty_rate_mode, DirtyMode::DirtyBitmap);
        assert_eq!(f.dirty_sample_pages, None);
    }
}
