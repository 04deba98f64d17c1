//! `livemig vm create | list | show | delete`: the VMs the RMS places (`vm migrate` is in
//! `cmd::vm_migrate`).

use anyhow::{bail, Context, Result};
use livemig_rms::{Vm, VmKind, VmRequest};
use livemig_workload::units;
use serde::Deserialize;

use crate::ops_view;
use crate::rms_client::{print, with_rms, Rms, RmsArgs};

/// `livemig vm` subcommands but `migrate`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create and start a VM on a host the RMS chooses, or on --host.
    #[command(after_long_help = "Examples:
  livemig vm create web-1 --memory 1GiB --workload hotcold:rate=64MiB/s,hot=5%,share=95%
  livemig vm create db-1 --memory 4GiB --workload idle --kind qemu --host host-b --json

--json prints the RMS's answer to POST /api/v1/vms ({\"name\": ..., \"host\": ...}).")]
    Create(Box<CreateArgs>),
    /// List the VMs: host, kind, memory, workload.
    #[command(after_long_help = "Examples:
  livemig vm list
  livemig vm list --json

--json prints the RMS's answer to GET /api/v1/vms unchanged (a list).")]
    List(ListArgs),
    /// Show one VM.
    #[command(after_long_help = "Examples:
  livemig vm show web-1
  livemig vm show web-1 --json")]
    Show(NameArgs),
    /// Stop and delete a VM.
    #[command(after_long_help = "Examples:
  livemig vm delete web-1
  livemig vm delete web-1 --json

--json prints the deleted VM as the RMS returns it.")]
    Delete(NameArgs),
}

/// What runs the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// A simulated guest: real memory, a writer thread following the workload.
    Sim,
    /// A QEMU virtual machine.
    Qemu,
}

/// `livemig vm create` flags.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// The VM's name.
    pub name: String,
    /// Guest memory (a multiple of 4 KiB, e.g. 64MiB, 4GiB).
    #[arg(long, value_name = "SIZE")]
    pub memory: String,
    /// The workload the guest runs (same specs as `simulate`, e.g. idle, uniform:rate=32MiB/s).
    #[arg(long, value_name = "SPEC")]
    pub workload: String,
    /// What runs it.
    #[arg(long, value_enum, default_value_t = Kind::Sim)]
    pub kind: Kind,
    /// Start it on this host; the RMS chooses when not given.
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    /// `sim`: what its memory holds at the start: `zero` (zero pages cost nothing to
    /// migrate), `random` (incompressible: every page is sent), `mixed:FRACTION` (that share
    /// zero, e.g. mixed:0.5). [default: zero]
    #[arg(long, value_name = "CONTENT")]
    pub content: Option<String>,
    #[command(flatten)]
    pub rms: RmsArgs,
    /// Print the RMS's JSON instead of a line.
    #[arg(long)]
    pub json: bool,
}

/// `livemig vm list` flags.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub rms: RmsArgs,
    /// Print the RMS's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `livemig vm show | delete` flags.
