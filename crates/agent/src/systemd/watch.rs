//! Turns systemd's signals into [`StateChange`](crate::StateChange)s.
//!
//! Signals are only a trigger: the units they name are re-read with one `ListUnitsByNames`
//! call per burst. That gives exact (load, active, sub) triples whatever a signal carries
//! (`LoadState` changes are not announced by `PropertiesChanged`, and systemd may send
//! invalidations without values), and costs one call for a burst of any size.
//!
//! Signals can be lost: with our connection, or with systemd's (systemd reconnects to the bus
//! on its own, after a `daemon-reexec` or when the bus dropped it, and forgets who subscribed).
//! So the truth is read again in full — states, the jobs systemd holds, whether the machine is
//! stopping — after every (re)connection, whenever systemd's bus name changes hands, after any
//! failed call, and every [`RESYNC_INTERVAL`] in any case: a published state can never stay
//! apart from systemd's for longer than that.

use futures::{FutureExt as _, StreamExt as _};
use std::collections::BTreeSet;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use zbus::message::Type;
use zbus::{MatchRule, Message, MessageStream};

use super::dbus::{is_shutdown_target, unit_name_of_path, MANAGER_PATH, SERVICE};
use super::{Ask, Shared};

const FIRST_RETRY: Duration = Duration::from_millis(100);
const LAST_RETRY: Duration = Duration::from_secs(5);
/// Room for a burst of signals (a batch start of many units sends several per unit).
const QUEUE: usize = 8192;
/// Reads of unit states start at least this far apart: systemd runs its job queue only when it
/// has nothing else to do, so a stream of reads would hold back the very starts it reports.
const READ_GAP: Duration = Duration::from_millis(100);
/// Everything is read again at least this often, signals or not.
pub(crate) const RESYNC_INTERVAL: Duration = Duration::from_secs(30);

/// Watches until the manager drops (which aborts this task), connecting again whenever the
/// connection to systemd is lost. `ready` fires once the first watch is set up (or has failed).
pub(super) async fn run(
    shared: Arc<Shared>,
    mut asks: mpsc::UnboundedReceiver<Ask>,
    ready: oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    let mut retry = registry::Backoff::new(FIRST_RETRY, LAST_RETRY);
    loop {
        match watch(&shared, &mut asks, &mut ready, &mut retry).await {
            Ok(Stop::ManagerGone) => return,
            Ok(Stop::ConnectionClosed) => {
                // The jobs were tracked for the connection that went: systemd forgot them.
                shared.jobs.release_all();
                tracing::warn!("lost the D-Bus connection to systemd; connecting again")
            }
            Ok(Stop::SystemdBack) => {
                tracing::warn!(
                    "systemd came back on the bus (daemon-reexec, or its bus connection was \
                     reset); subscribing again"
                );
                continue;
            }
            Err(e) => tracing::warn!(
                "watching systemd's unit states failed: {e:#}; trying again in {:?}",
                retry.peek()
            ),
        }
        if let Some(ready) = ready.take() {
            let _ = ready.send(());
        }
        tokio::time::sleep(retry.wait()).await;
    }
}

enum Stop {
    ConnectionClosed,
    /// systemd took its bus name again: it forgot our subscription.
    SystemdBack,
    ManagerGone,
}

/// What a signal asks of the watcher.
#[derive(Debug, Default, PartialEq, Eq)]
struct Seen {
    /// Units whose state may have changed.
    units: BTreeSet<String>,
    /// Every watched unit's state may have changed (the end of a daemon-reload).
    all: bool,
    /// Job object paths systemd removed.
    removed_jobs: Vec<String>,
    /// A job for a shutdown target was queued: the machine is going down.
    shutdown: Option<String>,
    /// systemd's bus name changed hands: `Some(true)` it is back, `Some(false)` it is gone.
    systemd_owner: Option<bool>,
}

