//! Why the agent refused to start a migration, and the status each reason answers.

use axum::http::StatusCode;
use livemig_api::MigrationNo;
use livemig_http::ApiError;

use crate::capacity::CapacityError;

/// A refused migration request.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("the key is not 64 hex digits")]
    BadKey,
    #[error("migration {0} is already known here")]
    Known(MigrationNo),
    #[error("no migration {0} leaves this host")]
    UnknownOutgoing(MigrationNo),
    #[error("migration {0} has passed its commit point: it cannot be cancelled")]
    Committed(MigrationNo),
    #[error("migration {0} has ended")]
    Ended(MigrationNo),
    #[error("the VM `{0}` is already migrating or being sampled")]
    Busy(String),
    #[error("migration {0} does not leave this host (it comes in)")]
    NotOutgoing(MigrationNo),
    #[error("a grant is a finite number of bytes per second above 0, or null for none")]
    BadGrant,
    #[error("no VM named `{0}` runs here")]
    NoVm(String),
    #[error("a VM named `{0}` already runs here")]
    VmHere(String),
    #[error("reservation `{id}` holds {held} bytes, the VM needs {asked}")]
    SizeMismatch { id: String, held: u64, asked: u64 },
    #[error("this path migrates `sim` guests only")]
    Kind,
    #[error(transparent)]
    Qemu(#[from] crate::qemu::QemuError),
    #[error("invalid VM: {0}")]
    Vm(String),
    #[error("unknown policy `{0}`")]
    Policy(String),
    #[error("{0}")]
    Settings(String),
    #[error("data_address must be IP:PORT: `{0}`")]
    Address(String),
    #[error(transparent)]
    Capacity(#[from] CapacityError),
    #[error("cannot listen for the migration on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the migration's thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("the agent is stopping")]
    Stopping,
    #[error("TLS was asked for but this host has no certificate from the RMS's CA (did it register with an RMS that has a CA, and did it accept the CA?)")]
    NoIdentity,
    #[error("cannot set up TLS: {0}")]
    Tls(String),
}

impl From<MigrationError> for ApiError {
    fn from(e: MigrationError) -> ApiError {
        use MigrationError as E;
        let status = match &e {
            E::Capacity(c) => return ApiError::from(c.clone()),
            E::Qemu(q) => q.status(),
            E::UnknownOutgoing(_) | E::NoVm(_) => StatusCode::NOT_FOUND,
            E::Known(_)
            | E::Committed(_)
            | E::Ended(_)
            | E::Busy(_)
            | E::NotOutgoing(_)
            | E::VmHere(_)
            | E::NoIdentity => StatusCode::CONFLICT,
            E::BadKey
            | E::BadGrant
            | E::SizeMismatch { .. }
            | E::Kind
            | E::Vm(_)
            | E::Policy(_)
            | E::Settings(_)
            | E::Address(_)
            | E::Tls(_) => StatusCode::UNPROCESSABLE_ENTITY,
            E::Listen { .. } | E::Thread(_) => StatusCode::INTERNAL_SERVER_ERROR,
            E::Stopping => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, e.to_string())
    }
}
