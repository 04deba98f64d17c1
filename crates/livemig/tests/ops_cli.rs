//! The operator commands (`host`, `vm`, `migration`) against a fake RMS: an axum server in the
//! test that records every request and answers canned JSON. Checks what is sent (method, path,
//! bearer token, body), what is printed (tables, `--json`, `--watch`), and the exit codes.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use assert_cmd::Command;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Response, StatusCode};
use serde_json::{json, Value};

/// One request the fake RMS received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    /// The path as sent (percent-encoding kept).
    path: String,
    authorization: Option<String>,
    body: String,
}

impl Seen {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("the request body is JSON")
    }
}

/// The answer to a request: status and body. The `usize` is how many times the same method
/// and path were asked before.
type Responder = dyn Fn(&Seen, usize) -> (u16, String) + Send + Sync;

#[derive(Clone)]
struct Shared {
    log: Arc<Mutex<Vec<Seen>>>,
    counts: Arc<Mutex<HashMap<String, usize>>>,
    respond: Arc<Responder>,
}

/// A fake RMS on loopback; stops when dropped.
struct Fake {
    url: String,
    log: Arc<Mutex<Vec<Seen>>>,
    _rt: tokio::runtime::Runtime,
}

impl Fake {
    fn start(respond: impl Fn(&Seen, usize) -> (u16, String) + Send + Sync + 'static) -> Fake {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let shared = Shared {
            log: Arc::default(),
            counts: Arc::default(),
            respond: Arc::new(respond),
        };
        let log = shared.log.clone();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let app = axum::Router::new().fallback(handle).with_state(shared);
        rt.spawn(async move { axum::serve(listener, app).await });
        Fake {
            url: format!("http://{addr}"),
            log,
            _rt: rt,
        }
    }

    fn requests(&self) -> Vec<Seen> {
        self.log.lock().expect("log").clone()
    }

    /// The only request received.
    fn only(&self) -> Seen {
        let all = self.requests();
        assert_eq!(all.len(), 1, "{all:#?}");
        all[0].clone()
    }
}

async fn handle(State(s): State<Shared>, req: Request) -> Response<Body> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let authorization = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .map(|b| String::from_utf8_lossy(&b).to_string())
        .unwrap_or_default();
    let seen = Seen {
        method,
        path,
        authorization,
        body,
    };
    let n = {
        let mut counts = s.counts.lock().expect("counts");
        let c = counts
            .entry(format!("{} {}", seen.method, seen.path))
            .or_insert(0);
        *c += 1;
        *c - 1
    };
    s.log.lock().expect("log").push(seen.clone());
    let (status, body) = (s.respond)(&seen, n);
    Response::builder()
        .status(StatusCode::from_u16(status).expect("status"))
        .header("content-type", "application/json")
        .body(Body::from(body))
        .expect("response")
}

/// A token file (mode 600) holding `s3cret`.
fn token_file(dir: &Path) -> PathBuf {
    let p = dir.join("rms.token");
    std::fs::write(&p, "s3cret\nsecond line ignored\n").expect("write");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    p
}

