//! "What happens if I deploy this?" end to end: the real gateway records a JSON access log
//! (`aegis run --log-format json`), and `aegis-sim replay` runs it through a candidate config
//! that adds a rate limit. The log's format and the replay's reading of it cannot drift apart.
#![allow(clippy::disallowed_methods)] // real time: the recorded window

use std::time::Duration;

use aegis_testkit::{Gateway, Upstream, temp_dir, wait_for, wait_for_window_room};

fn config(up: &Upstream, limit: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[[routes]]\npath = \"/api\"\ntargets = [{:?}]\n{limit}\n",
        up.url()
    )
}

#[test]
fn a_recorded_log_replayed_through_a_new_limit() {
    let up = Upstream::start("svc");
    let gw = Gateway::start_with(&config(&up, ""), &[], &["--log-format", "json"]).unwrap();
    // 30 requests from one client inside one fixed window, and two that match no route.
    wait_for_window_room(Duration::from_secs(60), Duration::from_secs(10));
    for i in 0..30 {
        assert_eq!(gw.get(&format!("/api/items/{i}"), &[]).status, 200);
    }
    assert_eq!(gw.get("/nowhere", &[]).status, 404);
    assert_eq!(gw.get("/gateway/stats", &[]).status, 200);
    let log = wait_for("32 access lines", Duration::from_secs(10), || {
        let text = gw.stderr();
        (text.matches("\"message\":\"request\"").count() >= 32).then_some(text)
    });

    let dir = temp_dir("replay");
    let log_path = dir.path().join("access.jsonl");
    let candidate = dir.path().join("candidate.toml");
    std::fs::write(&log_path, log).unwrap();
    std::fs::write(
        &candidate,
        config(&up, "rate_limit = { max = 10, window = \"60s\" }"),
    )
    .unwrap();

    let report = aegis_sim::replay::replay_files(&log_path, &candidate, 5)
        .unwrap_or_else(|e| panic!("replay: {e:?}"));
    assert_eq!(report.requests, 31, "30 to /api and one 404; admin skipped");
    assert_eq!(report.admin_skipped, 1);
    assert_eq!(report.malformed.count, 0, "{:?}", report.malformed);
    assert_eq!(report.status_before.get(&200), Some(&30));
    assert_eq!(report.status_after.get(&200), Some(&10));
    assert_eq!(report.status_after.get(&429), Some(&20));
    assert_eq!(report.status_after.get(&404), Some(&1));
    assert_eq!(report.changed, 20);
    assert_eq!(report.gained_lost[&429].gained, 20);
    assert_eq!(report.limited_keys[0].key, "/api|ip:127.0.0.1");
    assert_eq!(report.limited_keys[0].limited, 20);
    assert!(report.invariant_violations.is_empty());
}
