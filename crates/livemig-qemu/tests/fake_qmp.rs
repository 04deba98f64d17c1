//! The QMP client and the governor against a scripted fake QEMU on a unix socket: exact
//! round arithmetic from QEMU's counters, caps applied per decision, and every fault (garbage,
//! closed socket, silence) ending in a clear error instead of a hang; cancellation, a granted
//! cap and the source's settings put back on every exit.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use livemig_policy::pilot::TimeoutKind;
use livemig_policy::{
    Action, Event, PolicyConfig, PolicyKind, StopReason, TimeoutAction, Timeouts,
};
use livemig_qemu::features::DirtyMode;
use livemig_qemu::governor::{
    Control, Governor, GovernorConfig, GovernorError, QemuReport, Steering,
};
use livemig_qemu::{QmpClient, QmpError};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::time::Instant;

const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": ["oob"]}}"#;
/// No test may take longer than this: a hang is a failure.
const NO_HANG: Duration = Duration::from_secs(20);

/// What the fake sends: `None` closes the connection.
type Reply = Option<Vec<String>>;

/// Serves one connection: sends `greeting`, then answers every command with `script`.
fn serve(
    dir: &Path,
    greeting: &'static str,
    mut script: impl FnMut(&str, &Value, &Value) -> Reply + Send + 'static,
) -> PathBuf {
    let path = dir.join("fake.qmp");
    let listener = UnixListener::bind(&path).expect("bind");
    tokio::spawn(async move {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let (rd, mut wr) = stream.into_split();
        if !greeting.is_empty()
            && wr
                .write_all(format!("{greeting}\n").as_bytes())
                .await
                .is_err()
        {
            return;
        }
        let mut lines = BufReader::new(rd).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let Ok(msg) = serde_json::from_str::<Value>(&line) else {
                return;
            };
            let cmd = msg["execute"].as_str().unwrap_or_default().to_string();
            let args = msg.get("arguments").cloned().unwrap_or(Value::Null);
            match script(&cmd, &msg["id"], &args) {
                None => return,
                Some(out) => {
                    for l in out {
                        if wr.write_all(format!("{l}\n").as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    });
    path
}

fn ok(id: &Value, v: Value) -> String {
    json!({"return": v, "id": id}).to_string()
}

fn event(name: &str, data: Value, at: f64) -> String {
    let secs = at.floor();
    json!({"event": name, "data": data,
           "timestamp": {"seconds": secs as i64, "microseconds": ((at - secs) * 1e6).round() as i64}})
    .to_string()
}

#[tokio::test]
async fn connect_and_execute_against_a_well_behaved_fake() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = serve(dir.path(), GREETING, |cmd, id, _| {
        Some(match cmd {
            "query-status" => vec![
                event("RESUME", Value::Null, 5.0),
                ok(id, json!({"running": true, "status": "running", "new": 1})),
            ],
            "bad" => vec![
                json!({"error": {"class": "CommandNotFound", "desc": "no bad"}, "id": id})
                    .to_string(),
            ],
            _ => vec![ok(id, json!({}))],
        })
    });
    let mut c = QmpClient::connect(&path, NO_HANG).await.expect("connects");
    let st: livemig_qemu::types::StatusInfo =
        c.execute_as("query-status", None).await.expect("answer");
    assert!(st.running);
    let e = c
        .next_event(Duration::from_millis(10))
        .await
        .expect("ok")
        .expect("the queued event");
    assert_eq!(e.name, "RESUME");
    assert_eq!(e.timestamp, Some(5.0));
    let err = c.execute("bad", None).await.expect_err("refused");
    assert!(matches!(err, QmpError::Command { ref class, .. } if class == "CommandNotFound"));
    assert!(err.to_string().contains("no bad"), "{err}");
}

#[tokio::test]
async fn garbage_greeting_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = serve(dir.path(), "this is not QMP", |_, _, _| None);
    let err = tokio::time::timeout(NO_HANG, QmpClient::connect(&path, NO_HANG))
        .await
        .expect("no hang")
        .expect_err("garbage");
    assert!(matches!(err, QmpError::Garbage { .. }), "{err:?}");
    assert!(err.to_string().contains("this is not QMP"), "{err}");
}

#[tokio::test]
async fn closed_socket_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = serve(dir.path(), GREETING, |_, _, _| None);
    let err = tokio::time::timeout(NO_HANG, QmpClient::connect(&path, NO_HANG))
        .await
        .expect("no hang")
        .expect_err("closed");
    assert!(matches!(err, QmpError::Closed { .. }), "{err:?}");
}

#[tokio::test]
async fn silence_times_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = serve(dir.path(), "", |_, _, _| Some(vec![]));
    let err = QmpClient::connect(&path, Duration::from_millis(300))
        .await
        .expect_err("silent");
    assert!(matches!(err, QmpError::Timeout { .. }), "{err:?}");
    let dir2 = tempfile::tempdir().expect("tempdir");
    let path2 = serve(dir2.path(), GREETING, |cmd, id, _| {
        Some(if cmd == "qmp_capabilities" {
            vec![ok(id, json!({}))]
        } else {
            vec![]
        })
    });
    let mut c = QmpClient::connect(&path2, Duration::from_millis(300))
        .await
        .expect("connects");
    let err = c
        .execute("query-migrate", None)
        .await
        .expect_err("no answer");
    assert!(matches!(err, QmpError::Timeout { .. }), "{err:?}");
    assert!(err.to_string().contains("query-migrate"), "{err}");
}

#[tokio::test]
async fn missing_socket_is_a_connect_error() {
    let err = QmpClient::connect(Path::new("/nonexistent/livemig.qmp"), NO_HANG)
        .await
        .expect_err("no socket");
    assert!(matches!(err, QmpError::Connect { .. }));
    assert!(err.to_string().contains("/nonexistent/livemig.qmp"));
}