/// `livemig ARGS --rms URL --token-file F`, with the environment's RMS settings removed.
fn livemig(fake_url: &str, token: &Path, args: &[&str]) -> Command {
    let mut c = Command::cargo_bin("livemig").expect("binary");
    c.env_remove("LIVEMIG_RMS")
        .env_remove("LIVEMIG_TOKEN_FILE")
        .args(args)
        .args(["--rms", fake_url])
        .arg("--token-file")
        .arg(token)
        .timeout(Duration::from_secs(30));
    c
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn ok(out: std::process::Output) -> String {
    assert!(out.status.success(), "{out:?}");
    stdout(&out)
}

fn fails(out: &std::process::Output, code: i32) -> String {
    assert_eq!(out.status.code(), Some(code), "{out:?}");
    stderr(out)
}

fn answer(v: Value) -> (u16, String) {
    (200, v.to_string())
}

fn hosts() -> Value {
    json!([
        {"name": "host-a", "address": "10.0.0.1:7800", "state": "alive",
         "memory_total_bytes": 8u64 << 30, "memory_free_bytes": 6u64 << 30, "vms": ["web-1"]},
        {"name": "host-b", "address": "10.0.0.2:7800", "state": "lost",
         "memory_total_bytes": 4u64 << 30, "memory_free_bytes": 4u64 << 30, "vms": []}
    ])
}

fn vm(name: &str, host: &str) -> Value {
    json!({"name": name, "memory_bytes": 64u64 << 20, "workload": "idle", "kind": "sim", "host": host})
}

/// Real rounds and a real report: `livemig simulate --json` (computed once).
fn report() -> Value {
    static REPORT: OnceLock<Value> = OnceLock::new();
    REPORT
        .get_or_init(|| {
            let out = Command::cargo_bin("livemig")
                .expect("binary")
                .args(["simulate", "--memory", "256MiB", "--json"])
                .output()
                .expect("simulate");
            assert!(out.status.success(), "{out:?}");
            serde_json::from_slice(&out.stdout).expect("report JSON")
        })
        .clone()
}

/// Migration 7 of web-1 in `state` with the report's first `rounds` rounds.
fn migration(state: &str, rounds: usize, done: bool) -> Value {
    let r = report();
    let all = r["rounds"].as_array().expect("rounds").clone();
    let mut v = json!({
        "id": 7, "vm": "web-1", "source": "host-a", "target": "host-b", "state": state,
        "policy": "predictive",
        "attempts": [{"host": "host-c", "answer": "refused", "reason": "not enough memory"},
                     {"host": "host-b", "answer": "accepted"}],
        "rounds": all.into_iter().take(rounds).collect::<Vec<_>>(),
    });
    if done {
        v["report"] = r;
    }
    if state == "failed" {
        v["error"] = json!("the destination refused the hand-over");
    }
    v
}

fn round_count() -> usize {
    report()["rounds"].as_array().expect("rounds").len()
}

#[test]
fn host_list_sends_the_token_and_prints_a_table_or_the_rms_json() {
    let dir = tempfile::tempdir().expect("dir");
    let token = token_file(dir.path());
    let fake = Fake::start(|_, _| answer(hosts()));
    let text = ok(livemig(&fake.url, &token, &["host", "list"])
        .output()
        .expect("run"));
    let seen = fake.only();
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("GET", "/api/v1/hosts")
    );
    assert_eq!(seen.authorization.as_deref(), Some("Bearer s3cret"));
    for word in [
        "host-a",
        "10.0.0.1:7800",
        "alive",
        "lost",
        "8.00 GiB",
        "6.00 GiB",
        "web-1",
    ] {
        assert!(text.contains(word), "{word}: {text}");
    }
    let json_out = ok(livemig(&fake.url, &token, &["host", "list", "--json"])
        .output()
        .expect("run"));
    let v: Value = serde_json::from_str(&json_out).expect("JSON");
    assert_eq!(v, hosts());
}

#[test]
fn the_environment_gives_the_rms_and_the_token_file() {
    let dir = tempfile::tempdir().expect("dir");
    let token = token_file(dir.path());
    let fake = Fake::start(|_, _| answer(json!([])));
    let out = Command::cargo_bin("livemig")
        .expect("binary")
        .args(["vm", "list", "--json"])
        .env("LIVEMIG_RMS", &fake.url)
        .env("LIVEMIG_TOKEN_FILE", &token)
        .timeout(Duration::from_secs(30))
        .output()
        .expect("run");
    assert_eq!(ok(out).trim(), "[]");
    let seen = fake.only();
    assert_eq!(seen.path, "/api/v1/vms");
    assert_eq!(seen.authorization.as_deref(), Some("Bearer s3cret"));
}

