//! `livemig rms`: the Resource Management System: the HTTP API operators and agents use, the
//! orchestrator, its store.
//!
//! Every flag, the token file and the store are checked before the socket is bound (exit 2).
//! SIGINT or SIGTERM stops it cleanly: no new connections, requests in flight get a short
//! grace, the store is closed. Migrations in flight go on on their agents; the next start
//! recovers them from the store and the agents' reports.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use livemig_http::{ServerConfig, Token};
use livemig_rms::budget::{Budget, Scheme};
use livemig_rms::orchestrator::BudgetConfig;
use livemig_rms_server::RmsConfig;
use livemig_store::StoreUrl;
use livemig_workload::units;
use tokio_util::sync::CancellationToken;

use crate::args::positive_duration;

/// `livemig rms` flags.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Examples:
  livemig rms --listen 0.0.0.0:7700 --db sqlite:/var/lib/livemig/rms.db --token-file /etc/livemig/token
  livemig rms --listen 10.0.0.1:7700 --db postgres://rms@db/livemig --token-file t --name rms-a
  livemig rms --listen 127.0.0.1:0 --db sqlite::memory: --token-file rms.token --json

The token file holds the cluster's bearer token on its first line (mode 600); agents and the
operator CLI use the same token. Every request but GET /healthz and the dashboard's files
carries `Authorization: Bearer <token>`. The dashboard: open http://HOST:PORT/#token=TOKEN in
a browser (it needs nothing from the internet). API: docs/system.md; operations:
docs/operations.md.")]
pub struct Args {
    /// Address to listen on (HOST:PORT; port 0 picks one and prints it).
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub listen: String,
    /// The store: `sqlite:PATH` (created if missing; WAL), `postgres://USER@HOST[:PORT]/DB`
    /// (several RMS processes may share it: one leads), or `sqlite::memory:` (tests only).
    #[arg(long, default_value = "sqlite:livemig-rms.db")]
    pub db: String,
    /// File holding the bearer token (first line; mode 600).
    #[arg(long)]
    pub token_file: PathBuf,
    /// Without --budget: migrations placing or running at once; more wait `queued`.
    #[arg(long, default_value_t = 4)]
    pub max_active: usize,
    /// The migration network's capacity for migrations together, e.g. `1Gbit` or
    /// `100MiB/s`: the shared uplink's budget. Every running migration gets a grant that
    /// bounds its policy's caps; the grants never add up to more (docs/budget.md). Without
    /// it, --max-active slots alone limit migrations and nothing caps their sum.
    #[arg(long, value_name = "RATE")]
    pub budget: Option<String>,
    /// Each host's NIC limit for migrations (out and in together), with --budget.
    #[arg(long, value_name = "RATE", requires = "budget")]
    pub host_nic: Option<String>,
    /// How the budget is shared: `budget` (admission by prediction: a migration starts when
    /// the rate it needs to converge fits; the rest goes shortest-remaining first),
    /// `sequential` (one per source host, uncapped), `fixed-slots` (2 per source host and 5
    /// in all, each capped at budget / 5), `unlimited` (all at once, uncapped).
    #[arg(long, value_enum, default_value = "budget", requires = "budget")]
    pub scheme: SchemeArg,
    /// How long a source samples a queued VM's dirtying before admission (`budget` only).
    #[arg(
        long,
        default_value = "1s",
        value_name = "DURATION",
        requires = "budget"
    )]
    pub sample: String,
    /// How long a host may stay silent before it is marked lost (unless it registered its own).
    #[arg(long, default_value = "10s")]
    pub host_timeout: String,
    /// How long a host may take to answer a capacity question.
    #[arg(long, default_value = "5s")]
    pub answer_timeout: String,
    /// How often agents send heartbeats (told to them at registration).
    #[arg(long, default_value = "1s")]
    pub heartbeat: String,
    /// The policy of a migration request that names none.
    #[arg(long, default_value = "predictive")]
    pub default_policy: String,
    /// This RMS's name in the store's lease (two RMS processes on one database: one leads,
    /// the other waits). Default: HOSTNAME-PID, so a restarted process waits out its
    /// predecessor's lease (10 s); give a fixed name to take over one's own lease at once.
    #[arg(long)]
    pub name: Option<String>,
    /// The installation's CA: `ca.pem` (644) and `ca.key` (600) in DIR, generated on the
    /// first start. With it, the API is HTTPS (agents and the operator CLI need `ca.pem`:
    /// `--ca-file`), registrations get host certificates, the RMS calls agents over HTTPS and
    /// migrations run over mutual TLS; without it, everything is plain TCP.
    #[arg(long, value_name = "DIR")]
    pub ca_dir: Option<PathBuf>,
    /// A name or IP address the RMS's certificate carries besides the defaults (this
    /// machine's host name, `localhost`, 127.0.0.1, ::1 and the --listen IP unless it is a
    /// wildcard): every name clients use in the RMS URL. Repeatable; with --ca-dir only.
    #[arg(long, value_name = "NAME|IP", requires = "ca_dir")]
    pub tls_san: Vec<String>,
    /// Print the listening address as JSON (`{"listening": ...}`).
    #[arg(long)]
    pub json: bool,
}

