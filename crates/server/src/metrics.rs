//! Counters served at `GET /metrics` in Prometheus' text format.
//!
//! Hand-written: a handful of counters keyed by label values need a map and a `format!`, not a
//! metrics framework. Other parts of fleetd can append their own lines with
//! [`crate::ApiState::with_metrics_source`].

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

#[derive(Default)]
pub struct Metrics {
    /// (route, method, code) -> requests.
    requests: Mutex<BTreeMap<(&'static str, String, u16), u64>>,
    /// (operation, result) -> registry calls made by the API.
    registry_ops: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

impl Metrics {
    pub fn count_request(&self, route: &'static str, method: &str, code: u16) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((route, method.to_string(), code)).or_default() += 1;
        }
    }

    pub fn count_registry_op(&self, op: &'static str, ok: bool) {
        if let Ok(mut m) = self.registry_ops.lock() {
            *m.entry((op, if ok { "success" } else { "failure" }))
                .or_default() += 1;
        }
    }

    /// Appends the text exposition of every counter to `out`.
    pub fn render(&self, out: &mut String) {
        out.push_str(
            "# HELP fleet_api_requests_total HTTP API requests by route, method and status code.\n",
        );
        out.push_str("# TYPE fleet_api_requests_total counter\n");
        if let Ok(m) = self.requests.lock() {
            for ((route, method, code), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "fleet_api_requests_total{{route=\"{}\",method=\"{}\",code=\"{code}\"}} {n}",
                    escape(route),
                    escape(method)
                );
            }
        }
        out.push_str("# HELP fleet_registry_operation_count Registry operations made by the HTTP API, by operation and result.\n");
        out.push_str("# TYPE fleet_registry_operation_count counter\n");
        if let Ok(m) = self.registry_ops.lock() {
            for ((op, result), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "fleet_registry_operation_count{{operation=\"{op}\",result=\"{result}\"}} {n}"
                );
            }
        }
    }
}

/// Escapes a label value (backslash, double quote, newline), as the text format requires.
pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_labels() {
        let m = Metrics::default();
        m.count_request("units", "GET", 200);
        m.count_request("units", "GET", 200);
        m.count_request("units/{unitName}", "PUT", 201);
        m.count_registry_op("create_unit", false);
        let mut out = String::new();
        m.render(&mut out);
        assert!(
            out.contains(
                "fleet_api_requests_total{route=\"units\",method=\"GET\",code=\"200\"} 2\n"
            ),
            "{out}"
        );
        assert!(out.contains("fleet_api_requests_total{route=\"units/{unitName}\",method=\"PUT\",code=\"201\"} 1\n"), "{out}");
        assert!(
            out.contains(
                "fleet_registry_operation_count{operation=\"create_unit\",result=\"failure\"} 1\n"
            ),
            "{out}"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
