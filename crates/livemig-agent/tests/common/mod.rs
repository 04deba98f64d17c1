//! Shared helpers: an agent on loopback with a clock the test moves, and a small HTTP/1.1
//! client over `TcpStream` (one request per connection).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use livemig_agent::rms::{LinkConfig, Outbox, RmsClient};
use livemig_agent::{Agent, BookConfig, MigratorConfig, ServerConfig, Token};
use livemig_http::Secret;
use tokio_util::sync::CancellationToken;

pub const TOKEN: &str = "test-token-1234";
pub const MIB: u64 = 1 << 20;

/// How [`Harness::start_with`] sets an agent up.
pub struct Options {
    pub name: String,
    pub total_bytes: u64,
    pub server: ServerConfig,
    pub migrator: MigratorConfig,
    /// The RMS to register with (`http://…`), and the heartbeat period to use.
    pub rms: Option<(String, f64)>,
    /// The trust anchor (`--ca-file`): the RMS's CA certificate.
    pub ca_pem: Option<String>,
    /// Where QEMU VMs live and boot from.
    pub qemu: Option<livemig_agent::QemuConfig>,
}

impl Options {
    pub fn new(name: &str, total_bytes: u64) -> Options {
        let migrator = MigratorConfig {
            timeout: Duration::from_secs(5),
            max_pause: Duration::from_secs(15),
            resolve_timeout: Duration::from_secs(15),
            sample_s: 0.2,
            ..MigratorConfig::default()
        };
        Options {
            name: name.to_string(),
            total_bytes,
            server: ServerConfig::default(),
            migrator,
            rms: None,
            ca_pem: None,
            qemu: None,
        }
    }
}

/// An agent serving on `127.0.0.1:0` in its own runtime; stopped when dropped.
pub struct Harness {
    pub addr: SocketAddr,
    clock: Arc<AtomicU64>,
    shutdown: CancellationToken,
    rms_stop: CancellationToken,
    runtime: Option<tokio::runtime::Runtime>,
    server: Option<tokio::task::JoinHandle<()>>,
    /// The RMS link's tasks (registration, delivery), awaited at stop as the binary does.
    link: Vec<tokio::task::JoinHandle<()>>,
}

impl Harness {
    pub fn start(total_bytes: u64, cfg: ServerConfig) -> Harness {
        let mut o = Options::new("host-a", total_bytes);
        o.server = cfg;
        Harness::start_with(o)
    }

    pub fn start_with(o: Options) -> Harness {
        let clock = Arc::new(AtomicU64::new(1000f64.to_bits()));
        let c = Arc::clone(&clock);
        let mut agent = Agent::new(
            o.name.clone(),
            Token::new(TOKEN).expect("token"),
            BookConfig::new(o.total_bytes),
            Arc::new(move || f64::from_bits(c.load(Ordering::Relaxed))),
        )
        .with_migrator(o.migrator.clone());
        if let Some(q) = &o.qemu {
            agent = agent.with_qemu(q.clone());
        }
        let mut rms = None;
        if let Some((url, heartbeat_s)) = &o.rms {
            let (outbox, inbox) = Outbox::new(&o.name, 64);
            agent = agent.with_outbox(outbox);
            let client =
                RmsClient::new(url, Secret::new(TOKEN), o.ca_pem.as_deref()).expect("RMS URL");
            rms = Some((client, inbox, *heartbeat_s));
        }
        if let Some(pem) = &o.ca_pem {
            agent.tls().set_anchor(pem.clone());
        }
        let agent = Arc::new(agent);
        let cfg = o.server;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let shutdown = CancellationToken::new();
        let mut tasks = Vec::new();
        let rms_stop = CancellationToken::new();
        if let Some((client, inbox, heartbeat_s)) = rms {
            let link = LinkConfig {
                address: addr.to_string(),
                data_host: o.migrator.data_host.to_string(),
                timeout_s: Some(30.0),
                heartbeat_s: Some(heartbeat_s),
            };
            let _guard = runtime.enter();
            let (l, d) = livemig_agent::rms::spawn(
                client,
                inbox,
                link,
                Arc::clone(&agent),
                rms_stop.clone(),
            );
            tasks = vec![l, d];
        }
        let server = runtime.spawn(livemig_agent::run(listener, agent, cfg, shutdown.clone()));
        Harness {
            link: tasks,
            addr,
            clock,
            shutdown,
            rms_stop,
            runtime: Some(runtime),
            server: Some(server),
        }
    }

    /// A request with the right token and a JSON body.
    pub fn post(&self, path: &str, body: &serde_json::Value) -> Reply {
        self.call("POST", path, Some(&body.to_string()))
    }

    /// Moves the agent's clock forward.
    pub fn advance(&self, seconds: f64) {
        let now = f64::from_bits(self.clock.load(Ordering::Relaxed));
        self.clock
            .store((now + seconds).to_bits(), Ordering::Relaxed);
    }

    /// A request with the right token.
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> Reply {
        request(self.addr, method, path, Some(TOKEN), body)
    }

    /// Stops the server and waits for it (bounded).
    pub fn stop(&mut self) -> bool {
        self.shutdown.cancel();
        let (Some(rt), Some(server)) = (self.runtime.take(), self.server.take()) else {
            return true;
        };
        let done =
            rt.block_on(async { tokio::time::timeout(Duration::from_secs(30), server).await });
        self.rms_stop.cancel();
        // The last events go out before the runtime goes (the delivery drains, bounded).
        for t in self.link.drain(..) {
            let _ = rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), t).await });
        }
        rt.shutdown_timeout(Duration::from_secs(2));
        done.is_ok()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An answer: status, headers (lower-case names), body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    /// The `error` of an error answer.
    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error field: {}", self.body))
            .to_string()
    }
}

