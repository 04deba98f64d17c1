//! The RMS end to end against fake agents: placement with a refusal, the hand-over moving the
//! VM's location once, a failure leaving it, cancel, VM create/delete, recovery after a
//! restart, lost hosts.

mod common;

use std::time::Duration;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

const MIB: u64 = 1 << 20;

async fn vm_on(rms: &Rms, vm: &str) -> Value {
    let (status, v) = call(Method::GET, &rms.url(&format!("/api/v1/vms/{vm}")), None).await;
    assert_eq!(status, 200, "{v}");
    v
}

async fn create(rms: &Rms, name: &str, host: Option<&str>) -> Value {
    let mut body = json!({"name": name, "memory_bytes": 64 * MIB, "workload": "uniform:rate=1MiB/s", "kind": "sim"});
    if let Some(h) = host {
        body["host"] = json!(h);
    }
    let (status, v) = call(Method::POST, &rms.url("/api/v1/vms"), Some(body)).await;
    assert_eq!(status, 201, "{v}");
    v
}

async fn migrate(rms: &Rms, vm: &str, target: Option<&str>) -> u64 {
    let mut body = json!({"vm": vm});
    if let Some(t) = target {
        body["target"] = json!(t);
    }
    let (status, v) = call(Method::POST, &rms.url("/api/v1/migrations"), Some(body)).await;
    assert_eq!(status, 202, "{v}");
    v["id"].as_u64().expect("an id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_is_recorded_and_the_next_host_gets_the_vm() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let rms = Rms::start(dir.path(), 30.0).await;
    let a = FakeAgent::start("a", rms.addr, 1024 * MIB, Behaviour::default()).await;
    // b has the most room (asked first) but refuses; c takes it.
    let b = FakeAgent::start(
        "b",
        rms.addr,
        4096 * MIB,
        Behaviour {
            refuse: Some("not enough memory: b is full".into()),
            ..Behaviour::default()
        },
    )
    .await;
    let c = FakeAgent::start("c", rms.addr, 2048 * MIB, Behaviour::default()).await;
    assert_eq!(create(&rms, "vm1", Some("a")).await["host"], "a");
    assert_eq!(a.vm_names(), vec!["vm1"]);
    let id = migrate(&rms, "vm1", None).await;
    // The destination gets the VM as a real one would once the guest resumes.
    let v = wait_state(&rms, id, &["running", "switching_over", "completed"]).await;
    assert_eq!(v["target"], "c");
    let v = wait_state(&rms, id, &["completed"]).await;
    assert_eq!(v["attempts"][0]["host"], "b");
    assert_eq!(v["attempts"][0]["answer"], "refused");
    assert!(
        v["attempts"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("b is full")),
        "{v}"
    );
    assert_eq!(v["attempts"][1]["host"], "c");
    assert_eq!(v["attempts"][1]["answer"], "accepted");
    assert_eq!(v["rounds"].as_array().map(Vec::len), Some(2), "{v}");
    assert_eq!(vm_on(&rms, "vm1").await["host"], "c");
    // c was told to expect it with a key, a was told to send it there with the same key.
    let incoming = { c.seen.lock().expect("lock").incoming.clone() };
    let outgoing = { a.seen.lock().expect("lock").outgoing.clone() };
    assert_eq!(incoming.len(), 1);
    assert_eq!(outgoing.len(), 1);
    assert_eq!(incoming[0].key, outgoing[0].key);
    assert_eq!(incoming[0].reservation, "c-r1");
    assert!(b.seen.lock().expect("lock").incoming.is_empty());
    let (_, hosts) = call(Method::GET, &rms.url("/api/v1/hosts"), None).await;
    let c_view = hosts
        .as_array()
        .and_then(|h| h.iter().find(|h| h["name"] == "c"))
        .cloned();
    assert_eq!(c_view.map(|h| h["vms"].clone()), Some(json!(["vm1"])));
    // A second migration gets a different key.
    let id2 = migrate(&rms, "vm1", Some("a")).await;
    wait_state(&rms, id2, &["completed"]).await;
    let again = { a.seen.lock().expect("lock").incoming.clone() };
    assert_ne!(again[0].key, incoming[0].key);
    assert_eq!(vm_on(&rms, "vm1").await["host"], "a");
    rms.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_migration_leaves_the_vm_where_it_was() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let rms = Rms::start(dir.path(), 30.0).await;
    let _a = FakeAgent::start(
        "a",
        rms.addr,
        1024 * MIB,
        Behaviour {
            fail: true,
            ..Behaviour::default()
        },
    )
    .await;
    let b = FakeAgent::start("b", rms.addr, 1024 * MIB, Behaviour::default()).await;
    create(&rms, "vm1", Some("a")).await;
    let id = migrate(&rms, "vm1", Some("b")).await;
    let v = wait_state(&rms, id, &["failed"]).await;
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("link broke")),
        "{v}"
    );
    assert_eq!(vm_on(&rms, "vm1").await["host"], "a");
    // The destination took its reservation up (the source connected): it cleans up its own
    // side, so the RMS sends no release.
    assert!(b.seen.lock().expect("lock").released.is_empty());
    rms.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_source_and_the_vm_stays() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let rms = Rms::start(dir.path(), 30.0).await;
    let a = FakeAgent::start(
        "a",
        rms.addr,
        1024 * MIB,
        Behaviour {
            hang: true,
            ..Behaviour::default()
        },
    )
    .await;
    let _b = FakeAgent::start("b", rms.addr, 1024 * MIB, Behaviour::default()).await;
    create(&rms, "vm1", Some("a")).await;
    let id = migrate(&rms, "vm1", None).await;
    wait_state(&rms, id, &["running"]).await;
    // Deleting a VM a migration holds is refused.
    let (status, v) = call(Method::DELETE, &rms.url("/api/v1/vms/vm1"), None).await;
    assert_eq!(status, 409, "{v}");
    let (status, v) = call(
        Method::DELETE,
        &rms.url(&format!("/api/v1/migrations/{id}")),
        None,
    )
    .await;
    assert_eq!(status, 202, "{v}");
    let v = wait_state(&rms, id, &["cancelled"]).await;
    assert_eq!(v["state"], "cancelled");
    assert_eq!(a.seen.lock().expect("lock").cancels, vec![id]);
    assert_eq!(vm_on(&rms, "vm1").await["host"], "a");
    // Cancelling a finished migration says why not.
    let (status, v) = call(
        Method::DELETE,
        &rms.url(&format!("/api/v1/migrations/{id}")),
        None,
    )
    .await;
    assert_eq!(status, 409, "{v}");
    // Now it can be deleted: stopped on its agent, gone from the table.
    let (status, v) = call(Method::DELETE, &rms.url("/api/v1/vms/vm1"), None).await;
    assert_eq!(status, 200, "{v}");
    assert!(a.vm_names().is_empty());
    let (status, _) = call(Method::GET, &rms.url("/api/v1/vms/vm1"), None).await;
    assert_eq!(status, 404);
    rms.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_the_agents_reports_finish_the_migration() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let rms = Rms::start(dir.path(), 30.0).await;
    let a = FakeAgent::start(
        "a",
        rms.addr,
        1024 * MIB,
        Behaviour {
            hang: true,
            ..Behaviour::default()
        },
    )
    .await;
    let b = FakeAgent::start("b", rms.addr, 1024 * MIB, Behaviour::default()).await;
    let vm = create(&rms, "vm1", Some("a")).await;
    assert_eq!(vm["host"], "a");
    let id = migrate(&rms, "vm1", Some("b")).await;
    wait_state(&rms, id, &["running"]).await;
    let addr = rms.addr;
    rms.stop().await;
    // While the RMS is down the hand-over completes: a no longer runs vm1, b does.
    let info = a.seen.lock().expect("lock").vms[0].clone();
    a.seen.lock().expect("lock").vms.clear();
    set_state(&a.seen, id, "handed_over");
    land(&b, info);
    set_state(&b.seen, id, "handed_over");
    let started = std::time::Instant::now();
    let rms = Rms::start_at(dir.path(), 30.0, &addr.to_string()).await;
    let v = wait_state(&rms, id, &["completed"]).await;
    eprintln!("recovered in {:?}", started.elapsed());
    assert_eq!(v["state"], "completed");
    assert_eq!(vm_on(&rms, "vm1").await["host"], "b");
    rms.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_host_is_lost_and_gets_no_vms() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let rms = Rms::start(dir.path(), 1.0).await;
    let a = FakeAgent::start("a", rms.addr, 1024 * MIB, Behaviour::default()).await;
    let b = FakeAgent::start("b", rms.addr, 4096 * MIB, Behaviour::default()).await;
    let alive = a.keep_alive(1024 * MIB);
    // b says nothing more: lost within its 1 s timeout (plus a tick).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, hosts) = call(Method::GET, &rms.url("/api/v1/hosts"), None).await;
        let state = |n: &str| {
            hosts
                .as_array()
                .and_then(|h| h.iter().find(|h| h["name"] == n))
                .map(|h| h["state"].clone())
        };
        if state("b") == Some(json!("lost")) {
            assert_eq!(state("a"), Some(json!("alive")));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "b was never lost: {hosts}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // b has the most room but is lost: a new VM goes to a, and b is refused by name.
    assert_eq!(create(&rms, "vm1", None).await["host"], "a");
    let (status, v) = call(
        Method::POST,
        &rms.url("/api/v1/vms"),
        Some(json!({"name": "vm2", "memory_bytes": MIB, "workload": "idle", "kind": "sim", "host": "b"})),
    )
    .await;
    assert_eq!(status, 409, "{v}");
    assert!(b.vm_names().is_empty());
    // Its heartbeat brings it back.
    assert_eq!(b.heartbeat(4096 * MIB).await, 204);
    alive.cancel();
    rms.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_creates_of_one_name_at_once_start_one_vm_on_one_host() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let rms = Rms::start(dir.path(), 30.0).await;
    let slow = Behaviour {
        slow_vm: Some(Duration::from_millis(500)),
        ..Behaviour::default()
    };
    let a = FakeAgent::start("a", rms.addr, 1024 * MIB, slow.clone()).await;
    let b = FakeAgent::start("b", rms.addr, 1024 * MIB, slow).await;
    let body = |h: &str| json!({"name": "vm1", "memory_bytes": 64 * MIB, "workload": "idle", "kind": "sim", "host": h});
    let url = rms.url("/api/v1/vms");
    let (one, two) = tokio::join!(
        call(Method::POST, &url, Some(body("a"))),
        call(Method::POST, &url, Some(body("b")))
    );
    let mut statuses = [one.0, two.0];
    statuses.sort();
    assert_eq!(statuses, [201, 409], "{one:?} {two:?}");
    // Only one agent was asked to start it.
    let started = a.seen.lock().expect("seen").vms.len() + b.seen.lock().expect("seen").vms.len();
    assert_eq!(started, 1);
    // A migration request while a delete stops the VM is refused, not recorded.
    let del = rms.url("/api/v1/vms/vm1");
    let (deleted, submitted) = tokio::join!(call(Method::DELETE, &del, None), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        call(
            Method::POST,
            &rms.url("/api/v1/migrations"),
            Some(json!({"vm": "vm1"})),
        )
        .await
    });
    assert_eq!(deleted.0, 200, "{deleted:?}");
    assert_eq!(submitted.0, 409, "{submitted:?}");
    rms.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migration_list_filters_and_pages() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let rms = Rms::start(dir.path(), 30.0).await;
    let _a = FakeAgent::start("a", rms.addr, 4096 * MIB, Behaviour::default()).await;
    let _b = FakeAgent::start("b", rms.addr, 4096 * MIB, Behaviour::default()).await;
    for vm in ["vm1", "vm2", "vm3"] {
        create(&rms, vm, Some("a")).await;
    }
    let mut ids = Vec::new();
    for vm in ["vm1", "vm2", "vm3"] {
        ids.push(migrate(&rms, vm, Some("b")).await);
    }
    let list = |q: &str| {
        let url = rms.url(&format!("/api/v1/migrations{q}"));
        async move {
            let resp = http()
                .get(&url)
                .header("authorization", format!("Bearer {TOKEN}"))
                .send()
                .await
                .expect("answers");
            let status = resp.status().as_u16();
            let next = resp
                .headers()
                .get("x-next-after")
                .map(|v| v.to_str().expect("text").to_string());
            let bytes = resp.bytes().await.expect("a body");
            let body: Value = serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)));
            (status, next, body)
        }
    };
    let ids_of = |v: &Value| -> Vec<u64> {
        v.as_array()
            .expect("a list")
            .iter()
            .map(|m| m["id"].as_u64().expect("an id"))
            .collect()
    };
    let (status, next, all) = list("").await;
    assert_eq!((status, next), (200, None));
    assert_eq!(ids_of(&all), ids);
    // Two at a time: the header names where the next page starts.
    let (_, next, page) = list("?limit=2").await;
    assert_eq!(ids_of(&page), ids[..2].to_vec());
    let next = next.expect("a next page");
    let (_, last, page) = list(&format!("?limit=2&after={next}")).await;
    assert_eq!(ids_of(&page), ids[2..].to_vec());
    assert_eq!(last, None);
    // By VM.
    let (_, _, one) = list("?vm=vm2").await;
    assert_eq!(ids_of(&one), vec![ids[1]]);
    // Junk is a 400 with the reason.
    let (status, _, body) = list("?limit=0").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("limit"), "{body}");
    let (status, _, _) = list("?colour=red").await;
    assert_eq!(status, 400);
    rms.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_reported_by_two_hosts_stays_where_it_is_and_is_counted() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let rms = Rms::start(dir.path(), 30.0).await;
    let a = FakeAgent::start("a", rms.addr, 1024 * MIB, Behaviour::default()).await;
    let b = FakeAgent::start("b", rms.addr, 1024 * MIB, Behaviour::default()).await;
    create(&rms, "vm1", Some("a")).await;
    // b says it runs vm1 too (a copy someone started by hand, a resumed stale copy…).
    let copy = a.seen.lock().expect("seen").vms[0].clone();
    b.seen.lock().expect("seen").vms.push(copy);
    b.register(1024 * MIB).await;
    // The location does not move on a claim; the conflict is counted for an operator.
    assert_eq!(vm_on(&rms, "vm1").await["host"], "a");
    let (status, metrics) = call(Method::GET, &rms.url("/metrics"), None).await;
    assert_eq!(status, 200);
    assert!(
        metrics
            .as_str()
            .expect("text")
            .contains("livemig_rms_location_conflicts_total 1"),
        "{metrics}"
    );
    rms.stop().await;
}
