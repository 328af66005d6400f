//! [`ApiState`]: what every handler reads (the registry, the page size, availability, metrics)
//! and the listings kept for the pages that follow a first page.

use crate::body::DEFAULT_MAX_BODY_BYTES;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::token::{page_range, PageToken};
use registry::{AtRevision, ListingView, Registry, RegistryError, Revision, StoreError};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What the API server needs: the registry, fleet's `token_limit`, and whether this machine is
/// registered yet (until then every request gets 503, as in fleet). Cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    pub(crate) registry: Registry,
    pub(crate) token_limit: u16,
    available: Arc<AtomicBool>,
    pub(crate) metrics: Metrics,
    /// Everything `/metrics` serves: the API's families and those fleetd registered beside.
    pub(crate) exposition: Arc<prometheus_client::registry::Registry>,
    pub(crate) max_body_bytes: usize,
    pub(crate) listings: Arc<Listings>,
    pub(crate) access: Arc<crate::access::Access>,
    /// The cluster's events, followed from when the API becomes available (see `events`).
    events: Arc<std::sync::OnceLock<Option<crate::events::EventLog>>>,
    /// The recent output of the units this machine's process supervisor runs, if it runs any.
    pub(crate) output: Option<crate::output::OutputSource>,
}

/// One kept listing: the revision it was read at, and its items.
pub(crate) type KeptListing<T> = std::sync::Mutex<Option<(Revision, Arc<Vec<T>>)>>;

/// The listings the API serves, and where they come from: the followed copy of the registry
/// ([`ListingView`], started by the first listing) while it is current, else the last listing
/// read from the registry for a first page, kept for the pages that follow: their tokens pin
/// the revision it was read at, so the same items are served without reading (and decoding)
/// the whole listing again for every page — which made reading all pages quadratic in the
/// number of units (10,000 units at 100 a page read 100 full listings).
#[derive(Default)]
pub(crate) struct Listings {
    pub(crate) units: KeptListing<registry::UnitView>,
    pub(crate) states: KeptListing<Arc<registry::UnitState>>,
    view: std::sync::OnceLock<Option<ListingView>>,
}

/// How long a first page waits for the followed copy to reach the registry's revision (the
/// writes made before the request) before reading the registry instead. A watch delivers in
/// milliseconds; waiting longer than a registry read would take gains nothing.
const VIEW_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// The cached listing if it was read at `revision`.
pub(crate) fn cached<T>(slot: &KeptListing<T>, revision: Option<Revision>) -> Option<Arc<Vec<T>>> {
    let revision = revision?;
    let guard = slot
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match &*guard {
        Some((r, items)) if *r == revision => Some(items.clone()),
        _ => None,
    }
}

pub(crate) fn remember<T>(slot: &KeptListing<T>, revision: Revision, items: Arc<Vec<T>>) {
    *slot
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((revision, items));
}

/// One page of a shared listing, converting only the items of the page.
pub(crate) fn page_of<T, U>(
    items: &[T],
    token: &PageToken,
    revision: Revision,
    convert: impl Fn(&T) -> U,
) -> (Vec<U>, Option<PageToken>) {
    let (range, next) = page_range(token, items.len(), revision);
    let page = items
        .get(range)
        .unwrap_or_default()
        .iter()
        .map(convert)
        .collect();
    (page, next)
}

impl ApiState {
    /// A server over `registry` handing out pages of `token_limit` items (fleet's default is
    /// 100; 0 is read as 1). Starts unavailable: call [`ApiState::set_available`].
    pub fn new(registry: Registry, token_limit: u16) -> ApiState {
        let mut exposition = prometheus_client::registry::Registry::default();
        let metrics = Metrics::register(&mut exposition);
        ApiState {
            registry,
            token_limit: token_limit.max(1),
            available: Arc::new(AtomicBool::new(false)),
            metrics,
            exposition: Arc::new(exposition),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            listings: Arc::default(),
            access: Arc::default(),
            events: Arc::default(),
            output: None,
        }
    }

