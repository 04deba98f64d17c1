//! QEMU processes of the test guest: the source, the `-incoming` destination, their QMP
//! sockets and serial consoles, and where the guest image lives.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::heartbeat;
use crate::qmp::{QmpClient, QmpError};

/// The QEMU binary used unless `LIVEMIG_QEMU` names another.
pub const QEMU: &str = "qemu-system-x86_64";

/// The QEMU binary to run: `$LIVEMIG_QEMU` if set and not empty (scripts/qemu10.sh prints one),
/// else [`QEMU`].
pub fn qemu_binary() -> String {
    std::env::var("LIVEMIG_QEMU")
        .ok()
        .filter(|q| !q.is_empty())
        .unwrap_or_else(|| QEMU.to_string())
}
/// Guest RAM: 256 MiB less 8 KiB. A size that is not a multiple of 256 KiB keeps QEMU 7.2 off
/// its word-aligned dirty-bitmap sync, which does not reset TCG's dirty tracking and corrupts
/// the guest after a multi-pass migration (see `docs/qemu.md`).
pub const GUEST_MEMORY: &str = "262136K";
/// Guest RAM in bytes, matching [`GUEST_MEMORY`].
pub const GUEST_MEMORY_BYTES: f64 = 262_136.0 * 1024.0;

/// Why a VM could not be started or watched.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot start {qemu} (install qemu-system-x86: scripts/test.sh does)")]
    Spawn {
        qemu: String,
        #[source]
        source: std::io::Error,
    },
    #[error("QEMU `{name}` exited before its QMP socket appeared: {stderr}")]
    Exited { name: String, stderr: String },
    #[error("QEMU `{name}`: no QMP socket at {path} after {wait:?}")]
    NoSocket {
        name: String,
        path: PathBuf,
        wait: Duration,
    },
    #[error("QEMU `{name}`: QMP connection failed")]
    Qmp {
        name: String,
        #[source]
        source: QmpError,
    },
    #[error("QEMU `{name}`: no heartbeat >= {want} on the serial console within {wait:?} (console tail: {tail})")]
    NoHeartbeat {
        name: String,
        want: u64,
        wait: Duration,
        tail: String,
    },
    #[error("the guest image is missing ({0}); build it with scripts/build-guest.sh")]
    NoImage(String),
    #[error("scripts/build-guest.sh failed: {0}")]
    Build(String),
}

/// The guest's kernel and initramfs.
#[derive(Debug, Clone, PartialEq)]
pub struct GuestImage {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

impl GuestImage {
    /// Where `scripts/build-guest.sh` puts the image: `$LIVEMIG_GUEST_DIR`, else
    /// `$CARGO_TARGET_DIR/guest`, else `<repo>/target/guest`.
    pub fn default_dir(repo: &Path) -> PathBuf {
        if let Some(d) = std::env::var_os("LIVEMIG_GUEST_DIR") {
            return PathBuf::from(d);
        }
        match std::env::var_os("CARGO_TARGET_DIR") {
            Some(t) => {
                let t = PathBuf::from(t);
                if t.is_absolute() {
                    t.join("guest")
                } else {
                    repo.join(t).join("guest")
                }
            }
            None => repo.join("target").join("guest"),
        }
    }

    /// The image in `dir`, if both files are there.
    pub fn in_dir(dir: &Path) -> Result<GuestImage, VmError> {
        let img = GuestImage {
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initramfs.cpio.gz"),
        };
        for f in [&img.kernel, &img.initrd] {
            if !f.is_file() {
                return Err(VmError::NoImage(f.display().to_string()));
            }
        }
        Ok(img)
    }

