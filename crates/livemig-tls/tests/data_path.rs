//! The engine's data path over TLS on loopback: a real migration whose memory arrives whole,
//! what the wire shows (pages in clear over plain TCP, none under TLS), peers refused before
//! the engine sees a byte, and the reconnecting settlement over TLS.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use livemig_engine::net::{self, Plain, Transport, Upgrade};
use livemig_engine::receiver::ReceiverConfig;
use livemig_engine::serve::{serve_with, ServeConfig, ServeEvent, Served};
use livemig_engine::wire::{ResolveDecision, ResolveStatus, PAGE_SIZE};
use livemig_engine::{
    Guest, InitialContent, Key, RecvError, SenderConfig, SimGuest, SimGuestConfig,
};
use livemig_policy::{PolicyConfig, PolicyKind};
use livemig_tls::{client_config, server_config, Acceptor, Ca, Connector, Identity, TlsError};

const TIMEOUT: Duration = Duration::from_secs(5);
const MIB: f64 = 1024.0 * 1024.0;
const DEST: &str = "dest.test";

fn key() -> Key {
    Key::from_bytes([7; 32])
}

/// A CA and the two hosts' identities it issued (each named and at 127.0.0.1).
struct Pki {
    ca: Ca,
    dest: Identity,
    src: Identity,
}

fn issue(ca: &Ca, name: &str) -> Identity {
    let ip = "127.0.0.1".parse().expect("ip");
    let (key, csr) = Identity::generate_csr(name, &[ip]).expect("csr");
    let cert = ca
        .issue(&csr, name, &[ip], livemig_tls::HOST_VALIDITY)
        .expect("issue");
    Identity {
        cert_chain_pem: cert,
        key,
    }
}

fn pki() -> Pki {
    pki_named("livemig test CA")
}

fn pki_named(ca_name: &str) -> Pki {
    let ca = Ca::generate(ca_name).expect("ca");
    let dest = issue(&ca, DEST);
    let src = issue(&ca, "src.test");
    Pki { ca, dest, src }
}

/// The destination's acceptor: its certificate, client certificates from the CA required.
fn acceptor(p: &Pki) -> Acceptor {
    Acceptor::new(
        server_config(&p.dest.cert_chain_pem, &p.dest.key, Some(p.ca.cert_pem())).expect("server"),
    )
}

/// The source's connector: trusts the CA, presents its certificate.
fn connector(p: &Pki) -> Connector {
    Connector::new(client_config(p.ca.cert_pem(), Some(&p.src)).expect("client"))
}

fn memory_bytes(g: &dyn Guest) -> Vec<u8> {
    let m = g.memory();
    let mut out = vec![0u8; m.bytes() as usize];
    for (p, chunk) in out.chunks_mut(PAGE_SIZE).enumerate() {
        m.with_page(p as u64, |b| chunk.copy_from_slice(b))
            .expect("page");
    }
    out
}

fn guest(memory_mib: u64, workload: &str) -> SimGuest {
    let cfg = SimGuestConfig {
        memory_bytes: memory_mib << 20,
        workload: workload.into(),
        content: InitialContent::Random,
        seed: 5,
    };
    SimGuest::start(&cfg, u64::MAX).expect("guest")
}

fn serve_cfg() -> ServeConfig {
    ServeConfig {
        receiver: ReceiverConfig {
            max_memory: 1 << 30,
            handshake_deadline: TIMEOUT,
            frame_deadline: TIMEOUT,
            keepalive: Duration::ZERO,
        },
        timeout: TIMEOUT,
        accept_timeout: Duration::from_secs(20),
        hold_timeout: Duration::from_secs(3),
        ..ServeConfig::default()
    }
}