    /// Serve requests (`true`) or answer 503 to all but `/metrics` (`false`).
    pub fn set_available(&self, available: bool) {
        self.available.store(available, Ordering::SeqCst);
        self.metrics.set_available(available);
        // The listings' copy is read now rather than by the first listing, which would
        // otherwise wait for it. Outside a runtime (a server built but not served yet) the
        // first listing starts it.
        if available && tokio::runtime::Handle::try_current().is_ok() {
            self.view();
            self.events();
        }
    }

    pub fn is_available(&self) -> bool {
        self.available.load(Ordering::SeqCst)
    }

    /// Serves `exposition` at `GET /metrics`: the families other parts of fleetd registered
    /// in it (engine, agent, registry client), and the API's own, registered here.
    pub fn with_metrics(
        mut self,
        mut exposition: prometheus_client::registry::Registry,
    ) -> ApiState {
        self.metrics = Metrics::register(&mut exposition);
        self.metrics.set_available(self.is_available());
        self.exposition = Arc::new(exposition);
        self
    }

    /// Where `GET /fleet/v1/output/<unit>` reads a unit's recent output: fleetd gives it when
    /// its unit manager is the process supervisor.
    pub fn with_output(mut self, source: crate::output::OutputSource) -> ApiState {
        self.output = Some(source);
        self
    }

    /// Who may do what over TCP (tokens); shared, so that the tokens can be replaced while
    /// serving.
    pub fn with_access(mut self, access: Arc<crate::access::Access>) -> ApiState {
        self.access = access;
        self
    }

    pub fn with_max_body_bytes(mut self, bytes: usize) -> ApiState {
        self.max_body_bytes = bytes;
        self
    }

    /// Counts a registry call made for a request.
    pub(crate) async fn op<T>(
        &self,
        name: &'static str,
        fut: impl Future<Output = registry::Result<T>>,
    ) -> Result<T, ApiError> {
        let r = fut.await;
        self.metrics.count_registry_op(name, r.is_ok());
        r.map_err(|e| ApiError::registry(name, e))
    }

    /// The cluster's events this fleetd follows, started when the API becomes available (or by
    /// the first request for them); `None` outside a runtime.
    pub(crate) fn events(&self) -> Option<&crate::events::EventLog> {
        self.events
            .get_or_init(|| {
                tokio::runtime::Handle::try_current()
                    .ok()
                    .map(|_| crate::events::EventLog::start(&self.registry))
            })
            .as_ref()
    }

    /// The followed copy of the registry, started by the first listing (`None` when the
    /// registry polls instead of watching).
    fn view(&self) -> Option<&ListingView> {
        self.listings
            .view
            .get_or_init(|| {
                // Following needs a runtime to run in; without one, listings read the registry.
                tokio::runtime::Handle::try_current()
                    .ok()
                    .and_then(|_| self.registry.follow_listings())
            })
            .as_ref()
    }

