//! The shared key, nonces, the HMAC-SHA256 proofs of the handshake (over its whole
//! [`Transcript`], the negotiated version included) and the session [`Channel`] that tags every
//! message after it (keyed BLAKE3).

use std::io::{Read, Write};
use std::path::Path;

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::wire::{
    BatchWriter, Frame, Message, MsgType, MAC_LEN, NONCE_LEN, SESSION_ID_LEN, TAG_LEN,
};

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
pub fn nonce() -> Result<[u8; crate::wire::NONCE_LEN], KeyError> {
    let mut n = [0u8; crate::wire::NONCE_LEN];
    random_bytes(&mut n)?;
    Ok(n)
}

/// What the handshake's proofs and the session key cover: the source's whole `Hello` payload
/// (its version range, nonce, geometry, compression, mode) and the destination's answer to it
/// (the version it chose and its nonce: the `Challenge` payload without the proof). Rewriting
/// the offered range, or the choice, on the path makes both proofs fail.
#[derive(Debug, Clone, Copy)]
pub struct Transcript<'a> {
    /// The `Hello` payload as this end sent or received it.
    pub hello: &'a [u8],
    /// The version the destination chose.
    pub version: u16,
    /// The destination's nonce.
    pub dest_nonce: &'a [u8; NONCE_LEN],
}

impl Transcript<'_> {
    /// Feeds the transcript, each part prefixed with its length.
    fn feed(&self, m: &mut Hmac<Sha256>) {
        let mut answer = [0u8; 2 + NONCE_LEN];
        answer[..2].copy_from_slice(&self.version.to_le_bytes());
        answer[2..].copy_from_slice(self.dest_nonce);
        m.update(&(self.hello.len() as u32).to_le_bytes());
        m.update(self.hello);
        m.update(&(answer.len() as u32).to_le_bytes());
        m.update(&answer);
    }
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
        // Only hex digits: `u8::from_str_radix` alone would take "+f" as 0x0f.
        if s.len() != 2 * KEY_LEN || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
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

    fn mac(&self, role: Role, t: &Transcript<'_>) -> Hmac<Sha256> {
        let mut m = hmac_with(&self.0);
        m.update(match role {
            Role::Source => b"livemig v3 source",
            Role::Destination => b"livemig v3 destination",
        });
        t.feed(&mut m);
        m
    }

    /// The proof `role` sends: HMAC-SHA256(key, role label || transcript). A peer on the path
    /// that rewrites any field of `Hello` (the offered versions included) or the chosen
    /// version makes both proofs fail.
    pub fn prove(&self, role: Role, t: &Transcript<'_>) -> [u8; MAC_LEN] {
        self.mac(role, t).finalize().into_bytes().into()
    }

    /// Checks a proof in constant time.
    pub fn verify(&self, role: Role, t: &Transcript<'_>, tag: &[u8]) -> bool {
        self.mac(role, t).verify_slice(tag).is_ok()
    }

    /// The session key: HMAC-SHA256(key, "livemig v3 session" || transcript), for the
    /// transcript's negotiated version.
    pub fn session(&self, t: &Transcript<'_>) -> SessionKey {
        let mut m = hmac_with(&self.0);
        m.update(SESSION_LABEL);
        t.feed(&mut m);
        SessionKey {
            key: m.finalize().into_bytes().into(),
            version: t.version,
        }
    }
}

/// Label of the session key derivation.
pub const SESSION_LABEL: &[u8] = b"livemig v3 session";

fn hmac_with(key: &[u8; KEY_LEN]) -> Hmac<Sha256> {
    // HMAC pads a short key with zeros to the block size (64 bytes for SHA-256); padding it
    // here gives the same MAC through the infallible constructor.
    let mut block = [0u8; 64];
    block[..KEY_LEN].copy_from_slice(key);
    <Hmac<Sha256> as KeyInit>::new(&block.into())
}

/// The per-connection key that tags every control message after the handshake, and the
/// protocol version negotiated for the connection.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKey {
    key: [u8; KEY_LEN],
    version: u16,
}

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(..)")
    }
}

impl SessionKey {
    /// The session's public name (first bytes of HMAC(session key, "livemig v3 id")): how a
    /// reconnecting source names the migration it settles. Knowing it grants nothing.
    pub fn id(&self) -> [u8; SESSION_ID_LEN] {
        let mut h = hmac_with(&self.key);
        h.update(b"livemig v3 id");
        let full: [u8; MAC_LEN] = h.finalize().into_bytes().into();
        let mut id = [0u8; SESSION_ID_LEN];
        id.copy_from_slice(&full[..SESSION_ID_LEN]);
        id
    }

