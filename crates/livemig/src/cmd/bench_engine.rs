//! `livemig bench-engine`: the data path's throughput with no cap against a plain loopback
//! socket copy measured in the same run, the same migration over mutual TLS (what TLS costs),
//! and cap accuracy per 100 ms window.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use livemig_engine::meter::WireMeter;
use livemig_engine::net::Transport;
use livemig_engine::wire::{HEADER_LEN, MAX_BATCH_PAGES, PAGE_SIZE};
use livemig_engine::{
    migrate_measured, net, Control, Guest, InitialContent, Key, ReceiverConfig, SendError,
    SenderConfig, SimGuest, SimGuestConfig,
};
use livemig_policy::report::MigrationReport;
use livemig_policy::{Policy, PolicyConfig, PolicyKind};
use livemig_tls::{Acceptor, Ca, Connector, Identity};
use livemig_workload::units::{self, fmt_bytes, fmt_rate};

use crate::out;

/// `livemig bench-engine` flags.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Examples:
  livemig bench-engine
  livemig bench-engine --memory 512MiB --repeat 5
  livemig bench-engine --cap 100Mbit/s --cap-duration 5s --json

Every run moves the guest twice, over plain TCP and over mutual TLS (TLS 1.3, ring, the
certificates a CA made for the run issued), one after the other on loopback: the ratio of the
medians is what TLS costs the data path.")]
pub struct Args {
    /// Guest memory moved by each uncapped run (and by each plain socket copy), rounded down
    /// to whole 4 KiB pages: from one page to 64 GiB, and at most half the host's available
    /// memory (a run holds two copies at once).
    #[arg(long, default_value = "512MiB")]
    pub memory: String,
    /// Runs of each measurement (1 to 100); medians are reported.
    #[arg(long, default_value_t = 3)]
    pub repeat: u32,
    /// The cap of the accuracy run, from 1 MiB/s to 100 Gbit/s.
    #[arg(long, default_value = "200MiB/s")]
    pub cap: String,
    /// Length of the accuracy run's round, from 1s to 10m (its guest is cap x this long,
    /// bounded like --memory).
    #[arg(long, default_value = "3s")]
    pub cap_duration: String,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
}

const TIMEOUT: Duration = Duration::from_secs(30);

const PAGE: u64 = PAGE_SIZE as u64;
/// The largest guest: what a receiver accepts by default (`ReceiverConfig::max_memory`).
const MAX_MEMORY: u64 = 64 << 30;
/// The slowest cap: a frame of the largest size (about 1 MiB) then crosses in about 1 s, well
/// within the receiver's frame deadline (10 s), and a run of 1 s still has 10 windows.
const MIN_CAP: f64 = 1024.0 * 1024.0;
/// The fastest cap: 100 Gbit/s, beyond any loopback this runs on.
const MAX_CAP: f64 = 100e9 / 8.0;
/// The accuracy run's length: at least 1 s (10 windows of 100 ms), at most 10 minutes.
const CAP_DURATION_S: (f64, f64) = (1.0, 600.0);
const MAX_REPEAT: u32 = 100;

/// What `bench-engine` will run, every flag checked.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Plan {
    /// Guest memory of the uncapped runs and socket copies (whole pages).
    memory: u64,
    repeat: u32,
    /// The accuracy run's cap (bytes/s) and guest memory (whole pages).
    cap: f64,
    cap_memory: u64,
}

