//! The one place events are rendered: every executor (simulator, engine, QEMU governor) and
//! `receive` emit `livemig_policy::Event`; this prints them for people (a bar per round and a
//! line per step, on stderr) or for programs (`--progress json`: one JSON object per line on
//! stderr, `{"t_s": …, "event": "…", …}`), or not at all.

use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use livemig_engine::wire::PAGE_SIZE;
use livemig_policy::{Action, Event, Stamped};
use livemig_workload::units::{fmt_bytes, fmt_duration, fmt_rate};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ProgressFormat {
    /// Bars and lines for people, on stderr.
    #[default]
    Human,
    /// One JSON object per event per line (NDJSON) on stderr, for programs.
    Json,
    /// Nothing.
    None,
}

/// Renders events (to stderr).
#[derive(Debug)]
pub struct Progress {
    format: ProgressFormat,
    start: Instant,
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A renderer in `format`; times in NDJSON count from now.
    pub fn new(format: ProgressFormat) -> Progress {
        Progress {
            format,
            start: Instant::now(),
            bar: None,
        }
    }

    fn line(&self, s: String) {
        match &self.bar {
            Some(b) => b.println(s),
            None => crate::out::note(&s),
        }
    }

    /// Handles one event.
    pub fn observe(&mut self, e: &Event) {
        match self.format {
            ProgressFormat::None => {}
            ProgressFormat::Json => {
                let stamped = Stamped {
                    t_s: (self.start.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
                    event: e.clone(),
                };
                if let Ok(s) = serde_json::to_string(&stamped) {
                    crate::out::note(&s);
                }
            }
            ProgressFormat::Human => self.human(e),
        }
    }

    fn human(&mut self, e: &Event) {
        match e {
            Event::Started {
                executor,
                policy,
                memory_bytes,
                ..
            } => self.line(format!(
                "migrating {} ({}) under policy {policy}",
                fmt_bytes(*memory_bytes),
                executor.name()
            )),
            Event::Connected { peer } => self.line(match peer {
                Some(p) => format!("connected to {p}"),
                None => "connected; both ends proved the shared key".into(),
            }),
            Event::Sampled { sample } => {
                if let Some(&(t, d)) = sample.points.last() {
                    self.line(format!(
                        "dirty-log sample: {} distinct dirty after {}",
                        fmt_bytes(d),
                        fmt_duration(t)
                    ));
                }
            }
            Event::RoundStarted {
                round,
                wish_bytes_per_s,
                cap_bytes_per_s,
                bytes,
            } => {
                let bar =
                    ProgressBar::with_draw_target(Some(*bytes as u64), ProgressDrawTarget::stderr());
                let style = ProgressStyle::with_template(
                    "round {prefix:>2} [{bar:30}] {percent:>3}% {msg} {elapsed_precise}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
                bar.set_style(style);
                bar.set_prefix(round.to_string());
                let granted = if cap_bytes_per_s < wish_bytes_per_s {
                    format!(" (granted; policy asked {})", fmt_rate(*wish_bytes_per_s))
                } else {
                    String::new()
                };
                bar.set_message(format!(
                    "{} at cap {}{granted}",
                    fmt_bytes(*bytes),
                    fmt_rate(*cap_bytes_per_s)
                ));
                self.bar = Some(bar);
            }
            Event::Progress { bytes_sent, .. } => {
                if let Some(b) = &self.bar {
                    b.set_position(*bytes_sent as u64);
                }
            }
            Event::CapGranted {
                granted_bytes_per_s,
                cap_bytes_per_s,
            } => self.line(match granted_bytes_per_s {
                Some(g) => format!(
                    "grant {}: running at {}",
                    fmt_rate(*g),
                    fmt_rate(*cap_bytes_per_s)
                ),
                None => format!(
                    "grant lifted: running at {}",
                    fmt_rate(*cap_bytes_per_s)
                ),
            }),
            Event::Raised {
                round,
                elapsed_s,
                cap_bytes_per_s,
                reason,
                ..
            } => self.line(format!(
                "round {round}: cap raised to {} after {}: {reason}",
                fmt_rate(*cap_bytes_per_s),
                fmt_duration(*elapsed_s)
            )),
            Event::RoundEnded { record } => {
                if let Some(b) = self.bar.take() {
                    b.finish_and_clear();
                }
                let next = match record.decision.action {
                    Action::Continue {
                        next_cap_bytes_per_s,
                    } => format!("next cap {}", fmt_rate(next_cap_bytes_per_s)),
                    Action::StopAndCopy { reason } => format!("stop-and-copy ({})", reason.label()),
                };
                self.line(format!(
                    "round {:>2}: sent {} in {} at cap {} ({} effective); dirtied {} (factor {:.3}, average {:.3}) -> {}",
                    record.round,
                    fmt_bytes(record.bytes_sent),
                    fmt_duration(record.duration_s),
                    fmt_rate(record.cap_bytes_per_s),
                    fmt_rate(record.effective_bytes_per_s),
                    fmt_bytes(record.dirty_bytes),
                    record.factor,
                    record.avg_factor,
                    next
                ));
            }
            Event::TimedOut { overdue } => self.line(format!(
                "{overdue}: {}",
                match overdue.action {
                    livemig_policy::TimeoutAction::Abort => "aborting; the guest keeps running on the source",
                    livemig_policy::TimeoutAction::Force => "forcing stop-and-copy now",
                }
            )),
            Event::StopAndCopy {
                reason,
                bytes,
                cap_bytes_per_s,
            } => {
                if let Some(b) = self.bar.take() {
                    b.finish_and_clear();
                }
                self.line(format!(
                    "guest paused on the source ({}); stop-and-copy of {} at cap {}",
                    reason.label(),
                    fmt_bytes(*bytes),
                    fmt_rate(*cap_bytes_per_s)
                ))
            }
            Event::Verified { how } => self.line(format!("verified: {how}")),
            Event::Committed => self.line(
                "committed (the source keeps its paused copy until the destination runs the guest)"
                    .into(),
            ),
            Event::Resolving { cause } => self.line(format!(
                "the destination's answer to the commit was lost ({cause}); reconnecting to settle the hand-over"
            )),
            Event::HandedOver { downtime_s } => self.line(format!(
                "handed over: the destination runs the guest, downtime {}",
                fmt_duration(*downtime_s)
            )),
            Event::Audited { audit } => self.line(crate::table::audit_line(audit)),
            Event::Failed { error, outcome } => {
                if let Some(b) = self.bar.take() {
                    b.abandon();
                }
                self.line(format!("failed ({outcome}): {error}"))
            }
            Event::Cancelled { phase } => {
                if let Some(b) = self.bar.take() {
                    b.abandon();
                }
                self.line(format!(
                    "cancelled during {phase}; the guest keeps running on the source"
                ))
            }
            Event::Listening { address } => self.line(format!("listening on {address}")),
            Event::Accepted { peer } => self.line(format!("{peer}: connected")),
            Event::Received { round, pages } => self.line(if *round == 0 {
                format!("stop-and-copy received: {}", fmt_bytes((*pages * PAGE_SIZE as u64) as f64))
            } else {
                format!("round {round} received: {}", fmt_bytes((*pages * PAGE_SIZE as u64) as f64))
            }),
            Event::Resumed { session } => self.line(format!(
                "session {session}: the guest runs here (verified, committed)"
            )),
            Event::Discarded { peer, reason } => self.line(format!("{peer}: {reason}")),
            Event::Held { reason } => self.line(format!(
                "the hand-over was interrupted after the copy verified ({reason}); holding it paused until the source settles it"
            )),
            Event::Settled { status } => self.line(format!(
                "a reconnecting source settled the hand-over: {status}"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ndjson_lines_carry_the_time_and_the_tag_and_parse_back() {
        let e = Event::Progress {
            round: 2,
            bytes_sent: 4096.0,
            bytes_remaining: 8192.0,
        };
        let s = serde_json::to_string(&Stamped {
            t_s: 1.5,
            event: e.clone(),
        })
        .expect("json");
        assert!(s.starts_with("{\"t_s\":1.5,\"event\":\"progress\""), "{s}");
        let back: Stamped = serde_json::from_str(&s).expect("parses");
        assert_eq!(back.event, e);
    }
}