    /// The tag: keyed BLAKE3 (a MAC, keyed with the session key) over direction u8 ||
    /// sequence u64 || type u16 || body. BLAKE3 rather than HMAC-SHA256 because every page
    /// batch is tagged: it costs a fraction of the copy it protects.
    fn mac(&self, dir: Role, seq: u64, t: MsgType, body: &[u8]) -> blake3::Hash {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(&[match dir {
            Role::Source => 1,
            Role::Destination => 2,
        }]);
        h.update(&seq.to_le_bytes());
        h.update(&(t as u16).to_le_bytes());
        h.update(body);
        h.finalize()
    }
}

/// Why a received control message was refused by the session: its tag does not verify, or its
/// header names another version than the session's (the tag does not cover the header).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the `{msg:?}` message does not carry a valid session tag (forged, replayed, reordered or tampered with on the way?)")]
pub struct Forged {
    pub msg: MsgType,
}

/// One end of an authenticated session: tags what it sends and checks what it receives, each
/// direction with its own sequence number, so that a message cannot be forged, altered,
/// replayed, reordered, dropped unnoticed (the next one fails) or reflected back.
#[derive(Debug, Clone)]
pub struct Channel {
    key: SessionKey,
    me: Role,
    sent: u64,
    received: u64,
}

impl Channel {
    /// The channel of `me` under `key`.
    pub fn new(key: SessionKey, me: Role) -> Channel {
        Channel {
            key,
            me,
            sent: 0,
            received: 0,
        }
    }

    /// The session id.
    pub fn id(&self) -> [u8; SESSION_ID_LEN] {
        self.key.id()
    }

    /// The protocol version negotiated for the session: every frame sent carries it, and
    /// every tagged frame received must.
    pub fn version(&self) -> u16 {
        self.key.version
    }

    /// The tag of the next message of type `t` with `body`, consuming a sequence number.
    pub fn tag_next(&mut self, t: MsgType, body: &[u8]) -> [u8; TAG_LEN] {
        let tag = *self.key.mac(self.me, self.sent, t, body).as_bytes();
        self.sent += 1;
        tag
    }

    /// The frame of `m` in the session's version, tagged with the next sequence number if its
    /// type is tagged.
    pub fn seal(&mut self, m: &Message) -> Vec<u8> {
        let t = m.msg_type();
        if !t.tagged() {
            return m.encode_as(self.version());
        }
        let tag = self.tag_next(t, &m.body_ref());
        m.encode_tagged_as(self.version(), &tag)
    }

