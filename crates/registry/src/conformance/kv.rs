//! Cases on single keys and ranges: values, revisions, paging and reads at a past revision.

use super::support::*;
use crate::store::{range_all, KeyValue, Op, Store};
use anyhow::{ensure, Context, Result};
use std::sync::Arc;

/// Put, overwrite, get and delete one key: values, create and mod revisions, lease 0, empty
/// values, deleting a missing key, and a recreated key getting a new create revision.
pub async fn get_put_delete(store: Arc<dyn Store>) -> Result<()> {
    let p = unique_prefix("get_put_delete");
    let s = &*store;
    let k = format!("{p}a");
    ensure_eq!(s.get(&k).await?, None, "get of a key never written");

    let r1 = put(s, &k, b"one").await?;
    ensure!(
        r1 > 0,
        "the revision after a put must be positive, got {r1}"
    );
    let kv = s.get(&k).await?.context("key missing right after put")?;
    ensure_eq!(
        kv,
        KeyValue {
            key: k.clone(),
            value: b"one".to_vec(),
            create_revision: r1,
            mod_revision: r1,
            lease: 0
        },
        "key after first put"
    );

    let r2 = put(s, &k, b"two").await?;
    ensure!(r2 > r1, "overwrite revision {r2} must follow {r1}");
    let kv = s.get(&k).await?.context("key missing after overwrite")?;
    ensure_eq!(
        (kv.value, kv.create_revision, kv.mod_revision),
        (b"two".to_vec(), r1, r2),
        "key after overwrite"
    );

    let empty = format!("{p}empty");
    put(s, &empty, b"").await?;
    ensure_eq!(
        value_of(s, &empty).await?,
        Some(Vec::new()),
        "a key with an empty value exists"
    );

    let r3 = delete(s, &k).await?;
    ensure!(r3 > r2, "delete revision {r3} must follow {r2}");
    ensure_eq!(s.get(&k).await?, None, "get after delete");

    let r = store
        .txn(vec![], vec![Op::delete(&k)], vec![])
        .await
        .context("delete of a missing key")?;
    ensure!(
        r.succeeded && r.revision >= r3,
        "deleting a missing key is no error: {r:?}"
    );
    ensure_eq!(s.get(&k).await?, None, "get after deleting a missing key");

    let r4 = put(s, &k, b"three").await?;
    let kv = s.get(&k).await?.context("key missing after re-create")?;
    ensure_eq!(
        (kv.create_revision, kv.mod_revision),
        (r4, r4),
        "a re-created key starts a new life"
    );
    Ok(())
}

/// Every write transaction yields a strictly greater revision; all keys written by one
/// transaction share its revision; reads report a revision at least as new as the last write.
pub async fn revisions_monotonic(store: Arc<dyn Store>) -> Result<()> {
    let p = unique_prefix("revisions_monotonic");
    let s = &*store;
    let mut last = 0;
    for i in 0..20 {
        let r = put(s, &format!("{p}k{i}"), b"x").await?;
        ensure!(r > last, "put {i}: revision {r} does not follow {last}");
        last = r;
    }
    let keys = [format!("{p}t/a"), format!("{p}t/b"), format!("{p}t/c")];
    let r = store
        .txn(
            vec![],
            vec![
                Op::put(&keys[0], "1"),
                Op::put(&keys[1], "2"),
                Op::put(&keys[2], "3"),
                Op::delete(format!("{p}k0")),
            ],
            vec![],
        )
        .await?;
    ensure!(
        r.succeeded && r.revision > last,
        "multi-op txn: {r:?} after {last}"
    );
    for k in &keys {
        let kv = s
            .get(k)
            .await?
            .with_context(|| format!("{k} missing after txn"))?;
        ensure_eq!(
            kv.mod_revision,
            r.revision,
            "mod revision of {k} written by one txn"
        );
    }
    let page = s.range(&p, None, 0, None).await?;
    ensure!(
        page.revision >= r.revision,
        "range revision {} older than the last write {}",
        page.revision,
        r.revision
    );
    ensure_eq!(page.kvs.len(), 22, "keys under the case prefix");
    Ok(())
}

