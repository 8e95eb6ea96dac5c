//! Process lifecycle: SIGHUP reloads (a good and a bad config) under load with zero failed
//! requests, SIGTERM drains an in-flight request and exits 0, and the CLI's exit codes.
#![allow(clippy::disallowed_methods)] // real time: deadlines

use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::Duration;

use aegis_testkit::{
    Gateway, RawUpstream, Upstream, aegis_bin, dead_target, get, temp_dir, wait_until,
};

fn routes(a_target: &str, dead: &str, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[breaker]
failure_threshold = 3
open_for = "60s"

[[routes]]
path = "/a"
targets = [{a_target:?}]

[[routes]]
path = "/dead"
targets = [{dead:?}]
{extra}
"#
    )
}

#[test]
fn sighup_reloads_under_load_without_failing_a_request() {
    let one = Upstream::start("one");
    let two = Upstream::start("two");
    let dead = dead_target();
    let gw = Gateway::start(&routes(&one.url(), &dead, ""), &[]);

    // Open the breaker of the unchanged /dead target: it must survive the reload.
    for _ in 0..3 {
        assert_eq!(gw.get("/dead", &[]).status, 502);
    }
    let dead_state = |gw: &Gateway| {
        gw.stats()
            .into_iter()
            .find(|s| s["targetUrl"] == dead.as_str())
            .map(|s| s["state"].clone())
    };
    assert_eq!(dead_state(&gw), Some("OPEN".into()));

    // Load: 4 clients in a loop until told to stop; every response must be a 200.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let done = Arc::new(AtomicU64::new(0));
    let addr = gw.addr;
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            let failures = failures.clone();
            let done = done.clone();
            thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) && n < 20_000 {
                    match aegis_testkit::request(addr, "GET", "/a", &[], b"") {
                        Ok(r) if r.status == 200 => {}
                        Ok(r) => {
                            failures
                                .lock()
                                .unwrap()
                                .push(format!("{} {}", r.status, r.text()))
                        }
                        Err(e) => failures.lock().unwrap().push(format!("io: {e}")),
                    }
                    n += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                n
            })
        })
        .collect();
    let served_by = |gw: &Gateway| gw.get("/a", &[]).json()["service"].clone();
    wait_until("load to run", Duration::from_secs(10), || {
        done.load(Ordering::Relaxed) >= 20
    });

    // A bad config is refused with a log line naming the error; the old one keeps serving.
    gw.write_config(&routes("htp://not-a-url", &dead, ""));
    gw.signal("HUP");
    wait_until("the refusal to be logged", Duration::from_secs(10), || {
        gw.stderr().contains("is not an http URL")
    });
    assert_eq!(served_by(&gw), "one");
    assert_eq!(gw.get("/b", &[]).status, 404);

    // A good config takes over atomically: /a moves to `two`, a new route appears.
    let extra = format!("[[routes]]\npath = \"/b\"\ntargets = [{:?}]\n", two.url());
    gw.write_config(&routes(&two.url(), &dead, &extra));
    gw.signal("HUP");
    wait_until("the new config to serve", Duration::from_secs(10), || {
        served_by(&gw) == "two"
    });
    assert_eq!(gw.get("/b", &[]).status, 200);
    assert_eq!(
        dead_state(&gw),
        Some("OPEN".into()),
        "breaker state survives a reload"
    );

    // Keep the load on across a second good reload, then stop it.
    gw.write_config(&routes(&one.url(), &dead, &extra));
    gw.signal("HUP");
    wait_until("the third config to serve", Duration::from_secs(10), || {
        served_by(&gw) == "one"
    });
    stop.store(true, Ordering::Relaxed);
    let total: u64 = clients.into_iter().map(|c| c.join().unwrap()).sum();
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {total} requests failed during reloads, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(total >= 20, "only {total} requests ran under load");
    let during = done.load(Ordering::Relaxed);
    assert_eq!(during, total);
}

