//! Prometheus metrics with bounded label sets: routes come from [`crate::ROUTES`] (or
//! `other`), reasons and methods from the gateway's own codes — never from the client,
//! never per user.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Histogram buckets, seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Default)]
struct Hist {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// The gateway's counters.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, u16, &'static str), u64>>,
    auth_failures: Mutex<BTreeMap<String, u64>>,
    latency: Mutex<BTreeMap<&'static str, Hist>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// The route label for a path: a proxied route, or `other`.
pub fn route_label(path: &str) -> &'static str {
    crate::ROUTES
        .iter()
        .copied()
        .find(|r| *r == path)
        .unwrap_or("other")
}

impl Metrics {
    /// Counts a request and its latency (to the response head).
    pub fn request(
        &self,
        route: &'static str,
        status: u16,
        auth_method: &'static str,
        took: Duration,
    ) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((route, status, auth_method)).or_default() += 1;
        }
        if let Ok(mut m) = self.latency.lock() {
            let h = m.entry(route).or_default();
            let s = took.as_secs_f64();
            for (i, b) in BUCKETS.iter().enumerate() {
                if s <= *b {
                    h.counts[i] += 1;
                }
            }
            h.count += 1;
            h.sum += s;
        }
    }

    /// Counts an authentication failure (`reason` is one of the gateway's codes).
    pub fn auth_failure(&self, reason: &str) {
        if let Ok(mut m) = self.auth_failures.lock() {
            // The codes are the gateway's own; cap the set anyway.
            if m.len() < 64 || m.contains_key(reason) {
                *m.entry(reason.to_owned()).or_default() += 1;
            }
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP attach_requests_total Requests by route, status and authentication method.\n# TYPE attach_requests_total counter\n");
        if let Ok(m) = self.requests.lock() {
            for ((route, status, method), n) in m.iter() {
                let _ = writeln!(out, "attach_requests_total{{route=\"{route}\",status=\"{status}\",auth_method=\"{method}\"}} {n}");
            }
        }
        out.push_str("# HELP attach_auth_failures_total Authentication failures by reason.\n# TYPE attach_auth_failures_total counter\n");
        if let Ok(m) = self.auth_failures.lock() {
            for (reason, n) in m.iter() {
                let _ = writeln!(out, "attach_auth_failures_total{{reason=\"{reason}\"}} {n}");
            }
        }
        out.push_str("# HELP attach_request_duration_seconds Time to the response head, by route.\n# TYPE attach_request_duration_seconds histogram\n");
        if let Ok(m) = self.latency.lock() {
            for (route, h) in m.iter() {
                for (i, b) in BUCKETS.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "attach_request_duration_seconds_bucket{{route=\"{route}\",le=\"{b}\"}} {}",
                        h.counts[i]
                    );
                }
                let _ = writeln!(
                    out,
                    "attach_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                    h.count
                );
                let _ = writeln!(
                    out,
                    "attach_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                    h.sum
                );
                let _ = writeln!(
                    out,
                    "attach_request_duration_seconds_count{{route=\"{route}\"}} {}",
                    h.count
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_bounded_series() {
        let m = Metrics::default();
        m.request(
            route_label("/v1/models"),
            200,
            "api-key",
            Duration::from_millis(3),
        );
        m.request(
            route_label("/secret/../x"),
            404,
            "none",
            Duration::from_millis(1),
        );
        m.auth_failure("unknown_api_key");
        let t = m.render();
        assert!(t.contains("attach_requests_total{route=\"/v1/models\",status=\"200\",auth_method=\"api-key\"} 1"), "{t}");
        assert!(
            t.contains("route=\"other\""),
            "client paths never become labels"
        );
        assert!(t.contains("attach_auth_failures_total{reason=\"unknown_api_key\"} 1"));
        assert!(t.contains(
            "attach_request_duration_seconds_bucket{route=\"/v1/models\",le=\"0.005\"} 1"
        ));
    }
}
