//! The `livemig` binary end to end: output shapes, plots, and one-line errors on bad input.

use assert_cmd::Command;
use predicates::prelude::*;

fn livemig() -> Command {
    Command::cargo_bin("livemig").expect("binary built")
}

fn simulate(extra: &[&str]) -> Command {
    let mut c = livemig();
    c.args([
        "simulate",
        "--memory",
        "1GiB",
        "--workload",
        "uniform:rate=5MiB/s",
    ]);
    c.args(extra);
    c
}

#[test]
fn simulate_json_has_the_shared_shape() {
    let out = simulate(&["--json"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
    assert_eq!(v["policy"], "dirty-factor");
    assert_eq!(v["memory_bytes"], 1073741824.0);
    assert!(v["threshold"].as_f64().expect("T") > 0.0);
    let r0 = &v["rounds"][0];
    for key in [
        "round",
        "cap_bytes_per_s",
        "bytes_sent",
        "duration_s",
        "effective_bytes_per_s",
        "dirty_bytes",
        "dirty_rate_bytes_per_s",
        "factor",
        "avg_factor",
        "decision",
    ] {
        assert!(!r0[key].is_null(), "round field {key}");
    }
    assert!(!r0["decision"]["audit"]["branch"].is_null());
    for key in [
        "converged",
        "stop_reason",
        "rounds",
        "total_time_s",
        "downtime_s",
        "total_bytes",
        "peak_bytes_per_s",
        "mean_bytes_per_s",
        "stop_copy_bytes",
    ] {
        assert!(!v["summary"][key].is_null(), "summary field {key}");
    }
    assert_eq!(v["summary"]["converged"], true);
}

#[test]
fn simulate_prints_table_and_writes_plots() {
    let dir = tempfile::tempdir().expect("tempdir");
    for ext in ["svg", "png"] {
        let path = dir.path().join(format!("p.{ext}"));
        simulate(&["--plot", path.to_str().expect("utf-8")])
            .assert()
            .success()
            .stdout(
                predicate::str::contains("dirty rate").and(predicate::str::contains("converged")),
            );
        let len = std::fs::metadata(&path).expect("plot written").len();
        assert!(len > 1000, "{ext} plot is {len} bytes");
    }
}

#[test]
fn every_policy_runs() {
    for p in ["dirty-factor", "xen", "xen-v2", "qemu", "fixed"] {
        simulate(&["--policy", p, "--json"])
            .assert()
            .success()
            .stdout(predicate::str::contains(format!("\"policy\": \"{p}\"")));
    }
}

fn fails_with(args: &[&str], needle: &str) {
    let out = livemig().args(args).assert().failure().get_output().clone();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(needle),
        "stderr `{err}` should contain `{needle}`"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_input_gets_one_line_errors() {
    let base = ["simulate", "--memory", "1GiB"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--workload", "bogus:rate=1"], "`bogus`"),
        (vec!["--workload", "uniform:rate=-1"], "`-1`"),
        (
            vec!["--workload", "hotcold:rate=1MiB/s,hot=150%,share=90%"],
            "hot=150%",
        ),
        (vec!["--rounds", "0"], "N must be at least 1"),
        (vec!["--stop-remaining", "2GiB"], "stop level h"),
        (
            vec!["--min-bandwidth", "10Gbit/s", "--max-bandwidth", "1Gbit/s"],
            "above the maximum",
        ),
        (
            vec!["--workload", "trace:file=/no/such/trace.csv"],
            "/no/such/trace.csv",
        ),
        (vec!["--plot", "/tmp/x.gif"], ".svg or .png"),
        (
            vec![
                "--workload",
                "hotcold:rate=1MiB/s,rate=2MiB/s,hot=5%,share=90%",
            ],
            "gives `rate` twice",
        ),
    ];
    for (extra, needle) in cases {
        let mut args = base.to_vec();
        args.extend(extra);
        let out = livemig().args(&args).assert().code(2).get_output().clone();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            err.contains(needle),
            "{args:?}: `{err}` should contain `{needle}`"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    }
    fails_with(&["simulate", "--memory", "lots"], "`lots`");
    fails_with(
        &["simulate", "--memory", "1GiB", "--policy", "nope"],
        "nope",
    );
    fails_with(&["simulate"], "--memory is required");
    fails_with(
        &["bench", "--suite", "/no/such/suite.toml"],
        "/no/such/suite.toml",
    );
}

#[test]
fn trace_workload_replays_a_csv() {
    let dir = tempfile::tempdir().expect("tempdir");
    let trace = dir.path().join("t.csv");
    std::fs::write(
        &trace,
        "time_s,dirty_rate_bytes_per_s\n0,10485760\n30,52428800\n",
    )
    .expect("write");
    let spec = format!("trace:file={}", trace.display());
    let out = livemig()
        .args([
            "simulate",
            "--memory",
            "1GiB",
            "--workload",
            &spec,
            "--json",
        ])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
    // Round 1 at 100 Mbit/s takes ~86 s: it crosses the step at 30 s.
    let r1 = &v["rounds"][0];
    let rate = r1["dirty_rate_bytes_per_s"].as_f64().expect("rate");
    assert!(rate > 10485760.0 * 0.3 && rate < 52428800.0, "{rate}");
}

#[test]
fn bench_runs_the_suite_and_writes_a_report() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = livemig()
        .args([
            "bench",
            "--json",
            "--report",
            dir.path().to_str().expect("utf-8"),
        ])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
    let scenarios = v.as_array().expect("array");
    assert!(scenarios.len() >= 12);
    assert!(scenarios[0]["results"].as_array().expect("results").len() >= 5);
    let md = std::fs::read_to_string(dir.path().join("report.md")).expect("report");
    for s in scenarios {
        let name = s["scenario"].as_str().expect("name");
        assert!(md.contains(&format!("## {name}")));
        assert!(dir.path().join(format!("{name}.svg")).exists());
    }
}

#[test]
fn scenario_file_can_drive_simulate() {
    livemig()
        .args([
            "simulate",
            "--scenario",
            "../../scenarios/suite.toml",
            "--name",
            "scan-2g",
            "--json",
        ])
        .assert()
        .success()
        .stdout(predicate::str::contains("scan:rate=50MiB/s"));
    fails_with(
        &[
            "simulate",
            "--scenario",
            "../../scenarios/suite.toml",
            "--name",
            "nope",
        ],
        "no scenario `nope`",
    );
}

#[test]
fn flags_override_a_scenario_file() {
    let out = livemig()
        .args([
            "simulate",
            "--scenario",
            "../../scenarios/suite.toml",
            "--name",
            "scan-2g",
            "--policy",
            "fixed",
            "--bandwidth",
            "100MiB/s",
            "--rounds",
            "3",
            "--json",
        ])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
    assert_eq!(v["rounds"][0]["cap_bytes_per_s"], 100.0 * 1024.0 * 1024.0);
    assert!(v["summary"]["rounds"].as_u64().expect("rounds") <= 3);
    assert_eq!(v["memory_bytes"], 2.0 * 1024.0 * 1024.0 * 1024.0);
}

/// Regression: `--threshold` was parsed but not applied once the policy flags became overrides.
#[test]
fn threshold_flag_reaches_the_policy() {
    let out = simulate(&["--threshold", "0.9", "--json"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
    assert_eq!(v["threshold"], 0.9);
}

/// `livemig ARGS` with stdout on `/dev/full` (every write fails with ENOSPC).
fn stdout_full(args: &[&str]) -> std::process::Output {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    std::process::Command::new(assert_cmd::cargo::cargo_bin("livemig"))
        .args(args)
        .stdout(full)
        .output()
        .expect("livemig runs")
}

/// `livemig ARGS` with stdout on a pipe whose reader is gone before the first write (EPIPE),
/// as `livemig ... | head` ends once `head` has read enough.
fn stdout_closed(args: &[&str]) -> std::process::Output {
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("livemig"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("livemig runs");
    drop(child.stdout.take());
    child.wait_with_output().expect("livemig ends")
}

/// Regression (issue 8): `println!` panicked on a full disk and on a closed pipe. A failed
/// write is one error line and status 2; a reader that went away ends the command quietly
/// with status 0.
#[test]
fn output_errors_are_one_line_or_quiet_never_a_panic() {
    let engine = [
        "bench-engine",
        "--memory",
        "1MiB",
        "--repeat",
        "1",
        "--cap",
        "16MiB/s",
        "--cap-duration",
        "1s",
    ];
    let cases: Vec<Vec<&str>> = vec![
        vec!["simulate", "--memory", "1GiB"],
        vec!["simulate", "--memory", "1GiB", "--json"],
        vec!["bench", "--policies", "fixed"],
        vec!["bench", "--policies", "fixed", "--json"],
        engine.to_vec(),
        [&engine[..], &["--json"]].concat(),
    ];
    for args in cases {
        let out = stdout_full(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?} > /dev/full: {err}");
        assert_eq!(out.status.code(), Some(2), "{args:?} > /dev/full: {err}");
        let last = err.trim_end().lines().last().unwrap_or_default();
        assert!(
            last.starts_with("livemig: error: cannot write to standard output"),
            "{args:?} > /dev/full: {err}"
        );

        let out = stdout_closed(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?} | closed: {err}");
        assert!(!err.contains("livemig: error"), "{args:?} | closed: {err}");
        assert_eq!(out.status.code(), Some(0), "{args:?} | closed: {err}");
    }
}

/// Regression (issue 8): `bench --report` checked its directory only after the whole run.
#[test]
fn bench_report_directory_is_checked_before_the_run() {
    let out = livemig()
        .args([
            "bench",
            "--policies",
            "fixed",
            "--report",
            "/dev/null/report",
        ])
        .assert()
        .code(2)
        .get_output()
        .clone();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot create the report directory /dev/null/report"),
        "{err}"
    );
    assert!(!err.contains("done"), "the suite ran first: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

/// Regression (issue 8): a report that fails half-way left the files written so far. Every
/// file is now written under a temporary name and renamed into place once all are written.
#[test]
fn a_failed_bench_report_leaves_no_partial_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let suite = dir.path().join("suite.toml");
    // The second scenario's plot cannot be written (its name points into a missing folder).
    std::fs::write(
        &suite,
        "[[scenario]]\nname = \"first\"\nmemory = \"1GiB\"\nworkload = \"idle\"\n\n\
         [[scenario]]\nname = \"missing/second\"\nmemory = \"1GiB\"\nworkload = \"idle\"\n",
    )
    .expect("suite");
    let report = dir.path().join("report");
    std::fs::create_dir(&report).expect("report dir");
    std::fs::write(report.join("report.md"), "old").expect("old report");
    livemig()
        .args(["bench", "--policies", "fixed", "--suite"])
        .arg(&suite)
        .arg("--report")
        .arg(&report)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("missing/second.svg"));
    let mut left: Vec<String> = std::fs::read_dir(&report)
        .expect("read")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["report.md"], "partial or temporary files left");
    let md = std::fs::read_to_string(report.join("report.md")).expect("report.md");
    assert_eq!(
        md, "old",
        "the previous report was replaced by a partial one"
    );
}

/// Regression (issue 8): `simulate --memory 1e308` printed `inf` and JSON nulls. Sizes, rates
/// and durations beyond the documented bounds are one error line, in `simulate` and, through
/// the same scenario resolution, in `demo` and `migrate` before they start anything.
#[test]
fn quantities_beyond_the_bounds_are_one_line_errors() {
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["simulate", "--memory", "1e308"],
            "memory size must be a positive number of bytes up to 64 TiB, got 1e308",
        ),
        (
            vec![
                "simulate",
                "--memory",
                "1GiB",
                "--max-bandwidth",
                "1e308B/s",
            ],
            "up to 10 Tbit/s",
        ),
        (
            vec![
                "simulate",
                "--memory",
                "1GiB",
                "--workload",
                "uniform:rate=1e308",
            ],
            "rate 1e308 must be between 0 and 10 Tbit/s",
        ),
        (
            vec![
                "simulate",
                "--memory",
                "1GiB",
                "--link-capacity",
                "1e308B/s",
            ],
            "link_capacity must be positive and at most 10 Tbit/s",
        ),
        (
            vec!["simulate", "--memory", "1GiB", "--resume-latency", "1e308s"],
            "resume_latency must be at most 3 days",
        ),
        (
            vec!["simulate", "--memory", "1GiB", "--downtime-limit", "100h"],
            "at most 3 days",
        ),
        (vec!["demo", "--memory", "1e308"], "up to 64 TiB"),
        (
            vec![
                "migrate",
                "--to",
                "127.0.0.1:9",
                "--key",
                "/no/such/key",
                "--memory",
                "1e308",
            ],
            "up to 64 TiB",
        ),
    ];
    for (args, needle) in cases {
        let out = livemig()
            .args(&args)
            .timeout(std::time::Duration::from_secs(60))
            .assert()
            .code(2)
            .get_output()
            .clone();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(needle),
            "{args:?}: `{err}` should contain `{needle}`"
        );
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{args:?}: one line: {err}"
        );
        assert!(out.stdout.is_empty(), "{args:?}: printed a result");
    }
}

