//! Translation between fleet's store types and etcd's: key ranges, key-values, compares and
//! transaction ops.

use crate::store::{Compare, KeyValue, LeaseId, Op, Result, Revision, StoreError};
use etcd_client as ec;

/// The first key after every key that starts with `prefix` (etcd's range end for a prefix);
/// `"\0"` (all keys to the end) when no such key exists.
pub(super) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Where a range under `prefix` starts: `start` if it lies inside the prefix's range, else the
/// prefix itself (etcd reads the empty key as "no key", so the empty prefix starts at `"\0"`).
pub(super) fn range_start(prefix: &str, start: Option<&str>) -> Vec<u8> {
    let key = match start {
        Some(s) if s > prefix => s,
        _ => prefix,
    };
    if key.is_empty() {
        vec![0]
    } else {
        key.as_bytes().to_vec()
    }
}

pub(super) fn convert_kv(kv: &ec::KeyValue) -> Result<KeyValue> {
    let key = std::str::from_utf8(kv.key())
        .map_err(|_| StoreError::Other(format!("etcd key is not UTF-8: {:?}", kv.key())))?;
    Ok(KeyValue {
        key: key.to_owned(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        lease: kv.lease(),
    })
}

pub(super) fn convert_compares(compares: Vec<Compare>) -> Vec<ec::Compare> {
    use ec::CompareOp::{Equal, Greater};
    let mut out = Vec::with_capacity(compares.len());
    for c in compares {
        match c {
            Compare::Exists(k) => out.push(ec::Compare::create_revision(k, Greater, 0)),
            Compare::Missing(k) => out.push(ec::Compare::create_revision(k, Equal, 0)),
            Compare::Value(k, v) => out.push(ec::Compare::value(k, Equal, v)),
            Compare::ModRevision(k, r) => out.push(ec::Compare::mod_revision(k, Equal, r)),
            Compare::Lease(k, l) => {
                // etcd compares a missing key as if it had lease 0, but ours requires the key.
                if l == 0 {
                    out.push(ec::Compare::create_revision(k.clone(), Greater, 0));
                }
                out.push(ec::Compare::lease(k, Equal, l));
            }
        }
    }
    out
}

pub(super) fn convert_ops(ops: Vec<Op>) -> Vec<ec::TxnOp> {
    ops.into_iter()
        .map(|op| match op {
            Op::Put { key, value, lease } => {
                let po = (lease != 0).then(|| ec::PutOptions::new().with_lease(lease));
                ec::TxnOp::put(key, value, po)
            }
            Op::Delete { key } => ec::TxnOp::delete(key, None),
            Op::DeletePrefix { prefix } => {
                ec::TxnOp::delete(prefix, Some(ec::DeleteOptions::new().with_prefix()))
            }
        })
        .collect()
}

pub(super) fn first_lease(ops: &[Op]) -> LeaseId {
    ops.iter()
        .find_map(|op| match op {
            Op::Put { lease, .. } if *lease != 0 => Some(*lease),
            _ => None,
        })
        .unwrap_or(0)
}

pub(super) fn header_revision(h: Option<&ec::ResponseHeader>) -> Revision {
    h.map(|h| h.revision()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte_below_ff() {
        assert_eq!(prefix_end(b"/fleet/"), b"/fleet0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }

    #[test]
    fn range_start_stays_inside_the_prefix() {
        assert_eq!(range_start("/p/", None), b"/p/".to_vec());
        assert_eq!(range_start("/p/", Some("/p/b")), b"/p/b".to_vec());
        assert_eq!(range_start("/p/", Some("/a")), b"/p/".to_vec());
        assert_eq!(range_start("", None), vec![0]);
    }

    #[test]
    fn lease_compare_on_lease_zero_also_requires_the_key() {
        let out = convert_compares(vec![
            Compare::Lease("k".into(), 0),
            Compare::Lease("k".into(), 7),
        ]);
        assert_eq!(out.len(), 3);
    }
}
