//! Cases on watches: replay from the past, prefix isolation, future starts, lease deletes,
//! resuming, and concurrent writers.

use super::support::*;
use crate::store::{EventKind, Op, Revision, Store};
use anyhow::{ensure, Context, Result};
use std::sync::Arc;
use std::time::Duration;

/// A watch from an old revision first delivers every change made since (puts, overwrites,
/// deletes, multi-op txns, delete_prefix) in order with exact revisions, then live changes.
pub async fn watch_from_past(store: Arc<dyn Store>) -> Result<()> {
    let p = unique_prefix("watch_from_past");
    let s = &*store;
    let (a, b, c, d) = (
        format!("{p}w/a"),
        format!("{p}w/b"),
        format!("{p}w/c"),
        format!("{p}w/d"),
    );
    let r0 = put(s, &a, b"1").await?;
    let r1 = put(s, &b, b"1").await?;
    let r2 = put(s, &a, b"2").await?;
    let r3 = delete(s, &b).await?;
    let r4 = store
        .txn(vec![], vec![Op::put(&c, "c"), Op::put(&d, "d")], vec![])
        .await?
        .revision;
    let r5 = store
        .txn(vec![], vec![Op::delete_prefix(format!("{p}w/"))], vec![])
        .await?
        .revision;
    let want = vec![
        put_ev(&a, b"1", r0),
        put_ev(&b, b"1", r1),
        put_ev(&a, b"2", r2),
        del_ev(&b, r3),
        put_ev(&c, b"c", r4),
        put_ev(&d, b"d", r4),
        del_ev(&a, r5),
        del_ev(&c, r5),
        del_ev(&d, r5),
    ];
    let mut w = Watcher::new(s, &p, r0).await?;
    let got = w.take(want.len()).await?;
    ensure_eq!(summary(&got), want, "events replayed from revision {r0}");
    ensure_eq!(
        got[2].kv.create_revision,
        r0,
        "create revision in the overwrite's event"
    );

    let r6 = put(s, &a, b"live").await?;
    let live = w.take(1).await?;
    ensure_eq!(
        summary(&live),
        vec![put_ev(&a, b"live", r6)],
        "live event after the replay"
    );
    ensure_eq!(
        live[0].kv.create_revision,
        r6,
        "create revision of a re-created key's event"
    );
    Ok(())
}

/// A watch of a prefix delivers nothing outside it, not even keys that extend the prefix's text
/// without its separator.
pub async fn watch_prefix_isolation(store: Arc<dyn Store>) -> Result<()> {
    let p = unique_prefix("watch_prefix_isolation");
    let s = &*store;
    let r = put(s, &format!("{p}a/first"), b"x").await?;
    let mut w = Watcher::new(s, &format!("{p}a/"), r + 1).await?;
    put(s, &format!("{p}b/x"), b"x").await?;
    put(s, &format!("{p}a"), b"x").await?;
    put(s, &format!("{p}ab/x"), b"x").await?;
    let r1 = put(s, &format!("{p}a/x"), b"in").await?;
    put(s, &format!("{p}b/y"), b"x").await?;
    let r2 = delete(s, &format!("{p}a/first")).await?;
    let got = w.take(2).await?;
    ensure_eq!(
        summary(&got),
        vec![
            put_ev(&format!("{p}a/x"), b"in", r1),
            del_ev(&format!("{p}a/first"), r2)
        ],
        "events of the watched prefix only"
    );
    Ok(())
}

/// A watch from a revision not reached yet waits for it, and delivers nothing older.
pub async fn watch_from_future(store: Arc<dyn Store>) -> Result<()> {
    let p = unique_prefix("watch_from_future");
    let s = &*store;
    let r = put(s, &format!("{p}k0"), b"0").await?;
    let from = r + 3;
    let mut w = Watcher::new(s, &p, from).await?;
    let mut want = Vec::new();
    for i in 1..=5 {
        let k = format!("{p}k{i}");
        let rev = put(s, &k, b"v").await?;
        if rev >= from {
            want.push(put_ev(&k, b"v", rev));
        }
    }
    let got = w.take(want.len()).await?;
    ensure_eq!(summary(&got), want, "events at or after revision {from}");
    Ok(())
}

