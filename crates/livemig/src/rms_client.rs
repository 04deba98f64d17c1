//! The RMS's HTTP API from the operator's side: the connection flags, the bearer token, typed
//! requests and errors that say what to fix.
//!
//! Every answer is decoded twice: into the `livemig-rms` type (so a malformed answer is an
//! error here, not a confusing table) and as plain JSON (what `--json` prints, unchanged).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The longest answer read from the RMS (a migration's view with its report is far smaller).
const MAX_ANSWER_BYTES: usize = 64 << 20;

/// The RMS's address when neither `--rms` nor `LIVEMIG_RMS` gives one.
pub const DEFAULT_RMS: &str = "http://127.0.0.1:7700";

/// Where the RMS is and how to talk to it: shared by every operator command.
#[derive(Debug, Clone, clap::Args)]
pub struct RmsArgs {
    /// The RMS's base URL: https:// for an RMS with a CA (give --ca-file), http:// otherwise.
    #[arg(long, value_name = "URL", env = "LIVEMIG_RMS", default_value = DEFAULT_RMS)]
    pub rms: String,
    /// The RMS's CA certificate (the `ca.pem` of its --ca-dir): an https:// RMS must present
    /// a certificate it issued.
    #[arg(long, value_name = "FILE", env = "LIVEMIG_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// File holding the RMS's bearer token on its first line (mode 600, as the RMS's own).
    #[arg(long, value_name = "FILE", env = "LIVEMIG_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Deadline of each request to the RMS.
    #[arg(long, value_name = "TIME", default_value = "10s")]
    pub timeout: String,
}

/// Why a request to the RMS did not give the answer asked for.
#[derive(Debug)]
pub enum RmsError {
    /// No connection: nothing listens there, or the name does not resolve.
    Unreachable { url: String, cause: String },
    /// Connected, but no answer within `--timeout`.
    TimedOut { url: String, after: Duration },
    /// 401: no token, or not the RMS's token.
    Unauthorized {
        token_file: Option<PathBuf>,
        message: String,
    },
    /// Any other 4xx/5xx, with the RMS's `error` text.
    Refused {
        request: String,
        status: StatusCode,
        message: String,
    },
    /// An answer that is not the JSON the API promises.
    Malformed { request: String, detail: String },
}

impl RmsError {
    /// Whether asking again later may succeed (the RMS restarting, a slow answer, a 5xx).
    pub fn is_transient(&self) -> bool {
        match self {
            RmsError::Unreachable { .. } | RmsError::TimedOut { .. } => true,
            RmsError::Refused { status, .. } => status.is_server_error(),
            RmsError::Unauthorized { .. } | RmsError::Malformed { .. } => false,
        }
    }
}

impl std::fmt::Display for RmsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RmsError::Unreachable { url, cause } => write!(
                f,
                "cannot reach the RMS at {url} ({cause}); is it running? (set its address with --rms or LIVEMIG_RMS)"
            ),
            RmsError::TimedOut { url, after } => write!(
                f,
                "the RMS at {url} did not answer within {} (--timeout)",
                livemig_workload::units::fmt_duration(after.as_secs_f64())
            ),
            RmsError::Unauthorized {
                token_file: Some(path),
                message,
            } => write!(
                f,
                "the RMS refused the token in {} (401: {message}); check that the file holds the RMS's token (--token-file or LIVEMIG_TOKEN_FILE)",
                path.display()
            ),
            RmsError::Unauthorized {
                token_file: None,
                message,
            } => write!(
                f,
                "the RMS wants a bearer token (401: {message}); give the token file with --token-file or LIVEMIG_TOKEN_FILE"
            ),
            RmsError::Refused {
                request,
                status,
                message,
            } => write!(
                f,
                "{request}: the RMS answered {} {}: {message}",
                status.as_u16(),
                status.canonical_reason().unwrap_or("error")
            ),
            RmsError::Malformed { request, detail } => {
                write!(f, "{request}: malformed answer from the RMS: {detail}")
            }
        }
    }
}

impl std::error::Error for RmsError {}

/// An answer: the typed value and the JSON exactly as the RMS sent it.
#[derive(Debug)]
pub struct Answer<T> {
    pub value: T,
    pub json: serde_json::Value,
    /// A paged list's next page starts after this id (`x-next-after`).
    pub next_after: Option<u64>,
}

/// A connection to the RMS: base URL, token, per-request deadline.
#[derive(Debug)]
pub struct Rms {
    base: Url,
    token: Option<livemig_http::Secret>,
    token_file: Option<PathBuf>,
    timeout: Duration,
    http: reqwest::Client,
}

