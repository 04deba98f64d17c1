//! A paused copy of a guest saved to a file, when a hand-over's outcome is unknown and the
//! process that holds the copy must end: nothing is lost, nothing runs, and `livemig resolve`
//! resumes or discards it later.
//!
//! Format: `LMHOLD1\n`, a u32 (LE) length and that much JSON ([`HoldInfo`]), a u32 length and
//! the guest's state blob, then the guest's memory, page after page. The file is written to a
//! temporary name, synced and renamed (mode 0600), so a crash never leaves half a file under
//! the final name; on load every length is capped and the memory digest is checked.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::guest::{Guest, GuestError, SimGuest};
use crate::memory::{GuestMemory, MemoryError};
use crate::wire::{MAX_STATE, PAGE_SIZE};

/// First bytes of a hold file.
pub const MAGIC: &[u8; 8] = b"LMHOLD1\n";
/// Longest metadata accepted.
pub const MAX_INFO: usize = 64 << 10;

/// The role of a hold file saved after a failed audit: the destination runs the guest (the
/// migration completed), so this copy must never be resumed; it is evidence of the pages the
/// dirty log missed.
pub const AUDIT_ROLE: &str = "audit";

/// What a hold file says about its copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldInfo {
    /// `source` or `destination`: which end of the hand-over saved it.
    pub role: String,
    /// The migration's session id (hex), the same on both ends.
    pub session: String,
    /// The other end (an address), when known.
    pub peer: Option<String>,
    /// Bytes of guest memory.
    pub memory_bytes: u64,
    /// xxh3 digest of the memory (checked on load).
    pub digest: u64,
    /// The guest's self-check counter when it was paused.
    pub self_check: u64,
    /// Why the outcome is unknown.
    pub reason: String,
    /// Seconds since the Unix epoch when it was saved.
    pub saved_at_unix_s: u64,
}

/// Why a hold file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    #[error("cannot write hold file {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read hold file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a livemig hold file: {reason}")]
    Format { path: String, reason: &'static str },
    #[error("hold file {path}: the memory does not match its digest (damaged)")]
    Digest { path: String },
    #[error("hold file {path}: cannot allocate its memory")]
    Memory {
        path: String,
        #[source]
        source: MemoryError,
    },
    #[error("hold file {path}: cannot restore the guest")]
    Restore {
        path: String,
        #[source]
        source: GuestError,
    },
}

/// Saves `guest` (paused) with `info` to `path`: temporary name, sync, rename.
pub fn save(path: &Path, guest: &dyn Guest, info: &HoldInfo) -> Result<(), HoldError> {
    use std::os::unix::fs::OpenOptionsExt;
    let shown = path.display().to_string();
    let err = |source| HoldError::Write {
        path: shown.clone(),
        source,
    };
    let tmp = tmp_name(path);
    let write = || -> std::io::Result<()> {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        let mut w = std::io::BufWriter::new(f);
        let json = serde_json::to_vec(info).map_err(std::io::Error::other)?;
        let blob = guest.state();
        w.write_all(MAGIC)?;
        w.write_all(&(json.len() as u32).to_le_bytes())?;
        w.write_all(&json)?;
        w.write_all(&(blob.len() as u32).to_le_bytes())?;
        w.write_all(&blob)?;
        let mem = guest.memory();
        for p in 0..mem.pages() {
            let mut page = [0u8; PAGE_SIZE];
            mem.with_page(p, |b| page.copy_from_slice(b))
                .map_err(std::io::Error::other)?;
            w.write_all(&page)?;
        }
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename itself must survive a power loss before anyone is told the copy is safe.
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::fs::File::open(dir)?.sync_all()?;
        Ok(())
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })
}

fn tmp_name(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Reads the metadata of a hold file without its memory.
pub fn info(path: &Path) -> Result<HoldInfo, HoldError> {
    let mut f = open(path)?;
    read_info(&mut f, path).map(|(i, _)| i)
}

fn open(path: &Path) -> Result<std::io::BufReader<std::fs::File>, HoldError> {
    std::fs::File::open(path)
        .map(std::io::BufReader::new)
        .map_err(|source| HoldError::Read {
            path: path.display().to_string(),
            source,
        })
}

fn read_info(r: &mut impl Read, path: &Path) -> Result<(HoldInfo, usize), HoldError> {
    let shown = path.display().to_string();
    let bad = |reason| HoldError::Format {
        path: shown.clone(),
        reason,
    };
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic).map_err(|_| bad("too short"))?;
    if &magic != MAGIC {
        return Err(bad("wrong magic"));
    }
    let len = read_u32(r).ok_or_else(|| bad("too short"))? as usize;
    if len > MAX_INFO {
        return Err(bad("metadata too long"));
    }
    let mut json = vec![0u8; len];
    r.read_exact(&mut json).map_err(|_| bad("too short"))?;
    let info = serde_json::from_slice(&json).map_err(|_| bad("metadata is not valid JSON"))?;
    Ok((info, len))
}