/// Keys removed by a lease expiring, or by its revoke, appear as delete events of one revision.
pub async fn watch_lease_deletes(store: Arc<dyn Store>) -> Result<()> {
    let p = unique_prefix("watch_lease_deletes");
    let s = &*store;
    let lease = s.grant_lease(Duration::from_secs(1)).await?;
    let (a, b, c) = (format!("{p}a"), format!("{p}b"), format!("{p}c"));
    let r0 = put_leased(s, &a, b"a", lease).await?;
    let r1 = put_leased(s, &b, b"b", lease).await?;
    let r2 = put(s, &c, b"c").await?;
    let mut w = Watcher::new(s, &p, r0).await?;
    let puts = w.take(3).await?;
    ensure_eq!(
        summary(&puts),
        vec![
            put_ev(&a, b"a", r0),
            put_ev(&b, b"b", r1),
            put_ev(&c, b"c", r2)
        ],
        "puts before the expiry"
    );
    ensure!(
        puts[0].kv.lease == lease && puts[2].kv.lease == 0,
        "lease in put events: {puts:?}"
    );
    let deletes = w.take(2).await?;
    let rev = deletes[0].kv.mod_revision;
    ensure_eq!(
        summary(&deletes),
        vec![del_ev(&a, rev), del_ev(&b, rev)],
        "delete events of the expiry"
    );
    ensure!(rev > r2, "expiry revision {rev} must follow {r2}");
    ensure_eq!(
        value_of(s, &c).await?,
        Some(b"c".to_vec()),
        "plain key after the expiry"
    );

    let lease2 = s.grant_lease(Duration::from_secs(30)).await?;
    put_leased(s, &a, b"again", lease2).await?;
    s.revoke_lease(lease2).await?;
    let got = w.take(2).await?;
    ensure!(
        got[0].kind == EventKind::Put && got[1].kind == EventKind::Delete && got[1].kv.key == a,
        "put then revoke-delete events: {got:?}"
    );
    Ok(())
}

/// A watch dropped part-way and resumed from the last revision seen + 1 misses nothing and
/// repeats nothing.
pub async fn watch_resume(store: Arc<dyn Store>) -> Result<()> {
    let p = unique_prefix("watch_resume");
    let s = &*store;
    let mut all = Vec::new();
    for i in 0..6 {
        let k = format!("{p}k{i}");
        all.push(put_ev(&k, b"v", put(s, &k, b"v").await?));
    }
    let mut w = Watcher::new(s, &p, all[0].3).await?;
    let seen = w.take(3).await?;
    let last_seen = w.last_revision;
    drop(w);
    ensure_eq!(summary(&seen), all[..3].to_vec(), "events before the drop");
    for i in 6..10 {
        let k = format!("{p}k{i}");
        all.push(put_ev(&k, b"v", put(s, &k, b"v").await?));
    }
    // The dropped stream may have received more than it handed out: resume after the last
    // batch it received, and expect exactly the events after that.
    let want: Vec<_> = all.iter().filter(|e| e.3 > last_seen).cloned().collect();
    let mut w = Watcher::new(s, &p, last_seen + 1).await?;
    let got = w.take(want.len()).await?;
    ensure_eq!(
        summary(&got),
        want,
        "events after resuming from {}",
        last_seen + 1
    );
    let r = put(s, &format!("{p}end"), b"e").await?;
    ensure_eq!(
        summary(&w.take(1).await?),
        vec![put_ev(&format!("{p}end"), b"e", r)],
        "next live event"
    );
    Ok(())
}

/// Writers on several tasks at once: a watch started before them sees every write exactly
/// once, in revision order.
pub async fn watch_concurrent_writers(store: Arc<dyn Store>) -> Result<()> {
    const TASKS: usize = 4;
    const EACH: usize = 50;
    let p = unique_prefix("watch_concurrent_writers");
    let r = put(&*store, &format!("{p}start"), b"s").await?;
    let mut w = Watcher::new(&*store, &p, r + 1).await?;
    let writers = (0..TASKS).map(|t| {
        let store = store.clone();
        let p = p.clone();
        tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 0..EACH {
                let k = format!("{p}t{t}/k{i}");
                revs.push((put(&*store, &k, b"v").await?, k));
            }
            anyhow::Ok(revs)
        })
    });
    let mut want = Vec::new();
    for h in futures::future::join_all(writers).await {
        want.extend(h.context("writer task panicked")??);
    }
    want.sort();
    let got = w.take(want.len()).await?;
    let got: Vec<(Revision, String)> = got
        .into_iter()
        .map(|e| (e.kv.mod_revision, e.kv.key))
        .collect();
    ensure_eq!(got, want, "events of concurrent writers, in revision order");
    Ok(())
}