/// A fake source QEMU that plays a migration: each `query-migrate` answer is followed by the
/// next `MIGRATION_PASS`, whose counters the next answer reports. Raising `downtime-limit`
/// completes the migration. `fault` changes what happens at the `query-migrate` answered right
/// after pass 2 (inside the watch loop, once the first cap was set), or at other commands.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Fault {
    None,
    /// Garbage instead of pass 3's event.
    Garbage,
    /// The socket closes instead of answering that `query-migrate`.
    Close,
    /// That `query-migrate` is never answered; later commands are.
    Silent,
    /// QEMU refuses the second `migrate-set-parameters` (round 1's decision).
    RefuseSet,
    /// QEMU refuses `migrate`.
    RefuseMigrate,
    /// Passes 3 and 4 come together: the next `query-migrate` already counts 4 syncs.
    QueuedPasses,
    /// QEMU switches over by itself right after pass 3 (`device`, then `completed`).
    SelfSwitch,
    /// That `query-migrate` says `failed`, and the socket closes at `query-status`.
    FailedThenClosed,
    /// The steering is cancelled at that `query-migrate`.
    Cancel,
    /// A cap of 2 MB/s is granted right after round 1's decision was set.
    Grant,
    /// No pass after pass 2: round 2 never ends and `ram.remaining` stays where it was.
    Stall,
    /// No `MIGRATION_PASS` at all: QEMU never leaves its setup as far as events go.
    NoPass,
    /// No fault; the fake says it is QEMU 10.0 and has `avail-switchover-bandwidth` (0).
    Qemu10,
}

/// (event time, ram.transferred, ram.remaining) at each pass; pass 1 starts round 1.
const PASSES: [(f64, f64, f64); 5] = [
    (1000.0, 0.0, 100e6),
    (1002.0, 100e6, 10e6),
    (1003.0, 110e6, 4e6),
    (1003.5, 114e6, 3e6),
    (1004.0, 117e6, 2.5e6),
];

/// A value shared between the test and the fake.
type Shared<T> = std::sync::Arc<std::sync::Mutex<T>>;
/// Every command the fake received, with its arguments, in order.
type Log = Shared<Vec<(String, Value)>>;
/// When the fake received each command of the [`Log`].
type Stamps = Shared<Vec<Instant>>;

fn fake_source(dir: &Path, fault: Fault) -> (PathBuf, Log) {
    fake_source_steered(dir, fault, Steering::new())
}

/// [`fake_source`] that cancels or grants through `steering` for [`Fault::Cancel`] and
/// [`Fault::Grant`].
fn fake_source_steered(dir: &Path, fault: Fault, steering: Steering) -> (PathBuf, Log) {
    let (path, log, _) = fake_source_timed(dir, fault, steering);
    (path, log)
}

/// [`fake_source_steered`] that also says when each command came.
fn fake_source_timed(dir: &Path, fault: Fault, steering: Steering) -> (PathBuf, Log, Stamps) {
    let log: Log = Default::default();
    let seen = log.clone();
    let stamps: Stamps = Default::default();
    let stamped = stamps.clone();
    let mut params = json!({"max-bandwidth": 134217728, "downtime-limit": 300});
    if fault == Fault::Qemu10 {
        params["avail-switchover-bandwidth"] = json!(0);
    }
    let mut started = false;
    let mut pass = 0usize;
    let mut done = false;
    let mut switched = false;
    let mut cancelled = false;
    let mut events_on = false;
    let mut sets = 0;
    // Like QEMU, the first `completed` answer comes before total-time and downtime are set.
    let mut completed_answers = 0;
    let path = serve(dir, GREETING, move |cmd, id, args| {
        if let Ok(mut l) = seen.lock() {
            l.push((cmd.to_string(), args.clone()));
        }
        if let Ok(mut t) = stamped.lock() {
            t.push(Instant::now());
        }
        let mut out = Vec::new();
        match cmd {
            "query-migrate" if cancelled => {
                out.push(ok(id, json!({"status": "cancelled"})));
            }
            "query-status" if fault != Fault::FailedThenClosed => out.push(ok(
                id,
                json!({"running": !done || cancelled, "status": if done && !cancelled { "postmigrate" } else { "running" }}),
            )),
            "migrate_cancel" => {
                cancelled = started && !done;
                out.push(ok(id, json!({})));
            }
            "query-migrate-capabilities" => out.push(ok(
                id,
                json!([{"capability": "xbzrle", "state": false},
                       {"capability": "events", "state": events_on}]),
            )),
            "migrate-set-capabilities" => {
                if let Some(caps) = args["capabilities"].as_array() {
                    for c in caps {
                        if c["capability"] == "events" {
                            events_on = c["state"].as_bool().unwrap_or(false);
                        }
                    }
                }
                out.push(ok(id, json!({})));
            }
            "query-migrate" => {
                let at_fault = started && !done && !switched && pass == 1;
                match fault {
                    Fault::Close if at_fault => return None,
                    Fault::Silent if at_fault => return Some(out),
                    Fault::Cancel if at_fault => steering.cancel(),
                    Fault::FailedThenClosed if at_fault => {
                        out.push(ok(
                            id,
                            json!({"status": "failed", "error-desc": "Unable to write to socket"}),
                        ));
                        return Some(out);
                    }
                    _ => {}
                }
                let (_, tx, rem) = PASSES[pass.min(PASSES.len() - 1)];
                if switched && !done {
                    // The first answer after QEMU's own switch-over: paused, sending the rest.
                    done = true;
                    out.push(ok(
                        id,
                        json!({"status": "device",
                               "ram": {"transferred": tx + 1e6, "remaining": 1e6,
                                       "dirty-sync-count": pass + 1}}),
                    ));
                    return Some(out);
                }
                if done {
                    completed_answers += 1;
                }
                let (total, down) = if completed_answers == 1 {
                    (0, 0)
                } else {
                    (4200, 30)
                };
                let status = if done {
                    "completed"
                } else if started {
                    "active"
                } else {
                    "none"
                };
                out.push(ok(
                    id,
                    json!({"status": status, "total-time": total, "downtime": down,
                           "ram": {"transferred": if done { tx + 2.5e6 } else { tx },
                                   "remaining": if done { 0.0 } else { rem },
                                   "dirty-sync-count": if started { pass + 1 } else { 0 },
                                   "total": 100e6, "brand-new-counter": 1}}),
                ));
                if done {
                    out.push(event("MIGRATION", json!({"status": "completed"}), 1005.0));
                } else if at_fault && fault == Fault::Garbage {
                    out.push("<html>not qmp</html>".into());
                } else if at_fault && fault == Fault::QueuedPasses {
                    for _ in 0..2 {
                        pass += 1;
                        out.push(event(
                            "MIGRATION_PASS",
                            json!({"pass": pass + 1}),
                            PASSES[pass].0,
                        ));
                    }
                } else if started
                    && pass + 1 < PASSES.len()
                    && !(fault == Fault::Stall && pass >= 1)
                    && fault != Fault::NoPass
                {
                    pass += 1;
                    out.push(event(
                        "MIGRATION_PASS",
                        json!({"pass": pass + 1}),
                        PASSES[pass].0,
                    ));
                    if at_fault && fault == Fault::SelfSwitch {
                        switched = true;
                    }
                }
            }
            "query-migrate-parameters" => out.push(ok(id, params.clone())),
            "query-version" if fault == Fault::Qemu10 => out.push(ok(
                id,
                json!({"qemu": {"major": 10, "minor": 0, "micro": 2}, "package": ""}),
            )),
            "query-status" if fault == Fault::FailedThenClosed => return None,
            "migrate-set-parameters" => {
                sets += 1;
                if fault == Fault::Grant && sets == 2 {
                    steering.grant(Some(2e6));
                }
                if fault == Fault::RefuseSet && sets == 2 {
                    out.push(
                        json!({"error": {"class": "GenericError", "desc": "no"}, "id": id})
                            .to_string(),
                    );
                    return Some(out);
                }
                if let (Some(p), Some(a)) = (params.as_object_mut(), args.as_object()) {
                    for (k, v) in a {
                        p.insert(k.clone(), v.clone());
                    }
                }
                if started && args["downtime-limit"].as_u64().is_some_and(|d| d >= 1000) {
                    done = true;
                }
                out.push(ok(id, json!({})));
            }
            "migrate" => {
                if fault == Fault::RefuseMigrate {
                    out.push(
                        json!({"error": {"class": "GenericError", "desc": "bad uri"}, "id": id})
                            .to_string(),
                    );
                    return Some(out);
                }
                started = true;
                out.push(ok(id, json!({})));
                out.push(event("MIGRATION", json!({"status": "setup"}), 999.9));
                if fault != Fault::NoPass {
                    out.push(event("MIGRATION_PASS", json!({"pass": 1}), PASSES[0].0));
                }
            }
            _ => out.push(ok(id, json!({}))),
        }
        Some(out)
    });
    (path, log, stamps)
}

