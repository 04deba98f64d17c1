//! `livemig agent`: the per-host migration monitor: its HTTP API (capacity, VMs, migrations
//! in and out, metrics) and, with `--rms`, its registration and heartbeats.
//!
//! Every flag and the token file are checked before the socket is bound (exit 2 on any of
//! them). SIGINT or SIGTERM stops it cleanly: no new connections, heartbeats stop, outgoing
//! migrations not yet committed are cancelled (their guests keep running here), listeners
//! waiting for a source close, requests in flight get a short grace, the VMs it ran are
//! stopped (QEMU VMs quit over QMP, killed if they do not within a few seconds).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use livemig_agent::rms::{LinkConfig, Outbox, RmsClient, LIGHT_EVENTS_QUEUED};
use livemig_agent::{Agent, BookConfig, MigratorConfig, QemuConfig, ServerConfig, Token};
use livemig_http::Secret;
use livemig_workload::units;
use tokio_util::sync::CancellationToken;

use crate::args::positive_duration;

/// `livemig agent` flags.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Examples:
  livemig agent --listen 0.0.0.0:7800 --name host-a --token-file agent.token --capacity-memory 8GiB
  livemig agent --listen 127.0.0.1:0 --name a --token-file agent.token --capacity-memory 256MiB --json
  livemig agent --listen 127.0.0.1:7801 --name q --token-file agent.token --capacity-memory 1GiB \
      --state-dir /run/livemig --guest-dir target/guest   # can host kind `qemu` VMs
  livemig agent --listen 0.0.0.0:7800 --data-host 198.18.0.2 --name host-b --token-file agent.token \
      --capacity-memory 8GiB --rms https://198.18.0.1:7900 --ca-file /etc/livemig/ca.pem

The token file holds the bearer token on its first line and must be readable by its owner
only (chmod 600). Every request but GET /healthz carries `Authorization: Bearer <token>`.
API: GET /api/v1/info, POST /api/v1/capacity, DELETE /api/v1/capacity/{id}, GET|POST
/api/v1/vms, GET|DELETE /api/v1/vms/{name}, POST /api/v1/incoming, POST /api/v1/outgoing,
DELETE /api/v1/outgoing/{migration}, GET /api/v1/report, GET /metrics (docs/system.md).

