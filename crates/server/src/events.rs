//! `GET /fleet/v1/events`: the cluster's events as server-sent events (`text/event-stream`),
//! an extension beside fleet's resources (not in the discovery document).
//!
//! Each fleetd follows the registry's events ([`registry::Registry::follow_events`], one watch
//! over the keyspace) from when its API becomes available, and keeps the last [`RECENT`] in
//! memory: a request gets those first (the recent past), then, unless `?follow=false`, every
//! new one as it comes (the recent ones marked `"recent": true`). `?unit=GLOB` and `?machine=ID`
//! filter. Each event is one SSE message:
//! `id` the registry revision, `event` the kind, `data` an [`api::types::Event`] as JSON.
//!
//! Readers share one bounded buffer of [`BUFFER`] events: one too slow to take them loses the
//! oldest and is sent a `lagged` event saying how many, so that no reader grows memory. A
//! stream ends when its client goes away (the server drops it with the connection).

use crate::error::ApiError;
use crate::state::ApiState;
use api::types::{Event, EventFilter};
use axum::response::sse::{self, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use registry::{ClusterEvent, Registry};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::SystemTime;
use tokio::sync::broadcast;

/// Events kept for readers that come later: the recent past a request starts with.
pub const RECENT: usize = 1000;
/// Events buffered for readers following the stream, shared by all of them.
pub const BUFFER: usize = 1024;

/// The events seen by this fleetd: the recent ones, and a channel to the readers following.
pub(crate) struct EventLog {
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

struct Inner {
    recent: Mutex<VecDeque<Arc<Event>>>,
    tx: broadcast::Sender<Arc<Event>>,
    /// Whether the follower has read the registry once: what happens from then on is told.
    ready: tokio::sync::watch::Sender<bool>,
}

/// How long a request waits for the follower's first read (just after fleetd started) before
/// answering with what it has.
const READY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl Drop for EventLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EventLog {
    /// Starts following `registry`'s events. Call within a Tokio runtime.
    pub(crate) fn start(registry: &Registry) -> EventLog {
        let inner = Arc::new(Inner {
            recent: Mutex::new(VecDeque::with_capacity(RECENT)),
            tx: broadcast::channel(BUFFER).0,
            ready: tokio::sync::watch::Sender::new(false),
        });
        let task = tokio::spawn(follow(registry.follow_events(), Arc::downgrade(&inner)));
        EventLog { inner, task }
    }

    /// The recent events and a receiver of those after them, taken together so that no event
    /// falls between the two or comes in both.
    async fn subscribe(&self) -> (Vec<Arc<Event>>, broadcast::Receiver<Arc<Event>>) {
        let mut ready = self.inner.ready.subscribe();
        // Past the wait, the answer is what there is: the first read is only late.
        let _ = tokio::time::timeout(READY_WAIT, ready.wait_for(|r| *r)).await;
        let recent = lock(&self.inner.recent);
        (recent.iter().cloned().collect(), self.inner.tx.subscribe())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn follow(mut events: registry::EventFollower, inner: Weak<Inner>) {
    while let Some(batch) = events.recv().await {
        let Some(inner) = inner.upgrade() else { return };
        inner.ready.send_replace(true);
        let mut recent = lock(&inner.recent);
        for e in batch {
            let e = Arc::new(wire(&e));
            if recent.len() == RECENT {
                recent.pop_front();
            }
            recent.push_back(e.clone());
            // No reader following is not an error: the event is kept in `recent`.
            let _ = inner.tx.send(e);
        }
    }
}

/// The event as the API sends it.
pub(crate) fn wire(e: &ClusterEvent) -> Event {
    Event {
        revision: e.revision,
        time: rfc3339(e.time),
        kind: e.kind.as_str().to_string(),
        unit: e.unit.clone(),
        machine_id: e.machine.clone(),
        detail: e.detail.clone(),
        recent: false,
    }
}

/// `t` as RFC 3339 in UTC with milliseconds, as the process supervisor stamps output lines.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
struct Query {
    follow: bool,
    filter: EventFilter,
}

fn parse_query(query: Option<&str>) -> Result<Query, ApiError> {
    let mut q = Query {
        follow: true,
        filter: EventFilter::default(),
    };
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*key {
            "follow" => {
                q.follow = match &*value {
                    "true" | "1" | "" => true,
                    "false" | "0" => false,
                    other => {
                        return Err(ApiError::bad_request(format!(
                            "follow={other:?} is not a boolean: use follow=true or follow=false"
                        )))
                    }
                }
            }
            "unit" => q.filter.unit = value.into_owned(),
            "machine" => q.filter.machine = value.into_owned(),
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?}: /events takes follow, unit and machine"
                )))
            }
        }
    }
    Ok(q)
}