#[test]
fn vm_create_sends_the_request_body() {
    let dir = tempfile::tempdir().expect("dir");
    let token = token_file(dir.path());
    let fake = Fake::start(|seen, _| {
        let host = seen.json()["host"].as_str().unwrap_or("host-a").to_string();
        (201, json!({"name": "web-1", "host": host}).to_string())
    });
    let text = ok(livemig(
        &fake.url,
        &token,
        &[
            "vm",
            "create",
            "web-1",
            "--memory",
            "64MiB",
            "--workload",
            "uniform:rate=8MiB/s",
            "--kind",
            "qemu",
            "--host",
            "host-b",
        ],
    )
    .output()
    .expect("run"));
    assert_eq!(text.trim(), "created vm web-1 on host-b");
    let seen = fake.only();
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("POST", "/api/v1/vms")
    );
    assert_eq!(seen.authorization.as_deref(), Some("Bearer s3cret"));
    assert_eq!(
        seen.json(),
        json!({"name": "web-1", "memory_bytes": 67108864u64, "workload": "uniform:rate=8MiB/s",
               "kind": "qemu", "host": "host-b"})
    );
    // Without --host the RMS chooses: no `host` key; `sim` by default; --json is the answer.
    let out = ok(livemig(
        &fake.url,
        &token,
        &[
            "vm",
            "create",
            "web-2",
            "--memory",
            "1GiB",
            "--workload",
            "idle",
            "--json",
        ],
    )
    .output()
    .expect("run"));
    let body = fake.requests()[1].json();
    assert_eq!(
        body,
        json!({"name": "web-2", "memory_bytes": 1u64 << 30, "workload": "idle", "kind": "sim"})
    );
    let v: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v, json!({"name": "web-1", "host": "host-a"}));
}

#[test]
fn bad_sizes_and_settings_are_refused_before_any_request() {
    let dir = tempfile::tempdir().expect("dir");
    let token = token_file(dir.path());
    let fake = Fake::start(|_, _| answer(json!({})));
    for memory in ["lots", "64", "100KB", "0MiB", "-1GiB"] {
        let out = livemig(
            &fake.url,
            &token,
            &[
                "vm",
                "create",
                "x",
                "--memory",
                memory,
                "--workload",
                "idle",
            ],
        )
        .output()
        .expect("run");
        let err = fails(&out, 2);
        assert!(err.contains("--memory"), "{memory}: {err}");
    }
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "roundz = 3\n").expect("write");
    let out = livemig(
        &fake.url,
        &token,
        &[
            "vm",
            "migrate",
            "web-1",
            "--settings",
            &bad.to_string_lossy(),
        ],
    )
    .output()
    .expect("run");
    assert!(fails(&out, 2).contains("unknown setting `roundz`"));
    let out = livemig(
        &fake.url,
        &token,
        &["vm", "migrate", "web-1", "--policy", "nope"],
    )
    .output()
    .expect("run");
    fails(&out, 2);
    for args in [
        &["vm", "migrate", "web-1", "--watch-timeout", "1m"][..],
        &[
            "vm",
            "migrate",
            "web-1",
            "--watch",
            "--watch-interval",
            "1ms",
        ][..],
        &["migration", "watch", "7", "--watch-timeout", "0s"][..],
    ] {
        let err = fails(&livemig(&fake.url, &token, args).output().expect("run"), 2);
        assert!(err.contains("--watch-"), "{args:?}: {err}");
    }
    // A token file others can read is refused, as the agent refuses it.
    let open = dir.path().join("open.token");
    std::fs::write(&open, "s3cret\n").expect("write");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = livemig(&fake.url, &open, &["host", "list"])
        .output()
        .expect("run");
    assert!(fails(&out, 2).contains("chmod 600"));
    assert!(fake.requests().is_empty(), "{:#?}", fake.requests());
}

