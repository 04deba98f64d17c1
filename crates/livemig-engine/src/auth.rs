//! The shared key, nonces, the HMAC-SHA256 proofs of the handshake and the session key that
//! authenticates the hand-over (`State`, `Confirm`, `Ack`).

use std::io::{Read, Write};
use std::path::Path;

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::wire::{Message, MAC_LEN, NONCE_LEN};

/// Bytes of a key.
pub const KEY_LEN: usize = 32;

/// A shared migration key (32 bytes, stored as 64 hex digits).
#[derive(Clone, PartialEq, Eq)]
pub struct Key([u8; KEY_LEN]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

/// Why a key could not be read, written or made.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write key file {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("key file {path} must hold exactly 64 hex digits (32 bytes)")]
    Format { path: String },
    #[error("cannot read random bytes from /dev/urandom")]
    Random(#[source] std::io::Error),
}

/// Fills `buf` from the kernel's random source.
pub fn random_bytes(buf: &mut [u8]) -> Result<(), KeyError> {
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .map_err(KeyError::Random)
}

/// A fresh handshake nonce.
pub fn nonce() -> Result<[u8; NONCE_LEN], KeyError> {
    let mut n = [0u8; NONCE_LEN];
    random_bytes(&mut n)?;
    Ok(n)
}

/// Which end proves its knowledge of the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Source,
    Destination,
}

impl Key {
    /// A key from its bytes.
    pub fn from_bytes(b: [u8; KEY_LEN]) -> Key {
        Key(b)
    }

    /// A fresh random key.
    pub fn generate() -> Result<Key, KeyError> {
        let mut b = [0u8; KEY_LEN];
        random_bytes(&mut b)?;
        Ok(Key(b))
    }

    /// The key as 64 hex digits.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses 64 hex digits (surrounding whitespace allowed).
    pub fn from_hex(s: &str) -> Option<Key> {
        let s = s.trim();
        if s.len() != 2 * KEY_LEN || !s.is_ascii() {
            return None;
        }
        let mut b = [0u8; KEY_LEN];
        for (i, out) in b.iter_mut().enumerate() {
            *out = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Key(b))
    }

    /// Reads a key file.
    pub fn load(path: &Path) -> Result<Key, KeyError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: shown.clone(),
            source,
        })?;
        Key::from_hex(&text).ok_or(KeyError::Format { path: shown })
    }

    /// Writes the key file, readable by its owner only.
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        use std::os::unix::fs::OpenOptionsExt;
        let shown = path.display().to_string();
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .and_then(|mut f| writeln!(f, "{}", self.to_hex()))
            .map_err(|source| KeyError::Write {
                path: shown,
                source,
            })
    }

    fn mac(&self, role: Role, source_nonce: &[u8], dest_nonce: &[u8]) -> Hmac<Sha256> {
        let mut m = hmac_with(&self.0);
        m.update(match role {
            Role::Source => b"livemig source v1",
            Role::Destination => b"livemig destination v1",
        });
        m.update(source_nonce);
        m.update(dest_nonce);
        m
    }

    /// The proof `role` sends: HMAC-SHA256(key, role label || source nonce || dest nonce).
    pub fn prove(&self, role: Role, source_nonce: &[u8], dest_nonce: &[u8]) -> [u8; MAC_LEN] {
        self.mac(role, source_nonce, dest_nonce)
            .finalize()
            .into_bytes()
            .into()
    }

    /// Checks a proof in constant time.
    pub fn verify(&self, role: Role, source_nonce: &[u8], dest_nonce: &[u8], tag: &[u8]) -> bool {
        self.mac(role, source_nonce, dest_nonce)
            .verify_slice(tag)
            .is_ok()
    }

    /// The session key: HMAC-SHA256(key, "livemig session v2" || nonce_S || nonce_D).
    pub fn session(&self, source_nonce: &[u8], dest_nonce: &[u8]) -> SessionKey {
        let mut m = hmac_with(&self.0);
        m.update(SESSION_LABEL);
        m.update(source_nonce);
        m.update(dest_nonce);
        SessionKey(m.finalize().into_bytes().into())
    }
}

/// Label of the session key derivation.
pub const SESSION_LABEL: &[u8] = b"livemig session v2";

fn hmac_with(key: &[u8; KEY_LEN]) -> Hmac<Sha256> {
    // HMAC pads a short key with zeros to the block size (64 bytes for SHA-256); padding it
    // here gives the same MAC through the infallible constructor.
    let mut block = [0u8; 64];
    block[..KEY_LEN].copy_from_slice(key);
    <Hmac<Sha256> as KeyInit>::new(&block.into())
}

