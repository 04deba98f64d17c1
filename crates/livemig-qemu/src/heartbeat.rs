//! The guest's heartbeat lines (`livemig-hb N`) and the check that a migration kept them going.

/// Prefix of a heartbeat line (the guest program prints it).
pub const PREFIX: &str = "livemig-hb ";

/// The heartbeat numbers in console text, in order. A line split across two consoles (the
/// source printed its start, the destination its end) is whole once both texts are joined.
pub fn numbers(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix(PREFIX))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

/// Prefix of the guest program's progress line, `livemig-writes K T`: K page writes done
/// after T milliseconds of its own clock.
pub const WRITES_PREFIX: &str = "livemig-writes ";

/// The guest's progress in console text: `(writes, ms)` of every whole progress line, in
/// order. Lines that do not parse (cut at the switch-over, or from an older guest) are skipped.
pub fn writes(text: &str) -> Vec<(u64, u64)> {
    complete_lines(text)
        .lines()
        .filter_map(|l| l.trim().strip_prefix(WRITES_PREFIX))
        .filter_map(|rest| {
            let (k, t) = rest.trim().split_once(' ')?;
            Some((k.parse().ok()?, t.trim().parse().ok()?))
        })
        .collect()
}

/// The guest's page writes per second of its own clock between the progress points `a` and
/// `b`; `None` when they are less than 100 ms apart or go backwards.
pub fn writes_per_s(a: (u64, u64), b: (u64, u64)) -> Option<f64> {
    let dt = b.1.checked_sub(a.1)?;
    let dk = b.0.checked_sub(a.0)?;
    (dt >= 100).then(|| dk as f64 * 1000.0 / dt as f64)
}

/// The guest's page writes per second over (up to) the last `window_ms` of its progress
/// points, from at least half a second of them; `None` with less.
pub fn recent_writes_per_s(points: &[(u64, u64)], window_ms: u64) -> Option<f64> {
    let last = *points.last()?;
    let first = *points
        .iter()
        .find(|p| p.1.saturating_add(window_ms) >= last.1)
        .filter(|p| p.1.saturating_add(500) <= last.1)?;
    writes_per_s(first, last)
}

/// The text up to and including its last newline: the lines a console has finished. A line
/// still being written (or cut by the switch-over, `livemig-hb 12` of `livemig-hb 123`) is left
/// out.
pub fn complete_lines(text: &str) -> &str {
    text.rfind('\n').map_or("", |i| &text[..=i])
}

/// What [`continuity`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Continuity {
    /// The last heartbeat printed whole (newline included) on the source.
    pub last_on_source: u64,
    /// The first heartbeat that appeared on the destination.
    pub first_on_destination: u64,
    /// Heartbeats seen on the destination.
    pub on_destination: usize,
}

/// Why the heartbeat did not continue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeartbeatError {
    #[error("the source console has no heartbeat")]
    NoneOnSource,
    #[error("the destination console has no heartbeat after the source's last ({last})")]
    NoneOnDestination { last: u64 },
    #[error("the heartbeat jumps from {from} to {to} across the migration")]
    Gap { from: u64, to: u64 },
    #[error("the heartbeat restarted or went back: {from} then {to}")]
    Backwards { from: u64, to: u64 },
}

/// Checks that the destination's heartbeat continues the source's: joined, the two consoles
/// count up by exactly one at every line across the switch. Only the source's complete lines
/// count as the source's; a line cut at the switch is read whole once joined.
pub fn continuity(source: &str, destination: &str) -> Result<Continuity, HeartbeatError> {
    let src = numbers(complete_lines(source));
    let last = *src.last().ok_or(HeartbeatError::NoneOnSource)?;
    let joined = numbers(&format!("{source}{destination}"));
    let after: Vec<u64> = joined
        .into_iter()
        .skip(src.len().saturating_sub(1))
        .collect();
    // `after` starts with the source's last whole line (or the line completed on the
    // destination) and goes on with the destination's lines.
    let mut prev: Option<u64> = None;
    for &n in &after {
        if let Some(p) = prev {
            if n <= p {
                return Err(HeartbeatError::Backwards { from: p, to: n });
            }
            if n != p + 1 {
                return Err(HeartbeatError::Gap { from: p, to: n });
            }
        }
        prev = Some(n);
    }
    let dest = numbers(destination);
    let first = *dest
        .first()
        .ok_or(HeartbeatError::NoneOnDestination { last })?;
    Ok(Continuity {
        last_on_source: last,
        first_on_destination: first,
        on_destination: dest.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_parse_whole_and_skip_the_rest() {
        let text = "livemig-hb 1\nlivemig-writes 100 1000\nnoise\nlivemig-writes x 5\n\
                    livemig-writes 300 2000\nlivemig-writes 400 30";
        assert_eq!(writes(text), vec![(100, 1000), (300, 2000)]);
        assert_eq!(writes_per_s((100, 1000), (300, 2000)), Some(200.0));
        assert_eq!(writes_per_s((100, 1000), (300, 1050)), None);
        assert_eq!(writes_per_s((300, 2000), (100, 3000)), None);
        let points: Vec<(u64, u64)> = (0..=30).map(|i| (i * 100, i * 100)).collect();
        assert_eq!(recent_writes_per_s(&points, 2000), Some(1000.0));
        assert_eq!(recent_writes_per_s(&points[..4], 2000), None);
    }

    #[test]
    fn a_clean_switch_continues() {
        let c = continuity(
            "boot\nlivemig-hb 1\nlivemig-hb 2\n",
            "livemig-hb 3\nlivemig-hb 4\n",
        )
        .expect("continues");
        assert_eq!(c.last_on_source, 2);
        assert_eq!(c.first_on_destination, 3);
        assert_eq!(c.on_destination, 2);
    }

    #[test]
    fn a_line_split_across_the_switch_continues() {
        let c = continuity(
            "livemig-hb 11\nlivemig-hb 12\nlivemig-h",
            "b 13\nlivemig-hb 14\n",
        )
        .expect("continues");
        assert_eq!(c.last_on_source, 12);
        assert_eq!(c.first_on_destination, 14);
    }

    #[test]
    fn a_line_cut_inside_the_number_is_not_the_source_last() {
        // The source printed `livemig-hb 12` of `livemig-hb 123` before the switch-over.
        let c = continuity(
            "livemig-hb 121\nlivemig-hb 122\nlivemig-hb 12",
            "3\nlivemig-hb 124\n",
        )
        .expect("continues");
        assert_eq!(c.last_on_source, 122);
        assert_eq!(c.first_on_destination, 124);
        assert_eq!(complete_lines("a\nb"), "a\n");
        assert_eq!(complete_lines("b"), "");
    }

    #[test]
    fn restarts_gaps_and_silence_are_errors() {
        assert_eq!(
            continuity("livemig-hb 5\n", "livemig-hb 1\n"),
            Err(HeartbeatError::Backwards { from: 5, to: 1 })
        );
        assert_eq!(
            continuity("livemig-hb 5\n", "livemig-hb 9\n"),
            Err(HeartbeatError::Gap { from: 5, to: 9 })
        );
        assert_eq!(
            continuity("livemig-hb 5\n", "[ 3.1] Kernel panic\n"),
            Err(HeartbeatError::NoneOnDestination { last: 5 })
        );
        assert_eq!(continuity("", ""), Err(HeartbeatError::NoneOnSource));
    }
}
