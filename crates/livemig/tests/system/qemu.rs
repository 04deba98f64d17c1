//! A `qemu` VM (the test guest under QEMU, TCG) created and migrated through the RMS between
//! two hosts of the testbed: the RMS, both agents and the guest's own heartbeat counter agree
//! on where it runs, and the source's QEMU is gone. Needs QEMU and the guest image as well
//! (scripts/test.sh installs and builds them); fails, never skips, without them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use livemig_qemu::vm::GuestImage;

use crate::bed::{RmsOpts, System, MIB};
use crate::writes;

/// 256 MiB less 8 KiB, as QEMU VMs need (not a multiple of 256 KiB).
const MEM: &str = "262136KiB";
const MEM_BYTES: u64 = 262_136 * 1024;

fn guest_dir() -> PathBuf {
    let qemu = std::env::var("LIVEMIG_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into());
    let found = std::process::Command::new(&qemu)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{qemu} is not installed: this test needs QEMU (scripts/test.sh installs it)"
    );
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let img = GuestImage::build(&repo).unwrap_or_else(|e| panic!("the test guest: {e}"));
    img.kernel
        .parent()
        .expect("the image's directory")
        .to_path_buf()
}

/// Live QEMU processes (a `-qmp` argument) whose command line names `dir`.
fn qemus_under(dir: &Path) -> Vec<u32> {
    let needle = dir.display().to_string();
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| {
                    let pid: u32 = e.file_name().to_str()?.parse().ok()?;
                    let c = std::fs::read(e.path().join("cmdline")).ok()?;
                    let c = String::from_utf8_lossy(&c);
                    (c.split('\0').any(|a| a == "-qmp") && c.contains(&needle)).then_some(pid)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Kills, when dropped, every QEMU left under the test's directory (an agent killed by a
/// failed assertion leaves its QEMUs behind).
struct Reaper(PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in qemus_under(&self.0) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

#[test]
fn a_qemu_vm_moves_through_the_rms_and_its_heartbeat_goes_on() {
    let guest = guest_dir();
    let mut sys = System::up(2, "1gbit", RmsOpts::default());
    let _reaper = Reaper(sys.dir.path().to_path_buf());
    sys.start_qemu_agent(1, "1GiB", &guest);
    sys.start_qemu_agent(2, "1GiB", &guest);
    sys.wait_alive(2);
    let v = sys.cli_json(&[
        "vm",
        "create",
        "q1",
        "--memory",
        MEM,
        "--workload",
        "uniform:rate=2MiB/s,buffer=32MiB",
        "--kind",
        "qemu",
        "--host",
        "h1",
    ]);
    assert_eq!(v["host"], "h1", "{v}");
    sys.wait_for(Duration::from_secs(90), "the guest boots on h1", || {
        writes(&sys, 1, "q1") >= Some(5)
    });
    assert_eq!(qemus_under(&sys.qemu_state_dir(1)).len(), 1);
    let settings = sys.dir.path().join("fast.toml");
    std::fs::write(
        &settings,
        "bandwidth = \"100MiB/s\"\nstop_remaining = \"8MiB\"\n",
    )
    .expect("settings");
    let settings = settings.display().to_string();
    let v = sys.cli_json(&[
        "vm",
        "migrate",
        "q1",
        "--to",
        "h2",
        "--policy",
        "fixed",
        "--settings",
        &settings,
    ]);
    let id = v["id"].as_u64().unwrap_or_else(|| panic!("an id: {v}"));
    let before = writes(&sys, 1, "q1");
    let m = sys.wait_end(id, Duration::from_secs(120));
    assert_eq!(m["state"], "completed", "{m}\n{}", sys.logs());
    assert_eq!(
        (m["source"].as_str(), m["target"].as_str()),
        (Some("h1"), Some("h2"))
    );
    assert!(
        m["rounds"].as_array().map_or(0, Vec::len) >= 1,
        "the RMS holds the rounds: {m}"
    );
    // The RMS, both agents and the guest agree: it runs on h2 only.
    assert_eq!(sys.rms_host_of("q1"), "h2");
    assert!(sys.agent_vms(1).is_empty(), "{:?}", sys.agent_vms(1));
    assert_eq!(sys.agent_vms(2), vec!["q1".to_string()]);
    sys.wait_for(Duration::from_secs(10), "h1's QEMU quits", || {
        qemus_under(&sys.qemu_state_dir(1)).is_empty()
    });
    assert_eq!(qemus_under(&sys.qemu_state_dir(2)).len(), 1);
    let on_b = sys.agent_get(2, "/api/v1/vms/q1").expect("q1 on h2");
    assert_eq!(
        (on_b["kind"].as_str(), on_b["running"].as_bool()),
        (Some("qemu"), Some(true)),
        "{on_b}"
    );
    sys.wait_for(
        Duration::from_secs(30),
        "the heartbeat goes on at h2",
        || writes(&sys, 2, "q1") > before.map(|b| b + 10),
    );
    let h1 = sys.agent_get(1, "/api/v1/info").expect("h1 info");
    assert_eq!(h1["memory_free_bytes"].as_u64(), Some(1024 * MIB), "{h1}");
    let h2 = sys.agent_get(2, "/api/v1/info").expect("h2 info");
    assert_eq!(
        h2["memory_free_bytes"].as_u64(),
        Some(1024 * MIB - MEM_BYTES),
        "{h2}"
    );
    // Stopping h2's agent quits its QEMU.
    assert!(sys.stop_agent(2, Duration::from_secs(30)), "{}", sys.logs());
    assert!(
        qemus_under(&sys.qemu_state_dir(2)).is_empty(),
        "QEMU outlived its agent\n{}",
        sys.logs()
    );
}
