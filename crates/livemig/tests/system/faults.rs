//! Faults in the middle of a migration, each ending with the guest on exactly one host (or,
//! when its own host dies, on none, as documented) and the RMS saying so.
//!
//! Every migration here runs under the `fixed` policy at 2 MiB/s over a 100 Mbit/s link, after
//! the guest has written for a while: round 1 then takes several seconds, so a fault injected
//! a second after the source connected lands in the middle of it.

use std::time::{Duration, Instant};

use crate::bed::{self, RmsOpts, System};
use crate::{create, runs_only_on};

/// A 2-host system with vm1 (64 MiB, writing 1 MiB/s) on h1, its memory written for 3 s.
fn two_hosts(opts: RmsOpts) -> System {
    let mut sys = System::up(2, "100mbit", opts);
    sys.start_agent(1, "256MiB");
    sys.start_agent(2, "256MiB");
    sys.wait_alive(2);
    create(&sys, "vm1", "64MiB", "uniform:rate=1MiB/s", 1);
    std::thread::sleep(Duration::from_secs(3));
    sys
}

/// Starts vm1's migration to h2 at a fixed 2 MiB/s; returns its id once the source has
/// connected (the RMS marks the reservation used) and a second more has passed.
fn start_slow(sys: &System) -> u64 {
    let settings = sys.dir.path().join("slow.toml");
    std::fs::write(&settings, "bandwidth = \"2MiB/s\"\n").expect("settings");
    let settings = settings.display().to_string();
    let v = sys.cli_json(&[
        "vm",
        "migrate",
        "vm1",
        "--to",
        "h2",
        "--policy",
        "fixed",
        "--settings",
        &settings,
    ]);
    let id = v["id"].as_u64().unwrap_or_else(|| panic!("an id: {v}"));
    sys.wait_for(Duration::from_secs(20), "the migration runs", || {
        let m = sys.cli_json(&["migration", "show", &id.to_string()]);
        m["state"] == "running"
    });
    std::thread::sleep(Duration::from_secs(1));
    let m = sys.cli_json(&["migration", "show", &id.to_string()]);
    assert_eq!(m["state"], "running", "still in round 1: {m}");
    id
}

#[test]
fn the_target_agent_killed_mid_round_leaves_the_vm_on_the_source() {
    let mut sys = two_hosts(RmsOpts::default());
    let id = start_slow(&sys);
    sys.kill_agent(2);
    let m = sys.wait_end(id, Duration::from_secs(60));
    assert_eq!(m["state"], "failed", "{m}\n{}", sys.logs());
    // h2 is gone (its process died with whatever it had received); h1 runs the guest.
    assert_eq!(sys.rms_host_of("vm1"), "h1");
    assert!(sys.agent_vms(1).contains(&"vm1".to_string()));
    sys.start_agent(2, "256MiB");
    sys.wait_alive(2);
    runs_only_on(&sys, 1, "vm1");
}

#[test]
fn a_link_cut_mid_round_leaves_the_vm_on_the_source() {
    let sys = two_hosts(RmsOpts::default());
    let id = start_slow(&sys);
    sys.link(2, false);
    // h2 is lost to the RMS (its heartbeats cannot arrive): the migration is `unknown` until
    // the source, asked to stop, says the guest stayed (or its frame deadline ends the
    // migration first): either way it ends failed, never completed.
    let m = sys.wait_terminal(id, Duration::from_secs(90));
    assert_eq!(m["state"], "failed", "{m}\n{}", sys.logs());
    sys.link(2, true);
    sys.wait_alive(2);
    // The destination discarded its partial copy: only h1 runs the guest.
    runs_only_on(&sys, 1, "vm1");
    // And the VM migrates fine once the link is back.
    let o = sys.cli(&["vm", "migrate", "vm1", "--to", "h2", "--watch"]);
    assert!(o.status.success(), "{}\n{}", bed::text(&o), sys.logs());
    runs_only_on(&sys, 2, "vm1");
}

