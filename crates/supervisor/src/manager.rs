//! The manager's operations on units.

use crate::config;
use crate::supervise::Goal;
use crate::units::{check_name, load_status, spawn_supervisor, specifiers, Shared, UnitEntry};
use crate::{ConfigError, Error, LoadState, UnitStatus};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use unit::{UnitFile, UnitHash};

/// Runs units as plain processes; see the crate documentation. Dropping it ends the units'
/// tasks and leaves their processes running, for a new manager to re-adopt.
pub struct ProcessManager {
    pub(crate) shared: Arc<Shared>,
    pub(crate) _shutdown: watch::Sender<()>,
}

impl ProcessManager {
    /// Where a unit's stdout/stderr is captured (the previous file is `<path>.1`).
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.shared.log_path(name)
    }

    /// Why the unit last failed or cannot run, if it did.
    pub fn reason(&self, name: &str) -> Option<String> {
        self.shared.lock().get(name).and_then(|e| e.reason.clone())
    }

    /// The directory this manager keeps its logs in.
    pub fn state_dir(&self) -> &Path {
        &self.shared.state_dir
    }

    /// The unit's current status; `None` if it is not loaded.
    pub fn status(&self, name: &str) -> Option<UnitStatus> {
        self.shared.lock().get(name).map(|e| e.status)
    }

    /// The status of each named unit, in the order of `names`, read at one instant.
    pub fn statuses(&self, names: &[String]) -> Vec<Option<UnitStatus>> {
        let units = self.shared.lock();
        names
            .iter()
            .map(|n| units.get(n).map(|e| e.status))
            .collect()
    }

    /// Loaded units with the hash of each unit's file: what a restarted fleetd re-adopts.
    pub fn units(&self) -> Vec<(String, UnitHash)> {
        self.shared
            .lock()
            .iter()
            .map(|(n, e)| (n.clone(), e.hash))
            .collect()
    }

    /// Writes the unit's normalized file and reads its service settings; takes effect at once,
    /// for the next start. A file the supervisor cannot run still loads (with load state
    /// `error` and the reason in [`ProcessManager::reason`]); starting it is refused.
    pub async fn load(&self, name: &str, file: &UnitFile) -> Result<(), Error> {
        check_name(name)?;
        let text = file.serialize();
        let hash = UnitHash::of(text.as_bytes());
        let path = self.shared.runtime_dir.join("units").join(name);
        let tmp = self
            .shared
            .runtime_dir
            .join("units")
            .join(format!("{name}.tmp"));
        let write_error = |path: &Path, source| Error::WriteUnitFile {
            unit: name.into(),
            path: path.into(),
            source,
        };
        tokio::fs::write(&tmp, &text)
            .await
            .map_err(|e| write_error(&tmp, e))?;
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(|e| write_error(&path, e))?;
        let (n, f, boot) = (name.to_string(), file.clone(), self.shared.boot_id.clone());
        let config = tokio::task::spawn_blocking(move || {
            config::service_config(&n, &f, &specifiers(&n, &f, &boot)).map(Arc::new)
        })
        .await
        .unwrap_or_else(|e| {
            Err(ConfigError::NotRead {
                unit: name.into(),
                problem: e.to_string(),
            })
        });
        let mut units = self.shared.lock();
        match units.get_mut(name) {
            Some(e) => {
                e.hash = hash;
                e.reason = config.as_ref().err().map(ConfigError::to_string);
                let load = if config.is_ok() {
                    LoadState::Loaded
                } else {
                    LoadState::Error
                };
                if e.status.load != load {
                    e.status.load = load;
                    self.shared.notify(name, Some(e.status));
                }
                if e.task.is_none() && config.is_ok() {
                    e.task = Some(spawn_supervisor(
                        &tokio::runtime::Handle::current(),
                        self.shared.clone(),
                        name.into(),
                        e.goal.subscribe(),
                        e.goal.clone(),
                        None,
                    ));
                }
                e.config = config;
            }
            None => {
                let status = load_status(&config);
                let (goal_tx, goal_rx) = watch::channel(Goal::Stopped);
                let goal_tx = Arc::new(goal_tx);
                let task = config.is_ok().then(|| {
                    spawn_supervisor(
                        &tokio::runtime::Handle::current(),
                        self.shared.clone(),
                        name.into(),
                        goal_rx,
                        goal_tx.clone(),
                        None,
                    )
                });
                self.shared.notify(name, Some(status));
                let reason = config.as_ref().err().map(ConfigError::to_string);
                units.insert(
                    name.into(),
                    UnitEntry {
                        hash,
                        config,
                        status,
                        reason,
                        goal: goal_tx,
                        task,
                    },
                );
            }
        }
        Ok(())
    }

    /// Starts the unit; does not wait for it to be active.
    pub fn start(&self, name: &str) -> Result<(), Error> {
        let units = self.shared.lock();
        let e = units
            .get(name)
            .ok_or_else(|| Error::StartNotLoaded(name.into()))?;
        if let Err(reason) = &e.config {
            return Err(reason.clone().into());
        }
        e.goal.send_replace(Goal::Started);
        Ok(())
    }

    /// Stops the unit; does not wait for it to be stopped.
    pub fn stop(&self, name: &str) -> Result<(), Error> {
        let units = self.shared.lock();
        let e = units
            .get(name)
            .ok_or_else(|| Error::NotLoaded(name.into()))?;
        e.goal.send_replace(Goal::Stopped);
        Ok(())
    }

    /// Stops the unit, waits until it is stopped and forgets it. The file stays if the unit
    /// did not stop in time, so that it can still be stopped later.
    pub async fn unload(&self, name: &str) -> Result<(), Error> {
        let stop_timeout = {
            let units = self.shared.lock();
            let Some(e) = units.get(name) else {
                return Ok(());
            };
            e.goal.send_replace(Goal::Stopped);
            let t = e
                .config
                .as_ref()
                .ok()
                .and_then(|c| c.policy.timeout_stop)
                .unwrap_or(config::DEFAULT_TIMEOUT);
            // ExecStop, SIGTERM, SIGKILL and ExecStopPost may each take the stop timeout.
            t.saturating_mul(4) + Duration::from_secs(5)
        };
        let deadline = tokio::time::Instant::now() + stop_timeout;
        loop {
            let status = match self.status(name) {
                Some(s) if !s.active().is_stopped() => s,
                _ => break,
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::StopTimeout {
                    unit: name.into(),
                    timeout: stop_timeout,
                    status,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let removed = self.shared.lock().remove(name);
        if let Some(task) = removed.and_then(|e| e.task) {
            task.abort();
        }
        let path = self.shared.runtime_dir.join("units").join(name);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(Error::RemoveUnitFile {
                    unit: name.into(),
                    path,
                    source,
                })
            }
        }
        self.shared.remove_record(name).await;
        self.shared.notify(name, None);
        Ok(())
    }
}
