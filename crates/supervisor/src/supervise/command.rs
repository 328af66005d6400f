//! How a run prepares its commands' environment and starts them.

use super::process::{blocking, classify, Exit};
use super::run::{Interrupt, Run};
use super::{Goal, RunResult};
use crate::config::{expand_argv, parse_env_file, ExecCommand, DEFAULT_PATH};
use crate::error::chain;
use crate::sys::{self, AccountError, ExecutableError, SpawnError};
use nix::sys::signal::Signal;
use std::collections::BTreeMap;
use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Duration;
use tokio::time::Instant;

/// Why a run could not prepare or start a command. With the unit's name in front (see
/// [`Run::failure`]) it is the unit's failure reason.
#[derive(Debug, thiserror::Error)]
pub(super) enum StartError {
    #[error(transparent)]
    Account(#[from] AccountError),
    #[error("EnvironmentFile={}", path.display())]
    EnvironmentFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("WorkingDirectory={0} does not exist or is not a directory")]
    WorkingDirectory(String),
    #[error("the command line is empty after variable expansion")]
    EmptyCommand,
    #[error(transparent)]
    Executable(#[from] ExecutableError),
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// The blocking task doing `what` did not finish.
    #[error("{what}")]
    Task {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
}

impl Run {
    /// `unit: what failed: why`.
    pub(super) fn failure(&self, e: &StartError) -> String {
        format!("{}: {}", self.name, chain(e))
    }

    /// Environment, account and working directory for this run, read at start as systemd does.
    pub(super) async fn prepare(&mut self) -> Result<(), StartError> {
        let cfg = self.cfg.clone();
        let prepared = tokio::task::spawn_blocking(move || -> Result<_, StartError> {
            let account = sys::account(cfg.context.user.as_deref(), cfg.context.group.as_deref())?;
            let mut env = BTreeMap::new();
            env.insert("PATH".to_string(), DEFAULT_PATH.to_string());
            if cfg.context.user.is_some() {
                env.insert("HOME".into(), account.home.clone());
                env.insert("USER".into(), account.name.clone());
                env.insert("LOGNAME".into(), account.name.clone());
                env.insert("SHELL".into(), account.shell.clone());
            }
            for (k, v) in &cfg.context.environment {
                env.insert(k.clone(), v.clone());
            }
            for (path, optional) in &cfg.context.environment_files {
                match std::fs::read_to_string(path) {
                    Ok(text) => env.extend(parse_env_file(&text)),
                    Err(_) if *optional => {}
                    Err(source) => {
                        return Err(StartError::EnvironmentFile {
                            path: path.clone(),
                            source,
                        })
                    }
                }
            }
            let cwd = match &cfg.context.working_directory {
                None => Some(PathBuf::from("/")),
                Some((dir, optional)) => {
                    let dir = if dir == "~" {
                        account.home.clone()
                    } else {
                        dir.clone()
                    };
                    let p = PathBuf::from(&dir);
                    if p.is_dir() {
                        Some(p)
                    } else if *optional {
                        Some(PathBuf::from("/"))
                    } else {
                        return Err(StartError::WorkingDirectory(dir));
                    }
                }
            };
            Ok((env, cwd, account.credentials))
        })
        .await
        .map_err(|source| StartError::Task {
            what: "preparing the environment",
            source,
        })??;
        (self.env, self.cwd, self.credentials) = prepared;
        Ok(())
    }

    /// The write end of the run's log pipe, created (and its reading end handed to the
    /// forwarder) on first use.
    async fn output(&mut self) -> Option<&OwnedFd> {
        if self.output.is_none() {
            let (forwarder, name) = (self.shared.forwarder.clone(), self.name.clone());
            // Off the async workers: the hand-over waits for the forwarder's answer (and may
            // start it).
            match tokio::task::spawn_blocking(move || forwarder.pipe(&name)).await {
                Ok(Ok(pipe)) => self.output = Some(pipe),
                Ok(Err(e)) => {
                    tracing::warn!(unit = %self.name, "no log for this run: {}", chain(&e))
                }
                Err(e) => tracing::warn!(unit = %self.name, "no log for this run: {e}"),
            }
        }
        self.output.as_ref().map(|(write, _)| write)
    }

    pub(super) async fn spawn(
        &mut self,
        cmd: &ExecCommand,
        extra: &[(&str, String)],
    ) -> Result<(sys::Child, i32), StartError> {
        let mut env = self.env.clone();
        for (k, v) in extra {
            env.insert(k.to_string(), v.clone());
        }
        let mut argv = if cmd.no_env_expand {
            cmd.words.clone()
        } else {
            expand_argv(&cmd.words, &env)
        };
        let Some(program) = argv.first() else {
            return Err(StartError::EmptyCommand);
        };
        let path = env.get("PATH").cloned().unwrap_or_default();
        let resolved = sys::resolve_executable(program, &path)?;
        argv[0] = resolved.to_string_lossy().into_owned();
        let output = self.output().await.and_then(|fd| fd.try_clone().ok());
        let (cwd, credentials) = (self.cwd.clone(), self.credentials.clone());
        // Off the async workers: a spawn blocks its thread until the child has exec'd.
        let child = tokio::task::spawn_blocking(move || {
            sys::spawn(sys::Spawn {
                argv: &argv,
                env: &env,
                cwd: cwd.as_deref(),
                credentials: credentials.as_ref(),
                output: output.as_ref(),
            })
        })
        .await
        .map_err(|source| StartError::Task {
            what: "starting the command",
            source,
        })??;
        let pid = child.id();
        if pid > 0 {
            self.sessions.push(pid);
        }
        Ok((child, pid))
    }

    fn main_env(&self) -> Vec<(&'static str, String)> {
        match &self.main {
            Some(m) => vec![("MAINPID", m.pid().to_string())],
            None => vec![],
        }
    }

    /// Runs one short-lived command to its end (ExecStartPre, oneshot ExecStart, ...).
    pub(super) async fn run_command(
        &mut self,
        what: &str,
        cmd: &ExecCommand,
        deadline: Option<Instant>,
        stoppable: bool,
    ) -> Result<(), Interrupt> {
        let extra = self.main_env();
        let (mut child, pid) = match self.spawn(cmd, &extra).await {
            Ok(c) => c,
            Err(e) if cmd.ignore_failure => {
                self.shared
                    .note(
                        &self.name,
                        format!("{what} failed (ignored): {}", self.failure(&e)),
                    )
                    .await;
                return Ok(());
            }
            Err(e) => {
                return Err(Interrupt::Failed(
                    RunResult::Resources,
                    format!("{what}: {}", self.failure(&e)),
                ))
            }
        };
        let mut goal = self.goal.clone();
        let stop_requested = async {
            if stoppable {
                let _ = goal.wait_for(|g| *g == Goal::Stopped).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let timeout = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let outcome = tokio::select! {
            st = child.wait() => Ok(st),
            _ = timeout => Err(true),
            _ = stop_requested => Err(false),
        };
        match outcome {
            Ok(Ok(st)) => {
                let (result, text) = classify(&Exit::Status(st), false);
                if result.is_success() {
                    Ok(())
                } else if cmd.ignore_failure {
                    self.shared
                        .note(&self.name, format!("{what} {text} (ignored)"))
                        .await;
                    Ok(())
                } else {
                    Err(Interrupt::Failed(
                        result,
                        format!("{}: {what} {text}", self.name),
                    ))
                }
            }
            Ok(Err(e)) => Err(Interrupt::Failed(
                RunResult::Resources,
                format!("{}: {what}: waiting: {e}", self.name),
            )),
            Err(timed_out) => {
                // Stop the command and everything it started before moving on.
                self.kill_sessions_of(&mut child, pid).await;
                if timed_out {
                    Err(Interrupt::Failed(
                        RunResult::Timeout,
                        format!("{}: {what} timed out", self.name),
                    ))
                } else {
                    Err(Interrupt::Stop)
                }
            }
        }
    }

    async fn kill_sessions_of(&self, child: &mut sys::Child, sid: i32) {
        let sig = self.cfg.policy.kill_signal;
        let sessions = vec![sid];
        let s = sessions.clone();
        blocking(move || sys::signal_sessions(&s, sig)).await;
        let timeout = self
            .cfg
            .policy
            .timeout_stop
            .unwrap_or(Duration::from_secs(90));
        if tokio::time::timeout(timeout, child.wait()).await.is_err() {
            blocking(move || sys::signal_sessions(&sessions, Signal::SIGKILL)).await;
            let _ = child.wait().await;
        }
    }
}