/// The `migrate-set-parameters` arguments the fake received.
fn sets_of(log: &Log) -> Vec<Value> {
    log.lock()
        .expect("log")
        .iter()
        .filter(|(c, _)| c == "migrate-set-parameters")
        .map(|(_, a)| a.clone())
        .collect()
}

/// The fake's own parameters, which every failure must put back.
fn original() -> Value {
    json!({"max-bandwidth": 134217728u64, "downtime-limit": 300})
}

/// Asserts the governor cleaned up: `migrate_cancel` (when `cancel`) and `query-migrate`
/// until it ended, then the saved capability and parameters, as the last commands it sent.
fn assert_cleaned_up(log: &Log, cancel: bool) {
    let mut log = log.lock().expect("log").clone();
    // Where the source VM runs is asked after the restore.
    while log.last().is_some_and(|(c, _)| c == "query-status") {
        log.pop();
    }
    let cmds: Vec<&str> = log.iter().map(|(c, _)| c.as_str()).collect();
    let last = log.last().expect("commands");
    assert_eq!(last.0, "migrate-set-parameters", "{cmds:?}");
    assert_eq!(last.1, original(), "the saved parameters are restored");
    let caps = &log[log.len() - 2];
    assert_eq!(caps.0, "migrate-set-capabilities", "{cmds:?}");
    assert_eq!(
        caps.1,
        json!({"capabilities": [{"capability": "events", "state": false}]}),
        "the saved capability is restored"
    );
    let before = &cmds[..cmds.len() - 2];
    if cancel {
        let at = before
            .iter()
            .rposition(|c| *c == "migrate_cancel")
            .unwrap_or_else(|| panic!("no migrate_cancel: {cmds:?}"));
        assert!(
            before[at + 1..].iter().all(|c| *c == "query-migrate") && at + 1 < before.len(),
            "restored only once QEMU said the migration ended: {cmds:?}"
        );
    } else {
        assert!(!cmds.contains(&"migrate_cancel"), "{cmds:?}");
    }
}

fn small_cfg() -> PolicyConfig {
    PolicyConfig {
        memory_bytes: 100e6,
        max_rounds: 4,
        stop_remaining: 1e6,
        min_bandwidth: 1e6,
        max_bandwidth: 1e9,
        initial_bandwidth: Some(50e6),
        ..PolicyConfig::default()
    }
}

fn gcfg() -> GovernorConfig {
    let mut g = GovernorConfig::new("tcp:127.0.0.1:1", 100e6, 1e6);
    g.sample = None;
    g.poll = Duration::from_millis(20);
    g.timeouts = Timeouts::none();
    g
}