With --rms the agent registers with the RMS (retrying until it answers; it never exits
because the RMS is down), then sends heartbeats, and forwards every migration event and
report. The same token authenticates both directions. With --ca-file (an RMS with a CA) the
RMS's API is HTTPS and checked against that CA, this host's key stays here (the RMS signs
its request), and this agent's API and migrations run over TLS with the issued certificate.
Without --rms it runs standalone.")]
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
    /// The RMS to register with, heartbeat to and send migration events to
    /// (`https://HOST:PORT` with --ca-file, or `http://HOST:PORT` for an RMS without a CA);
    /// omit to run standalone.
    #[arg(long, value_name = "URL")]
    pub rms: Option<String>,
    /// The IP migration listeners bind to, reachable by the other agents. [default: the IP of
    /// --listen; required with --rms when --listen is a wildcard address]
    #[arg(long, value_name = "IP")]
    pub data_host: Option<IpAddr>,
    /// The RMS's CA certificate (the `ca.pem` of its --ca-dir), copied here by the operator;
    /// needed by an https:// --rms. The RMS's API must present a certificate it issued, the
    /// certificate the RMS issues at registration is used only if it chains to it, and this
    /// agent's API then serves HTTPS with that certificate.
    #[arg(long, value_name = "FILE", requires = "rms")]
    pub ca_file: Option<PathBuf>,
    /// Where the RMS reaches this agent's API (HOST:PORT). [default: --listen, its wildcard
    /// IP replaced by --data-host]
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise: Option<String>,
    /// Heartbeat period; by default the one the RMS gives at registration.
    #[arg(long, value_name = "TIME")]
    pub heartbeat: Option<String>,
    /// How long the RMS may hear nothing before it calls this host lost (sent at
    /// registration); by default the RMS's own.
    #[arg(long, value_name = "TIME")]
    pub timeout: Option<String>,
    /// How long an incoming migration's listener waits for its source.
    #[arg(long, default_value = "120s")]
    pub accept_timeout: String,
    /// Where a paused copy whose hand-over's outcome is unknown is saved (settle it with
    /// `livemig resolve`).
    #[arg(long, default_value = ".")]
    pub hold_dir: PathBuf,
    /// Where QEMU VMs (kind `qemu`) live: one directory per VM (QMP socket, serial console,
    /// migration sockets), created when the first one starts. Keep it short: UNIX socket
    /// paths are limited to about 100 bytes.
    #[arg(long, default_value = "livemig-state")]
    pub state_dir: PathBuf,
    /// The test guest's image for QEMU VMs (`vmlinuz`, `initramfs.cpio.gz`, built by
    /// scripts/build-guest.sh). [default: $LIVEMIG_GUEST_DIR, else $CARGO_TARGET_DIR/guest,
    /// else target/guest] The QEMU binary is qemu-system-x86_64, or $LIVEMIG_QEMU.
    #[arg(long, value_name = "DIR")]
    pub guest_dir: Option<PathBuf>,
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
    let rms_url = args.rms.clone();
    let ca_pem = match &args.ca_file {
        Some(path) => {
            let pem = livemig_tls::files::read_cert(path).context("--ca-file")?;
            livemig_tls::config::parse_certs(&pem)
                .with_context(|| format!("--ca-file {}", path.display()))?;
            Some(pem)
        }
        None => None,
    };
    if let Some(url) = &rms_url {
        // Checked now (the token is checked below): a bad URL is a usage error.
        RmsClient::new(url, Secret::new("-"), ca_pem.as_deref())
            .with_context(|| format!("--rms {url}"))?;
        if ca_pem.is_some() && !url.starts_with("https://") {
            bail!("--ca-file is for an https:// --rms (an RMS with a CA serves HTTPS only)");
        }
    }
    if !livemig_api::is_valid_name(&args.name) {
        bail!("--name must be 1 to 64 characters of A-Z a-z 0-9 . _ -");
    }
    let (token, secret) = Token::load_secret(&args.token_file)?;
    let memory = units::parse_size(&args.capacity_memory).context("--capacity-memory")?;
    if !(memory >= 4096.0 && memory < u64::MAX as f64) {
        bail!("--capacity-memory must be at least one page (4KiB)");
    }
    let ttl = positive_duration("reservation-ttl", &args.reservation_ttl)?;
    let listen: SocketAddr = args
        .listen
        .parse()
        .with_context(|| format!("--listen {} must be IP:PORT", args.listen))?;
    let data_host = match args.data_host {
        Some(ip) if ip.is_unspecified() => bail!("--data-host must be one address, not {ip}"),
        Some(ip) => ip,
        None if !listen.ip().is_unspecified() => listen.ip(),
        None if rms_url.is_some() => bail!(
            "--listen {listen} does not say which address other agents reach: give --data-host"
        ),
        None => IpAddr::from([127, 0, 0, 1]),
    };
    let heartbeat_s = args
        .heartbeat
        .as_deref()
        .map(|v| positive_duration("heartbeat", v).map(|d| d.as_secs_f64()))
        .transpose()?;
    let timeout_s = args
        .timeout
        .as_deref()
        .map(|v| positive_duration("timeout", v).map(|d| d.as_secs_f64()))
        .transpose()?;
    if args.state_dir.exists() && !args.state_dir.is_dir() {
        bail!(
            "--state-dir {} is not a directory",
            args.state_dir.display()
        );
    }
    if let Some(d) = &args.guest_dir {
        // Checked at every QEMU VM's start (503 when missing); a typo shows at once here.
        if !d.is_dir() {
            bail!("--guest-dir {} is not a directory", d.display());
        }
    }
    if !args.hold_dir.is_dir() {
        bail!("--hold-dir {} is not a directory", args.hold_dir.display());
    }
    let migrator = MigratorConfig {
        accept_timeout: positive_duration("accept-timeout", &args.accept_timeout)?,
        hold_dir: Some(args.hold_dir.clone()),
        ..MigratorConfig::new(data_host)
    };
    if args.max_connections == 0 || args.max_connections > 4096 {
        bail!("--max-connections must be between 1 and 4096");
    }
    let mut book = BookConfig::new(memory as u64);
    book.reservation_ttl_s = ttl.as_secs_f64();
    // Reservation ids carry this start's time, so an id from an earlier run names nothing.
    book.id_prefix = format!("{}-{}", args.name, (livemig_agent::system_clock())() as u64);
    let mut agent = Agent::new(
        args.name.clone(),
        token,
        book,
        livemig_agent::system_clock(),
    )
    .with_migrator(migrator)
    .with_qemu(QemuConfig {
        state_dir: args.state_dir.clone(),
        guest_dir: args.guest_dir.clone(),
    });
    let mut rms = None;
    if let Some(url) = &rms_url {
        let client = RmsClient::new(url, secret, ca_pem.as_deref())
            .with_context(|| format!("--rms {url}"))?;
        let (outbox, inbox) = Outbox::new(&args.name, LIGHT_EVENTS_QUEUED);
        agent = agent.with_outbox(outbox);
        rms = Some((client, inbox));
    }
    let agent = Arc::new(agent);
    let cfg = ServerConfig {
        http: livemig_http::ServerConfig {
            max_connections: args.max_connections,
            ..livemig_http::ServerConfig::default()
        },
        https: ca_pem.is_some(),
        ..ServerConfig::default()
    };
    let stop = CancellationToken::new();
    let on_stop = stop.clone();
    crate::signals::on_interrupt(move || on_stop.cancel())?;
    let rt = crate::rt::runtime()?;
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(&args.listen))
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let local = listener.local_addr()?;
    let address = local.to_string();
    let advertised = args.advertise.clone().unwrap_or_else(|| {
        let ip = if local.ip().is_unspecified() {
            data_host
        } else {
            local.ip()
        };
        SocketAddr::new(ip, local.port()).to_string()
    });
    let line = if args.json {
        serde_json::json!({"listening": address, "name": args.name}).to_string()
    } else {
        format!("listening on {address}")
    };
    crate::out::emit_line(&line)?;
    if let Some(pem) = ca_pem {
        agent.tls().set_anchor(pem);
    }
    rt.block_on(async move {
        let rms_stop = CancellationToken::new();
        let tasks = rms.map(|(client, inbox)| {
            let link = LinkConfig {
                address: advertised,
                data_host: data_host.to_string(),
                timeout_s,
                heartbeat_s,
            };
            livemig_agent::rms::spawn(client, inbox, link, Arc::clone(&agent), rms_stop.clone())
        });
        livemig_agent::run(listener, agent, cfg, stop).await;
        // The server has stopped its migrations: the last events go out, then the link ends.
        rms_stop.cancel();
        if let Some((link, deliver)) = tasks {
            let _ = link.await;
            let _ = deliver.await;
        }
    });
    // The VMs stop when the agent is dropped (their writer threads are joined).
    tracing::debug!("agent stopped");
    Ok(())
}
