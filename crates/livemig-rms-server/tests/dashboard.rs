//! The dashboard in a real headless browser (Debian's `chromium`, which `scripts/test.sh`
//! installs): a real RMS with fake agents and a migration held `running` with round records;
//! the browser, with no name resolution but loopback, opens `/#token=…`; the test reads the
//! page through the DevTools protocol (a WebSocket), checks the hosts and the migration's chart,
//! changes the state through the API and waits for the page to show it without a reload, and
//! saves a screenshot (its path is printed).

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// How long any one wait of the test may take.
const WAIT: Duration = Duration::from_secs(30);

/// A headless chromium, killed when dropped.
struct Browser {
    child: Child,
    /// `ws://127.0.0.1:PORT/devtools/browser/…`
    ws: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Browser {
        let program = std::env::var("LIVEMIG_CHROMIUM").unwrap_or_else(|_| "chromium".into());
        let profile = tempfile::tempdir().expect("a profile directory");
        let spawned = Command::new(&program)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                // No network but loopback: every other name fails to resolve, no proxy.
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                "--no-proxy-server",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-default-apps",
                "--disable-extensions",
                "--no-first-run",
                "--no-default-browser-check",
                "--hide-scrollbars",
                "--window-size=1280,1400",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => panic!(
                "cannot start `{program}` ({e}): the dashboard test needs Debian's chromium; \
                 `scripts/test.sh` installs it (apt-get install chromium), or set \
                 LIVEMIG_CHROMIUM to a Chromium binary"
            ),
        };
        // Read stderr until the DevTools address, then keep draining it (a full pipe would
        // stall the browser).
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(at) = line.find("ws://") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(line[at..].trim().to_string());
                    }
                }
            }
        });
        let mut browser = Browser {
            child,
            ws: String::new(),
            _profile: profile,
        };
        browser.ws = rx.recv_timeout(WAIT).unwrap_or_else(|_| {
            panic!("`{program}` did not print `DevTools listening on ws://…` within {WAIT:?}")
        });
        browser
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Socket = tungstenite::WebSocket<TcpStream>;

/// A DevTools protocol connection (one target), with what it heard on the side.
struct Cdp {
    ws: Socket,
    next: u64,
    /// `Runtime.exceptionThrown` and security (CSP) log entries.
    errors: Vec<Value>,
    /// Main-frame navigations seen.
    navigations: u64,
}

impl Cdp {
    fn connect(url: &str) -> Cdp {
        let rest = url.strip_prefix("ws://").expect("a ws:// address");
        let authority = rest.split('/').next().expect("host:port");
        let stream = TcpStream::connect(authority).expect("connect to the DevTools port");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("a read timeout");
        let (ws, _) = tungstenite::client(url, stream).expect("the DevTools WebSocket handshake");
        Cdp {
            ws,
            next: 0,
            errors: Vec::new(),
            navigations: 0,
        }
    }

