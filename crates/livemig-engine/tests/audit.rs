//! The hand-over check and the audit after it (protocol 4): a page written on the source
//! without reaching the dirty log passes the hand-over check (both ends' tables agree on the
//! stale page) and is named by the source's audit of its paused copy; a clean run audits
//! every page, and the pause's parts add up to it.

mod common;

use std::time::Duration;

use common::*;
use livemig_engine::receiver::ReceiverConfig;
use livemig_engine::sender::{migrate, SenderConfig};
use livemig_engine::wire::PAGE_SIZE;
use livemig_engine::{Control, Event, Guest, InitialContent, SimGuest};
use livemig_policy::report::{MemoryAudit, MigrationReport};
use livemig_policy::PolicyKind;

/// Guest size (MiB): small, so the two runs take well under a second.
const MIB_: u64 = 32;

/// Migrates `src` to a receiver thread, calling `on_stop` when stop-and-copy starts (the
/// guest is paused and its last dirty log read); returns the report, the audit events and
/// the destination's memory at the hand-over.
fn run(src: &SimGuest, mut on_stop: impl FnMut()) -> (MigrationReport, Vec<MemoryAudit>, Vec<u8>) {
    let (mut a, mut b) = pair();
    let dest = std::thread::spawn(move || receive_snapshot(&mut b, &ReceiverConfig::default()));
    let cfg = policy_cfg(MIB_);
    let mut policy = PolicyKind::DirtyFactor.build(cfg.clone()).expect("policy");
    let send_cfg = SenderConfig {
        stop_remaining: cfg.stop_remaining,
        ..SenderConfig::default()
    };
    let mut audits = Vec::new();
    let report = migrate(
        &mut a,
        &key(1),
        src,
        policy.as_mut(),
        &send_cfg,
        &Control::new(),
        &mut |e| match e {
            Event::StopAndCopy { .. } => on_stop(),
            Event::Audited { audit } => audits.push(audit.clone()),
            _ => {}
        },
    )
    .expect("the hand-over succeeds: both ends' tables agree");
    drop(a);
    let got = dest.join().expect("receiver thread").expect("received");
    (report, audits, got.memory_at_handover)
}

#[test]
fn a_page_the_dirty_log_missed_is_named_by_the_audit() {
    // An idle guest: nothing else is dirty, so stop-and-copy never resends the page by chance.
    let src = guest(MIB_, "idle", InitialContent::Random);
    // A page in the second 2 MiB region, written once everything was sent and the guest is
    // paused, behind the dirty log's back.
    let page = 700u64;
    let (report, audits, dest_mem) = run(&src, || {
        let old = src.memory().word(page, PAGE_SIZE / 8 - 1);
        src.inject_unlogged_write(page, !old);
    });
    let audit = report.summary.audit.as_ref().expect("an audit");
    assert!(!audit.passed, "{audit:?}");
    assert_eq!(audit.differing, 1);
    assert_eq!(audit.differing_pages, vec![page]);
    assert_eq!(audit.pages, src.memory().pages());
    assert_eq!(audits, vec![audit.clone()], "the audit is also an event");
    // The destination really runs the stale page: it differs from the paused source's.
    let mut now = [0u8; PAGE_SIZE];
    src.memory().read_page(page, &mut now).expect("in range");
    let at = page as usize * PAGE_SIZE;
    assert_ne!(&dest_mem[at..at + PAGE_SIZE], &now[..]);
    assert!(!src.is_running(), "the source's copy stays paused");
}

#[test]
fn a_clean_run_audits_every_page_and_its_pause_adds_up() {
    let src = guest(MIB_, "uniform:rate=8MiB/s", InitialContent::Random);
    std::thread::sleep(Duration::from_millis(50));
    let (report, audits, dest_mem) = run(&src, || {});
    let s = &report.summary;
    let audit = s.audit.as_ref().expect("an audit");
    assert!(audit.passed, "{audit:?}");
    assert_eq!((audit.differing, audit.pages), (0, src.memory().pages()));
    assert!(audit.differing_pages.is_empty());
    assert!(audit.time_s > 0.0);
    assert_eq!(audits.len(), 1);
    assert_eq!(dest_mem, memory_bytes(&src));
    let b = s.downtime_breakdown.expect("a breakdown");
    for (name, part) in [
        ("transfer", b.transfer_s),
        ("state", b.state_s),
        ("verify", b.verify_s),
        ("resume", b.resume_s),
    ] {
        assert!(
            part >= 0.0 && part <= s.downtime_s,
            "{name} {part} s of a pause of {} s",
            s.downtime_s
        );
    }
    assert!(
        (b.total_s() - s.downtime_s).abs() < 1e-9,
        "{b:?} vs {}",
        s.downtime_s
    );
    assert!(s.downtime_s > 0.0);
    // The report still parses without the new fields (older consumers' view) and with them.
    let json = serde_json::to_value(&report).expect("json");
    assert!(json["summary"]["downtime_breakdown"]["verify_s"].is_number());
    let back: MigrationReport = serde_json::from_value(json.clone()).expect("parses");
    assert_eq!(back.summary.audit, s.audit);
    let mut old = json;
    let summary = old["summary"].as_object_mut().expect("object");
    summary.remove("downtime_breakdown");
    summary.remove("audit");
    let back: MigrationReport = serde_json::from_value(old).expect("an older report parses");
    assert_eq!(back.summary.downtime_breakdown, None);
}
