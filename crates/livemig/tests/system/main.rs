//! The system end to end on the namespace testbed (`docs/system.md`, `docs/testbed.md`): the
//! RMS, one agent per host, the operator CLI; real memory over real TCP between namespaces.
//! Needs root, iproute2 and curl; fails, never skips, without them.

mod bed;
mod budget;
mod faults;
mod qemu;

use std::time::Duration;

use bed::{RmsOpts, System, MIB};
use serde_json::Value;

/// The writes counter of `vm` on host `i`'s agent (the guest's self-check: it grows while the
/// guest runs there).
fn writes(sys: &System, i: usize, vm: &str) -> Option<u64> {
    sys.agent_get(i, &format!("/api/v1/vms/{vm}"))
        .and_then(|v| v["writes"].as_u64())
}

/// The guest runs on host `i` and nowhere else, and the RMS says so.
fn runs_only_on(sys: &System, i: usize, vm: &str) {
    assert_eq!(sys.rms_host_of(vm), System::host_name(i), "{}", sys.logs());
    for j in 1..=sys.hosts {
        let here = sys.agent_vms(j).iter().any(|v| v == vm);
        assert_eq!(here, j == i, "host h{j} runs {vm}: {here}\n{}", sys.logs());
    }
    let before = writes(sys, i, vm).expect("the VM answers");
    std::thread::sleep(Duration::from_millis(600));
    let after = writes(sys, i, vm).expect("the VM answers");
    assert!(
        after > before,
        "the guest on h{i} is not running ({before} -> {after})"
    );
}

fn create(sys: &System, vm: &str, memory: &str, workload: &str, host: usize) {
    let v = sys.cli_json(&[
        "vm",
        "create",
        vm,
        "--memory",
        memory,
        "--workload",
        workload,
        "--host",
        &System::host_name(host),
    ]);
    assert_eq!(v["host"], System::host_name(host), "{v}");
}

fn submit(sys: &System, vm: &str, to: Option<usize>) -> u64 {
    let mut args = vec!["vm", "migrate", vm];
    let name;
    if let Some(t) = to {
        name = System::host_name(t);
        args.extend(["--to", name.as_str()]);
    }
    let v = sys.cli_json(&args);
    v["id"].as_u64().unwrap_or_else(|| panic!("an id: {v}"))
}

#[test]
fn a_vm_moves_through_the_rms_and_everyone_agrees_where_it_runs() {
    let mut sys = System::up(3, "1gbit", RmsOpts::default());
    for i in 1..=3 {
        sys.start_agent(i, "512MiB");
    }
    sys.wait_alive(3);
    create(&sys, "vm1", "64MiB", "uniform:rate=8MiB/s", 1);
    runs_only_on(&sys, 1, "vm1");
    let o = sys.cli(&["vm", "migrate", "vm1", "--to", "h2", "--watch"]);
    assert!(o.status.success(), "{}\n{}", bed::text(&o), sys.logs());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("completed"), "{out}");
    let id = sys.cli_json(&["migration", "list"])[0]["id"]
        .as_u64()
        .expect("an id");
    let m = sys.cli_json(&["migration", "show", &id.to_string()]);
    assert_eq!(m["state"], "completed", "{m}");
    assert_eq!(m["source"], "h1");
    assert_eq!(m["target"], "h2");
    let rounds = m["rounds"].as_array().map_or(0, Vec::len);
    assert!(rounds >= 1, "the RMS holds the rounds: {m}");
    assert!(
        m["report"]["summary"]["downtime_s"].as_f64().is_some(),
        "{m}"
    );
    runs_only_on(&sys, 2, "vm1");
    // The host table agrees.
    let hosts = sys.cli_json(&["host", "list"]);
    let on_h2 = hosts
        .as_array()
        .and_then(|a| a.iter().find(|h| h["name"] == "h2"))
        .map(|h| h["vms"].clone());
    assert_eq!(on_h2, Some(serde_json::json!(["vm1"])), "{hosts}");
    // The source's memory is free again, the destination's holds the VM.
    let h1 = sys.agent_get(1, "/api/v1/info").expect("h1 info");
    assert_eq!(h1["memory_free_bytes"].as_u64(), Some(512 * MIB), "{h1}");
    let h2 = sys.agent_get(2, "/api/v1/info").expect("h2 info");
    assert_eq!(h2["memory_free_bytes"].as_u64(), Some(448 * MIB), "{h2}");
}