impl Rms {
    /// Checks the flags and reads the token file; nothing is sent yet.
    pub fn new(args: &RmsArgs) -> Result<Rms> {
        let base = Url::parse(args.rms.trim())
            .with_context(|| format!("--rms `{}` is not a URL (e.g. {DEFAULT_RMS})", args.rms))?;
        let ca_pem = match &args.ca_file {
            Some(path) => {
                let pem = livemig_tls::files::read_cert(path).context("--ca-file")?;
                livemig_tls::config::parse_certs(&pem)
                    .with_context(|| format!("--ca-file {}", path.display()))?;
                Some(pem)
            }
            None => None,
        };
        match base.scheme() {
            "http" if ca_pem.is_some() => {
                bail!("--ca-file is for an https:// RMS; give its https:// URL with --rms")
            }
            "http" => {}
            "https" if ca_pem.is_none() => bail!(
                "--rms {}: an https:// RMS needs its CA certificate: give --ca-file (or LIVEMIG_CA_FILE), the ca.pem of the RMS's --ca-dir",
                args.rms
            ),
            "https" => {}
            other => {
                bail!("--rms: `{other}:` URLs are not supported; give an https:// or http:// URL")
            }
        }
        if base.host_str().is_none_or(str::is_empty) || base.cannot_be_a_base() {
            bail!("--rms `{}` has no host (e.g. {DEFAULT_RMS})", args.rms);
        }
        if !base.username().is_empty() || base.password().is_some() {
            bail!("--rms: give no user or password in the URL; the token file authenticates");
        }
        if base.query().is_some() || base.fragment().is_some() {
            bail!("--rms `{}`: give the base URL without ? or #", args.rms);
        }
        let timeout = crate::args::positive_duration("timeout", &args.timeout)?;
        let token = match &args.token_file {
            Some(path) => Some(livemig_http::Token::load_secret(path)?.1),
            None => None,
        };
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // The token goes to the RMS only: a redirect elsewhere is an error, not a hop.
            .redirect(reqwest::redirect::Policy::none())
            // The token goes to the RMS itself, never through a proxy from the environment.
            .no_proxy()
            .tls_backend_preconfigured(
                livemig_tls::https_client_config(ca_pem.as_deref())
                    .context("cannot set up TLS (--ca-file)")?,
            )
            .build()
            .context("cannot set up the HTTP client")?;
        Ok(Rms {
            base,
            token,
            token_file: args.token_file.clone(),
            timeout,
            http,
        })
    }

    /// The URL of `segments` under the base (each segment percent-encoded: a VM name with a
    /// `/` stays one segment).
    pub fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// `GET` the API path `segments` and decode the answer.
    pub async fn get<T: DeserializeOwned>(&self, segments: &[&str]) -> Result<Answer<T>, RmsError> {
        self.call(Method::GET, segments, &[], None::<&()>).await
    }

    /// Every page of the paged list at `segments` (`query` as filters), joined: each next
    /// page is asked with `after=` the id the previous one named.
    pub async fn get_all<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<Answer<Vec<T>>, RmsError> {
        let mut value = Vec::new();
        let mut json = Vec::new();
        let mut after: Option<u64> = None;
        loop {
            // The cursor replaces the caller's own `after` from the second page on.
            let mut q: Vec<(&str, String)> = query
                .iter()
                .filter(|(k, _)| after.is_none() || *k != "after")
                .cloned()
                .collect();
            if let Some(a) = after {
                q.push(("after", a.to_string()));
            }
            let page: Answer<Vec<T>> = self.call(Method::GET, segments, &q, None::<&()>).await?;
            value.extend(page.value);
            if let serde_json::Value::Array(items) = page.json {
                json.extend(items);
            }
            match page.next_after {
                // A cursor that does not move would loop for ever.
                Some(n) if after.is_none_or(|a| n > a) => after = Some(n),
                _ => break,
            }
        }
        Ok(Answer {
            value,
            json: serde_json::Value::Array(json),
            next_after: None,
        })
    }

    /// `POST` `body` as JSON to `segments` and decode the answer.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        segments: &[&str],
        body: &B,
    ) -> Result<Answer<T>, RmsError> {
        self.call(Method::POST, segments, &[], Some(body)).await
    }

    /// `DELETE` `segments` and decode the answer.
    pub async fn delete<T: DeserializeOwned>(
        &self,
        segments: &[&str],
    ) -> Result<Answer<T>, RmsError> {
        self.call(Method::DELETE, segments, &[], None::<&()>).await
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&B>,
    ) -> Result<Answer<T>, RmsError> {
        let mut url = self.url(segments);
        if !query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        let request = format!("{method} {}", url.path());
        let shown = self.base.as_str().trim_end_matches('/').to_string();
        let mut req = self
            .http
            .request(method, url)
            .header("accept", "application/json");
        if let Some(token) = &self.token {
            req = req.header("authorization", token.bearer());
        }
        if let Some(body) = body {
            let bytes = serde_json::to_vec(body).map_err(|e| RmsError::Malformed {
                request: request.clone(),
                detail: format!("cannot encode the request: {e}"),
            })?;
            req = req.header("content-type", "application/json").body(bytes);
        }
        let transport = |e: reqwest::Error| {
            if e.is_timeout() {
                RmsError::TimedOut {
                    url: shown.clone(),
                    after: self.timeout,
                }
            } else {
                RmsError::Unreachable {
                    url: shown.clone(),
                    cause: root_cause(&e),
                }
            }
        };
        let mut resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        let next_after = resp
            .headers()
            .get("x-next-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let mut bytes = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(transport)? {
            if bytes.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(RmsError::Malformed {
                    request,
                    detail: format!("the answer is larger than {} MiB", MAX_ANSWER_BYTES >> 20),
                });
            }
            bytes.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            let message = error_text(&bytes);
            return Err(if status == StatusCode::UNAUTHORIZED {
                RmsError::Unauthorized {
                    token_file: self.token_file.clone(),
                    message,
                }
            } else {
                RmsError::Refused {
                    request,
                    status,
                    message,
                }
            });
        }
        let mut answer = decode(&request, &bytes)?;
        answer.next_after = next_after;
        Ok(answer)
    }
}

