//! `--db URL`: which store to open. `sqlite:PATH` (also `sqlite://PATH`), `sqlite::memory:`,
//! or `postgres://…` / `postgresql://…`.

use std::fmt;
use std::path::PathBuf;

/// Why a `--db` value is not a store URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{url}` is not a store URL: {reason} (expected `sqlite:PATH`, `sqlite::memory:` or `postgres://…`)")]
pub struct UrlError {
    /// The value as given (a PostgreSQL password is hidden).
    pub url: String,
    pub reason: &'static str,
}

/// A parsed `--db` value.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// An SQLite database file (created if absent; its directory must exist).
    Sqlite(PathBuf),
    /// An SQLite database in memory, gone when closed (tests).
    SqliteMemory,
    /// A PostgreSQL connection string, kept as given (`postgres://user[:password]@host[:port]/db[?options]`).
    Postgres(String),
}

impl StoreUrl {
    /// Parses `sqlite:PATH`, `sqlite://PATH`, `sqlite::memory:`, `postgres://…` or
    /// `postgresql://…`.
    pub fn parse(url: &str) -> Result<StoreUrl, UrlError> {
        let err = |reason| UrlError {
            url: redact(url),
            reason,
        };
        if let Some(rest) = url.strip_prefix("sqlite:") {
            if rest == ":memory:" {
                return Ok(StoreUrl::SqliteMemory);
            }
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(err("the path is empty"));
            }
            if path.contains('?') || path.contains('#') {
                return Err(err(
                    "options (`?…`) are not supported: the store sets its own",
                ));
            }
            return Ok(StoreUrl::Sqlite(PathBuf::from(path)));
        }
        for scheme in ["postgres://", "postgresql://"] {
            if let Some(rest) = url.strip_prefix(scheme) {
                if rest.is_empty() {
                    return Err(err("the host is missing"));
                }
                return Ok(StoreUrl::Postgres(url.to_string()));
            }
        }
        if url.is_empty() {
            return Err(err("it is empty"));
        }
        Err(err("unknown scheme"))
    }
}

/// Hides the password of a `scheme://user:password@host/…` URL.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::Sqlite(p) => write!(f, "sqlite:{}", p.display()),
            StoreUrl::SqliteMemory => f.write_str("sqlite::memory:"),
            StoreUrl::Postgres(u) => f.write_str(&redact(u)),
        }
    }
}

/// Shows the URL with its password hidden (it ends up in logs).
impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreUrl({self})")
    }
}

impl std::str::FromStr for StoreUrl {
    type Err = UrlError;
    fn from_str(s: &str) -> Result<StoreUrl, UrlError> {
        StoreUrl::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_forms() {
        let p = |s: &str| StoreUrl::parse(s);
        assert_eq!(
            p("sqlite:/var/lib/livemig/rms.db"),
            Ok(StoreUrl::Sqlite("/var/lib/livemig/rms.db".into()))
        );
        assert_eq!(p("sqlite:rms.db"), Ok(StoreUrl::Sqlite("rms.db".into())));
        assert_eq!(
            p("sqlite:///var/rms.db"),
            Ok(StoreUrl::Sqlite("/var/rms.db".into()))
        );
        assert_eq!(p("sqlite::memory:"), Ok(StoreUrl::SqliteMemory));
    }

    #[test]
    fn postgres_parses_and_hides_its_password() {
        let u = StoreUrl::parse("postgres://rms:s3cret@db.example/livemig").expect("parses");
        assert!(matches!(u, StoreUrl::Postgres(_)));
        assert_eq!(u.to_string(), "postgres://rms:***@db.example/livemig");
        assert!(!format!("{u:?}").contains("s3cret"));
        assert!(StoreUrl::parse("postgresql://db/livemig").is_ok());
    }

    #[test]
    fn clear_errors() {
        for (url, reason) in [
            ("", "it is empty"),
            ("sqlite:", "the path is empty"),
            ("sqlite://", "the path is empty"),
            (
                "sqlite:rms.db?mode=ro",
                "options (`?…`) are not supported: the store sets its own",
            ),
            ("mysql://db", "unknown scheme"),
            ("/var/lib/rms.db", "unknown scheme"),
            ("postgres://", "the host is missing"),
        ] {
            let e = StoreUrl::parse(url).expect_err(url);
            assert_eq!(e.reason, reason, "{url}");
        }
        let e = StoreUrl::parse("mysql://u:pw@db").expect_err("unknown");
        assert!(!e.to_string().contains("pw@"), "{e}");
        assert!(e.to_string().contains("expected `sqlite:PATH`"), "{e}");
    }
}