#[test]
fn vm_list_show_and_delete_use_their_paths() {
    let dir = tempfile::tempdir().expect("dir");
    let token = token_file(dir.path());
    let fake = Fake::start(|seen, _| match (seen.method.as_str(), seen.path.as_str()) {
        ("GET", "/api/v1/vms") => answer(json!([vm("web-1", "host-a"), vm("db 1", "host-b")])),
        ("GET", "/api/v1/vms/db%201") => answer(vm("db 1", "host-b")),
        ("DELETE", "/api/v1/vms/web-1") => answer(vm("web-1", "host-a")),
        _ => (404, json!({"error": "no such thing"}).to_string()),
    });
    let text = ok(livemig(&fake.url, &token, &["vm", "list"])
        .output()
        .expect("run"));
    for word in [
        "web-1",
        "db 1",
        "host-a",
        "host-b",
        "64.00 MiB",
        "idle",
        "sim",
    ] {
        assert!(text.contains(word), "{word}: {text}");
    }
    let text = ok(livemig(&fake.url, &token, &["vm", "show", "db 1"])
        .output()
        .expect("run"));
    assert!(text.contains("db 1") && text.contains("host-b"), "{text}");
    let json_out = ok(
        livemig(&fake.url, &token, &["vm", "show", "db 1", "--json"])
            .output()
            .expect("run"),
    );
    assert_eq!(
        serde_json::from_str::<Value>(&json_out).expect("JSON"),
        vm("db 1", "host-b")
    );
    let text = ok(livemig(&fake.url, &token, &["vm", "delete", "web-1"])
        .output()
        .expect("run"));
    assert_eq!(text.trim(), "deleted vm web-1 (was on host-a)");
    let methods: Vec<String> = fake
        .requests()
        .iter()
        .map(|s| format!("{} {}", s.method, s.path))
        .collect();
    assert_eq!(
        methods,
        [
            "GET /api/v1/vms",
            "GET /api/v1/vms/db%201",
            "GET /api/v1/vms/db%201",
            "DELETE /api/v1/vms/web-1"
        ]
    );
}