/// Checks the flags before any work. `available` is the host's available memory, when known:
/// a run holds two copies of its guest at once (source and destination buffers, or the guest
/// and the receiver's memory).
fn plan(args: &Args, available: Option<u64>) -> Result<Plan> {
    let size = units::parse_size(&args.memory).context("--memory")?;
    let memory = guest_memory("--memory", &args.memory, size, available)?;
    if !(1..=MAX_REPEAT).contains(&args.repeat) {
        bail!(
            "--repeat must be between 1 and {MAX_REPEAT}, got {}",
            args.repeat
        );
    }
    let cap = units::parse_rate_with_unit(&args.cap).context("--cap")?;
    if !(MIN_CAP..=MAX_CAP).contains(&cap) {
        bail!(
            "--cap must be between 1 MiB/s (a frame of about 1 MiB per second) and 100 Gbit/s, \
             got {}",
            args.cap
        );
    }
    let cap_s = units::parse_duration_with_unit(&args.cap_duration).context("--cap-duration")?;
    if !(CAP_DURATION_S.0..=CAP_DURATION_S.1).contains(&cap_s) {
        bail!(
            "--cap-duration must be between 1s and 10m, got {}",
            args.cap_duration
        );
    }
    let what = format!("--cap {} x --cap-duration {}", args.cap, args.cap_duration);
    let bytes = cap * cap_s;
    let cap_memory = guest_memory(&what, &format!("= {}", fmt_bytes(bytes)), bytes, available)?;
    Ok(Plan {
        memory,
        repeat: args.repeat,
        cap,
        cap_memory,
    })
}

/// `bytes` (finite, from a flag shown as `flag value`) as whole pages, between one page and
/// [`MAX_MEMORY`], of which two copies fit in `available`.
fn guest_memory(flag: &str, value: &str, bytes: f64, available: Option<u64>) -> Result<u64> {
    if !(bytes >= PAGE as f64 && bytes <= MAX_MEMORY as f64) {
        bail!("{flag} {value}: the guest must be between one page (4 KiB) and 64 GiB");
    }
    // In range, so the conversion is exact up to the rounding to whole pages.
    let memory = bytes as u64 / PAGE * PAGE;
    if let Some(avail) = available {
        if memory.saturating_mul(2) > avail {
            bail!(
                "{flag} {value}: a run holds two copies of the guest ({}), more than this host's \
                 available memory ({})",
                fmt_bytes(2.0 * memory as f64),
                fmt_bytes(avail as f64)
            );
        }
    }
    Ok(memory)
}

/// `MemAvailable` of /proc/meminfo in bytes, when there is one.
fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

fn loopback_pair() -> Result<(TcpStream, TcpStream)> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let a = TcpStream::connect(l.local_addr()?)?;
    let (b, _) = l.accept()?;
    net::prepare(&a, TIMEOUT)?;
    net::prepare(&b, TIMEOUT)?;
    Ok((a, b))
}

/// Bytes/s of a plain copy of `bytes` over loopback in 1 MiB writes and reads. With
/// `memory_to_memory` it reads from a source buffer of `bytes` bytes into a destination buffer
/// of `bytes` bytes (both touched beforehand), as a migration moves memory; without, it
/// recycles one 1 MiB buffer on each side (cache-resident: an upper bound for the socket).
fn socket_copy(bytes: u64, memory_to_memory: bool) -> Result<f64> {
    const CHUNK: usize = 1 << 20;
    let size = if memory_to_memory {
        bytes as usize
    } else {
        CHUNK
    };
    let src: Vec<u8> = source_bytes(size).collect();
    let mut dst = vec![0u8; size];
    for b in dst.iter_mut().step_by(4096) {
        *b = 1;
    }
    let (mut a, mut b) = loopback_pair()?;
    let reader = std::thread::spawn(move || -> std::io::Result<Instant> {
        let mut done = 0usize;
        while (done as u64) < bytes {
            let at = done % dst.len();
            let end = (at + CHUNK).min(dst.len());
            let n = b.read(&mut dst[at..end])?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            done += n;
        }
        Ok(Instant::now())
    });
    let start = Instant::now();
    let mut done = 0usize;
    while (done as u64) < bytes {
        let at = done % src.len();
        let n = (bytes as usize - done).min(CHUNK).min(src.len() - at);
        a.write_all(&src[at..at + n])?;
        done += n;
    }
    let end = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader thread panicked"))??;
    Ok(bytes as f64 / end.duration_since(start).as_secs_f64())
}

