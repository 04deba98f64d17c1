//! The source's migration settings that livemig changes (`max-bandwidth`, `downtime-limit`,
//! `avail-switchover-bandwidth` where QEMU has it, the `events` capability): read before anything is changed, put back at the end, and kept
//! meanwhile in a small JSON state file so that `livemig qemu restore` can put them back after
//! the governing process died (`kill -9`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::qmp::{QmpClient, QmpError};
use crate::types::MigrationParameters;

/// The migration capabilities the governor may change.
pub const CHANGED_CAPABILITIES: [&str; 2] = ["events", "auto-converge"];
/// What the state file says it is.
const KIND: &str = "livemig-qemu-saved-settings";

/// Why a state file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error("cannot write the state file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the state file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the state file {path} is not a livemig state file: {why}")]
    Invalid { path: PathBuf, why: String },
}

/// The source's own values of what livemig changes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SavedSettings {
    /// `max-bandwidth` (bytes/s), when QEMU reported it.
    pub max_bandwidth: Option<u64>,
    /// `downtime-limit` (ms), when QEMU reported it.
    pub downtime_limit: Option<u64>,
    /// `avail-switchover-bandwidth` (bytes/s), when QEMU has it (8.2+).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avail_switchover_bandwidth: Option<u64>,
    /// auto-converge's settings, changed by the rescue (`GovernorConfig::rescue`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle_trigger_threshold: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_throttle_initial: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_throttle_increment: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cpu_throttle: Option<u64>,
    /// The states of [`CHANGED_CAPABILITIES`] that QEMU reported.
    pub capabilities: BTreeMap<String, bool>,
}

/// The file's shape: the settings plus what it is and whose they are.
#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    kind: String,
    version: u32,
    /// The QMP socket of the source the settings belong to (for the operator).
    qmp: String,
    #[serde(flatten)]
    settings: SavedSettings,
}

#[derive(Debug, Deserialize)]
struct CapabilityStatus {
    capability: String,
    state: bool,
}

/// Where the state file of the source at `qmp` goes by default: `<qmp>.livemig-params.json`.
pub fn default_state_file(qmp: &Path) -> PathBuf {
    let mut s = qmp.as_os_str().to_os_string();
    s.push(".livemig-params.json");
    PathBuf::from(s)
}

impl SavedSettings {
    /// Reads the current values from QEMU (`query-migrate-parameters`,
    /// `query-migrate-capabilities`).
    pub async fn read(qmp: &mut QmpClient) -> Result<SavedSettings, QmpError> {
        let p: MigrationParameters = qmp.execute_as("query-migrate-parameters", None).await?;
        let caps: Vec<CapabilityStatus> =
            qmp.execute_as("query-migrate-capabilities", None).await?;
        Ok(SavedSettings {
            max_bandwidth: p.max_bandwidth,
            downtime_limit: p.downtime_limit,
            avail_switchover_bandwidth: p.avail_switchover_bandwidth,
            throttle_trigger_threshold: p.throttle_trigger_threshold,
            cpu_throttle_initial: p.cpu_throttle_initial,
            cpu_throttle_increment: p.cpu_throttle_increment,
            max_cpu_throttle: p.max_cpu_throttle,
            capabilities: caps
                .into_iter()
                .filter(|c| CHANGED_CAPABILITIES.contains(&c.capability.as_str()))
                .map(|c| (c.capability, c.state))
                .collect(),
        })
    }

    /// Puts the values back: the capabilities (QEMU refuses them while a migration runs), then
    /// `max-bandwidth` and `downtime-limit`. Both are tried; the first error is returned.
    pub async fn apply(&self, qmp: &mut QmpClient) -> Result<(), QmpError> {
        let mut first = Ok(());
        if !self.capabilities.is_empty() {
            let caps: Vec<_> = self
                .capabilities
                .iter()
                .map(|(c, s)| json!({"capability": c, "state": s}))
                .collect();
            if let Err(e) = qmp
                .execute(
                    "migrate-set-capabilities",
                    Some(json!({ "capabilities": caps })),
                )
                .await
            {
                first = Err(e);
            }
        }
        let mut args = serde_json::Map::new();
        if let Some(b) = self.max_bandwidth {
            args.insert("max-bandwidth".into(), json!(b));
        }
        if let Some(d) = self.downtime_limit {
            args.insert("downtime-limit".into(), json!(d));
        }
        if let Some(b) = self.avail_switchover_bandwidth {
            args.insert("avail-switchover-bandwidth".into(), json!(b));
        }
        for (key, v) in [
            (
                "throttle-trigger-threshold",
                self.throttle_trigger_threshold,
            ),
            ("cpu-throttle-initial", self.cpu_throttle_initial),
            ("cpu-throttle-increment", self.cpu_throttle_increment),
            ("max-cpu-throttle", self.max_cpu_throttle),
        ] {
            if let Some(v) = v {
                args.insert(key.into(), json!(v));
            }
        }
        if !args.is_empty() {
            let r = qmp
                .execute(
                    "migrate-set-parameters",
                    Some(serde_json::Value::Object(args)),
                )
                .await;
            if let (Err(e), Ok(())) = (r, &first) {
                first = Err(e);
            }
        }
        first
    }

