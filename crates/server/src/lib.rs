//! fleet's HTTP API v1 server (axum) over a [`registry::Registry`], and the listeners it serves on:
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
//!
//! Layout: [`routes`] maps a request to a route, which this module dispatches to the handlers
//! of its resource, one module each (`units`, `unit_states`, `machines`); `error` and `body`
//! are what they share (error answers, request bodies and their size limit), [`ApiState`] what
//! they read, and [`token`] the page tokens of the listings. [`access`] decides who may do
//! what (tokens and roles); [`tls`] serves TCP listeners over TLS.

pub mod access;
mod body;
mod drain;
mod error;
pub mod events;
mod leases;
pub mod listen;
mod machines;
pub mod metrics;
pub mod output;
mod plan;
mod rollouts;
pub mod routes;
mod state;
pub mod tls;
pub mod token;
pub mod ui;
mod unit_states;
mod units;

pub use body::DEFAULT_MAX_BODY_BYTES;
pub use error::ApiError;
pub use machines::{decode_patch, metadata_changes};
pub use state::ApiState;
pub use units::{decode_put, validate_options, DecodedPut};

use crate::routes::{decode_path, route, Route};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use std::sync::Arc;

/// The version fleetd reports in its `Server` header.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The discovery document served at `GET {prefix}/discovery`.
pub const DISCOVERY_JSON: &str = include_str!("discovery.json");

/// The router serving fleet's API v1 under `/fleet/v1` and `/v1-alpha`, and `/metrics`.
pub fn router(state: ApiState) -> Router {
    Router::new().fallback(handle).with_state(Arc::new(state))
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
    let began = std::time::Instant::now();
    let method = req.method().as_str().to_string();
    tracing::debug!(method = %method, uri = %req.uri(), "HTTP request");
    let path = decode_path(req.uri().path());
    let r = match &path {
        Some(path) => route(&method, path),
        None => Route::InvalidPath,
    };
    let label = r.label();
    // A router served by other means than `listen::serve` (tests, embedding) carries no peer:
    // it is trusted as a unix socket would be, as it was before the API had access control.
    let peer = req
        .extensions()
        .get::<access::Peer>()
        .copied()
        .unwrap_or(access::Peer::Local);
    let what = format!("{method} {}", req.uri().path());
    let ui_query = match r {
        Route::Ui(_) => req.uri().query(),
        _ => None,
    };
    let credentials = ui::credentials(req.headers(), ui_query);
    let allowed = s.access.check(peer, &r, &what, credentials.as_deref());
    let mut resp = if let Err(e) = allowed {
        tracing::info!(request = %what, status = e.status.as_u16(), "API request refused: {}", e.message);
        let unauthorized = e.status == StatusCode::UNAUTHORIZED;
        let mut resp = e.into_response();
        if unauthorized {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"fleet\""),
            );
        }
        resp
    } else if r != Route::Metrics && !s.is_available() {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "fleet server unable to communicate with etcd: this machine is not registered with the registry yet; retry shortly",
        )
        .into_response()
    } else {
        match dispatch(&s, r, path.as_deref().unwrap_or_default(), req).await {
            Ok(resp) => resp,
            Err(e) => e.into_response(),
        }
    };
    if let Ok(v) = HeaderValue::from_str(&format!("fleetd/{VERSION}")) {
        resp.headers_mut().insert(header::SERVER, v);
    }
    s.metrics.count_request(
        label,
        method_label(&method),
        resp.status().as_u16(),
        began.elapsed(),
    );
    resp
}

async fn dispatch(s: &ApiState, r: Route, path: &str, req: Request) -> Result<Response, ApiError> {
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
        Route::NotFound => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            routes::not_found_message(path),
        )),
        Route::InvalidPath => Err(ApiError::bad_request(
            "the URL path is not valid UTF-8 once percent-decoded; unit names are ASCII",
        )),
        Route::Metrics => Ok(metrics(s)),
        Route::UnitsList => units::list(s, query.as_deref()).await,
        Route::UnitGet(name) => units::get(s, &name).await,
        Route::UnitDelete(name) => units::delete(s, &name).await,
        Route::UnitPut(name) => units::put(s, &name, req).await,
        Route::MachinesList => machines::list(s, query.as_deref()).await,
        Route::MachinesPatch => machines::patch(s, req).await,
        Route::StatesList => unit_states::list(s, query.as_deref()).await,
        Route::StateGet(name) => unit_states::get(s, &name).await,
        Route::PlanGet => plan::get(s, query.as_deref()).await,
        Route::PlanPost => plan::post(s, req).await,
        Route::Why(name) => plan::why(s, &name).await,
        Route::Output(name) => output::get(s, &name, query.as_deref()).await,
        Route::DrainList => drain::list(s).await,
        Route::DrainGet(id) => drain::get(s, &id).await,
        Route::DrainPut(id) => drain::put(s, &id).await,
        Route::DrainDelete(id) => drain::delete(s, &id).await,
        Route::RolloutGet(unit) => rollouts::get(s, &unit).await,
        Route::RolloutPut(unit) => rollouts::put(s, &unit, req).await,
        Route::RolloutDelete(unit) => rollouts::delete(s, &unit).await,
        Route::Events => events::get(s, query.as_deref()).await,
        Route::Leases => leases::list(s).await,
        Route::Ui(asset) => Ok(ui::get(&asset, query.as_deref())),
    }
}

fn metrics(s: &ApiState) -> Response {
    let mut resp = metrics::render(&s.exposition).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(metrics::CONTENT_TYPE),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

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
