//! The async runtime of the commands that speak QMP (`livemig qemu ...`).

use anyhow::{Context, Result};

/// A two-thread runtime (the machines this runs on have few cores; QMP needs little).
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