/// The socket copy's `size` source bytes (a multiplicative hash of the index). The index
/// runs over the whole size: it once ran over `size as u32`, so a 4 GiB copy had an empty
/// source and divided by its length.
fn source_bytes(size: usize) -> impl ExactSizeIterator<Item = u8> {
    (0..size).map(|i| ((i as u64).wrapping_mul(2654435761) >> 11) as u8)
}

/// One engine migration of an idle guest with random content, one round at `cap`.
fn engine_once(memory: u64, cap: f64) -> Result<(MigrationReport, WireMeter)> {
    engine_steered(memory, cap, None, None).map(|(r, m, _)| (r, m))
}

/// The data path under mutual TLS as agents run it: a CA made for the run, a certificate for
/// each end.
struct Tls {
    acceptor: Acceptor,
    connector: Connector,
    /// The cipher suite the last connection negotiated (shown with the results).
    suite: std::sync::Mutex<String>,
}

/// The name in the destination's certificate (loopback).
const TLS_NAME: &str = "bench-destination";

impl Tls {
    fn new() -> Result<Tls> {
        let ca = Ca::generate("livemig bench CA")?;
        let issue = |name: &str| -> Result<Identity> {
            let ip = std::net::IpAddr::from([127, 0, 0, 1]);
            let (key, csr) = Identity::generate_csr(name, &[ip])?;
            let cert = ca.issue(&csr, name, &[ip], livemig_tls::HOST_VALIDITY)?;
            Ok(Identity {
                cert_chain_pem: cert,
                key,
            })
        };
        let (dest, src) = (issue(TLS_NAME)?, issue("bench-source")?);
        Ok(Tls {
            acceptor: Acceptor::new(livemig_tls::server_config(
                &dest.cert_chain_pem,
                &dest.key,
                Some(ca.cert_pem()),
            )?),
            connector: Connector::new(livemig_tls::client_config(ca.cert_pem(), Some(&src))?),
            suite: std::sync::Mutex::new(String::new()),
        })
    }
}

/// One engine migration over TLS, no cap; returns the round's rate and the cipher suite.
fn engine_tls_once(memory: u64, tls: &Tls) -> Result<(f64, String)> {
    let (r, _, _) = engine_steered(memory, 1e12, None, Some(tls))?;
    let round = r.rounds.first().context("no round ran")?;
    let suite = tls
        .suite
        .lock()
        .map_or_else(|e| e.into_inner().clone(), |s| s.clone());
    Ok((round.bytes_sent / round.duration_s, suite))
}

/// The sender's half of a run, on any transport.
#[allow(clippy::too_many_arguments)]
fn send_on<S: Transport>(
    stream: &mut S,
    key: &Key,
    guest: &dyn Guest,
    policy: &mut dyn Policy,
    cfg: &SenderConfig,
    control: &Control,
    tx: &mut Option<std::sync::mpsc::Sender<Instant>>,
) -> Result<(MigrationReport, WireMeter), SendError> {
    migrate_measured(
        stream,
        key,
        guest,
        policy,
        cfg,
        control,
        &mut |e| {
            if matches!(e, livemig_policy::Event::RoundStarted { .. }) {
                if let Some(t) = tx.take() {
                    let _ = t.send(Instant::now());
                }
            }
        },
        None,
    )
}

/// A grant step: lowered to `grant` (bytes/s) `at_s` after round 1 starts, lifted `for_s`
/// later.
#[derive(Debug, Clone, Copy)]
struct Step {
    grant: f64,
    at_s: f64,
    for_s: f64,
}

