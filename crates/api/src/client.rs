//! A typed client of fleet's API v1, over a unix socket, TCP, or any byte stream (an SSH
//! tunnel plugs in as a [`Transport`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), api::client::ClientError> {
//! use api::client::{Client, ClientOptions};
//! let client = Client::new("unix:///var/run/fleet.sock", ClientOptions::default())?;
//! for unit in client.units().await? {
//!     println!("{} {} {}", unit.name, unit.desired_state, unit.machine_id);
//! }
//! client.set_unit_target_state("hello.service", api::TargetState::Launched).await?;
//! # Ok(()) }
//! ```

mod tls;
mod transport;

pub use tls::{TlsConfig, TlsFiles};
pub use transport::{BoxStream, ConnectFuture, Stream, TcpTransport, Transport, UnixTransport};

use crate::types::{
    self, DrainedMachine, Machine, MachineMetadataOp, PlanAnswer, PlanRequest, TargetState, Unit,
    UnitState,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::http::{header, Method, Request, StatusCode};
use hyper_util::rt::TokioExecutor;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use transport::Connector;

#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// The longest one HTTP request may take, connection included (fleetctl's
    /// `--request-timeout`).
    pub request_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            request_timeout: Duration::from_secs(3),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
    #[error("cannot reach fleetd at {endpoint}: {message} (is fleetd running? check --endpoint)")]
    Connect { endpoint: String, message: String },
    #[error("fleetd at {endpoint} did not answer within {timeout:?} (is fleetd running? check --endpoint, or raise --request-timeout)")]
    Timeout { endpoint: String, timeout: Duration },
    /// fleetd answered with an error: its status and message.
    #[error("fleet API error {status}: {message}")]
    Api { status: u16, message: String },
    #[error("unexpected answer from fleetd at {endpoint}: {message}")]
    Protocol { endpoint: String, message: String },
    /// TLS failed: the message names the cause (expired, unknown CA, wrong host name, client
    /// certificate required).
    #[error("TLS with fleetd at {endpoint} failed: {message}")]
    Tls { endpoint: String, message: String },
    /// The credentials cannot be used as given (a TLS file, a token over plain HTTP).
    #[error("{0}")]
    Credentials(String),
}

/// How the client proves who it is and checks whom it talks to, beyond [`ClientOptions`].
#[derive(Clone, Debug, Default)]
pub struct Security {
    /// For `https://` endpoints (required for them).
    pub tls: Option<TlsConfig>,
    /// Sent as `Authorization: Bearer TOKEN` on TCP endpoints (fleetd's `api_tokens_file`).
    pub token: Option<String>,
}

impl ClientError {
    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Filters of [`Client::unit_states`]: exact matches, `None` for all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateFilter {
    pub machine_id: Option<String>,
    pub unit_name: Option<String>,
}

/// Characters left as they are in a unit name used as a path segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'@')
    .remove(b':');

/// The API prefix the client uses.
const PREFIX: &str = "/fleet/v1";

/// Where fleetd listens, as `--endpoint` names one of its endpoints. A transport other than the
/// direct ones (an SSH tunnel) reaches the same place from elsewhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `unix:///path` or `file:///path`.
    Unix(PathBuf),
    /// `http://host[:port][/prefix]`: port 80 when none is given; a path is a prefix, as
    /// behind a reverse proxy (`http://host/fleet-proxy` asks for `/fleet-proxy/fleet/v1/units`).
    /// `https://` sets `tls` (port 443 by default).
    Tcp {
        host: String,
        port: u16,
        prefix: String,
        tls: bool,
    },
}