/// Regression (issue 8): `bench-engine --cap 1e308` aborted, `--memory 4GiB` divided by zero
/// (where the host holds it), `--cap 1bit/s` and `--memory 1e308` hung. Every flag is checked
/// before any work: one line, status 2, no run started.
#[test]
fn bench_engine_checks_every_flag_before_any_work() {
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--cap", "1e308B/s"], "--cap must be between 1 MiB/s"),
        (vec!["--cap", "1bit/s"], "--cap must be between 1 MiB/s"),
        (
            vec!["--memory", "1e308"],
            "--memory 1e308: the guest must be",
        ),
        (vec!["--memory", "65GiB"], "64 GiB"),
        (vec!["--memory", "1000"], "one page"),
        (vec!["--repeat", "0"], "--repeat must be between 1 and 100"),
        (vec!["--cap-duration", "1e308s"], "--cap-duration must be"),
        (
            vec!["--cap", "100Gbit/s", "--cap-duration", "10m"],
            "--cap 100Gbit/s x --cap-duration 10m",
        ),
    ];
    for (extra, needle) in cases {
        let out = livemig()
            .arg("bench-engine")
            .args(&extra)
            .timeout(std::time::Duration::from_secs(60))
            .assert()
            .code(2)
            .get_output()
            .clone();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(needle),
            "{extra:?}: `{err}` should contain `{needle}`"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "{extra:?}: {err}");
        assert!(!err.contains("run 1"), "{extra:?}: work started: {err}");
    }
}