/// [`engine_once`] with a grant [`Step`] given from another thread, as a budget would; also
/// returns when the grant was given, in the wire meter's time.
fn engine_steered(
    memory: u64,
    cap: f64,
    step: Option<Step>,
    tls: Option<&Tls>,
) -> Result<(MigrationReport, WireMeter, Option<f64>)> {
    let guest = SimGuest::start(
        &SimGuestConfig {
            memory_bytes: memory,
            workload: "idle".into(),
            content: InitialContent::Random,
            seed: 1,
        },
        u64::MAX,
    )?;
    let cfg = PolicyConfig {
        memory_bytes: memory as f64,
        max_rounds: 1,
        stop_remaining: memory as f64,
        max_bandwidth: cap.max(1e9),
        fixed_bandwidth: Some(cap),
        ..PolicyConfig::default()
    };
    let mut policy = PolicyKind::Fixed.build(cfg)?;
    let key = Key::generate()?;
    let (mut a, mut b) = loopback_pair()?;
    let dk = key.clone();
    let acceptor = tls.map(|t| t.acceptor.clone());
    let dest = std::thread::spawn(move || -> Result<()> {
        let cfg = ReceiverConfig::default();
        match acceptor {
            Some(acc) => {
                let mut s = acc.accept(b, TIMEOUT)?;
                livemig_engine::receive(&mut s, &dk, &cfg)?;
            }
            None => {
                livemig_engine::receive(&mut b, &dk, &cfg)?;
            }
        }
        Ok(())
    });
    let send_cfg = SenderConfig {
        sample_s: 0.0,
        ..SenderConfig::default()
    };
    let control = livemig_engine::Control::new();
    let (tx, rx) = std::sync::mpsc::channel::<Instant>();
    let steer = control.clone();
    let stepper = std::thread::spawn(move || -> Option<f64> {
        let step = step?;
        // The meter's clock starts with round 1, as the `RoundStarted` event is sent.
        let t0 = rx.recv().ok()?;
        std::thread::sleep(Duration::from_secs_f64(step.at_s));
        let at = t0.elapsed().as_secs_f64();
        steer.grant(Some(step.grant));
        std::thread::sleep(Duration::from_secs_f64(step.for_s));
        steer.grant(None);
        Some(at)
    });
    let mut tx = Some(tx);
    let r = match tls {
        Some(t) => {
            let mut s = t.connector.wrap(a, TLS_NAME, TIMEOUT)?;
            let suite = s.cipher_suite().unwrap_or_default();
            *t.suite.lock().unwrap_or_else(|e| e.into_inner()) = suite;
            send_on(
                &mut s,
                &key,
                &guest,
                policy.as_mut(),
                &send_cfg,
                &control,
                &mut tx,
            )
        }
        None => send_on(
            &mut a,
            &key,
            &guest,
            policy.as_mut(),
            &send_cfg,
            &control,
            &mut tx,
        ),
    };
    drop(tx);
    dest.join()
        .map_err(|_| anyhow::anyhow!("receiver thread panicked"))?
        .context("the receiver failed")?;
    let at = stepper.join().unwrap_or(None);
    let (report, meter) = r?;
    Ok((report, meter, at))
}

/// How long after `at` the wire first holds `grant` (within 10 %) over a whole 50 ms window
/// (the window's end; an upper bound of the reaction), in 10 ms steps; `None` if never
/// before `end`.
fn grant_reaction(meter: &WireMeter, at: f64, grant: f64, end: f64) -> Option<f64> {
    const WINDOW: f64 = 0.05;
    // Windows start on the meter's 10 ms bins, none before the grant.
    let mut t = (at / 0.01).ceil() * 0.01;
    while t + WINDOW <= end {
        let r = meter.window_rates(t, t + WINDOW, WINDOW);
        if r.first().is_some_and(|x| *x <= grant * 1.1) {
            return Some(t + WINDOW - at);
        }
        t += 0.01;
    }
    None
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    match xs.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => xs[n / 2],
        n => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

fn wmem_max() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()?
        .split_whitespace()
        .nth(2)?
        .parse()
        .ok()
}