#[tokio::test]
async fn governor_turns_passes_into_rounds_and_applies_every_decision() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, log) = fake_source(dir.path(), Fault::None);
    let mut src = QmpClient::connect(&path, NO_HANG).await.expect("connects");
    let policy = PolicyKind::DirtyFactor.build(small_cfg()).expect("valid");
    let run = tokio::time::timeout(
        NO_HANG,
        Governor::new(gcfg()).run(&mut src, None, Control::Policy(policy)),
    )
    .await
    .expect("no hang")
    .expect("completes");
    let r = &run.report;
    // Round k lasts from pass k to pass k+1, sends the difference of ram.transferred and
    // leaves ram.remaining dirty.
    assert_eq!(r.rounds.len(), 4, "N = 4 rounds, then stop");
    let expect = [
        (100e6, 2.0, 10e6),
        (10e6, 1.0, 4e6),
        (4e6, 0.5, 3e6),
        (3e6, 0.5, 2.5e6),
    ];
    for (round, (sent, dur, dirty)) in r.rounds.iter().zip(expect) {
        assert_eq!(round.bytes_sent, sent, "round {}", round.round);
        assert!(
            (round.duration_s - dur).abs() < 1e-6,
            "round {}",
            round.round
        );
        assert_eq!(round.dirty_bytes, dirty, "round {}", round.round);
    }
    assert_eq!(r.rounds[0].cap_bytes_per_s, 50e6);
    assert_eq!(r.summary.stop_reason, StopReason::RoundLimit);
    // What was sent to QEMU: the first cap with the tiny downtime limit, one cap per
    // continued round, then B_max with the large downtime limit.
    let sets = sets_of(&log);
    assert_eq!(
        sets[0],
        json!({"max-bandwidth": 50_000_000u64, "downtime-limit": 1})
    );
    for (i, round) in r.rounds.iter().enumerate() {
        let sent = &sets[i + 1];
        match round.decision.action {
            Action::Continue {
                next_cap_bytes_per_s,
            } => {
                assert_eq!(
                    sent["max-bandwidth"],
                    json!(next_cap_bytes_per_s.round() as u64)
                );
                assert!(sent.get("downtime-limit").is_none());
                assert_eq!(r.rounds[i + 1].cap_bytes_per_s, next_cap_bytes_per_s);
            }
            Action::StopAndCopy { .. } => {
                assert_eq!(sent["max-bandwidth"], json!(1_000_000_000u64));
                assert_eq!(sent["downtime-limit"], json!(60_000));
            }
        }
    }
    assert_eq!(sets.len(), 6);
    assert_eq!(
        sets[5],
        original(),
        "the source's settings are back after success"
    );
    assert_eq!(run.qemu.settings_restored, Some(true));
    // QEMU's own times, and the bytes after the last pass as stop-and-copy.
    assert_eq!(r.summary.downtime_s, 0.03);
    assert_eq!(r.summary.total_time_s, 4.2);
    assert_eq!(r.summary.total_bytes, 119.5e6);
    assert_eq!(r.summary.stop_copy_bytes, 2.5e6);
    assert_eq!(run.qemu.switchover, "policy");
    let reacting = run
        .qemu
        .passes
        .iter()
        .filter(|p| p.reaction_s.is_some())
        .count();
    assert_eq!(reacting, 4);
}

/// Runs the dirty-factor governor against `fake_source(fault)` with a short QMP timeout.
async fn governed(fault: Fault, max_rounds: u32) -> (Result<QemuReport, GovernorError>, Log) {
    let dir = tempfile::tempdir().expect("tempdir");
    governed_with(fault, max_rounds, Steering::new(), gcfg(), dir.path()).await
}

/// [`governed`] with a steering handle and settings of the caller's, in `dir`.
#[tokio::test]
async fn qemu_10_gets_the_stop_cap_as_switchover_bandwidth_and_its_own_value_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (out, log) = governed_with(Fault::Qemu10, 4, Steering::new(), gcfg(), dir.path()).await;
    let run = out.expect("completes");
    let f = run.qemu.features.as_ref().expect("probed");
    assert_eq!(f.version, "10.0.2");
    assert_eq!(f.dirty_rate_mode, DirtyMode::PageSampling, "TCG");
    assert!(f.avail_switchover_bandwidth);
    let sets = sets_of(&log);
    let stop = sets
        .iter()
        .find(|a| a.get("downtime-limit") == Some(&json!(60_000)))
        .expect("a stop-and-copy set");
    assert_eq!(stop["avail-switchover-bandwidth"], stop["max-bandwidth"]);
    assert!(
        sets[..sets.len() - 1]
            .iter()
            .filter(|a| a.get("avail-switchover-bandwidth").is_some())
            .count()
            == 1,
        "only the stop sets it: {sets:?}"
    );
    let mut back = original();
    back["avail-switchover-bandwidth"] = json!(0);
    assert_eq!(sets.last(), Some(&back), "the source's own value is back");
    assert_eq!(run.qemu.settings_restored, Some(true));
}

#[tokio::test]
async fn qemu_7_2_is_asked_as_before() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (out, log) = governed_with(Fault::None, 4, Steering::new(), gcfg(), dir.path()).await;
    let run = out.expect("completes");
    let f = run.qemu.features.as_ref().expect("probed");
    assert_eq!(f.dirty_rate_mode, DirtyMode::PageSampling);
    assert!(!f.avail_switchover_bandwidth);
    assert!(sets_of(&log)
        .iter()
        .all(|a| a.get("avail-switchover-bandwidth").is_none()));
}

async fn governed_with(
    fault: Fault,
    max_rounds: u32,
    steering: Steering,
    g: GovernorConfig,
    dir: &Path,
) -> (Result<QemuReport, GovernorError>, Log) {
    let (path, log) = fake_source_steered(dir, fault, steering.clone());
    let mut src = QmpClient::connect(&path, NO_HANG).await.expect("connects");
    src.set_timeout(Duration::from_millis(500));
    let cfg = PolicyConfig {
        max_rounds,
        ..small_cfg()
    };
    let policy = PolicyKind::DirtyFactor.build(cfg).expect("valid");
    let started = Instant::now();
    let out = tokio::time::timeout(
        NO_HANG,
        Governor::new(g)
            .with_steering(steering)
            .run(&mut src, None, Control::Policy(policy)),
    )
    .await
    .expect("no hang");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "failures and their cleanup are bounded: {:?}",
        started.elapsed()
    );
    (out, log)
}

#[tokio::test]
async fn garbage_mid_migration_cancels_and_restores() {
    let (out, log) = governed(Fault::Garbage, 4).await;
    let err = out.expect_err("garbage");
    assert!(
        matches!(err, GovernorError::Source(QmpError::Garbage { .. })),
        "{err:?}"
    );
    assert!(sets_of(&log).len() >= 2, "the caps had been changed");
    assert_cleaned_up(&log, true);
}

