//! `livemig qemu` end to end against real QEMU: a dirty trace recorded from a loaded guest
//! replays in `livemig simulate`, and `livemig qemu migrate --json` prints the shared report.
//! Never skipped: without QEMU the test fails and says why (scripts/test.sh installs it).

use std::path::PathBuf;
use std::time::Duration;

use assert_cmd::Command;
use livemig_qemu::vm::{free_port, GuestImage, Vm, VmSpec, GUEST_MEMORY_BYTES};

fn livemig() -> Command {
    Command::cargo_bin("livemig").expect("binary built")
}

#[test]
fn migrate_with_a_missing_socket_fails_with_one_clear_line() {
    let out = livemig()
        .args([
            "qemu",
            "migrate",
            "--qmp",
            "/nonexistent/src.qmp",
            "--uri",
            "tcp:127.0.0.1:1",
        ])
        .timeout(Duration::from_secs(30))
        .assert()
        .failure()
        .get_output()
        .stderr
        .clone();
    let err = String::from_utf8_lossy(&out);
    assert!(err.starts_with("livemig: error: "), "{err}");
    assert!(err.contains("/nonexistent/src.qmp"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_replays_in_the_simulator_and_migrate_prints_the_shared_json() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let qemu = livemig_qemu::vm::qemu_binary();
    let qemu_ok = std::process::Command::new(&qemu)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        qemu_ok,
        "{qemu} is not installed (scripts/test.sh installs qemu-system-x86; $LIVEMIG_QEMU names another)"
    );
    let img = GuestImage::build(&repo).unwrap_or_else(|e| panic!("test guest: {e}"));
    let dir = tempfile::tempdir().expect("tempdir");
    let uri = format!("tcp:127.0.0.1:{}", free_port().expect("port"));
    let spec = VmSpec::new("src", &img, "uniform:rate=4MiB/s,buffer=48MiB", dir.path());
    let boot = Duration::from_secs(60);
    let src = Vm::spawn(spec.clone(), boot).await.expect("source");
    let dst = Vm::spawn(spec.destination("dst", &uri), boot)
        .await
        .expect("destination");
    src.wait_heartbeat(10, boot).await.expect("guest beats");

    // A real guest's dirty-rate trace, in the simulator's format.
    let trace = livemig()
        .args(["qemu", "dirty-trace", "--qmp"])
        .arg(src.spec.qmp_path())
        .args(["--period", "1s", "--duration", "3s"])
        .timeout(Duration::from_secs(60))
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8(trace).expect("utf-8");
    let series = livemig_workload::trace::parse("trace", &text).expect("a valid trace");
    assert!(series.as_steps().len() >= 2, "{text}");
    assert!(
        series.as_steps().iter().any(|&(_, r)| r > 0.0),
        "a loaded guest dirties memory: {text}"
    );
    let trace_path = dir.path().join("trace.csv");
    std::fs::write(&trace_path, &text).expect("write trace");
    let sim = livemig()
        .args([
            "simulate",
            "--memory",
            "256MiB",
            "--stop-remaining",
            "4MiB",
            "--json",
        ])
        .arg("--workload")
        .arg(format!("trace:file={}", trace_path.display()))
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let sim: serde_json::Value = serde_json::from_slice(&sim).expect("json");
    assert!(sim["summary"]["rounds"].as_u64().expect("rounds") >= 1);

    // The governed migration through the CLI.
    let out = livemig()
        .args(["qemu", "migrate", "--qmp"])
        .arg(src.spec.qmp_path())
        .arg("--dest-qmp")
        .arg(dst.spec.qmp_path())
        .args(["--uri", &uri, "--policy", "dirty-factor", "--json"])
        .args(["--rounds", "5", "--stop-remaining", "2MiB"])
        .args(["--min-bandwidth", "4MB/s", "--initial-bandwidth", "40MB/s"])
        .args(["--max-bandwidth", "200MB/s"])
        .timeout(Duration::from_secs(300))
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).expect("json on stdout");
    assert_eq!(v["policy"], "dirty-factor");
    assert_eq!(v["executor"], "qemu");
    assert_eq!(
        v["outcome"], "migrated",
        "the result says where the guest is"
    );
    assert_eq!(v["handover"]["guest_runs_on"], "destination");
    assert_eq!(v["handover"]["destination_running"], true);
    assert_eq!(v["memory_bytes"], GUEST_MEMORY_BYTES, "M from QEMU");
    assert!(v["threshold"].as_f64().expect("T") > 0.0);
    let r0 = &v["rounds"][0];
    for key in [
        "round",
        "cap_bytes_per_s",
        "bytes_sent",
        "duration_s",
        "effective_bytes_per_s",
        "dirty_bytes",
        "dirty_rate_bytes_per_s",
        "factor",
        "avg_factor",
        "wish_bytes_per_s",
        "decision",
    ] {
        assert!(r0.get(key).is_some(), "round key {key}");
    }
    assert_eq!(r0["cap_bytes_per_s"], 40e6);
    let s = &v["summary"];
    for key in [
        "converged",
        "stop_reason",
        "rounds",
        "total_time_s",
        "downtime_s",
        "total_bytes",
        "peak_bytes_per_s",
        "mean_bytes_per_s",
    ] {
        assert!(s.get(key).is_some(), "summary key {key}");
    }
    assert!(s["downtime_s"].as_f64().expect("downtime") > 0.0);
    assert_eq!(v["qemu"]["destination_running"], true);
    // The policy chose the stop, or QEMU switched over by itself when a round left less than
    // its 1 ms downtime limit of sending (timing on a loaded machine); then the pass says so.
    match v["qemu"]["switchover"].as_str() {
        Some("policy") => {}
        Some("qemu") => {
            let passes = v["qemu"]["passes"].as_array().expect("passes");
            let note = passes.last().and_then(|p| p["note"].as_str()).unwrap_or("");
            assert!(note.contains("the policy was not asked"), "{}", v["qemu"]);
        }
        other => panic!("unexpected switchover {other:?}"),
    }
    let last = src.last_heartbeat().expect("beat");
    dst.wait_heartbeat(last + 5, Duration::from_secs(30))
        .await
        .expect("the guest runs on the destination");
}