/// Runs `livemig bench-engine`.
pub fn run(args: Args) -> Result<()> {
    let Plan {
        memory,
        repeat,
        cap,
        cap_memory,
    } = plan(&args, available_memory())?;
    let mut hot = Vec::new();
    let mut plain = Vec::new();
    let mut engine = Vec::new();
    let mut engine_tls = Vec::new();
    let tls = Tls::new().context("cannot set up TLS for the run")?;
    let mut suite = String::new();
    for i in 0..repeat {
        let h = socket_copy(memory, false)?;
        let p = socket_copy(memory, true)?;
        let (r, _) = engine_once(memory, 1e12)?;
        let round = r.rounds.first().context("no round ran")?;
        let e = round.bytes_sent / round.duration_s;
        let (t, s) = engine_tls_once(memory, &tls).context("the run over TLS")?;
        suite = s;
        if !args.json {
            out::note(&format!(
                "run {}: socket copy, 1 MiB buffers {}; socket copy, memory to memory {}; engine (no cap, random pages) {}; engine over TLS {}",
                i + 1,
                fmt_rate(h),
                fmt_rate(p),
                fmt_rate(e),
                fmt_rate(t)
            ));
        }
        hot.push(h);
        plain.push(p);
        engine.push(e);
        engine_tls.push(t);
    }
    let (h, p, e) = (
        median(hot.clone()),
        median(plain.clone()),
        median(engine.clone()),
    );
    let t = median(engine_tls.clone());
    // Each run's own TLS/plain pair, for the spread of the ratio.
    let paired: Vec<f64> = engine_tls.iter().zip(&engine).map(|(t, e)| t / e).collect();

    let (r, meter) = engine_once(cap_memory, cap)?;
    let d = r.rounds.first().map_or(0.0, |x| x.duration_s);
    let ratios: Vec<f64> = meter
        .window_rates(0.1, d, 0.1)
        .into_iter()
        .map(|w| w / cap)
        .collect();
    let within = ratios.iter().filter(|r| (**r - 1.0).abs() <= 0.05).count();
    let worst = ratios.iter().map(|r| (r - 1.0).abs()).fold(0.0, f64::max);
    // A lowered grant mid-round: how soon the wire obeys it (the issue asks within 100 ms).
    let grant = cap / 4.0;
    let planned_s = cap_memory as f64 / cap;
    let step = Step {
        grant,
        at_s: planned_s / 3.0,
        for_s: (planned_s / 3.0).min(0.5),
    };
    // A run whose wire never held the grant over a whole window within the step (a loaded
    // machine starving the sender) is counted and shown, not hidden.
    let mut reactions = Vec::new();
    let mut unsettled = 0usize;
    for _ in 0..repeat {
        let (_, meter, at) = engine_steered(cap_memory, cap, Some(step), None)?;
        match at.and_then(|at| grant_reaction(&meter, at, grant, at + step.for_s)) {
            Some(r) => reactions.push(r),
            None => unsettled += 1,
        }
    }
    let reaction = median(reactions.clone());
    let frame = HEADER_LEN + 4 + MAX_BATCH_PAGES as usize * (13 + PAGE_SIZE);
    let in_flight = format!(
        "sender in flight: one frame buffer of at most {} pages ({}) in user space plus the kernel \
         send buffer (tcp_wmem max {}); guest memory is never copied",
        MAX_BATCH_PAGES,
        fmt_bytes(frame as f64),
        wmem_max().map_or("unknown".into(), |b| fmt_bytes(b as f64))
    );
    if args.json {
        let v = serde_json::json!({
            "memory_bytes": memory,
            "socket_copy_hot_buffers_bytes_per_s": hot,
            "socket_copy_memory_to_memory_bytes_per_s": plain,
            "engine_bytes_per_s": engine,
            "median_socket_copy_hot_buffers_bytes_per_s": h,
            "median_socket_copy_memory_to_memory_bytes_per_s": p,
            "median_engine_bytes_per_s": e,
            "engine_over_memory_to_memory_copy": e / p,
            "engine_over_hot_buffer_copy": e / h,
            "engine_tls_bytes_per_s": engine_tls,
            "median_engine_tls_bytes_per_s": t,
            "tls_cipher_suite": suite,
            "engine_tls_over_engine": t / e,
            "engine_tls_over_engine_per_run": paired,
            "tls_cost_pct": 100.0 * (1.0 - t / e),
            "cap_bytes_per_s": cap,
            "cap_window_ratios": ratios,
            "cap_windows_within_5pct": within,
            "cap_worst_deviation": worst,
            "grant_lowered_to_bytes_per_s": grant,
            "grant_reaction_s": reactions,
            "median_grant_reaction_s": reaction,
            "grant_runs_not_settled": unsettled,
            "sender_frame_bytes_max": frame,
        });
        out::emit_line(&serde_json::to_string_pretty(&v)?)?;
    } else {
        let mut text = String::new();
        let _ = writeln!(
            text,
            "throughput, no cap, {} of random pages, {} runs:",
            fmt_bytes(memory as f64),
            engine.len()
        );
        let _ = writeln!(
            text,
            "  socket copy, 1 MiB buffers (cache-resident)  median {}",
            fmt_rate(h)
        );
        let _ = writeln!(
            text,
            "  socket copy, memory to memory               median {}",
            fmt_rate(p)
        );
        let _ = writeln!(
            text,
            "  engine round 1 (guest memory to guest memory) median {}",
            fmt_rate(e)
        );
        let _ = writeln!(
            text,
            "  engine / memory-to-memory copy {:.1} %; engine / 1 MiB-buffer copy {:.1} %",
            100.0 * e / p,
            100.0 * e / h
        );
        let _ = writeln!(
            text,
            "  engine over mutual TLS ({suite})         median {}",
            fmt_rate(t)
        );
        let _ = writeln!(
            text,
            "  engine over TLS / plain engine {:.1} %: TLS costs {:.1} % of the throughput (per run {})",
            100.0 * t / e,
            100.0 * (1.0 - t / e),
            paired
                .iter()
                .map(|r| format!("{:.1} %", 100.0 * r))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writeln!(
            text,
            "cap accuracy at {} over {} windows of 100 ms after the first:",
            fmt_rate(cap),
            ratios.len()
        );
        let _ = writeln!(
            text,
            "  median achieved/cap {:.3}, worst deviation {:.1} %, within +-5 %: {}/{}",
            median(ratios.clone()),
            100.0 * worst,
            within,
            ratios.len()
        );
        let _ = writeln!(
            text,
            "grant lowered mid-round from {} to {}, {} runs: the wire holds it over a whole 50 ms window after median {:.0} ms (worst {:.0} ms; includes the window); runs that never settled within {:.0} ms: {}",
            fmt_rate(cap),
            fmt_rate(grant),
            reactions.len() + unsettled,
            1000.0 * reaction,
            1000.0 * reactions.iter().copied().fold(0.0, f64::max),
            1000.0 * step.for_s,
            unsettled
        );
        let _ = writeln!(text, "{in_flight}");
        out::emit(&text)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn args(memory: &str, repeat: u32, cap: &str, cap_duration: &str) -> Args {
        Args {
            memory: memory.into(),
            repeat,
            cap: cap.into(),
            cap_duration: cap_duration.into(),
            json: false,
        }
    }

    fn refused(a: &Args, available: Option<u64>) -> String {
        format!("{:#}", plan(a, available).expect_err("refused"))
    }

    /// Regression (issue 8): a 4 GiB copy's source was `size as u32` = 0 bytes long, and the
    /// copy divided by that length.
    #[test]
    fn the_socket_copy_source_has_the_whole_size() {
        assert_eq!(source_bytes(4 * GIB as usize).len(), 4 * GIB as usize);
        assert_eq!(
            source_bytes((4 * GIB + 4096) as usize).len(),
            (4 * GIB + 4096) as usize
        );
        assert_eq!(source_bytes(3).collect::<Vec<_>>().len(), 3);
    }

    #[test]
    fn the_defaults_and_the_bounds_are_accepted() {
        let p = plan(&args("512MiB", 3, "200MiB/s", "3s"), Some(16 * GIB)).expect("defaults");
        assert_eq!(p.memory, 512 << 20);
        assert_eq!(p.cap_memory, 600 << 20);
        let p = plan(&args("4KiB", 1, "1MiB/s", "1s"), None).expect("lower bounds");
        assert_eq!((p.memory, p.cap_memory), (4096, 1 << 20));
        let p = plan(&args("64GiB", 100, "100Gbit/s", "5s"), None).expect("upper bounds");
        assert_eq!(p.memory, 64 * GIB);
        // Rounded down to whole pages.
        let p = plan(&args("1GB", 1, "200MiB/s", "3s"), None).expect("decimal size");
        assert_eq!(p.memory, 1_000_000_000 / 4096 * 4096);
    }

    /// Regression (issue 8): `--cap 1e308` aborted on a huge allocation, `--memory 1e308` and
    /// `--cap 1bit/s` ran (nearly) forever; every flag is now checked before any work.
    #[test]
    fn every_flag_is_bounded() {
        let ok = || args("512MiB", 3, "200MiB/s", "3s");
        let cases: Vec<(Args, &str)> = vec![
            (
                Args {
                    memory: "1e308".into(),
                    ..ok()
                },
                "--memory 1e308: the guest must be",
            ),
            (
                Args {
                    memory: "65GiB".into(),
                    ..ok()
                },
                "64 GiB",
            ),
            (
                Args {
                    memory: "4095".into(),
                    ..ok()
                },
                "one page",
            ),
            (
                Args {
                    memory: "lots".into(),
                    ..ok()
                },
                "`lots`",
            ),
            (
                Args { repeat: 0, ..ok() },
                "--repeat must be between 1 and 100, got 0",
            ),
            (
                Args {
                    repeat: 101,
                    ..ok()
                },
                "--repeat",
            ),
            (
                Args {
                    cap: "1e308B/s".into(),
                    ..ok()
                },
                "--cap must be between 1 MiB/s",
            ),
            (
                Args {
                    cap: "1bit/s".into(),
                    ..ok()
                },
                "got 1bit/s",
            ),
            (
                Args {
                    cap: "0".into(),
                    ..ok()
                },
                "--cap must be",
            ),
            (
                Args {
                    cap_duration: "1e308s".into(),
                    ..ok()
                },
                "--cap-duration must be",
            ),
            (
                Args {
                    cap_duration: "10ms".into(),
                    ..ok()
                },
                "--cap-duration must be",
            ),
            (
                Args {
                    cap: "100Gbit/s".into(),
                    cap_duration: "10m".into(),
                    ..ok()
                },
                "--cap 100Gbit/s x --cap-duration 10m",
            ),
        ];
        for (a, needle) in cases {
            let e = refused(&a, None);
            assert!(e.contains(needle), "{a:?}: `{e}` should contain `{needle}`");
        }
    }

    #[test]
    fn two_copies_must_fit_in_the_host() {
        let e = refused(&args("4GiB", 1, "200MiB/s", "3s"), Some(6 * GIB));
        assert!(e.contains("two copies of the guest (8.00 GiB)"), "{e}");
        assert!(e.contains("available memory (6.00 GiB)"), "{e}");
        let e = refused(&args("1GiB", 1, "1GiB/s", "10s"), Some(6 * GIB));
        assert!(e.contains("--cap 1GiB/s x --cap-duration 10s"), "{e}");
        assert!(plan(&args("3GiB", 1, "200MiB/s", "3s"), Some(6 * GIB)).is_ok());
    }
}