    /// Writes the state file at `path` for the source at `qmp`: to a temporary name in the
    /// same folder, synced, then renamed, so the file is whole or absent.
    pub fn write(&self, path: &Path, qmp: &Path) -> Result<(), StateFileError> {
        let err = |source| StateFileError::Write {
            path: path.to_path_buf(),
            source,
        };
        let body = StateFile {
            kind: KIND.into(),
            version: 1,
            qmp: qmp.display().to_string(),
            settings: self.clone(),
        };
        let text = serde_json::to_string_pretty(&body).map_err(|e| err(e.into()))?;
        let mut tmp = path.as_os_str().to_os_string();
        tmp.push(format!(".tmp{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let written = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(err(e));
        }
        Ok(())
    }

    /// Reads the state file at `path`; also returns the QMP socket it names.
    pub fn load(path: &Path) -> Result<(SavedSettings, String), StateFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| StateFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let invalid = |why: String| StateFileError::Invalid {
            path: path.to_path_buf(),
            why,
        };
        let f: StateFile = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        if f.kind != KIND || f.version != 1 {
            return Err(invalid(format!("kind {:?} version {}", f.kind, f.version)));
        }
        Ok((f.settings, f.qmp))
    }

    /// One line for the operator: `max-bandwidth 134217728 B/s, downtime-limit 300 ms, events off`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(b) = self.max_bandwidth {
            parts.push(format!("max-bandwidth {b} B/s"));
        }
        if let Some(d) = self.downtime_limit {
            parts.push(format!("downtime-limit {d} ms"));
        }
        if let Some(b) = self.avail_switchover_bandwidth {
            parts.push(format!("avail-switchover-bandwidth {b} B/s"));
        }
        for (c, s) in &self.capabilities {
            parts.push(format!("{c} {}", if *s { "on" } else { "off" }));
        }
        if parts.is_empty() {
            "nothing".into()
        } else {
            parts.join(", ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_file_round_trips_and_is_written_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let qmp = dir.path().join("src.qmp");
        let path = default_state_file(&qmp);
        assert_eq!(
            path.file_name().and_then(|n| n.to_str()),
            Some("src.qmp.livemig-params.json")
        );
        let s = SavedSettings {
            max_bandwidth: Some(134_217_728),
            downtime_limit: Some(300),
            avail_switchover_bandwidth: None,
            capabilities: [("events".to_string(), false)].into_iter().collect(),
            ..SavedSettings::default()
        };
        // QEMU 8.2+ also reports avail-switchover-bandwidth; it round-trips too.
        let newer = SavedSettings {
            avail_switchover_bandwidth: Some(0),
            ..s.clone()
        };
        newer.write(&path, &qmp).expect("written");
        assert_eq!(SavedSettings::load(&path).expect("read").0, newer);
        assert!(newer
            .describe()
            .ends_with("avail-switchover-bandwidth 0 B/s, events off"));
        s.write(&path, &qmp).expect("written");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(
            !text.contains("avail-switchover"),
            "7.2's file is as before: {text}"
        );
        let (back, named) = SavedSettings::load(&path).expect("read");
        assert_eq!(back, s);
        assert_eq!(named, qmp.display().to_string());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
        assert_eq!(
            s.describe(),
            "max-bandwidth 134217728 B/s, downtime-limit 300 ms, events off"
        );
        std::fs::write(
            &path,
            "{\"kind\": \"other\", \"version\": 1, \"qmp\": \"x\"}",
        )
        .expect("write");
        assert!(matches!(
            SavedSettings::load(&path),
            Err(StateFileError::Invalid { .. })
        ));
    }
}
