//! Namespace machines: each fleetd in its own network namespace, joined to the others and to
//! etcd by a bridge, each with its own IP. A partition here is a cut link (the host end of the
//! machine's veth pair set down), not a stopped process: the cut-off fleetd keeps running and
//! keeps its units running while it cannot reach etcd, and stops them once it is back and sees
//! that they moved.
//!
//! Needs root and `ip` (iproute2); skips with the reason printed otherwise.

use cluster::binary::fleetd_binary;
use cluster::cleanup::{alive, kill_recorded_units, unit_main_pids};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("running ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The bridge, the namespaces and veth pairs, etcd on the bridge address and the fleetds;
/// all of it removed on drop, also when the test fails.
struct Net {
    tag: String,
    dir: tempfile::TempDir,
    subnet: u8,
    namespaces: Vec<String>,
    host_links: Vec<String>,
    etcd: Option<Child>,
    etcd_port: u16,
    fleetds: Vec<Child>,
}

impl Net {
    fn new(machines: usize) -> Result<Net, String> {
        if !nix::unistd::Uid::effective().is_root() {
            return Err("needs root to create network namespaces".into());
        }
        // Short, unique names: interface names are limited to 15 characters.
        let tag = format!("{:x}", std::process::id() % 0xfffff);
        // 198.18.0.0/15 is reserved for network tests (RFC 2544), so it meets no real network.
        let subnet = (std::process::id() % 250) as u8;
        let mut net = Net {
            dir: tempfile::tempdir().map_err(|e| e.to_string())?,
            subnet,
            namespaces: Vec::new(),
            host_links: Vec::new(),
            etcd: None,
            etcd_port: free_port(),
            fleetds: Vec::new(),
            tag,
        };
        let bridge = format!("flb{}", net.tag);
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        net.host_links.push(bridge.clone());
        ip(&[
            "addr",
            "add",
            &format!("198.18.{subnet}.1/24"),
            "dev",
            &bridge,
        ])?;
        ip(&["link", "set", &bridge, "up"])?;
        for i in 0..machines {
            let ns = format!("fln{}-{i}", net.tag);
            ip(&["netns", "add", &ns])?;
            net.namespaces.push(ns.clone());
            let host = format!("flh{}{i}", net.tag);
            let inner = format!("flc{}{i}", net.tag);
            ip(&["link", "add", &host, "type", "veth", "peer", "name", &inner])?;
            net.host_links.push(host.clone());
            ip(&["link", "set", &host, "master", &bridge])?;
            ip(&["link", "set", &host, "up"])?;
            ip(&["link", "set", &inner, "netns", &ns])?;
            let addr = format!("198.18.{subnet}.{}/24", i + 10);
            ip(&["-n", &ns, "addr", "add", &addr, "dev", &inner])?;
            ip(&["-n", &ns, "link", "set", &inner, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    fn etcd_url(&self) -> String {
        format!("http://198.18.{}.1:{}", self.subnet, self.etcd_port)
    }

    fn start_etcd(&mut self) {
        let data = self.dir.path().join("etcd");
        let peer = free_port();
        let log = std::fs::File::create(self.dir.path().join("etcd.log")).unwrap();
        let child = Command::new(testkit::etcd::etcd_binary())
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &self.etcd_url()])
            .args(["--advertise-client-urls", &self.etcd_url()])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
            ])
            .args([
                "--initial-cluster",
                &format!("default=http://127.0.0.1:{peer}"),
            ])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting etcd");
        self.etcd = Some(child);
    }

    fn machine_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("m{i}"))
    }

    fn machine_id(i: usize) -> String {
        format!("{:08x}{:024x}", 0xa0 + i, i)
    }

    fn socket(&self, i: usize) -> PathBuf {
        self.machine_dir(i).join("fleet.sock")
    }

    fn start_fleetd(&mut self, i: usize) {
        let dir = self.machine_dir(i);
        std::fs::create_dir_all(&dir).unwrap();
        let log = std::fs::File::create(dir.join("fleetd.log")).unwrap();
        let d = dir.display();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.namespaces[i]])
            .arg(fleetd_binary().expect("fleetd binary"))
            .args(["--etcd-servers", &self.etcd_url()])
            .args(["--etcd-key-prefix", &format!("/netns-{}/", self.tag)])
            .args(["--state-dir", &format!("{d}/state")])
            .args(["--units-directory", &format!("{d}/units")])
            .args(["--machine-id", &Net::machine_id(i)])
            .args(["--api-listen", &format!("unix://{d}/fleet.sock")])
            .args(["--public-ip", &format!("198.18.{}.{}", self.subnet, i + 10)])
            .args(["--agent-ttl", "3s", "--engine-reconcile-interval", "1"])
            .args(["--etcd-request-timeout", "1", "--unit-manager", "process"])
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting fleetd in its namespace");
        self.fleetds.push(child);
    }

    fn client(&self, i: usize) -> api::Client {
        api::Client::new(
            &format!("unix://{}", self.socket(i).display()),
            api::ClientOptions {
                request_timeout: Duration::from_secs(3),
            },
        )
        .expect("API client")
    }

    /// Cuts (or restores) machine `i`'s link to the bridge.
    fn link(&self, i: usize, up: bool) {
        let host = &self.host_links[i + 1];
        ip(&["link", "set", host, if up { "up" } else { "down" }]).expect("setting the link");
    }

    /// The process supervisor's runtime dir (`units_directory/process`).
    fn process_runtime_dir(&self, i: usize) -> PathBuf {
        self.machine_dir(i).join("units").join("process")
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for i in 0..self.fleetds.len() {
            let log =
                std::fs::read_to_string(self.machine_dir(i).join("fleetd.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            out += &format!(
                "--- machine {i}\n{}\n",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        out
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        for c in &mut self.fleetds {
            let _ = c.kill();
            let _ = c.wait();
        }
        for i in 0..self.fleetds.len() {
            kill_recorded_units(&self.process_runtime_dir(i));
        }
        if let Some(e) = &mut self.etcd {
            let _ = e.kill();
            let _ = e.wait();
        }
        for l in self.host_links.iter().rev() {
            let _ = ip(&["link", "del", l]);
        }
        for ns in &self.namespaces {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// Polls `check` every 50 ms until it gives a value; panics naming `what` after `limit`.
fn wait<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// unit -> machine id of every unit active somewhere, as machine `via` reports it.
fn active(rt: &tokio::runtime::Runtime, net: &Net, via: usize) -> Option<Vec<(String, String)>> {
    let states = rt
        .block_on(net.client(via).unit_states(&Default::default()))
        .ok()?;
    Some(
        states
            .into_iter()
            .filter(|s| s.systemd_active_state == "active")
            .map(|s| (s.name, s.machine_id))
            .collect(),
    )
}

fn pid_on(net: &Net, i: usize, unit: &str) -> Option<i32> {
    unit_main_pids(&net.process_runtime_dir(i))
        .get(unit)
        .copied()
        .filter(|p| alive(*p))
}

#[test]
fn a_cut_off_machine_keeps_its_units_until_it_is_back_and_sees_them_moved() {
    let mut net = match Net::new(2) {
        Ok(n) => n,
        Err(reason) => {
            testkit::skip(&format!("namespace machines: {reason}"));
            return;
        }
    };
    net.start_etcd();
    net.start_fleetd(0);
    net.start_fleetd(1);
    let rt = rt();
    wait("both machines registered", Duration::from_secs(60), || {
        let m = rt.block_on(net.client(0).machines()).ok()?;
        (m.len() == 2).then_some(())
    });
    let text = "[Service]\nExecStart=/bin/sleep infinity\n";
    let file = unit::UnitFile::parse(text).unwrap();
    let u = api::types::Unit::new("cut.service", &file, api::TargetState::Launched);
    rt.block_on(net.client(0).create_or_update_unit(&u))
        .expect("submitting cut.service");
    let (_, first) = wait("cut.service active", Duration::from_secs(60), || {
        active(&rt, &net, 0)?
            .into_iter()
            .find(|(n, _)| n == "cut.service")
    });
    let victim = (0..2)
        .find(|i| Net::machine_id(*i) == first)
        .expect("placed on one of ours");
    let other = 1 - victim;
    let pid = wait("the unit's pid", Duration::from_secs(30), || {
        pid_on(&net, victim, "cut.service")
    });

    let cut = Instant::now();
    net.link(victim, false);
    let (_, moved_to) = wait(
        "cut.service active on the other machine",
        Duration::from_secs(60),
        || {
            active(&rt, &net, other)?
                .into_iter()
                .find(|(n, m)| n == "cut.service" && *m == Net::machine_id(other))
        },
    );
    println!("FIGURE netns partition: cut.service active on the other machine {:?} after the link went down", cut.elapsed());
    assert_eq!(moved_to, Net::machine_id(other));
    // While cut off, the old copy keeps running: no flapping, nothing stopped.
    assert!(
        alive(pid),
        "the cut-off machine stopped its unit while it could not reach etcd"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        alive(pid),
        "the cut-off machine stopped its unit while it could not reach etcd"
    );

    let healed = Instant::now();
    net.link(victim, true);
    wait(
        "the returned machine stops its old copy",
        Duration::from_secs(60),
        || (!alive(pid)).then_some(()),
    );
    println!("FIGURE netns partition: the returned machine stopped its copy {:?} after the link came back", healed.elapsed());
    // The unit runs once, on the other machine, and stays there.
    let now = active(&rt, &net, other).unwrap_or_default();
    let copies: Vec<_> = now.iter().filter(|(n, _)| n == "cut.service").collect();
    assert_eq!(copies.len(), 1, "{now:?}");
    assert_eq!(copies[0].1, Net::machine_id(other));
    assert!(pid_on(&net, other, "cut.service").is_some());
}
