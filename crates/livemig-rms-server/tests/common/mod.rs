//! A real RMS (SQLite in a temporary directory) on loopback, and fake agents: small HTTP
//! servers that answer the RMS as agents do and post the events a source and a destination
//! post, so the orchestration is tested without moving memory.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{delete, get, post};
use axum::Router;
use livemig_api::{IncomingRequest, OutgoingRequest, VmInfo};
use livemig_http::{ServerConfig, Token};
use livemig_rms_server::RmsConfig;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

pub const TOKEN: &str = "test-token-0123456789";

pub fn token_file(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("token");
    std::fs::write(&p, format!("{TOKEN}\n")).expect("write the token");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    p
}

/// A running RMS.
pub struct Rms {
    pub addr: SocketAddr,
    /// With a CA: its certificate (the API is HTTPS, its certificate names 127.0.0.1).
    pub ca_pem: Option<String>,
    pub stop: CancellationToken,
    pub task: tokio::task::JoinHandle<Result<(), livemig_rms_server::RmsError>>,
}

impl Rms {
    pub async fn start(dir: &Path, host_timeout_s: f64) -> Rms {
        Rms::start_at(dir, host_timeout_s, "127.0.0.1:0").await
    }

    pub async fn start_at(dir: &Path, host_timeout_s: f64, listen: &str) -> Rms {
        Rms::start_full(dir, host_timeout_s, listen, None, None).await
    }

    /// With a CA: registrations get certificates, migrations ask for TLS.
    pub async fn start_with_ca(dir: &Path, host_timeout_s: f64, ca: livemig_tls::Ca) -> Rms {
        Rms::start_full(dir, host_timeout_s, "127.0.0.1:0", Some(Arc::new(ca)), None).await
    }

    /// With a shared migration budget.
    pub async fn start_with_budget(
        dir: &Path,
        host_timeout_s: f64,
        budget: livemig_rms::orchestrator::BudgetConfig,
    ) -> Rms {
        Rms::start_full(dir, host_timeout_s, "127.0.0.1:0", None, Some(budget)).await
    }

    pub async fn start_full(
        dir: &Path,
        host_timeout_s: f64,
        listen: &str,
        ca: Option<Arc<livemig_tls::Ca>>,
        budget: Option<livemig_rms::orchestrator::BudgetConfig>,
    ) -> Rms {
        let url =
            livemig_store::StoreUrl::parse(&format!("sqlite:{}", dir.join("rms.db").display()))
                .expect("a store url");
        let store = livemig_store::open(&url).expect("the store opens");
        let (token, secret) = Token::load_secret(&token_file(dir)).expect("the token");
        let mut cfg = RmsConfig::default();
        cfg.orchestrator.host_timeout_s = host_timeout_s;
        cfg.orchestrator.answer_timeout_s = 3.0;
        cfg.orchestrator.budget = budget;
        cfg.heartbeat_s = 0.2;
        cfg.tick = Duration::from_millis(50);
        cfg.agent_timeout = Duration::from_secs(3);
        let listener = tokio::net::TcpListener::bind(listen).await.expect("bind");
        let addr = listener.local_addr().expect("an address");
        let stop = CancellationToken::new();
        let server = ServerConfig {
            shutdown_grace: Duration::from_millis(200),
            ..ServerConfig::default()
        };
        let ca_pem = ca.as_ref().map(|c| c.cert_pem().to_string());
        let tls = ca.map(|ca| {
            let ip: std::net::IpAddr = addr.ip();
            livemig_rms_server::RmsTls::issue(ca, &["localhost"], &[ip])
                .expect("the RMS's certificate")
        });
        let task = tokio::spawn(livemig_rms_server::run(
            listener,
            store,
            None,
            token,
            secret,
            cfg,
            server,
            livemig_rms_server::system_clock(),
            tls,
            stop.clone(),
        ));
        Rms {
            addr,
            ca_pem,
            stop,
            task,
        }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let r = tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the RMS stops within 10 s")
            .expect("the RMS task did not panic");
        r.expect("the RMS ends cleanly");
    }

    pub fn url(&self, path: &str) -> String {
        let scheme = if self.ca_pem.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}{}", self.addr, path)
    }
}

/// A client trusting nothing (plain HTTP only).
pub fn http() -> reqwest::Client {
    client(None)
}