async fn watch(
    shared: &Shared,
    asks: &mut mpsc::UnboundedReceiver<Ask>,
    ready: &mut Option<oneshot::Sender<()>>,
    retry: &mut registry::Backoff,
) -> anyhow::Result<Stop> {
    let bus = shared.bus().await?;
    let queue = NonZeroUsize::new(QUEUE);
    // Listen before subscribing and read every state after, so no change falls in between.
    // Three match rules in all, whatever the number of units.
    let manager_signals = MatchRule::builder()
        .msg_type(Type::Signal)
        .path(MANAGER_PATH)
        .interface("org.freedesktop.systemd1.Manager")
        .build()?;
    let unit_signals = MatchRule::builder()
        .msg_type(Type::Signal)
        .path_namespace("/org/freedesktop/systemd1/unit")
        .interface("org.freedesktop.DBus.Properties")
        .member("PropertiesChanged")
        .arg(0, "org.freedesktop.systemd1.Unit")
        .build()?;
    let owner_signals = MatchRule::builder()
        .msg_type(Type::Signal)
        .sender("org.freedesktop.DBus")
        .interface("org.freedesktop.DBus")
        .member("NameOwnerChanged")
        .arg(0, SERVICE)
        .build()?;
    let mut signals = futures::stream::select(
        futures::stream::select(
            MessageStream::for_match_rule(manager_signals, &bus.conn, queue).await?,
            MessageStream::for_match_rule(unit_signals, &bus.conn, queue).await?,
        ),
        MessageStream::for_match_rule(owner_signals, &bus.conn, queue).await?,
    );
    match shared.call(bus.manager.subscribe()).await {
        Ok(()) => {}
        // systemd keeps its subscribers across daemon-reexec: the subscription stands.
        Err(e) if super::dbus::is_already_subscribed(&e) => {}
        Err(e) => {
            return Err(super::dbus::method_error(
                "Subscribe",
                "unit state signals",
                e,
            ))
        }
    }
    retry.reset();
    if let Some(ready) = ready.take() {
        let _ = ready.send(());
    }

    // After (re)connecting everything is read again: changes while away were not signalled.
    let mut resync = true;
    // The first full read on this connection is logged whatever it finds: after a reconnect
    // the operator sees that the truth was read again.
    let mut connected_resync = true;
    let mut resync_retry = registry::Backoff::new(FIRST_RETRY, LAST_RETRY);
    let mut next_resync = Instant::now();
    let mut pending: BTreeSet<String> = BTreeSet::new();
    // One read of systemd's state at a time, while signals keep being taken: a job's removal
    // frees its slot at once instead of after the read (systemd answers slowly while it starts
    // a thousand units), and the units signalled meanwhile are read together next.
    let mut reading: Option<Reading<'_>> = None;
    let mut next_read = Instant::now();
    loop {
        if reading.is_none() && Instant::now() >= next_read {
            if resync && Instant::now() >= next_resync {
                resync = false;
                pending.clear();
                reading = Some(Reading {
                    full: true,
                    read: Box::pin(shared.resync(&bus)),
                });
            } else if !pending.is_empty() {
                let names = std::mem::take(&mut pending).into_iter().collect();
                reading = Some(Reading {
                    full: false,
                    read: Box::pin(shared.refresh(&bus, names)),
                });
            }
        }
        let mut seen = Seen::default();
        tokio::select! {
            result = async { reading.as_mut().map(|r| &mut r.read).expect("guarded").await },
                if reading.is_some() =>
            {
                let full = reading.take().is_some_and(|r| r.full);
                next_read = Instant::now() + READ_GAP;
                match result {
                    Ok(changed) => {
                        if full {
                            resync_retry.reset();
                            next_resync = Instant::now() + RESYNC_INTERVAL;
                            if std::mem::take(&mut connected_resync) {
                                tracing::info!(
                                    changed,
                                    held_jobs = shared.jobs.in_flight(),
                                    "read unit states and jobs from systemd on connecting"
                                );
                            } else if changed > 0 {
                                tracing::info!(
                                    changed,
                                    "resynced unit states with systemd; published states follow"
                                );
                            }
                        }
                    }
                    Err(e) => {
                        if bus.conn.is_closed() {
                            return Ok(Stop::ConnectionClosed);
                        }
                        let wait = resync_retry.wait();
                        tracing::warn!(
                            "reading systemd's state failed: {e:#}; reading it all again in \
                             {wait:?}"
                        );
                        resync = true;
                        next_resync = Instant::now() + wait;
                    }
                }
            }
            msg = signals.next() => match msg {
                Some(Ok(msg)) => read_signal(&msg, &mut seen),
                Some(Err(e)) => tracing::warn!("bad D-Bus signal from systemd: {e}"),
                None => return Ok(Stop::ConnectionClosed),
            },
            ask = asks.recv() => match ask {
                Some(ask) => take(ask, &mut pending, &mut resync),
                None => return Ok(Stop::ManagerGone),
            },
            // Wakes for the reads that wait for the gap to pass.
            _ = tokio::time::sleep_until(next_read),
                if reading.is_none() && (resync || !pending.is_empty()) && Instant::now() < next_read => {}
            // Not armed while a due resync only waits for the read under way (it would fire at
            // once, again and again).
            _ = tokio::time::sleep_until(next_resync),
                if !(resync && Instant::now() >= next_resync) =>
            {
                resync = true
            }
            _ = bus.conn.closed() => return Ok(Stop::ConnectionClosed),
        }
        // Take the rest of the burst before reading states: one call for all of it.
        while let Some(Some(msg)) = signals.next().now_or_never() {
            if let Ok(msg) = msg {
                read_signal(&msg, &mut seen);
            }
        }
        while let Ok(ask) = asks.try_recv() {
            take(ask, &mut pending, &mut resync);
        }
        for path in &seen.removed_jobs {
            shared.jobs.removed(path);
        }
        if let Some(target) = &seen.shutdown {
            shared.machine_stopping(&format!("systemd queued a job for {target}"));
        }
        match seen.systemd_owner {
            Some(true) => return Ok(Stop::SystemdBack),
            // Its jobs' watches went with its connection.
            Some(false) => shared.jobs.release_all(),
            None => {}
        }
        if seen.all {
            pending.extend(shared.watched_names());
        }
        pending.extend(seen.units);
    }
}

