//! One request to the RMS: JSON in, status and JSON out, under a timeout.

use std::time::Duration;

use livemig_http::Secret;
use reqwest::header::{HeaderValue, AUTHORIZATION};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The largest answer read from the RMS (its answers to agents are small: a registration's
/// certificates are the largest).
pub const MAX_ANSWER_BYTES: usize = 256 * 1024;

/// The longest an RMS request may take (connect included).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Why an RMS request did not get the answer wanted.
#[derive(Debug, thiserror::Error)]
pub enum RmsError {
    #[error("the RMS URL `{0}` is not an http:// or https:// URL of a host and port")]
    Url(String),
    #[error("an https:// RMS needs its CA certificate (--ca-file: the `ca.pem` of its --ca-dir)")]
    NoCa,
    #[error("the RMS's CA certificate is unusable")]
    Tls(#[source] livemig_tls::TlsError),
    #[error("cannot encode the request")]
    Encode(#[source] serde_json::Error),
    #[error("the request to the RMS failed")]
    Request(#[source] reqwest::Error),
    #[error("the RMS answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("the RMS's answer is larger than {MAX_ANSWER_BYTES} bytes")]
    TooLarge,
    #[error("cannot decode the RMS's answer")]
    Decode(#[source] serde_json::Error),
    #[error("cannot build the HTTP client")]
    Client(#[source] reqwest::Error),
}

impl RmsError {
    /// The status the RMS answered, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            RmsError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The RMS's address and the token it expects.
#[derive(Clone)]
pub struct RmsClient {
    base: String,
    token: Secret,
    http: reqwest::Client,
}

impl std::fmt::Debug for RmsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RmsClient")
            .field("base", &self.base)
            .finish()
    }
}

impl RmsClient {
    /// A client of the RMS at `base` (`http://HOST:PORT` or `https://HOST:PORT`, no path)
    /// sending `token`. An `https://` RMS needs `ca_pem`, the only certificate its
    /// certificate may chain to.
    pub fn new(base: &str, token: Secret, ca_pem: Option<&str>) -> Result<RmsClient, RmsError> {
        let base = base.trim_end_matches('/');
        let (rest, https) = match (base.strip_prefix("http://"), base.strip_prefix("https://")) {
            (Some(r), _) => (r, false),
            (_, Some(r)) => (r, true),
            _ => return Err(RmsError::Url(base.to_string())),
        };
        if rest.is_empty() || rest.contains('/') || rest.contains(char::is_whitespace) {
            return Err(RmsError::Url(base.to_string()));
        }
        if https && ca_pem.is_none() {
            return Err(RmsError::NoCa);
        }
        let tls = livemig_tls::https_client_config(ca_pem).map_err(RmsError::Tls)?;
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .tls_backend_preconfigured(tls)
            .build()
            .map_err(RmsError::Client)?;
        Ok(RmsClient {
            base: base.to_string(),
            token,
            http,
        })
    }

    /// `req` with `Authorization: Bearer <token>`, the value marked sensitive (kept out of
    /// `Debug` output) as reqwest's `bearer_auth` marks it. A token that cannot be a header
    /// value goes as text, for reqwest to refuse when the request is sent.
    fn authorize(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match HeaderValue::try_from(self.token.bearer()) {
            Ok(mut v) => {
                v.set_sensitive(true);
                req.header(AUTHORIZATION, v)
            }
            Err(_) => req.header(AUTHORIZATION, self.token.bearer()),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// POSTs `body` as JSON to `path`; a 2xx answer's body is returned, anything else is an
    /// error.
    pub async fn post<B: Serialize>(&self, path: &str, body: &B) -> Result<Vec<u8>, RmsError> {
        let bytes = serde_json::to_vec(body).map_err(RmsError::Encode)?;
        let r = self
            .authorize(self.http.post(format!("{}{path}", self.base)))
            .header("content-type", "application/json")
            .body(bytes)
            .send()
            .await
            .map_err(RmsError::Request)?;
        let status = r.status().as_u16();
        // Answers are small: read under a cap (the timeout bounds the wait).
        let mut r = r;
        let mut body = Vec::new();
        while let Some(chunk) = r.chunk().await.map_err(RmsError::Request)? {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(RmsError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        if !(200..300).contains(&status) {
            let mut text = String::from_utf8_lossy(&body[..body.len().min(512)]).to_string();
            text.retain(|c| !c.is_control());
            return Err(RmsError::Status { status, body: text });
        }
        Ok(body)
    }

    /// [`RmsClient::post`] that decodes the answer.
    pub async fn post_for<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, RmsError> {
        let bytes = self.post(path, body).await?;
        serde_json::from_slice(&bytes).map_err(RmsError::Decode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_or_https_base_urls_and_https_needs_the_ca() {
        assert!(RmsClient::new("http://127.0.0.1:7900", Secret::new("t"), None).is_ok());
        assert!(RmsClient::new("http://rms:7900/", Secret::new("t"), None).is_ok());
        assert!(matches!(
            RmsClient::new("https://rms:7900", Secret::new("t"), None),
            Err(RmsError::NoCa)
        ));
        let ca = livemig_tls::Ca::generate("test CA").expect("a CA");
        assert!(RmsClient::new("https://rms:7900", Secret::new("t"), Some(ca.cert_pem())).is_ok());
        assert!(matches!(
            RmsClient::new(
                "https://rms:7900",
                Secret::new("t"),
                Some("not a certificate")
            ),
            Err(RmsError::Tls(_))
        ));
        for bad in [
            "ftp://rms",
            "rms:7900",
            "http://",
            "http://a/b",
            "http://a b",
        ] {
            assert!(
                matches!(
                    RmsClient::new(bad, Secret::new("t"), None),
                    Err(RmsError::Url(_))
                ),
                "{bad}"
            );
        }
    }
}