/// A client trusting `ca_pem` (HTTPS), or nothing.
pub fn client(ca_pem: Option<&str>) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .tls_backend_preconfigured(livemig_tls::https_client_config(ca_pem).expect("TLS"))
        .build()
        .expect("a client")
}

/// A call with the token; returns the status and the JSON body (`null` when empty).
pub async fn call(method: reqwest::Method, url: &str, body: Option<Value>) -> (u16, Value) {
    call_as(method, url, body, Some(TOKEN)).await
}

pub async fn call_as(
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
    token: Option<&str>,
) -> (u16, Value) {
    call_by(&http(), method, url, body, token).await
}

/// [`call_as`] with `client`.
pub async fn call_by(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
    token: Option<&str>,
) -> (u16, Value) {
    let mut req = client.request(method, url);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let resp = req.send().await.expect("the RMS answers");
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.expect("a body");
    let v = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)))
    };
    (status, v)
}

/// How a fake agent behaves.
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// Refuse capacity questions with this reason.
    pub refuse: Option<String>,
    /// As a source, end the migration with `failed` (guest on the source) instead of handing
    /// over.
    pub fail: bool,
    /// As a source, post nothing after `connected` until told (the migration stays running).
    pub hang: bool,
    /// Take this long to start or stop a VM (a slow guest).
    pub slow_vm: Option<Duration>,
}

/// What a fake agent saw and holds.
#[derive(Debug, Default)]
pub struct Seen {
    pub vms: Vec<VmInfo>,
    pub reservations: Vec<String>,
    pub released: Vec<String>,
    pub incoming: Vec<IncomingRequest>,
    pub outgoing: Vec<OutgoingRequest>,
    pub cancels: Vec<u64>,
    /// Migrations this agent knows, as the report says.
    pub migrations: Vec<(u64, &'static str, &'static str, String)>,
}

pub struct FakeAgent {
    pub name: String,
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Seen>>,
    pub behaviour: Arc<Mutex<Behaviour>>,
    pub stop: CancellationToken,
    rms: SocketAddr,
}

#[derive(Clone)]
struct Fake {
    name: String,
    rms: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    behaviour: Arc<Mutex<Behaviour>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FakeAgent {
    /// Starts the fake agent and registers it with `memory` bytes.
    pub async fn start(
        name: &str,
        rms: SocketAddr,
        memory: u64,
        behaviour: Behaviour,
    ) -> FakeAgent {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let behaviour = Arc::new(Mutex::new(behaviour));
        let fake = Fake {
            name: name.to_string(),
            rms,
            seen: Arc::clone(&seen),
            behaviour: Arc::clone(&behaviour),
        };
        let router = Router::new()
            .route("/api/v1/capacity", post(capacity))
            .route("/api/v1/capacity/{id}", delete(release))
            .route("/api/v1/vms", post(create_vm))
            .route("/api/v1/vms/{name}", delete(delete_vm))
            .route("/api/v1/incoming", post(incoming))
            .route("/api/v1/outgoing", post(outgoing))
            .route("/api/v1/outgoing/{id}", delete(cancel))
            .route("/api/v1/report", get(report))
            .with_state(fake);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move { s.cancelled().await })
                .await;
        });
        let agent = FakeAgent {
            name: name.to_string(),
            addr,
            seen,
            behaviour,
            stop,
            rms,
        };
        agent.register(memory).await;
        agent
    }

    pub async fn register(&self, memory: u64) {
        let vms = lock(&self.seen).vms.clone();
        let (status, body) = call(
            reqwest::Method::POST,
            &format!("http://{}/api/v1/agents/register", self.rms),
            Some(json!({
                "name": self.name,
                "address": self.addr.to_string(),
                "data_host": "127.0.0.1",
                "memory_total_bytes": memory,
                "memory_free_bytes": memory,
                "vms": vms,
            })),
        )
        .await;
        assert_eq!(status, 200, "registration: {body}");
    }

    pub async fn heartbeat(&self, free: u64) -> u16 {
        call(
            reqwest::Method::POST,
            &format!("http://{}/api/v1/agents/heartbeat", self.rms),
            Some(json!({"name": self.name, "memory_free_bytes": free})),
        )
        .await
        .0
    }

    /// Heartbeats every 100 ms until `stop`.
    pub fn keep_alive(&self, free: u64) -> CancellationToken {
        let stop = CancellationToken::new();
        let s = stop.clone();
        let (rms, name) = (self.rms, self.name.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = s.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
                let _ = call(
                    reqwest::Method::POST,
                    &format!("http://{rms}/api/v1/agents/heartbeat"),
                    Some(json!({"name": name, "memory_free_bytes": free})),
                )
                .await;
            }
        });
        stop
    }

    pub fn vm_names(&self) -> Vec<String> {
        lock(&self.seen)
            .vms
            .iter()
            .map(|v| v.name.clone())
            .collect()
    }
}