#[test]
fn demo_help_names_one_default_per_flag() {
    let out = assert_cmd::Command::cargo_bin("livemig")
        .expect("binary")
        .args(["demo", "--help"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let help = String::from_utf8_lossy(&out);
    for (flag, want) in [
        ("--stop-remaining", "[default: 8MiB]"),
        ("--min-bandwidth", "[default: 400Mbit/s]"),
    ] {
        let at = help.find(&format!("{flag} <")).expect("the flag is listed");
        let text = &help[at..];
        let end = text[2..].find("\n      --").map_or(text.len(), |e| e + 2);
        let entry = &text[..end];
        assert_eq!(entry.matches("[default:").count(), 1, "{entry}");
        assert!(entry.contains(want), "{entry}");
    }
}

#[test]
fn a_rate_or_duration_without_a_unit_is_refused_and_downtime_reads_ms() {
    for (flag, value, want) in [
        ("--min-bandwidth", "100", "rate with a unit"),
        ("--max-bandwidth", "1000", "rate with a unit"),
        ("--resume-latency", "5", "duration with a unit"),
    ] {
        let out = assert_cmd::Command::cargo_bin("livemig")
            .expect("binary")
            .args(["simulate", "--memory", "1GiB", flag, value])
            .assert()
            .code(2)
            .get_output()
            .stderr
            .clone();
        let err = String::from_utf8_lossy(&out);
        assert!(
            err.contains(want) && err.contains("100Mbit/s") || err.contains("300ms"),
            "{flag} {value}: {err}"
        );
    }
    // A plain downtime limit is milliseconds: the same run as with `300ms`.
    let run = |v: &str| {
        let out = assert_cmd::Command::cargo_bin("livemig")
            .expect("binary")
            .args([
                "simulate",
                "--memory",
                "1GiB",
                "--policy",
                "qemu",
                "--downtime-limit",
                v,
                "--json",
            ])
            .assert()
            .success()
            .get_output()
            .stdout
            .clone();
        let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
        v["summary"]["total_bytes"].as_f64().expect("bytes")
    };
    assert_eq!(run("300"), run("300ms"));
    assert_ne!(run("300"), run("300s"));
}

/// The long help of `args`, split into one entry per option.
fn help_entries(args: &[&str]) -> Vec<String> {
    let out = livemig()
        .args(args)
        .arg("--help")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let help = String::from_utf8_lossy(&out).to_string();
    let mut entries: Vec<String> = Vec::new();
    for line in help.lines() {
        let t = line.trim_start();
        let indent = line.len() - t.len();
        if t.starts_with('-') && indent <= 6 {
            entries.push(String::new());
        } else if indent <= 6 && !t.is_empty() {
            // A section heading or the examples: not an option.
            entries.push(String::new());
            continue;
        }
        if let Some(e) = entries.last_mut() {
            e.push_str(line);
            e.push('\n');
        }
    }
    entries.retain(|e| !e.is_empty());
    entries
}

fn entry<'a>(entries: &'a [String], flag: &str) -> &'a str {
    entries
        .iter()
        .find(|e| e.trim_start().starts_with(&format!("{flag} <")))
        .unwrap_or_else(|| panic!("{flag} is listed"))
}