impl Endpoint {
    pub fn parse(endpoint: &str) -> Result<Endpoint, ClientError> {
        let invalid = |reason: &str| ClientError::InvalidEndpoint {
            endpoint: endpoint.to_string(),
            reason: reason.to_string(),
        };
        if let Some(path) = endpoint
            .strip_prefix("unix://")
            .or_else(|| endpoint.strip_prefix("file://"))
        {
            if path.is_empty() {
                return Err(invalid("no socket path (want unix:///var/run/fleet.sock)"));
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        let (tls, rest) = match (
            endpoint.strip_prefix("http://"),
            endpoint.strip_prefix("https://"),
        ) {
            (Some(rest), _) => (false, Some(rest)),
            (_, Some(rest)) => (true, Some(rest)),
            _ => (false, None),
        };
        if let Some(rest) = rest {
            let (authority, prefix) = match rest.find('/') {
                Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
                None => (rest, ""),
            };
            let parsed = match authority.parse::<hyper::http::uri::Authority>() {
                Ok(a) if !a.host().is_empty() => a,
                _ => return Err(invalid("want http[s]://HOST:PORT[/PATH]")),
            };
            if !prefix.is_empty()
                && (prefix.contains(['?', '#']) || prefix.parse::<hyper::http::Uri>().is_err())
            {
                return Err(invalid(
                    "the path after HOST:PORT must be a plain path prefix",
                ));
            }
            let host = parsed.host().trim_start_matches('[').trim_end_matches(']');
            return Ok(Endpoint::Tcp {
                host: host.to_string(),
                port: parsed.port_u16().unwrap_or(if tls { 443 } else { 80 }),
                prefix: prefix.to_string(),
                tls,
            });
        }
        Err(invalid(
            "want unix:///PATH, http://HOST:PORT or https://HOST:PORT",
        ))
    }

    /// Several endpoints, comma-separated (fleet's `--endpoint`), each with the text that named
    /// it, in order.
    pub fn parse_list(endpoints: &str) -> Result<Vec<(String, Endpoint)>, ClientError> {
        let list = endpoints
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(|e| Endpoint::parse(e).map(|parsed| (e.to_string(), parsed)))
            .collect::<Result<Vec<_>, _>>()?;
        if list.is_empty() {
            return Err(ClientError::InvalidEndpoint {
                endpoint: endpoints.to_string(),
                reason:
                    "no endpoint given (want unix:///PATH, http://HOST:PORT or https://HOST:PORT)"
                        .into(),
            });
        }
        Ok(list)
    }

    /// The `Host` of requests: fleet showed unix-socket requests as `domain-sock`.
    pub fn authority(&self) -> String {
        match self {
            Endpoint::Unix(_) => "domain-sock".into(),
            Endpoint::Tcp { host, port, .. } if host.contains(':') => format!("[{host}]:{port}"),
            Endpoint::Tcp { host, port, .. } => format!("{host}:{port}"),
        }
    }

    /// The path prefix requests carry before `/fleet/v1`.
    pub fn prefix(&self) -> &str {
        match self {
            Endpoint::Unix(_) => "",
            Endpoint::Tcp { prefix, .. } => prefix,
        }
    }

    /// Whether requests to the endpoint go over TLS (`https://`).
    pub fn is_tls(&self) -> bool {
        matches!(self, Endpoint::Tcp { tls: true, .. })
    }

    /// Whether the endpoint is on this machine (a unix socket, or TCP to a loopback address
    /// or `localhost`): a token sent there in the clear does not cross the network.
    pub fn is_local(&self) -> bool {
        match self {
            Endpoint::Unix(_) => true,
            Endpoint::Tcp { host, .. } => {
                host == "localhost"
                    || host
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
        }
    }

    /// `transport` (which reaches this endpoint's host and port) with TLS added for an
    /// `https://` endpoint; the certificate is checked against the endpoint's host name.
    pub fn secure(
        &self,
        transport: Arc<dyn Transport>,
        tls: Option<&TlsConfig>,
    ) -> Result<Arc<dyn Transport>, ClientError> {
        match self {
            Endpoint::Tcp {
                tls: true, host, ..
            } => {
                let Some(config) = tls else {
                    return Err(ClientError::Credentials(format!(
                        "{}: https:// endpoints need --ca-file (or FLEETCTL_CA_FILE): the CA that signed fleetd's api_tls_cert",
                        self.authority()
                    )));
                };
                Ok(Arc::new(tls::TlsTransport {
                    inner: transport,
                    tls: config.clone(),
                    host: host.clone(),
                }))
            }
            _ => Ok(transport),
        }
    }

    /// The plain transport that reaches the endpoint's address from this machine (no TLS: see
    /// [`Endpoint::secure`]).
    pub fn direct(&self) -> Arc<dyn Transport> {
        match self {
            Endpoint::Unix(path) => Arc::new(UnixTransport(path.clone())),
            Endpoint::Tcp { .. } => Arc::new(TcpTransport(self.authority())),
        }
    }
}

/// One endpoint and the way to it, for [`Client::with_routes`].
pub struct Route {
    pub transport: Arc<dyn Transport>,
    pub endpoint: Endpoint,
    /// Names the endpoint (and the way) in error messages.
    pub name: String,
    /// The CA file TLS checks the server against, for error messages (`None` without TLS).
    pub ca_file: Option<PathBuf>,
}

/// A client of fleetd. Cheap to clone.
///
/// It may know several endpoints of the same cluster (fleet's comma-separated `--endpoint`):
/// a request goes to the one that answered last, and to the others in order when that one
/// cannot be reached.
#[derive(Clone)]
pub struct Client {
    targets: Arc<[Target]>,
    /// Index in `targets` of the endpoint that answered last.
    current: Arc<AtomicUsize>,
    timeout: Duration,
    /// `Authorization` header value for TCP endpoints.
    bearer: Option<header::HeaderValue>,
}

/// One endpoint.
struct Target {
    http: hyper_util::client::legacy::Client<Connector, Full<Bytes>>,
    /// `http://authority` and the endpoint's path prefix, for request URIs.
    base: String,
    /// What the user named, for error messages.
    endpoint: String,
    /// The host TLS checked, and the CA file it checked against, for error messages.
    tls_host: String,
    ca_file: Option<PathBuf>,
    /// Whether the bearer token goes to this endpoint (TCP: fleetd trusts its unix sockets
    /// by file permissions and needs none).
    send_token: bool,
}

impl Target {
    fn new(route: Route) -> Self {
        let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .build(Connector(route.transport));
        Target {
            http,
            base: format!(
                "http://{}{}",
                route.endpoint.authority(),
                route.endpoint.prefix()
            ),
            endpoint: route.name,
            tls_host: match &route.endpoint {
                Endpoint::Tcp { host, .. } => host.clone(),
                Endpoint::Unix(_) => String::new(),
            },
            ca_file: route.ca_file,
            send_token: matches!(route.endpoint, Endpoint::Tcp { .. }),
        }
    }
}

impl Client {
    /// A client of `endpoint`: `unix:///path` (or `file:///path`) or `http://host:port`, with
    /// an optional path prefix (`http://host:port/fleet-proxy`); several, comma-separated, are
    /// tried in order.
    pub fn new(endpoint: &str, opts: ClientOptions) -> Result<Client, ClientError> {
        Client::with_security(endpoint, opts, Security::default())
    }

    /// Like [`Client::new`], with TLS (required by `https://` endpoints) and a bearer token.
    /// A token is refused for a plain `http://` endpoint off this machine, where it would cross
    /// the network in the clear.
    pub fn with_security(
        endpoint: &str,
        opts: ClientOptions,
        security: Security,
    ) -> Result<Client, ClientError> {
        let mut routes = Vec::new();
        for (name, endpoint) in Endpoint::parse_list(endpoint)? {
            if security.token.is_some() && !endpoint.is_tls() && !endpoint.is_local() {
                return Err(ClientError::Credentials(format!(
                    "{name}: a token is only sent over https:// or to this machine (loopback); use https:// or an SSH tunnel (--tunnel)"
                )));
            }
            routes.push(Route {
                transport: endpoint.secure(endpoint.direct(), security.tls.as_ref())?,
                ca_file: security.tls.as_ref().map(|t| t.ca_file.clone()),
                endpoint,
                name,
            });
        }
        Client::with_routes(routes, opts).with_token(security.token.as_deref())
    }

    /// Sends `token` as `Authorization: Bearer TOKEN` to TCP endpoints.
    pub fn with_token(mut self, token: Option<&str>) -> Result<Client, ClientError> {
        self.bearer = match token {
            None => None,
            Some(t) => Some(
                header::HeaderValue::from_str(&format!("Bearer {}", t.trim()))
                    .map_err(|_| {
                        ClientError::Credentials(
                            "the token holds characters an HTTP header cannot carry; copy it again from `fleetctl token new`".into(),
                        )
                    })?,
            ),
        };
        if let Some(b) = &mut self.bearer {
            b.set_sensitive(true);
        }
        Ok(self)
    }

    /// A client of endpoints reached through transports of the caller's (an SSH tunnel), tried
    /// in order as with [`Client::new`].
    pub fn with_routes(routes: Vec<Route>, opts: ClientOptions) -> Client {
        Client {
            targets: routes.into_iter().map(Target::new).collect(),
            current: Arc::new(AtomicUsize::new(0)),
            timeout: opts.request_timeout,
            bearer: None,
        }
    }

    /// The endpoint requests go to now (the one that answered last).
    pub fn endpoint(&self) -> &str {
        &self.target().endpoint
    }

    fn target(&self) -> &Target {
        &self.targets[self.current.load(Ordering::Relaxed) % self.targets.len()]
    }

    /// One HTTP exchange within the request timeout: status and body. With several endpoints,
    /// one that cannot be reached is passed over for the next; a timeout is not, since the
    /// request may have been carried out.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let body = body.map(Bytes::from);
        let first = self.current.load(Ordering::Relaxed);
        let mut unreachable = Vec::new();
        for k in 0..self.targets.len() {
            let i = (first + k) % self.targets.len();
            let target = &self.targets[i];
            match self
                .call_one(target, method.clone(), path, body.clone())
                .await
            {
                Err(ClientError::Connect { message, .. }) if self.targets.len() > 1 => {
                    unreachable.push(format!("{}: {message}", target.endpoint));
                }
                Ok(answer) => {
                    self.current.store(i, Ordering::Relaxed);
                    return Ok(answer);
                }
                Err(e) => return Err(e),
            }
        }
        let all: Vec<&str> = self.targets.iter().map(|t| t.endpoint.as_str()).collect();
        Err(ClientError::Connect {
            endpoint: all.join(","),
            message: unreachable.join("; "),
        })
    }

    async fn call_one(
        &self,
        target: &Target,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let endpoint = || target.endpoint.clone();
        let uri = format!("{}{PREFIX}{path}", target.base);
        let mut builder = Request::builder().method(method).uri(&uri);
        if body.is_some() {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
        }
        if let (Some(bearer), true) = (&self.bearer, target.send_token) {
            builder = builder.header(header::AUTHORIZATION, bearer.clone());
        }
        let failed = |e: &(dyn std::error::Error + 'static), what: &str| match tls::tls_cause(
            e,
            &target.tls_host,
            target.ca_file.as_deref(),
        ) {
            Some(message) => ClientError::Tls {
                endpoint: endpoint(),
                message,
            },
            None => ClientError::Connect {
                endpoint: endpoint(),
                message: format!("{what}{}", chain(e)),
            },
        };
        let req = builder
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| ClientError::Protocol {
                endpoint: endpoint(),
                message: format!("cannot build request for {uri}: {e}"),
            })?;
        let exchange = async {
            let resp = target.http.request(req).await.map_err(|e| failed(&e, ""))?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| failed(&e, "reading the answer: "))?
                .to_bytes();
            Ok((status, bytes))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout {
                endpoint: endpoint(),
                timeout: self.timeout,
            }),
        }
    }

    /// Like [`Client::call`], turning every status outside `ok` into [`ClientError::Api`].
    async fn expect(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        ok: &[StatusCode],
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let (status, bytes) = self.call(method, path, body).await?;
        if ok.contains(&status) {
            return Ok((status, bytes));
        }
        Err(api_error(status, &bytes))
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, ClientError> {
        serde_json::from_slice(bytes).map_err(|e| ClientError::Protocol {
            endpoint: self.endpoint().to_string(),
            message: format!("cannot decode the answer: {e}"),
        })
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let (_, bytes) = self
            .expect(Method::GET, path, None, &[StatusCode::OK])
            .await?;
        self.decode(&bytes)
    }

    async fn get_optional<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<Option<T>, ClientError> {
        let (status, bytes) = self
            .expect(
                Method::GET,
                path,
                None,
                &[StatusCode::OK, StatusCode::NOT_FOUND],
            )
            .await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        self.decode(&bytes).map(Some)
    }

    /// Every item of a paged listing: follows `nextPageToken` to the end. The next page is
    /// asked for while the current one is decoded (its token is read first by a scan that
    /// keeps nothing else): a listing of thousands of pages then costs about one round trip
    /// or one decode per page, whichever is longer, instead of both.
    async fn all_pages<P, T>(
        &self,
        path: &str,
        query: &str,
        split: impl Fn(P) -> (Vec<T>, String),
    ) -> Result<Vec<T>, ClientError>
    where
        P: serde::de::DeserializeOwned + Send + 'static,
    {
        let url = |token: &str| {
            let mut params: Vec<String> = Vec::new();
            if !query.is_empty() {
                params.push(query.to_string());
            }
            if !token.is_empty() {
                params.push(format!(
                    "nextPageToken={}",
                    form_urlencoded::byte_serialize(token.as_bytes()).collect::<String>()
                ));
            }
            if params.is_empty() {
                path.to_string()
            } else {
                format!("{path}?{}", params.join("&"))
            }
        };
        let mut out = Vec::new();
        let mut token = String::new();
        let mut body = self.get_bytes(&url(&token)).await?;
        loop {
            let next = self.decode::<NextToken>(&body)?.next_page_token;
            let more = !next.is_empty() && next != token;
            let decode = tokio::task::spawn_blocking(move || serde_json::from_slice::<P>(&body));
            let (page, fetched) = if more {
                let next_url = url(&next);
                let (page, fetched) = tokio::join!(decode, self.get_bytes(&next_url));
                (page, Some(fetched))
            } else {
                (decode.await, None)
            };
            let page = page
                .map_err(|e| ClientError::Protocol {
                    endpoint: self.endpoint().to_string(),
                    message: format!("decoding the answer stopped: {e}"),
                })?
                .map_err(|e| ClientError::Protocol {
                    endpoint: self.endpoint().to_string(),
                    message: format!("cannot decode the answer: {e}"),
                })?;
            out.extend(split(page).0);
            match fetched {
                None => return Ok(out),
                Some(fetched) => {
                    body = fetched?;
                    token = next;
                }
            }
        }
    }

    async fn get_bytes(&self, path: &str) -> Result<Bytes, ClientError> {
        let (_, bytes) = self
            .expect(Method::GET, path, None, &[StatusCode::OK])
            .await?;
        Ok(bytes)
    }

    /// Every unit, sorted by name.
    pub async fn units(&self) -> Result<Vec<Unit>, ClientError> {
        self.all_pages("/units", "", |p: types::UnitPage| {
            (p.units, p.next_page_token)
        })
        .await
    }

    /// One unit, `None` if it does not exist.
    pub async fn unit(&self, name: &str) -> Result<Option<Unit>, ClientError> {
        self.get_optional(&format!("/units/{}", segment(name)))
            .await
    }

    /// Creates a unit, replaces it (different options), or changes its desired state.
    pub async fn create_or_update_unit(&self, unit: &Unit) -> Result<(), ClientError> {
        let body = serde_json::to_vec(unit).map_err(|e| ClientError::Protocol {
            endpoint: self.endpoint().to_string(),
            message: e.to_string(),
        })?;
        self.expect(
            Method::PUT,
            &format!("/units/{}", segment(&unit.name)),
            Some(body),
            &[StatusCode::CREATED, StatusCode::NO_CONTENT],
        )
        .await
        .map(|_| ())
    }

    /// Sets an existing unit's desired state.
    pub async fn set_unit_target_state(
        &self,
        name: &str,
        state: TargetState,
    ) -> Result<(), ClientError> {
        let unit = Unit {
            name: name.to_string(),
            desired_state: state.to_string(),
            ..Unit::default()
        };
        self.create_or_update_unit(&unit).await
    }

    /// Destroys a unit; `false` if it did not exist.
    pub async fn destroy_unit(&self, name: &str) -> Result<bool, ClientError> {
        let path = format!("/units/{}", segment(name));
        let (status, _) = self
            .expect(
                Method::DELETE,
                &path,
                None,
                &[StatusCode::NO_CONTENT, StatusCode::NOT_FOUND],
            )
            .await?;
        Ok(status == StatusCode::NO_CONTENT)
    }

    /// Every machine, sorted by id.
    pub async fn machines(&self) -> Result<Vec<Machine>, ClientError> {
        self.all_pages("/machines", "", |p: types::MachinePage| {
            (p.machines, p.next_page_token)
        })
        .await
    }

    /// Changes dynamic machine metadata; all operations apply together or none does.
    pub async fn patch_machines(&self, ops: &[MachineMetadataOp]) -> Result<(), ClientError> {
        let body = serde_json::to_vec(ops).map_err(|e| ClientError::Protocol {
            endpoint: self.endpoint().to_string(),
            message: e.to_string(),
        })?;
        self.expect(
            Method::PATCH,
            "/machines",
            Some(body),
            &[StatusCode::NO_CONTENT],
        )
        .await
        .map(|_| ())
    }

    /// Published unit states, sorted by (unit, machine).
    pub async fn unit_states(&self, filter: &StateFilter) -> Result<Vec<UnitState>, ClientError> {
        let mut query = Vec::new();
        for (key, value) in [
            ("machineID", &filter.machine_id),
            ("unitName", &filter.unit_name),
        ] {
            if let Some(v) = value {
                query.push(format!(
                    "{key}={}",
                    form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>()
                ));
            }
        }
        self.all_pages("/state", &query.join("&"), |p: types::UnitStatePage| {
            (p.states, p.next_page_token)
        })
        .await
    }

    /// The state of a unit on one machine running it, `None` if none published one.
    pub async fn unit_state(&self, name: &str) -> Result<Option<UnitState>, ClientError> {
        self.get_optional(&format!("/state/{}", segment(name)))
            .await
    }

    /// Where units would go and what else would move, changing nothing (an extension of
    /// fleet's API: `GET /plan?unit=...`, or `POST /plan` when `request` has unit files).
    pub async fn plan(&self, request: &PlanRequest) -> Result<PlanAnswer, ClientError> {
        if request.files.is_empty() {
            let query: Vec<String> = request
                .units
                .iter()
                .map(|u| {
                    format!(
                        "unit={}",
                        form_urlencoded::byte_serialize(u.as_bytes()).collect::<String>()
                    )
                })
                .collect();
            return self.get(&format!("/plan?{}", query.join("&"))).await;
        }
        let body = serde_json::to_vec(request).map_err(|e| ClientError::Protocol {
            endpoint: self.endpoint().to_string(),
            message: e.to_string(),
        })?;
        let (_, bytes) = self
            .expect(Method::POST, "/plan", Some(body), &[StatusCode::OK])
            .await?;
        self.decode(&bytes)
    }

    /// The engine's reasoning for one unit: where it runs and why, or why it cannot, per
    /// machine (`GET /why/<unit>`, an extension of fleet's API).
    pub async fn why(&self, name: &str) -> Result<PlanAnswer, ClientError> {
        self.get(&format!("/why/{}", segment(name))).await
    }

    /// The last `lines` lines a unit printed (`GET /output/<unit>?lines=N`, an extension of
    /// fleet's API), as the process supervisor of the answering fleetd's machine kept them. A
    /// fleetd whose machine does not run the unit answers 404 naming the machine that does.
    pub async fn unit_output(&self, name: &str, lines: usize) -> Result<Vec<String>, ClientError> {
        let answer: types::UnitOutput = self
            .get(&format!("/output/{}?lines={lines}", segment(name)))
            .await?;
        Ok(answer.lines)
    }

    /// Every drained machine and what becomes of its units (`GET /drain`, an extension of
    /// fleet's API). A server without drain (fleet's own) answers 404: no machine is drained
    /// there, so that reads as an empty list.
    pub async fn drains(&self) -> Result<Vec<DrainedMachine>, ClientError> {
        match self
            .expect(
                Method::GET,
                "/drain",
                None,
                &[StatusCode::OK, StatusCode::NOT_FOUND],
            )
            .await?
        {
            (StatusCode::OK, bytes) => Ok(self.decode::<types::DrainPage>(&bytes)?.machines),
            _ => Ok(Vec::new()),
        }
    }

    /// Each present machine's presence lease (`GET /leases`, an extension). A server without
    /// it (fleet's own, or an older fleetd) answers 404: `None`, the leases are not known.
    pub async fn leases(&self) -> Result<Option<Vec<types::MachineLease>>, ClientError> {
        match self
            .expect(
                Method::GET,
                "/leases",
                None,
                &[StatusCode::OK, StatusCode::NOT_FOUND],
            )
            .await?
        {
            (StatusCode::OK, bytes) => Ok(Some(self.decode::<types::LeasePage>(&bytes)?.machines)),
            _ => Ok(None),
        }
    }

    /// One drained machine, `None` if it is not drained.
    pub async fn drain_status(&self, machine: &str) -> Result<Option<DrainedMachine>, ClientError> {
        self.get_optional(&format!("/drain/{}", segment(machine)))
            .await
    }

    /// Drains a machine (`PUT /drain/<machineID>`): it takes no new units and the engine moves
    /// its units elsewhere one at a time. Draining a drained machine changes nothing.
    pub async fn drain(&self, machine: &str) -> Result<DrainedMachine, ClientError> {
        let (_, bytes) = self
            .expect(
                Method::PUT,
                &format!("/drain/{}", segment(machine)),
                None,
                &[StatusCode::OK, StatusCode::CREATED],
            )
            .await?;
        self.decode(&bytes)
    }

    /// Returns a drained machine to service (`DELETE /drain/<machineID>`); `false` if it was
    /// not drained.
    pub async fn undrain(&self, machine: &str) -> Result<bool, ClientError> {
        let (status, _) = self
            .expect(
                Method::DELETE,
                &format!("/drain/{}", segment(machine)),
                None,
                &[StatusCode::NO_CONTENT, StatusCode::NOT_FOUND],
            )
            .await?;
        Ok(status == StatusCode::NO_CONTENT)
    }

    /// The rollout of a global unit in progress (`GET /rollouts/<unit>`, an extension of
    /// fleet's API); `None` if there is none (or the server has no rollouts, as fleet's own).
    pub async fn rollout(&self, unit: &str) -> Result<Option<types::GlobalRollout>, ClientError> {
        self.get_optional(&format!("/rollouts/{}", segment(unit)))
            .await
    }

    /// Creates or replaces the rollout of a global unit (`PUT /rollouts/<unit>`): the machines
    /// it does not allow run its old content while the unit's content is its new one.
    pub async fn put_rollout(
        &self,
        unit: &str,
        rollout: &types::GlobalRollout,
    ) -> Result<types::GlobalRollout, ClientError> {
        let body = serde_json::to_vec(rollout).map_err(|e| ClientError::Protocol {
            endpoint: self.endpoint().to_string(),
            message: e.to_string(),
        })?;
        let (_, bytes) = self
            .expect(
                Method::PUT,
                &format!("/rollouts/{}", segment(unit)),
                Some(body),
                &[StatusCode::OK, StatusCode::CREATED],
            )
            .await?;
        self.decode(&bytes)
    }

    /// Drops the rollout of a global unit (`DELETE /rollouts/<unit>`): every machine runs its
    /// content. `false` if there was none.
    pub async fn delete_rollout(&self, unit: &str) -> Result<bool, ClientError> {
        let (status, _) = self
            .expect(
                Method::DELETE,
                &format!("/rollouts/{}", segment(unit)),
                None,
                &[StatusCode::NO_CONTENT, StatusCode::NOT_FOUND],
            )
            .await?;
        Ok(status == StatusCode::NO_CONTENT)
    }

    /// The cluster's events (`GET /events`, an extension of fleet's API): the recent ones the
    /// answering fleetd kept, then, with `follow`, each new one as it happens, until
    /// `on_event` returns `false` or the connection ends. Only the answer's head is bounded by
    /// the request timeout: a followed stream is quiet as long as the cluster is.
    pub async fn events(
        &self,
        filter: &types::EventFilter,
        follow: bool,
        mut on_event: impl FnMut(types::Event) -> bool,
    ) -> Result<(), ClientError> {
        let mut query = format!("follow={follow}");
        for (key, value) in [("unit", &filter.unit), ("machine", &filter.machine)] {
            if !value.is_empty() {
                query.push_str(&format!(
                    "&{key}={}",
                    form_urlencoded::byte_serialize(value.as_bytes()).collect::<String>()
                ));
            }
        }
        let target = self.target();
        let endpoint = || target.endpoint.clone();
        let uri = format!("{}{PREFIX}/events?{query}", target.base);
        let mut builder = Request::builder()
            .method(Method::GET)
            .uri(&uri)
            .header(header::ACCEPT, "text/event-stream");
        if let (Some(bearer), true) = (&self.bearer, target.send_token) {
            builder = builder.header(header::AUTHORIZATION, bearer.clone());
        }
        let req = builder
            .body(Full::new(Bytes::new()))
            .map_err(|e| ClientError::Protocol {
                endpoint: endpoint(),
                message: format!("cannot build request for {uri}: {e}"),
            })?;
        let resp = match tokio::time::timeout(self.timeout, target.http.request(req)).await {
            Err(_) => {
                return Err(ClientError::Timeout {
                    endpoint: endpoint(),
                    timeout: self.timeout,
                })
            }
            Ok(Err(e)) => {
                return Err(ClientError::Connect {
                    endpoint: endpoint(),
                    message: chain(&e),
                })
            }
            Ok(Ok(resp)) => resp,
        };
        let status = resp.status();
        let mut body = resp.into_body();
        if status != StatusCode::OK {
            let bytes = tokio::time::timeout(self.timeout, body.collect())
                .await
                .ok()
                .and_then(Result::ok)
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(api_error(status, &bytes));
        }
        let mut sse = SseReader::default();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ClientError::Connect {
                endpoint: endpoint(),
                message: format!("the event stream broke: {}", chain(&e)),
            })?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            for message in sse.push(data) {
                let event = self.decode::<types::Event>(message.as_bytes())?;
                if !on_event(event) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// The discovery document.
    pub async fn discovery(&self) -> Result<serde_json::Value, ClientError> {
        self.get("/discovery").await
    }
}

/// Reads a `text/event-stream` as it arrives: the `data` of each message, once whole
/// (comments, `id` and `event` lines are left to the JSON, which carries them too).
/// Hand-written: the format is a few lines of rules, and the SSE client crates bring their own
/// HTTP stacks, where this one reads the body of the client's own connection.
#[derive(Default)]
struct SseReader {
    /// Bytes of a line not ended yet.
    line: Vec<u8>,
    /// The data lines of the message being read.
    data: Vec<String>,
}

impl SseReader {
    fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut done = Vec::new();
        for &b in bytes {
            if b != b'\n' {
                self.line.push(b);
                continue;
            }
            let mut line = String::from_utf8_lossy(&self.line).into_owned();
            self.line.clear();
            if line.ends_with('\r') {
                line.pop();
            }
            if line.is_empty() {
                if !self.data.is_empty() {
                    done.push(std::mem::take(&mut self.data).join("\n"));
                }
            } else if let Some(value) = line.strip_prefix("data:") {
                self.data
                    .push(value.strip_prefix(' ').unwrap_or(value).to_string());
            }
        }
        done
    }
}