/// What the destination's loop saw.
#[derive(Default)]
struct Seen {
    /// The guest's memory as handed over (before it resumed here).
    at_handover: Option<Vec<u8>>,
    /// Refusals, as text with their sources.
    refused: Vec<String>,
    /// Whether a refusal was a failed upgrade (TLS handshake) rather than an engine refusal.
    refused_secure: usize,
    claimed: usize,
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Runs the destination's loop on `listener` with `upgrade` in a thread.
fn destination<U: Upgrade + Send + 'static>(
    listener: TcpListener,
    upgrade: U,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Result<Served, livemig_engine::ServeError>> {
    std::thread::spawn(move || {
        let log = move |e: &ServeEvent<'_>| {
            let mut s = seen.lock().expect("lock");
            match e {
                ServeEvent::Resuming { guest } => s.at_handover = Some(memory_bytes(*guest)),
                ServeEvent::Refused { error, .. } => {
                    if matches!(error, RecvError::Secure(_)) {
                        s.refused_secure += 1;
                    }
                    s.refused.push(chain(*error));
                }
                ServeEvent::Claimed { .. } => s.claimed += 1,
                _ => {}
            }
        };
        serve_with(&listener, &key(), &serve_cfg(), &stop, &log, &upgrade)
    })
}

/// A relay between the source and the destination that records every byte both ways.
fn recording_proxy(
    to: SocketAddr,
    wire: Arc<Mutex<Vec<u8>>>,
) -> (SocketAddr, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let h = std::thread::spawn(move || {
        let Ok((a, _)) = l.accept() else { return };
        let Ok(b) = TcpStream::connect(to) else {
            return;
        };
        let pipe = |mut from: TcpStream, mut into: TcpStream, wire: Arc<Mutex<Vec<u8>>>| {
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match from.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            wire.lock().expect("lock").extend_from_slice(&buf[..n]);
                            if into.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = into.shutdown(std::net::Shutdown::Write);
            })
        };
        let (a2, b2) = (a.try_clone().expect("clone"), b.try_clone().expect("clone"));
        let up = pipe(a, b, Arc::clone(&wire));
        let down = pipe(b2, a2, wire);
        let _ = up.join();
        let _ = down.join();
    });
    (addr, h)
}

/// One migration of a small guest from this thread to `dest` over `stream`; returns the
/// source's memory at the pause and the sender's result.
fn migrate<S: Transport>(
    stream: &mut S,
    src: &SimGuest,
    redial: &mut livemig_engine::Redial<'_>,
) -> (
    Option<Vec<u8>>,
    Result<livemig_policy::report::MigrationReport, livemig_engine::SendError>,
) {
    let mib = src.memory().bytes() >> 20;
    let cfg = PolicyConfig {
        memory_bytes: (mib << 20) as f64,
        max_rounds: 3,
        stop_remaining: 4.0 * MIB,
        min_bandwidth: 64.0 * MIB,
        max_bandwidth: 1024.0 * MIB,
        ..PolicyConfig::default()
    };
    let mut policy = PolicyKind::Fixed.build(cfg.clone()).expect("policy");
    let send_cfg = SenderConfig {
        sample_s: 0.0,
        compress: false,
        stop_remaining: cfg.stop_remaining,
        timeout: TIMEOUT,
        keepalive: Duration::ZERO,
        resolve_timeout: Duration::from_secs(3),
        ..SenderConfig::default()
    };
    let mut at_pause = None;
    let r = livemig_engine::migrate_measured(
        stream,
        &key(),
        src,
        policy.as_mut(),
        &send_cfg,
        &livemig_engine::Control::new(),
        &mut |e| {
            if let livemig_engine::Event::StopAndCopy { .. } = e {
                at_pause = Some(memory_bytes(src));
            }
        },
        Some(redial),
    )
    .map(|(r, _)| r);
    (at_pause, r)
}

