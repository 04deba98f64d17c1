//! Migration keys: 32 random bytes per migration, from the kernel, as 64 hex digits.

use std::io::Read;

use livemig_api::MigrationKey;

/// Why no key could be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot read random bytes from /dev/urandom")]
pub struct KeyError(#[source] std::io::Error);

/// A fresh key, never reused: each migration's data stream is accepted with its own key only.
pub fn generate() -> Result<MigrationKey, KeyError> {
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(KeyError)?;
    Ok(MigrationKey(b.iter().map(|x| format!("{x:02x}")).collect()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_are_well_formed_and_differ() {
        let a = super::generate().expect("a key");
        let b = super::generate().expect("a key");
        assert!(a.is_well_formed() && b.is_well_formed());
        assert_ne!(a, b);
    }
}
