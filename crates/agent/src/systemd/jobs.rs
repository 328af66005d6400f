//! How much of systemd's attention the agent takes at once: method calls in flight, and start
//! and stop jobs that systemd still holds.
//!
//! Two limits of the system bus make these bounds necessary. dbus-daemon lets one connection
//! wait for at most 128 replies (`max_replies_per_connection`), so our calls in flight stay
//! well under that. And systemd watches the client of every job it queues through a match rule
//! of its own connection, while dbus-daemon allows a connection 512 match rules
//! (`max_match_rules_per_connection`): 1,000 start jobs queued at once made systemd lose its
//! bus connection ("Got disconnect on API bus"), and every call in flight failed with
//! `NoReply`. A job holds its slot from the `StartUnit`/`StopUnit` call until systemd reports
//! it removed (`JobRemoved`), or until a resync finds it gone from `ListJobs`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Method calls of ours to systemd in flight at once (the bus allows 128 pending replies).
pub(super) const MAX_CALLS: usize = 64;

/// Jobs of ours that systemd holds at once (each costs systemd one of its 512 match rules,
/// which it shares with every other client's jobs and its own needs).
pub(super) const MAX_JOBS: usize = 256;

/// How long a `JobRemoved` that arrived before its job's call returned is remembered.
const EARLY_REMOVAL_MEMORY: Duration = Duration::from_secs(60);

/// The slots for jobs systemd holds for us.
pub(super) struct JobWindow {
    slots: Arc<Semaphore>,
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    /// Job object path -> the slot it holds.
    jobs: HashMap<String, OwnedSemaphorePermit>,
    /// Jobs reported removed before the call that queued them returned (the signal and the
    /// reply reach different tasks, in either order).
    removed_early: HashMap<String, Instant>,
}

impl JobWindow {
    pub(super) fn new(size: usize) -> JobWindow {
        JobWindow {
            slots: Arc::new(Semaphore::new(size)),
            held: Mutex::new(Held::default()),
        }
    }

    /// Waits for a free slot. The slot is given back when the permit drops, unless
    /// [`JobWindow::queued`] hands it to a job.
    pub(super) async fn slot(&self) -> OwnedSemaphorePermit {
        loop {
            // The semaphore is never closed; should it be, waiting again is still right.
            if let Ok(permit) = self.slots.clone().acquire_owned().await {
                return permit;
            }
        }
    }

    /// systemd queued the job at `path`: it keeps `slot` until it is removed.
    pub(super) fn queued(&self, path: String, slot: OwnedSemaphorePermit) {
        let mut held = self.lock();
        if held.removed_early.remove(&path).is_some() {
            return;
        }
        held.jobs.insert(path, slot);
    }

    /// systemd removed the job at `path` (finished, failed or cancelled).
    pub(super) fn removed(&self, path: &str) {
        let mut held = self.lock();
        if held.jobs.remove(path).is_none() {
            let now = Instant::now();
            held.removed_early
                .retain(|_, at| now.duration_since(*at) < EARLY_REMOVAL_MEMORY);
            held.removed_early.insert(path.to_string(), now);
        }
    }

    /// Frees the slots of jobs systemd no longer holds, given every job it holds now (a
    /// `JobRemoved` may have been lost with a connection).
    pub(super) fn keep_only(&self, live: &HashSet<String>) -> usize {
        let mut held = self.lock();
        let before = held.jobs.len();
        held.jobs.retain(|path, _| live.contains(path));
        before - held.jobs.len()
    }

    /// Frees every slot: the connection the jobs were queued on is gone, and systemd stopped
    /// watching for it with it.
    pub(super) fn release_all(&self) {
        let mut held = self.lock();
        held.jobs.clear();
        held.removed_early.clear();
    }

    /// How many jobs hold a slot.
    pub(super) fn in_flight(&self) -> usize {
        self.lock().jobs.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        // Every change under this lock is a single insert or remove: a panic elsewhere cannot
        // leave it half made, so a poisoned lock is still good to use.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn available(w: &JobWindow) -> usize {
        w.slots.available_permits()
    }

    #[tokio::test]
    async fn a_job_holds_its_slot_until_removed() {
        let w = JobWindow::new(2);
        let a = w.slot().await;
        w.queued("/job/1".into(), a);
        assert_eq!(available(&w), 1);
        assert_eq!(w.in_flight(), 1);
        w.removed("/job/1");
        assert_eq!(available(&w), 2);
        assert_eq!(w.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_removal_seen_before_the_reply_frees_the_slot_at_once() {
        let w = JobWindow::new(1);
        let a = w.slot().await;
        w.removed("/job/7");
        w.queued("/job/7".into(), a);
        assert_eq!(available(&w), 1);
        assert_eq!(w.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_failed_call_gives_its_slot_back() {
        let w = JobWindow::new(1);
        drop(w.slot().await);
        assert_eq!(available(&w), 1);
    }

    #[tokio::test]
    async fn a_full_window_waits_for_a_removal() {
        let w = Arc::new(JobWindow::new(1));
        let a = w.slot().await;
        w.queued("/job/1".into(), a);
        let waiting = {
            let w = w.clone();
            tokio::spawn(async move { w.slot().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        w.removed("/job/1");
        let slot = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("a slot after the removal")
            .expect("task");
        drop(slot);
    }

    #[tokio::test]
    async fn a_resync_frees_jobs_systemd_no_longer_holds() {
        let w = JobWindow::new(3);
        for i in 0..3 {
            let s = w.slot().await;
            w.queued(format!("/job/{i}"), s);
        }
        let live: HashSet<String> = ["/job/1".to_string()].into();
        assert_eq!(w.keep_only(&live), 2);
        assert_eq!(available(&w), 2);
        w.release_all();
        assert_eq!(available(&w), 3);
    }
}