#[test]
fn sigterm_drains_in_flight_requests_and_exits_zero() {
    // An upstream that holds each request until the test releases it.
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = Mutex::new(release_rx);
    let slow = RawUpstream::start(move |_head, s| {
        let _ = release_rx
            .lock()
            .unwrap()
            .recv_timeout(Duration::from_secs(20));
        let _ = s.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: 7\r\n\r\ndrained",
        );
    });
    let mut gw = Gateway::start(
        &format!(
            r#"
[server]
listen = "127.0.0.1:0"
drain_timeout = "20s"

[[routes]]
path = "/slow"
targets = [{:?}]
timeout = "30s"
"#,
            slow.url()
        ),
        &[],
    );
    let addr = gw.addr;
    let client = thread::spawn(move || aegis_testkit::request(addr, "GET", "/slow", &[], b""));
    // The request is in flight once the upstream has it.
    slow.requests
        .recv_timeout(Duration::from_secs(10))
        .expect("the request to reach the upstream");

    gw.signal("TERM");
    // Draining: the listener closes to new connections while the request is still held.
    wait_until("the listener to close", Duration::from_secs(10), || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err()
    });
    assert!(
        gw.wait_exit(Duration::ZERO).is_none(),
        "exited before the in-flight request finished"
    );

    release_tx.send(()).unwrap();
    let r = client
        .join()
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!((r.status, r.text().as_str()), (200, "drained"));
    let status = gw
        .wait_exit(Duration::from_secs(10))
        .expect("the gateway exits after draining");
    assert_eq!(status.code(), Some(0), "exit status {status}");
}

#[test]
fn cli_check_token_and_bad_config_exit_codes() {
    let dir = temp_dir("cli");
    let good = dir.path().join("good.toml");
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &good,
        routes("http://127.0.0.1:9", "http://127.0.0.1:10", ""),
    )
    .unwrap();
    std::fs::write(
        &bad,
        "[[routes]]\npath = \"/a\"\ntargets = [\"http://127.0.0.1:9\"]\n\n[[routes]]\npath = \"/b\"\ntargets = [\"htp://x\"]\n",
    )
    .unwrap();

    let out = Command::new(aegis_bin())
        .args(["check", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ok: 2 routes"),
        "{out:?}"
    );

    let out = Command::new(aegis_bin())
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(r#"routes[1].targets[0]: "htp://x" is not an http URL"#),
        "{text}"
    );

    // `run` refuses the same config with exit 1 instead of serving it.
    let err = Gateway::start_with(&std::fs::read_to_string(&bad).unwrap(), &[], &[])
        .expect_err("a bad config must not serve");
    assert!(err.contains("is not an http URL"), "{err}");
    let out = Command::new(aegis_bin())
        .args(["run", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");

    // Usage errors are exit 2.
    let out = Command::new(aegis_bin())
        .arg("no-such-command")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");

    // `aegis token` mints a token the gateway accepts.
    let out = Command::new(aegis_bin())
        .args([
            "token",
            "--secret",
            "cli-secret",
            "--claim",
            "role=admin",
            "--exp",
            "1h",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let up = Upstream::start("svc");
    let gw = Gateway::start(
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[auth]\nsecret = \"cli-secret\"\n[[routes]]\npath = \"/\"\ntargets = [{:?}]\nauth = true\n",
            up.url()
        ),
        &[],
    );
    let r = gw.get("/x", &[("Authorization", &format!("Bearer {token}"))]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["userId"], "test-123");
    let r = get(gw.addr, "/x", &[("Authorization", "Bearer not.a.token")]);
    assert_eq!(r.status, 401);
}

/// `aegis token | head -0`, `aegis check | head -0`: a closed stdout ends the command quietly
/// (exit 0, nothing on stderr), never with a panic.
#[test]
fn a_closed_stdout_is_not_a_panic() {
    let dir = temp_dir("closed-stdout");
    let config = dir.path().join("ok.toml");
    std::fs::write(
        &config,
        "[[routes]]\npath = \"/\"\ntargets = [\"http://127.0.0.1:9\"]\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    for args in [
        vec!["token", "--secret", "s"],
        vec!["check", "--config", config],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(aegis_bin())
            .args(&args)
            .stdout(writer)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {:?} {stderr}", out.status);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