#[test]
fn a_guest_migrates_over_mutual_tls_and_its_memory_arrives_whole() {
    let p = pki();
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let dest = destination(l, acceptor(&p), Arc::clone(&seen), stop);

    let src = guest(8, "uniform:rate=2MiB/s");
    let conn = connector(&p);
    let mut s = conn.connect(addr, DEST, TIMEOUT).expect("TLS connect");
    // The destination presented the certificate the CA issued to it.
    let peer = s.peer_certificates().expect("server certificate");
    assert_eq!(
        peer[0].as_ref(),
        livemig_tls::config::parse_certs(&p.dest.cert_chain_pem).expect("pem")[0].as_ref()
    );
    let mut redial = conn.redial(addr, DEST, TIMEOUT);
    let (at_pause, r) = migrate(&mut s, &src, &mut redial);
    r.expect("the migration over TLS succeeds");
    drop(s);
    let served = dest.join().expect("thread").expect("serve");
    let Served::Migrated(rx) = served else {
        panic!("the destination did not run the guest: {served:?}");
    };
    let seen = seen.lock().expect("lock");
    let at_handover = seen.at_handover.as_ref().expect("handed over");
    let at_pause = at_pause.expect("paused");
    assert_eq!(at_handover.len(), 8 << 20);
    assert!(
        at_handover == &at_pause,
        "the destination's memory differs from the source's at the pause"
    );
    assert_eq!(seen.refused_secure, 0, "{:?}", seen.refused);
    drop(rx);
}

/// Runs one migration through a recording relay; returns the bytes that crossed it and the
/// source's memory.
fn captured(tls: bool) -> (Vec<u8>, Vec<u8>) {
    let p = pki();
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let daddr = l.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let dest = if tls {
        destination(l, acceptor(&p), Arc::clone(&seen), stop)
    } else {
        destination(l, Plain, Arc::clone(&seen), stop)
    };
    let wire = Arc::new(Mutex::new(Vec::new()));
    let (paddr, relay) = recording_proxy(daddr, Arc::clone(&wire));
    // An idle guest: its memory does not change, so what crosses is exactly what it holds.
    let src = guest(4, "idle");
    let memory = memory_bytes(&src);
    let conn = connector(&p);
    let r = if tls {
        let mut s = conn.connect(paddr, DEST, TIMEOUT).expect("connect");
        let mut redial = conn.redial(daddr, DEST, TIMEOUT);
        migrate(&mut s, &src, &mut redial).1
    } else {
        let mut s = net::connect(paddr, TIMEOUT).expect("connect");
        let mut redial = || net::connect(daddr, TIMEOUT).map(net::boxed);
        migrate(&mut s, &src, &mut redial).1
    };
    r.expect("migration");
    assert!(matches!(
        dest.join().expect("thread").expect("serve"),
        Served::Migrated(_)
    ));
    relay.join().expect("relay");
    let wire = std::mem::take(&mut *wire.lock().expect("lock"));
    (wire, memory)
}

/// Whether `hay` holds `needle` anywhere.
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// 48-byte slices of 16 pages spread over the guest: what a tap would look for.
fn samples(memory: &[u8]) -> Vec<&[u8]> {
    let pages = memory.len() / PAGE_SIZE;
    (0..16)
        .map(|i| {
            let at = (i * pages / 16) * PAGE_SIZE + 1000;
            &memory[at..at + 48]
        })
        .collect()
}

#[test]
fn the_wire_carries_pages_in_clear_over_plain_tcp_and_none_under_tls() {
    let (plain, memory) = captured(false);
    assert!(
        plain.len() as u64 >= 4 << 20,
        "{} bytes crossed",
        plain.len()
    );
    let found = samples(&memory)
        .iter()
        .filter(|s| contains(&plain, s))
        .count();
    assert_eq!(
        found, 16,
        "plain TCP: every sampled page is readable on the wire"
    );
    assert!(contains(&plain, b"LMIG"), "the engine's frame magic");

    let (tls, memory) = captured(true);
    assert!(tls.len() as u64 >= 4 << 20, "{} bytes crossed", tls.len());
    let found = samples(&memory)
        .iter()
        .filter(|s| contains(&tls, s))
        .count();
    assert_eq!(found, 0, "TLS: no sampled page is readable on the wire");
    assert!(
        !contains(&tls, b"LMIG"),
        "not even the engine's frame magic"
    );
}

