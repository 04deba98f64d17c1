//! `livemig qemu migrate` interrupted, against real QEMU (TCG): SIGTERM mid-pass cancels the
//! migration and puts the source's own settings back; a successful run puts them back too;
//! after a `kill -9`, `livemig qemu restore` does. Never skipped: without QEMU the tests fail
//! and say why (scripts/test.sh installs it).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use livemig_qemu::vm::{free_port, GuestImage, Vm, VmSpec};
use livemig_qemu::QmpClient;
use serde_json::{json, Value};
use tokio::sync::Mutex;

/// QEMU tests run one at a time: TCG guests on a 2-core machine.
static SERIAL: Mutex<()> = Mutex::const_new(());
const BOOT: Duration = Duration::from_secs(60);
/// The guest's load: 48 MiB of non-zero memory, a few MiB/s dirtied.
const LOAD: &str = "uniform:rate=4MiB/s,buffer=48MiB";

fn image() -> GuestImage {
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
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    GuestImage::build(&repo).unwrap_or_else(|e| panic!("test guest: {e}"))
}

fn uri() -> String {
    format!("tcp:127.0.0.1:{}", free_port().expect("port"))
}

/// A destination for `src`'s guest listening on a fresh port.
async fn destination(src: &VmSpec, name: &str) -> (Vm, String) {
    let uri = uri();
    let vm = Vm::spawn(src.destination(name, &uri), BOOT)
        .await
        .expect("destination QEMU starts");
    (vm, uri)
}

/// A `livemig` child killed when the test ends, whatever happens.
struct Proc(Child, std::sync::Arc<std::sync::Mutex<String>>);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    fn wait_for(&mut self, limit: Duration) -> ExitStatus {
        let until = Instant::now() + limit;
        loop {
            if let Some(st) = self.0.try_wait().expect("wait") {
                return st;
            }
            assert!(
                Instant::now() < until,
                "livemig did not end within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything it wrote on stderr so far (after it ended: everything).
    fn stderr(&mut self) -> String {
        // The reader thread gets the last lines shortly after the process ends.
        std::thread::sleep(Duration::from_millis(200));
        self.1.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// `livemig qemu migrate` from `src` to `dest` at `uri`, slow (2 MB/s: the first pass takes
/// well over ten seconds) or fast, with `--progress json`; returns the child and a channel of
/// its stderr lines (one JSON event per line, then any error in plain text).
fn spawn_migrate(src: &Path, dest: &Path, uri: &str, slow: bool) -> (Proc, mpsc::Receiver<String>) {
    let (min, first) = if slow {
        ("2MB/s", "2MB/s")
    } else {
        ("4MB/s", "40MB/s")
    };
    let mut child = Command::new(assert_cmd::cargo::cargo_bin("livemig"))
        .args(["qemu", "migrate", "--qmp"])
        .arg(src)
        .arg("--dest-qmp")
        .arg(dest)
        .args(["--uri", uri, "--policy", "dirty-factor", "--sample", "0"])
        .args(["--rounds", "5", "--stop-remaining", "2MiB"])
        .args(["--min-bandwidth", min, "--initial-bandwidth", first])
        .args([
            "--max-bandwidth",
            "200MB/s",
            "--completion-timeout-per-gib",
            "120s",
        ])
        .args(["--progress", "json"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("livemig starts");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    let all = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = std::sync::Arc::clone(&all);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(mut s) = sink.lock() {
                s.push_str(&line);
                s.push('\n');
            }
            let _ = tx.send(line);
        }
    });
    (Proc(child, all), rx)
}

/// Waits for the `connected` event (`migrate` issued): the migration runs in QEMU.
fn wait_started(mig: &mut Proc, rx: &mpsc::Receiver<String>) {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.contains("\"event\":\"connected\"") => return,
            Ok(_) => {}
            Err(e) => panic!("no `connected` event: {e}: {}", mig.stderr()),
        }
    }
}

/// Sets the source's own settings to values nobody would choose by chance.
async fn set_originals(vm: &Vm, bandwidth: u64, downtime: u64) {
    let mut q = vm.qmp().await.expect("QMP");
    q.execute(
        "migrate-set-parameters",
        Some(json!({"max-bandwidth": bandwidth, "downtime-limit": downtime})),
    )
    .await
    .expect("set");
}

/// What the source says now: migration status, whether it runs, max-bandwidth,
/// downtime-limit and the events capability.
async fn source_state(vm: &Vm) -> (String, bool, u64, u64, bool) {
    let mut q: QmpClient = vm.qmp().await.expect("QMP");
    let m = q
        .execute("query-migrate", None)
        .await
        .expect("query-migrate");
    let st = q.execute("query-status", None).await.expect("query-status");
    let p = q
        .execute("query-migrate-parameters", None)
        .await
        .expect("parameters");
    let caps = q
        .execute("query-migrate-capabilities", None)
        .await
        .expect("capabilities");
    let events = caps
        .as_array()
        .expect("list")
        .iter()
        .find(|c| c["capability"] == "events")
        .map(|c| c["state"] == Value::Bool(true))
        .expect("events capability");
    (
        m["status"].as_str().unwrap_or("none").to_string(),
        st["running"] == Value::Bool(true),
        p["max-bandwidth"].as_u64().expect("max-bandwidth"),
        p["downtime-limit"].as_u64().expect("downtime-limit"),
        events,
    )
}

fn state_file(vm: &Vm) -> PathBuf {
    let mut s = vm.spec.qmp_path().into_os_string();
    s.push(".livemig-params.json");
    PathBuf::from(s)
}

/// Regression (SIGTERM left the source migrating with nobody in control, at a 1 ms downtime
/// limit and the policy's cap; a successful run left 60000 ms and B_max): SIGTERM mid-pass
/// cancels the migration, the source runs with its own settings back, and a second governed
/// migration of the same guest then completes and puts them back as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_pass_cancels_and_restores_and_success_restores_too() {
    let _one = SERIAL.lock().await;
    let img = image();
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = VmSpec::new("src", &img, LOAD, dir.path());
    let src = Vm::spawn(spec.clone(), BOOT).await.expect("source");
    let (dst, uri) = destination(&spec, "dst").await;
    src.wait_heartbeat(5, BOOT).await.expect("guest beats");
    set_originals(&src, 77_000_000, 345).await;

