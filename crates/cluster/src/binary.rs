//! Finding (and building) the `fleetd` binary the cluster runs, and the `fleetctl` its tests
//! drive it with.
//!
//! Cargo builds a binary for the tests of its own package only (`CARGO_BIN_EXE_*`), and a
//! dev-dependency on `fleetd` would not build its binary. So the harness runs
//! `cargo build -p fleetd` once per test process: cargo decides whether the binary is stale and
//! is a quick no-op when it is not, and its own lock serializes concurrent test binaries.
//! `FLEETD_BIN=/path/to/fleetd` skips the build (a release binary, a packaged one);
//! `FLEETCTL_BIN` likewise for fleetctl.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The workspace root, two levels above this crate's manifest.
fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .and_then(|p| p.parent())
        .map(PathBuf::from)
        .unwrap_or(manifest)
}

/// The target dir cargo builds into: `$CARGO_TARGET_DIR`, else `<workspace>/target`.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        None => workspace_root().join("target"),
    }
}

/// The fleetd binary: `$FLEETD_BIN`, else `target/debug/fleetd` after `cargo build -p fleetd`
/// (run once per process; later calls return the first answer).
pub fn fleetd_binary() -> Result<PathBuf> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(|| locate("fleetd", "FLEETD_BIN").map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!(e))
}

/// The fleetctl binary: `$FLEETCTL_BIN`, else `target/debug/fleetctl` after
/// `cargo build -p fleetctl` (once per process).
pub fn fleetctl_binary() -> Result<PathBuf> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(|| locate("fleetctl", "FLEETCTL_BIN").map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!(e))
}

/// Builds binary `name` of package `name`, unless `env_var` names a binary to use.
fn locate(name: &str, env_var: &str) -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os(env_var) {
        let bin = PathBuf::from(bin);
        if !bin.is_file() {
            bail!("{env_var}={} is not a file", bin.display());
        }
        return Ok(bin);
    }
    // Cargo tells the processes it runs which cargo it is; fall back to the one on PATH.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(&cargo)
        .args(["build", "--quiet", "-p", name, "--bin", name])
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("running {} build -p {name}", cargo.to_string_lossy()))?;
    if !status.success() {
        bail!("cargo build -p {name} failed ({status}); fix the build or set {env_var}");
    }
    let bin = target_dir().join("debug").join(name);
    if !bin.is_file() {
        bail!(
            "cargo built {name} but {} does not exist; set {env_var} or CARGO_TARGET_DIR",
            bin.display()
        );
    }
    Ok(bin)
}

/// What one fleetctl run printed, and its exit code.
#[derive(Clone, Debug)]
pub struct FleetctlRun {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl FleetctlRun {
    /// Fails unless each of `lines` is in what the run printed, after the one before it.
    pub fn printed_in_order(&self, lines: &[String]) -> Result<()> {
        let mut at = 0;
        for want in lines {
            let found = self.stdout[at..].find(want.as_str()).with_context(|| {
                format!("{want:?} missing or out of order in:\n{}", self.stdout)
            })?;
            at += found + want.len();
        }
        Ok(())
    }
}

/// Runs [`fleetctl_binary`] with `args` against `endpoint` in `cwd` (where its unit files are),
/// and prints the command and what it printed, for a failing test's log.
pub async fn run_fleetctl(
    endpoint: &str,
    cwd: &std::path::Path,
    args: &[&str],
) -> Result<FleetctlRun> {
    let bin = fleetctl_binary()?;
    let (endpoint, cwd) = (endpoint.to_string(), cwd.to_path_buf());
    let line = args.join(" ");
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(bin)
            .args(&args)
            .env("FLEETCTL_ENDPOINT", endpoint)
            .current_dir(cwd)
            .output()
    })
    .await
    .context("waiting for fleetctl")?
    .context("running fleetctl")?;
    let run = FleetctlRun {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    println!("$ fleetctl {line}\n{}{}", run.stdout, run.stderr);
    Ok(run)
}