#[test]
fn rms_errors_print_its_text_and_exit_2() {
    let dir = tempfile::tempdir().expect("dir");
    let token = token_file(dir.path());
    let fake = Fake::start(|seen, _| match (seen.method.as_str(), seen.path.as_str()) {
        ("GET", "/api/v1/vms/ghost") => (404, json!({"error": "no VM named ghost"}).to_string()),
        ("DELETE", "/api/v1/migrations/7") => (
            409,
            json!({"error": "migration 7 is past its commit point"}).to_string(),
        ),
        ("POST", "/api/v1/vms") => (422, json!({"error": "unknown workload `zzz`"}).to_string()),
        ("GET", "/api/v1/hosts") => answer(json!({"not": "a list"})),
        _ => (500, String::new()),
    });
    let err = fails(
        &livemig(&fake.url, &token, &["vm", "show", "ghost"])
            .output()
            .expect("run"),
        2,
    );
    assert!(
        err.contains("404") && err.contains("no VM named ghost"),
        "{err}"
    );
    let err = fails(
        &livemig(&fake.url, &token, &["migration", "cancel", "7"])
            .output()
            .expect("run"),
        2,
    );
    assert!(
        err.contains("409") && err.contains("past its commit point"),
        "{err}"
    );
    let err = fails(
        &livemig(
            &fake.url,
            &token,
            &[
                "vm",
                "create",
                "x",
                "--memory",
                "64MiB",
                "--workload",
                "zzz",
            ],
        )
        .output()
        .expect("run"),
        2,
    );
    assert!(
        err.contains("422") && err.contains("unknown workload `zzz`"),
        "{err}"
    );
    let err = fails(
        &livemig(&fake.url, &token, &["host", "list"])
            .output()
            .expect("run"),
        2,
    );
    assert!(err.contains("malformed answer"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn a_refused_token_names_the_token_file() {
    let dir = tempfile::tempdir().expect("dir");
    let token = token_file(dir.path());
    let fake = Fake::start(|_, _| (401, json!({"error": "bad token"}).to_string()));
    let err = fails(
        &livemig(&fake.url, &token, &["vm", "list"])
            .output()
            .expect("run"),
        2,
    );
    assert!(
        err.contains("401") && err.contains(&*token.to_string_lossy()),
        "{err}"
    );
    // No token file at all: say how to give one; no Authorization header is sent.
    let out = Command::cargo_bin("livemig")
        .expect("binary")
        .env_remove("LIVEMIG_TOKEN_FILE")
        .args(["vm", "list", "--rms", &fake.url])
        .timeout(Duration::from_secs(30))
        .output()
        .expect("run");
    let err = fails(&out, 2);
    assert!(
        err.contains("--token-file") && err.contains("LIVEMIG_TOKEN_FILE"),
        "{err}"
    );
    assert_eq!(fake.requests()[1].authorization, None);
}

#[test]
fn an_unreachable_rms_says_where_and_how_to_change_it() {
    let dir = tempfile::tempdir().expect("dir");
    let token = token_file(dir.path());
    // A port nothing listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let out = livemig(&url, &token, &["migration", "list"])
        .output()
        .expect("run");
    let err = fails(&out, 2);
    assert!(
        err.contains(&url) && err.contains("--rms") && err.contains("LIVEMIG_RMS"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(stdout(&out).is_empty());
}

#[test]
fn vm_migrate_sends_target_policy_and_settings_and_prints_the_id() {
    let dir = tempfile::tempdir().expect("dir");
    let token = token_file(dir.path());
    let settings = dir.path().join("tight.toml");
    std::fs::write(&settings, "rounds = 12\nmax_bandwidth = \"1Gbit/s\"\n").expect("write");
    let fake = Fake::start(|_, _| (202, json!({"id": 7}).to_string()));
    let text = ok(livemig(
        &fake.url,
        &token,
        &[
            "vm",
            "migrate",
            "web-1",
            "--to",
            "host-b",
            "--policy",
            "dirty-factor",
            "--settings",
            &settings.to_string_lossy(),
        ],
    )
    .output()
    .expect("run"));
    assert!(
        text.contains("migration 7 ") && text.contains("livemig migration watch 7"),
        "{text}"
    );
    let seen = fake.only();
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("POST", "/api/v1/migrations")
    );
    assert_eq!(seen.authorization.as_deref(), Some("Bearer s3cret"));
    let body = seen.json();
    assert_eq!(body["vm"], "web-1");
    assert_eq!(body["target"], "host-b");
    assert_eq!(body["policy"], "dirty-factor");
    assert_eq!(body["settings"]["rounds"], 12);
    assert_eq!(body["settings"]["max_bandwidth"], "1Gbit/s");
    // Only the VM when nothing else is given; --json prints the RMS's answer.
    let out = ok(
        livemig(&fake.url, &token, &["vm", "migrate", "web-1", "--json"])
            .output()
            .expect("run"),
    );
    assert_eq!(
        serde_json::from_str::<Value>(&out).expect("JSON"),
        json!({"id": 7})
    );
    assert_eq!(fake.requests()[1].json(), json!({"vm": "web-1"}));
}

/// A fake RMS whose migration 7 goes queued, placing, running (rounds arriving), then `end`.
fn migrating(end: &'static str) -> Fake {
    Fake::start(
        move |seen, n| match (seen.method.as_str(), seen.path.as_str()) {
            ("POST", "/api/v1/migrations") => (202, json!({"id": 7}).to_string()),
            ("GET", "/api/v1/migrations/7") => {
                let all = round_count();
                answer(match n {
                    0 => migration("queued", 0, false),
                    1 => migration("placing", 0, false),
                    2 => migration("running", 1, false),
                    // Polls that bring nothing new print nothing.
                    3 | 4 => migration("running", 3, false),
                    5 => migration("switching_over", all, false),
                    _ => migration(end, all, end == "completed"),
                })
            }
            _ => (404, json!({"error": "not here"}).to_string()),
        },
    )
}

fn watch_args() -> Vec<&'static str> {
    vec![
        "vm",
        "migrate",
        "web-1",
        "--watch",
        "--watch-interval",
        "50ms",
    ]
}

#[test]
fn watch_prints_states_and_each_round_once_and_exits_0_on_completed() {
    let dir = tempfile::tempdir().expect("dir");
    let token = token_file(dir.path());
    let fake = migrating("completed");
    let text = ok(livemig(&fake.url, &token, &watch_args())
        .output()
        .expect("run"));
    let all = round_count();
    assert!(all >= 4, "{all}");
    for k in 1..=all {
        let line = format!("round {k}: cap ");
        assert_eq!(text.matches(&line).count(), 1, "{line}: {text}");
    }
    let states: Vec<&str> = text
        .lines()
        .filter(|l| {
            [
                "queued",
                "placing",
                "running (",
                "switching_over (",
                "completed (",
            ]
            .iter()
            .any(|s| l.starts_with(s))
        })
        .collect();
    assert_eq!(states.len(), 5, "{text}");
    assert_eq!(states[4], "completed (host-a -> host-b)", "{text}");
    // A state comes before the rounds run in it; the ending state after the last round.
    let at = |prefix: &str| {
        text.lines()
            .position(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("{prefix}: {text}"))
    };
    assert!(at("running (") < at("round 2:"), "{text}");
    assert!(at(&format!("round {all}:")) < at("completed ("), "{text}");
    assert!(
        text.contains("asked host-c refused: not enough memory"),
        "{text}"
    );
    assert!(text.contains("downtime"), "the summary: {text}");
    // The round line carries the cap, bytes, duration, dirty factor and decision.
    let r1 = text
        .lines()
        .find(|l| l.starts_with("round 1:"))
        .expect("round 1");
    assert!(
        r1.contains("MiB/s") && r1.contains("sent") && r1.contains("dirty factor"),
        "{r1}"
    );
    assert!(fake
        .requests()
        .iter()
        .all(|s| s.authorization.as_deref() == Some("Bearer s3cret")));
}

#[test]
fn watch_exit_codes_say_how_it_ended() {
    let dir = tempfile::tempdir().expect("dir");
    let token = token_file(dir.path());
    for (end, code) in [("failed", 1), ("unknown", 3), ("cancelled", 4)] {
        let fake = migrating(end);
        let out = livemig(&fake.url, &token, &watch_args())
            .output()
            .expect("run");
        let err = fails(&out, code);
        assert!(err.contains("migration 7 of web-1"), "{end}: {err}");
        if end == "failed" {
            assert!(err.contains("refused the hand-over"), "{err}");
            assert!(stdout(&out).contains("error: the destination refused"));
        }
        assert!(stdout(&out).contains(&format!("\n{end} (host-a -> host-b)")));
    }
}

#[test]
fn json_watch_is_ndjson_events_then_the_final_view() {
    let dir = tempfile::tempdir().expect("dir");
    let token = token_file(dir.path());
    let fake = migrating("completed");
    let mut args = watch_args();
    args.push("--json");
    let text = ok(livemig(&fake.url, &token, &args).output().expect("run"));
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is JSON"))
        .collect();
    assert_eq!(lines[0], json!({"event": "created", "id": 7}));
    let events = |kind: &str| lines.iter().filter(|l| l["event"] == kind).count();
    assert_eq!(events("round"), round_count());
    assert_eq!(events("state"), 5);
    assert_eq!(events("attempt"), 2);
    let round = lines
        .iter()
        .find(|l| l["event"] == "round")
        .expect("a round");
    assert_eq!(round["round"], report()["rounds"][0]);
    let last = lines.last().expect("lines");
    assert_eq!(last, &migration("completed", round_count(), true));
}

#[test]
fn migration_watch_times_out_with_exit_5_and_says_how_to_go_on() {
    let dir = tempfile::tempdir().expect("dir");
    let token = token_file(dir.path());
    let fake = Fake::start(|_, _| answer(migration("running", 2, false)));
    let out = livemig(
        &fake.url,
        &token,
        &[
            "migration",
            "watch",
            "7",
            "--watch-timeout",
            "600ms",
            "--watch-interval",
            "100ms",
        ],
    )
    .output()
    .expect("run");
    let err = fails(&out, 5);
    assert!(
        err.contains("--watch-timeout") && err.contains("livemig migration watch 7"),
        "{err}"
    );
    let text = stdout(&out);
    assert_eq!(text.matches("round 2: ").count(), 1, "{text}");
    assert!(fake.requests().len() >= 3, "{:#?}", fake.requests());
}

#[test]
fn migration_list_and_show() {
    let dir = tempfile::tempdir().expect("dir");
    let token = token_file(dir.path());
    let fake = Fake::start(|seen, _| match seen.path.as_str() {
        "/api/v1/migrations" => answer(json!([
            migration("completed", round_count(), true),
            migration("queued", 0, false)
        ])),
        "/api/v1/migrations/7" => answer(migration("failed", 3, false)),
        _ => (404, json!({"error": "no migration 8"}).to_string()),
    });
    let text = ok(livemig(&fake.url, &token, &["migration", "list"])
        .output()
        .expect("run"));
    for word in [
        "completed",
        "queued",
        "web-1",
        "host-a",
        "host-b",
        "predictive",
    ] {
        assert!(text.contains(word), "{word}: {text}");
    }
    let text = ok(livemig(&fake.url, &token, &["migration", "show", "7"])
        .output()
        .expect("run"));
    assert!(
        text.contains("failed") && text.contains("refused the hand-over"),
        "{text}"
    );
    assert!(text.contains("asked host-c refused: not enough memory"));
    let json_out = ok(
        livemig(&fake.url, &token, &["migration", "show", "7", "--json"])
            .output()
            .expect("run"),
    );
    assert_eq!(
        serde_json::from_str::<Value>(&json_out).expect("JSON"),
        migration("failed", 3, false)
    );
    let err = fails(
        &livemig(&fake.url, &token, &["migration", "show", "8"])
            .output()
            .expect("run"),
        2,
    );
    assert!(err.contains("no migration 8"), "{err}");
}

#[test]
fn migration_cancel_sends_delete() {
    let dir = tempfile::tempdir().expect("dir");
    let token = token_file(dir.path());
    let fake = Fake::start(|_, _| (202, String::new()));
    let text = ok(livemig(&fake.url, &token, &["migration", "cancel", "7"])
        .output()
        .expect("run"));
    assert!(text.contains("livemig migration watch 7"), "{text}");
    let seen = fake.only();
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("DELETE", "/api/v1/migrations/7")
    );
    assert_eq!(seen.authorization.as_deref(), Some("Bearer s3cret"));
}

#[test]
fn ctrl_c_stops_watching_not_the_migration() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().expect("dir");
    let token = token_file(dir.path());
    let fake = migrating("completed");
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("livemig"))
        .env_remove("LIVEMIG_RMS")
        .env_remove("LIVEMIG_TOKEN_FILE")
        .args(["migration", "watch", "7", "--watch-interval", "5s"])
        .args(["--rms", &fake.url])
        .arg("--token-file")
        .arg(&token)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    // The first poll printed: the watch is under way (and waits 5 s for the next).
    let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    reader.read_line(&mut line).expect("line");
    assert!(line.starts_with("migration 7: vm web-1"), "{line}");
    let st = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(st.success());
    let out = child.wait_with_output().expect("wait");
    let err = fails(&out, 130);
    assert!(
        err.contains("stopped watching migration 7; it goes on")
            && err.contains("livemig migration watch 7")
            && err.contains("livemig migration cancel 7"),
        "{err}"
    );
    // Only polls: nothing cancelled.
    assert!(fake.requests().iter().all(|s| s.method == "GET"));
}