async fn capacity(State(f): State<Fake>, body: String) -> Response {
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    if let Some(reason) = lock(&f.behaviour).refuse.clone() {
        return livemig_http::json(
            StatusCode::OK,
            &json!({"answer": "refused", "reason": reason}),
        );
    }
    let mut seen = lock(&f.seen);
    let id = format!("{}-r{}", f.name, seen.reservations.len() + 1);
    seen.reservations.push(id.clone());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let _ = v;
    livemig_http::json(
        StatusCode::OK,
        &json!({"answer": "accepted", "reservation": {"id": id, "expires_at": now + 30.0}}),
    )
}

async fn release(State(f): State<Fake>, UrlPath(id): UrlPath<String>) -> Response {
    lock(&f.seen).released.push(id.clone());
    livemig_http::json(StatusCode::OK, &json!({"released": id, "memory_bytes": 0}))
}

async fn create_vm(State(f): State<Fake>, body: String) -> Response {
    let vm: VmInfo = match serde_json::from_str(&body) {
        Ok(v) => v,
        Err(e) => {
            return livemig_http::json(StatusCode::BAD_REQUEST, &json!({"error": e.to_string()}))
        }
    };
    let slow = lock(&f.behaviour).slow_vm;
    if let Some(d) = slow {
        tokio::time::sleep(d).await;
    }
    lock(&f.seen).vms.push(vm.clone());
    livemig_http::json(StatusCode::CREATED, &json!(vm))
}

async fn delete_vm(State(f): State<Fake>, UrlPath(name): UrlPath<String>) -> Response {
    let slow = lock(&f.behaviour).slow_vm;
    if let Some(d) = slow {
        tokio::time::sleep(d).await;
    }
    let mut seen = lock(&f.seen);
    let before = seen.vms.len();
    seen.vms.retain(|v| v.name != name);
    if seen.vms.len() == before {
        return livemig_http::json(StatusCode::NOT_FOUND, &json!({"error": "no such VM"}));
    }
    livemig_http::json(StatusCode::OK, &json!({"name": name}))
}

async fn incoming(State(f): State<Fake>, body: String) -> Response {
    let req: IncomingRequest = match serde_json::from_str(&body) {
        Ok(v) => v,
        Err(e) => {
            return livemig_http::json(StatusCode::BAD_REQUEST, &json!({"error": e.to_string()}))
        }
    };
    assert!(req.key.is_well_formed());
    let mut seen = lock(&f.seen);
    seen.migrations.push((
        req.migration,
        "destination",
        "migrating",
        req.vm.name.clone(),
    ));
    seen.incoming.push(req);
    livemig_http::json(StatusCode::CREATED, &json!({"data_address": "127.0.0.1:9"}))
}

async fn cancel(State(f): State<Fake>, UrlPath(id): UrlPath<u64>) -> Response {
    lock(&f.seen).cancels.push(id);
    let (rms, name) = (f.rms, f.name.clone());
    tokio::spawn(async move {
        post_event(
            rms,
            &name,
            id,
            json!({"event": "cancelled", "phase": "pre-copy"}),
        )
        .await;
    });
    livemig_http::json(StatusCode::ACCEPTED, &json!({}))
}

async fn report(State(f): State<Fake>) -> Response {
    let seen = lock(&f.seen);
    let migrations: serde_json::Map<String, Value> = seen
        .migrations
        .iter()
        .map(|(id, role, state, vm)| {
            (
                id.to_string(),
                json!({"role": role, "vm": vm, "state": state}),
            )
        })
        .collect();
    livemig_http::json(
        StatusCode::OK,
        &json!({"host": f.name, "vms": seen.vms, "migrations": migrations}),
    )
}

pub async fn post_event(rms: SocketAddr, host: &str, migration: u64, event: Value) -> u16 {
    call(
        reqwest::Method::POST,
        &format!("http://{rms}/api/v1/agents/events"),
        Some(json!({"host": host, "migration": migration, "event": event})),
    )
    .await
    .0
}

fn round_record(k: u32) -> Value {
    round_record_at(k, 1.0e8, 4.0e5)
}