    /// The whole listing a page is cut from, and the revision it shows. A first page (or
    /// fleet's tokens, which name no revision) is taken from the followed copy once it holds
    /// every write made before the request (read-your-writes); a later page from the listing
    /// its token's revision names — kept, the copy if still there, else read again from the
    /// registry at that revision. Whatever the source, one token's pages show one revision.
    pub(crate) async fn listing<T, Snap, Read, Fut>(
        &self,
        name: &'static str,
        slot: &KeptListing<T>,
        token: &PageToken,
        snapshot: Snap,
        read: Read,
    ) -> Result<(Revision, Arc<Vec<T>>), ApiError>
    where
        Snap: Fn(&ListingView) -> Option<AtRevision<Arc<Vec<T>>>>,
        Read: Fn(Option<Revision>) -> Fut,
        Fut: Future<Output = registry::Result<AtRevision<Vec<T>>>>,
    {
        if let (Some(r), Some(items)) = (token.revision, cached(slot, token.revision)) {
            return Ok((r, items));
        }
        if let Some(view) = self.view() {
            let from_view = match token.revision {
                Some(wanted) => snapshot(view).filter(|l| l.revision == wanted),
                // Not read yet (just started): the registry answers sooner than the copy.
                None if view.revision().is_none() => None,
                None => match self
                    .op("current_revision", self.registry.current_revision())
                    .await
                {
                    Ok(now) => match view.reach(now, VIEW_WAIT).await {
                        Some(_) => snapshot(view),
                        None => {
                            tracing::debug!(
                                listing = name,
                                revision = now,
                                "listing copy behind the registry; reading the registry"
                            );
                            None
                        }
                    },
                    // The read below names the failure.
                    Err(_) => None,
                },
            };
            if let Some(l) = from_view {
                // Kept for the listing's later pages: the copy may move on meanwhile.
                remember(slot, l.revision, l.items.clone());
                return Ok((l.revision, l.items));
            }
        }
        let read = self.read_pinned(name, token, read).await?;
        let items = Arc::new(read.items);
        remember(slot, read.revision, items.clone());
        Ok((read.revision, items))
    }

    /// Reads a listing at the token's revision; a revision compacted away falls back to the
    /// latest one (what fleet always read), logged at debug level.
    pub(crate) async fn read_pinned<T, F, Fut>(
        &self,
        name: &'static str,
        token: &PageToken,
        read: F,
    ) -> Result<AtRevision<T>, ApiError>
    where
        F: Fn(Option<Revision>) -> Fut,
        Fut: Future<Output = registry::Result<AtRevision<T>>>,
    {
        let first = read(token.revision).await;
        let result = match first {
            Err(RegistryError::Store(StoreError::Compacted {
                requested,
                compacted,
            })) if token.revision.is_some() => {
                tracing::debug!(
                    requested,
                    compacted,
                    listing = name,
                    "page token revision compacted; reading the latest revision"
                );
                read(None).await
            }
            Err(e) if token.revision.is_some() && !is_unavailable(&e) => {
                match self.future_revision(token, &read).await {
                    Some(message) => return Err(ApiError::bad_request(message)),
                    None => Err(e),
                }
            }
            other => other,
        };
        self.metrics.count_registry_op(name, result.is_ok());
        result.map_err(|e| ApiError::registry(name, e))
    }

    /// Why a pinned read failed when its token names a revision the registry has not reached:
    /// a made-up token, or one of another cluster. The store's own error says only that the
    /// read failed (a 500), so read the latest revision to tell that case apart.
    async fn future_revision<T, F, Fut>(&self, token: &PageToken, read: &F) -> Option<String>
    where
        F: Fn(Option<Revision>) -> Fut,
        Fut: Future<Output = registry::Result<AtRevision<T>>>,
    {
        let wanted = token.revision?;
        let latest = read(None).await.ok()?.revision;
        (wanted > latest).then(|| {
            format!(
                "page token out of range: it names registry revision {wanted}, but the registry \
                 is at {latest}; start again without nextPageToken"
            )
        })
    }
}

fn is_unavailable(e: &RegistryError) -> bool {
    matches!(e, RegistryError::Store(StoreError::Unavailable(_)))
}

pub(crate) fn token(s: &ApiState, query: Option<&str>) -> Result<PageToken, ApiError> {
    PageToken::from_query(query, s.token_limit).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// 400 for a token whose page lies after the last page of a listing of `items` items.
pub(crate) fn in_range(token: &PageToken, items: usize) -> Result<(), ApiError> {
    crate::token::check_in_range(token, items).map_err(|e| ApiError::bad_request(e.to_string()))
}

pub(crate) fn next_token(next: Option<PageToken>) -> String {
    next.map(|t| t.encode()).unwrap_or_default()
}