    /// Sends a command and returns its `result` (panics on an error answer or after [`WAIT`]).
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let msg = json!({"id": id, "method": method, "params": params});
        self.ws
            .send(tungstenite::Message::text(msg.to_string()))
            .expect("send to the browser");
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(Instant::now() < deadline, "{method}: no answer in {WAIT:?}");
            let m = match self.ws.read() {
                Ok(m) => m,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(e) => panic!("{method}: the DevTools connection broke: {e}"),
            };
            let tungstenite::Message::Text(text) = m else {
                continue;
            };
            let v: Value = serde_json::from_str(text.as_str()).expect("DevTools speaks JSON");
            if v["id"] == json!(id) {
                if let Some(e) = v.get("error") {
                    panic!("{method} failed: {e}");
                }
                return v["result"].clone();
            }
            self.event(&v);
        }
    }

    fn event(&mut self, v: &Value) {
        match v["method"].as_str() {
            Some("Runtime.exceptionThrown") => self.errors.push(v["params"].clone()),
            Some("Log.entryAdded") if v["params"]["entry"]["source"] == "security" => {
                self.errors.push(v["params"].clone())
            }
            Some("Page.frameNavigated") if v["params"]["frame"].get("parentId").is_none() => {
                self.navigations += 1
            }
            _ => {}
        }
    }

    /// The value of a JavaScript expression in the page.
    fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("`{expression}` threw: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Waits until `expression` is true in the page.
    fn wait_for(&mut self, what: &str, expression: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            if self.eval(expression) == json!(true) {
                return;
            }
            if Instant::now() > deadline {
                let status = self.eval("document.getElementById('status').textContent");
                panic!("the page never showed {what} within {WAIT:?} (status: {status})");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Standard base64 (the screenshot), padding allowed.
fn base64(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter(|c| *c != b'=') {
        acc = (acc << 6) | value(c);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

async fn create_vm(rms: &Rms, name: &str, memory: u64, host: &str) {
    let (status, v) = call(
        Method::POST,
        &rms.url("/api/v1/vms"),
        Some(json!({"name": name, "memory_bytes": memory, "workload": "idle", "kind": "sim", "host": host})),
    )
    .await;
    assert_eq!(status, 201, "{v}");
}

/// Round `k` of migration `id`, posted by its source as an agent does.
async fn round(rms: &Rms, source: &str, id: u64, k: u32, cap: f64, dirty: f64) {
    let event = json!({"event": "round_ended", "record": round_record_at(k, cap, dirty)});
    assert_eq!(post_event(rms.addr, source, id, event).await, 204);
}

fn screenshot_path() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_hosts_and_a_running_migration_live() {
    let started = Instant::now();
    // The browser first: without it the test fails at once, saying how to get it.
    let browser = Browser::start();

    let dir = tempfile::tempdir().expect("a temp dir");
    // A budget the migrations share (the `unlimited` scheme: the fake agents take no samples
    // or grants); the dashboard draws its line.
    let budget = livemig_rms::orchestrator::BudgetConfig::new(
        livemig_rms::budget::Budget::uplink(1.5e9),
        livemig_rms::budget::Scheme::Unlimited,
    );
    let rms = Rms::start_with_budget(dir.path(), 30.0, budget).await;
    let hang = Behaviour {
        hang: true,
        ..Behaviour::default()
    };
    let a = FakeAgent::start("rack1-a", rms.addr, 64 * GIB, hang).await;
    let b = FakeAgent::start("rack1-b", rms.addr, 64 * GIB, Behaviour::default()).await;
    let alive = [a.keep_alive(60 * GIB), b.keep_alive(62 * GIB)];
    create_vm(&rms, "web-1", 4 * GIB, "rack1-a").await;
    create_vm(&rms, "cache-1", 2 * GIB, "rack1-a").await;
    create_vm(&rms, "batch-7", 512 * MIB, "rack1-b").await;
    let (status, v) = call(
        Method::POST,
        &rms.url("/api/v1/migrations"),
        Some(json!({"vm": "web-1", "target": "rack1-b"})),
    )
    .await;
    assert_eq!(status, 202, "{v}");
    let id = v["id"].as_u64().expect("a migration id");
    wait_state(&rms, id, &["running"]).await;
    // The first rounds: the full copy, then shrinking dirty sets under a rising cap.
    let rounds = [(1, 4.0e8, 9.0e7), (2, 5.0e8, 7.5e7), (3, 6.0e8, 6.0e7)];
    for (k, cap, dirty) in rounds {
        round(&rms, "rack1-a", id, k, cap, dirty).await;
    }

    let origin = format!("http://{}", rms.addr);
    let mut cdp = tokio::task::block_in_place(|| {
        let mut root = Cdp::connect(&browser.ws);
        let target = root.call("Target.createTarget", json!({"url": "about:blank"}));
        let target = target["targetId"]
            .as_str()
            .expect("a target id")
            .to_string();
        let authority = browser
            .ws
            .strip_prefix("ws://")
            .and_then(|r| r.split('/').next())
            .expect("host:port")
            .to_string();
        let mut cdp = Cdp::connect(&format!("ws://{authority}/devtools/page/{target}"));
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            cdp.call(domain, json!({}));
        }
        cdp.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1280, "height": 1400, "deviceScaleFactor": 1, "mobile": false}),
        );
        cdp.call(
            "Page.navigate",
            json!({"url": format!("{origin}/#token={TOKEN}")}),
        );
        cdp.wait_for(
            "both hosts",
            "document.querySelectorAll('#hosts tr[data-host]').length === 2",
        );
        cdp.wait_for(
            "the migration's chart with its 3 rounds",
            &format!(
                "(() => {{ const m = document.querySelector('[data-migration=\"{id}\"]'); \
                 return !!m && m.dataset.state === 'running' && \
                 m.querySelectorAll('svg.chart circle.s-cap').length === 3 && \
                 m.querySelectorAll('svg.chart polyline').length === 2; }})()"
            ),
        );
        cdp
    });

    // What the page shows.
    let shown = tokio::task::block_in_place(|| {
        cdp.eval(
            "JSON.stringify({ \
               hosts: [...document.querySelectorAll('#hosts tr[data-host]')].map(r => r.dataset.host), \
               vms: [...document.querySelectorAll('#hosts span[data-vm]')].map(s => s.dataset.vm), \
               hash: location.hash, \
               title: document.querySelector('[data-migration] h3').textContent })",
        )
    });
    let shown: Value = serde_json::from_str(shown.as_str().expect("a string")).expect("JSON");
    assert_eq!(shown["hosts"], json!(["rack1-a", "rack1-b"]), "{shown}");
    let mut vms: Vec<&str> = shown["vms"]
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    vms.sort_unstable();
    assert_eq!(vms, ["batch-7", "cache-1", "web-1"], "{shown}");
    assert_eq!(
        shown["hash"], "",
        "the token is taken out of the address bar"
    );
    assert!(
        shown["title"]
            .as_str()
            .is_some_and(|t| t.contains("web-1") && t.contains("rack1-b")),
        "{shown}"
    );

    // Live: a marker in the page survives while the RMS changes under it.
    let navigations = tokio::task::block_in_place(|| {
        cdp.eval("window.__marker = 'no reload'; true");
        cdp.navigations
    });
    create_vm(&rms, "db-2", 8 * GIB, "rack1-b").await;
    let c = FakeAgent::start("rack2-c", rms.addr, 128 * GIB, Behaviour::default()).await;
    let alive_c = c.keep_alive(128 * GIB);
    round(&rms, "rack1-a", id, 4, 7.0e8, 4.0e7).await;
    round(&rms, "rack1-a", id, 5, 6.5e8, 2.5e7).await;
    let png = tokio::task::block_in_place(|| {
        cdp.wait_for(
            "the new VM and host",
            "!!document.querySelector('#hosts tr[data-host=\"rack1-b\"] span[data-vm=\"db-2\"]') && \
             !!document.querySelector('#hosts tr[data-host=\"rack2-c\"]')",
        );
        cdp.wait_for(
            "rounds 4 and 5 in the chart",
            &format!(
                "document.querySelectorAll('[data-migration=\"{id}\"] svg.chart circle.s-cap').length === 5"
            ),
        );
        // The bandwidth in use: the running migration's latest cap.
        cdp.wait_for(
            "the bandwidth in use at the latest cap",
            "(() => { const c = document.getElementById('bandwidth-chart'); \
             return !!c && Number(c.dataset.current) === 6.5e8 && Number(c.dataset.samples) > 2; })()",
        );
        assert_eq!(cdp.eval("window.__marker"), json!("no reload"));
        assert_eq!(cdp.navigations, navigations, "the page navigated");
        // The budget's line, from `GET /api/v1/budget`.
        assert_eq!(
            cdp.eval("document.getElementById('bandwidth-chart').dataset.budget"),
            json!("1500000000")
        );
        assert_eq!(
            cdp.eval("document.querySelectorAll('#bandwidth-chart line.s-budget').length"),
            json!(1)
        );

        // Nothing but the RMS was asked for.
        let urls = cdp.eval(
            "JSON.stringify(performance.getEntriesByType('navigation').concat(\
               performance.getEntriesByType('resource')).map(e => e.name))",
        );
        let urls: Vec<String> =
            serde_json::from_str(urls.as_str().expect("a string")).expect("a list of URLs");
        assert!(
            urls.iter()
                .any(|u| u.starts_with(&format!("{origin}/assets/dashboard.js"))),
            "{urls:?}"
        );
        let foreign: Vec<&String> = urls
            .iter()
            .filter(|u| !u.starts_with(&format!("{origin}/")))
            .collect();
        assert!(
            foreign.is_empty(),
            "the page loaded from elsewhere: {foreign:?}"
        );
        assert!(
            cdp.errors.is_empty(),
            "script errors or policy violations: {:?}",
            cdp.errors
        );

        let shot = cdp.call(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true}),
        );
        base64(shot["data"].as_str().expect("the screenshot's data"))
    });
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    let path = screenshot_path();
    std::fs::create_dir_all(path.parent().expect("a directory")).expect("the target directory");
    std::fs::write(&path, &png).expect("save the screenshot");
    println!(
        "dashboard screenshot: {} ({} bytes; test took {:.1} s)",
        path.display(),
        png.len(),
        started.elapsed().as_secs_f64()
    );

    drop(cdp);
    drop(browser);
    for s in alive.iter().chain([&alive_c]) {
        s.cancel();
    }
    // A heartbeat under way ends before the RMS stops.
    tokio::time::sleep(Duration::from_millis(300)).await;
    rms.stop().await;
}

#[test]
fn base64_decodes() {
    assert_eq!(base64("aGVsbG8="), b"hello");
    assert_eq!(base64("aGk="), b"hi");
    assert_eq!(base64("YWJj"), b"abc");
}