/// Range over 10,000 keys: sorted, prefix-bounded, `limit`/`start`/`more` paging, and reads
/// pinned at a revision that see the data as it was, even after later changes.
pub async fn range_paging(store: Arc<dyn Store>) -> Result<()> {
    const N: usize = 10_000;
    let p = unique_prefix("range_paging");
    let s = &*store;
    let key = |i: usize| format!("{p}k{i:05}");
    let val = |i: usize| format!("v{i}").into_bytes();
    // Written in txns of 100 ops: etcd refuses more than 128 ops per txn by default.
    for chunk in (0..N).collect::<Vec<_>>().chunks(100) {
        let ops = chunk.iter().map(|&i| Op::put(key(i), val(i))).collect();
        store
            .txn(vec![], ops, vec![])
            .await
            .context("writing the 10,000 keys")?;
    }
    // A sibling that shares the prefix's text but not its trailing slash.
    let outside = format!("{}-outside", p.trim_end_matches('/'));
    put(s, &outside, b"x").await?;

    let full = s.range(&p, None, 0, None).await?;
    ensure!(!full.more, "an unlimited range reports more");
    ensure_eq!(full.kvs.len(), N, "number of keys in an unlimited range");
    for (i, kv) in full.kvs.iter().enumerate() {
        ensure!(
            kv.key == key(i) && kv.value == val(i),
            "key {i} of the range is {kv:?}"
        );
    }
    let at = full.revision;

    let one = s.range(&p, None, 1, None).await?;
    ensure!(
        one.more && one.kvs.len() == 1 && one.kvs[0].key == key(0),
        "range with limit 1: {one:?}"
    );
    let mid = s.range(&p, Some(&key(5000)), 10, Some(at)).await?;
    let mid_keys: Vec<String> = mid.kvs.iter().map(|kv| kv.key.clone()).collect();
    ensure_eq!(
        mid_keys,
        (5000..5010).map(key).collect::<Vec<_>>(),
        "range starting at k05000, limit 10"
    );
    ensure!(mid.more, "a page in the middle reports more");
    let tail = s.range(&p, Some(&key(N - 3)), 10, Some(at)).await?;
    ensure!(
        tail.kvs.len() == 3 && !tail.more,
        "the last page: {} keys, more={}",
        tail.kvs.len(),
        tail.more
    );

    // Change the data, then read the old revision page by page.
    store
        .txn(vec![], vec![Op::delete_prefix(format!("{p}k000"))], vec![])
        .await?;
    put(s, &key(5000), b"changed").await?;
    put(s, &format!("{p}k99999"), b"new").await?;
    put(s, &key(7), b"back").await?;
    let mut pages = 0;
    let mut old = Vec::new();
    let mut start: Option<String> = None;
    loop {
        let page = s.range(&p, start.as_deref(), 1000, Some(at)).await?;
        ensure_eq!(
            page.revision,
            at,
            "revision reported by a page read at revision {at}"
        );
        pages += 1;
        old.extend(page.kvs);
        if !page.more {
            break;
        }
        ensure!(pages < 20, "paging does not end");
        let last = old.last().context("a page with more=true but no keys")?;
        start = Some(format!("{}\0", last.key));
    }
    ensure_eq!(pages, 10, "pages of 1000 over 10,000 keys");
    ensure!(
        old == full.kvs,
        "paging at revision {at} after later changes differs from the first read"
    );

    let now = range_all(s, &p, 1000).await?;
    ensure_eq!(
        now.kvs.len(),
        N - 100 + 1 + 1,
        "keys now (100 deleted, k00007 and k99999 written)"
    );
    ensure!(
        now.kvs.windows(2).all(|w| w[0].key < w[1].key),
        "range_all is not sorted"
    );
    ensure_eq!(
        value_of(s, &key(5000)).await?,
        Some(b"changed".to_vec()),
        "k05000 now"
    );
    Ok(())
}
