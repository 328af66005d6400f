//! The real binary against the real API server over a real registry (embedded store in a temp
//! dir), through `FLEETCTL_ENDPOINT`. No engine or agent runs: where a flow needs a unit placed
//! or running, the test writes the schedule and the machine's states into the registry itself,
//! as the engine and the agent would, and checks what fleetctl prints and returns.

use registry::embedded::EmbeddedStore;
use registry::{
    Announcement, Campaign, Leadership, MachineLease, MachineState, Registry, ScheduleChange,
    ScheduleEntry, SystemdState, TargetState, UnitState,
};
use server::listen::{bind, serve, Listen};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

const M1: &str = "113f16a7b6e24a2bbdbc8d6c3ee3a0b3";

struct Cluster {
    dir: tempfile::TempDir,
    reg: Registry,
    endpoint: String,
    /// The leadership of the "engine" writing schedules (the registry fences them with it).
    engine: Leadership,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Cluster {
    async fn new() -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = EmbeddedStore::open(&dir.path().join("registry")).expect("embedded store");
        let reg = Registry::new(Arc::new(store), "/_coreos.com/fleet/");
        let state = server::ApiState::new(reg.clone(), 100);
        state.set_available(true);
        let sock = dir.path().join("fleet.sock");
        let listeners = bind(&[Listen::Unix(sock.clone())]).await.expect("bind");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(listeners, server::router(state), async {
            let _ = stopped.await;
        }));
        let Campaign::Won(engine) = reg
            .campaign("engine", Duration::from_secs(60))
            .await
            .expect("campaign")
        else {
            panic!("the test's engine did not win the leadership");
        };
        Cluster {
            engine,
            endpoint: format!("unix://{}", sock.display()),
            dir,
            reg,
            stop: Some(stop),
        }
    }

    /// Runs fleetctl (in a blocking thread, so the server keeps serving) in `cwd`.
    async fn run(&self, cwd: &Path, args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetctl"));
        cmd.args(args).current_dir(cwd).stdin(Stdio::null());
        for (k, _) in std::env::vars() {
            if k.starts_with("FLEETCTL_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("FLEETCTL_ENDPOINT", &self.endpoint);
        tokio::task::spawn_blocking(move || cmd.output().expect("run fleetctl"))
            .await
            .expect("join")
    }

    /// Starts fleetctl in the background.
    fn spawn(&self, cwd: &Path, args: &[&str]) -> tokio::task::JoinHandle<Output> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetctl"));
        cmd.args(args).current_dir(cwd).stdin(Stdio::null());
        cmd.env_remove("FLEETCTL_DEBUG");
        cmd.env("FLEETCTL_ENDPOINT", &self.endpoint);
        tokio::task::spawn_blocking(move || cmd.output().expect("run fleetctl"))
    }

    async fn machine(&self, id: &str, ip: &str, metadata: &[(&str, &str)]) -> MachineLease {
        let lease = self
            .reg
            .grant_machine_lease(Duration::from_secs(60))
            .await
            .expect("lease");
        let m = MachineState {
            id: id.into(),
            public_ip: ip.into(),
            metadata: metadata
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..MachineState::default()
        };
        assert_eq!(
            lease.announce(&m).await.expect("register"),
            Announcement::Written
        );
        lease
    }

    /// Polls the registry until `unit` has desired state `desired` (fleetctl asked for it).
    async fn until_desired(&self, unit: &str, desired: TargetState) {
        for _ in 0..400 {
            if let Ok(Some(u)) = self.reg.unit(unit).await {
                if u.job.desired == desired {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("{unit} never got desired state {desired}");
    }

    /// What the engine does: place `unit` on `machine` (or give a reason).
    async fn schedule(&self, change: ScheduleChange) {
        assert!(self
            .engine
            .apply_schedule(&[change])
            .await
            .expect("apply schedule"));
    }

    async fn place(&self, unit: &str, machine: &str, desired: TargetState) {
        let hash = self
            .reg
            .unit(unit)
            .await
            .expect("read")
            .expect("unit")
            .job
            .hash;
        self.schedule(ScheduleChange::Place {
            unit: unit.into(),
            machine: machine.into(),
            entry: ScheduleEntry {
                hash,
                desired,
                raw: None,
            },
        })
        .await;
    }

    /// What the agent does: publish the unit's state on `machine`.
    async fn publish(
        &self,
        machine: &str,
        lease: &MachineLease,
        unit: &str,
        agent: TargetState,
        active: &str,
    ) {
        let job = self.reg.unit(unit).await.expect("read").expect("unit").job;
        let (hash, global) = (job.hash, job.global);
        let st = UnitState {
            name: unit.into(),
            machine_id: machine.into(),
            hash,
            systemd: SystemdState {
                load: "loaded".into(),
                active: active.into(),
                sub: if active == "active" {
                    "running"
                } else {
                    "dead"
                }
                .into(),
            },
            agent_state: agent,
            reason: None,
            global,
        };
        lease
            .publish_states(machine, &[st], &[])
            .await
            .expect("publish");
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn sorted_lines(b: &[u8]) -> Vec<String> {
    let mut lines: Vec<String> = text(b).lines().map(String::from).collect();
    lines.sort();
    lines
}

fn write(dir: &Path, name: &str, body: &str) {
    std::fs::write(dir.join(name), body).expect("write unit file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_list_cat_replace_destroy() {
    let c = Cluster::new().await;
    let units = c.dir.path().join("units");
    std::fs::create_dir(&units).expect("mkdir");
    write(
        &units,
        "hello.service",
        "# a comment\n[Unit]\nDescription = Hello\n[Service]\nExecStart=/bin/sleep 100\n",
    );
    write(&units, "web@.service", "[Service]\nExecStart=/bin/web %i\n");
    let cwd = c.dir.path();

    // `hello` is mangled to hello.service and read from units/hello.service.
    // Units are waited for concurrently, so their lines come in any order.
    let o = c
        .run(cwd, &["submit", "units/hello", "units/web@.service"])
        .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(
        sorted_lines(&o.stdout),
        ["Unit hello.service inactive", "Unit web@.service inactive"]
    );

    // cat prints the normalized form.
    let o = c.run(cwd, &["cat", "hello"]).await;
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        text(&o.stdout),
        "[Unit]\nDescription=Hello\n\n[Service]\nExecStart=/bin/sleep 100\n"
    );
    let o = c.run(cwd, &["cat", "nope"]).await;
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(text(&o.stderr), "Unit nope.service not found\n");

    // The table, byte for byte. Hash of the normalized hello.service, short form.
    let hello_hash =
        unit::UnitFile::parse("[Unit]\nDescription=Hello\n\n[Service]\nExecStart=/bin/sleep 100\n")
            .expect("parse")
            .hash()
            .short();
    let web_hash = unit::UnitFile::parse("[Service]\nExecStart=/bin/web %i\n")
        .expect("parse")
        .hash()
        .short();
    let o = c.run(cwd, &["list-unit-files"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    // UNIT: 13+1 -> 16; HASH 7+1 -> 8; DSTATE 8+1 -> 16; STATE 8+1 -> 16.
    assert_eq!(
        text(&o.stdout),
        format!(
            "UNIT\t\tHASH\tDSTATE\t\tSTATE\t\tTARGET\n\
             hello.service\t{hello_hash}\tinactive\tinactive\t-\n\
             web@.service\t{web_hash}\tinactive\tinactive\t-\n"
        )
    );
    let o = c
        .run(
            cwd,
            &[
                "list-unit-files",
                "--no-legend",
                "--fields=unit,desc,global",
            ],
        )
        .await;
    assert_eq!(
        text(&o.stdout),
        "hello.service\tHello\tfalse\nweb@.service\t-\tfalse\n"
    );

    // Same content again: silent. Different content: warned, kept. --replace: replaced.
    let o = c.run(cwd, &["submit", "units/hello.service"]).await;
    assert_eq!(
        (o.status.code(), text(&o.stdout), text(&o.stderr)),
        (Some(0), String::new(), String::new())
    );
    let o = c
        .run(cwd, &["submit", "--replace", "units/hello.service"])
        .await;
    assert_eq!(
        text(&o.stdout),
        "Found same Unit(hello.service) in Registry, nothing to do\n"
    );
    write(
        &units,
        "hello.service",
        "[Service]\nExecStart=/bin/sleep 200\n",
    );
    let o = c.run(cwd, &["submit", "units/hello.service"]).await;
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        text(&o.stderr),
        "WARNING: Unit hello.service in registry differs from local unit file units/hello.service. Add --replace to override.\n"
    );
    let o = c.run(cwd, &["cat", "hello.service"]).await;
    assert!(text(&o.stdout).contains("sleep 100"));
    let o = c
        .run(cwd, &["submit", "--replace", "units/hello.service"])
        .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "Unit hello.service inactive\n");
    let o = c.run(cwd, &["cat", "hello.service"]).await;
    assert_eq!(text(&o.stdout), "[Service]\nExecStart=/bin/sleep 200\n");

    // Stopping a unit nobody loaded: fleet's error.
    let o = c.run(cwd, &["stop", "hello"]).await;
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        text(&o.stderr),
        "Unable to stop unit hello.service in state inactive\n"
    );

    // Unknown units: nothing to do, exit 0.
    let o = c.run(cwd, &["unload", "ghost"]).await;
    assert_eq!(o.status.code(), Some(0));
    assert!(text(&o.stderr).contains("Units not found in registry"));

    // Destroy waits until the units are gone.
    let o = c
        .run(cwd, &["destroy", "hello", "web@.service", "ghost"])
        .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(
        sorted_lines(&o.stdout),
        ["Destroyed hello.service", "Destroyed web@.service"]
    );
    assert!(c.reg.unit("hello.service").await.expect("read").is_none());
    let o = c.run(cwd, &["list-unit-files", "--no-legend"]).await;
    assert_eq!(text(&o.stdout), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_waits_for_launched_and_active_and_reports_failure() {
    let c = Cluster::new().await;
    let lease = c.machine(M1, "10.0.0.1", &[("region", "east")]).await;
    let units = c.dir.path().join("units");
    std::fs::create_dir(&units).expect("mkdir");
    write(&units, "web@.service", "[Service]\nExecStart=/bin/web %i\n");
    let cwd = c.dir.path().to_path_buf();

    // An instance from the local template beside it; fleetctl blocks until the "agent" reports
    // it active.
    let start = c.spawn(&cwd, &["start", "units/web@1.service"]);
    c.until_desired("web@1.service", TargetState::Launched)
        .await;
    c.place("web@1.service", M1, TargetState::Launched).await;
    // Launched but still activating: fleetctl keeps waiting.
    c.publish(
        M1,
        &lease,
        "web@1.service",
        TargetState::Launched,
        "activating",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        !start.is_finished(),
        "start returned before systemd said active"
    );
    c.publish(M1, &lease, "web@1.service", TargetState::Launched, "active")
        .await;
    let o = start.await.expect("join");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(
        text(&o.stdout),
        "Unit web@1.service inactive\nUnit web@1.service launched on 113f16a7.../10.0.0.1\n"
    );
    // The instance is a copy of the template's options.
    let inst = c
        .reg
        .unit("web@1.service")
        .await
        .expect("read")
        .expect("unit");
    assert_eq!(inst.file.serialize(), "[Service]\nExecStart=/bin/web %i\n");

    // list-units and list-machines, byte for byte.
    let o = c.run(&cwd, &["list-units"]).await;
    assert_eq!(
        text(&o.stdout),
        "UNIT\t\tMACHINE\t\t\tACTIVE\tSUB\nweb@1.service\t113f16a7.../10.0.0.1\tactive\trunning\n"
    );
    let o = c.run(&cwd, &["list-machines", "--full"]).await;
    assert_eq!(
        text(&o.stdout),
        format!("MACHINE\t\t\t\t\tIP\t\tMETADATA\n{M1}\t10.0.0.1\tregion=east\n")
    );

    // A second instance that systemd reports failed: exit 1 with its state.
    let start = c.spawn(&cwd, &["start", "units/web@2"]);
    c.until_desired("web@2.service", TargetState::Launched)
        .await;
    c.place("web@2.service", M1, TargetState::Launched).await;
    c.publish(M1, &lease, "web@2.service", TargetState::Launched, "failed")
        .await;
    let o = start.await.expect("join");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains(
            "Unit web@2.service failed on 113f16a7.../10.0.0.1: systemd reports loaded/failed/dead"
        ),
        "{}",
        text(&o.stderr)
    );

    // Stop waits for loaded.
    let stop = c.spawn(&cwd, &["stop", "web@1.service"]);
    c.until_desired("web@1.service", TargetState::Loaded).await;
    c.place("web@1.service", M1, TargetState::Loaded).await;
    c.publish(M1, &lease, "web@1.service", TargetState::Loaded, "inactive")
        .await;
    let o = stop.await.expect("join");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(
        text(&o.stdout),
        "Unit web@1.service loaded on 113f16a7.../10.0.0.1\n"
    );

    // --no-block returns at once.
    let o = c.run(&cwd, &["start", "--no-block", "web@1"]).await;
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(text(&o.stdout), "Triggered unit web@1.service start\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unplaceable_start_prints_the_reason_and_times_out() {
    let c = Cluster::new().await;
    let units = c.dir.path().join("units");
    std::fs::create_dir(&units).expect("mkdir");
    write(
        &units,
        "db.service",
        "[Service]\nExecStart=/bin/db\n[X-Fleet]\nMachineMetadata=role=db\nMachineMetaData=typo\n",
    );
    let cwd = c.dir.path().to_path_buf();
    let start = c.spawn(&cwd, &["start", "--block-attempts=2", "units/db.service"]);
    c.until_desired("db.service", TargetState::Launched).await;
    c.schedule(ScheduleChange::Reason {
        unit: "db.service".into(),
        reason: Some("no machine matches MachineMetadata role=db".into()),
    })
    .await;
    let o = start.await.expect("join");
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(err.contains("WARNING: Unit db.service: "), "{err}");
    assert!(err.contains("MachineMetaData"), "{err}");
    assert!(
        err.contains(
            "Unit db.service cannot be placed: no machine matches MachineMetadata role=db"
        ),
        "{err}"
    );
    assert!(
        err.contains("timed out waiting for unit db.service to report state launched"),
        "{err}"
    );

    // list-unit-files shows our reason field.
    let o = c
        .run(
            &cwd,
            &["list-unit-files", "--no-legend", "--fields=unit,reason"],
        )
        .await;
    assert_eq!(
        text(&o.stdout),
        "db.service\tno machine matches MachineMetadata role=db\n"
    );

    // --timeout bounds the whole command too.
    let o = c.run(&cwd, &["load", "--timeout=0.5", "db"]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("timed out waiting for unit db.service to report state loaded")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_stops_then_starts() {
    let c = Cluster::new().await;
    let lease = c.machine(M1, "10.0.0.1", &[]).await;
    let cwd = c.dir.path().to_path_buf();
    write(
        &cwd,
        "hello.service",
        "[Service]\nExecStart=/bin/sleep 100\n",
    );
    let o = c.run(&cwd, &["start", "--no-block", "hello"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    c.place("hello.service", M1, TargetState::Launched).await;
    c.publish(M1, &lease, "hello.service", TargetState::Launched, "active")
        .await;

    let restart = c.spawn(&cwd, &["restart", "hello"]);
    c.until_desired("hello.service", TargetState::Loaded).await;
    c.place("hello.service", M1, TargetState::Loaded).await;
    c.publish(M1, &lease, "hello.service", TargetState::Loaded, "inactive")
        .await;
    c.until_desired("hello.service", TargetState::Launched)
        .await;
    c.place("hello.service", M1, TargetState::Launched).await;
    c.publish(M1, &lease, "hello.service", TargetState::Launched, "active")
        .await;
    let o = restart.await.expect("join");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(
        text(&o.stdout),
        "Unit hello.service loaded on 113f16a7.../10.0.0.1\n\
         Unit hello.service launched on 113f16a7.../10.0.0.1\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_units_are_waited_for_on_their_machines() {
    let c = Cluster::new().await;
    let lease = c.machine(M1, "10.0.0.1", &[("role", "web")]).await;
    c.machine("22222222b6e24a2bbdbc8d6c3ee3a0b3", "", &[("role", "db")])
        .await;
    let cwd = c.dir.path().to_path_buf();
    write(
        &cwd,
        "g.service",
        "[Service]\nExecStart=/bin/g\n[X-Fleet]\nGlobal=true\nMachineMetadata=role=web\n",
    );
    let start = c.spawn(&cwd, &["start", "g"]);
    c.until_desired("g.service", TargetState::Launched).await;
    c.publish(M1, &lease, "g.service", TargetState::Launched, "active")
        .await;
    let o = start.await.expect("join");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(
        text(&o.stdout),
        "Unit g.service inactive\nUnit g.service launched on 113f16a7.../10.0.0.1\n"
    );
    let o = c
        .run(
            &cwd,
            &[
                "list-unit-files",
                "--no-legend",
                "--fields=unit,state,target,global",
            ],
        )
        .await;
    assert_eq!(text(&o.stdout), "g.service\t-\tglobal\ttrue\n");
}