#[tokio::test]
async fn socket_closed_mid_migration_is_an_error_not_a_hang() {
    let (out, log) = governed(Fault::Close, 4).await;
    let err = out.expect_err("closed");
    assert!(
        matches!(err, GovernorError::Source(QmpError::Closed { .. })),
        "{err:?}"
    );
    assert!(err.to_string().contains("source"), "{err}");
    // Closed inside the watch loop: the migration had started and pass 2 had come.
    let cmds: Vec<String> = log
        .lock()
        .expect("log")
        .iter()
        .map(|c| c.0.clone())
        .collect();
    let migrate = cmds.iter().position(|c| c == "migrate").expect("migrate");
    assert!(
        cmds[migrate..]
            .iter()
            .filter(|c| *c == "query-migrate")
            .count()
            >= 2,
        "{cmds:?}"
    );
    assert_eq!(
        cmds.last().map(String::as_str),
        Some("query-migrate"),
        "{cmds:?}"
    );
}

#[tokio::test]
async fn a_silent_source_times_out_then_cancels_and_restores() {
    let (out, log) = governed(Fault::Silent, 4).await;
    let err = out.expect_err("silent");
    assert!(
        matches!(err, GovernorError::Source(QmpError::Timeout { .. })),
        "{err:?}"
    );
    assert_cleaned_up(&log, true);
}

#[tokio::test]
async fn a_refused_cap_cancels_and_restores() {
    let (out, log) = governed(Fault::RefuseSet, 4).await;
    let err = out.expect_err("refused");
    assert!(
        matches!(err, GovernorError::Source(QmpError::Command { .. })),
        "{err:?}"
    );
    assert_cleaned_up(&log, true);
}

#[tokio::test]
async fn a_refused_migrate_restores_without_cancelling() {
    let (out, log) = governed(Fault::RefuseMigrate, 4).await;
    let err = out.expect_err("refused");
    assert!(err.to_string().contains("source"), "{err}");
    assert_eq!(
        sets_of(&log)[0],
        json!({"max-bandwidth": 50_000_000u64, "downtime-limit": 1})
    );
    assert_cleaned_up(&log, false);
}

#[tokio::test]
async fn queued_passes_are_merged_into_the_round_their_counters_belong_to() {
    let (out, log) = governed(Fault::QueuedPasses, 3).await;
    let run = out.expect("completes");
    let r = &run.report;
    // Pass 3 was queued behind pass 4 when the governor read the counters (sync count 4):
    // round 2 runs from pass 2 to pass 4, with pass 4's counters.
    let got: Vec<(f64, f64, f64)> = r
        .rounds
        .iter()
        .map(|x| (x.bytes_sent, x.duration_s, x.dirty_bytes))
        .collect();
    assert_eq!(
        got,
        vec![(100e6, 2.0, 10e6), (14e6, 1.5, 3e6), (3e6, 0.5, 2.5e6)],
        "rounds follow the counters' passes"
    );
    let merged: Vec<_> = run
        .qemu
        .passes
        .iter()
        .filter(|p| p.note.is_some())
        .collect();
    assert_eq!(merged.len(), 1, "{:?}", run.qemu.passes);
    assert_eq!(merged[0].pass, 3);
    assert_eq!(merged[0].round, 0);
    assert!(merged[0]
        .note
        .as_deref()
        .is_some_and(|n| n.contains("pass 4") && n.contains("round 2")));
    let acting: Vec<u64> = run
        .qemu
        .passes
        .iter()
        .filter(|p| p.round > 0)
        .map(|p| p.pass)
        .collect();
    assert_eq!(acting, vec![2, 4, 5]);
    // One cap per decision, each applied once: first cap + 3 decisions.
    let sets = sets_of(&log);
    assert_eq!(sets.len(), 5, "{sets:?}");
    assert_eq!(sets[4], original(), "restored after success");
    for (round, sent) in r.rounds.iter().zip(&sets[1..4]) {
        let cap = round.decision.next_cap().unwrap_or(1e9);
        assert_eq!(sent["max-bandwidth"], json!(cap.round() as u64));
    }
    assert_eq!(run.qemu.switchover, "policy");
}

#[tokio::test]
async fn a_switch_over_by_qemu_is_not_governed() {
    let (out, log) = governed(Fault::SelfSwitch, 4).await;
    let run = out.expect("completes");
    // Round 1 (pass 1 to 2) was decided; at pass 3 QEMU was already in `device`.
    assert_eq!(run.report.rounds.len(), 1);
    assert_eq!(run.qemu.switchover, "qemu");
    let sets = sets_of(&log);
    assert_eq!(sets.len(), 3, "no cap after QEMU's switch-over: {sets:?}");
    assert_eq!(sets[2], original(), "restored after success");
    assert!(
        sets.iter()
            .all(|s| s.get("downtime-limit") != Some(&json!(60_000))),
        "{sets:?}"
    );
    let last = run.qemu.passes.last().expect("passes");
    assert_eq!(last.pass, 3);
    assert!(
        last.note.as_deref().is_some_and(|n| n.contains("Device")),
        "{last:?}"
    );
    assert!(last.cap_set_bytes_per_s.is_none());
}