/// fleetd's error answer as a [`ClientError::Api`]: its message, or the start of the body.
fn api_error(status: StatusCode, bytes: &[u8]) -> ClientError {
    let message = match serde_json::from_slice::<types::ErrorBody>(bytes) {
        Ok(e) => e.error.message,
        Err(_) => {
            let text = String::from_utf8_lossy(bytes);
            let text = text.trim();
            if text.is_empty() {
                status.canonical_reason().unwrap_or("").to_string()
            } else {
                text.chars().take(200).collect()
            }
        }
    };
    ClientError::Api {
        status: status.as_u16(),
        message,
    }
}

fn segment(name: &str) -> String {
    utf8_percent_encode(name, SEGMENT).to_string()
}

/// An error and its causes, `a: b: c`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let next = c.to_string();
        if !s.contains(&next) {
            s.push_str(": ");
            s.push_str(&next);
        }
        cur = c.source();
    }
    s
}

/// Only the token of a page, read ahead of the page's items.
#[derive(serde::Deserialize)]
struct NextToken {
    #[serde(rename = "nextPageToken", default)]
    next_page_token: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_sent_events_are_read_across_chunks() {
        let mut r = SseReader::default();
        assert_eq!(
            r.push(b": keep-alive\n\nid: 3\nevent: placed\nda"),
            Vec::<String>::new()
        );
        assert_eq!(
            r.push(b"ta: {\"a\":1}\r\n\r\ndata:x\ndata: y\n"),
            vec!["{\"a\":1}"]
        );
        assert_eq!(r.push(b"\n"), vec!["x\ny"]);
        assert_eq!(r.push(b"\n\n"), Vec::<String>::new());
    }

