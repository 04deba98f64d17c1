//! `livemig plan drain` end to end: the JSON's shape, every VM accounted for, one-line errors.

use assert_cmd::Command;
use predicates::prelude::*;

fn livemig() -> Command {
    Command::cargo_bin("livemig").expect("binary built")
}

#[test]
fn plan_drain_json_accounts_for_every_vm_under_every_scheme() {
    let out = livemig()
        .args([
            "plan",
            "drain",
            "--hosts",
            "5",
            "--drain",
            "2",
            "--vms-per-host",
            "6",
            "--host-memory",
            "128GiB",
            "--memory",
            "1GiB,2GiB",
            "--budget",
            "2Gbit",
            "--json",
        ])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
    assert_eq!(v["migrations"], 12);
    assert_eq!(v["budget_bytes_per_s"], 2e9 / 8.0);
    assert_eq!(v["uplink_bytes_per_s"], 1.25 * 2e9 / 8.0);
    let figures = v["figures"].as_array().expect("figures");
    let names: Vec<&str> = figures
        .iter()
        .map(|f| f["scheme"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["budget", "sequential", "fixed-slots", "unlimited"]);
    for f in figures {
        for key in [
            "time_to_empty_s",
            "peak_uplink_bytes_per_s",
            "peak_over_budget",
            "downtime_max_s",
            "downtime_median_s",
            "total_bytes",
        ] {
            assert!(f[key].as_f64().expect(key) >= 0.0, "{key}: {f}");
        }
        let n = |k: &str| f[k].as_u64().expect(k);
        assert_eq!(n("migrations"), 12, "{f}");
        assert_eq!(n("migrated") + n("failed"), 12, "{f}");
        assert_eq!(n("failed"), 0, "{f}");
        assert!(n("not_converged") <= n("migrated"), "{f}");
    }
    assert!(figures[0]["peak_over_budget"].as_f64().expect("peak") <= 1.0 + 1e-6);
}

#[test]
fn plan_drain_refuses_bad_input_in_one_line() {
    for (args, says) in [
        (&["--drain", "40"][..], "must stay"),
        (
            &["--mix", "idle:1,nope:2"][..],
            "unknown workload class `nope`",
        ),
        (&["--budget", "fast"][..], "--budget"),
        (
            &["--memory", "1TiB", "--host-memory", "512GiB"][..],
            "larger than a host",
        ),
    ] {
        livemig()
            .args(["plan", "drain"])
            .args(args)
            .assert()
            .code(2)
            .stderr(predicate::str::contains(says));
    }
}

/// The drain `bench-drain` measures on the testbed, simulated: the budget stays within U and
/// converges every VM; the fixed slots cannot converge the heavy ones and take far longer;
/// the uncapped schemes go over the budget.
#[test]
fn plan_drain_of_the_testbed_s_host_keeps_the_budget_s_claims() {
    let out = livemig()
        .args(["plan", "drain", "--testbed", "--json"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
    assert_eq!(v["migrations"], 6);
    assert_eq!(v["policy"], "fixed");
    let by = |name: &str| {
        v["figures"]
            .as_array()
            .and_then(|a| a.iter().find(|f| f["scheme"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("no {name}: {v}"))
    };
    let (budget, slots) = (by("budget"), by("fixed-slots"));
    let f = |x: &serde_json::Value, k: &str| x[k].as_f64().unwrap_or(f64::NAN);
    assert_eq!(budget["migrated"], 6, "{budget}");
    assert_eq!(budget["not_converged"], 0, "{budget}");
    assert!(f(&budget, "peak_over_budget") <= 1.0 + 1e-6, "{budget}");
    assert!(slots["not_converged"].as_u64() >= Some(1), "{slots}");
    assert!(
        f(&budget, "time_to_empty_s") < f(&slots, "time_to_empty_s"),
        "{v}"
    );
    assert!(
        f(&budget, "downtime_max_s") < f(&slots, "downtime_max_s"),
        "{v}"
    );
    for over in ["sequential", "unlimited"] {
        assert!(f(&by(over), "peak_over_budget") > 1.5, "{over}: {v}");
    }
}