#[tokio::test]
async fn a_source_that_cannot_say_whether_it_runs_is_reported_unknown() {
    let (out, log) = governed(Fault::FailedThenClosed, 4).await;
    let err = out.expect_err("failed");
    assert!(
        matches!(
            err,
            GovernorError::Failed {
                source_running: None,
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("unknown") && !msg.contains("NOT running"),
        "{msg}"
    );
    assert!(msg.contains("Unable to write to socket"), "{msg}");
    // QEMU reported the failure itself: the parameters are restored, nothing is cancelled.
    let cmds: Vec<String> = log
        .lock()
        .expect("log")
        .iter()
        .map(|c| c.0.clone())
        .collect();
    assert!(!cmds.iter().any(|c| c == "migrate_cancel"), "{cmds:?}");
    let sets = sets_of(&log);
    assert_eq!(sets.last(), Some(&original()), "{sets:?}");
}

#[tokio::test]
async fn an_error_without_id_fails_the_command_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = serve(dir.path(), GREETING, |cmd, id, _| {
        Some(if cmd == "qmp_capabilities" {
            vec![ok(id, json!({}))]
        } else {
            // What QEMU sends when it cannot parse a request: an error with no id.
            vec![
                json!({"error": {"class": "GenericError", "desc": "JSON parse error"}}).to_string(),
            ]
        })
    });
    let mut c = QmpClient::connect(&path, NO_HANG).await.expect("connects");
    let started = Instant::now();
    let err = c.execute("query-migrate", None).await.expect_err("refused");
    assert!(started.elapsed() < Duration::from_secs(2), "not a timeout");
    assert!(
        matches!(err, QmpError::Command { ref desc, .. } if desc == "JSON parse error"),
        "{err:?}"
    );
}

#[tokio::test]
async fn native_mode_only_watches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, log) = fake_source(dir.path(), Fault::None);
    let mut src = QmpClient::connect(&path, NO_HANG).await.expect("connects");
    // Without a policy nothing raises the downtime limit, so the fake never completes: once
    // its passes stop, the no-progress timeout must cancel, and the governor restores
    // nothing it did not change.
    let mut g = gcfg();
    g.timeouts = Timeouts {
        progress_s: Some(0.5),
        ..Timeouts::none()
    };
    let err = Governor::new(g)
        .run(&mut src, None, Control::Native)
        .await
        .expect_err("never completes");
    assert!(
        matches!(
            err,
            GovernorError::TimedOut {
                source_running: Some(true),
                ..
            }
        ),
        "{err:?}"
    );
    assert_cleaned_up(&log, true);
    let sets = sets_of(&log);
    assert!(
        sets.iter()
            .all(|s| s["max-bandwidth"] == json!(134217728) || s.get("max-bandwidth").is_none()),
        "native mode never changes the cap: {sets:?}"
    );
}

/// Regression (SIGTERM left QEMU migrating with nobody in control): a cancellation mid-pass
/// sends `migrate_cancel`, waits for QEMU to say `cancelled`, and puts every setting back.
#[tokio::test]
async fn a_cancel_mid_pass_cancels_waits_and_restores() {
    let (out, log) = governed(Fault::Cancel, 4).await;
    let err = out.expect_err("cancelled");
    assert!(
        matches!(
            err,
            GovernorError::Cancelled {
                source_running: Some(true)
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("still running"), "{err}");
    assert_cleaned_up(&log, true);
    let sets = sets_of(&log);
    assert!(
        sets.iter().all(|s| s["downtime-limit"] != json!(60_000)),
        "no switch-over was forced: {sets:?}"
    );
}

#[tokio::test]
async fn a_cancel_before_the_start_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let steering = Steering::new();
    steering.cancel();
    let (out, log) = governed_with(Fault::None, 4, steering, gcfg(), dir.path()).await;
    assert!(
        matches!(out, Err(GovernorError::Cancelled { .. })),
        "{out:?}"
    );
    let cmds: Vec<String> = log
        .lock()
        .expect("log")
        .iter()
        .map(|c| c.0.clone())
        .collect();
    for c in [
        "migrate",
        "migrate-set-parameters",
        "migrate-set-capabilities",
    ] {
        assert!(!cmds.iter().any(|x| x == c), "{c} sent: {cmds:?}");
    }
}

/// A grant below the policy's cap reaches QEMU before the next pass, and bounds every later
/// cap, the stop-and-copy's included.
#[tokio::test]
async fn a_lowered_grant_is_applied_at_once() {
    let (out, log) = governed(Fault::Grant, 4).await;
    let run = out.expect("completes");
    let sets = sets_of(&log);
    assert!(
        sets[1]["max-bandwidth"].as_u64().expect("cap") > 2_000_000,
        "{sets:?}"
    );
    assert_eq!(sets[2], json!({"max-bandwidth": 2_000_000u64}), "{sets:?}");
    let last = sets.len() - 1;
    assert_eq!(sets[last], original(), "{sets:?}");
    for s in &sets[2..last] {
        assert!(
            s["max-bandwidth"].as_u64().expect("cap") <= 2_000_000,
            "{sets:?}"
        );
    }
    // Round 2 ran a few ms under the policy's cap before the grant came, then under the
    // grant: its cap is the time-weighted mean, its wish the policy's.
    let r2 = &run.report.rounds[1];
    assert!(r2.wish_bytes_per_s > 2e6, "{r2:?}");
    assert!(
        r2.cap_bytes_per_s > 2e6 && r2.cap_bytes_per_s < 2e6 + 0.05 * r2.wish_bytes_per_s,
        "{r2:?}"
    );
    for r in &run.report.rounds[2..] {
        assert!(r.cap_bytes_per_s <= 2e6, "round {}", r.round);
        assert!(r.wish_bytes_per_s >= r.cap_bytes_per_s, "round {}", r.round);
    }
    let steer = &run.qemu.steers;
    assert_eq!(steer.len(), 1, "{steer:?}");
    assert_eq!(steer[0].granted_bytes_per_s, Some(2e6));
    assert_eq!(steer[0].cap_set_bytes_per_s, 2e6);
    assert_eq!(steer[0].cap_read_back_bytes_per_s, Some(2e6));
}

/// The state file holds the originals while the settings are changed; it is removed once
/// they are back, and kept when they could not be put back.
#[tokio::test]
async fn the_state_file_is_removed_after_a_restore_and_kept_otherwise() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("state.json");
    let mut g = gcfg();
    g.state_file = Some(file.clone());
    let (out, _) = governed_with(Fault::None, 4, Steering::new(), g.clone(), dir.path()).await;
    out.expect("completes");
    assert!(!file.exists(), "removed after the restore");

    let dir2 = tempfile::tempdir().expect("tempdir");
    let (out, _) = governed_with(Fault::Close, 4, Steering::new(), g, dir2.path()).await;
    out.expect_err("closed");
    let (saved, _) = livemig_qemu::saved::SavedSettings::load(&file).expect("kept");
    assert_eq!(saved.max_bandwidth, Some(134_217_728));
    assert_eq!(saved.downtime_limit, Some(300));
    assert_eq!(saved.capabilities.get("events"), Some(&false));
}

