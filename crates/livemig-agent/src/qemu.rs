//! QEMU VMs (kind `qemu`): the project's test guest (kernel + initramfs running
//! `livemig-guest-load`) under QEMU with TCG, one process per VM, in a directory of its own
//! under the agent's state directory (`<state-dir>/vm-<vm-name>/`: `vm.qmp`, `vm.serial`,
//! `vm.stderr`, and the migration sockets).
//!
//! - Memory: the request's `memory_bytes` is QEMU's `-m` in KiB, exactly (no rounding, so the
//!   capacity book, the RMS and QEMU agree). It must be a whole number of 8 KiB and **not** a
//!   multiple of 256 KiB: QEMU 7.2 syncs the dirty bitmap of such a RAM block word by word
//!   without resetting TCG's dirty tracking, which corrupts the guest after a multi-pass
//!   migration (`docs/qemu.md`). The default test size is 256 MiB less 8 KiB (268427264).
//!   At least [`MIN_MEMORY`].
//! - Workload: the guest program's load spec (`idle`, `uniform:rate=1MiB/s`, ...), checked
//!   here with its own parser and put on the kernel command line.
//! - `writes`: the guest's last whole heartbeat number (`livemig-hb N` on the serial console),
//!   a counter kept in guest memory, so it continues on a destination.
//! - Stop: `quit` over QMP, then SIGKILL after [`QUIT_WAIT`]; every wait bounded.
//!
//! The QEMU binary is `qemu-system-x86_64` unless `LIVEMIG_QEMU` names another.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use axum::http::StatusCode;
use livemig_http::ApiError;
use livemig_qemu::vm::{GuestImage, Vm as Process, VmError, VmSpec};
use livemig_qemu::QmpClient;

/// The smallest QEMU VM: the guest's kernel and initramfs need room.
pub const MIN_MEMORY: u64 = 64 << 20;
/// QEMU's RAM blocks whose size is a multiple of this migrate wrongly under TCG (7.2).
pub const BAD_ALIGNMENT: u64 = 256 << 10;
/// How long `quit` may take before QEMU is killed.
pub const QUIT_WAIT: Duration = Duration::from_secs(5);
/// How long a starting QEMU may take to open its QMP socket.
pub const SPAWN_WAIT: Duration = Duration::from_secs(30);
/// The longest load spec taken.
pub const MAX_LOAD: usize = 200;
/// The file names' stem inside a VM's directory.
const STEM: &str = "vm";
/// Bytes of the console's end read for the last heartbeat.
const CONSOLE_TAIL: u64 = 4096;

/// Where QEMU VMs live and what they boot.
#[derive(Debug, Clone, PartialEq)]
pub struct QemuConfig {
    /// Parent of the per-VM directories (created when the first QEMU VM starts).
    pub state_dir: PathBuf,
    /// The guest image's directory (`vmlinuz`, `initramfs.cpio.gz`); `None`: the default
    /// lookup of `livemig_qemu::vm::GuestImage::default_dir` from the working directory.
    pub guest_dir: Option<PathBuf>,
}

impl Default for QemuConfig {
    fn default() -> QemuConfig {
        QemuConfig {
            state_dir: PathBuf::from("livemig-state"),
            guest_dir: None,
        }
    }
}

/// Why a QEMU VM cannot start.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("memory_bytes of a qemu VM must be at least {MIN_MEMORY} bytes (64 MiB)")]
    TooSmall,
    #[error("memory_bytes of a qemu VM must be a whole number of 8 KiB")]
    NotKib,
    #[error(
        "memory_bytes of a qemu VM must not be a multiple of 256 KiB (QEMU 7.2 under TCG \
         corrupts such a guest when it migrates in several passes); e.g. {suggest} (8 KiB less)"
    )]
    Aligned { suggest: u64 },
    #[error("invalid guest load `{spec}`: {why}")]
    Load { spec: String, why: String },
    #[error("the load's buffer ({buffer} bytes) must be at most half the VM's memory")]
    Buffer { buffer: usize },
    #[error("the VM's directory {path} would give socket paths longer than 100 bytes: use a shorter --state-dir")]
    PathTooLong { path: String },
    #[error("cannot prepare the VM's directory {path}: {source}")]
    Dir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("QEMU or the guest image is missing on this host: {0}")]
    Missing(String),
    #[error("QEMU did not start: {0}")]
    Start(String),
}

