//! Cases on transactions: compares, the failure branch, duplicate keys and prefix deletes.

use super::support::*;
use crate::store::{range_all, Compare, Op, Store};
use anyhow::{ensure, Context, Result};
use std::sync::Arc;
use std::time::Duration;

/// Every kind of compare, true and false, picks the success or failure branch; compares are
/// ANDed; a compare-and-swap on the mod revision lets exactly one of two racing writers win.
pub async fn compare_kinds(store: Arc<dyn Store>) -> Result<()> {
    let p = unique_prefix("compare_kinds");
    let s = &*store;
    let k = format!("{p}k");
    let missing = format!("{p}missing");
    let leased = format!("{p}leased");
    let marker = format!("{p}marker");
    let r1 = put(s, &k, b"v1").await?;
    let lease = s.grant_lease(Duration::from_secs(30)).await?;
    put_leased(s, &leased, b"l", lease).await?;
    let other_lease = unknown_lease();

    let table: Vec<(Vec<Compare>, bool)> = vec![
        (vec![], true),
        (vec![Compare::Exists(k.clone())], true),
        (vec![Compare::Exists(missing.clone())], false),
        (vec![Compare::Missing(missing.clone())], true),
        (vec![Compare::Missing(k.clone())], false),
        (vec![Compare::Value(k.clone(), b"v1".to_vec())], true),
        (vec![Compare::Value(k.clone(), b"v2".to_vec())], false),
        (vec![Compare::Value(k.clone(), Vec::new())], false),
        (vec![Compare::Value(missing.clone(), Vec::new())], false),
        (vec![Compare::ModRevision(k.clone(), r1)], true),
        (vec![Compare::ModRevision(k.clone(), r1 - 1)], false),
        (vec![Compare::ModRevision(k.clone(), 0)], false),
        (vec![Compare::ModRevision(missing.clone(), 0)], true),
        (vec![Compare::ModRevision(missing.clone(), r1)], false),
        (vec![Compare::Lease(leased.clone(), lease)], true),
        (vec![Compare::Lease(leased.clone(), other_lease)], false),
        (vec![Compare::Lease(leased.clone(), 0)], false),
        (vec![Compare::Lease(k.clone(), 0)], true),
        (vec![Compare::Lease(k.clone(), lease)], false),
        (vec![Compare::Lease(missing.clone(), 0)], false),
        (vec![Compare::Lease(missing.clone(), lease)], false),
        (
            vec![
                Compare::Exists(k.clone()),
                Compare::Missing(missing.clone()),
            ],
            true,
        ),
        (
            vec![Compare::Exists(k.clone()), Compare::Exists(missing.clone())],
            false,
        ),
        (
            vec![
                Compare::Missing(missing.clone()),
                Compare::Value(k.clone(), b"nope".to_vec()),
            ],
            false,
        ),
    ];
    for (i, (compares, expected)) in table.into_iter().enumerate() {
        let what = format!("compare #{i} {compares:?}");
        let r = store
            .txn(
                compares,
                vec![Op::put(&marker, format!("s{i}"))],
                vec![Op::put(&marker, format!("f{i}"))],
            )
            .await
            .with_context(|| what.clone())?;
        ensure_eq!(r.succeeded, expected, "{what}: succeeded");
        let branch = if expected {
            format!("s{i}")
        } else {
            format!("f{i}")
        };
        ensure_eq!(
            value_of(s, &marker).await?,
            Some(branch.into_bytes()),
            "{what}: the branch that ran"
        );
    }
    ensure_eq!(
        value_of(s, &missing).await?,
        None,
        "compares must not create keys"
    );

    // Two writers read the same mod revision and race to swap the value: one wins.
    let seen = s.get(&k).await?.context("k vanished")?.mod_revision;
    let cas = |v: &'static str| {
        let store = store.clone();
        let k = k.clone();
        async move {
            store
                .txn(
                    vec![Compare::ModRevision(k.clone(), seen)],
                    vec![Op::put(&k, v)],
                    vec![],
                )
                .await
        }
    };
    let (a, b) = futures::future::join(cas("a"), cas("b")).await;
    let (a, b) = (a?, b?);
    ensure!(
        a.succeeded != b.succeeded,
        "exactly one compare-and-swap must win: {a:?} {b:?}"
    );
    let winner: &[u8] = if a.succeeded { b"a" } else { b"b" };
    ensure_eq!(
        value_of(s, &k).await?,
        Some(winner.to_vec()),
        "value after the race"
    );
    let stale = store
        .txn(
            vec![Compare::ModRevision(k.clone(), seen)],
            vec![Op::put(&k, "late")],
            vec![],
        )
        .await?;
    ensure!(
        !stale.succeeded,
        "a CAS against a stale mod revision must fail"
    );
    ensure_eq!(
        value_of(s, &k).await?,
        Some(winner.to_vec()),
        "a failed CAS changes nothing"
    );
    s.revoke_lease(lease).await?;
    Ok(())
}

