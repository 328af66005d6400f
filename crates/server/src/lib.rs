//! fleet's HTTP API v1 server (axum) over a [`Registry`], and the listeners it serves on:
//! what fleetd (and the benchmark) mount. The wire types and the client are the light `api`
//! crate (package `fleet-api`), which this one builds on.
//!
//! ```no_run
//! # async fn demo(registry: registry::Registry, shutdown: tokio::sync::oneshot::Receiver<()>) -> anyhow::Result<()> {
//! use server::listen::{bind, serve, systemd_listeners, Listen};
//! let state = server::ApiState::new(registry, 100); // token_limit
//! let mut listeners = bind(&[Listen::Unix("/var/run/fleet.sock".into())]).await?;
//! listeners.extend(systemd_listeners()?);
//! let served = tokio::spawn(serve(listeners, server::router(state.clone()), async { let _ = shutdown.await; }));
//! // once this machine is registered in the registry:
//! state.set_available(true);
//! served.await??;
//! # Ok(()) }
//! ```
//!
//! Where we differ from fleet (each is one of fleet's gaps, see the README's design notes):
//! `desiredState` is validated on every `PUT` (400 names the bad value); options are validated
//! on replace as on create; a template is never given a state other than `inactive`; the last
//! page of a listing carries no `nextPageToken`; pages are read at the revision of the first
//! page; `PATCH /machines` is one transaction; error messages always say what failed.

pub mod listen;
pub mod metrics;
pub mod routes;
pub mod token;

use crate::metrics::Metrics;
use crate::routes::{decode_path, route, Route};
use crate::token::{paginate, PageToken};
use api::types;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use registry::{
    AtRevision, MetadataChange, Registry, RegistryError, Revision, StoreError, TargetState,
};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The version fleetd reports in its `Server` header.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Request bodies larger than this are refused with 413.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;

/// The discovery document served at `GET {prefix}/discovery`.
pub const DISCOVERY_JSON: &str = include_str!("discovery.json");

/// Appends Prometheus text lines to the `/metrics` output.
pub type MetricsSource = Arc<dyn Fn(&mut String) + Send + Sync>;

/// What the API server needs: the registry, fleet's `token_limit`, and whether this machine is
/// registered yet (until then every request gets 503, as in fleet). Cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    registry: Registry,
    token_limit: u16,
    available: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    metrics_sources: Vec<MetricsSource>,
    max_body_bytes: usize,
    listings: Arc<Listings>,
}

/// One kept listing: the revision it was read at, and its items.
type KeptListing<T> = std::sync::Mutex<Option<(Revision, Arc<Vec<T>>)>>;

/// The last listing of units and of unit states read for a first page, kept for the pages
/// that follow: their tokens pin the revision it was read at, so the same items are served
/// without reading (and decoding) the whole listing again for every page — which made reading
/// all pages quadratic in the number of units (10,000 units at 100 a page read 100 full
/// listings).
#[derive(Default)]
struct Listings {
    units: KeptListing<types::Unit>,
    states: KeptListing<types::UnitState>,
}

/// The cached listing if it was read at `revision`.
fn cached<T>(slot: &KeptListing<T>, revision: Option<Revision>) -> Option<Arc<Vec<T>>> {
    let revision = revision?;
    let guard = slot
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match &*guard {
        Some((r, items)) if *r == revision => Some(items.clone()),
        _ => None,
    }
}

fn remember<T>(slot: &KeptListing<T>, revision: Revision, items: Vec<T>) -> Arc<Vec<T>> {
    let items = Arc::new(items);
    *slot
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((revision, items.clone()));
    items
}

/// One page of a shared listing, cloning only the items of the page.
fn page_of<T: Clone>(
    items: &[T],
    token: &PageToken,
    revision: Revision,
) -> (Vec<T>, Option<PageToken>) {
    let (indices, next) = paginate((0..items.len()).collect::<Vec<_>>(), token, revision);
    (
        indices.into_iter().map(|i| items[i].clone()).collect(),
        next,
    )
}