/// Round `k`'s record under the cap `cap` (bytes/s) with the guest dirtying `dirty` bytes/s.
pub fn round_record_at(k: u32, cap: f64, dirty: f64) -> Value {
    use livemig_policy::report::RoundRecord;
    use livemig_policy::{Audit, Branch, Decision, StopReason};
    let audit = Audit {
        round: k,
        cap_bytes_per_s: cap,
        effective_bytes_per_s: cap,
        dirty_rate_bytes_per_s: dirty,
        factor: dirty / cap,
        avg_factor: dirty / cap,
        threshold: Some(0.8),
        mean_dirty_rate_bytes_per_s: dirty,
        estimate_bytes_per_s: None,
        remaining_bytes: 4096.0,
        branch: Branch::Stop,
        clamped: false,
        infeasible: false,
        throttle: None,
        predicted_remaining_bytes: None,
        note: None,
    };
    let r = RoundRecord {
        round: k,
        cap_bytes_per_s: cap,
        wish_bytes_per_s: cap,
        bytes_sent: 1.0e6,
        duration_s: 0.01,
        effective_bytes_per_s: cap,
        dirty_bytes: 4096.0,
        dirty_rate_bytes_per_s: dirty,
        factor: dirty / cap,
        avg_factor: dirty / cap,
        decision: Decision::stop(StopReason::RemainingBelowStopLevel, audit),
        raises: Vec::new(),
        probes: Vec::new(),
        throttle_applied: None,
    };
    serde_json::to_value(r).expect("a round serialises")
}

async fn outgoing(State(f): State<Fake>, body: String) -> Response {
    let req: OutgoingRequest = match serde_json::from_str(&body) {
        Ok(v) => v,
        Err(e) => {
            return livemig_http::json(StatusCode::BAD_REQUEST, &json!({"error": e.to_string()}))
        }
    };
    let b = lock(&f.behaviour).clone();
    {
        let mut seen = lock(&f.seen);
        seen.migrations
            .push((req.migration, "source", "migrating", req.vm.clone()));
        seen.outgoing.push(req.clone());
    }
    let (rms, name, seen) = (f.rms, f.name.clone(), Arc::clone(&f.seen));
    tokio::spawn(async move {
        let id = req.migration;
        post_event(
            rms,
            &name,
            id,
            json!({"event": "connected", "peer": req.data_address}),
        )
        .await;
        if b.hang {
            return;
        }
        post_event(
            rms,
            &name,
            id,
            json!({"event": "round_ended", "record": round_record(1)}),
        )
        .await;
        post_event(
            rms,
            &name,
            id,
            json!({"event": "round_ended", "record": round_record(2)}),
        )
        .await;
        if b.fail {
            set_state(&seen, id, "failed");
            post_event(rms, &name, id, json!({"event": "failed", "error": "the link broke", "outcome": "failed_source_running"})).await;
            return;
        }
        post_event(rms, &name, id, json!({"event": "stop_and_copy", "reason": "remaining_below_stop_level", "bytes": 4096.0, "cap_bytes_per_s": 1.0e8})).await;
        post_event(rms, &name, id, json!({"event": "committed"})).await;
        {
            let mut s = lock(&seen);
            s.vms.retain(|v| v.name != req.vm);
        }
        set_state(&seen, id, "handed_over");
        post_event(
            rms,
            &name,
            id,
            json!({"event": "handed_over", "downtime_s": 0.01}),
        )
        .await;
    });
    livemig_http::json(StatusCode::ACCEPTED, &json!({}))
}

pub fn set_state(seen: &Arc<Mutex<Seen>>, id: u64, state: &'static str) {
    for m in lock(seen).migrations.iter_mut() {
        if m.0 == id {
            m.2 = state;
        }
    }
}

/// Gives the destination the VM (what a real destination does when the guest resumes there).
pub fn land(dst: &FakeAgent, vm: VmInfo) {
    lock(&dst.seen).vms.push(vm);
}

/// Polls `GET /api/v1/migrations/{id}` until its state is one of `states` (or 20 s pass).
pub async fn wait_state(rms: &Rms, id: u64, states: &[&str]) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, v) = call(
            reqwest::Method::GET,
            &rms.url(&format!("/api/v1/migrations/{id}")),
            None,
        )
        .await;
        assert_eq!(status, 200, "{v}");
        if states.iter().any(|s| v["state"] == *s) {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "migration {id} never reached {states:?}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