/// A transaction whose compares fail runs its failure ops (puts and deletes, atomically) and
/// none of its success ops; with no failure ops it changes nothing.
pub async fn failure_ops(store: Arc<dyn Store>) -> Result<()> {
    let p = unique_prefix("failure_ops");
    let s = &*store;
    let (a, b, c) = (format!("{p}a"), format!("{p}b"), format!("{p}c"));
    put(s, &a, b"a").await?;
    let r = store
        .txn(
            vec![Compare::Missing(a.clone())],
            vec![Op::put(&b, "success")],
            vec![Op::put(&c, "failure"), Op::delete(&a)],
        )
        .await?;
    ensure!(!r.succeeded, "the compare was false");
    ensure_eq!(value_of(s, &b).await?, None, "success op ran on failure");
    ensure_eq!(
        value_of(s, &c).await?,
        Some(b"failure".to_vec()),
        "failure put"
    );
    ensure_eq!(value_of(s, &a).await?, None, "failure delete");
    let kv = s.get(&c).await?.context("c missing")?;
    ensure_eq!(
        kv.mod_revision,
        r.revision,
        "the failure branch's writes carry the txn revision"
    );

    let r = store
        .txn(
            vec![Compare::Exists(a.clone())],
            vec![Op::put(&b, "x")],
            vec![],
        )
        .await?;
    ensure!(!r.succeeded, "the compare was false");
    ensure_eq!(
        range_all(s, &p, 0).await?.kvs.len(),
        1,
        "keys after a failed txn without failure ops"
    );
    Ok(())
}

/// A transaction branch that writes one key twice (two puts, a put and a delete, or a put under
/// a deleted prefix) is refused whole, as etcd refuses it, so that code tested on one backend
/// does not fail on the other; nothing of it is applied.
pub async fn txn_refuses_duplicate_keys(store: Arc<dyn Store>) -> Result<()> {
    let p = unique_prefix("txn_refuses_duplicate_keys");
    let s = &*store;
    let k = format!("{p}k");
    let bad: Vec<Vec<Op>> = vec![
        vec![Op::put(&k, "1"), Op::put(&k, "2")],
        vec![Op::put(&k, "1"), Op::delete(&k)],
        vec![Op::delete_prefix(p.clone()), Op::put(&k, "1")],
    ];
    for ops in bad {
        let r = store.txn(vec![], ops.clone(), vec![]).await;
        ensure!(r.is_err(), "txn {ops:?} should be refused, got {r:?}");
        ensure_eq!(value_of(s, &k).await?, None, "nothing applied of {ops:?}");
    }
    let ok = store
        .txn(
            vec![],
            vec![Op::put(&k, "1"), Op::put(format!("{p}j"), "2")],
            vec![],
        )
        .await?;
    ensure!(ok.succeeded, "distinct keys in one txn");
    Ok(())
}

/// `DeletePrefix` removes exactly the keys whose name starts with the prefix, all in one
/// revision; it composes with other ops in one txn and deleting nothing is no error.
pub async fn delete_prefix(store: Arc<dyn Store>) -> Result<()> {
    let p = unique_prefix("delete_prefix");
    let s = &*store;
    let doomed = [format!("{p}a/1"), format!("{p}a/2"), format!("{p}a/sub/3")];
    let kept = [format!("{p}a"), format!("{p}ab"), format!("{p}b/1")];
    let mut first = 0;
    for k in doomed.iter().chain(kept.iter()) {
        let r = put(s, k, b"x").await?;
        if first == 0 {
            first = r;
        }
    }
    let r = store
        .txn(vec![], vec![Op::delete_prefix(format!("{p}a/"))], vec![])
        .await?;
    ensure!(r.succeeded, "delete_prefix txn");
    let left: Vec<String> = range_all(s, &p, 0)
        .await?
        .kvs
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    let mut want = kept.to_vec();
    want.sort();
    ensure_eq!(left, want, "keys left after deleting {p}a/");

    let mut w = Watcher::new(s, &p, first).await?;
    let events = w.take(doomed.len() + kept.len() + doomed.len()).await?;
    let deletes = &events[doomed.len() + kept.len()..];
    let want: Vec<_> = doomed.iter().map(|k| del_ev(k, r.revision)).collect();
    ensure_eq!(
        summary(deletes),
        want,
        "delete events of one delete_prefix (one revision, key order)"
    );

    // etcd refuses a branch that deletes a prefix and puts under it (see
    // `txn_refuses_duplicate_keys`), so the replacement takes two transactions.
    let r2 = store
        .txn(vec![], vec![Op::delete_prefix(format!("{p}b/"))], vec![])
        .await?;
    ensure!(r2.succeeded, "delete_prefix of b/");
    put(s, &format!("{p}b/new"), b"n").await?;
    let b: Vec<String> = range_all(s, &format!("{p}b/"), 0)
        .await?
        .kvs
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    ensure_eq!(
        b,
        vec![format!("{p}b/new")],
        "keys under b/ after the replacement"
    );

    let r3 = store
        .txn(
            vec![],
            vec![Op::delete_prefix(format!("{p}nothing/"))],
            vec![],
        )
        .await?;
    ensure!(
        r3.succeeded && r3.revision >= r2.revision,
        "deleting an empty prefix: {r3:?}"
    );
    Ok(())
}
