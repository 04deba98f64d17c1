//! Shared helpers: an agent on loopback with a clock the test moves, and a small HTTP/1.1
//! client over `TcpStream` (one request per connection).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use livemig_agent::{Agent, BookConfig, ServerConfig, Token};
use tokio_util::sync::CancellationToken;

pub const TOKEN: &str = "test-token-1234";
pub const MIB: u64 = 1 << 20;

/// An agent serving on `127.0.0.1:0` in its own runtime; stopped when dropped.
pub struct Harness {
    pub addr: SocketAddr,
    clock: Arc<AtomicU64>,
    shutdown: CancellationToken,
    runtime: Option<tokio::runtime::Runtime>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Harness {
    pub fn start(total_bytes: u64, cfg: ServerConfig) -> Harness {
        let clock = Arc::new(AtomicU64::new(1000f64.to_bits()));
        let c = Arc::clone(&clock);
        let agent = Agent::new(
            "host-a".into(),
            Token::new(TOKEN).expect("token"),
            BookConfig::new(total_bytes),
            Arc::new(move || f64::from_bits(c.load(Ordering::Relaxed))),
        );
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
        let server = runtime.spawn(livemig_agent::run(
            listener,
            Arc::new(agent),
            cfg,
            shutdown.clone(),
        ));
        Harness {
            addr,
            clock,
            shutdown,
            runtime: Some(runtime),
            server: Some(server),
        }
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
            rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), server).await });
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
