//! Grants reach each source in the order the orchestrator made them. Jobs run as concurrent
//! tasks, so two grants of one migration could cross on the network and leave the older in
//! force (above the budget, if the newer one lowered it). Each grant takes a ticket when it is
//! dispatched (in order); its task sends only while its ticket is the migration's newest, one
//! send at a time per migration.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use livemig_rms::{Input, MigrationId};

use crate::client::{AgentClient, CallError};
use crate::driver::Driver;

/// How often a grant that found no migration yet is sent again (the source's start may
/// still be on its way), and how long apart.
const NOT_YET_TRIES: u32 = 5;
const NOT_YET_PAUSE: Duration = Duration::from_millis(400);

#[derive(Debug, Default)]
struct Line {
    newest: u64,
    sending: Arc<tokio::sync::Mutex<()>>,
}

/// The grants in flight, by migration (cheap to clone).
#[derive(Debug, Default, Clone)]
pub struct Grants {
    lines: Arc<Mutex<HashMap<MigrationId, Line>>>,
    next: Arc<Mutex<u64>>,
}

impl Grants {
    /// A ticket for a grant of `migration`, taken when the job is dispatched.
    pub fn ticket(&self, migration: MigrationId) -> u64 {
        let t = {
            let mut n = self.next.lock().unwrap_or_else(|p| p.into_inner());
            *n += 1;
            *n
        };
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        lines.entry(migration).or_default().newest = t;
        t
    }

    fn current(&self, migration: MigrationId, ticket: u64) -> bool {
        let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        lines.get(&migration).is_some_and(|l| l.newest == ticket)
    }

    /// Sends the grant of `ticket` unless a newer one of the same migration was dispatched.
    pub async fn send(
        &self,
        client: &AgentClient,
        driver: &Driver,
        address: &str,
        migration: MigrationId,
        ticket: u64,
        bytes_per_s: Option<f64>,
    ) {
        let sending = {
            let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
            match lines.get(&migration) {
                Some(l) => Arc::clone(&l.sending),
                None => return,
            }
        };
        let _one_at_a_time = sending.lock().await;
        let mut unapplied = false;
        for attempt in 1..=NOT_YET_TRIES {
            if !self.current(migration, ticket) {
                return;
            }
            match client.grant(address, migration.0, bytes_per_s).await {
                Ok(()) => break,
                Err(CallError::Refused { status: 404, .. }) if attempt < NOT_YET_TRIES => {
                    tokio::time::sleep(NOT_YET_PAUSE).await;
                }
                // Ended on the source: nothing to bound any more.
                Err(CallError::Refused { status: 409, .. }) => break,
                Err(e) => {
                    // Not migrating there yet, or the agent is unreachable: the orchestrator
                    // is told, and its next plan sends the grant in force again.
                    tracing::info!(%migration, error = %e, "a grant was not applied; it is sent again");
                    unapplied = true;
                    break;
                }
            }
        }
        {
            let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
            if lines.get(&migration).is_some_and(|l| l.newest == ticket) {
                lines.remove(&migration);
            }
        }
        if unapplied {
            let _ = driver
                .input(Input::GrantUnapplied {
                    migration,
                    bytes_per_s,
                })
                .await;
        }
    }
}
