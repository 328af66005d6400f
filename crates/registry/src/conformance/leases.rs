//! Cases on leases: expiry, keep-alive, revoke, TTL rounding and unknown leases.

use super::support::*;
use crate::store::{range_all, EventKind, Op, Store};
use anyhow::{ensure, Context, Result};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A lease that is not kept alive expires: exactly its keys disappear (not plain keys, not keys
/// since re-put without the lease), and the dead lease can be neither refreshed nor used.
pub async fn lease_expiry(store: Arc<dyn Store>) -> Result<()> {
    let p = unique_prefix("lease_expiry");
    let s = &*store;
    let lease = s.grant_lease(Duration::from_secs(1)).await?;
    ensure!(lease != 0, "lease id 0 means no lease");
    let (a, b, c, d) = (
        format!("{p}a"),
        format!("{p}b"),
        format!("{p}c"),
        format!("{p}d"),
    );
    put_leased(s, &a, b"a", lease).await?;
    put_leased(s, &b, b"b", lease).await?;
    put(s, &c, b"c").await?;
    put_leased(s, &d, b"d", lease).await?;
    put(s, &d, b"d2").await?; // detaches d from the lease
    ensure_eq!(
        s.get(&a).await?.map(|kv| kv.lease),
        Some(lease),
        "lease of a leased key"
    );
    ensure_eq!(
        s.get(&d).await?.map(|kv| kv.lease),
        Some(0),
        "lease of a key re-put without lease"
    );

    wait_until("the lease's keys expire", || async {
        Ok(s.get(&a).await?.is_none())
    })
    .await?;
    wait_until("the lease's second key expires", || async {
        Ok(s.get(&b).await?.is_none())
    })
    .await?;
    ensure_eq!(
        value_of(s, &c).await?,
        Some(b"c".to_vec()),
        "plain key after expiry"
    );
    ensure_eq!(
        value_of(s, &d).await?,
        Some(b"d2".to_vec()),
        "detached key after expiry"
    );
    ensure_eq!(
        s.lease_ttl(lease).await?,
        None,
        "lease_ttl of an expired lease"
    );
    let ka = s.keep_alive(lease).await;
    ensure!(
        is_lease_not_found(&ka),
        "keep_alive of an expired lease: {ka:?}"
    );
    let late = store
        .txn(
            vec![],
            vec![Op::put_leased(format!("{p}late"), "x", lease)],
            vec![],
        )
        .await;
    ensure!(
        is_lease_not_found(&late),
        "put with an expired lease: {late:?}"
    );
    ensure_eq!(
        s.get(&format!("{p}late")).await?,
        None,
        "a put refused for its lease wrote nothing"
    );
    Ok(())
}

/// A lease kept alive outlives its TTL several times over, with its keys; `lease_ttl` and
/// `lease_times` report a remaining time no longer than the TTL, and `lease_times` the TTL
/// granted.
pub async fn lease_keep_alive(store: Arc<dyn Store>) -> Result<()> {
    let p = unique_prefix("lease_keep_alive");
    let s = &*store;
    let lease = s.grant_lease(Duration::from_secs(2)).await?;
    let ttl = s.keep_alive(lease).await?;
    ensure!(
        ttl >= Duration::from_secs(2),
        "keep_alive returned TTL {ttl:?} for a 2 s lease"
    );
    let k = format!("{p}k");
    put_leased(s, &k, b"alive", lease).await?;
    let until = Instant::now() + ttl * 2 + Duration::from_secs(1);
    while Instant::now() < until {
        tokio::time::sleep(ttl / 5).await;
        let refreshed = s
            .keep_alive(lease)
            .await
            .context("keep_alive of a live lease")?;
        ensure_eq!(refreshed, ttl, "TTL returned by keep_alive");
        ensure_eq!(
            value_of(s, &k).await?,
            Some(b"alive".to_vec()),
            "key of a lease kept alive"
        );
    }
    let left = s
        .lease_ttl(lease)
        .await?
        .context("lease_ttl of a live lease is None")?;
    ensure!(left <= ttl, "remaining {left:?} exceeds the TTL {ttl:?}");
    let times = s
        .lease_times(lease)
        .await?
        .context("lease_times of a live lease is None")?;
    ensure!(
        times.remaining <= ttl,
        "lease_times: remaining {:?} exceeds the TTL {ttl:?}",
        times.remaining
    );
    // Both stores know the TTL they granted (the dashboard's lease age depends on it).
    ensure_eq!(times.granted, Some(ttl), "granted TTL from lease_times");
    s.revoke_lease(lease).await?;
    Ok(())
}

/// Revoking a lease deletes its keys at once, in one revision, and leaves other keys (plain, or
/// of another lease); revoking twice is no error; the lease is gone afterwards.
pub async fn lease_revoke(store: Arc<dyn Store>) -> Result<()> {
    let p = unique_prefix("lease_revoke");
    let s = &*store;
    let lease = s.grant_lease(Duration::from_secs(30)).await?;
    let other = s.grant_lease(Duration::from_secs(30)).await?;
    ensure!(lease != other, "two grants returned the same lease {lease}");
    let first = put_leased(s, &format!("{p}a"), b"a", lease).await?;
    put_leased(s, &format!("{p}b"), b"b", lease).await?;
    put(s, &format!("{p}c"), b"c").await?;
    put_leased(s, &format!("{p}e"), b"e", other).await?;

    s.revoke_lease(lease).await?;
    let left: Vec<String> = range_all(s, &p, 0)
        .await?
        .kvs
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    ensure_eq!(
        left,
        vec![format!("{p}c"), format!("{p}e")],
        "keys right after revoke"
    );
    s.revoke_lease(lease)
        .await
        .context("revoking a revoked lease")?;
    ensure_eq!(
        s.lease_ttl(lease).await?,
        None,
        "lease_ttl of a revoked lease"
    );
    let ka = s.keep_alive(lease).await;
    ensure!(
        is_lease_not_found(&ka),
        "keep_alive of a revoked lease: {ka:?}"
    );
    ensure!(
        s.lease_ttl(other).await?.is_some(),
        "revoking one lease ended another"
    );

    let mut w = Watcher::new(s, &p, first).await?;
    let events = w.take(6).await?;
    let deletes = &events[4..];
    ensure!(
        deletes.iter().all(|e| e.kind == EventKind::Delete)
            && deletes[0].kv.mod_revision == deletes[1].kv.mod_revision,
        "a revoke deletes its keys in one revision: {deletes:?}"
    );
    ensure_eq!(
        summary(deletes),
        vec![
            del_ev(&format!("{p}a"), deletes[0].kv.mod_revision),
            del_ev(&format!("{p}b"), deletes[0].kv.mod_revision)
        ],
        "delete events of the revoke"
    );
    s.revoke_lease(other).await?;
    ensure_eq!(
        s.get(&format!("{p}e")).await?,
        None,
        "the other lease's key after its revoke"
    );
    Ok(())
}

/// Grants round the TTL up to whole seconds, at least 1 s (a backend may raise it further, as
/// etcd does to its minimum), and every grant gets a distinct id.
pub async fn lease_grant_rounding(store: Arc<dyn Store>) -> Result<()> {
    let s = &*store;
    let mut ids = Vec::new();
    for (asked, at_least) in [(0, 1), (1, 1), (1500, 2), (3000, 3)] {
        let lease = s.grant_lease(Duration::from_millis(asked)).await?;
        let ttl = s.keep_alive(lease).await?;
        ensure!(
            ttl >= Duration::from_secs(at_least) && ttl.subsec_nanos() == 0,
            "a lease asked for {asked} ms got TTL {ttl:?} (want whole seconds, at least {at_least} s)"
        );
        ids.push(lease);
    }
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    ensure_eq!(unique.len(), ids.len(), "distinct lease ids");
    for id in ids {
        s.revoke_lease(id).await?;
    }
    Ok(())
}

/// A lease that never existed: no TTL, no keep-alive, no put with it, revoke is a no-op.
pub async fn lease_missing(store: Arc<dyn Store>) -> Result<()> {
    let p = unique_prefix("lease_missing");
    let s = &*store;
    let lease = unknown_lease();
    ensure_eq!(
        s.lease_ttl(lease).await?,
        None,
        "lease_ttl of an unknown lease"
    );
    let ka = s.keep_alive(lease).await;
    ensure!(
        is_lease_not_found(&ka),
        "keep_alive of an unknown lease: {ka:?}"
    );
    let k = format!("{p}k");
    let r = store
        .txn(
            vec![],
            vec![
                Op::put(format!("{p}other"), "x"),
                Op::put_leased(&k, "x", lease),
            ],
            vec![],
        )
        .await;
    ensure!(is_lease_not_found(&r), "put with an unknown lease: {r:?}");
    ensure_eq!(
        range_all(s, &p, 0).await?.kvs.len(),
        0,
        "a txn refused for a lease writes nothing"
    );
    s.revoke_lease(lease)
        .await
        .context("revoking an unknown lease")?;
    Ok(())
}
