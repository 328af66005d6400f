//! Group commit for conditional writes of single units (creations, target-state changes):
//! those that arrive while one is being written go out together in the next transaction.
//!
//! `fleetctl start` of many units, like any client of fleet's API, sends one `PUT` per unit.
//! Written one transaction each, 10,000 new units were 10,000 etcd requests, and on etcd 3.4
//! every request copies the store's uncommitted write buffer, so a burst of creations slowed
//! itself and everything else down. Here the first creation is written at once; those that
//! arrive meanwhile wait for it and are then written in one transaction, all of them or none
//! (each brings its own compares: its job key "absent" for a creation, unchanged since read for
//! a target state). If that transaction fails because one compare fails, each is written on its
//! own, so every caller gets the answer it would have had alone. `fleetctl start` of many
//! units then launches each of them, one request per unit again, which this batches as well.
//!
//! ```text
//! let creates = GroupCommit::default();
//! // From any number of tasks at once:
//! let created: bool = creates.write(store.clone(), "a.service".into(), compares, ops).await?;
//! ```

use crate::store::{Compare, Op, Store, StoreError};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// Creations waiting to be written, and whether a writer is running.
#[derive(Default)]
pub(crate) struct GroupCommit {
    queue: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Pending>,
    writing: bool,
}

struct Pending {
    name: String,
    compares: Vec<Compare>,
    ops: Vec<Op>,
    done: oneshot::Sender<Result<bool, StoreError>>,
}

impl GroupCommit {
    /// Writes `ops` of unit `name` if `compares` hold, together with whatever other writes are
    /// waiting; true if written. The write goes ahead even if the caller stops waiting for it.
    pub(crate) async fn write(
        self: &Arc<Self>,
        store: Arc<dyn Store>,
        name: String,
        compares: Vec<Compare>,
        ops: Vec<Op>,
    ) -> Result<bool, StoreError> {
        let (done, answer) = oneshot::channel();
        let start_writer = {
            let mut q = lock(&self.queue);
            q.waiting.push_back(Pending {
                name,
                compares,
                ops,
                done,
            });
            !std::mem::replace(&mut q.writing, true)
        };
        if start_writer {
            // A task of its own: a caller that goes away (a cancelled HTTP request) must not
            // take the writer, and the others' answers, with it.
            tokio::spawn(write_all(self.clone(), store));
        }
        answer.await.unwrap_or_else(|_| {
            Err(StoreError::Other(
                "the unit write was abandoned before it was written".into(),
            ))
        })
    }
}

/// The key an operation writes (the prefix, for a prefix deletion): a transaction may write
/// each key once only.
pub(crate) fn op_key(op: &Op) -> &str {
    match op {
        Op::Put { key, .. } | Op::Delete { key } => key,
        Op::DeletePrefix { prefix } => prefix,
    }
}

fn lock(m: &Mutex<Queue>) -> std::sync::MutexGuard<'_, Queue> {
    // The queue is consistent between statements, so a panic elsewhere cannot leave it torn.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn write_all(group: Arc<GroupCommit>, store: Arc<dyn Store>) {
    loop {
        let batch = {
            let mut q = lock(&group.queue);
            let batch = q.take_batch();
            if batch.is_empty() {
                q.writing = false;
                return;
            }
            batch
        };
        write(store.as_ref(), batch).await;
    }
}

impl Queue {
    /// The longest run of waiting writes that fits one transaction: each name once (a second
    /// write of a name must see the first), and a key written twice only with the same value
    /// (instances of one template share their body).
    fn take_batch(&mut self) -> Vec<Pending> {
        let mut batch: Vec<Pending> = Vec::new();
        let mut names: HashSet<String> = HashSet::new();
        let mut written: HashMap<String, Op> = HashMap::new();
        let mut ops = 0;
        let mut i = 0;
        let mut compares = 0;
        while i < self.waiting.len() {
            let p = &self.waiting[i];
            let fresh: Vec<&Op> = p
                .ops
                .iter()
                .filter(|op| written.get(op_key(op)) != Some(op))
                .collect();
            let clash =
                names.contains(&p.name) || fresh.iter().any(|op| written.contains_key(op_key(op)));
            if clash {
                i += 1;
                continue;
            }
            // The first always goes, so nothing waits for ever (if it alone is too big for one
            // transaction, the store says so to its caller).
            if !batch.is_empty()
                && (ops + fresh.len() > crate::MAX_TXN_OPS
                    || compares + p.compares.len() > crate::MAX_TXN_OPS)
            {
                break;
            }
            ops += fresh.len();
            compares += p.compares.len();
            for op in fresh {
                written.insert(op_key(op).to_string(), op.clone());
            }
            names.insert(p.name.clone());
            if let Some(p) = self.waiting.remove(i) {
                batch.push(p);
            }
        }
        batch
    }
}

async fn write(store: &dyn Store, batch: Vec<Pending>) {
    if batch.len() == 1 {
        for p in batch {
            let result = store.txn(p.compares, p.ops, vec![]).await;
            let _ = p.done.send(result.map(|r| r.succeeded));
        }
        return;
    }
    let compares: Vec<Compare> = batch
        .iter()
        .flat_map(|p| p.compares.iter().cloned())
        .collect();
    let mut seen: HashSet<&str> = HashSet::new();
    let ops: Vec<Op> = batch
        .iter()
        .flat_map(|p| p.ops.iter())
        .filter(|op| seen.insert(op_key(op)))
        .cloned()
        .collect();
    match store.txn(compares, ops, vec![]).await {
        Ok(r) if r.succeeded => {
            for p in batch {
                let _ = p.done.send(Ok(true));
            }
        }
        // One compare failed: each on its own decides which.
        Ok(_) => {
            let alone = batch.into_iter().map(|p| async move {
                let result = store.txn(p.compares, p.ops, vec![]).await;
                let _ = p.done.send(result.map(|r| r.succeeded));
            });
            futures::future::join_all(alone).await;
        }
        Err(e) => {
            for p in batch {
                let _ = p.done.send(Err(e.clone()));
            }
        }
    }
}