/// One set of defaults: every option of every command that runs a policy names its default at
/// most once, and the shared settings show the same defaults everywhere (demo's own aside).
#[test]
fn help_names_each_default_once() {
    let commands: [&[&str]; 5] = [
        &["simulate"],
        &["migrate"],
        &["demo"],
        &["receive"],
        &["qemu", "migrate"],
    ];
    for args in commands {
        let entries = help_entries(args);
        for e in &entries {
            assert!(e.matches("[default:").count() <= 1, "{args:?}: {e}");
        }
        if args != ["simulate"] {
            let h = entry(&entries, "--progress");
            assert!(
                h.contains("[default: human; none with --json]"),
                "{args:?}: {h}"
            );
        }
        if args != ["receive"] {
            let h = entry(&entries, "--rounds");
            assert!(h.contains("[default: 10]"), "{args:?}: {h}");
            let h = entry(&entries, "--max-bandwidth");
            assert!(h.contains("[default: 10Gbit/s]"), "{args:?}: {h}");
            let (stop, min) = if args == ["demo"] {
                ("8MiB", "400Mbit/s")
            } else {
                ("64MiB", "100Mbit/s")
            };
            let h = entry(&entries, "--stop-remaining");
            assert!(h.contains(&format!("[default: {stop}]")), "{args:?}: {h}");
            let h = entry(&entries, "--min-bandwidth");
            assert!(h.contains(&format!("[default: {min}]")), "{args:?}: {h}");
        }
    }
}

