//! Live progress of an engine migration: an indicatif bar per round and a line when it ends.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use livemig_engine::Event;
use livemig_policy::Action;
use livemig_workload::units::{fmt_bytes, fmt_duration, fmt_rate};

/// Prints what the sender reports (to stderr); silent when `quiet`.
#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
    quiet: bool,
}

impl Progress {
    /// A printer; `quiet` prints nothing (for `--json`).
    pub fn new(quiet: bool) -> Progress {
        Progress { bar: None, quiet }
    }

    fn line(&self, s: String) {
        if !self.quiet {
            match &self.bar {
                Some(b) => b.println(s),
                None => crate::out::note(&s),
            }
        }
    }

    /// Handles one sender event.
    pub fn observe(&mut self, e: &Event<'_>) {
        if self.quiet {
            return;
        }
        match e {
            Event::Connected => self.line("connected; both ends proved the shared key".into()),
            Event::Committed => self.line(
                "the destination verified its copy; committed (the source keeps its paused copy until the destination runs the guest)"
                    .into(),
            ),
            Event::Resolving { cause } => self.line(format!(
                "the destination's answer to the commit was lost ({cause}); reconnecting to settle the hand-over"
            )),
            Event::Sampled(s) => {
                if let Some(&(t, d)) = s.points.last() {
                    self.line(format!(
                        "dirty-log sample: {} distinct dirty after {}",
                        fmt_bytes(d),
                        fmt_duration(t)
                    ));
                }
            }
            Event::RoundStarted { round, cap, pages } => {
                let bar = ProgressBar::with_draw_target(Some(*pages), ProgressDrawTarget::stderr());
                let style = ProgressStyle::with_template(
                    "round {prefix:>2} [{bar:30}] {percent:>3}% {msg} {elapsed_precise}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
                bar.set_style(style);
                bar.set_prefix(round.to_string());
                bar.set_message(format!(
                    "{} at cap {}",
                    fmt_bytes((*pages * 4096) as f64),
                    fmt_rate(*cap)
                ));
                self.bar = Some(bar);
            }
            Event::Progress { sent, .. } => {
                if let Some(b) = &self.bar {
                    b.set_position(*sent);
                }
            }
            Event::RoundEnded { stats, decision } => {
                if let Some(b) = self.bar.take() {
                    b.finish_and_clear();
                }
                let next = match decision.action {
                    Action::Continue {
                        next_cap_bytes_per_s,
                    } => format!("next cap {}", fmt_rate(next_cap_bytes_per_s)),
                    Action::StopAndCopy { reason } => format!("stop-and-copy ({})", reason.label()),
                };
                self.line(format!(
                    "round {:>2}: sent {} in {} at cap {} ({} effective); dirtied {} (factor {:.3}, average {:.3}) -> {}",
                    stats.round,
                    fmt_bytes(stats.bytes_sent),
                    fmt_duration(stats.duration_s),
                    fmt_rate(stats.cap_bytes_per_s),
                    fmt_rate(stats.effective_bytes_per_s()),
                    fmt_bytes(stats.dirty_bytes),
                    stats.factor(),
                    decision.audit.avg_factor,
                    next
                ));
            }
            Event::Paused { pages } => self.line(format!(
                "guest paused on the source; stop-and-copy of {}",
                fmt_bytes((*pages * 4096) as f64)
            )),
            Event::HandedOver { downtime_s } => self.line(format!(
                "destination verified every page (xxh3 digest) and confirmed; source acknowledged: handed over, downtime {}",
                fmt_duration(*downtime_s)
            )),
        }
    }
}
