//! `livemig bench-engine`: the data path's throughput with no cap against a plain loopback
//! socket copy measured in the same run, and cap accuracy per 100 ms window.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use livemig_engine::meter::WireMeter;
use livemig_engine::wire::{HEADER_LEN, MAX_BATCH_PAGES, PAGE_SIZE};
use livemig_engine::{
    migrate_measured, net, InitialContent, Key, ReceiverConfig, SenderConfig, SimGuest,
    SimGuestConfig,
};
use livemig_policy::report::MigrationReport;
use livemig_policy::{PolicyConfig, PolicyKind};
use livemig_workload::units::{self, fmt_bytes, fmt_rate};

use crate::out;

/// `livemig bench-engine` flags.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Guest memory moved by each uncapped run (and by each plain socket copy).
    #[arg(long, default_value = "512MiB")]
    pub memory: String,
    /// Runs of each measurement; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub repeat: u32,
    /// The cap of the accuracy run.
    #[arg(long, default_value = "200MiB/s")]
    pub cap: String,
    /// Length of the accuracy run's round (its guest is cap x this long).
    #[arg(long, default_value = "3s")]
    pub cap_duration: String,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
}

const TIMEOUT: Duration = Duration::from_secs(30);

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
    let src: Vec<u8> = (0..size as u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
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

/// One engine migration of an idle guest with random content, one round at `cap`.
fn engine_once(memory: u64, cap: f64) -> Result<(MigrationReport, WireMeter)> {
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
    let dest = std::thread::spawn(move || {
        livemig_engine::receive(&mut b, &dk, &ReceiverConfig::default()).map(|_| ())
    });
    let send_cfg = SenderConfig {
        sample_s: 0.0,
        ..SenderConfig::default()
    };
    let r = migrate_measured(
        &mut a,
        &key,
        &guest,
        policy.as_mut(),
        &send_cfg,
        &mut |_| {},
    );
    drop(a);
    dest.join()
        .map_err(|_| anyhow::anyhow!("receiver thread panicked"))?
        .context("the receiver failed")?;
    Ok(r?)
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
    let memory = units::parse_size(&args.memory)? as u64 / PAGE_SIZE as u64 * PAGE_SIZE as u64;
    let cap = units::parse_rate(&args.cap)?;
    let cap_s = units::parse_duration(&args.cap_duration)?;
    let mut hot = Vec::new();
    let mut plain = Vec::new();
    let mut engine = Vec::new();
    for i in 0..args.repeat.max(1) {
        let h = socket_copy(memory, false)?;
        let p = socket_copy(memory, true)?;
        let (r, _) = engine_once(memory, 1e12)?;
        let round = r.rounds.first().context("no round ran")?;
        let e = round.bytes_sent / round.duration_s;
        if !args.json {
            out::note(&format!(
                "run {}: socket copy, 1 MiB buffers {}; socket copy, memory to memory {}; engine (no cap, random pages) {}",
                i + 1,
                fmt_rate(h),
                fmt_rate(p),
                fmt_rate(e)
            ));
        }
        hot.push(h);
        plain.push(p);
        engine.push(e);
    }
    let (h, p, e) = (
        median(hot.clone()),
        median(plain.clone()),
        median(engine.clone()),
    );

    let cap_memory = ((cap * cap_s) as u64 / PAGE_SIZE as u64).max(1) * PAGE_SIZE as u64;
    let (r, meter) = engine_once(cap_memory, cap)?;
    let d = r.rounds.first().map_or(0.0, |x| x.duration_s);
    let ratios: Vec<f64> = meter
        .window_rates(0.1, d, 0.1)
        .into_iter()
        .map(|w| w / cap)
        .collect();
    let within = ratios.iter().filter(|r| (**r - 1.0).abs() <= 0.05).count();
    let worst = ratios.iter().map(|r| (r - 1.0).abs()).fold(0.0, f64::max);
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
            "cap_bytes_per_s": cap,
            "cap_window_ratios": ratios,
            "cap_windows_within_5pct": within,
            "cap_worst_deviation": worst,
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
        let _ = writeln!(text, "{in_flight}");
        out::emit(&text)?;
    }
    Ok(())
}
