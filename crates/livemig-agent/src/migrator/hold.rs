//! A paused copy whose hand-over's outcome is unknown, saved to a hold file (the format of
//! `livemig migrate` and `livemig receive`; settle it with `livemig resolve`), so that it
//! outlives the agent.

use std::path::{Path, PathBuf};

use livemig_engine::hold::{self, HoldError, HoldInfo};
use livemig_engine::{Guest, SimGuest};

/// Saves `guest` (paused) as `role`'s copy of `session` in `dir`; returns the file.
pub fn save(
    dir: &Path,
    role: &str,
    session: &str,
    peer: Option<String>,
    guest: &SimGuest,
    digest: u64,
    reason: &str,
) -> Result<PathBuf, HoldError> {
    let info = HoldInfo {
        role: role.to_string(),
        session: session.to_string(),
        peer,
        memory_bytes: guest.memory().bytes(),
        digest,
        self_check: guest.self_check().0,
        reason: reason.to_string(),
        saved_at_unix_s: hold::now_unix_s(),
    };
    // The session is hex from the engine; anything else is kept out of the file name.
    let safe: String = session
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(64)
        .collect();
    let path = dir.join(format!("livemig-{safe}.{role}.lmhold"));
    hold::save(&path, guest, &info)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use livemig_engine::{InitialContent, SimGuestConfig};

    #[test]
    fn saves_a_file_named_by_session_and_role_and_nothing_else() {
        let dir = tempfile::tempdir().expect("dir");
        let cfg = SimGuestConfig {
            memory_bytes: 1 << 20,
            workload: "idle".into(),
            content: InitialContent::Zero,
            seed: 1,
        };
        let guest = SimGuest::start(&cfg, u64::MAX).expect("guest");
        let digest = guest.memory().digest();
        let p = save(
            dir.path(),
            "source",
            "ab/../cd",
            None,
            &guest,
            digest,
            "why",
        )
        .expect("saved");
        assert_eq!(p, dir.path().join("livemig-abcd.source.lmhold"));
        assert!(p.is_file());
    }
}