    /// The finished `Pages` frame of `batch` in the session's version, tagged with the next
    /// sequence number.
    pub fn seal_pages<'b>(&mut self, batch: &'b mut BatchWriter) -> &'b [u8] {
        let version = self.version();
        batch.frame_with_tag(version, |body| self.tag_next(MsgType::Pages, body))
    }

    /// Checks a received frame: a tagged type must name the session's version and carry the
    /// tag of the peer's next sequence number (constant-time check); untagged types pass as
    /// they are.
    pub fn open(&mut self, f: Frame) -> Result<Message, Forged> {
        let t = f.msg.msg_type();
        if !t.tagged() {
            return Ok(f.msg);
        }
        let peer = match self.me {
            Role::Source => Role::Destination,
            Role::Destination => Role::Source,
        };
        // `blake3::Hash` compares in constant time.
        let ok = f.version == self.version()
            && f.tag.is_some_and(|tag| {
                self.key.mac(peer, self.received, t, &f.msg.body_ref()) == blake3::Hash::from(tag)
            });
        if !ok {
            return Err(Forged { msg: t });
        }
        self.received += 1;
        Ok(f.msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::read_within;

    fn tr<'a>(hello: &'a [u8], version: u16, nd: &'a [u8; NONCE_LEN]) -> Transcript<'a> {
        Transcript {
            hello,
            version,
            dest_nonce: nd,
        }
    }

    #[test]
    fn proofs_verify_only_with_the_same_key_role_and_transcript() {
        let k = Key::from_bytes([1; KEY_LEN]);
        let other = Key::from_bytes([2; KEY_LEN]);
        let (hello, nd) = ([3u8; 50], [4u8; 32]);
        let t = tr(&hello, 3, &nd);
        let tag = k.prove(Role::Source, &t);
        assert!(k.verify(Role::Source, &t, &tag));
        assert!(!other.verify(Role::Source, &t, &tag));
        assert!(!k.verify(Role::Destination, &t, &tag));
        let mut rewritten = hello;
        rewritten[20] ^= 1;
        assert!(
            !k.verify(Role::Source, &tr(&rewritten, 3, &nd), &tag),
            "a rewritten hello"
        );
        // The offered range is the start of the hello: rewriting it (a downgrade) is rewriting
        // the hello.
        let mut narrowed = hello;
        narrowed[2..4].copy_from_slice(&2u16.to_le_bytes());
        assert!(!k.verify(Role::Source, &tr(&narrowed, 3, &nd), &tag));
        assert!(
            !k.verify(Role::Source, &tr(&hello, 4, &nd), &tag),
            "another chosen version"
        );
        assert!(!k.verify(Role::Source, &tr(&hello, 3, &[5u8; 32]), &tag));
        assert_ne!(
            k.session(&tr(&hello, 3, &nd)).id(),
            k.session(&tr(&hello, 4, &nd)).id(),
            "the session key depends on the version"
        );
    }

    #[test]
    fn the_mac_is_standard_hmac_sha256() {
        let k = Key::from_bytes([9; KEY_LEN]);
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&[9; KEY_LEN]).expect("any length");
        m.update(b"livemig v3 source");
        m.update(&2u32.to_le_bytes());
        m.update(&[1; 2]);
        m.update(&34u32.to_le_bytes());
        m.update(&3u16.to_le_bytes());
        m.update(&[2; 32]);
        let want: [u8; MAC_LEN] = m.finalize().into_bytes().into();
        assert_eq!(k.prove(Role::Source, &tr(&[1; 2], 3, &[2; 32])), want);
    }

    fn frame(bytes: &[u8]) -> Frame {
        let mut r = bytes;
        read_within(&mut r, &mut Vec::new(), None).expect("decodes")
    }

    #[test]
    fn the_channel_binds_session_direction_order_and_payload() {
        let k = Key::from_bytes([1; KEY_LEN]);
        let sk = k.session(&tr(&[3; 50], 3, &[4; 32]));
        let mut src = Channel::new(sk.clone(), Role::Source);
        let mut dst = Channel::new(sk.clone(), Role::Destination);
        assert_eq!(src.version(), 3);
        let a = src.seal(&Message::StopCopy { pages: 3 });
        let b = src.seal(&Message::State {
            digest: 7,
            blob: vec![1],
        });
        // Out of order: the second message does not carry sequence number 0.
        assert!(dst.clone().open(frame(&b)).is_err(), "reordered");
        // A header naming another version than the session's (the tag does not cover it).
        let other_version = Frame {
            version: 4,
            ..frame(&a)
        };
        assert!(dst.clone().open(other_version).is_err(), "another version");
        assert_eq!(
            dst.open(frame(&a)).expect("first"),
            Message::StopCopy { pages: 3 }
        );
        assert!(dst.clone().open(frame(&a)).is_err(), "replayed");
        let mut flipped = b.clone();
        let last = flipped.len() - 40;
        flipped[last] ^= 1;
        assert!(dst.clone().open(frame(&flipped)).is_err(), "altered");
        assert!(dst.open(frame(&b)).is_ok());
        // Reflected: the destination's own message back at it.
        let c = dst.seal(&Message::Confirm {
            ok: true,
            digest: 7,
        });
        assert!(dst.clone().open(frame(&c)).is_err(), "reflected");
        assert!(src.open(frame(&c)).is_ok());
        // Another session (other nonces, another version) or another key.
        let mut other = Channel::new(k.session(&tr(&[3; 50], 3, &[5; 32])), Role::Destination);
        assert!(other.open(frame(&a)).is_err());
        let mut other = Channel::new(k.session(&tr(&[3; 50], 4, &[4; 32])), Role::Destination);
        assert!(other
            .open(Frame {
                version: 4,
                ..frame(&a)
            })
            .is_err());
        // Untagged messages pass; an all-zero tag never verifies.
        let mut fresh = Channel::new(sk, Role::Destination);
        assert!(fresh.open(frame(&Message::Wait.encode())).is_err());
        assert!(fresh.open(frame(&Message::error(1, "x").encode())).is_ok());
        assert_ne!(k.session(&tr(&[1; 50], 3, &[4; 32])).id(), fresh.id());
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
        // A sign where a digit belongs is refused, not read as another key.
        let mut hex = k.to_hex();
        hex.replace_range(0..1, "+");
        std::fs::write(&p, &hex).expect("write");
        assert!(matches!(Key::load(&p), Err(KeyError::Format { .. })));
        assert!(Key::from_hex(&"+f".repeat(32)).is_none());
        assert!(Key::from_hex(&"0f".repeat(32)).is_some());
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
