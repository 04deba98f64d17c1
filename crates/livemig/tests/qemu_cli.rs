//! `livemig qemu` end to end against real QEMU: a dirty trace recorded from a loaded guest
//! replays in `livemig simulate`, `livemig qemu migrate --json` prints the shared report, and
//! a sweeping guest's working-set trace flattens at its buffer.
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

/// The test guest's image, after checking that QEMU is there (a failure says why).
fn guest_image() -> GuestImage {
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
    GuestImage::build(&repo).unwrap_or_else(|e| panic!("test guest: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_replays_in_the_simulator_and_migrate_prints_the_shared_json() {
    let img = guest_image();
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

/// A guest sweeping 160 MiB at 64 MiB/s dirties about 64 MiB in 1 s but not 256 MiB in 4 s: its
/// working-set trace (1, 2 and 4 s periods) flattens at the buffer, which a dirty rate alone
/// (64 MiB/s, replayed as uniform or scan over the guest) cannot say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweeping_guests_working_set_flattens_at_its_buffer() {
    const MIB: f64 = 1024.0 * 1024.0;
    let img = guest_image();
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = VmSpec::new("ws", &img, "scan:rate=64MiB/s,buffer=160MiB", dir.path());
    let boot = Duration::from_secs(60);
    let vm = Vm::spawn(spec, boot).await.expect("guest");
    vm.wait_heartbeat(3, boot).await.expect("guest beats");
    let trace = livemig()
        .args(["qemu", "dirty-trace", "--qmp"])
        .arg(vm.spec.qmp_path())
        .args(["--periods", "1s,2s,4s", "--duration", "1s"])
        .timeout(Duration::from_secs(60))
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8(trace).expect("utf-8");
    let t = livemig_workload::trace::parse_trace("trace", &text).expect("a valid trace");
    assert_eq!(t.distinct_periods(), 3, "{text}");
    let curve = t.working_set(1.0).expect("periods").expect("a curve");
    let (w1, w4) = (curve.at(1.0) / MIB, curve.at(4.0) / MIB);
    // Whole MiB/s and sampled pages: 4 MiB of resolution at 4 s, a few % of sampling noise.
    assert!(
        (135.0..=185.0).contains(&w4),
        "W(4 s) = {w4:.0} MiB, not near the 160 MiB buffer: {text}"
    );
    // At 40 MiB/s or more the sweep covers the buffer within 4 s; far slower is a broken load.
    assert!(
        w1 >= 24.0,
        "W(1 s) = {w1:.0} MiB: the guest hardly dirties: {text}"
    );
    // The simulator replays the curve: the same trace file as a workload.
    let path = dir.path().join("ws.csv");
    std::fs::write(&path, &text).expect("write trace");
    let w = livemig_workload::Workload::parse_in(&format!("trace:file={}", path.display()), None)
        .expect("replays");
    assert_eq!(w.curve().map(|c| c.points().len()), Some(3));
}