#[test]
fn a_client_that_does_not_trust_the_ca_is_refused_before_any_engine_bytes() {
    let p = pki();
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let daddr = l.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let dest = destination(l, acceptor(&p), Arc::clone(&seen), Arc::clone(&stop));
    let wire = Arc::new(Mutex::new(Vec::new()));
    let (paddr, relay) = recording_proxy(daddr, Arc::clone(&wire));

    // Another CA, which issued the client's certificate too: the destination's certificate
    // is not one it trusts. (Another CA of the same name fails as `BadSignature`.)
    let other = pki_named("another CA");
    let stranger =
        Connector::new(client_config(other.ca.cert_pem(), Some(&other.src)).expect("cfg"));
    let e = stranger
        .connect(paddr, DEST, TIMEOUT)
        .expect_err("the destination's certificate is not trusted");
    assert!(
        matches!(
            &e,
            TlsError::Handshake(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer
            ))
        ),
        "{}",
        chain(&e)
    );
    relay.join().expect("relay");
    let wire = std::mem::take(&mut *wire.lock().expect("lock"));
    assert!(!wire.is_empty(), "a TLS handshake was attempted");
    assert!(!contains(&wire, b"LMIG"), "no engine frame crossed");

    // The loop goes on: a refusal, then it is stopped.
    let t0 = Instant::now();
    while seen.lock().expect("lock").refused.is_empty() && t0.elapsed() < TIMEOUT * 2 {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    assert!(matches!(
        dest.join().expect("thread"),
        Err(livemig_engine::ServeError::Stopped)
    ));
    let seen = seen.lock().expect("lock");
    assert_eq!(seen.refused_secure, 1, "{:?}", seen.refused);
    assert_eq!(seen.claimed, 0);
}

#[test]
fn a_client_without_a_ca_issued_certificate_is_refused_and_the_loop_still_serves_a_real_source() {
    let p = pki();
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let dest = destination(l, acceptor(&p), Arc::clone(&seen), stop);
    let src = guest(4, "idle");

    // Trusts the CA but presents no certificate.
    let anonymous = Connector::new(client_config(p.ca.cert_pem(), None).expect("cfg"));
    // Presents a certificate another CA issued.
    let other = pki();
    let forged = Connector::new(client_config(p.ca.cert_pem(), Some(&other.src)).expect("cfg"));
    for (who, c) in [
        ("no certificate", &anonymous),
        ("a foreign certificate", &forged),
    ] {
        // TLS 1.3: the client finishes its side before the server has checked its
        // certificate, so the refusal may come at the handshake or at the first read.
        let refused = match c.connect(addr, DEST, TIMEOUT) {
            Err(e) => Some(chain(&e)),
            Ok(mut s) => {
                let mut redial = c.redial(addr, DEST, TIMEOUT);
                let (_, r) = migrate(&mut s, &src, &mut redial);
                r.err().map(|e| chain(&e))
            }
        };
        assert!(refused.is_some(), "{who}: the destination accepted it");
        assert!(src.is_running(), "{who}: the source still runs its guest");
    }
    let t0 = Instant::now();
    while seen.lock().expect("lock").refused.len() < 2 && t0.elapsed() < TIMEOUT * 2 {
        std::thread::sleep(Duration::from_millis(20));
    }
    {
        let seen = seen.lock().expect("lock");
        assert_eq!(seen.refused_secure, 2, "{:?}", seen.refused);
        assert!(
            seen.refused.iter().all(|r| r.contains("certificate")),
            "{:?}",
            seen.refused
        );
        assert_eq!(seen.claimed, 0, "no refused peer reached the engine");
    }

    // A source with the CA's certificate still migrates through the same loop.
    let conn = connector(&p);
    let mut s = conn.connect(addr, DEST, TIMEOUT).expect("connect");
    let mut redial = conn.redial(addr, DEST, TIMEOUT);
    let (_, r) = migrate(&mut s, &src, &mut redial);
    r.expect("the real source migrates");
    assert!(matches!(
        dest.join().expect("thread").expect("serve"),
        Served::Migrated(_)
    ));
}