/// Runs `f` with a connection to the RMS on the project's runtime.
pub fn with_rms<T, F>(rms: Rms, f: impl FnOnce(Rms) -> F) -> Result<T>
where
    F: std::future::Future<Output = Result<T>>,
{
    crate::rt::runtime()?.block_on(f(rms))
}

/// Prints an answer: its JSON as the RMS sent it (`--json`), or `human(value)`.
pub fn print<T>(answer: &Answer<T>, json: bool, human: impl FnOnce(&T) -> String) -> Result<()> {
    let text = if json {
        crate::ops_view::json(&answer.json)
    } else {
        human(&answer.value)
    };
    crate::out::emit_line(&text)?;
    Ok(())
}

/// The innermost cause of a transport error ("Connection refused (os error 111)").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

/// The RMS's `{"error": "..."}` text, else the body itself (short), else "no reason given".
fn error_text(bytes: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        error: String,
    }
    if let Ok(e) = serde_json::from_slice::<ErrorBody>(bytes) {
        return e.error;
    }
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if text.is_empty() {
        "no reason given".into()
    } else {
        text.chars().take(200).collect()
    }
}

/// Decodes a success answer into `T` and into plain JSON.
fn decode<T: DeserializeOwned>(request: &str, bytes: &[u8]) -> Result<Answer<T>, RmsError> {
    let malformed = |e: serde_json::Error| RmsError::Malformed {
        request: request.to_string(),
        detail: e.to_string(),
    };
    // An empty body (e.g. a bare 202) reads as `null`.
    let json: serde_json::Value = if bytes.iter().all(u8::is_ascii_whitespace) {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(bytes).map_err(malformed)?
    };
    let value = T::deserialize(&json).map_err(malformed)?;
    Ok(Answer {
        value,
        json,
        next_after: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(rms: &str) -> RmsArgs {
        RmsArgs {
            rms: rms.into(),
            token_file: None,
            ca_file: None,
            timeout: "10s".into(),
        }
    }

    #[test]
    fn https_needs_the_ca_file_and_http_refuses_one() {
        let dir = tempfile::tempdir().expect("dir");
        let ca = livemig_tls::Ca::generate("test CA").expect("a CA");
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, ca.cert_pem()).expect("write");
        let e = Rms::new(&args("https://h:7700")).expect_err("no CA");
        assert!(e.to_string().contains("--ca-file"), "{e}");
        let mut a = args("https://h:7700");
        a.ca_file = Some(path.clone());
        assert!(Rms::new(&a).is_ok());
        a.rms = "http://h:7700".into();
        assert!(Rms::new(&a).is_err());
        std::fs::write(&path, "not a certificate").expect("write");
        a.rms = "https://h:7700".into();
        assert!(Rms::new(&a).is_err());
    }

    #[test]
    fn urls_keep_a_base_path_and_encode_names() {
        let rms = Rms::new(&args("http://h:7700/rms/")).expect("valid");
        assert_eq!(
            rms.url(&["api", "v1", "vms", "a/b c"]).as_str(),
            "http://h:7700/rms/api/v1/vms/a%2Fb%20c"
        );
        let rms = Rms::new(&args("http://h:7700")).expect("valid");
        assert_eq!(rms.url(&["api", "v1"]).as_str(), "http://h:7700/api/v1");
    }

    #[test]
    fn bad_urls_and_timeouts_are_refused() {
        for bad in [
            "h:7700",
            "https://h",
            "ftp://h",
            "file:///etc/passwd",
            "http://h/?x=1",
            "nonsense",
        ] {
            assert!(Rms::new(&args(bad)).is_err(), "{bad}");
        }
        let mut a = args("http://h");
        a.timeout = "0s".into();
        assert!(Rms::new(&a).is_err());
    }

    #[test]
    fn error_bodies_give_the_rms_text() {
        assert_eq!(error_text(br#"{"error":"no VM named x"}"#), "no VM named x");
        assert_eq!(error_text(b"  "), "no reason given");
        assert_eq!(error_text(b"plain"), "plain");
        let e = decode::<Vec<u32>>("GET /x", b"{").expect_err("malformed");
        assert!(e.to_string().contains("malformed"), "{e}");
        let a = decode::<Option<u32>>("GET /x", b"").expect("empty is null");
        assert!(a.value.is_none());
    }
}
