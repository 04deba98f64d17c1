//! `livemig vm migrate`: asks the RMS to migrate a VM, and with `--watch` follows it to its end.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use livemig_policy::PolicySpec;
use livemig_rms::api::Created;
use livemig_rms::MigrationRequest;

use crate::args::PolicyName;
use crate::rms_client::{print, with_rms, Rms, RmsArgs};
use crate::watch::{self, WatchArgs};

/// The examples and the exit codes under `--help`.
fn long_help() -> String {
    format!(
        "Examples:
  livemig vm migrate web-1
  livemig vm migrate web-1 --to host-b --policy dirty-factor --settings tight.toml --watch
  livemig vm migrate web-1 --watch --json > web-1.ndjson

Without --watch it prints the migration's id and returns (exit 0 once the RMS accepted it).
With --watch it prints each state change, each host asked and each round (round, cap, bytes,
duration, dirty factor, decision) until the migration ends; --json --watch prints one JSON
object a line ({{\"event\": \"created\" | \"attempt\" | \"round\" | \"state\", ...}}), then the
final view of GET /api/v1/migrations/ID on the last line. Ctrl-C stops watching, not the
migration.

The settings file is TOML (or JSON when it ends in .json) with the policy settings of
`simulate` scenarios: rounds, stop_remaining, min_bandwidth, max_bandwidth,
initial_bandwidth, threshold, bandwidth, downtime_limit, page_size.

{}",
        watch::EXIT_CODES
    )
}

/// `livemig vm migrate` flags.
#[derive(Debug, clap::Args)]
#[command(after_long_help = long_help())]
pub struct Args {
    /// The VM to migrate.
    pub vm: String,
    /// Migrate to this host only; the RMS ranks the alive hosts when not given.
    #[arg(long, value_name = "HOST")]
    pub to: Option<String>,
    /// The bandwidth policy; the RMS's default when not given.
    #[arg(long, value_enum, value_name = "NAME")]
    pub policy: Option<PolicyName>,
    /// The policy's settings from a file (TOML, or JSON when it ends in .json).
    #[arg(long, value_name = "FILE")]
    pub settings: Option<PathBuf>,
    /// Its priority in the RMS's budget queue, 0–255 (higher first; a waiting migration
    /// gains a level a minute, so none waits for ever).
    #[arg(long, value_name = "0-255")]
    pub priority: Option<u8>,
    /// Follow the migration until it ends; the exit code says how it ended.
    #[arg(long)]
    pub watch: bool,
    #[command(flatten)]
    pub watching: WatchArgs,
    #[command(flatten)]
    pub rms: RmsArgs,
    /// Print JSON: the RMS's answer, or with --watch one event a line and the final view.
    #[arg(long)]
    pub json: bool,
}

/// Reads a settings file: only [`PolicySpec`]'s keys, each of its type.
fn settings(path: &Path) -> Result<PolicySpec> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--settings: cannot read {shown}"))?;
    let value: serde_json::Value = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).with_context(|| format!("--settings {shown}: not JSON"))?
    } else {
        let table: toml::Table =
            toml::from_str(&text).with_context(|| format!("--settings {shown}: not TOML"))?;
        serde_json::to_value(table).with_context(|| format!("--settings {shown}"))?
    };
    let Some(given) = value.as_object() else {
        bail!("--settings {shown}: expected a table of policy settings");
    };
    let known = serde_json::to_value(PolicySpec::default())?;
    let known: Vec<&String> = known
        .as_object()
        .map(|o| o.keys().collect())
        .unwrap_or_default();
    if let Some(bad) = given.keys().find(|k| !known.contains(k)) {
        let names: Vec<&str> = known.iter().map(|k| k.as_str()).collect();
        bail!(
            "--settings {shown}: unknown setting `{bad}` (known: {})",
            names.join(", ")
        );
    }
    serde_json::from_value(value).with_context(|| format!("--settings {shown}"))
}

/// Runs `livemig vm migrate`.
pub fn run(a: Args) -> Result<()> {
    if a.vm.trim().is_empty() {
        bail!("the VM's name is empty");
    }
    if a.to.as_deref().is_some_and(|h| h.trim().is_empty()) {
        bail!("--to is empty");
    }
    let body = MigrationRequest {
        vm: a.vm.clone(),
        target: a.to.clone(),
        policy: a.policy.map(|p| p.0.name().to_string()),
        settings: a.settings.as_deref().map(settings).transpose()?,
        priority: a.priority,
    };
    let watching = if a.watch {
        Some(a.watching.watch(a.json)?)
    } else if a.watching.given() {
        bail!("--watch-timeout and --watch-interval go with --watch");
    } else {
        None
    };
    with_rms(Rms::new(&a.rms)?, |rms| async move {
        let created = rms
            .post::<_, Created>(&["api", "v1", "migrations"], &body)
            .await?;
        let id = created.value.id;
        let Some(w) = watching else {
            return print(&created, a.json, |c| {
                format!(
                    "migration {} of {} asked; follow it: livemig migration watch {}",
                    c.id, a.vm, c.id
                )
            });
        };
        crate::out::emit_line(&if a.json {
            serde_json::json!({"event": "created", "id": id}).to_string()
        } else {
            format!("migration {id} asked; watching (Ctrl-C stops watching, not the migration)")
        })?;
        let view = watch::watch(&rms, id, w).await?;
        watch::finish(&view)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        (dir, path)
    }

    #[test]
    fn settings_files_take_only_policy_settings() {
        let (_d, p) = file("s.toml", "rounds = 12\nmax_bandwidth = \"1Gbit/s\"\n");
        let s = settings(&p).expect("valid");
        assert_eq!(s.rounds, Some(12));
        assert_eq!(s.max_bandwidth.as_deref(), Some("1Gbit/s"));
        let (_d, p) = file("s.json", r#"{"stop_remaining": "8MiB"}"#);
        assert_eq!(
            settings(&p).expect("valid").stop_remaining.as_deref(),
            Some("8MiB")
        );
        let (_d, p) = file("s.toml", "roundz = 3\n");
        let e = settings(&p).expect_err("unknown key");
        assert!(format!("{e:#}").contains("roundz"), "{e:#}");
        let (_d, p) = file("s.toml", "rounds = \"many\"\n");
        assert!(settings(&p).is_err());
        let (_d, p) = file("s.json", "[1]");
        assert!(settings(&p).is_err());
        assert!(settings(Path::new("/nonexistent/s.toml")).is_err());
    }
}
