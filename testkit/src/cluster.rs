//! A real Redis Cluster on loopback: `redis-server --cluster-enabled yes` processes on free
//! ports, joined with `redis-cli --cluster create`. The value owns every process and kills
//! each by PID on drop; [`RedisCluster::kill`] kills one (a crashed master) and
//! [`RedisCluster::failover`] promotes a replica.

use std::fs::File;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::{START_DEADLINE, TempDir, free_port, kill_child, read_lossy, temp_dir, wait_until};

/// How long a node may be unreachable before the cluster marks it failed: short, so that
/// tests run in seconds. Replicas never take over on their own
/// (`cluster-replica-no-failover`): a test promotes one with [`RedisCluster::failover`], so the
/// gap after a master dies lasts until then, however slow the machine is.
pub const NODE_TIMEOUT_MS: u64 = 2_000;

/// One node as `CLUSTER NODES` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNode {
    pub id: String,
    pub port: u16,
    pub master: bool,
    /// Flagged `fail` (or `fail?`) by the node asked.
    pub failed: bool,
    /// A replica's master id.
    pub replica_of: Option<String>,
    /// Slot ranges served (masters), inclusive.
    pub slots: Vec<(u16, u16)>,
}

#[derive(Debug)]
struct Node {
    port: u16,
    child: Option<Child>,
}

/// `masters` masters with `replicas` replicas each, no persistence.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<Node>,
    dir: TempDir,
}

