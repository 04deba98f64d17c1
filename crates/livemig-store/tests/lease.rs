//! Leadership with fencing, on both backends: two stores on one database stand for two RMS
//! processes. One leads, the other follows; when the leader stops renewing, the follower
//! takes over after the ttl with a higher epoch, and the old leader's writes are refused
//! (`Fenced`) and write nothing.

mod common;

use std::thread::sleep;
use std::time::Duration;

use common::*;
use livemig_rms::Change;
use livemig_store::{Leadership, Lease, StoreError};

both_backends!(
    one_leads_the_other_follows,
    a_follower_takes_over_after_the_ttl_and_fences_the_old_leader,
    an_expired_lease_fences_even_without_a_takeover,
    a_store_that_never_led_writes_only_while_no_lease_is_live,
    resigning_hands_over_at_once,
    a_restarted_holder_takes_over_and_fences_its_predecessor,
    bad_requests_are_refused,
    racing_leaders_never_both_write,
    a_write_waits_for_a_takeover_in_flight_and_is_then_fenced,
);

fn host_change(name: &str) -> Change {
    Change::Host(Box::new(host(name)))
}

fn leader(l: Leadership) -> u64 {
    match l {
        Leadership::Leader { epoch } => epoch,
        other => panic!("expected to lead, got {other:?}"),
    }
}

fn fenced(e: StoreError) -> (Option<Lease>, Lease, bool) {
    match e {
        StoreError::Fenced {
            ours,
            current,
            expired,
        } => (ours, current, expired),
        other => panic!("expected Fenced, got {other:?}"),
    }
}

fn lease(holder: &str, epoch: u64) -> Lease {
    Lease {
        holder: holder.into(),
        epoch,
    }
}

const LONG: Duration = Duration::from_secs(30);
/// Long enough for a lead and a write to follow each other on a loaded machine.
const SHORT: Duration = Duration::from_secs(1);

fn one_leads_the_other_follows(db: &TestDb) {
    let mut a = db.open();
    let mut b = db.open();
    assert_eq!(leader(a.lead("rms-a", LONG).expect("leads")), 1);
    match b.lead("rms-b", LONG).expect("asks") {
        Leadership::Follower {
            holder,
            epoch,
            expires_in,
        } => {
            assert_eq!((holder.as_str(), epoch), ("rms-a", 1));
            assert!(expires_in <= LONG && expires_in > LONG - Duration::from_secs(10));
        }
        other => panic!("b should follow: {other:?}"),
    }
    // Renewing keeps the epoch.
    assert_eq!(leader(a.lead("rms-a", LONG).expect("renews")), 1);
    a.apply(&host_change("h1")).expect("the leader writes");
    let e = b
        .apply(&host_change("h2"))
        .expect_err("the follower may not");
    assert_eq!(fenced(e), (None, lease("rms-a", 1), false));
    assert_eq!(a.hosts().expect("reads"), vec![host("h1")]);
}

fn a_follower_takes_over_after_the_ttl_and_fences_the_old_leader(db: &TestDb) {
    let mut a = db.open();
    let mut b = db.open();
    assert_eq!(leader(a.lead("rms-a", SHORT).expect("leads")), 1);
    a.apply(&host_change("h1")).expect("the leader writes");
    assert!(matches!(
        b.lead("rms-b", SHORT).expect("asks"),
        Leadership::Follower { .. }
    ));
    // A stops renewing (a pause, a partition): B takes over once the ttl ran out.
    sleep(SHORT + Duration::from_millis(100));
    assert_eq!(leader(b.lead("rms-b", LONG).expect("takes over")), 2);

    let e = a
        .apply(&host_change("h2"))
        .expect_err("the old leader is fenced");
    assert_eq!(
        fenced(e),
        (Some(lease("rms-a", 1)), lease("rms-b", 2), false)
    );
    assert_eq!(b.host("h2").expect("reads"), None, "nothing written");
    // A learns it follows now; B writes.
    match a.lead("rms-a", SHORT).expect("asks") {
        Leadership::Follower { holder, epoch, .. } => {
            assert_eq!((holder.as_str(), epoch), ("rms-b", 2))
        }
        other => panic!("a should follow: {other:?}"),
    }
    b.apply(&host_change("h3")).expect("the new leader writes");
    assert_eq!(b.hosts().expect("reads"), vec![host("h1"), host("h3")]);
}

fn an_expired_lease_fences_even_without_a_takeover(db: &TestDb) {
    let mut a = db.open();
    assert_eq!(leader(a.lead("rms-a", SHORT).expect("leads")), 1);
    sleep(SHORT + Duration::from_millis(100));
    let e = a.apply(&host_change("h1")).expect_err("expired");
    assert_eq!(
        fenced(e),
        (Some(lease("rms-a", 1)), lease("rms-a", 1), true)
    );
    // Leading again is a new term.
    assert_eq!(leader(a.lead("rms-a", LONG).expect("leads again")), 2);
    a.apply(&host_change("h1")).expect("writes");
}

fn a_store_that_never_led_writes_only_while_no_lease_is_live(db: &TestDb) {
    let mut tool = db.open();
    tool.apply(&host_change("h1"))
        .expect("no lease yet: single-process use");
    let mut a = db.open();
    leader(a.lead("rms-a", LONG).expect("leads"));
    let e = tool
        .apply(&host_change("h2"))
        .expect_err("a leader is live");
    assert_eq!(fenced(e), (None, lease("rms-a", 1), false));
    a.resign().expect("resigns");
    tool.apply(&host_change("h2"))
        .expect("the lease is no longer live");
    assert_eq!(tool.hosts().expect("reads").len(), 2);
}

