//! Turns systemd's signals into [`StateChange`](crate::StateChange)s.
//!
//! Signals are only a trigger: the units they name are re-read with one `ListUnitsByNames`
//! call per burst. That gives exact (load, active, sub) triples whatever a signal carries
//! (`LoadState` changes are not announced by `PropertiesChanged`, and systemd may send
//! invalidations without values), and costs one call for a burst of any size.

use futures::{FutureExt as _, StreamExt as _};
use std::collections::BTreeSet;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use zbus::message::Type;
use zbus::{MatchRule, Message, MessageStream};

use super::dbus::{unit_name_of_path, MANAGER_PATH};
use super::Shared;

const FIRST_RETRY: Duration = Duration::from_millis(100);
const LAST_RETRY: Duration = Duration::from_secs(5);
/// Room for a burst of signals (a batch start of many units sends several per unit).
const QUEUE: usize = 4096;

/// Watches until the manager drops (which aborts this task), connecting again whenever the
/// connection to systemd is lost. `ready` fires once the first watch is set up (or has failed).
pub(super) async fn run(
    shared: Arc<Shared>,
    mut refresh: mpsc::UnboundedReceiver<Vec<String>>,
    ready: oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    let mut retry = FIRST_RETRY;
    loop {
        match watch(&shared, &mut refresh, &mut ready, &mut retry).await {
            Ok(Stop::ManagerGone) => return,
            Ok(Stop::ConnectionClosed) => {
                tracing::warn!("lost the D-Bus connection to systemd; connecting again")
            }
            Err(e) => tracing::warn!(
                "watching systemd's unit states failed: {e:#}; trying again in {retry:?}"
            ),
        }
        if let Some(ready) = ready.take() {
            let _ = ready.send(());
        }
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(LAST_RETRY);
    }
}

enum Stop {
    ConnectionClosed,
    ManagerGone,
}

async fn watch(
    shared: &Shared,
    refresh: &mut mpsc::UnboundedReceiver<Vec<String>>,
    ready: &mut Option<oneshot::Sender<()>>,
    retry: &mut Duration,
) -> anyhow::Result<Stop> {
    let bus = shared.bus().await?;
    let queue = NonZeroUsize::new(QUEUE);
    // Listen before subscribing and read every state after, so no change falls in between.
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
    let mut signals = futures::stream::select(
        MessageStream::for_match_rule(manager_signals, &bus.conn, queue).await?,
        MessageStream::for_match_rule(unit_signals, &bus.conn, queue).await?,
    );
    bus.manager
        .subscribe()
        .await
        .map_err(|e| super::dbus::method_error("Subscribe", "unit state signals", e))?;
    *retry = FIRST_RETRY;
    if let Some(ready) = ready.take() {
        let _ = ready.send(());
    }

    // After (re)connecting every state is read again: changes while away were not signalled.
    let mut pending: BTreeSet<String> = shared.watched_names().into_iter().collect();
    loop {
        if !pending.is_empty() {
            let names = std::mem::take(&mut pending).into_iter().collect();
            if let Err(e) = shared.refresh(&bus, names).await {
                if bus.conn.is_closed() {
                    return Ok(Stop::ConnectionClosed);
                }
                // Not lost: the next signal or refresh request reads the states again.
                tracing::warn!("reading unit states after a change failed: {e:#}");
            }
        }
        tokio::select! {
            msg = signals.next() => match msg {
                Some(Ok(msg)) => affected(shared, &msg, &mut pending),
                Some(Err(e)) => tracing::warn!("bad D-Bus signal from systemd: {e}"),
                None => return Ok(Stop::ConnectionClosed),
            },
            names = refresh.recv() => match names {
                Some(names) => pending.extend(names),
                None => return Ok(Stop::ManagerGone),
            },
            _ = bus.conn.closed() => return Ok(Stop::ConnectionClosed),
        }
        // Take the rest of the burst before reading states: one call for all of it.
        while let Some(Some(msg)) = signals.next().now_or_never() {
            if let Ok(msg) = msg {
                affected(shared, &msg, &mut pending);
            }
        }
        while let Ok(names) = refresh.try_recv() {
            pending.extend(names);
        }
    }
}

/// Adds the units whose state `msg` may have changed to `pending`.
fn affected(shared: &Shared, msg: &Message, pending: &mut BTreeSet<String>) {
    let header = msg.header();
    let member = header.member().map(|m| m.as_str()).unwrap_or_default();
    match member {
        "PropertiesChanged" => {
            if let Some(name) = header.path().and_then(|p| unit_name_of_path(p.as_str())) {
                pending.insert(name);
            }
        }
        "UnitNew" | "UnitRemoved" => {
            if let Ok((name, _)) = msg.body().deserialize::<(String, zbus::OwnedObjectPath)>() {
                pending.insert(name);
            }
        }
        "JobNew" | "JobRemoved" => {
            let body = msg.body();
            let unit = match member {
                "JobNew" => body
                    .deserialize::<(u32, zbus::OwnedObjectPath, String)>()
                    .map(|b| b.2),
                _ => body
                    .deserialize::<(u32, zbus::OwnedObjectPath, String, String)>()
                    .map(|b| b.2),
            };
            if let Ok(name) = unit {
                pending.insert(name);
            }
        }
        // The end of a daemon-reload: load states may have changed for any unit.
        "Reloading" if msg.body().deserialize::<bool>().is_ok_and(|active| !active) => {
            pending.extend(shared.watched_names());
        }
        _ => {}
    }
}
