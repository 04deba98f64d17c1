//! `livemig agent`: the per-host migration monitor's HTTP API (capacity, VMs, metrics).
//!
//! Every flag and the token file are checked before the socket is bound (exit 2 on any of
//! them). SIGINT or SIGTERM stops it cleanly: no new connections, requests in flight get a
//! short grace, the VMs it ran are stopped.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use livemig_agent::{Agent, BookConfig, ServerConfig, Token};
use livemig_workload::units;
use tokio_util::sync::CancellationToken;

use crate::args::positive_duration;

/// `livemig agent` flags.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Examples:
  livemig agent --listen 0.0.0.0:7800 --name host-a --token-file agent.token --capacity-memory 8GiB
  livemig agent --listen 127.0.0.1:0 --name a --token-file agent.token --capacity-memory 256MiB --json

The token file holds the bearer token on its first line and must be readable by its owner
only (chmod 600). Every request but GET /healthz carries `Authorization: Bearer <token>`.
API: GET /api/v1/info, POST /api/v1/capacity, DELETE /api/v1/capacity/{id}, GET|POST
/api/v1/vms, GET|DELETE /api/v1/vms/{name}, GET /metrics (docs/system.md).")]
pub struct Args {
    /// Address to listen on (HOST:PORT; port 0 picks one and prints it).
    #[arg(long)]
    pub listen: String,
    /// This host's name (what the RMS calls it): 1 to 64 of A-Z a-z 0-9 . _ -
    #[arg(long)]
    pub name: String,
    /// File holding the bearer token (first line; mode 600).
    #[arg(long)]
    pub token_file: PathBuf,
    /// Memory this host gives to VMs and reservations (e.g. 8GiB).
    #[arg(long)]
    pub capacity_memory: String,
    /// The RMS to register with and heartbeat to. Coming: not in this version (giving it is
    /// an error).
    #[arg(long, value_name = "URL")]
    pub rms: Option<String>,
    /// How long an unused capacity reservation holds its memory.
    #[arg(long, default_value = "30s")]
    pub reservation_ttl: String,
    /// Connections served at once (more wait until one ends).
    #[arg(long, default_value_t = 64)]
    pub max_connections: usize,
    /// Print the listening address as JSON (`{"listening": ..., "name": ...}`).
    #[arg(long)]
    pub json: bool,
}

/// Runs `livemig agent` until SIGINT or SIGTERM.
pub fn run(args: Args) -> Result<()> {
    if args.rms.is_some() {
        bail!("--rms is coming: registration and heartbeats are not in this version");
    }
    let name_ok = !args.name.is_empty()
        && args.name.len() <= 64
        && args
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !name_ok {
        bail!("--name must be 1 to 64 characters of A-Z a-z 0-9 . _ -");
    }
    let token = Token::load(&args.token_file)?;
    let memory = units::parse_size(&args.capacity_memory).context("--capacity-memory")?;
    if !(memory >= 4096.0 && memory < u64::MAX as f64) {
        bail!("--capacity-memory must be at least one page (4KiB)");
    }
    let ttl = positive_duration("reservation-ttl", &args.reservation_ttl)?;
    if args.max_connections == 0 || args.max_connections > 4096 {
        bail!("--max-connections must be between 1 and 4096");
    }
    let mut book = BookConfig::new(memory as u64);
    book.reservation_ttl_s = ttl.as_secs_f64();
    // Reservation ids carry this start's time, so an id from an earlier run names nothing.
    book.id_prefix = format!("{}-{}", args.name, (livemig_agent::system_clock())() as u64);
    let agent = Arc::new(Agent::new(
        args.name.clone(),
        token,
        book,
        livemig_agent::system_clock(),
    ));
    let cfg = ServerConfig {
        max_connections: args.max_connections,
        ..ServerConfig::default()
    };
    let stop = CancellationToken::new();
    let on_stop = stop.clone();
    crate::signals::on_interrupt(move || on_stop.cancel())?;
    let rt = crate::rt::runtime()?;
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(&args.listen))
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?.to_string();
    let line = if args.json {
        serde_json::json!({"listening": address, "name": args.name}).to_string()
    } else {
        format!("listening on {address}")
    };
    crate::out::emit_line(&line)?;
    rt.block_on(livemig_agent::run(listener, agent, cfg, stop));
    // The VMs stop when the agent is dropped (their writer threads are joined).
    tracing::debug!("agent stopped");
    Ok(())
}
