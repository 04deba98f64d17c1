//! How much guest memory this host can actually hold: the default limit of a destination.
//!
//! The smallest of: the kernel's `MemAvailable`, the cgroup's `memory.max` less what it uses,
//! and the process's address-space limit (`ulimit -v`). Whatever cannot be read is left out;
//! when nothing can be read the answer is [`FALLBACK`].

/// Used when no source of the host's memory can be read.
pub const FALLBACK: u64 = 1 << 30;

/// Bytes of guest memory this process can hold now (see the module docs).
pub fn holdable_bytes() -> u64 {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let available = read("/proc/meminfo").and_then(|t| meminfo_available(&t));
    let cgroup = match (
        read("/sys/fs/cgroup/memory.max").and_then(|t| cgroup_value(&t)),
        read("/sys/fs/cgroup/memory.current").and_then(|t| cgroup_value(&t)),
    ) {
        (Some(max), Some(cur)) => Some(max.saturating_sub(cur)),
        (Some(max), None) => Some(max),
        _ => None,
    };
    let rlimit = read("/proc/self/limits").and_then(|t| address_space_limit(&t));
    [available, cgroup, rlimit]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(FALLBACK)
}

/// `MemAvailable` of `/proc/meminfo`, in bytes.
pub fn meminfo_available(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// A cgroup v2 limit file's value (`max` is no limit).
pub fn cgroup_value(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// The soft "Max address space" of `/proc/self/limits`, in bytes (`unlimited` is none).
pub fn address_space_limit(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("Max address space"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_source_is_parsed_and_limits_are_optional() {
        let mi = "MemTotal:       24000000 kB\nMemFree:  1 kB\nMemAvailable:   2048 kB\n";
        assert_eq!(meminfo_available(mi), Some(2048 * 1024));
        assert_eq!(cgroup_value("max\n"), None);
        assert_eq!(cgroup_value("1073741824\n"), Some(1 << 30));
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max address space         1000000              unlimited            bytes     \n";
        assert_eq!(address_space_limit(limits), Some(1_000_000));
        let unlimited =
            "Max address space         unlimited            unlimited            bytes     \n";
        assert_eq!(address_space_limit(unlimited), None);
        let h = holdable_bytes();
        assert!(h > 0 && h < 1 << 50, "{h}");
    }
}