/// The policy of the steering and timeout tests: `fixed` at 50 MB/s, which never stops by
/// itself within the fake's passes.
fn fixed_cfg() -> PolicyConfig {
    PolicyConfig {
        max_rounds: 100,
        fixed_bandwidth: Some(50e6),
        ..small_cfg()
    }
}

/// Runs `fixed` against `fake_source_timed(fault)` with `g`; `act` runs beside the migration
/// with the steering handle and the fake's log. Returns the result, the log, the stamps and
/// every event the governor emitted.
async fn steered<F, Fut>(
    fault: Fault,
    g: GovernorConfig,
    act: F,
) -> (Result<QemuReport, GovernorError>, Log, Stamps, Vec<Event>)
where
    F: FnOnce(Steering, Log) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let dir = tempfile::tempdir().expect("tempdir");
    let steering = Steering::new();
    let (path, log, stamps) = fake_source_timed(dir.path(), fault, Steering::new());
    let mut src = QmpClient::connect(&path, NO_HANG).await.expect("connects");
    src.set_timeout(Duration::from_millis(500));
    let policy = PolicyKind::Fixed.build(fixed_cfg()).expect("valid");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let governor = Governor::new(g)
        .with_steering(steering.clone())
        .with_events(tx);
    let migration = async {
        let governor = governor;
        governor.run(&mut src, None, Control::Policy(policy)).await
    };
    let (out, ()) = tokio::time::timeout(NO_HANG, async {
        tokio::join!(migration, act(steering, log.clone()))
    })
    .await
    .expect("no hang");
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    (out, log, stamps, events)
}

/// Waits until the governor set the cap decided after round 1: round 2 is under way (and,
/// with [`Fault::Stall`], never ends).
async fn in_round_two(log: &Log) {
    while sets_of(log).len() < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// A grant lowered in the middle of a pass reaches QEMU's `max-bandwidth` within 100 ms (not
/// at the next pass); raised again, the cap follows it but never above the grant nor the
/// policy's wish.
#[tokio::test]
async fn a_grant_changed_mid_pass_reaches_qemu_within_100_ms_and_never_exceeds_grant_or_wish() {
    let grants: Shared<Vec<(Instant, Option<f64>)>> = Default::default();
    let noted = grants.clone();
    // Polls far apart: only the steering's own tick can meet 100 ms.
    let mut g = gcfg();
    g.poll = Duration::from_millis(500);
    let (out, log, stamps, events) = steered(Fault::Stall, g, |steering, log| async move {
        in_round_two(&log).await;
        for g in [Some(10e6), Some(30e6), Some(500e6), Some(20e6), None] {
            steering.grant(g);
            noted.lock().expect("grants").push((Instant::now(), g));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        steering.cancel();
    })
    .await;
    assert!(
        matches!(out, Err(GovernorError::Cancelled { .. })),
        "{out:?}"
    );
    let log = log.lock().expect("log").clone();
    let stamps = stamps.lock().expect("stamps").clone();
    let grants = grants.lock().expect("grants").clone();
    let wish = 50e6;
    // Every cap the governor set after the first grant, with when it came.
    let sets: Vec<(Instant, f64)> = log
        .iter()
        .zip(&stamps)
        .filter(|((c, a), t)| {
            c == "migrate-set-parameters" && **t > grants[0].0 && a.get("downtime-limit").is_none()
        })
        .filter_map(|((_, a), t)| a["max-bandwidth"].as_f64().map(|b| (*t, b)))
        .collect();
    // 10 MB/s, 30 MB/s, the wish for a grant of 500 MB/s, 20 MB/s, the wish when lifted.
    let expect = [10e6, 30e6, wish, 20e6, wish];
    assert_eq!(
        sets.iter().map(|s| s.1).collect::<Vec<_>>(),
        expect,
        "{sets:?}"
    );
    for ((at, cap), (granted_at, grant)) in sets.iter().zip(&grants) {
        let latency = at.duration_since(*granted_at);
        assert!(
            latency <= Duration::from_millis(100),
            "grant {grant:?} reached QEMU after {latency:?}"
        );
        assert!(
            *cap <= wish && grant.is_none_or(|g| *cap <= g),
            "{cap} {grant:?}"
        );
    }
    let granted: Vec<f64> = events
        .iter()
        .filter_map(|e| match e {
            Event::CapGranted {
                cap_bytes_per_s, ..
            } => Some(*cap_bytes_per_s),
            _ => None,
        })
        .collect();
    assert_eq!(granted, expect, "one CapGranted per change");
    assert!(
        matches!(events.last(), Some(Event::Cancelled { .. })),
        "{events:?}"
    );
}

/// A timeout whose action is `abort` cancels the migration: `TimedOut`, the source running,
/// its settings back; no switch-over was forced.
#[tokio::test]
async fn an_abort_timeout_cancels_with_timed_out() {
    let mut g = gcfg();
    g.timeouts = Timeouts {
        completion_per_gib_s: Some(2.5),
        progress_s: None,
        action: TimeoutAction::Abort,
    };
    let (out, log, _, events) = steered(Fault::Stall, g, |_, _| async {}).await;
    let err = out.expect_err("timed out");
    match &err {
        GovernorError::TimedOut {
            overdue,
            source_running: Some(true),
        } => {
            assert_eq!(overdue.kind, TimeoutKind::Completion);
            assert_eq!(overdue.limit_s, 2.5, "100 MB counts as one GiB");
        }
        other => panic!("expected TimedOut, got {other:?}"),
    }
    assert!(err.to_string().contains("still running"), "{err}");
    assert_cleaned_up(&log, true);
    assert!(
        sets_of(&log)
            .iter()
            .all(|s| s["downtime-limit"] != json!(60_000)),
        "nothing forced"
    );
    assert!(events.iter().any(
        |e| matches!(e, Event::TimedOut { overdue } if overdue.action == TimeoutAction::Abort)
    ));
}

/// Without any `MIGRATION_PASS` (QEMU stuck in setup, or the event lost) the completion
/// timeout still runs, from `migrate`, and aborts: the old flat deadline's job is kept.
#[tokio::test]
async fn the_completion_timeout_runs_before_the_first_pass() {
    let mut g = gcfg();
    g.timeouts = Timeouts {
        completion_per_gib_s: Some(1.5),
        progress_s: Some(0.5),
        action: TimeoutAction::Force,
    };
    let (out, log, _, events) = steered(Fault::NoPass, g, |_, _| async {}).await;
    let err = out.expect_err("timed out");
    match &err {
        GovernorError::TimedOut {
            overdue,
            source_running: Some(true),
        } => {
            assert_eq!(overdue.kind, TimeoutKind::Completion);
            assert_eq!(
                overdue.action,
                TimeoutAction::Abort,
                "nothing can be forced before a round"
            );
        }
        other => panic!("expected TimedOut, got {other:?}"),
    }
    assert_cleaned_up(&log, true);
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::StopAndCopy { .. })),
        "no stop-and-copy announced"
    );
}

