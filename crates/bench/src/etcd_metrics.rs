//! etcd's own view of the load: its Prometheus `/metrics`, read before and after a window.
//!
//! ```
//! use fleet_bench::etcd_metrics::Sample;
//! let s = Sample::parse("etcd_debugging_mvcc_put_total 7\n\
//!     grpc_server_msg_received_total{grpc_method=\"Txn\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 3\n");
//! assert_eq!(s.total("etcd_debugging_mvcc_put_total"), 7.0);
//! assert_eq!(s.by_label("grpc_server_msg_received_total", "grpc_method")["Txn"], 3.0);
//! ```

use anyhow::Context;
use http_body_util::{BodyExt, Empty};
use std::collections::BTreeMap;

/// The labels and value of one series.
type Series = (BTreeMap<String, String>, f64);

/// One scrape: metric name -> its series.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    lines: BTreeMap<String, Vec<Series>>,
}

/// Parses `k="v",k2="v2"`. etcd's label values hold no quotes or commas, and this reads only
/// etcd's output, so escapes are not handled.
fn labels(text: &str) -> BTreeMap<String, String> {
    text.split(',')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        })
        .collect()
}

impl Sample {
    /// Reads Prometheus' text format (the subset etcd writes: no timestamps, no escapes).
    /// Hand-written because the few lines needed do not justify a parser dependency.
    pub fn parse(text: &str) -> Sample {
        let mut lines: BTreeMap<String, Vec<Series>> = BTreeMap::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, labels(rest.trim_end_matches('}'))),
                None => (series, BTreeMap::new()),
            };
            lines
                .entry(name.to_string())
                .or_default()
                .push((labels, value));
        }
        Sample { lines }
    }

    /// The sum of every series of `name` (0 if etcd does not expose it).
    pub fn total(&self, name: &str) -> f64 {
        self.lines
            .get(name)
            .map(|v| v.iter().map(|(_, x)| x).sum())
            .unwrap_or(0.0)
    }

    /// The sums of `name` grouped by the value of `label`.
    pub fn by_label(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (l, v) in self.lines.get(name).into_iter().flatten() {
            if let Some(key) = l.get(label) {
                *out.entry(key.clone()).or_insert(0.0) += v;
            }
        }
        out
    }
}

/// Reads `url` (etcd's `/metrics`).
pub async fn scrape(url: &str) -> anyhow::Result<Sample> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<bytes::Bytes>>();
    let uri: hyper::Uri = url
        .parse()
        .with_context(|| format!("bad metrics URL {url}"))?;
    let resp = client
        .get(uri)
        .await
        .with_context(|| format!("reading etcd metrics at {url}"))?;
    let body = resp
        .into_body()
        .collect()
        .await
        .with_context(|| format!("reading etcd metrics at {url}"))?
        .to_bytes();
    Ok(Sample::parse(&String::from_utf8_lossy(&body)))
}

/// Per-second rates between two samples, for the report.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Load {
    pub seconds: f64,
    /// gRPC requests (unary calls and stream messages) received, per second.
    pub requests_per_s: f64,
    /// By gRPC method (`Range`, `Txn`, `LeaseKeepAlive`, `Watch`, …), per second.
    pub requests_by_method_per_s: BTreeMap<String, f64>,
    pub received_bytes_per_s: f64,
    pub sent_bytes_per_s: f64,
    /// MVCC operations: keys written and ranges read, per second.
    pub puts_per_s: f64,
    pub deletes_per_s: f64,
    pub txns_per_s: f64,
    pub ranges_per_s: f64,
    /// Raft proposals applied (every write goes through one), per second.
    pub proposals_per_s: f64,
    /// WAL fsyncs, per second.
    pub fsyncs_per_s: f64,
}

impl Load {
    pub fn between(before: &Sample, after: &Sample, seconds: f64) -> Load {
        let rate = |name: &str| (after.total(name) - before.total(name)) / seconds;
        let received = "grpc_server_msg_received_total";
        let a = after.by_label(received, "grpc_method");
        let b = before.by_label(received, "grpc_method");
        let requests_by_method_per_s: BTreeMap<String, f64> = a
            .iter()
            .map(|(m, v)| (m.clone(), (v - b.get(m).copied().unwrap_or(0.0)) / seconds))
            .filter(|(_, r)| *r > 0.0)
            .collect();
        Load {
            seconds,
            requests_per_s: requests_by_method_per_s.values().sum(),
            requests_by_method_per_s,
            received_bytes_per_s: rate("etcd_network_client_grpc_received_bytes_total"),
            sent_bytes_per_s: rate("etcd_network_client_grpc_sent_bytes_total"),
            puts_per_s: rate("etcd_debugging_mvcc_put_total"),
            deletes_per_s: rate("etcd_debugging_mvcc_delete_total"),
            txns_per_s: rate("etcd_debugging_mvcc_txn_total"),
            ranges_per_s: rate("etcd_debugging_mvcc_range_total"),
            proposals_per_s: rate("etcd_server_proposals_applied_total"),
            fsyncs_per_s: rate("etcd_disk_wal_fsync_duration_seconds_count"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP x y\n# TYPE x counter\n\
        etcd_debugging_mvcc_put_total 10\n\
        grpc_server_msg_received_total{grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 4\n\
        grpc_server_msg_received_total{grpc_method=\"LeaseKeepAlive\",grpc_service=\"etcdserverpb.Lease\",grpc_type=\"bidi_stream\"} 100\n\
        etcd_disk_wal_fsync_duration_seconds_count 5\n\
        etcd_disk_wal_fsync_duration_seconds_bucket{le=\"+Inf\"} 5\n\
        garbage line\n";

    #[test]
    fn parses_names_labels_and_values() {
        let s = Sample::parse(TEXT);
        assert_eq!(s.total("etcd_debugging_mvcc_put_total"), 10.0);
        assert_eq!(s.total("grpc_server_msg_received_total"), 104.0);
        assert_eq!(s.total("absent"), 0.0);
        let m = s.by_label("grpc_server_msg_received_total", "grpc_method");
        assert_eq!(m["LeaseKeepAlive"], 100.0);
        assert_eq!(
            s.by_label("etcd_disk_wal_fsync_duration_seconds_bucket", "le")["+Inf"],
            5.0
        );
    }

    #[test]
    fn rates_are_deltas_per_second_and_skip_idle_methods() {
        let before = Sample::parse(TEXT);
        let after = Sample::parse(
            &TEXT
                .replace(" 100\n", " 120\n")
                .replace("put_total 10", "put_total 30"),
        );
        let load = Load::between(&before, &after, 10.0);
        assert_eq!(load.puts_per_s, 2.0);
        assert_eq!(load.requests_per_s, 2.0);
        assert_eq!(load.requests_by_method_per_s.len(), 1);
        assert_eq!(load.requests_by_method_per_s["LeaseKeepAlive"], 2.0);
    }
}