#[derive(Debug, clap::Args)]
pub struct NameArgs {
    /// The VM's name.
    pub name: String,
    #[command(flatten)]
    pub rms: RmsArgs,
    /// Print the RMS's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The 201 answer to `POST /api/v1/vms`.
#[derive(Debug, Deserialize)]
struct Created {
    name: String,
    host: String,
}

/// Checks `create`'s flags into the request body (before anything is sent).
fn request(a: &CreateArgs) -> Result<VmRequest> {
    if a.name.trim().is_empty() {
        bail!("the VM's name is empty");
    }
    let memory = units::parse_size(&a.memory).context("--memory")?;
    if !(memory >= 4096.0 && memory < u64::MAX as f64) || memory % 4096.0 != 0.0 {
        bail!(
            "--memory must be a whole number of 4 KiB pages, at least one (got {})",
            a.memory
        );
    }
    if a.workload.trim().is_empty() {
        bail!("--workload is empty (e.g. idle, uniform:rate=32MiB/s)");
    }
    if a.host.as_deref().is_some_and(|h| h.trim().is_empty()) {
        bail!("--host is empty");
    }
    if let Some(c) = &a.content {
        let mixed = c
            .strip_prefix("mixed:")
            .and_then(|f| units::parse_fraction(f).ok())
            .is_some_and(|f| (0.0..=1.0).contains(&f));
        if !(c == "zero" || c == "random" || mixed) {
            bail!("--content must be zero, random or mixed:FRACTION (got `{c}`)");
        }
        if a.kind == Kind::Qemu {
            bail!("--content is for sim VMs (a QEMU guest's memory is its own)");
        }
    }
    Ok(VmRequest {
        name: a.name.clone(),
        memory_bytes: memory as u64,
        workload: a.workload.clone(),
        kind: match a.kind {
            Kind::Sim => VmKind::Sim,
            Kind::Qemu => VmKind::Qemu,
        },
        host: a.host.clone(),
        content: a.content.clone(),
    })
}

/// Runs a `livemig vm` subcommand.
pub fn run(command: Command) -> Result<()> {
    match command {
        Command::Create(a) => {
            let body = request(&a)?;
            with_rms(Rms::new(&a.rms)?, |rms| async move {
                let created = rms.post::<_, Created>(&["api", "v1", "vms"], &body).await?;
                print(&created, a.json, |c| {
                    format!("created vm {} on {}", c.name, c.host)
                })
            })
        }
        Command::List(a) => with_rms(Rms::new(&a.rms)?, |rms| async move {
            let vms = rms.get::<Vec<Vm>>(&["api", "v1", "vms"]).await?;
            print(&vms, a.json, |v| ops_view::vms(v).to_string())
        }),
        Command::Show(a) => with_rms(Rms::new(&a.rms)?, |rms| async move {
            let vm = rms.get::<Vm>(&["api", "v1", "vms", &a.name]).await?;
            print(&vm, a.json, |v| {
                ops_view::vms(std::slice::from_ref(v)).to_string()
            })
        }),
        Command::Delete(a) => with_rms(Rms::new(&a.rms)?, |rms| async move {
            let vm = rms.delete::<Vm>(&["api", "v1", "vms", &a.name]).await?;
            print(&vm, a.json, |v| {
                format!("deleted vm {} (was on {})", v.name, v.host)
            })
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(memory: &str) -> CreateArgs {
        CreateArgs {
            name: "web-1".into(),
            memory: memory.into(),
            workload: "idle".into(),
            kind: Kind::Qemu,
            host: None,
            content: None,
            rms: RmsArgs {
                rms: crate::rms_client::DEFAULT_RMS.into(),
                token_file: None,
                ca_file: None,
                timeout: "10s".into(),
            },
            json: false,
        }
    }

    #[test]
    fn memory_is_checked_before_sending() {
        let r = request(&args("64MiB")).expect("valid");
        assert_eq!(r.memory_bytes, 64 << 20);
        assert_eq!(r.kind, VmKind::Qemu);
        for bad in ["", "64", "lots", "1000B", "0B", "-4KiB"] {
            assert!(request(&args(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn content_is_checked_before_sending() {
        let mut a = args("64MiB");
        a.kind = Kind::Sim;
        for good in ["zero", "random", "mixed:0.5", "mixed:25%"] {
            a.content = Some(good.into());
            let r = request(&a).unwrap_or_else(|e| panic!("{good}: {e}"));
            assert_eq!(r.content.as_deref(), Some(good));
        }
        for bad in ["", "ones", "mixed:", "mixed:2", "mixed:-1"] {
            a.content = Some(bad.into());
            assert!(request(&a).is_err(), "{bad}");
        }
        a.kind = Kind::Qemu;
        a.content = Some("random".into());
        assert!(request(&a).is_err(), "a QEMU guest's memory is its own");
    }
}