fn resigning_hands_over_at_once(db: &TestDb) {
    let mut a = db.open();
    let mut b = db.open();
    leader(a.lead("rms-a", LONG).expect("leads"));
    a.resign().expect("resigns");
    assert_eq!(leader(b.lead("rms-b", LONG).expect("takes over")), 2);
    assert!(a.apply(&host_change("h1")).is_err(), "a resigned");
    a.resign()
        .expect("resigning a lease no longer held does nothing");
    b.apply(&host_change("h1")).expect("b writes");
}

fn a_restarted_holder_takes_over_and_fences_its_predecessor(db: &TestDb) {
    let mut old = db.open();
    leader(old.lead("rms-a", LONG).expect("leads"));
    // The same RMS restarted (same name) need not wait for its own lease to run out.
    let mut new = db.open();
    assert_eq!(leader(new.lead("rms-a", LONG).expect("takes over")), 2);
    let e = old
        .apply(&host_change("h1"))
        .expect_err("the ghost is fenced");
    assert_eq!(
        fenced(e),
        (Some(lease("rms-a", 1)), lease("rms-a", 2), false)
    );
    new.apply(&host_change("h1"))
        .expect("the new process writes");
    assert_eq!(
        leader(new.lead("rms-a", LONG).expect("renews")),
        2,
        "renewal keeps the term"
    );
}

fn bad_requests_are_refused(db: &TestDb) {
    let mut a = db.open();
    for (holder, ttl) in [
        ("", LONG),
        ("rms-a", Duration::ZERO),
        ("rms-a", Duration::from_secs(2 * 24 * 3600)),
    ] {
        let e = a.lead(holder, ttl).expect_err("refused");
        assert!(matches!(e, StoreError::BadLease(_)), "{e:?}");
    }
    a.apply(&host_change("h1"))
        .expect("a refused request leads nothing");
}

/// Two leaders in two threads with a short ttl, each leading and writing in a loop (and now
/// and then missing a renewal): both lead at times, each epoch is granted to one holder only,
/// each holder's epochs only grow, and every write that returned `Ok` is in the database (a
/// fenced one is not).
fn racing_leaders_never_both_write(db: &TestDb) {
    let ttl = Duration::from_millis(100);
    let run = |name: &'static str| {
        let mut store = db.open();
        move || {
            let mut led = Vec::new();
            let mut wrote = Vec::new();
            let deadline = std::time::Instant::now() + Duration::from_millis(2500);
            let mut n = 0u32;
            while std::time::Instant::now() < deadline {
                let epoch = match store.lead(name, ttl).expect("asks") {
                    Leadership::Leader { epoch } => {
                        if led.last() != Some(&epoch) {
                            led.push(epoch);
                        }
                        epoch
                    }
                    Leadership::Follower { .. } => {
                        sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                // Sometimes miss a renewal so the other takes over.
                if n % 7 == 3 {
                    sleep(ttl + Duration::from_millis(20));
                }
                n += 1;
                let mut h = host(&format!("{name}-{n}"));
                h.address = format!("{name}@{epoch}");
                match store.apply(&Change::Host(Box::new(h.clone()))) {
                    Ok(()) => wrote.push((epoch, h.name)),
                    Err(StoreError::Fenced { .. }) => {}
                    Err(e) => panic!("{name}: {e}"),
                }
            }
            (led, wrote)
        }
    };
    let (a, b) = (run("a"), run("b"));
    let ((led_a, wrote_a), (led_b, wrote_b)) = std::thread::scope(|s| {
        let ta = s.spawn(a);
        let tb = s.spawn(b);
        (ta.join().expect("a runs"), tb.join().expect("b runs"))
    });
    assert!(!led_a.is_empty() && !led_b.is_empty(), "both led at times");
    let epochs_a: std::collections::BTreeSet<u64> = led_a.iter().copied().collect();
    let epochs_b: std::collections::BTreeSet<u64> = led_b.iter().copied().collect();
    assert!(epochs_a.is_disjoint(&epochs_b), "{led_a:?} / {led_b:?}");
    for led in [&led_a, &led_b] {
        assert!(led.windows(2).all(|w| w[0] < w[1]), "{led:?}");
    }
    for (led, wrote) in [(&epochs_a, &wrote_a), (&epochs_b, &wrote_b)] {
        assert!(wrote.iter().all(|w| led.contains(&w.0)), "{wrote:?}");
    }
    let stored: std::collections::BTreeSet<String> = db
        .open()
        .hosts()
        .expect("reads")
        .into_iter()
        .map(|h| h.name)
        .collect();
    let acked: std::collections::BTreeSet<String> = wrote_a
        .iter()
        .chain(&wrote_b)
        .map(|w| w.1.clone())
        .collect();
    assert_eq!(stored, acked, "exactly the acknowledged writes are stored");
}

/// The check and the write are one transaction holding the lease row: a write that starts
/// while a takeover holds the row waits for it, then sees the new epoch and is refused.
fn a_write_waits_for_a_takeover_in_flight_and_is_then_fenced(db: &TestDb) {
    let mut a = db.open();
    leader(a.lead("rms-a", LONG).expect("leads"));
    let mut takeover = db.raw();
    takeover.begin_write();
    takeover.batch("UPDATE leader SET holder = 'rms-b', epoch = epoch + 1 WHERE id = 1");
    std::thread::scope(|s| {
        let write = s.spawn(|| a.apply(&host_change("h1")));
        sleep(Duration::from_millis(300));
        assert!(!write.is_finished(), "the write waits for the row");
        takeover.batch("COMMIT");
        let e = write.join().expect("runs").expect_err("fenced");
        assert_eq!(
            fenced(e),
            (Some(lease("rms-a", 1)), lease("rms-b", 2), false)
        );
    });
    assert_eq!(db.open().hosts().expect("reads"), vec![], "nothing written");
}
