//! The physical links, shared fairly: max-min fair rates (progressive filling) for flows that
//! each cross the uplink, their source's NIC and their target's NIC, each flow also bounded by
//! its own cap. Whatever the allocator grants, no flow goes faster than this.

/// One migration on the wire: its source and target host and the most it may send at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Flow {
    pub source: usize,
    pub target: usize,
    pub cap: f64,
}

/// The max-min fair rates of `flows` over an uplink of `uplink` bytes/s and host NICs of
/// `nics[h]` bytes/s: raise every flow together until a flow reaches its cap or a link is
/// full, freeze those, repeat. Every link carries at most its capacity (up to rounding) and
/// every flow either runs at its cap or crosses a full link.
pub fn max_min(flows: &[Flow], uplink: f64, nics: &[f64]) -> Vec<f64> {
    // Link 0 is the uplink, link 1 + h host h's NIC.
    let capacity: Vec<f64> = std::iter::once(uplink)
        .chain(nics.iter().copied())
        .collect();
    let links = |f: &Flow| [0, 1 + f.source, 1 + f.target];
    let mut left = capacity.clone();
    let mut count = vec![0usize; capacity.len()];
    let mut rate = vec![0.0; flows.len()];
    let mut active: Vec<usize> = Vec::with_capacity(flows.len());
    for (i, f) in flows.iter().enumerate() {
        let ok = f.cap > 0.0 && links(f).iter().all(|&l| l < capacity.len());
        if ok {
            active.push(i);
            for l in links(f) {
                count[l] += 1;
            }
        }
    }
    let full = |l: usize, left: &[f64]| left[l] <= 1e-12 * capacity[l].max(1.0);
    while !active.is_empty() {
        let mut inc = f64::INFINITY;
        for (l, &n) in count.iter().enumerate() {
            if n > 0 {
                inc = inc.min(left[l] / n as f64);
            }
        }
        for &i in &active {
            inc = inc.min(flows[i].cap - rate[i]);
        }
        let inc = inc.max(0.0);
        for &i in &active {
            rate[i] += inc;
        }
        for (l, &n) in count.iter().enumerate() {
            if n > 0 {
                left[l] = (left[l] - inc * n as f64).max(0.0);
            }
        }
        let before = active.len();
        active.retain(|&i| {
            let f = &flows[i];
            let done =
                flows[i].cap - rate[i] <= 1e-12 * f.cap || links(f).iter().any(|&l| full(l, &left));
            if done {
                for l in links(f) {
                    count[l] -= 1;
                }
            }
            !done
        });
        if active.len() == before {
            // Rounding left every flow a hair short: nothing more to share.
            break;
        }
    }
    rate
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(source: usize, target: usize, cap: f64) -> Flow {
        Flow {
            source,
            target,
            cap,
        }
    }

    #[test]
    fn shares_the_uplink_fairly_and_gives_the_capped_ones_rest_to_the_others() {
        let r = max_min(
            &[f(0, 1, 10.0), f(0, 2, 100.0), f(3, 2, 100.0)],
            90.0,
            &[1e9; 4],
        );
        assert_eq!(r, [10.0, 40.0, 40.0]);
    }

    #[test]
    fn a_nic_bottleneck_frees_uplink_for_the_others() {
        // Host 0's NIC carries 20 for two flows; the third takes the uplink's rest.
        let r = max_min(
            &[f(0, 1, 1e9), f(0, 2, 1e9), f(3, 4, 1e9)],
            100.0,
            &[20.0, 1e9, 1e9, 1e9, 1e9],
        );
        assert_eq!(r, [10.0, 10.0, 80.0]);
        let up: f64 = r.iter().sum();
        assert!(up <= 100.0 + 1e-9);
    }

    #[test]
    fn no_flows_no_rates_and_zero_caps_stay_at_zero() {
        assert!(max_min(&[], 1.0, &[1.0]).is_empty());
        assert_eq!(
            max_min(&[f(0, 1, 0.0), f(0, 1, 5.0)], 10.0, &[10.0, 10.0]),
            [0.0, 5.0]
        );
    }
}