#[test]
fn a_watch_rides_out_an_rms_that_briefly_fails() {
    let dir = tempfile::tempdir().expect("dir");
    let token = token_file(dir.path());
    let fake = Fake::start(|_, n| match n {
        0 => answer(migration("running", 1, false)),
        1 | 2 => (503, json!({"error": "restarting"}).to_string()),
        _ => answer(migration("completed", round_count(), true)),
    });
    let out = livemig(
        &fake.url,
        &token,
        &["migration", "watch", "7", "--watch-interval", "50ms"],
    )
    .output()
    .expect("run");
    let text = ok(out.clone());
    let err = stderr(&out);
    assert_eq!(err.matches("still watching").count(), 1, "{err}");
    assert!(
        err.contains("503") && err.contains("restarting") && err.contains("answers again"),
        "{err}"
    );
    assert!(text.contains("completed (host-a -> host-b)"), "{text}");
    assert_eq!(fake.requests().len(), 4);
    // A refused token is not transient: the watch ends at once.
    let fake = Fake::start(|_, _| (401, json!({"error": "bad token"}).to_string()));
    let out = livemig(&fake.url, &token, &["migration", "watch", "7"])
        .output()
        .expect("run");
    assert!(fails(&out, 2).contains("401"));
    assert_eq!(fake.requests().len(), 1);
}