impl ApiState {
    /// A server over `registry` handing out pages of `token_limit` items (fleet's default is
    /// 100; 0 is read as 1). Starts unavailable: call [`ApiState::set_available`].
    pub fn new(registry: Registry, token_limit: u16) -> ApiState {
        ApiState {
            registry,
            token_limit: token_limit.max(1),
            available: Arc::new(AtomicBool::new(false)),
            metrics: Arc::new(Metrics::default()),
            metrics_sources: Vec::new(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            listings: Arc::default(),
        }
    }

    /// Serve requests (`true`) or answer 503 to all but `/metrics` (`false`).
    pub fn set_available(&self, available: bool) {
        self.available.store(available, Ordering::SeqCst);
    }

    pub fn is_available(&self) -> bool {
        self.available.load(Ordering::SeqCst)
    }

    /// Adds lines of other parts of fleetd (engine, agent) to `GET /metrics`.
    pub fn with_metrics_source(mut self, source: MetricsSource) -> ApiState {
        self.metrics_sources.push(source);
        self
    }

    pub fn with_max_body_bytes(mut self, bytes: usize) -> ApiState {
        self.max_body_bytes = bytes;
        self
    }

    /// Counts a registry call made for a request.
    async fn op<T>(
        &self,
        name: &'static str,
        fut: impl Future<Output = registry::registry::Result<T>>,
    ) -> Result<T, ApiError> {
        let r = fut.await;
        self.metrics.count_registry_op(name, r.is_ok());
        r.map_err(|e| ApiError::registry(name, e))
    }

    /// Reads a listing at the token's revision; a revision compacted away falls back to the
    /// latest one (what fleet always read), logged at debug level.
    async fn read_pinned<T, F, Fut>(
        &self,
        name: &'static str,
        token: &PageToken,
        read: F,
    ) -> Result<AtRevision<T>, ApiError>
    where
        F: Fn(Option<Revision>) -> Fut,
        Fut: Future<Output = registry::registry::Result<AtRevision<T>>>,
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
            other => other,
        };
        self.metrics.count_registry_op(name, result.is_ok());
        result.map_err(|e| ApiError::registry(name, e))
    }
}

/// The router serving fleet's API v1 under `/fleet/v1` and `/v1-alpha`, and `/metrics`.
pub fn router(state: ApiState) -> Router {
    Router::new().fallback(handle).with_state(Arc::new(state))
}

/// An error response: `{"error":{"code":N,"message":"..."}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// A failed registry call: 503 when the store cannot be reached (fleet's wording first),
    /// 500 otherwise; both say which operation failed and why.
    fn registry(op: &str, e: RegistryError) -> ApiError {
        let what = op.replace('_', " ");
        match &e {
            RegistryError::Store(StoreError::Unavailable(_)) => {
                tracing::warn!(operation = op, error = %e, "registry unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("fleet server unable to communicate with etcd: {what}: {e}"),
                )
            }
            _ => {
                tracing::error!(operation = op, error = %e, "registry operation failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("registry failure in {what}: {e}"),
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = types::ErrorBody {
            error: types::ErrorContent {
                code: self.status.as_u16(),
                message: self.message,
            },
        };
        json_response(self.status, &body)
    }
}

fn json_response<T: serde::Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(bytes) => {
            let mut resp = (status, bytes).into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        Err(e) => {
            // Our own plain types always serialize; this is for completeness, not expected.
            tracing::error!(error = %e, "encoding a response failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

fn empty(status: StatusCode) -> Response {
    status.into_response()
}

/// Method names as metric labels, bounded so that odd methods cannot grow the label set.
fn method_label(m: &str) -> &'static str {
    match m {
        "GET" => "GET",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "POST" => "POST",
        "HEAD" => "HEAD",
        _ => "other",
    }
}

async fn handle(State(s): State<Arc<ApiState>>, req: Request) -> Response {
    let method = req.method().as_str().to_string();
    tracing::debug!(method = %method, uri = %req.uri(), "HTTP request");
    let r = match decode_path(req.uri().path()) {
        Some(path) => route(&method, &path),
        None => Route::NotFound,
    };
    let label = r.label();
    let mut resp = if r != Route::Metrics && !s.is_available() {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "fleet server unable to communicate with etcd: this machine is not registered with the registry yet; retry shortly",
        )
        .into_response()
    } else {
        match dispatch(&s, r, req).await {
            Ok(resp) => resp,
            Err(e) => e.into_response(),
        }
    };
    if let Ok(v) = HeaderValue::from_str(&format!("fleetd/{VERSION}")) {
        resp.headers_mut().insert(header::SERVER, v);
    }
    s.metrics
        .count_request(label, method_label(&method), resp.status().as_u16());
    resp
}

async fn dispatch(s: &ApiState, r: Route, req: Request) -> Result<Response, ApiError> {
    let query = req.uri().query().map(str::to_string);
    match r {
        Route::Discovery => {
            let mut resp = DISCOVERY_JSON.into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            Ok(resp)
        }
        Route::DiscoveryNotGet => Err(ApiError::bad_request(
            "only HTTP GET supported against this resource",
        )),
        Route::MethodNotAllowed(msg) => Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, msg)),
        Route::NotFound => Err(ApiError::new(StatusCode::NOT_FOUND, "not found")),
        Route::Metrics => Ok(metrics(s)),
        Route::UnitsList => list_units(s, query.as_deref()).await,
        Route::UnitGet(name) => get_unit(s, &name).await,
        Route::UnitDelete(name) => {
            if s.op("destroy_unit", s.registry.destroy_unit(&name)).await? {
                Ok(empty(StatusCode::NO_CONTENT))
            } else {
                Err(ApiError::new(StatusCode::NOT_FOUND, "unit does not exist"))
            }
        }
        Route::UnitPut(name) => put_unit(s, &name, req).await,
        Route::MachinesList => list_machines(s, query.as_deref()).await,
        Route::MachinesPatch => patch_machines(s, req).await,
        Route::StatesList => list_states(s, query.as_deref()).await,
        Route::StateGet(name) => {
            let states = s
                .op("states_of_unit", s.registry.states_of_unit(&name))
                .await?;
            match states.first() {
                Some(state) => Ok(json_response(StatusCode::OK, &api_state(state))),
                None => Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "unit state does not exist",
                )),
            }
        }
    }
}