fn message(e: &Event) -> Result<sse::Event, Infallible> {
    let data = serde_json::to_string(e).unwrap_or_default();
    Ok(sse::Event::default()
        .id(e.revision.to_string())
        .event(e.kind.as_str())
        .data(data))
}

fn lagged(n: u64) -> Event {
    Event {
        revision: 0,
        time: rfc3339(SystemTime::now()),
        kind: registry::ClusterEventKind::Lagged.as_str().to_string(),
        detail: format!("{n} events dropped: this reader took them too slowly"),
        ..Default::default()
    }
}

/// The events `rx` receives that `filter` lets through, with a `lagged` event in place of those
/// the channel dropped for this reader; ends when the log is gone.
fn live(
    rx: broadcast::Receiver<Arc<Event>>,
    filter: EventFilter,
) -> impl Stream<Item = Arc<Event>> {
    futures::stream::unfold((rx, filter), |(mut rx, filter)| async move {
        loop {
            match rx.recv().await {
                Ok(e) if filter.matches(&e) => return Some((e, (rx, filter))),
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    return Some((Arc::new(lagged(n)), (rx, filter)))
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}

/// `GET /events`.
pub(crate) async fn get(s: &ApiState, query: Option<&str>) -> Result<Response, ApiError> {
    let q = parse_query(query)?;
    let Some(log) = s.events() else {
        return Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "the event stream is not running (no runtime to follow the registry in); retry shortly",
        ));
    };
    let (recent, rx) = log.subscribe().await;
    let filter = q.filter;
    let past: Vec<Result<sse::Event, Infallible>> = recent
        .iter()
        .filter(|e| filter.matches(e))
        .map(|e| {
            message(&Event {
                recent: true,
                ..(**e).clone()
            })
        })
        .collect();
    let past = futures::stream::iter(past);
    if !q.follow {
        return Ok(Sse::new(past).into_response());
    }
    let following = live(rx, filter).map(|e| message(&e));
    // Keep-alive comments let a client (and the server) notice a dead connection while the
    // cluster is quiet.
    Ok(Sse::new(past.chain(following))
        .keep_alive(KeepAlive::default())
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn times_are_rfc3339_utc() {
        let at = |ms: u64| rfc3339(SystemTime::UNIX_EPOCH + Duration::from_millis(ms));
        assert_eq!(at(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(at(1_796_590_799_999), "2026-12-06T20:59:59.999Z");
    }

    #[tokio::test]
    async fn a_slow_reader_is_told_how_many_it_lost_and_goes_on() {
        let (tx, rx) = broadcast::channel(4);
        let event = |unit: &str| {
            Arc::new(Event {
                kind: "placed".into(),
                unit: unit.into(),
                ..Default::default()
            })
        };
        // Ten sent before the reader takes any: the channel keeps the last four.
        for i in 0..10 {
            tx.send(event(&format!("u{i}.service"))).unwrap();
        }
        drop(tx);
        let got: Vec<(String, String)> = live(rx, EventFilter::default())
            .map(|e| {
                (
                    e.kind.clone(),
                    if e.kind == "lagged" {
                        e.detail.clone()
                    } else {
                        e.unit.clone()
                    },
                )
            })
            .collect()
            .await;
        let want: Vec<(String, String)> = [
            (
                "lagged",
                "6 events dropped: this reader took them too slowly",
            ),
            ("placed", "u6.service"),
            ("placed", "u7.service"),
            ("placed", "u8.service"),
            ("placed", "u9.service"),
        ]
        .iter()
        .map(|(k, d)| (k.to_string(), d.to_string()))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn queries() {
        assert_eq!(
            parse_query(None).unwrap(),
            Query {
                follow: true,
                filter: EventFilter::default()
            }
        );
        let q = parse_query(Some("follow=false&unit=web*&machine=abc")).unwrap();
        assert!(!q.follow);
        assert_eq!(q.filter.unit, "web*");
        assert_eq!(q.filter.machine, "abc");
        assert!(parse_query(Some("follow=maybe")).is_err());
        assert!(parse_query(Some("nope=1")).is_err());
    }
}
