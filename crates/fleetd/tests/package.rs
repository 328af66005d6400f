//! The Debian package (`scripts/package`) installed with `dpkg -i` on a real systemd booted
//! with systemd-nspawn, then used as its user would: the socket enabled and started by the
//! package, `fleetctl` inside the machine at its default endpoint starting fleetd through the
//! socket, an example unit run as a systemd unit of the machine; an upgrade that leaves the
//! unit running; then `dpkg --purge` takes it all away again.
//!
//! The package is made from this build's debug binaries (`--bin-dir`), so no release build is
//! needed. Skipped, with the reason printed, where nspawn cannot run.

mod common;

use common::{fleetctl_binary, wait_for, DEADLINE};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use testkit::nspawn::{nspawn_available, NspawnMachine};

/// Where the machine sees the directory holding the package.
const PACKAGE_DIR: &str = "/opt/fleet-package";

fn text(out: &Output) -> String {
    format!(
        "{}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `scripts/package` on this build's binaries; returns the .deb's path.
fn build_package(scratch: &Path) -> PathBuf {
    let bin_dir = scratch.join("bin");
    std::fs::create_dir_all(&bin_dir).expect("make the bin dir");
    for (name, path) in [
        ("fleetd", PathBuf::from(common::FLEETD)),
        ("fleetctl", fleetctl_binary()),
    ] {
        std::os::unix::fs::symlink(&path, bin_dir.join(name))
            .unwrap_or_else(|e| panic!("link {}: {e}", path.display()));
    }
    let out_dir = scratch.join("out");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/package");
    let out = Command::new(&script)
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--out")
        .arg(&out_dir)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    assert!(out.status.success(), "scripts/package: {}", text(&out));
    let deb = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert_eq!(deb.parent(), Some(out_dir.as_path()), "{}", text(&out));
    assert!(deb.is_file(), "{} is not there", deb.display());
    deb
}

struct Machine {
    m: NspawnMachine,
}

impl Machine {
    /// `program ARGS` inside the machine, with fleetctl's environment cleared so that it uses
    /// its default endpoint as a user's would.
    fn run(&self, program: &str, args: &[&str]) -> Output {
        let mut cmd = self.m.command(program);
        cmd.args(args);
        for (k, _) in std::env::vars() {
            if k.starts_with("FLEETCTL_") || k.starts_with("FLEET_") {
                cmd.env_remove(k);
            }
        }
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("{program} in {}: {e}", self.m.name()));
        println!("# {program} {}\n{}", args.join(" "), text(&out));
        out
    }

    /// Like [`Machine::run`], and it must succeed; its stdout.
    fn ok(&self, program: &str, args: &[&str]) -> String {
        let out = self.run(program, args);
        assert!(
            out.status.success(),
            "{program} {args:?} failed in the machine: {}\nfleet.service:\n{}",
            text(&out),
            self.journal("fleet.service")
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn systemctl(&self, args: &[&str]) -> String {
        let out = self.m.systemctl(args).expect("systemctl");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The journal of `unit`, as text with fleetd's fields ([`common::journal_text`]).
    fn journal(&self, unit: &str) -> String {
        self.m
            .command("journalctl")
            .args(["--no-pager", "-o", "json", "-u", unit])
            .output()
            .map(|o| common::journal_text(&String::from_utf8_lossy(&o.stdout)))
            .unwrap_or_default()
    }

    fn exists(&self, path: &str) -> bool {
        self.m.host_path(path).exists()
    }
}

#[test]
fn the_package_installs_and_runs_fleet_on_a_real_systemd() {
    if let Err(why) = nspawn_available() {
        testkit::skip(&why);
        return;
    }
    let scratch = tempfile::tempdir().expect("scratch dir");
    let deb = build_package(scratch.path());
    let deb_dir = deb.parent().expect("the package's directory");
    let deb_name = deb
        .file_name()
        .expect("the package's name")
        .to_string_lossy();

    // The machine's root is a fresh tmpfs with the host's /usr bound read-only, and dpkg
    // must write /usr (the binaries, and /lib/systemd/system, which is /usr/lib there). The
    // overlay gives the machine a writable layer over the host's /usr, thrown away at
    // poweroff, so the host is never touched.
    let m = NspawnMachine::builder("package")
        .arg("--overlay=/usr::/usr")
        .bind_ro(deb_dir, PACKAGE_DIR)
        .boot()
        .expect("boot an nspawn machine");
    let machine = Machine { m };
    // The test machines' preset policy disables every unit, and the package enables its
    // units through that policy (`systemctl preset`, as Debian's helpers do); a Debian
    // system without presets enables them. This machine's admin wants fleet.
    std::fs::write(
        machine
            .m
            .host_path("/etc/systemd/system-preset/00-fleet.preset"),
        "enable fleet.socket\nenable fleet.service\n",
    )
    .expect("write a preset for fleet");
    // Where the host has a policy-rc.d forbidding starts and stops (container images do),
    // this machine, a booted system, does not: the maintainer scripts' starts and stops are
    // part of what is tested. Removed from the overlay only.
    let policy = machine.m.host_path("/usr/sbin/policy-rc.d");
    if policy.exists() {
        std::fs::remove_file(&policy).expect("remove policy-rc.d from the machine");
    }
    // An empty package database, not the host's: the host's names users, groups, overrides
    // and triggers of its installed packages that this machine's own fresh /etc does not
    // have (dpkg stops at the first statoverride whose group is missing). An empty one is a
    // machine where fleet is the only package, which the package must handle anyway: it has
    // no Depends.
    for dir in ["info", "updates", "triggers"] {
        std::fs::create_dir_all(machine.m.host_path(format!("/var/lib/dpkg/{dir}")))
            .expect("make the machine's dpkg database");
    }
    for file in ["status", "available"] {
        std::fs::write(machine.m.host_path(format!("/var/lib/dpkg/{file}")), "")
            .expect("make the machine's dpkg database");
    }
    let machine_id = std::fs::read_to_string(machine.m.host_path("/etc/machine-id"))
        .expect("the machine's /etc/machine-id")
        .trim()
        .to_string();

    machine.ok("dpkg", &["-i", &format!("{PACKAGE_DIR}/{deb_name}")]);
    for path in [
        "/usr/bin/fleetd",
        "/usr/bin/fleetctl",
        "/lib/systemd/system/fleet.service",
        "/lib/systemd/system/fleet.socket",
        "/etc/fleet/fleet.conf",
        "/usr/share/man/man1/fleetd.1.gz",
        "/usr/share/man/man1/fleetctl.1.gz",
        "/usr/share/man/man1/fleetctl-start.1.gz",
        "/usr/share/bash-completion/completions/fleetctl",
        "/usr/share/zsh/vendor-completions/_fleetctl",
        "/usr/share/doc/fleet/examples/hello.service",
        "/usr/share/doc/fleet/copyright",
    ] {
        assert!(machine.exists(path), "{path} was not installed");
    }
    let status = machine.ok("dpkg-query", &["-W", "-f=${Status}", "fleet"]);
    assert_eq!(status, "install ok installed");
    // The maintainer scripts enabled both units and started the socket, not fleetd.
    assert_eq!(
        machine.systemctl(&["is-enabled", "fleet.socket", "fleet.service"]),
        "enabled\nenabled"
    );
    assert_eq!(machine.systemctl(&["is-active", "fleet.socket"]), "active");
    assert_eq!(
        machine.systemctl(&["is-active", "fleet.service"]),
        "inactive"
    );
    // What the README tells a user to type after installing: a no-op here.
    machine.ok("systemctl", &["start", "fleet.socket"]);

    // fleetctl's first connection starts fleetd, whose API answers once this machine has
    // registered (503 until then, so poll).
    let machines = wait_for("fleetctl list-machines to succeed", DEADLINE, || {
        let out = machine.run("fleetctl", &["list-machines", "--no-legend", "--full"]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    });
    assert!(
        machines.starts_with(&machine_id),
        "{machines:?} does not list {machine_id}"
    );
    // The packaged fleet.conf chose the embedded registry, and systemd runs the units.
    let journal = machine.journal("fleet.service").to_lowercase();
    for chosen in ["registry=embedded", "unit_manager=systemd"] {
        assert!(
            journal.contains(chosen),
            "{chosen} not in fleetd's log:\n{journal}"
        );
    }

    let started = machine.ok(
        "fleetctl",
        &["start", "/usr/share/doc/fleet/examples/hello.service"],
    );
    assert!(started.contains("hello.service"), "{started}");
    let units = machine.ok(
        "fleetctl",
        &["list-units", "--no-legend", "--fields", "unit,active,sub"],
    );
    assert_eq!(
        units.split_whitespace().collect::<Vec<_>>(),
        ["hello.service", "active", "running"]
    );
    assert_eq!(machine.systemctl(&["is-active", "hello.service"]), "active");
    wait_for("hello.service's output in its journal", DEADLINE, || {
        machine
            .journal("hello.service")
            .contains("Hello, World!")
            .then_some(())
    });

    // An upgrade (the same package again takes the same path): fleetd is handed over, not
    // stopped, so the machine stays in the cluster and its unit keeps running.
    let fleetd_pid = machine.systemctl(&["show", "-P", "MainPID", "fleet.service"]);
    let hello_pid = machine.systemctl(&["show", "-P", "MainPID", "hello.service"]);
    machine.ok("dpkg", &["-i", &format!("{PACKAGE_DIR}/{deb_name}")]);
    wait_for("the new fleetd to be active", DEADLINE, || {
        let pid = machine.systemctl(&["show", "-P", "MainPID", "fleet.service"]);
        let active = machine.systemctl(&["is-active", "fleet.service"]);
        (pid != fleetd_pid && pid != "0" && active == "active").then_some(())
    });
    assert_eq!(
        machine.systemctl(&["show", "-P", "NRestarts", "fleet.service"]),
        "1"
    );
    assert_eq!(
        machine.systemctl(&["show", "-P", "MainPID", "hello.service"]),
        hello_pid,
        "hello.service was restarted by the upgrade"
    );
    let units = machine.ok(
        "fleetctl",
        &["list-units", "--no-legend", "--fields", "unit,active"],
    );
    assert_eq!(
        units.split_whitespace().collect::<Vec<_>>(),
        ["hello.service", "active"]
    );

    // Purge: fleetd leaves (stopping its unit), and nothing of the package stays behind.
    machine.ok("dpkg", &["--purge", "fleet"]);
    assert_eq!(
        machine.systemctl(&["is-active", "fleet.service"]),
        "inactive"
    );
    assert_eq!(
        machine.systemctl(&["is-active", "hello.service"]),
        "inactive"
    );
    for path in [
        "/usr/bin/fleetd",
        "/lib/systemd/system/fleet.service",
        "/etc/fleet/fleet.conf",
        "/var/lib/fleet",
    ] {
        assert!(!machine.exists(path), "{path} is left after dpkg --purge");
    }
}