#[test]
fn a_certificate_for_another_name_is_refused_by_the_source() {
    let p = pki();
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let dest = destination(l, acceptor(&p), Arc::clone(&seen), Arc::clone(&stop));
    let e = connector(&p)
        .connect(addr, "elsewhere.test", TIMEOUT)
        .expect_err("the certificate names dest.test");
    assert!(
        matches!(
            &e,
            TlsError::Handshake(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. }
                    | rustls::CertificateError::NotValidForName
            ))
        ),
        "{}",
        chain(&e)
    );
    // Its address is in the certificate too.
    let s = connector(&p)
        .connect(addr, "127.0.0.1", TIMEOUT)
        .expect("the certificate names 127.0.0.1");
    drop(s);
    stop.store(true, Ordering::Relaxed);
    let _ = dest.join();
}

#[test]
fn a_silent_server_fails_the_handshake_within_its_limit() {
    let p = pki();
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let t0 = Instant::now();
    let e = connector(&p)
        .connect(addr, DEST, Duration::from_millis(600))
        .expect_err("nothing answers");
    assert!(matches!(e, TlsError::HandshakeTimeout(_)), "{}", chain(&e));
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    drop(l);
}

#[test]
fn a_reconnecting_source_settles_over_tls() {
    let p = pki();
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let dest = destination(l, acceptor(&p), Arc::clone(&seen), Arc::clone(&stop));
    let conn = connector(&p);
    let mut redial = conn.redial(addr, DEST, TIMEOUT);
    // A session this destination never saw: the authenticated Resolve exchange runs over a
    // redialled TLS connection and the destination answers that it does not know it.
    let status = livemig_engine::sender::resolve(
        &mut redial,
        &key(),
        &[9; livemig_engine::wire::SESSION_ID_LEN],
        ResolveDecision::Abort,
        TIMEOUT,
        Instant::now() + TIMEOUT,
    )
    .expect("settled over TLS");
    assert_eq!(status, ResolveStatus::Unknown);
    stop.store(true, Ordering::Relaxed);
    let _ = dest.join();
    let seen = seen.lock().expect("lock");
    assert_eq!(seen.refused_secure, 0, "{:?}", seen.refused);
}

#[test]
fn plain_and_tls_ends_refuse_each_other_cleanly() {
    let p = pki();
    let src = guest(4, "idle");

    // A plain source to a TLS destination: refused at the destination's TLS handshake.
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let dest = destination(l, acceptor(&p), Arc::clone(&seen), Arc::clone(&stop));
    let mut s = net::connect(addr, TIMEOUT).expect("connect");
    let mut redial = || net::connect(addr, TIMEOUT).map(net::boxed);
    let (_, r) = migrate(&mut s, &src, &mut redial);
    assert!(
        r.is_err(),
        "a plain source cannot migrate to a TLS destination"
    );
    assert!(src.is_running());
    drop(s);
    let t0 = Instant::now();
    while seen.lock().expect("lock").refused_secure == 0 && t0.elapsed() < TIMEOUT * 2 {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let _ = dest.join();
    assert!(seen.lock().expect("lock").refused_secure >= 1);
    assert_eq!(seen.lock().expect("lock").claimed, 0);

    // A TLS source to a plain destination: its handshake fails, nothing is migrated.
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let dest = destination(l, Plain, Arc::clone(&seen), Arc::clone(&stop));
    let e = connector(&p)
        .connect(addr, DEST, TIMEOUT)
        .expect_err("a plain destination does not speak TLS");
    assert!(
        matches!(
            e,
            TlsError::Handshake(_) | TlsError::HandshakeEof | TlsError::Io(_)
        ),
        "{}",
        chain(&e)
    );
    stop.store(true, Ordering::Relaxed);
    let _ = dest.join();
    assert_eq!(seen.lock().expect("lock").claimed, 0);
}
