//! A Redis Sentinel on loopback (`redis-server <conf> --sentinel`) watching one primary: owned
//! by the value, killed by PID on drop.

use std::fs::{self, File};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::{START_DEADLINE, TempDir, free_port, kill_child, read_lossy, temp_dir};

/// How long the primary may be silent before the Sentinel calls it down.
pub const DOWN_AFTER_MS: u64 = 1_000;

#[derive(Debug)]
pub struct RedisSentinel {
    child: Option<Child>,
    port: u16,
    name: String,
    _dir: TempDir,
}

impl RedisSentinel {
    /// A Sentinel watching the primary on `primary_port` under `name` (quorum 1: it alone
    /// decides a failover), answering once it knows `replicas` replicas of it.
    pub fn start(name: &str, primary_port: u16, replicas: usize) -> RedisSentinel {
        let dir = temp_dir("sentinel");
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let conf = dir.path().join(format!("sentinel-{port}.conf"));
            // Sentinel rewrites its config file: it must be writable, and its own.
            fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                     sentinel monitor {name} 127.0.0.1 {primary_port} 1\n\
                     sentinel down-after-milliseconds {name} {DOWN_AFTER_MS}\n\
                     sentinel failover-timeout {name} 10000\n",
                    dir = dir.path().display()
                ),
            )
            .expect("write sentinel.conf");
            let log = dir.path().join(format!("sentinel-{port}.log"));
            let mut child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::from(File::create(&log).expect("sentinel log")))
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-server --sentinel (apt-get install redis-server)");
            let deadline = Instant::now() + START_DEADLINE;
            loop {
                let ready = crate::cluster::cli(port, &["SENTINEL", "REPLICAS", name])
                    .is_ok_and(|r| r.lines().filter(|l| *l == "slave").count() >= replicas);
                if ready {
                    return RedisSentinel {
                        child: Some(child),
                        port,
                        name: name.to_owned(),
                        _dir: dir,
                    };
                }
                if child.try_wait().ok().flatten().is_some() || Instant::now() >= deadline {
                    kill_child(&mut child);
                    last = read_lossy(&log);
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("could not start a sentinel; log:\n{last}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis+sentinel://127.0.0.1:PORT/<name>`: the gateway's `redis_url`.
    pub fn url(&self) -> String {
        format!("redis+sentinel://127.0.0.1:{}/{}", self.port, self.name)
    }

    /// The port of the primary the Sentinel names now.
    pub fn primary_port(&self) -> u16 {
        let r = self
            .cli(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", &self.name])
            .expect("SENTINEL GET-MASTER-ADDR-BY-NAME");
        r.lines()
            .nth(1)
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("{r}"))
    }

    /// `SENTINEL FAILOVER <name>`: promote a replica now (whether or not the primary is up).
    pub fn failover(&self) -> Result<String, String> {
        self.cli(&["SENTINEL", "FAILOVER", &self.name])
    }

    /// `redis-cli -p PORT args...` against the Sentinel.
    pub fn cli(&self, args: &[&str]) -> Result<String, String> {
        crate::cluster::cli(self.port, args)
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_child(&mut c);
        }
    }
}