    /// Runs `<repo>/scripts/build-guest.sh` (it rebuilds only what changed) and returns the image.
    pub fn build(repo: &Path) -> Result<GuestImage, VmError> {
        let dir = GuestImage::default_dir(repo);
        let out = std::process::Command::new(repo.join("scripts/build-guest.sh"))
            .arg(&dir)
            .current_dir(repo)
            .output()
            .map_err(|e| VmError::Build(e.to_string()))?;
        if !out.status.success() {
            return Err(VmError::Build(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        GuestImage::in_dir(&dir)
    }
}

/// How to start one QEMU of the test guest.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// A short name (`src`, `dst`), used for file names and messages.
    pub name: String,
    pub image: GuestImage,
    /// The guest program's load spec (`livemig.load=` on the kernel command line).
    pub load: String,
    /// `-m` value.
    pub memory: String,
    /// Folder for the QMP socket, the serial console file and QEMU's stderr.
    pub dir: PathBuf,
    /// `-incoming` URI for a destination.
    pub incoming: Option<String>,
}

impl VmSpec {
    /// A source VM spec with the default memory size.
    pub fn new(name: &str, image: &GuestImage, load: &str, dir: &Path) -> VmSpec {
        VmSpec {
            name: name.to_string(),
            image: image.clone(),
            load: load.to_string(),
            memory: GUEST_MEMORY.to_string(),
            dir: dir.to_path_buf(),
            incoming: None,
        }
    }

    /// The same guest as a destination listening on `uri`, under another name.
    pub fn destination(&self, name: &str, uri: &str) -> VmSpec {
        VmSpec {
            name: name.to_string(),
            incoming: Some(uri.to_string()),
            ..self.clone()
        }
    }

    /// QEMU's command-line arguments: TCG, no defaults, serial to a file, QMP on a socket.
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = [
            "-accel",
            "tcg",
            "-machine",
            "pc",
            "-smp",
            "1",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-vga",
            "none",
            "-nic",
            "none",
            "-no-reboot",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend([
            "-m".into(),
            self.memory.clone(),
            "-kernel".into(),
            self.image.kernel.display().to_string(),
            "-initrd".into(),
            self.image.initrd.display().to_string(),
            "-append".into(),
            format!("console=ttyS0 panic=-1 quiet livemig.load={}", self.load),
            "-chardev".into(),
            format!("file,id=ser0,path={}", self.serial_path().display()),
            "-serial".into(),
            "chardev:ser0".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", self.qmp_path().display()),
        ]);
        if let Some(uri) = &self.incoming {
            a.extend(["-incoming".into(), uri.clone()]);
        }
        a
    }

    pub fn qmp_path(&self) -> PathBuf {
        self.dir.join(format!("{}.qmp", self.name))
    }

    pub fn serial_path(&self) -> PathBuf {
        self.dir.join(format!("{}.serial", self.name))
    }

    fn stderr_path(&self) -> PathBuf {
        self.dir.join(format!("{}.stderr", self.name))
    }
}

/// A running QEMU; killed when dropped.
#[derive(Debug)]
pub struct Vm {
    pub spec: VmSpec,
    /// `None` once detached: QEMU then outlives this handle.
    child: Option<Child>,
}

impl Vm {
    /// Starts QEMU and waits (at most `wait`) for its QMP socket.
    pub async fn spawn(spec: VmSpec, wait: Duration) -> Result<Vm, VmError> {
        let qemu = qemu_binary();
        for p in [spec.qmp_path(), spec.serial_path()] {
            let _ = std::fs::remove_file(p);
        }
        let stderr =
            std::fs::File::create(spec.stderr_path()).map_err(|source| VmError::Spawn {
                qemu: qemu.clone(),
                source,
            })?;
        let child = Command::new(&qemu)
            .args(spec.args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| VmError::Spawn {
                qemu: qemu.clone(),
                source,
            })?;
        let mut vm = Vm {
            spec,
            child: Some(child),
        };
        let until = tokio::time::Instant::now() + wait;
        loop {
            if vm.spec.qmp_path().exists() {
                return Ok(vm);
            }
            if let Some(Ok(Some(_))) = vm.child.as_mut().map(Child::try_wait) {
                return Err(VmError::Exited {
                    name: vm.spec.name.clone(),
                    stderr: std::fs::read_to_string(vm.spec.stderr_path())
                        .unwrap_or_default()
                        .trim()
                        .to_string(),
                });
            }
            if tokio::time::Instant::now() >= until {
                return Err(VmError::NoSocket {
                    name: vm.spec.name.clone(),
                    path: vm.spec.qmp_path(),
                    wait,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A QMP session to this VM.
    pub async fn qmp(&self) -> Result<QmpClient, VmError> {
        QmpClient::connect(&self.spec.qmp_path(), crate::qmp::DEFAULT_TIMEOUT)
            .await
            .map_err(|source| VmError::Qmp {
                name: self.spec.name.clone(),
                source,
            })
    }

    /// The serial console so far (lossy UTF-8; empty if nothing was written yet).
    pub fn console(&self) -> String {
        std::fs::read(self.spec.serial_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last heartbeat on the console, if any (complete lines only: a line being written
    /// may show a prefix of its number).
    pub fn last_heartbeat(&self) -> Option<u64> {
        heartbeat::numbers(heartbeat::complete_lines(&self.console()))
            .last()
            .copied()
    }

    /// Waits until the console shows a heartbeat >= `want`.
    pub async fn wait_heartbeat(&self, want: u64, wait: Duration) -> Result<u64, VmError> {
        let until = tokio::time::Instant::now() + wait;
        loop {
            if let Some(n) = self.last_heartbeat().filter(|&n| n >= want) {
                return Ok(n);
            }
            if tokio::time::Instant::now() >= until {
                let console = self.console();
                let tail: String = console
                    .lines()
                    .rev()
                    .take(3)
                    .collect::<Vec<_>>()
                    .join(" | ");
                return Err(VmError::NoHeartbeat {
                    name: self.spec.name.clone(),
                    want,
                    wait,
                    tail,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// QEMU's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Kills QEMU (SIGKILL) and reaps it (nothing once detached).
    pub async fn kill(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill().await;
        }
    }

    /// Sends SIGKILL without waiting (a synchronous caller; [`Vm::is_alive`] reaps it later).
    pub fn start_kill(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
    }

    /// Whether QEMU is still alive (as far as this handle knows: false once detached).
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// Lets QEMU outlive this handle: it is no longer killed when the handle is dropped (a
    /// stopping agent leaves a guest whose hand-over is in doubt running as it is).
    pub fn detach(&mut self) {
        if let Some(c) = self.child.take() {
            // Dropping the handle would kill QEMU (`kill_on_drop`); forgetting it does not.
            std::mem::forget(c);
        }
    }
}

/// A free TCP port on 127.0.0.1 (bound once and released; good enough for tests).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_use_tcg_and_incoming_only_on_the_destination() {
        let img = GuestImage {
            kernel: "/k".into(),
            initrd: "/i".into(),
        };
        let src = VmSpec::new("src", &img, "idle", Path::new("/tmp/x"));
        let a = src.args();
        assert!(a.windows(2).any(|w| w[0] == "-accel" && w[1] == "tcg"));
        assert!(!a.iter().any(|x| x.contains("host") || x == "-incoming"));
        assert!(a.iter().any(|x| x.ends_with("livemig.load=idle")));
        let dst = src.destination("dst", "tcp:127.0.0.1:4444");
        let b = dst.args();
        assert!(b
            .windows(2)
            .any(|w| w[0] == "-incoming" && w[1] == "tcp:127.0.0.1:4444"));
        assert_eq!(dst.qmp_path(), Path::new("/tmp/x/dst.qmp"));
    }

    #[test]
    fn guest_memory_is_not_a_multiple_of_256_kib() {
        assert_ne!(GUEST_MEMORY_BYTES as u64 % (256 * 1024), 0);
        assert_eq!(GUEST_MEMORY_BYTES as u64 % 8192, 0);
    }
}