fn metrics(s: &ApiState) -> Response {
    let mut out = String::new();
    out.push_str(
        "# HELP fleet_api_available Whether the API serves requests (1) or answers 503 (0).\n",
    );
    out.push_str("# TYPE fleet_api_available gauge\n");
    out.push_str(&format!(
        "fleet_api_available {}\n",
        u8::from(s.is_available())
    ));
    s.metrics.render(&mut out);
    for source in &s.metrics_sources {
        source(&mut out);
    }
    let mut resp = out.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

fn token(s: &ApiState, query: Option<&str>) -> Result<PageToken, ApiError> {
    PageToken::from_query(query, s.token_limit).map_err(|e| ApiError::bad_request(e.to_string()))
}

fn next_token(next: Option<PageToken>) -> String {
    next.map(|t| t.encode()).unwrap_or_default()
}

/// A unit as the API shows it. fleet listed global units with `currentState` `inactive` but
/// left it out on `GET /units/<name>`; `listing` keeps that difference.
fn api_unit(v: registry::UnitView, listing: bool) -> types::Unit {
    let current_state = match v.current {
        Some(state) => state.to_string(),
        None if listing => TargetState::Inactive.to_string(),
        None => String::new(),
    };
    types::Unit {
        current_state,
        desired_state: v.unit.job.desired.to_string(),
        machine_id: v.machine.unwrap_or_default(),
        options: v
            .unit
            .file
            .options
            .iter()
            .map(types::UnitOption::from)
            .collect(),
        name: v.unit.job.name,
        reason: v.reason,
    }
}

fn api_state(s: &registry::UnitState) -> types::UnitState {
    types::UnitState {
        hash: s.hash.to_string(),
        machine_id: s.machine_id.clone(),
        name: s.name.clone(),
        systemd_active_state: s.systemd.active.clone(),
        systemd_load_state: s.systemd.load.clone(),
        systemd_sub_state: s.systemd.sub.clone(),
        reason: s.reason.clone(),
    }
}

async fn list_units(s: &ApiState, query: Option<&str>) -> Result<Response, ApiError> {
    let token = token(s, query)?;
    let (revision, all) = match cached(&s.listings.units, token.revision) {
        Some(all) => (token.revision.unwrap_or_default(), all),
        None => {
            let views = s
                .read_pinned("list_units", &token, |at| s.registry.unit_views(at))
                .await?;
            let mut units: Vec<types::Unit> =
                views.items.into_iter().map(|v| api_unit(v, true)).collect();
            units.sort_by(|a, b| a.name.cmp(&b.name));
            (
                views.revision,
                remember(&s.listings.units, views.revision, units),
            )
        }
    };
    let (units, next) = page_of(&all, &token, revision);
    Ok(json_response(
        StatusCode::OK,
        &types::UnitPage {
            units,
            next_page_token: next_token(next),
        },
    ))
}

async fn get_unit(s: &ApiState, name: &str) -> Result<Response, ApiError> {
    match s.op("get_unit", s.registry.unit_view(name)).await? {
        Some(v) => Ok(json_response(StatusCode::OK, &api_unit(v, false))),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, "unit does not exist")),
    }
}