#[test]
fn help_documents_exit_codes_and_man_pages_and_completions_cover_the_commands() {
    for args in [["vm", "migrate"], ["migration", "watch"]] {
        let out = Command::cargo_bin("livemig")
            .expect("binary")
            .args(args)
            .arg("--help")
            .output()
            .expect("run");
        let help = ok(out);
        for word in [
            "Exit codes",
            "0 completed",
            "1 failed",
            "3 unknown",
            "4 cancelled",
            "5 --watch-timeout",
            "130 Ctrl-C",
            "LIVEMIG_RMS",
            "LIVEMIG_TOKEN_FILE",
            "[default: http://127.0.0.1:7700]",
            "[default: 10m]",
        ] {
            assert!(help.contains(word), "{args:?} {word}: {help}");
        }
    }
    let dir = tempfile::tempdir().expect("dir");
    ok(Command::cargo_bin("livemig")
        .expect("binary")
        .args(["man", "--out"])
        .arg(dir.path())
        .output()
        .expect("run"));
    for page in [
        "livemig-host-list.1",
        "livemig-vm-create.1",
        "livemig-vm-migrate.1",
        "livemig-migration-cancel.1",
        "livemig-migration-watch.1",
    ] {
        assert!(dir.path().join(page).is_file(), "{page}");
    }
    let bash = ok(Command::cargo_bin("livemig")
        .expect("binary")
        .args(["completions", "bash"])
        .output()
        .expect("run"));
    for word in ["watch-timeout", "token-file", "migration", "host"] {
        assert!(bash.contains(word), "{word}");
    }
}

#[test]
fn migration_resolve_names_the_host() {
    let dir = tempfile::tempdir().expect("dir");
    let token = token_file(dir.path());
    let fake = Fake::start(|_, _| answer(migration("completed", 2, false)));
    let text = ok(livemig(
        &fake.url,
        &token,
        &["migration", "resolve", "7", "--host", "host-b"],
    )
    .output()
    .expect("run"));
    assert!(text.contains("completed"), "{text}");
    let seen = fake.only();
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("POST", "/api/v1/migrations/7/resolve")
    );
    assert_eq!(seen.json(), json!({"host": "host-b"}));
    assert_eq!(seen.authorization.as_deref(), Some("Bearer s3cret"));
}