#[test]
fn with_a_ca_the_apis_are_https_and_a_vm_migrates_over_mutual_tls() {
    let opts = RmsOpts {
        ca_dir: true,
        ..RmsOpts::default()
    };
    let mut sys = System::up(2, "1gbit", opts);
    sys.start_agent(1, "256MiB");
    sys.start_agent(2, "256MiB");
    sys.wait_alive(2);
    create(&sys, "vm1", "32MiB", "uniform:rate=4MiB/s", 1);
    let o = sys.cli(&["vm", "migrate", "vm1", "--to", "h2", "--watch"]);
    assert!(o.status.success(), "{}\n{}", bed::text(&o), sys.logs());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("completed"), "{out}");
    runs_only_on(&sys, 2, "vm1");
    // Both ends say the data stream ran over TLS.
    for i in [1, 2] {
        let r = sys.agent_get(i, "/api/v1/report").expect("a report");
        let tls: Vec<bool> = r["migrations"]
            .as_object()
            .map(|m| m.values().map(|v| v["tls"] == true).collect())
            .unwrap_or_default();
        assert_eq!(tls, vec![true], "h{i}: {r}");
    }
    // Nothing answers in clear: not the RMS, not the agents (their APIs present the
    // certificates the RMS issued, which `agent_get` checked against the CA above).
    for url in [
        format!("http://{}/healthz", bed::RMS_ADDR),
        format!("http://{}:{}/healthz", bed::host_ip(1), bed::AGENT_PORT),
    ] {
        let o = System::exec(&sys.switch_ns(), "curl")
            .args(["-sf", "-m", "3", &url])
            .output()
            .expect("curl runs");
        assert!(!o.status.success(), "{url} answered in clear");
    }
}

#[test]
fn a_full_host_refuses_and_the_next_one_gets_the_vm() {
    // Heartbeats every 30 s: the RMS's picture of free memory is the registration's, so it
    // asks h2 (the most free memory on paper) first.
    let opts = RmsOpts {
        host_timeout: "60s",
        heartbeat: "30s",
        ..RmsOpts::default()
    };
    let mut sys = System::up(3, "1gbit", opts);
    sys.start_agent(1, "256MiB");
    sys.start_agent(2, "320MiB");
    sys.start_agent(3, "256MiB");
    sys.wait_alive(3);
    create(&sys, "vm1", "64MiB", "uniform:rate=4MiB/s", 1);
    // Behind the RMS's back, h2's memory is taken: a reservation of 300 MiB on its agent.
    let url = format!(
        "http://{}:{}/api/v1/capacity",
        bed::host_ip(2),
        bed::AGENT_PORT
    );
    let o = System::exec(&sys.switch_ns(), "curl")
        .args([
            "-sf",
            "-m",
            "3",
            "-H",
            &format!("Authorization: Bearer {}", bed::TOKEN),
        ])
        .args(["-H", "content-type: application/json", "-d"])
        .arg(format!("{{\"memory_bytes\": {}}}", 300 * MIB))
        .arg(&url)
        .output()
        .expect("curl");
    assert!(o.status.success(), "{}", bed::text(&o));
    let id = submit(&sys, "vm1", None);
    let m = sys.wait_end(id, Duration::from_secs(60));
    assert_eq!(m["state"], "completed", "{m}\n{}", sys.logs());
    let attempts = m["attempts"].as_array().cloned().unwrap_or_default();
    assert_eq!(attempts.len(), 2, "{m}");
    assert_eq!(attempts[0]["host"], "h2");
    assert_eq!(attempts[0]["answer"], "refused");
    let reason = attempts[0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("memory"), "the refusal says why: {reason}");
    assert_eq!(attempts[1]["host"], "h3");
    assert_eq!(attempts[1]["answer"], "accepted");
    runs_only_on(&sys, 3, "vm1");
}

#[test]
fn a_silent_agent_is_lost_within_its_timeout_and_gets_no_new_vms() {
    let opts = RmsOpts {
        host_timeout: "2s",
        heartbeat: "500ms",
        ..RmsOpts::default()
    };
    let mut sys = System::up(2, "1gbit", opts);
    sys.start_agent(1, "256MiB");
    sys.start_agent(2, "1GiB");
    sys.wait_alive(2);
    // h2 stops heartbeating (its process is frozen, not gone).
    let pid = sys.agents[1].as_ref().map(|c| c.id()).expect("h2 runs");
    let stop = std::process::Command::new("kill")
        .args(["-STOP", &pid.to_string()])
        .status()
        .expect("kill -STOP");
    assert!(stop.success());
    let frozen = std::time::Instant::now();
    let state_of = |v: &Value, n: &str| {
        v.as_array()
            .and_then(|a| a.iter().find(|h| h["name"] == n))
            .map(|h| h["state"].clone())
    };
    sys.wait_for(Duration::from_secs(10), "h2 is lost", || {
        state_of(&sys.cli_json(&["host", "list"]), "h2") == Some("lost".into())
    });
    let took = frozen.elapsed();
    // Its timeout (2 s), a tick (250 ms), and the CLI's own polling on a busy machine.
    assert!(
        took < Duration::from_millis(2000 + 3000),
        "lost after {took:?}, its timeout is 2 s"
    );
    // h2 has the most room but is lost: a new VM goes to h1; asking for h2 is refused.
    let v = sys.cli_json(&[
        "vm",
        "create",
        "vm1",
        "--memory",
        "16MiB",
        "--workload",
        "idle",
    ]);
    assert_eq!(v["host"], "h1", "{v}");
    let o = sys.cli(&[
        "vm",
        "create",
        "vm2",
        "--memory",
        "16MiB",
        "--workload",
        "idle",
        "--host",
        "h2",
    ]);
    assert!(!o.status.success(), "{}", bed::text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("lost"),
        "{}",
        bed::text(&o)
    );
    // Thawed, it heartbeats again and is alive.
    let _ = std::process::Command::new("kill")
        .args(["-CONT", &pid.to_string()])
        .status();
    sys.wait_alive(2);
}