/// `--scheme`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SchemeArg {
    Budget,
    Sequential,
    FixedSlots,
    Unlimited,
}

/// The budget of `--budget`, `--host-nic`, `--scheme` and `--sample`.
fn budget_config(args: &Args) -> Result<Option<BudgetConfig>> {
    let Some(b) = &args.budget else {
        return Ok(None);
    };
    let rate = |flag: &str, v: &str| -> Result<f64> {
        let r = units::parse_rate_with_unit(v).with_context(|| format!("--{flag} `{v}`"))?;
        if !(r.is_finite() && r > 0.0) {
            bail!("--{flag} must be a positive rate");
        }
        Ok(r)
    };
    let mut budget = Budget::uplink(rate("budget", b)?);
    if let Some(n) = &args.host_nic {
        budget.default_host_nic_bytes_per_s = Some(rate("host-nic", n)?);
    }
    let scheme = match args.scheme {
        SchemeArg::Budget => Scheme::BUDGET,
        SchemeArg::Sequential => Scheme::Sequential,
        SchemeArg::FixedSlots => Scheme::FIXED_SLOTS,
        SchemeArg::Unlimited => Scheme::Unlimited,
    };
    let sample = positive_duration("sample", &args.sample)?.as_secs_f64();
    if sample > 10.0 {
        bail!("--sample must be at most 10 s (the agents refuse longer samples)");
    }
    let mut bc = BudgetConfig::new(budget, scheme);
    bc.sample_s = sample.max(0.2);
    Ok(Some(bc))
}