#[test]
fn the_source_agent_killed_mid_round_takes_its_guest_and_nothing_runs_twice() {
    // A SimGuest lives in its agent's process: killing the source's agent kills the guest
    // (docs/operations.md). The RMS must not claim it moved, and the destination must not run
    // the partial copy.
    let mut sys = two_hosts(RmsOpts::default());
    let id = start_slow(&sys);
    sys.kill_agent(1);
    let m = sys.wait_end(id, Duration::from_secs(60));
    assert_eq!(m["state"], "unknown", "{m}\n{}", sys.logs());
    assert_eq!(sys.rms_host_of("vm1"), "h1", "the location did not move");
    // The destination threw its partial copy away.
    sys.wait_for(Duration::from_secs(30), "h2 runs nothing", || {
        sys.agent_vms(2).is_empty()
    });
    let info = sys.agent_get(2, "/api/v1/info").expect("h2 answers");
    assert_eq!(
        info["memory_free_bytes"].as_u64(),
        Some(256 * bed::MIB),
        "{info}"
    );
    // A new migration of the VM waits for an operator.
    let o = sys.cli(&["vm", "migrate", "vm1", "--to", "h2"]);
    assert!(!o.status.success(), "{}", bed::text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("unknown"),
        "{}",
        bed::text(&o)
    );
}

#[test]
fn the_rms_killed_mid_migration_and_restarted_finishes_it() {
    let mut sys = two_hosts(RmsOpts::default());
    let id = start_slow(&sys);
    sys.kill_rms();
    std::thread::sleep(Duration::from_secs(2));
    let restarted = Instant::now();
    sys.start_rms();
    let m = sys.wait_end(id, Duration::from_secs(90));
    eprintln!(
        "the migration ended {:?} after the RMS restarted",
        restarted.elapsed()
    );
    assert_eq!(m["state"], "completed", "{m}\n{}", sys.logs());
    runs_only_on(&sys, 2, "vm1");
}

#[test]
fn postgres_failover_between_two_rms_processes_mid_migration() {
    use std::io::BufRead;
    let mut sys = System::bed(2, "100mbit", RmsOpts::default());
    let url = sys.start_postgres();
    sys.rms_opts.db = Some(url);
    sys.rms_opts.name = Some("rms-a".into());
    sys.start_rms();
    // The standby waits for the lease: it binds the RMS's address only once it leads.
    let mut standby = sys.start_standby_rms();
    let out = standby.stdout.take().expect("the standby's stdout");
    // Killed with the rest when the system drops, whatever happens below.
    sys.rms.push(standby);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = std::io::BufReader::new(out).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        lines.map_while(Result::ok).for_each(drop);
    });
    sys.start_agent(1, "256MiB");
    sys.start_agent(2, "256MiB");
    sys.wait_alive(2);
    create(&sys, "vm1", "64MiB", "uniform:rate=1MiB/s", 1);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        rx.try_recv().is_err(),
        "the standby must not serve while rms-a leads"
    );
    let id = start_slow(&sys);
    let killed = Instant::now();
    // The leader dies (SIGKILL); the standby (the last RMS started) is left running.
    let leader = sys.rms.remove(0);
    kill(leader);
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("the standby did not take over\n{}", sys.logs()));
    let took = killed.elapsed();
    eprintln!("the standby took over {took:?} after the leader died: {line}");
    assert!(line.contains("listening"), "{line}");
    assert!(took <= Duration::from_secs(15), "takeover took {took:?}");
    let m = sys.wait_terminal(id, Duration::from_secs(90));
    assert_eq!(m["state"], "completed", "{m}\n{}", sys.logs());
    runs_only_on(&sys, 2, "vm1");
}

fn kill(mut c: std::process::Child) {
    let _ = c.kill();
    let _ = c.wait();
}

/// The TCP listeners in namespace `ns` (`ss`), as addresses to connect to from inside it.
fn listeners(ns: &str) -> Vec<String> {
    let o = System::exec(ns, "ss")
        .args(["-Htln"])
        .output()
        .expect("ss runs");
    assert!(o.status.success(), "ss: {}", bed::text(&o));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .filter_map(|a| {
            let (ip, port) = a.rsplit_once(':')?;
            let ip = match ip {
                "*" | "0.0.0.0" => "127.0.0.1",
                ip if ip.contains(':') || ip.contains('[') => return None,
                ip => ip,
            };
            Some(format!("{ip}/{port}"))
        })
        .collect()
}