async fn list_machines(s: &ApiState, query: Option<&str>) -> Result<Response, ApiError> {
    let token = token(s, query)?;
    let read = s
        .read_pinned("list_machines", &token, |at| s.registry.machines(at))
        .await?;
    let mut machines: Vec<types::Machine> = read
        .items
        .into_iter()
        .map(|m| types::Machine {
            id: m.id,
            primary_ip: m.public_ip,
            // fleet's mergeMetadata: an empty dynamic value (a removed key) hides the key.
            metadata: m
                .metadata
                .into_iter()
                .filter(|(_, v)| !v.is_empty())
                .collect(),
        })
        .collect();
    machines.sort_by(|a, b| a.id.cmp(&b.id));
    let (machines, next) = paginate(machines, &token, read.revision);
    Ok(json_response(
        StatusCode::OK,
        &types::MachinePage {
            machines,
            next_page_token: next_token(next),
        },
    ))
}

async fn list_states(s: &ApiState, query: Option<&str>) -> Result<Response, ApiError> {
    let token = token(s, query)?;
    // Go's `Query().Get`: the first value of each filter; empty means no filter.
    let first = |key: &str| {
        form_urlencoded::parse(query.unwrap_or("").as_bytes())
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
            .filter(|v| !v.is_empty())
    };
    let (machine, unit) = (first("machineID"), first("unitName"));
    let (revision, all) = match cached(&s.listings.states, token.revision) {
        Some(all) => (token.revision.unwrap_or_default(), all),
        None => {
            let read = s
                .read_pinned("list_unit_states", &token, |at| s.registry.unit_states(at))
                .await?;
            let mut states: Vec<types::UnitState> = read.items.iter().map(api_state).collect();
            states.sort_by(|a, b| (&a.name, &a.machine_id).cmp(&(&b.name, &b.machine_id)));
            (
                read.revision,
                remember(&s.listings.states, read.revision, states),
            )
        }
    };
    let (states, next) = if machine.is_none() && unit.is_none() {
        page_of(&all, &token, revision)
    } else {
        let filtered: Vec<types::UnitState> = all
            .iter()
            .filter(|st| machine.as_deref().is_none_or(|m| st.machine_id == m))
            .filter(|st| unit.as_deref().is_none_or(|u| st.name == u))
            .cloned()
            .collect();
        paginate(filtered, &token, revision)
    };
    Ok(json_response(
        StatusCode::OK,
        &types::UnitStatePage {
            states,
            next_page_token: next_token(next),
        },
    ))
}

/// fleet's content-type rule: exactly one `Content-Type` whose media type is
/// `application/json` (parameters allowed).
fn check_content_type(req: &Request) -> Result<(), ApiError> {
    let values: Vec<&HeaderValue> = req.headers().get_all(header::CONTENT_TYPE).iter().collect();
    let [value] = values.as_slice() else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "expected 1 Content-Type, got {}; send Content-Type: application/json",
                values.len()
            ),
        ));
    };
    let media = value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if media != "application/json" {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "only acceptable Content-Type is application/json",
        ));
    }
    Ok(())
}

/// Reads a request body of at most `limit` bytes; more is refused with 413.
async fn read_body(req: Request, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than {limit} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(e) => Err(ApiError::bad_request(format!("unable to read body: {e}"))),
    }
}

