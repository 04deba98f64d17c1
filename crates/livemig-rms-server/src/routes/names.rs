//! VM names with a create, a delete or a migration request in progress. A create and a
//! delete check the orchestrator's picture, then call an agent, then record the outcome:
//! without this, two creates of one name could both pass the check and start the VM on two
//! hosts, and a migration could be recorded for a VM whose delete is stopping it. A second
//! request for a name in progress is a 409.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use livemig_http::ApiError;

/// The names in progress (one RMS process leads: this set is the whole truth).
#[derive(Debug, Default)]
pub struct NameLocks {
    busy: Arc<Mutex<HashSet<String>>>,
}

/// Holds a name until dropped.
#[derive(Debug)]
pub struct NameGuard {
    name: String,
    busy: Arc<Mutex<HashSet<String>>>,
}

impl NameLocks {
    /// Takes `name`; a 409 when another request holds it.
    pub fn take(&self, name: &str) -> Result<NameGuard, ApiError> {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        if !busy.insert(name.to_string()) {
            return Err(ApiError::conflict(format!(
                "another request on the VM `{name}` is in progress (a create, a delete or a migration request); try again"
            )));
        }
        Ok(NameGuard {
            name: name.to_string(),
            busy: Arc::clone(&self.busy),
        })
    }

    /// Whether a create or delete of `name` is in progress.
    pub fn is_busy(&self, name: &str) -> bool {
        self.busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(name)
    }
}

impl Drop for NameGuard {
    fn drop(&mut self) {
        self.busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_held_once_until_its_guard_drops() {
        let locks = NameLocks::default();
        let g = locks.take("vm1").expect("free");
        assert!(locks.is_busy("vm1"));
        assert!(locks.take("vm1").is_err());
        assert!(locks.take("vm2").is_ok());
        drop(g);
        assert!(!locks.is_busy("vm1"));
        assert!(locks.take("vm1").is_ok());
    }
}
