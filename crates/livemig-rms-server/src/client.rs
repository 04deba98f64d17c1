//! The RMS's client of the agents: every call carries the token and ends within its timeout;
//! an answer is decoded under a size cap.

use std::time::Duration;

use livemig_api::rms_to_agent::{GrantRequest, SampleRequest, VmSample};
use livemig_api::{ErrorBody, IncomingReady, IncomingRequest, OutgoingRequest, RunReport};
use livemig_http::Secret;
use livemig_policy::DirtySample;
use livemig_rms::Answer;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The deadline of starting or stopping a VM on an agent: a QEMU VM boots (or quits) before
/// the agent answers, which takes longer than a question.
pub const VM_CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The largest answer read from an agent.
pub const MAX_ANSWER_BYTES: usize = 4 << 20;

/// Why a call to an agent did not give an answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No answer: refused, reset, timed out. The agent may or may not have acted.
    #[error("no answer from {url}: {reason}")]
    Transport { url: String, reason: String },
    /// The agent answered with an error status (4xx: it did not act; 5xx: it may have).
    #[error("{url} answered {status}: {message}")]
    Refused {
        url: String,
        status: u16,
        message: String,
    },
    #[error("{url} answered something that is not the expected JSON: {reason}")]
    Malformed { url: String, reason: String },
}

impl CallError {
    /// Whether the agent said no (a 4xx: so it certainly did not act). A 5xx is no proof:
    /// a request that timed out on the agent's side may still be carried out there.
    pub fn is_refusal(&self) -> bool {
        matches!(self, CallError::Refused { status, .. } if (400..500).contains(status))
    }
}

/// A client of every agent.
#[derive(Debug, Clone)]
pub struct AgentClient {
    http: reqwest::Client,
    bearer: String,
    /// `https` when the RMS has a CA (agents serve their API over TLS), else `http`.
    scheme: &'static str,
    /// Every call's deadline unless it has its own.
    timeout: Duration,
}