/// One request on a fresh connection (`Connection: close`), bounded by 10 s.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Reply {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n");
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if let Some(b) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    head.push_str("\r\n");
    let mut raw = head.into_bytes();
    raw.extend_from_slice(body.unwrap_or("").as_bytes());
    exchange(addr, &raw)
}

/// Sends raw bytes, reads the answer until the server closes.
pub fn exchange(addr: SocketAddr, raw: &[u8]) -> Reply {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.set_write_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(raw).expect("send");
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read the answer");
    parse(&out)
}

fn parse(raw: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end: {text:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_string(),
    }
}

/// Polls `cond` every 20 ms for at most `limit`; whether it came true.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let until = std::time::Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A stand-in for the RMS: records what agents send it.
pub struct FakeRms {
    pub url: String,
    pub seen: Arc<std::sync::Mutex<Vec<(String, serde_json::Value)>>>,
    /// When set, the next heartbeat is answered 404 (the RMS forgot the host).
    pub forget: Arc<std::sync::atomic::AtomicBool>,
    /// Its CA's certificate, when it has one (the agents' `--ca-file`).
    pub ca_pem: Option<String>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FakeRms {
    /// Answers registrations `{"heartbeat_s": heartbeat_s}`, everything else 204; refuses a
    /// wrong token with 401 (not recorded).
    pub fn start(heartbeat_s: f64) -> FakeRms {
        FakeRms::start_on(0, heartbeat_s)
    }

    /// [`FakeRms::start`] on 127.0.0.1:`port`.
    pub fn start_on(port: u16, heartbeat_s: f64) -> FakeRms {
        FakeRms::start_full(port, heartbeat_s, None)
    }

    /// [`FakeRms::start`] with a CA: a registration's certificate request is answered with a
    /// certificate naming the host and its data IP, and the CA certificate.
    pub fn start_with_ca(heartbeat_s: f64, ca: livemig_tls::Ca) -> FakeRms {
        FakeRms::start_full(0, heartbeat_s, Some(Arc::new(ca)))
    }

    fn start_full(port: u16, heartbeat_s: f64, ca: Option<Arc<livemig_tls::Ca>>) -> FakeRms {
        let ca_pem = ca.as_ref().map(|c| c.cert_pem().to_string());
        use axum::body::Bytes;
        use axum::http::{HeaderMap, StatusCode};
        use axum::response::IntoResponse;
        type Seen = Arc<std::sync::Mutex<Vec<(String, serde_json::Value)>>>;
        let seen: Seen = Arc::default();
        let forget = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let record =
            |path: &'static str, seen: Seen, forget: Arc<std::sync::atomic::AtomicBool>| {
                let ca = ca.clone();
                move |headers: HeaderMap, body: Bytes| {
                    let seen = Arc::clone(&seen);
                    let forget = Arc::clone(&forget);
                    let ca = ca.clone();
                    async move {
                        let auth = headers
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("");
                        if auth != format!("Bearer {TOKEN}") {
                            return StatusCode::UNAUTHORIZED.into_response();
                        }
                        if path == "heartbeat" && forget.swap(false, Ordering::Relaxed) {
                            return StatusCode::NOT_FOUND.into_response();
                        }
                        let v: serde_json::Value =
                            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                        seen.lock()
                            .expect("lock")
                            .push((path.to_string(), v.clone()));
                        if path == "register" {
                            let mut answer = serde_json::json!({ "heartbeat_s": heartbeat_s });
                            if let Some(ca) = &ca {
                                answer["ca_pem"] = ca.cert_pem().into();
                                if let (Some(csr), Some(name), Some(ip)) = (
                                    v["csr_pem"].as_str(),
                                    v["name"].as_str(),
                                    v["data_host"].as_str().and_then(|h| h.parse().ok()),
                                ) {
                                    let cert = ca
                                        .issue(csr, name, &[ip], livemig_tls::HOST_VALIDITY)
                                        .expect("a certificate");
                                    answer["cert_pem"] = cert.into();
                                }
                            }
                            (StatusCode::OK, answer.to_string()).into_response()
                        } else {
                            StatusCode::NO_CONTENT.into_response()
                        }
                    }
                }
            };
        let app = axum::Router::new()
            .route(
                "/api/v1/agents/register",
                axum::routing::post(record("register", Arc::clone(&seen), Arc::clone(&forget))),
            )
            .route(
                "/api/v1/agents/heartbeat",
                axum::routing::post(record("heartbeat", Arc::clone(&seen), Arc::clone(&forget))),
            )
            .route(
                "/api/v1/agents/events",
                axum::routing::post(record("events", Arc::clone(&seen), Arc::clone(&forget))),
            )
            .route(
                "/api/v1/agents/reports",
                axum::routing::post(record("reports", Arc::clone(&seen), Arc::clone(&forget))),
            );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        runtime.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeRms {
            url,
            seen,
            forget,
            ca_pem,
            runtime: Some(runtime),
        }
    }

    /// What was recorded under `kind` (`register`, `heartbeat`, `events`, `reports`).
    pub fn of(&self, kind: &str) -> Vec<serde_json::Value> {
        self.seen
            .lock()
            .expect("lock")
            .iter()
            .filter(|(k, _)| k == kind)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Whether `host` sent an event named `event` for `migration`.
    pub fn has_event(&self, host: &str, migration: u64, event: &str) -> bool {
        self.of("events").iter().any(|e| {
            e["host"] == host && e["migration"] == migration && e["event"]["event"] == event
        })
    }
}

impl Drop for FakeRms {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}