    #[test]
    fn endpoints() {
        let o = ClientOptions::default;
        let bases = |e: &str| -> Vec<String> {
            let c = Client::new(e, o()).unwrap();
            c.targets.iter().map(|t| t.base.clone()).collect()
        };
        assert_eq!(bases("unix:///var/run/fleet.sock"), ["http://domain-sock"]);
        assert_eq!(bases("file:///var/run/fleet.sock"), ["http://domain-sock"]);
        assert_eq!(bases("http://127.0.0.1:49153/"), ["http://127.0.0.1:49153"]);
        assert_eq!(bases("http://h:1/fleet-proxy/"), ["http://h:1/fleet-proxy"]);
        assert_eq!(
            bases("unix:///a.sock, http://h:1/p"),
            ["http://domain-sock", "http://h:1/p"]
        );
        assert_eq!(
            Endpoint::parse("http://fleet.example").unwrap(),
            Endpoint::Tcp {
                host: "fleet.example".into(),
                port: 80,
                prefix: String::new(),
                tls: false,
            }
        );
        assert_eq!(
            Endpoint::parse("http://gw:8080/fleet-proxy/").unwrap(),
            Endpoint::Tcp {
                host: "gw".into(),
                port: 8080,
                prefix: "/fleet-proxy".into(),
                tls: false,
            }
        );
        assert_eq!(
            Endpoint::parse("http://[::1]:49153").unwrap().authority(),
            "[::1]:49153"
        );
        assert_eq!(
            Endpoint::parse("file:///run/fleet.sock").unwrap(),
            Endpoint::Unix("/run/fleet.sock".into())
        );
        for bad in [
            "",
            "unix://",
            "127.0.0.1:49153",
            "http://",
            "http:///path",
            "http://h:1/a b",
            "ftp://x",
            "unix:///a.sock,ftp://x",
        ] {
            let err = Client::new(bad, o())
                .err()
                .unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(
                matches!(err, ClientError::InvalidEndpoint { .. }),
                "{bad}: {err}"
            );
        }
        // https needs a CA to verify fleetd against: refused without one, naming the flag.
        assert!(Client::new("https://h:1", o())
            .err()
            .unwrap()
            .to_string()
            .contains("--ca-file"));
        assert_eq!(
            Endpoint::parse("https://fleet.example/p").unwrap(),
            Endpoint::Tcp {
                host: "fleet.example".into(),
                port: 443,
                prefix: "/p".into(),
                tls: true,
            }
        );
        // A token never crosses the network in the clear; loopback and unix are fine.
        let with_token = |e: &str| {
            let security = Security {
                token: Some("t".into()),
                ..Security::default()
            };
            Client::with_security(e, o(), security)
        };
        assert!(matches!(
            with_token("http://10.0.0.1:1").err(),
            Some(ClientError::Credentials(_))
        ));
        assert!(with_token("http://127.0.0.1:1").is_ok());
        assert!(with_token("http://localhost:1").is_ok());
        assert!(with_token("unix:///x.sock").is_ok());
    }

    #[test]
    fn unit_names_are_one_path_segment() {
        assert_eq!(segment("foo@bar.service"), "foo@bar.service");
        assert_eq!(segment("a\\x2db.service"), "a%5Cx2db.service");
        assert_eq!(segment("a/b"), "a%2Fb");
    }
}