impl AgentClient {
    /// A client sending `secret`; with `ca_pem`, it calls agents over HTTPS and trusts only
    /// certificates that CA issued (naming the address called).
    pub fn new(
        secret: &Secret,
        timeout: Duration,
        ca_pem: Option<&str>,
    ) -> Result<AgentClient, CallError> {
        let failed = |reason: String| CallError::Transport {
            url: String::new(),
            reason,
        };
        let tls = livemig_tls::https_client_config(ca_pem).map_err(|e| failed(e.to_string()))?;
        // No pooled connections: calls are few, and a connection kept across a link cut or an
        // agent restart would fail the next call instead of a fresh connect succeeding.
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_max_idle_per_host(0)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .tls_backend_preconfigured(tls)
            .build()
            .map_err(|e| failed(e.to_string()))?;
        Ok(AgentClient {
            http,
            bearer: secret.bearer(),
            scheme: if ca_pem.is_some() { "https" } else { "http" },
            timeout,
        })
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        address: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, CallError> {
        self.call_within(method, address, path, body, None).await
    }

    /// [`AgentClient::call`] with its own deadline instead of the client's.
    async fn call_within<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        address: &str,
        path: &str,
        body: Option<&B>,
        timeout: Option<Duration>,
    ) -> Result<T, CallError> {
        let url = format!("{}://{address}{path}", self.scheme);
        let mut req = self
            .http
            .request(method, &url)
            .header("authorization", &self.bearer);
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        if let Some(b) = body {
            let bytes = serde_json::to_vec(b).map_err(|e| CallError::Malformed {
                url: url.clone(),
                reason: e.to_string(),
            })?;
            req = req.header("content-type", "application/json").body(bytes);
        }
        let transport = |e: reqwest::Error| CallError::Transport {
            url: url.clone(),
            reason: e.to_string(),
        };
        let mut resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        let mut bytes = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(transport)? {
            if bytes.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(CallError::Malformed {
                    url,
                    reason: format!("the answer is larger than {MAX_ANSWER_BYTES} bytes"),
                });
            }
            bytes.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            let message = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).chars().take(200).collect());
            return Err(CallError::Refused {
                url,
                status: status.as_u16(),
                message,
            });
        }
        let bytes = if bytes.is_empty() || status == StatusCode::NO_CONTENT {
            b"null".to_vec()
        } else {
            bytes
        };
        serde_json::from_slice(&bytes).map_err(|e| CallError::Malformed {
            url,
            reason: e.to_string(),
        })
    }

    /// "Can you take a VM of this size?"
    pub async fn ask(&self, address: &str, memory_bytes: u64) -> Result<Answer, CallError> {
        let body = serde_json::json!({ "memory_bytes": memory_bytes });
        self.call(Method::POST, address, "/api/v1/capacity", Some(&body))
            .await
    }

    /// Drops a reservation.
    pub async fn release(&self, address: &str, reservation: &str) -> Result<(), CallError> {
        let path = format!("/api/v1/capacity/{reservation}");
        self.call_within::<(), serde_json::Value>(
            Method::DELETE,
            address,
            &path,
            None,
            Some(VM_CALL_TIMEOUT),
        )
        .await
        .map(drop)
    }

    /// Prepares the destination.
    pub async fn incoming(
        &self,
        address: &str,
        req: &IncomingRequest,
    ) -> Result<IncomingReady, CallError> {
        self.call(Method::POST, address, "/api/v1/incoming", Some(req))
            .await
    }

    /// Starts the source.
    pub async fn outgoing(&self, address: &str, req: &OutgoingRequest) -> Result<(), CallError> {
        self.call::<_, serde_json::Value>(Method::POST, address, "/api/v1/outgoing", Some(req))
            .await
            .map(drop)
    }

    /// Asks the source to cancel.
    pub async fn cancel(&self, address: &str, migration: u64) -> Result<(), CallError> {
        let path = format!("/api/v1/outgoing/{migration}");
        self.call::<(), serde_json::Value>(Method::DELETE, address, &path, None)
            .await
            .map(drop)
    }

    /// What the agent runs (recovery).
    /// `PUT /api/v1/outgoing/{migration}/grant`: the rate the source's migration may use.
    pub async fn grant(
        &self,
        address: &str,
        migration: u64,
        bytes_per_s: Option<f64>,
    ) -> Result<(), CallError> {
        let path = format!("/api/v1/outgoing/{migration}/grant");
        let body = GrantRequest { bytes_per_s };
        self.call::<_, serde_json::Value>(Method::PUT, address, &path, Some(&body))
            .await
            .map(|_| ())
    }

    /// `POST /api/v1/vms/{name}/sample`: how fast `vm` dirties its memory, over `seconds`
    /// (the call's deadline grows by the sample's length).
    pub async fn sample(
        &self,
        address: &str,
        vm: &str,
        seconds: f64,
    ) -> Result<DirtySample, CallError> {
        let path = format!("/api/v1/vms/{vm}/sample");
        let body = SampleRequest { seconds };
        // A QEMU measurement takes whole seconds, and QEMU may take a little longer to report.
        let extra = Duration::from_secs_f64(seconds.clamp(0.0, 10.0).ceil() + 2.0);
        self.call_within::<_, VmSample>(
            Method::POST,
            address,
            &path,
            Some(&body),
            Some(self.timeout + extra),
        )
        .await
        .map(|s| s.sample)
    }

    pub async fn report(&self, address: &str) -> Result<RunReport, CallError> {
        self.call::<(), _>(Method::GET, address, "/api/v1/report", None)
            .await
    }

    /// Starts a VM on the agent.
    pub async fn start_vm(
        &self,
        address: &str,
        vm: &livemig_api::VmInfo,
    ) -> Result<serde_json::Value, CallError> {
        self.call_within(
            Method::POST,
            address,
            "/api/v1/vms",
            Some(vm),
            Some(VM_CALL_TIMEOUT),
        )
        .await
    }

    /// Stops a VM on the agent.
    pub async fn stop_vm(&self, address: &str, name: &str) -> Result<(), CallError> {
        let path = format!("/api/v1/vms/{name}");
        self.call::<(), serde_json::Value>(Method::DELETE, address, &path, None)
            .await
            .map(drop)
    }
}