impl RedisCluster {
    /// Starts the processes, creates the cluster, and waits until every node says
    /// `cluster_state:ok` and every replica is in sync with its master.
    pub fn start(masters: usize, replicas: usize) -> RedisCluster {
        assert!(
            masters >= 3,
            "redis-cli --cluster create needs at least 3 masters"
        );
        let dir = temp_dir("redis-cluster");
        let mut cluster = RedisCluster {
            nodes: Vec::new(),
            dir,
        };
        for _ in 0..masters * (1 + replicas) {
            let node = cluster.spawn_node();
            cluster.nodes.push(node);
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for n in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null());
        let out = create.output().expect("run redis-cli --cluster create");
        assert!(
            out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("[ERR]"),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.wait_healthy(START_DEADLINE);
        cluster
    }

    fn spawn_node(&self) -> Node {
        let mut last = String::new();
        for _ in 0..5 {
            let (port, bus) = (free_port(), free_port());
            if port == bus {
                continue;
            }
            let log = self.dir.path().join(format!("redis-{port}.log"));
            let mut child = match Command::new("redis-server")
                .args(["--port", &port.to_string()])
                .args(["--cluster-port", &bus.to_string()])
                .args(["--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
                .args(["--cluster-replica-no-failover", "yes"])
                .args(["--save", ""])
                .args(["--appendonly", "no"])
                .args(["--dir", &self.dir.path().display().to_string()])
                .stdout(Stdio::from(File::create(&log).expect("redis log file")))
                .stderr(Stdio::null())
                .spawn()
            {
                Ok(c) => c,
                Err(e) => panic!("spawn redis-server (apt-get install redis-server): {e}"),
            };
            let deadline = Instant::now() + START_DEADLINE;
            loop {
                if cli(port, &["PING"]).is_ok_and(|r| r == "PONG") {
                    return Node {
                        port,
                        child: Some(child),
                    };
                }
                if child.try_wait().ok().flatten().is_some() || Instant::now() >= deadline {
                    kill_child(&mut child);
                    last = read_lossy(&log);
                    break;
                }
                thread::sleep(Duration::from_millis(5));
            }
        }
        panic!("could not start a cluster node; log:\n{last}");
    }

    /// `redis://127.0.0.1:PORT` of every node started (the seed list a client gets).
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    /// Ports of the nodes still running.
    pub fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
            .collect()
    }

    /// `redis-cli -p PORT args...` on a live node of choice: its reply, trimmed.
    pub fn cli(&self, port: u16, args: &[&str]) -> Result<String, String> {
        cli(port, args)
    }

    /// The cluster as a live node sees it.
    pub fn nodes(&self) -> Vec<ClusterNode> {
        let port = self.live_ports()[0];
        let text = cli(port, &["CLUSTER", "NODES"]).expect("CLUSTER NODES");
        text.lines().filter_map(parse_node).collect()
    }

    /// The hash slot of `key` (its hash tag's, if it has one).
    pub fn keyslot(&self, key: &str) -> u16 {
        cli(self.live_ports()[0], &["CLUSTER", "KEYSLOT", key])
            .expect("CLUSTER KEYSLOT")
            .parse()
            .expect("a slot number")
    }

    /// The port of the master serving `slot`, as the cluster sees it now.
    pub fn master_of_slot(&self, slot: u16) -> u16 {
        self.nodes()
            .into_iter()
            .find(|n| n.master && !n.failed && n.slots.iter().any(|&(a, b)| a <= slot && slot <= b))
            .unwrap_or_else(|| panic!("no live master serves slot {slot}"))
            .port
    }

    /// A replica of the master on `port`.
    pub fn replica_of(&self, port: u16) -> u16 {
        // The master's node table may not list its replica yet on a loaded machine: ask again
        // until it does.
        let mut found = None;
        wait_until(
            &format!("a replica of the master on {port}"),
            START_DEADLINE,
            || {
                let nodes = self.nodes();
                let master = nodes.iter().find(|n| n.port == port).expect("known master");
                found = nodes
                    .iter()
                    .find(|n| n.replica_of.as_deref() == Some(master.id.as_str()))
                    .map(|n| n.port);
                found.is_some()
            },
        );
        found.expect("waited for it")
    }

    /// SIGKILL the node on `port`, by PID: a crash.
    pub fn kill(&mut self, port: u16) {
        let n = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of this cluster");
        if let Some(mut c) = n.child.take() {
            kill_child(&mut c);
        }
    }

    /// Promotes the replica on `port` to master (`CLUSTER FAILOVER FORCE`: its master is
    /// gone) unless the cluster already did, and waits until the cluster is whole again.
    /// A forced failover still needs the other masters' votes within twice the node timeout;
    /// one that did not get them is not tried again by the replica (it never fails over on
    /// its own here), so after a few seconds the test asks for `TAKEOVER`, which needs no
    /// vote (seen on a loaded machine: the replica stayed a replica for the whole wait).
    pub fn failover(&self, replica: u16) {
        let is_master = || cli(replica, &["ROLE"]).is_ok_and(|r| r.starts_with("master"));
        if !is_master() {
            // An error here means it is already being promoted; the wait below decides.
            let _ = cli(replica, &["CLUSTER", "FAILOVER", "FORCE"]);
        }
        let mut asked = Instant::now();
        wait_until("the replica to become a master", START_DEADLINE, || {
            if is_master() {
                return true;
            }
            if asked.elapsed() > Duration::from_millis(3 * NODE_TIMEOUT_MS) {
                let _ = cli(replica, &["CLUSTER", "FAILOVER", "TAKEOVER"]);
                asked = Instant::now();
            }
            false
        });
        self.wait_healthy(START_DEADLINE);
    }

    /// Until every live node says `cluster_state:ok`, every slot has a live master, and every
    /// live replica of a live master is in sync.
    pub fn wait_healthy(&self, within: Duration) {
        wait_until("the cluster to be healthy", within, || {
            let live = self.live_ports();
            let ok = live.iter().all(|&p| {
                cli(p, &["CLUSTER", "INFO"]).is_ok_and(|i| i.contains("cluster_state:ok"))
            });
            if !ok {
                return false;
            }
            let nodes = self.nodes();
            let served: u32 = nodes
                .iter()
                .filter(|n| n.master && !n.failed && live.contains(&n.port))
                .flat_map(|n| n.slots.iter().map(|&(a, b)| u32::from(b - a) + 1))
                .sum();
            let synced = nodes
                .iter()
                .filter(|n| !n.master && live.contains(&n.port))
                .filter(|n| {
                    let master = nodes.iter().find(|m| Some(&m.id) == n.replica_of.as_ref());
                    master.is_some_and(|m| live.contains(&m.port))
                })
                .all(|n| {
                    cli(n.port, &["INFO", "replication"])
                        .is_ok_and(|i| i.contains("master_link_status:up"))
                });
            served == 16384 && synced
        });
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                kill_child(&mut c);
            }
        }
    }
}

/// `redis-cli -p PORT args...`; an `(error)`-free reply, trimmed, or what went wrong.
pub(crate) fn cli(port: u16, args: &[&str]) -> Result<String, String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run redis-cli (apt-get install redis-tools): {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || text.starts_with("ERR") || text.contains("Could not connect") {
        return Err(format!(
            "{text}{}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(text)
}

fn parse_node(line: &str) -> Option<ClusterNode> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 8 {
        return None;
    }
    let port = f[1].split('@').next()?.rsplit(':').next()?.parse().ok()?;
    let flags: Vec<&str> = f[2].split(',').collect();
    let slots = f[8..]
        .iter()
        .filter(|s| !s.starts_with('['))
        .filter_map(|s| match s.split_once('-') {
            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
            None => s.parse().ok().map(|a| (a, a)),
        })
        .collect();
    Some(ClusterNode {
        id: f[0].to_owned(),
        port,
        master: flags.contains(&"master"),
        failed: flags.iter().any(|x| x.starts_with("fail")),
        replica_of: (f[3] != "-").then(|| f[3].to_owned()),
        slots,
    })
}