impl QemuError {
    /// 503 when this host cannot run QEMU now (binary or image missing, QEMU failing), 422
    /// for a request no host could take.
    pub fn status(&self) -> StatusCode {
        match self {
            QemuError::Missing(_) | QemuError::Start(_) | QemuError::Dir { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }
}

impl From<QemuError> for ApiError {
    fn from(e: QemuError) -> ApiError {
        ApiError::new(e.status(), e.to_string())
    }
}

/// QEMU's `-m` for `bytes`, or why that size is refused.
pub fn memory_arg(bytes: u64) -> Result<String, QemuError> {
    if bytes < MIN_MEMORY {
        return Err(QemuError::TooSmall);
    }
    // (`is_multiple_of` is newer than the workspace's rust-version.)
    if bytes / 8192 * 8192 != bytes {
        return Err(QemuError::NotKib);
    }
    if bytes / BAD_ALIGNMENT * BAD_ALIGNMENT == bytes {
        return Err(QemuError::Aligned {
            suggest: bytes - 8192,
        });
    }
    Ok(format!("{}K", bytes / 1024))
}

/// Checks a load spec for the guest's kernel command line: the guest program's own parser,
/// a short plain alphabet (no spaces: it must not add kernel parameters), a buffer that fits.
pub fn check_load(spec: &str, memory_bytes: u64) -> Result<(), QemuError> {
    let bad = |why: &str| QemuError::Load {
        spec: spec.chars().take(MAX_LOAD).collect(),
        why: why.to_string(),
    };
    if spec.is_empty() || spec.len() > MAX_LOAD {
        return Err(bad("it must be 1 to 200 characters"));
    }
    let plain = |c: char| c.is_ascii_alphanumeric() || ":=,._/%-".contains(c);
    if !spec.chars().all(plain) {
        return Err(bad("only A-Z a-z 0-9 and : = , . _ / % - are allowed"));
    }
    let parsed = livemig_guest_load::LoadSpec::parse(spec).map_err(|e| bad(&e.to_string()))?;
    if parsed.buffer as u64 > memory_bytes / 2 {
        return Err(QemuError::Buffer {
            buffer: parsed.buffer,
        });
    }
    Ok(())
}

/// The directory of VM `name`: `vm-<name>`, so that the names `.` and `..` (valid VM names)
/// stay inside the state directory.
pub fn vm_dir(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join(format!("vm-{name}"))
}

/// The last whole heartbeat in console text.
pub fn last_heartbeat(text: &str) -> Option<u64> {
    livemig_qemu::heartbeat::numbers(livemig_qemu::heartbeat::complete_lines(text))
        .last()
        .copied()
}

/// One QEMU process of a VM this agent runs (or receives).
#[derive(Debug)]
pub struct QemuVm {
    spec: VmSpec,
    process: Mutex<Process>,
    /// Set while the guest is known to be paused here (a hand-over in doubt).
    paused: AtomicBool,
}

impl QemuVm {
    /// Starts the guest `name` (memory and load already checked with [`memory_arg`] and
    /// [`check_load`]); `incoming`: a destination waiting on that UNIX socket.
    pub async fn start(
        cfg: &QemuConfig,
        name: &str,
        memory_bytes: u64,
        load: &str,
        incoming: Option<&Path>,
    ) -> Result<QemuVm, QemuError> {
        let memory = memory_arg(memory_bytes)?;
        check_load(load, memory_bytes)?;
        let dir = vm_dir(&cfg.state_dir, name);
        // `vm.qmp` and the migration sockets (`in.sock`, `out-N.sock`, N up to 20 digits).
        if dir.as_os_str().len() + 30 > 100 {
            return Err(QemuError::PathTooLong {
                path: dir.display().to_string(),
            });
        }
        let guest_dir = match &cfg.guest_dir {
            Some(d) => d.clone(),
            None => {
                let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
                GuestImage::default_dir(&cwd)
            }
        };
        let image =
            GuestImage::in_dir(&guest_dir).map_err(|e| QemuError::Missing(e.to_string()))?;
        std::fs::create_dir_all(&dir).map_err(|source| QemuError::Dir {
            path: dir.display().to_string(),
            source,
        })?;
        let mut spec = VmSpec::new(STEM, &image, load, &dir);
        spec.memory = memory;
        if let Some(sock) = incoming {
            let _ = std::fs::remove_file(sock);
            spec.incoming = Some(format!("unix:{}", sock.display()));
        }
        let process = Process::spawn(spec.clone(), SPAWN_WAIT)
            .await
            .map_err(|e| match e {
                e @ VmError::Spawn { .. } => QemuError::Missing(chain(&e)),
                e => QemuError::Start(chain(&e)),
            })?;
        let vm = QemuVm {
            spec,
            process: Mutex::new(process),
            paused: AtomicBool::new(false),
        };
        // QEMU opens its incoming socket after its QMP socket.
        if let Some(sock) = incoming {
            let until = tokio::time::Instant::now() + SPAWN_WAIT;
            while !sock.exists() {
                if tokio::time::Instant::now() >= until || !vm.is_alive() {
                    vm.kill();
                    return Err(QemuError::Start(format!(
                        "no incoming socket at {} (QEMU {})",
                        sock.display(),
                        if vm.is_alive() { "is slow" } else { "exited" }
                    )));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(vm)
    }

    fn process(&self) -> std::sync::MutexGuard<'_, Process> {
        self.process.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The VM's directory.
    pub fn dir(&self) -> &Path {
        &self.spec.dir
    }

    /// The QMP socket.
    pub fn qmp_path(&self) -> PathBuf {
        self.spec.qmp_path()
    }

    /// A QMP session (QEMU serves one at a time).
    pub async fn qmp(&self) -> Result<QmpClient, livemig_qemu::QmpError> {
        QmpClient::connect(&self.qmp_path(), livemig_qemu::qmp::DEFAULT_TIMEOUT).await
    }

    /// Whether the QEMU process lives.
    pub fn is_alive(&self) -> bool {
        self.process().is_alive()
    }

    /// Whether the guest runs: QEMU lives and the guest is not held paused here.
    pub fn is_running(&self) -> bool {
        !self.paused.load(Ordering::Relaxed) && self.is_alive()
    }

    /// Marks the guest as paused here (or running again).
    pub fn set_paused(&self, yes: bool) {
        self.paused.store(yes, Ordering::Relaxed);
    }

    /// The guest's last whole heartbeat (from the end of its serial console).
    pub fn heartbeat(&self) -> Option<u64> {
        let mut f = std::fs::File::open(self.spec.serial_path()).ok()?;
        let len = f.metadata().ok()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(CONSOLE_TAIL)))
            .ok()?;
        let mut buf = Vec::new();
        f.take(CONSOLE_TAIL).read_to_end(&mut buf).ok()?;
        last_heartbeat(&String::from_utf8_lossy(&buf))
    }

    /// Kills QEMU at once (SIGKILL; reaped later).
    pub fn kill(&self) {
        self.process().start_kill();
    }

    /// Kills QEMU and waits (blocking, at most `limit`) until it is gone; whether it is.
    pub fn kill_and_wait(&self, limit: Duration) -> bool {
        self.kill();
        let until = std::time::Instant::now() + limit;
        while self.is_alive() {
            if std::time::Instant::now() >= until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Stops QEMU: `quit` over QMP, then SIGKILL if it has not exited within [`QUIT_WAIT`];
    /// returns once it is gone (or after another second of waiting for the kill).
    pub async fn stop(&self) {
        if self.is_alive() {
            let quit = async {
                let mut q = self.qmp().await.ok()?;
                q.execute("quit", None).await.ok()
            };
            let _ = tokio::time::timeout(Duration::from_secs(3), quit).await;
        }
        let until = tokio::time::Instant::now() + QUIT_WAIT;
        while self.is_alive() && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if self.is_alive() {
            tracing::warn!(dir = %self.spec.dir.display(), "QEMU did not quit; killing it");
            self.kill();
            let until = tokio::time::Instant::now() + Duration::from_secs(1);
            while self.is_alive() && tokio::time::Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// Stops QEMU and removes its directory (best effort).
    /// Leaves QEMU running when this handle goes (see `livemig_qemu::vm::Vm::detach`).
    pub fn detach(&self) {
        self.process().detach();
    }

    pub async fn destroy(&self) {
        self.stop().await;
        if let Err(e) = std::fs::remove_dir_all(&self.spec.dir) {
            tracing::debug!(dir = %self.spec.dir.display(), error = %e, "cannot remove a VM's directory");
        }
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    crate::chain::error_chain(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_maps_to_kib_and_refuses_256_kib_multiples() {
        assert_eq!(memory_arg(268_427_264).expect("ok"), "262136K");
        let e = memory_arg(256 << 20).expect_err("aligned");
        assert!(e.to_string().contains("268427264"), "{e}");
        assert!(matches!(
            memory_arg((64 << 20) - 8192),
            Err(QemuError::TooSmall)
        ));
        assert!(matches!(
            memory_arg(268_427_264 + 4096),
            Err(QemuError::NotKib)
        ));
        let status = ApiError::from(QemuError::TooSmall).status;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        let status = ApiError::from(QemuError::Missing("x".into())).status;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn loads_are_parsed_and_kept_off_other_kernel_parameters() {
        let m = 268_427_264;
        check_load("idle", m).expect("idle");
        check_load("uniform:rate=1MiB/s,buffer=32MiB", m).expect("uniform");
        for bad in [
            "",
            "idle init=/bin/sh",
            "idle\ninit=/bin/sh",
            "nosuch",
            "uniform:rate=1MiB/s,bogus=1",
        ] {
            assert!(check_load(bad, m).is_err(), "{bad:?}");
        }
        assert!(matches!(
            check_load("uniform:buffer=200MiB", m),
            Err(QemuError::Buffer { .. })
        ));
        assert!(check_load(&"x".repeat(MAX_LOAD + 1), m).is_err());
    }

    #[test]
    fn a_vm_directory_stays_inside_the_state_directory() {
        let state = Path::new("/s");
        for name in [".", "..", "a", "-x"] {
            let d = vm_dir(state, name);
            assert_eq!(d.parent(), Some(state), "{name}");
            assert!(d.file_name().is_some(), "{name}");
            assert!(d.starts_with(state));
        }
        assert_eq!(vm_dir(state, ".."), Path::new("/s/vm-.."));
    }

    #[test]
    fn the_last_whole_heartbeat_counts() {
        assert_eq!(
            last_heartbeat("livemig-hb 1\nlivemig-hb 2\nlivemig-hb 3"),
            Some(2)
        );
        assert_eq!(last_heartbeat("boot\n"), None);
        assert_eq!(last_heartbeat("b 7\nlivemig-hb 8\n"), Some(8));
    }
}