/// A read of systemd's state under way: a full resync, or the states of some units.
struct Reading<'a> {
    full: bool,
    read: std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<usize>> + Send + 'a>>,
}

fn take(ask: Ask, pending: &mut BTreeSet<String>, resync: &mut bool) {
    match ask {
        Ask::States(names) => pending.extend(names),
        Ask::Resync => *resync = true,
    }
}

/// Notes what `msg` tells in `seen`.
fn read_signal(msg: &Message, seen: &mut Seen) {
    let header = msg.header();
    let member = header.member().map(|m| m.as_str()).unwrap_or_default();
    let body = msg.body();
    match member {
        "PropertiesChanged" => {
            if let Some(name) = header.path().and_then(|p| unit_name_of_path(p.as_str())) {
                seen.units.insert(name);
            }
        }
        // Not a reason to read: reading the state of a unit systemd has unloaded makes it load
        // the unit again, which it then unloads again (`UnitNew`, `UnitRemoved`, ...): seen as
        // a loop that kept systemd busy at full CPU, starving its job queue (which runs only
        // when systemd is otherwise idle) so that queued starts never ran. A unit that matters
        // sends `PropertiesChanged` or job signals as well.
        "JobNew" => {
            if let Ok((_, _, unit)) = body.deserialize::<(u32, zbus::OwnedObjectPath, String)>() {
                if is_shutdown_target(&unit) {
                    seen.shutdown = Some(unit.clone());
                }
                seen.units.insert(unit);
            }
        }
        "JobRemoved" => {
            if let Ok((_, job, unit, _)) =
                body.deserialize::<(u32, zbus::OwnedObjectPath, String, String)>()
            {
                seen.removed_jobs.push(job.to_string());
                seen.units.insert(unit);
            }
        }
        // The end of a daemon-reload: load states may have changed for any unit.
        "Reloading" if body.deserialize::<bool>().is_ok_and(|active| !active) => {
            seen.all = true;
        }
        "NameOwnerChanged" => {
            if let Ok((name, _, new_owner)) = body.deserialize::<(String, String, String)>() {
                if name == SERVICE {
                    seen.systemd_owner = Some(!new_owner.is_empty());
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signal<B>(path: &str, iface: &str, member: &str, body: &B) -> Message
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
    {
        Message::signal(path, iface, member)
            .build(body)
            .expect("a valid signal body")
    }

    fn job(id: u32) -> zbus::OwnedObjectPath {
        zbus::OwnedObjectPath::try_from(format!("/org/freedesktop/systemd1/job/{id}"))
            .expect("a valid path")
    }

    const MANAGER: &str = "org.freedesktop.systemd1.Manager";

    #[test]
    fn signals_say_what_to_read_and_what_happened() {
        let unit_path = "/org/freedesktop/systemd1/unit/a_2eservice";
        let empty: std::collections::HashMap<String, zbus::Variant> = Default::default();
        let cases: Vec<(Message, Seen)> = vec![
            (
                signal(
                    unit_path,
                    "org.freedesktop.DBus.Properties",
                    "PropertiesChanged",
                    &(
                        "org.freedesktop.systemd1.Unit",
                        &empty,
                        Vec::<String>::new(),
                    ),
                ),
                Seen {
                    units: ["a.service".to_string()].into(),
                    ..Seen::default()
                },
            ),
            (
                signal(
                    MANAGER_PATH,
                    MANAGER,
                    "JobNew",
                    &(7u32, job(7), "b.service"),
                ),
                Seen {
                    units: ["b.service".to_string()].into(),
                    ..Seen::default()
                },
            ),
            (
                signal(
                    MANAGER_PATH,
                    MANAGER,
                    "JobNew",
                    &(8u32, job(8), "poweroff.target"),
                ),
                Seen {
                    units: ["poweroff.target".to_string()].into(),
                    shutdown: Some("poweroff.target".into()),
                    ..Seen::default()
                },
            ),
            (
                signal(
                    MANAGER_PATH,
                    MANAGER,
                    "JobRemoved",
                    &(7u32, job(7), "b.service", "done"),
                ),
                Seen {
                    units: ["b.service".to_string()].into(),
                    removed_jobs: vec!["/org/freedesktop/systemd1/job/7".into()],
                    ..Seen::default()
                },
            ),
            // Reading an unloaded unit loads it again: these must not cause reads.
            (
                signal(
                    MANAGER_PATH,
                    MANAGER,
                    "UnitRemoved",
                    &(
                        "c.service",
                        zbus::OwnedObjectPath::try_from(unit_path).unwrap(),
                    ),
                ),
                Seen::default(),
            ),
            (
                signal(MANAGER_PATH, MANAGER, "Reloading", &true),
                Seen::default(),
            ),
            (
                signal(MANAGER_PATH, MANAGER, "Reloading", &false),
                Seen {
                    all: true,
                    ..Seen::default()
                },
            ),
            (
                signal(
                    "/org/freedesktop/DBus",
                    "org.freedesktop.DBus",
                    "NameOwnerChanged",
                    &(SERVICE, ":1.0", ""),
                ),
                Seen {
                    systemd_owner: Some(false),
                    ..Seen::default()
                },
            ),
            (
                signal(
                    "/org/freedesktop/DBus",
                    "org.freedesktop.DBus",
                    "NameOwnerChanged",
                    &(SERVICE, "", ":1.9"),
                ),
                Seen {
                    systemd_owner: Some(true),
                    ..Seen::default()
                },
            ),
        ];
        for (msg, want) in cases {
            let mut seen = Seen::default();
            read_signal(&msg, &mut seen);
            assert_eq!(seen, want, "{msg:?}");
        }
    }
}
