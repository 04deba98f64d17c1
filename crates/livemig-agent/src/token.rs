//! The bearer token: loaded from a file the owner alone can read, compared in constant time.

use std::path::Path;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The longest token file read (a token is a line; anything longer is not one).
pub const MAX_TOKEN_FILE_BYTES: u64 = 4096;

/// Why the token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the token file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the token file {path} is empty")]
    Empty { path: String },
    #[error("the token file {path} is larger than {MAX_TOKEN_FILE_BYTES} bytes")]
    TooLarge { path: String },
    #[error("the token file {path} is not UTF-8 text")]
    NotText { path: String },
    #[error("the token file {path} can be read by group or others (mode {mode:o}): chmod 600 it")]
    Exposed { path: String, mode: u32 },
}

/// The token every request but `/healthz` must carry (`Authorization: Bearer <token>`).
/// Only its SHA-256 is kept; requests are compared digest to digest, so neither the token's
/// content nor its length shows in the time a comparison takes.
#[derive(Clone)]
pub struct Token {
    digest: [u8; 32],
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// A token from its text (surrounding whitespace trimmed); `None` if empty.
    pub fn new(text: &str) -> Option<Token> {
        let t = text.trim();
        (!t.is_empty()).then(|| Token {
            digest: Sha256::digest(t.as_bytes()).into(),
        })
    }

    /// Reads the token file: its first line, trimmed. Refused when empty, larger than
    /// [`MAX_TOKEN_FILE_BYTES`], or readable by anyone but its owner (a token others can
    /// read is not a secret).
    pub fn load(path: &Path) -> Result<Token, TokenError> {
        let text = read_secret(path)?;
        Token::new(&text).ok_or(TokenError::Empty {
            path: path.display().to_string(),
        })
    }

    /// Whether an `Authorization` header value carries this token.
    pub fn admits(&self, authorization: Option<&[u8]>) -> bool {
        let Some(value) = authorization else {
            return false;
        };
        let Some(given) = value.strip_prefix(b"Bearer ") else {
            return false;
        };
        let given: [u8; 32] = Sha256::digest(given).into();
        given.ct_eq(&self.digest).into()
    }
}

/// The token's text from the token file (first line, trimmed; the same checks as
/// [`Token::load`]): what the agent's client sends the RMS.
pub fn read_secret(path: &Path) -> Result<String, TokenError> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display().to_string();
    let read = |source| TokenError::Read {
        path: shown.clone(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read)?;
    let mode = file.metadata().map_err(read)?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(TokenError::Exposed {
            path: shown,
            mode: mode & 0o777,
        });
    }
    let mut bytes = Vec::new();
    file.take(MAX_TOKEN_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read)?;
    if bytes.len() as u64 > MAX_TOKEN_FILE_BYTES {
        return Err(TokenError::TooLarge { path: shown });
    }
    let text = String::from_utf8(bytes).map_err(|_| TokenError::NotText {
        path: shown.clone(),
    })?;
    let line = text.lines().next().unwrap_or("").trim();
    if line.is_empty() {
        return Err(TokenError::Empty { path: shown });
    }
    Ok(line.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn file(content: &str, mode: u32) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(f.path(), content).expect("write");
        std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(mode)).expect("chmod");
        f
    }

    #[test]
    fn admits_only_the_exact_bearer_token() {
        let t = Token::new(" s3cret\n").expect("token");
        assert!(t.admits(Some(b"Bearer s3cret")));
        assert!(!t.admits(Some(b"Bearer s3cre")));
        assert!(!t.admits(Some(b"Bearer s3cret ")));
        assert!(!t.admits(Some(b"bearer s3cret")));
        assert!(!t.admits(Some(b"s3cret")));
        assert!(!t.admits(None));
        assert!(Token::new("  \n").is_none());
    }

    #[test]
    fn load_refuses_empty_exposed_and_huge_files() {
        let ok = file("abc\nignored\n", 0o600);
        assert!(Token::load(ok.path())
            .expect("loads")
            .admits(Some(b"Bearer abc")));
        assert!(matches!(
            Token::load(file(" \n", 0o600).path()),
            Err(TokenError::Empty { .. })
        ));
        let e = Token::load(file("abc", 0o644).path()).expect_err("exposed");
        assert!(e.to_string().contains("mode 644"), "{e}");
        assert!(matches!(
            Token::load(file(&"x".repeat(5000), 0o600).path()),
            Err(TokenError::TooLarge { .. })
        ));
        assert!(matches!(
            Token::load(Path::new("/nonexistent/token")),
            Err(TokenError::Read { .. })
        ));
    }
}