/// `--policy` lists every policy with a line on what it does; real migrations default to
/// `predictive`, the simulator to the method.
#[test]
fn policy_help_lists_the_policies_and_the_defaults() {
    for (args, default) in [
        (&["migrate"][..], "predictive"),
        (&["demo"][..], "predictive"),
        (&["qemu", "migrate"][..], "predictive"),
        (&["simulate"][..], "dirty-factor"),
    ] {
        let entries = help_entries(args);
        let h = entry(&entries, "--policy");
        for p in [
            "dirty-factor",
            "predictive",
            "xen",
            "xen-v2",
            "qemu",
            "fixed",
        ] {
            assert!(h.contains(&format!("- {p}:")), "{args:?} lists {p}: {h}");
        }
        assert!(
            h.contains(&format!("[default: {default}]")),
            "{args:?}: {h}"
        );
        assert_eq!(
            h.contains("qemu-native"),
            args == ["qemu", "migrate"],
            "{args:?}: {h}"
        );
    }
}

/// A value clap refuses is one line naming it and what is allowed, exit 2, nothing started.
#[test]
fn bad_choices_are_one_line_and_exit_2() {
    for (args, needles) in [
        (
            &["demo", "--policy", "nope"][..],
            &["'nope'", "--policy", "predictive", "dirty-factor"][..],
        ),
        (
            &["simulate", "--memory", "1GiB", "--policy", "nope"][..],
            &["'nope'", "xen-v2"][..],
        ),
        (
            &[
                "migrate",
                "--to",
                "127.0.0.1:9",
                "--key",
                "k",
                "--on-timeout",
                "bogus",
            ][..],
            &["'bogus'", "--on-timeout", "abort", "force"][..],
        ),
        (
            &["demo", "--progress", "loud"][..],
            &["'loud'", "human"][..],
        ),
    ] {
        let out = livemig().args(args).assert().code(2).get_output().clone();
        let err = String::from_utf8_lossy(&out.stderr);
        for n in needles {
            assert!(err.contains(n), "{args:?}: `{err}` should contain {n}");
        }
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    // Bad timeouts are refused before anything starts.
    let out = livemig()
        .args(["demo", "--progress-timeout", "soon"])
        .assert()
        .code(2)
        .get_output()
        .clone();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--progress-timeout"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

#[test]
fn completions_and_man_pages_come_from_the_definitions() {
    for shell in ["bash", "zsh", "fish"] {
        let out = livemig()
            .args(["completions", shell])
            .assert()
            .success()
            .get_output()
            .stdout
            .clone();
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("stop-remaining"), "{shell}: {text}");
        assert!(text.contains("predictive"), "{shell}");
    }
    let out = livemig()
        .arg("man")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let page = String::from_utf8_lossy(&out);
    assert!(
        page.starts_with(".ie") || page.contains(".TH livemig"),
        "{page}"
    );
    assert!(page.contains("migrate"), "{page}");
    let dir = tempfile::tempdir().expect("tempdir");
    livemig()
        .args(["man", "--out"])
        .arg(dir.path())
        .assert()
        .success();
    let page = std::fs::read_to_string(dir.path().join("livemig-migrate.1")).expect("page");
    assert!(page.contains("\\-\\-on\\-timeout"), "{page}");
    assert!(dir.path().join("livemig-qemu-migrate.1").is_file());
}

/// `RUST_LOG` turns on diagnostics on stderr without touching stdout.
#[test]
fn rust_log_writes_diagnostics_to_stderr_only() {
    let quiet = simulate(&["--json"])
        .assert()
        .success()
        .get_output()
        .clone();
    assert!(quiet.stderr.is_empty(), "{:?}", quiet.stderr);
    let loud = simulate(&["--json"])
        .env("RUST_LOG", "livemig=debug")
        .assert()
        .success()
        .get_output()
        .clone();
    assert_eq!(loud.stdout, quiet.stdout);
    let err = String::from_utf8_lossy(&loud.stderr);
    assert!(err.contains("parsed arguments"), "{err}");
    assert!(!err.contains('\u{1b}'), "no colour off a terminal: {err}");
}