fn read_u32(r: &mut impl Read) -> Option<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b).ok()?;
    Some(u32::from_le_bytes(b))
}

/// Loads a hold file: its metadata and the guest, paused, its memory checked against the
/// saved digest.
pub fn load(path: &Path, max_memory: u64) -> Result<(HoldInfo, SimGuest), HoldError> {
    let shown = path.display().to_string();
    let mut r = open(path)?;
    let (info, json_len) = read_info(&mut r, path)?;
    let bad = |reason| HoldError::Format {
        path: shown.clone(),
        reason,
    };
    let len = read_u32(&mut r).ok_or_else(|| bad("too short"))? as usize;
    if len > MAX_STATE {
        return Err(bad("state blob too long"));
    }
    let mut blob = vec![0u8; len];
    r.read_exact(&mut blob).map_err(|_| bad("too short"))?;
    // The file must hold all the memory it claims before any of it is allocated.
    let file_len = std::fs::metadata(path)
        .map_err(|source| HoldError::Read {
            path: shown.clone(),
            source,
        })?
        .len();
    let header = (MAGIC.len() + 4 + json_len + 4 + len) as u64;
    if file_len
        .checked_sub(header)
        .is_none_or(|rest| rest < info.memory_bytes)
    {
        return Err(bad("shorter than the memory it claims"));
    }
    let memory =
        GuestMemory::new(info.memory_bytes, max_memory).map_err(|source| HoldError::Memory {
            path: shown.clone(),
            source,
        })?;
    let mut page = [0u8; PAGE_SIZE];
    for p in 0..memory.pages() {
        r.read_exact(&mut page)
            .map_err(|_| bad("memory cut short"))?;
        memory
            .write_page(p, &page)
            .map_err(|source| HoldError::Memory {
                path: shown.clone(),
                source,
            })?;
    }
    if r.read(&mut page).map_or(true, |n| n != 0) {
        return Err(bad("bytes after the memory"));
    }
    if memory.digest() != info.digest {
        return Err(HoldError::Digest { path: shown });
    }
    let guest = SimGuest::restore(memory, &blob).map_err(|source| HoldError::Restore {
        path: shown,
        source,
    })?;
    Ok((info, guest))
}

/// Seconds since the Unix epoch now.
pub fn now_unix_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::{InitialContent, SimGuestConfig};

    #[test]
    fn a_saved_copy_loads_paused_and_identical_and_damage_is_found() {
        let g = SimGuest::start(
            &SimGuestConfig {
                memory_bytes: 2 << 20,
                workload: "uniform:rate=4MiB/s".into(),
                content: InitialContent::Random,
                seed: 3,
            },
            u64::MAX,
        )
        .expect("guest");
        std::thread::sleep(std::time::Duration::from_millis(30));
        g.pause();
        let info = HoldInfo {
            role: "source".into(),
            session: "00".into(),
            peer: None,
            memory_bytes: g.memory().bytes(),
            digest: g.memory().digest(),
            self_check: g.self_check().0,
            reason: "test".into(),
            saved_at_unix_s: now_unix_s(),
        };
        let dir = std::env::temp_dir().join(format!("livemig-hold-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let p = dir.join("g.lmhold");
        save(&p, &g, &info).expect("save");
        assert!(!tmp_name(&p).exists(), "renamed into place");
        let (back, h) = load(&p, u64::MAX).expect("load");
        assert_eq!(back, info);
        assert!(!h.is_running(), "a held copy loads paused");
        assert_eq!(h.memory().digest(), g.memory().digest());
        assert_eq!(h.self_check().0, info.self_check);
        // One flipped byte in the memory is found.
        let mut bytes = std::fs::read(&p).expect("read");
        let at = bytes.len() - 100;
        bytes[at] ^= 1;
        std::fs::write(&p, &bytes).expect("write");
        assert!(matches!(load(&p, u64::MAX), Err(HoldError::Digest { .. })));
        // Cut short: refused before its memory is allocated.
        std::fs::write(&p, &bytes[..bytes.len() / 2]).expect("write");
        assert!(matches!(load(&p, u64::MAX), Err(HoldError::Format { .. })));
        std::fs::write(&p, b"nonsense").expect("write");
        assert!(matches!(load(&p, u64::MAX), Err(HoldError::Format { .. })));
        let _ = std::fs::remove_dir_all(dir);
    }
}