/// Loads the CA from `dir`, or generates and saves it there on the first start.
fn load_or_generate_ca(dir: &std::path::Path) -> Result<livemig_tls::Ca> {
    let cert = dir.join("ca.pem");
    let key = dir.join("ca.key");
    if cert.exists() || key.exists() {
        return livemig_tls::Ca::load(&cert, &key)
            .with_context(|| format!("cannot load the CA from {}", dir.display()));
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let ca = livemig_tls::Ca::generate("livemig CA").context("cannot generate the CA")?;
    ca.save(&cert, &key)
        .with_context(|| format!("cannot save the CA in {}", dir.display()))?;
    tracing::info!(dir = %dir.display(), "generated the installation's CA");
    Ok(ca)
}

/// Runs `livemig rms` until SIGINT or SIGTERM.
pub fn run(args: Args) -> Result<()> {
    let (token, secret) = Token::load_secret(&args.token_file)?;
    if args.max_active == 0 || args.max_active > 1024 {
        bail!("--max-active must be between 1 and 1024");
    }
    let host_timeout = positive_duration("host-timeout", &args.host_timeout)?;
    let answer_timeout = positive_duration("answer-timeout", &args.answer_timeout)?;
    let heartbeat = positive_duration("heartbeat", &args.heartbeat)?;
    if heartbeat >= host_timeout {
        bail!("--heartbeat must be shorter than --host-timeout (a heartbeat must arrive in time)");
    }
    if <livemig_policy::PolicyKind as std::str::FromStr>::from_str(&args.default_policy).is_err() {
        bail!("--default-policy: unknown policy `{}`", args.default_policy);
    }
    let tls = match &args.ca_dir {
        Some(dir) => {
            let ca = std::sync::Arc::new(load_or_generate_ca(dir)?);
            let (dns, ips) = certificate_names(&args.listen, &args.tls_san)?;
            let dns: Vec<&str> = dns.iter().map(String::as_str).collect();
            Some(
                livemig_rms_server::RmsTls::issue(ca, &dns, &ips)
                    .context("cannot issue the RMS's own certificate (--tls-san)")?,
            )
        }
        None => None,
    };
    let url = StoreUrl::parse(&args.db).context("--db")?;
    let store =
        livemig_store::open(&url).with_context(|| format!("cannot open the store {}", args.db))?;
    let mut cfg = RmsConfig::default();
    cfg.orchestrator.max_active = args.max_active;
    cfg.orchestrator.host_timeout_s = host_timeout.as_secs_f64();
    cfg.orchestrator.answer_timeout_s = answer_timeout.as_secs_f64();
    cfg.orchestrator.default_policy = args.default_policy.clone();
    cfg.orchestrator.budget = budget_config(&args)?;
    cfg.heartbeat_s = heartbeat.as_secs_f64();
    cfg.agent_timeout = answer_timeout.min(Duration::from_secs(10));
    let holder = match args.name.clone() {
        Some(n) => n,
        None => format!("{}-{}", hostname(), std::process::id()),
    };
    let stop = CancellationToken::new();
    let on_stop = stop.clone();
    crate::signals::on_interrupt(move || on_stop.cancel())?;
    let rt = crate::rt::runtime()?;
    // A standby binds nothing: it takes the address once it leads (the old leader is gone).
    let Some((store, leading)) =
        rt.block_on(livemig_rms_server::await_leadership(store, &holder, &stop))?
    else {
        return Ok(());
    };
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(&args.listen))
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?.to_string();
    let line = if args.json {
        serde_json::json!({"listening": address, "name": holder}).to_string()
    } else {
        format!("listening on {address}")
    };
    crate::out::emit_line(&line)?;
    rt.block_on(livemig_rms_server::run(
        listener,
        store,
        Some(leading),
        token,
        secret,
        cfg,
        ServerConfig::default(),
        livemig_rms_server::system_clock(),
        tls,
        stop,
    ))?;
    tracing::debug!("rms stopped");
    Ok(())
}

/// What the RMS's certificate names: `localhost`, this machine's host name (when it is a
/// valid DNS name), the loopback addresses, the --listen IP unless a wildcard, and `extra`.
fn certificate_names(listen: &str, extra: &[String]) -> Result<(Vec<String>, Vec<IpAddr>)> {
    let mut dns = vec!["localhost".to_string()];
    let host = hostname();
    if rustls_name_ok(&host) && host != "localhost" {
        dns.push(host);
    }
    let mut ips: Vec<IpAddr> = vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()];
    if let Ok(a) = listen.parse::<std::net::SocketAddr>() {
        if !a.ip().is_unspecified() {
            ips.push(a.ip());
        }
    }
    for s in extra {
        match s.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) if rustls_name_ok(s) => dns.push(s.clone()),
            Err(_) => bail!("--tls-san `{s}` is neither an IP address nor a valid DNS name"),
        }
    }
    dns.dedup();
    ips.sort();
    ips.dedup();
    Ok((dns, ips))
}

/// Whether `name` is a DNS name a certificate can carry (not an IP literal).
fn rustls_name_ok(name: &str) -> bool {
    name.parse::<IpAddr>().is_err()
        && !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// This machine's name (`/proc/sys/kernel/hostname`), or `rms` when it cannot be read.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "rms".to_string())
}
