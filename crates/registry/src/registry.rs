//! [`Registry`]: fleet's data model over a [`Store`], and what its reads share. The operations
//! live beside it by concern: units, schedule, leadership, machines, presence, states, the API's
//! views, and followers.

use crate::codec::{decode, Record};
use crate::group_commit::GroupCommit;
use crate::keys::{KeyShape, Keys};
use crate::store::{range_all, KeyValue, RangePage, Revision, Store, StoreError};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use unit::UnitFile;

/// Keys read per range request when listing: pages are read one after another, so a listing of
/// a large cluster costs one round trip per page; a page of 10,000 states is a few MB.
const PAGE: usize = 10000;
/// How often a read-modify-write retries when another writer got there first.
pub(crate) const CAS_RETRIES: usize = 20;

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The store failed (unreachable, a revision compacted away, a lease gone...).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored record could not be decoded: the key names it.
    #[error("corrupt registry record at {key}: {message}")]
    Corrupt { key: String, message: String },
    /// Too many concurrent writers to one record.
    #[error("gave up updating {0} after {CAS_RETRIES} concurrent modifications")]
    Contended(String),
}

/// The result of a registry operation.
pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// Items read at one store revision: pass the revision back to read more at the same point
/// (the API's pages), or to follow changes from there.
#[derive(Clone, Debug, Default)]
pub struct AtRevision<T> {
    /// What was read.
    pub items: T,
    /// The store revision it was read at.
    pub revision: Revision,
}

/// fleet's registry over any [`Store`]: the only code that knows keys, records and
/// transactions; everyone else uses its typed operations and followers. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) keys: Keys,
    /// Bodies parsed by the last listing, by hash (bodies never change under a hash): the next
    /// listing parses only new ones. Replaced by each listing, so it holds one listing's worth.
    pub(crate) parsed: Arc<std::sync::Mutex<HashMap<String, UnitFile>>>,
    /// Creations and target-state changes written together (see [`crate::group_commit`]).
    pub(crate) writes: Arc<GroupCommit>,
    /// Followers read their part this often instead of watching it (fleet's
    /// `disable_watches`); `None`: they watch.
    pub(crate) poll: Option<std::time::Duration>,
    /// Told of lease refreshes (store requests reach it through the wrapped store).
    pub(crate) observer: Option<Arc<dyn crate::StoreObserver>>,
    /// The one watch of the whole keyspace its followers share (see [`crate::feed`]).
    pub(crate) feed: Arc<crate::feed::Hub>,
}

impl Registry {
    /// The registry of the fleet cluster whose keys live under `prefix` (`etcd_key_prefix`) in
    /// `store`.
    pub fn new(store: Arc<dyn Store>, prefix: &str) -> Registry {
        Registry {
            store,
            keys: Keys::new(prefix),
            parsed: Arc::default(),
            writes: Arc::default(),
            poll: None,
            observer: None,
            feed: Arc::default(),
        }
    }

    /// The same registry, telling `observer` of every request to its store and of every
    /// refresh of a machine lease (for metrics). Call it before cloning: clones made earlier
    /// keep the store unobserved.
    pub fn with_observer(mut self, observer: Arc<dyn crate::StoreObserver>) -> Registry {
        self.store = Arc::new(crate::observe::ObservedStore {
            inner: self.store,
            observer: observer.clone(),
        });
        self.observer = Some(observer);
        self
    }

    /// The same registry, whose followers find changes by reading their part every `every`
    /// instead of watching it (fleet's `disable_watches`, for stores or proxies where watches
    /// are costly or broken). They deliver the same updates: a `Reset` first, then `Changes`
    /// found by comparing each read with the one before.
    pub fn polling(mut self, every: std::time::Duration) -> Registry {
        self.poll = Some(every);
        self
    }

    /// Every key under `prefix`, read at `at` (`None`: the latest revision).
    pub(crate) async fn range_at(
        &self,
        prefix: &str,
        at: Option<Revision>,
    ) -> Result<AtRevision<Vec<KeyValue>>> {
        let page = match at {
            None => range_all(self.store.as_ref(), prefix, PAGE).await?,
            Some(rev) => {
                let mut out = Vec::new();
                let mut start: Option<String> = None;
                loop {
                    let p = self
                        .store
                        .range(prefix, start.as_deref(), PAGE, Some(rev))
                        .await?;
                    let more = p.more;
                    out.extend(p.kvs);
                    match (more, out.last()) {
                        (true, Some(last)) => start = Some(format!("{}\0", last.key)),
                        _ => break,
                    }
                }
                RangePage {
                    kvs: out,
                    more: false,
                    revision: rev,
                }
            }
        };
        Ok(AtRevision {
            items: page.kvs,
            revision: page.revision,
        })
    }

    /// The records under `base`, in key order, read at `at`.
    pub(crate) async fn records<T: Record>(
        &self,
        base: &str,
        at: Option<Revision>,
    ) -> Result<AtRevision<Vec<T>>> {
        let kvs = self.range_at(base, at).await?;
        let items = kvs.items.iter().map(decode).collect::<Result<Vec<T>>>()?;
        Ok(AtRevision {
            items,
            revision: kvs.revision,
        })
    }

    /// The records under `base` by what their keys name after it, read at `at`. Keys of
    /// another shape are not such records and are left out.
    pub(crate) async fn record_map<K: KeyShape + Ord, T: Record>(
        &self,
        base: &str,
        at: Option<Revision>,
    ) -> Result<AtRevision<BTreeMap<K, T>>> {
        let kvs = self.range_at(base, at).await?;
        let mut items = BTreeMap::new();
        for kv in &kvs.items {
            if let Some(k) = K::under(base, &kv.key) {
                items.insert(k, decode(kv)?);
            }
        }
        Ok(AtRevision {
            items,
            revision: kvs.revision,
        })
    }

    /// The record at `key`, if there is one.
    pub(crate) async fn record<T: Record>(&self, key: &str) -> Result<Option<T>> {
        match self.store.get(key).await? {
            Some(kv) => Ok(Some(decode(&kv)?)),
            None => Ok(None),
        }
    }

    /// Every key of the cluster with its value as text (lossy), in key order: for diagnostics,
    /// such as a test harness showing the registry when a test fails.
    pub async fn dump(&self) -> Result<Vec<(String, String)>> {
        let kvs = self.range_at(self.keys.prefix(), None).await?;
        Ok(kvs
            .items
            .into_iter()
            .map(|kv| (kv.key, String::from_utf8_lossy(&kv.value).into_owned()))
            .collect())
    }
}
