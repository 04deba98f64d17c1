//! PEM files: private keys written owner-only and refused when others can read them,
//! certificates written world-readable; every read capped in size.

use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::error::TlsError;

/// The largest PEM file read (a key, a certificate chain or a request is a few KiB).
pub const MAX_PEM_FILE_BYTES: u64 = 64 * 1024;

/// A private key in PEM (PKCS#8). Its `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyPem(String);

impl KeyPem {
    /// Wraps PEM text (not checked here: it is parsed where it is used).
    pub fn new(pem: String) -> KeyPem {
        KeyPem(pem)
    }
    /// The PEM text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for KeyPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyPem(..)")
    }
}

/// Writes a private key readable by its owner only (mode 600, also when the file existed).
pub fn write_key(path: &Path, key: &KeyPem) -> Result<(), TlsError> {
    let err = |source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    // `mode` applies to new files only: an existing file is narrowed before it is written.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(err)?;
    f.write_all(key.as_str().as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)
}

/// Reads a private key; refused when the group or others may read it (a key others can read
/// is not private).
pub fn read_key(path: &Path) -> Result<KeyPem, TlsError> {
    let file = std::fs::File::open(path).map_err(|source| read_err(path, source))?;
    let mode = file
        .metadata()
        .map_err(|source| read_err(path, source))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(TlsError::Exposed {
            path: path.to_path_buf(),
            mode: mode & 0o777,
        });
    }
    read_capped(path, file).map(KeyPem)
}

/// Writes a certificate (or chain) for anyone to read (mode 644).
pub fn write_cert(path: &Path, pem: &str) -> Result<(), TlsError> {
    let err = |source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(path)
        .map_err(err)?;
    f.write_all(pem.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)
}

/// Reads a certificate (or chain, or request) as text.
pub fn read_cert(path: &Path) -> Result<String, TlsError> {
    let file = std::fs::File::open(path).map_err(|source| read_err(path, source))?;
    read_capped(path, file)
}

fn read_err(path: &Path, source: std::io::Error) -> TlsError {
    TlsError::Read {
        path: path.to_path_buf(),
        source,
    }
}

fn read_capped(path: &Path, file: std::fs::File) -> Result<String, TlsError> {
    let mut bytes = Vec::new();
    file.take(MAX_PEM_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| read_err(path, source))?;
    if bytes.len() as u64 > MAX_PEM_FILE_BYTES {
        return Err(TlsError::TooLarge {
            path: path.to_path_buf(),
            max: MAX_PEM_FILE_BYTES,
        });
    }
    String::from_utf8(bytes).map_err(|_| TlsError::NoPem { what: "PEM text" })
}
