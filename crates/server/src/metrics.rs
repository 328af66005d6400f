//! What `GET /metrics` serves: one `prometheus_client` registry, in Prometheus' text format
//! (0.0.4). The API's own families are here ([`Metrics`]); fleetd registers the engine's, the
//! agent's and the registry client's ([`StoreMetrics`]) in the same registry and hands it over
//! with [`crate::ApiState::with_metrics`].

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::time::Duration;

pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Latency buckets from 0.5 ms to about 16 s, doubling: a local store answers in well under a
/// millisecond, an etcd across a network in milliseconds, and a stalled one in seconds.
pub fn latency_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub method: &'static str,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
    pub method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub operation: &'static str,
    pub result: &'static str,
}

/// The API server's families.
#[derive(Clone)]
pub struct Metrics {
    available: Gauge,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    registry_ops: Family<OperationLabels, Counter>,
}

impl Metrics {
    /// Registers the API's families in `registry`.
    pub fn register(registry: &mut Registry) -> Metrics {
        let m = Metrics {
            available: Gauge::default(),
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_buckets),
            registry_ops: Family::default(),
        };
        registry.register(
            "fleet_api_available",
            "Whether the API serves requests (1) or answers 503 (0)",
            m.available.clone(),
        );
        registry.register(
            "fleet_api_requests",
            "HTTP API requests by route, method and status code",
            m.requests.clone(),
        );
        registry.register(
            "fleet_api_request_duration_seconds",
            "Time to answer an HTTP API request, by route and method",
            m.latency.clone(),
        );
        registry.register(
            "fleet_api_registry_operations",
            "Registry operations made by the HTTP API, by operation and result",
            m.registry_ops.clone(),
        );
        m
    }

    pub fn set_available(&self, available: bool) {
        self.available.set(i64::from(available));
    }

    pub fn count_request(
        &self,
        route: &'static str,
        method: &'static str,
        code: u16,
        took: Duration,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                route,
                method,
                code,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels { route, method })
            .observe(took.as_secs_f64());
    }

    pub fn count_registry_op(&self, operation: &'static str, ok: bool) {
        self.registry_ops
            .get_or_create(&OperationLabels {
                operation,
                result: result(ok),
            })
            .inc();
    }
}

fn result(ok: bool) -> &'static str {
    if ok {
        "success"
    } else {
        "failure"
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindResultLabels {
    pub kind: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// Every request this fleetd makes to its store (etcd or the embedded one), by kind, and the
/// machine lease's refreshes: what [`registry::StoreObserver`] reports.
#[derive(Clone)]
pub struct StoreMetrics {
    requests: Family<KindResultLabels, Counter>,
    latency: Family<KindLabels, Histogram>,
    renewals: Family<ResultLabels, Counter>,
}

impl StoreMetrics {
    pub fn register(registry: &mut Registry) -> StoreMetrics {
        let m = StoreMetrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_buckets),
            renewals: Family::default(),
        };
        registry.register(
            "fleet_registry_requests",
            "Requests to the registry's store by kind (get, range, txn, watch, lease calls) and result",
            m.requests.clone(),
        );
        registry.register(
            "fleet_registry_request_duration_seconds",
            "Time the registry's store took to answer, by kind of request",
            m.latency.clone(),
        );
        registry.register(
            "fleet_agent_lease_renewals",
            "Refreshes of this machine's lease by result (ok, expired, failed)",
            m.renewals.clone(),
        );
        // Known results start at 0, so that the series exist before the first refresh.
        for r in [
            registry::LeaseRefresh::Ok,
            registry::LeaseRefresh::Expired,
            registry::LeaseRefresh::Failed,
        ] {
            m.renewals
                .get_or_create(&ResultLabels { result: r.label() })
                .inc_by(0);
        }
        m
    }
}

impl registry::StoreObserver for StoreMetrics {
    fn request(&self, kind: &'static str, ok: bool, took: Duration) {
        self.requests
            .get_or_create(&KindResultLabels {
                kind,
                result: result(ok),
            })
            .inc();
        self.latency
            .get_or_create(&KindLabels { kind })
            .observe(took.as_secs_f64());
    }

    fn lease_refreshed(&self, result: registry::LeaseRefresh) {
        self.renewals
            .get_or_create(&ResultLabels {
                result: result.label(),
            })
            .inc();
    }
}

/// `registry` in Prometheus' text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail; an encoder error would leave a partial page, which a
    // scraper reports as such.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, registry) {
        tracing::warn!(error = %e, "encoding /metrics failed");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_labels() {
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry);
        let ms = Duration::from_millis(1);
        m.count_request("units", "GET", 200, ms);
        m.count_request("units", "GET", 200, ms);
        m.count_request("units/{unitName}", "PUT", 201, ms);
        m.count_registry_op("create_unit", false);
        let out = render(&registry);
        assert!(
            out.contains(
                "fleet_api_requests_total{route=\"units\",method=\"GET\",code=\"200\"} 2\n"
            ),
            "{out}"
        );
        assert!(out.contains("fleet_api_requests_total{route=\"units/{unitName}\",method=\"PUT\",code=\"201\"} 1\n"), "{out}");
        assert!(
            out.contains(
                "fleet_api_registry_operations_total{operation=\"create_unit\",result=\"failure\"} 1\n"
            ),
            "{out}"
        );
        assert!(
            out.contains(
                "fleet_api_request_duration_seconds_count{route=\"units\",method=\"GET\"} 2\n"
            ),
            "{out}"
        );
    }

    #[test]
    fn store_requests_and_lease_refreshes() {
        use registry::StoreObserver;
        let mut registry = Registry::default();
        let m = StoreMetrics::register(&mut registry);
        m.request("txn", true, Duration::from_millis(2));
        m.request("txn", false, Duration::from_millis(2));
        m.lease_refreshed(registry::LeaseRefresh::Expired);
        let out = render(&registry);
        assert!(
            out.contains("fleet_registry_requests_total{kind=\"txn\",result=\"failure\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("fleet_registry_request_duration_seconds_count{kind=\"txn\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("fleet_agent_lease_renewals_total{result=\"expired\"} 1\n"),
            "{out}"
        );
    }
}