/// fleet's `ValidateOptions` (the unit crate's [`unit::validate_unit`]): the options survive
/// normalization and their `[X-Fleet]` requirements can all hold.
pub fn validate_options(name: &str, file: &unit::UnitFile) -> Result<(), String> {
    unit::validate_unit(file, name)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

async fn put_unit(s: &ApiState, item: &str, req: Request) -> Result<Response, ApiError> {
    check_content_type(&req)?;
    let body = read_body(req, s.max_body_bytes).await?;
    let mut su: types::Unit = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("unable to decode body: {e}")))?;
    if su.name.is_empty() {
        su.name = item.to_string();
    }
    if su.name != item {
        return Err(ApiError::bad_request(format!(
            "name in URL {item:?} differs from unit name in request body {:?}",
            su.name
        )));
    }
    let name = unit::UnitName::parse(&su.name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let desired = su.desired().map_err(|_| {
        ApiError::bad_request(format!(
            "invalid desiredState {:?}: want one of inactive, loaded, launched",
            su.desired_state
        ))
    })?;
    let activate_template =
        name.is_template() && desired.is_some_and(|d| d != TargetState::Inactive);

    let file = su.file();
    // The common case, a new unit, costs one transaction; anything else reads what exists.
    // Options are validated first, as a create would: a stored unit passed the same check.
    if !su.options.is_empty() {
        validate_options(&su.name, &file).map_err(ApiError::bad_request)?;
        if activate_template {
            return Err(ApiError::bad_request("cannot activate template"));
        }
        let created = s
            .op(
                "create_unit",
                s.registry
                    .create_unit_if_absent(&su.name, &file, desired.unwrap_or_default()),
            )
            .await?;
        if created {
            return Ok(empty(StatusCode::CREATED));
        }
    }
    let existing = s.op("get_unit", s.registry.unit(&su.name)).await?;
    let create = match &existing {
        None if su.options.is_empty() => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "unit does not exist and options field empty",
            ));
        }
        None => true,
        // Options that hash differently replace the unit (fleet's replace path).
        Some(unit) => !su.options.is_empty() && unit.job.hash != file.hash(),
    };
    if create {
        validate_options(&su.name, &file).map_err(ApiError::bad_request)?;
        if activate_template {
            return Err(ApiError::bad_request("cannot activate template"));
        }
        let desired = desired.unwrap_or_default();
        s.op(
            "create_unit",
            s.registry.create_unit(&su.name, &file, desired),
        )
        .await?;
        return Ok(empty(StatusCode::CREATED));
    }
    let Some(desired) = desired else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "must provide DesiredState to update existing unit",
        ));
    };
    if activate_template {
        return Err(ApiError::bad_request("cannot activate template"));
    }
    if s.op(
        "set_target_state",
        s.registry.set_target_state(&su.name, desired),
    )
    .await?
    {
        Ok(empty(StatusCode::NO_CONTENT))
    } else {
        Err(ApiError::new(StatusCode::NOT_FOUND, "unit does not exist"))
    }
}

/// Splits `/<machineID>/metadata/<key>`; the key is `[A-Za-z0-9_.-]+` as in fleet.
fn metadata_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix('/')?;
    let (machine, rest) = rest.split_once('/')?;
    let key = rest.strip_prefix("metadata/")?;
    let key_ok = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    (!machine.is_empty() && key_ok).then_some((machine, key))
}

/// Validates every operation before any is applied.
pub fn metadata_changes(ops: &[types::MachineMetadataOp]) -> Result<Vec<MetadataChange>, String> {
    if ops.len() > registry::MAX_TXN_OPS {
        return Err(format!(
            "too many operations: {} (at most {} per request)",
            ops.len(),
            registry::MAX_TXN_OPS
        ));
    }
    ops.iter()
        .map(|op| {
            if !matches!(op.op.as_str(), "add" | "remove" | "replace") {
                return Err(format!(
                    "invalid op {:?}: expect add, remove, or replace",
                    op.op
                ));
            }
            let Some((machine, key)) = metadata_path(&op.path) else {
                return Err(format!(
                    "machine metadata path invalid: {:?} (want /<machineID>/metadata/<key>)",
                    op.path
                ));
            };
            let value = match op.op.as_str() {
                // fleet removes by setting "", which hides configured metadata too.
                "remove" => String::new(),
                _ => match op.value.as_ref().map(types::MetadataValue::as_str) {
                    Some(v) if !v.is_empty() => v.to_string(),
                    _ => {
                        return Err(format!(
                            "invalid value for {:?}: add and replace require a value",
                            op.path
                        ))
                    }
                },
            };
            Ok(MetadataChange {
                machine: machine.to_string(),
                key: key.to_string(),
                value: Some(value),
            })
        })
        .collect()
}

