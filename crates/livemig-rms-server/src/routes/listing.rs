//! `GET /api/v1/migrations`'s query: filters and paging, parsed strictly (an unknown key, a
//! repeated key or a bad value is a 400 naming it).
//!
//! `?state=S&vm=V&after=ID&limit=N`: migrations in `state`, of `vm`, with an id above `after`,
//! in id order, at most `limit` of them (default and most: [`MAX_PAGE`]). When more match,
//! the answer carries [`NEXT_HEADER`] with the last id given: ask again with `after=` it.

use livemig_http::ApiError;
use livemig_rms::{Migration, MigrationState};

/// The most migrations in one answer: each view carries its rounds (up to 1000 of them), so
/// a page stays within tens of MiB (the CLI reads at most 64 MiB).
pub const MAX_PAGE: usize = 100;
/// The header naming the `after` of the next page, when there is one.
pub const NEXT_HEADER: &str = "x-next-after";
/// The longest query string read.
const MAX_QUERY: usize = 1024;

/// Which migrations an answer holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    pub state: Option<MigrationState>,
    pub vm: Option<String>,
    pub after: u64,
    pub limit: usize,
}

impl Default for Filter {
    fn default() -> Filter {
        Filter {
            state: None,
            vm: None,
            after: 0,
            limit: MAX_PAGE,
        }
    }
}

impl Filter {
    /// Parses the raw query string (`None`: no query).
    pub fn parse(raw: Option<&str>) -> Result<Filter, ApiError> {
        let mut f = Filter::default();
        let Some(raw) = raw.filter(|r| !r.is_empty()) else {
            return Ok(f);
        };
        if raw.len() > MAX_QUERY {
            return Err(ApiError::bad_request(format!(
                "the query is longer than {MAX_QUERY} bytes"
            )));
        }
        let mut seen: Vec<&str> = Vec::new();
        for pair in raw.split('&') {
            let (key, value) = pair.split_once('=').ok_or_else(|| {
                ApiError::bad_request(format!("`{}` is not key=value", clip(pair)))
            })?;
            if seen.contains(&key) {
                return Err(ApiError::bad_request(format!(
                    "`{}` is given twice",
                    clip(key)
                )));
            }
            seen.push(key);
            match key {
                "state" => f.state = Some(state(value)?),
                "vm" => {
                    if !livemig_api::is_valid_name(value) {
                        return Err(ApiError::bad_request(format!(
                            "vm `{}` is not a VM name",
                            clip(value)
                        )));
                    }
                    f.vm = Some(value.to_string());
                }
                "after" => {
                    f.after = value.parse().map_err(|_| {
                        ApiError::bad_request(format!("after `{}` is not an id", clip(value)))
                    })?
                }
                "limit" => {
                    f.limit = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_PAGE).contains(n))
                        .ok_or_else(|| {
                            ApiError::bad_request(format!(
                                "limit `{}` is not a number from 1 to {MAX_PAGE}",
                                clip(value)
                            ))
                        })?
                }
                other => {
                    return Err(ApiError::bad_request(format!(
                        "unknown query key `{}` (state, vm, after, limit)",
                        clip(other)
                    )))
                }
            }
        }
        Ok(f)
    }

    /// Whether `m` is one of the answer's (paging aside).
    pub fn matches(&self, m: &Migration) -> bool {
        m.id.0 > self.after
            && self.state.is_none_or(|s| m.state == s)
            && self.vm.as_deref().is_none_or(|v| m.vm == v)
    }
}

fn state(value: &str) -> Result<MigrationState, ApiError> {
    MigrationState::ALL
        .into_iter()
        .find(|s| s.name() == value)
    .ok_or_else(|| {
        ApiError::bad_request(format!(
            "state `{}` is not one of queued, placing, running, switching_over, completed, failed, cancelled, unknown",
            clip(value)
        ))
    })
}

/// At most 64 characters of untrusted text, for an error message.
fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_filters_and_paging() {
        assert_eq!(Filter::parse(None).expect("ok"), Filter::default());
        assert_eq!(Filter::parse(Some("")).expect("ok"), Filter::default());
        let f = Filter::parse(Some("state=running&vm=web-1&after=7&limit=2")).expect("ok");
        assert_eq!(f.state, Some(MigrationState::Running));
        assert_eq!(f.vm.as_deref(), Some("web-1"));
        assert_eq!((f.after, f.limit), (7, 2));
    }

    #[test]
    fn refuses_what_it_does_not_understand() {
        for bad in [
            "state=flying",
            "limit=0",
            "limit=101",
            "limit=-1",
            "after=x",
            "vm=a/b",
            "vm=",
            "colour=red",
            "state",
            "after=1&after=2",
        ] {
            assert!(Filter::parse(Some(bad)).is_err(), "{bad}");
        }
        assert!(Filter::parse(Some(&"a".repeat(2000))).is_err());
    }

    #[test]
    fn matches_by_state_vm_and_id() {
        let mut m = Migration::new(livemig_rms::MigrationId(5), "vm1", "a", None, "fixed");
        let f = Filter::parse(Some("vm=vm1&state=queued&after=4")).expect("ok");
        assert!(f.matches(&m));
        m.state = MigrationState::Running;
        assert!(!f.matches(&m));
        assert!(!Filter::parse(Some("after=5")).expect("ok").matches(&m));
        assert!(!Filter::parse(Some("vm=vm2")).expect("ok").matches(&m));
    }
}
