//! After a restart: ask every known agent what it runs (bounded, in parallel), so the
//! orchestrator can finish or fail each unfinished migration (`Input::Restarted`).

use std::collections::BTreeMap;

use livemig_api::{LocalState as ApiLocal, RunReport};
use livemig_rms::recovery::{AgentReport, LocalState};
use livemig_rms::MigrationId;
use tokio::task::JoinSet;

use crate::client::AgentClient;

/// The agent's report in the orchestrator's terms.
pub fn to_core(r: RunReport) -> AgentReport {
    AgentReport {
        host: r.host,
        vms: r.vms.into_iter().map(|v| v.name).collect(),
        migrations: r
            .migrations
            .into_iter()
            .map(|(id, m)| {
                let s = match m.state {
                    ApiLocal::Migrating => LocalState::Migrating,
                    ApiLocal::HandedOver => LocalState::HandedOver,
                    ApiLocal::Failed => LocalState::Failed,
                    ApiLocal::Cancelled => LocalState::Cancelled,
                    ApiLocal::Held => LocalState::Held,
                };
                (MigrationId(id), s)
            })
            .collect(),
    }
}

/// Asks each `(host, address)`; hosts that do not answer are left out (their migrations stay
/// undecided: `unknown` when they matter). A report naming another host is refused.
pub async fn ask_all(client: &AgentClient, hosts: Vec<(String, String)>) -> Vec<AgentReport> {
    let mut set = JoinSet::new();
    for (host, address) in hosts {
        let client = client.clone();
        set.spawn(async move { (host.clone(), client.report(&address).await) });
    }
    let mut reports = BTreeMap::new();
    while let Some(r) = set.join_next().await {
        match r {
            Ok((host, Ok(report))) if report.host == host => {
                reports.insert(host, to_core(report));
            }
            Ok((host, Ok(report))) => {
                tracing::warn!(%host, named = %report.host, "an agent reported under another name; ignored");
            }
            Ok((host, Err(e))) => {
                tracing::warn!(%host, error = %e, "an agent did not report after the restart")
            }
            Err(e) => tracing::error!(error = %e, "a report task failed"),
        }
    }
    reports.into_values().collect()
}