async fn patch_machines(s: &ApiState, req: Request) -> Result<Response, ApiError> {
    let body = read_body(req, s.max_body_bytes).await?;
    let ops: Vec<types::MachineMetadataOp> = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("unable to decode body: {e}")))?;
    let changes = metadata_changes(&ops).map_err(ApiError::bad_request)?;
    if !changes.is_empty() {
        s.op("set_metadata", s.registry.set_metadata(&changes))
            .await?;
    }
    let mut resp = empty(StatusCode::NO_CONTENT);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_failures_map_to_503_or_500_with_the_cause() {
        let e = ApiError::registry(
            "list_units",
            RegistryError::Store(StoreError::Unavailable(
                "no etcd at http://127.0.0.1:2379".into(),
            )),
        );
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            e.message
                .starts_with("fleet server unable to communicate with etcd: list units: "),
            "{}",
            e.message
        );
        assert!(
            e.message.contains("no etcd at http://127.0.0.1:2379"),
            "{}",
            e.message
        );
        let e = ApiError::registry(
            "get_unit",
            RegistryError::Corrupt {
                key: "/k".into(),
                message: "bad json".into(),
            },
        );
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            e.message.contains("get unit") && e.message.contains("bad json"),
            "{}",
            e.message
        );
    }

    #[test]
    fn metadata_paths() {
        assert_eq!(metadata_path("/m1/metadata/region"), Some(("m1", "region")));
        assert_eq!(
            metadata_path("/m1/metadata/a.b-c_d"),
            Some(("m1", "a.b-c_d"))
        );
        for bad in [
            "",
            "/",
            "m1/metadata/k",
            "//metadata/k",
            "/m1/metadata/",
            "/m1/metadata/k/x",
            "/m1/meta/k",
            "/m1/metadata/k!",
        ] {
            assert_eq!(metadata_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn metadata_ops_are_all_validated_first() {
        let ok = types::MachineMetadataOp::set("m", "k", "v");
        let bad = types::MachineMetadataOp {
            op: "move".into(),
            ..ok.clone()
        };
        assert!(metadata_changes(&[ok.clone(), bad])
            .unwrap_err()
            .contains("move"));
        let empty = types::MachineMetadataOp {
            value: Some(types::MetadataValue::Plain(String::new())),
            ..ok.clone()
        };
        assert!(metadata_changes(&[empty]).is_err());
        let missing = types::MachineMetadataOp {
            op: "replace".into(),
            value: None,
            ..ok.clone()
        };
        assert!(metadata_changes(&[missing]).is_err());
        let changes = metadata_changes(&[ok, types::MachineMetadataOp::remove("m", "x")]).unwrap();
        assert_eq!(changes[0].value.as_deref(), Some("v"));
        assert_eq!(changes[1].value.as_deref(), Some(""));
    }

    #[test]
    fn discovery_document_is_json_with_every_method() {
        let doc: serde_json::Value = serde_json::from_str(DISCOVERY_JSON).unwrap();
        let ids: Vec<&str> = ["Machines", "Units", "UnitState"]
            .iter()
            .flat_map(|r| doc["resources"][r]["methods"].as_object().unwrap().values())
            .filter_map(|m| m["id"].as_str())
            .collect();
        for want in [
            "fleet.Machine.List",
            "fleet.Machine.Patch",
            "fleet.Unit.List",
            "fleet.Unit.Get",
            "fleet.Unit.Delete",
            "fleet.Unit.Set",
            "fleet.UnitState.List",
            "fleet.UnitState.Get",
        ] {
            assert!(ids.contains(&want), "{want} missing from {ids:?}");
        }
    }
}