    let (mut mig, rx) = spawn_migrate(&src.spec.qmp_path(), &dst.spec.qmp_path(), &uri, true);
    wait_started(&mut mig, &rx);
    assert!(
        state_file(&src).exists(),
        "the originals are saved meanwhile"
    );
    std::thread::sleep(Duration::from_millis(1500));
    let pid = mig.0.id().to_string();
    let st = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(st.success());
    let code = mig.wait_for(Duration::from_secs(30));
    let err = mig.stderr();
    assert_eq!(code.code(), Some(1), "the VM runs on the source: {err}");
    assert!(err.contains("SIGTERM"), "{err}");
    assert!(err.contains("keeps running on the source"), "{err}");
    let (status, running, bw, down, events) = source_state(&src).await;
    assert!(status == "cancelled" || status == "none", "{status}");
    assert!(running, "the source VM runs");
    assert_eq!(
        (bw, down),
        (77_000_000, 345),
        "the operator's values are back"
    );
    assert!(!events, "the events capability is back off");
    assert!(!state_file(&src).exists(), "removed once restored");
    let last = src.last_heartbeat().expect("beat");
    src.wait_heartbeat(last + 3, Duration::from_secs(30))
        .await
        .expect("the guest goes on beating on the source");
    drop(dst);

    // The same guest again, to a fresh destination: it completes and restores too.
    let (dst2, uri2) = destination(&spec, "dst2").await;
    let (mut mig, _rx) = spawn_migrate(&src.spec.qmp_path(), &dst2.spec.qmp_path(), &uri2, false);
    let code = mig.wait_for(Duration::from_secs(120));
    let err = mig.stderr();
    assert_eq!(code.code(), Some(0), "{err}");
    let (status, running, bw, down, events) = source_state(&src).await;
    assert_eq!(status, "completed");
    assert!(!running, "the source is paused after completion");
    assert_eq!((bw, down), (77_000_000, 345), "restored after success too");
    assert!(!events);
    assert!(!state_file(&src).exists());
    let last = src.last_heartbeat().expect("beat");
    dst2.wait_heartbeat(last + 3, Duration::from_secs(30))
        .await
        .expect("the guest runs on the destination");
}

/// Regression (a killed `livemig qemu migrate` left the operator's values lost):
/// `livemig qemu restore` cancels the migration still under way and puts them back from the
/// state file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_then_restore_puts_the_settings_back() {
    let _one = SERIAL.lock().await;
    let img = image();
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = VmSpec::new("src", &img, LOAD, dir.path());
    let src = Vm::spawn(spec.clone(), BOOT).await.expect("source");
    let (dst, uri) = destination(&spec, "dst").await;
    src.wait_heartbeat(5, BOOT).await.expect("guest beats");
    set_originals(&src, 55_000_000, 432).await;

    let (mut mig, rx) = spawn_migrate(&src.spec.qmp_path(), &dst.spec.qmp_path(), &uri, true);
    wait_started(&mut mig, &rx);
    std::thread::sleep(Duration::from_millis(1000));
    mig.0.kill().expect("kill -9");
    let _ = mig.wait_for(Duration::from_secs(10));
    let (status, _, bw, down, _) = source_state(&src).await;
    assert_eq!(status, "active", "nobody is in control any more");
    assert_ne!((bw, down), (55_000_000, 432));

    let out = Command::new(assert_cmd::cargo::cargo_bin("livemig"))
        .args(["qemu", "restore", "--qmp"])
        .arg(src.spec.qmp_path())
        .output()
        .expect("livemig restore");
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}{err}");
    assert_eq!(text.trim_end().lines().count(), 1, "{text}");
    assert!(
        text.contains("cancelled") && text.contains("restored"),
        "{text}"
    );
    let (status, running, bw, down, events) = source_state(&src).await;
    assert_eq!(status, "cancelled");
    assert!(running);
    assert_eq!((bw, down), (55_000_000, 432));
    assert!(!events);
    assert!(!state_file(&src).exists());

    // Nothing left to restore: one clear line, not a silent success.
    let out = Command::new(assert_cmd::cargo::cargo_bin("livemig"))
        .args(["qemu", "restore", "--qmp"])
        .arg(src.spec.qmp_path())
        .output()
        .expect("livemig restore");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("no state file"), "{err}");
}