/// A timeout whose action is `force` raises the downtime limit at once: QEMU stops and copies
/// what remains, the migration completes, and the report says why.
#[tokio::test]
async fn a_force_timeout_raises_the_downtime_limit_and_completes() {
    let mut g = gcfg();
    g.timeouts = Timeouts {
        completion_per_gib_s: None,
        progress_s: Some(0.3),
        action: TimeoutAction::Force,
    };
    let (out, log, _, events) = steered(Fault::Stall, g, |_, _| async {}).await;
    let run = out.expect("completes");
    let sets = sets_of(&log);
    let forced = sets
        .iter()
        .position(|s| s["downtime-limit"] == json!(60_000))
        .expect("the downtime limit was raised");
    assert_eq!(forced, 2, "right after round 1's cap: {sets:?}");
    assert_eq!(run.qemu.switchover, "forced");
    assert!(
        run.qemu
            .forced
            .as_deref()
            .is_some_and(|w| w.contains("no progress")),
        "{:?}",
        run.qemu.forced
    );
    assert_eq!(run.report.rounds.len(), 1, "round 2 was cut, not measured");
    // Everything after round 1 (the fake sends 2.5 MB once the limit is raised).
    assert_eq!(run.report.summary.stop_copy_bytes, 2.5e6);
    assert_eq!(
        run.report.summary.stop_reason,
        livemig_policy::StopReason::TimedOut,
        "the summary says the timeout ended pre-copy"
    );
    let at = |f: fn(&Event) -> bool| events.iter().position(f);
    let timed_out = at(|e| matches!(e, Event::TimedOut { .. })).expect("TimedOut");
    let stop = at(|e| matches!(e, Event::StopAndCopy { .. })).expect("StopAndCopy");
    let done = at(|e| matches!(e, Event::HandedOver { .. })).expect("HandedOver");
    assert!(timed_out < stop && stop < done, "{events:?}");
}

/// The rounds a governed migration measured, replayed through a fresh Pilot with the same
/// policy, give the report's records exactly: the governor adds nothing to the decisions.
#[tokio::test]
async fn a_replay_of_the_measured_rounds_reproduces_the_records() {
    let (out, _) = governed(Fault::QueuedPasses, 3).await;
    let run = out.expect("completes");
    let cfg = PolicyConfig {
        max_rounds: 3,
        ..small_cfg()
    };
    let replayed = common::replay(PolicyKind::DirtyFactor, &cfg, None, &run.report);
    assert_eq!(replayed, run.report.rounds);
    assert!(run.report.rounds.len() >= 3);
}

/// The rescue's throttle through auto-converge: turned on before `migrate` with QEMU's own
/// steps held off (a trigger of 100 %, a ceiling of 1 %), then held at exactly the policy's
/// share (initial = ceiling, an increment that reaches it at once, a trigger of 1 %), and
/// down to QEMU's least (1 %) at 0.
#[tokio::test]
async fn the_rescue_holds_auto_converge_at_the_policys_share() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log: Log = Default::default();
    let seen = log.clone();
    let path = serve(dir.path(), GREETING, move |cmd, id, args| {
        if let Ok(mut l) = seen.lock() {
            l.push((cmd.to_string(), args.clone()));
        }
        Some(vec![ok(id, json!({}))])
    });
    let mut q = QmpClient::connect(&path, NO_HANG).await.expect("connects");
    livemig_qemu::governor::enable_throttle(&mut q)
        .await
        .expect("on");
    livemig_qemu::governor::set_throttle(&mut q, 87)
        .await
        .expect("87 %");
    livemig_qemu::governor::set_throttle(&mut q, 0)
        .await
        .expect("off");
    let log = log.lock().expect("log").clone();
    let cmds: Vec<(&str, &Value)> = log
        .iter()
        .filter(|(c, _)| c != "qmp_capabilities")
        .map(|(c, a)| (c.as_str(), a))
        .collect();
    let held_off = json!({"throttle-trigger-threshold": 100, "cpu-throttle-initial": 1,
                          "cpu-throttle-increment": 99, "max-cpu-throttle": 1});
    assert_eq!(
        cmds,
        vec![
            (
                "migrate-set-capabilities",
                &json!({"capabilities": [{"capability": "auto-converge", "state": true}]})
            ),
            ("migrate-set-parameters", &held_off),
            (
                "migrate-set-parameters",
                &json!({"throttle-trigger-threshold": 1, "cpu-throttle-initial": 87,
                        "cpu-throttle-increment": 99, "max-cpu-throttle": 87})
            ),
            (
                "migrate-set-parameters",
                &json!({"throttle-trigger-threshold": 1, "cpu-throttle-initial": 1,
                        "cpu-throttle-increment": 99, "max-cpu-throttle": 1})
            ),
        ]
    );
}