/// What a scanner sends to an open port: nothing, random bytes, an HTTP request with a
/// huge declared body, the start of a TLS record with a huge length, a half-open connection.
const PROBES: &[&str] = &[
    "exec 3<>/dev/tcp/$T && exec 3>&-",
    "exec 3<>/dev/tcp/$T && head -c 65536 /dev/urandom >&3",
    "exec 3<>/dev/tcp/$T && printf 'POST /api/v1/vms HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: 99999999999\\r\\n\\r\\n{{{{' >&3 && sleep 1",
    "exec 3<>/dev/tcp/$T && printf '\\x16\\x03\\x01\\xff\\xff\\x01\\x00' >&3 && sleep 1",
    "exec 3<>/dev/tcp/$T && sleep 2",
];

#[test]
fn a_port_scan_of_every_listener_leaves_every_service_running() {
    scan_every_listener(RmsOpts::default());
}

#[test]
fn a_port_scan_of_every_tls_listener_leaves_every_service_running() {
    scan_every_listener(RmsOpts {
        ca_dir: true,
        ..RmsOpts::default()
    });
}

/// Mid-migration, every listener of the testbed gets the probes; then every service answers
/// and the migration completes.
fn scan_every_listener(opts: RmsOpts) {
    let tls = opts.ca_dir;
    let sys = two_hosts(opts);
    let id = start_slow(&sys);
    // A data listener waiting for a source (one the RMS never asked for: its key is unknown
    // to anyone), so that a migration's data port is scanned too.
    let r = sys
        .agent_post(
            1,
            "/api/v1/capacity",
            &serde_json::json!({"memory_bytes": 4096}),
        )
        .expect("a reservation");
    let reservation = r["reservation"]["id"].as_str().expect("an id").to_string();
    let ready = sys
        .agent_post(
            1,
            "/api/v1/incoming",
            &serde_json::json!({"migration": 9999, "reservation": reservation,
                "vm": {"name": "decoy", "memory_bytes": 4096, "workload": "idle", "kind": "sim"},
                "key": "ab".repeat(32), "tls": tls}),
        )
        .expect("a data listener");
    let data = ready["data_address"]
        .as_str()
        .expect("an address")
        .replace(':', "/");
    let mut scanned = Vec::new();
    for ns in [sys.switch_ns(), sys.host_ns(1), sys.host_ns(2)] {
        let targets = listeners(&ns);
        for t in &targets {
            for probe in PROBES {
                // Each probe is bounded; whatever the service answers (or not) is fine.
                let _ = System::exec(&ns, "timeout")
                    .args(["5", "bash", "-c", probe])
                    .env("T", t)
                    .output()
                    .expect("bash runs");
            }
        }
        scanned.push((ns, targets));
    }
    // The RMS, both agents' APIs and the decoy's data listener on h1 (at least) were scanned.
    let count: Vec<usize> = scanned.iter().map(|(_, t)| t.len()).collect();
    assert!(count.iter().all(|c| *c >= 1), "{scanned:?}");
    assert!(scanned[1].1.contains(&data), "{data} not in {scanned:?}");
    // The decoy's listener still waits for its source: junk did not end it.
    let report = sys.agent_get(1, "/api/v1/report").expect("h1's report");
    assert_eq!(
        report["migrations"]["9999"]["state"], "migrating",
        "{report}"
    );
    // Every service still answers, and the migration finishes as if nothing happened.
    let m = sys.wait_end(id, Duration::from_secs(120));
    assert_eq!(m["state"], "completed", "{m}\n{}", sys.logs());
    runs_only_on(&sys, 2, "vm1");
    for i in [1, 2] {
        assert!(
            sys.agent_get(i, "/healthz").is_some(),
            "h{i} does not answer"
        );
    }
    let hosts = sys.cli_json(&["host", "list"]);
    assert_eq!(hosts.as_array().map(Vec::len), Some(2), "{hosts}");
    eprintln!("scanned: {scanned:?}");
}