/// The per-connection key that authenticates the hand-over messages.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKey([u8; KEY_LEN]);

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(..)")
    }
}

impl SessionKey {
    /// HMAC-SHA256(session key, type u16 || round u32 || payload without the tag), `None`
    /// for a message that carries no tag.
    fn mac(&self, round: u32, m: &Message) -> Option<Hmac<Sha256>> {
        let body = m.signed_body()?;
        let mut h = hmac_with(&self.0);
        h.update(&(m.msg_type() as u16).to_le_bytes());
        h.update(&round.to_le_bytes());
        h.update(&body);
        Some(h)
    }

    /// Sets the tag of `m` for `round` (the number of pre-copy rounds of the session); a
    /// message without a tag is left as it is.
    pub fn seal(&self, round: u32, mut m: Message) -> Message {
        if let Some(h) = self.mac(round, &m) {
            if let Some(t) = m.tag_mut() {
                *t = h.finalize().into_bytes().into();
            }
        }
        m
    }

    /// Whether the tag of `m` is right for `round`, checked in constant time; false for a
    /// message that carries no tag.
    pub fn verify(&self, round: u32, m: &Message) -> bool {
        match (self.mac(round, m), m.tag()) {
            (Some(h), Some(t)) => h.verify_slice(t).is_ok(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_verify_only_with_the_same_key_role_and_nonces() {
        let k = Key::from_bytes([1; KEY_LEN]);
        let other = Key::from_bytes([2; KEY_LEN]);
        let (a, b) = ([3u8; 32], [4u8; 32]);
        let tag = k.prove(Role::Source, &a, &b);
        assert!(k.verify(Role::Source, &a, &b, &tag));
        assert!(!other.verify(Role::Source, &a, &b, &tag));
        assert!(!k.verify(Role::Destination, &a, &b, &tag));
        assert!(!k.verify(Role::Source, &b, &a, &tag));
    }

    #[test]
    fn the_mac_is_standard_hmac_sha256() {
        let k = Key::from_bytes([9; KEY_LEN]);
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&[9; KEY_LEN]).expect("any length");
        m.update(b"livemig source v1");
        m.update(&[1; 32]);
        m.update(&[2; 32]);
        let want: [u8; MAC_LEN] = m.finalize().into_bytes().into();
        assert_eq!(k.prove(Role::Source, &[1; 32], &[2; 32]), want);
    }

    #[test]
    fn hand_over_tags_bind_the_session_type_round_and_payload() {
        let k = Key::from_bytes([1; KEY_LEN]);
        let s = k.session(&[3; 32], &[4; 32]);
        let m = s.seal(
            5,
            Message::Confirm {
                ok: true,
                digest: 42,
                tag: [0; MAC_LEN],
            },
        );
        assert!(s.verify(5, &m));
        assert!(!s.verify(6, &m), "another round");
        assert!(!k.session(&[4; 32], &[3; 32]).verify(5, &m), "other nonces");
        assert!(!Key::from_bytes([2; KEY_LEN])
            .session(&[3; 32], &[4; 32])
            .verify(5, &m));
        let Message::Confirm { tag, .. } = m else {
            panic!("confirm")
        };
        let flipped = Message::Confirm {
            ok: true,
            digest: 43,
            tag,
        };
        assert!(!s.verify(5, &flipped), "another payload");
        let ack = s.seal(5, Message::Ack { tag: [0; MAC_LEN] });
        assert!(s.verify(5, &ack));
        let Message::Ack { tag } = ack else {
            panic!("ack")
        };
        // Same tag, another type.
        assert!(!s.verify(
            5,
            &Message::State {
                digest: 0,
                tag,
                blob: Vec::new()
            }
        ));
        assert!(!s.verify(5, &Message::Ready), "no tag");
    }

    #[test]
    fn key_files_round_trip_and_bad_ones_are_refused() {
        let dir = tempfile_dir();
        let p = dir.join("k");
        let k = Key::generate().expect("random");
        k.save(&p).expect("save");
        assert_eq!(Key::load(&p).expect("load"), k);
        std::fs::write(&p, "abc").expect("write");
        assert!(matches!(Key::load(&p), Err(KeyError::Format { .. })));
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let mut n = [0u8; 8];
        random_bytes(&mut n).expect("random");
        let d = std::env::temp_dir().join(format!("livemig-key-{}", u64::from_le_bytes(n)));
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }
}
