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

impl Hist {
    fn observe(&mut self, took: Duration) {
        let s = took.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum += s;
    }
}

/// The connections one upstream may have in use: a permit per connection, and what the
/// `/metrics` gauges report about them.
#[derive(Debug)]
pub(crate) struct UpstreamSlots {
    pub(crate) permits: std::sync::Arc<tokio::sync::Semaphore>,
    max: usize,
    waiting: std::sync::atomic::AtomicUsize,
    saturated: std::sync::atomic::AtomicU64,
}

/// Counts a request as waiting for a connection while it lives.
pub(crate) struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl UpstreamSlots {
    pub(crate) fn new(max: usize) -> Self {
        UpstreamSlots {
            permits: std::sync::Arc::new(tokio::sync::Semaphore::new(max)),
            max,
            waiting: Default::default(),
            saturated: Default::default(),
        }
    }

    /// Marks a request as waiting until the guard drops (also when its future does).
    pub(crate) fn wait(&self) -> Waiting<'_> {
        self.waiting
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Waiting(&self.waiting)
    }

    /// A request refused after waiting.
    pub(crate) fn saturated(&self) {
        self.saturated
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The three series for each upstream (by name).
    pub(crate) fn render(upstreams: &BTreeMap<String, Self>) -> String {
        use std::sync::atomic::Ordering::Relaxed;
        let (mut busy, mut waiting, mut refused) = (String::new(), String::new(), String::new());
        for (name, u) in upstreams {
            let name = name.replace(['\\', '"', '\n'], "_");
            let in_use = u.max - u.permits.available_permits();
            let _ = writeln!(
                busy,
                "attach_upstream_in_flight{{upstream=\"{name}\"}} {in_use}"
            );
            let n = u.waiting.load(Relaxed);
            let _ = writeln!(
                waiting,
                "attach_upstream_waiting{{upstream=\"{name}\"}} {n}"
            );
            let n = u.saturated.load(Relaxed);
            let _ = writeln!(
                refused,
                "attach_upstream_saturated_total{{upstream=\"{name}\"}} {n}"
            );
        }
        format!(
            "# HELP attach_upstream_in_flight Requests holding a connection to the upstream (at most max_upstream_connections).\n# TYPE attach_upstream_in_flight gauge\n{busy}\
             # HELP attach_upstream_waiting Requests waiting for a connection to the upstream.\n# TYPE attach_upstream_waiting gauge\n{waiting}\
             # HELP attach_upstream_saturated_total Requests refused (503) after waiting for a connection.\n# TYPE attach_upstream_saturated_total counter\n{refused}"
        )
    }
}

/// Key lookups by source (`directory`: Web Bot Auth key directories; `jwks`: OIDC
/// issuers) and outcome (`hit`: from the cache; `fetch`: over the network).
pub fn key_fetches(dir_hits: u64, dir_fetches: u64, jwks_hits: u64, jwks_fetches: u64) -> String {
    format!(
        "# HELP attach_key_lookups_total Key lookups by source and outcome (hit: cache, fetch: network).\n\
         # TYPE attach_key_lookups_total counter\n\
         attach_key_lookups_total{{source=\"directory\",outcome=\"hit\"}} {dir_hits}\n\
         attach_key_lookups_total{{source=\"directory\",outcome=\"fetch\"}} {dir_fetches}\n\
         attach_key_lookups_total{{source=\"jwks\",outcome=\"hit\"}} {jwks_hits}\n\
         attach_key_lookups_total{{source=\"jwks\",outcome=\"fetch\"}} {jwks_fetches}\n"
    )
}

/// Distinct model labels kept; further models are counted as `other` (models come from
/// clients, so the label set must stay bounded).
pub const MAX_MODEL_LABELS: usize = 32;

/// The gateway's counters.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, u16, &'static str), u64>>,
    auth_failures: Mutex<BTreeMap<String, u64>>,
    latency: Mutex<BTreeMap<&'static str, Hist>>,
    upstream_ttfb: Mutex<BTreeMap<&'static str, Hist>>,
    /// Per model label: [prompt, completion].
    tokens: Mutex<BTreeMap<String, [u64; 2]>>,
    budget_refusals: Mutex<BTreeMap<&'static str, u64>>,
    disconnects: Mutex<BTreeMap<&'static str, u64>>,
    key_file_reloads: Mutex<BTreeMap<&'static str, u64>>,
}

/// A counter with one label (a small, bounded set of values).
fn counter<K: std::fmt::Display>(
    out: &mut String,
    name: &str,
    help: &str,
    label: &str,
    m: &Mutex<BTreeMap<K, u64>>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    if let Ok(m) = m.lock() {
        for (value, n) in m.iter() {
            let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {n}");
        }
    }
}

/// Adds one to `value`'s count.
fn bump(m: &Mutex<BTreeMap<&'static str, u64>>, value: &'static str) {
    if let Ok(mut m) = m.lock() {
        *m.entry(value).or_default() += 1;
    }
}

fn histogram(out: &mut String, name: &str, help: &str, m: &Mutex<BTreeMap<&'static str, Hist>>) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    if let Ok(m) = m.lock() {
        for (route, h) in m.iter() {
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{name}_bucket{{route=\"{route}\",le=\"{b}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                out,
                "{name}_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(out, "{name}_sum{{route=\"{route}\"}} {}", h.sum);
            let _ = writeln!(out, "{name}_count{{route=\"{route}\"}} {}", h.count);
        }
    }
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
            m.entry(route).or_default().observe(took);
        }
    }

    /// The upstream's time to first byte on `route`.
    pub fn upstream_ttfb(&self, route: &'static str, took: Duration) {
        if let Ok(mut m) = self.upstream_ttfb.lock() {
            m.entry(route).or_default().observe(took);
        }
    }

    /// Tokens billed for `model` (bounded label set: see [`MAX_MODEL_LABELS`]).
    pub fn tokens(&self, model: Option<&str>, prompt: u64, completion: u64) {
        if let Ok(mut m) = self.tokens.lock() {
            let model = model.unwrap_or("none");
            let counts = match m.get_mut(model) {
                Some(c) => c,
                None => {
                    // A new model: a label of its own while there is room, else `other`.
                    let label = if m.len() < MAX_MODEL_LABELS {
                        model
                    } else {
                        "other"
                    };
                    m.entry(label.to_owned()).or_default()
                }
            };
            counts[0] += prompt;
            counts[1] += completion;
        }
    }

    /// A request refused by a budget (`reason`: `requests` or `tokens`).
    pub fn budget_refusal(&self, reason: &'static str) {
        bump(&self.budget_refusals, reason);
    }

    /// A client that left a metered or budgeted response early; `exact`: its counts came
    /// from the upstream (read before it left or drained after).
    pub fn disconnect(&self, exact: bool) {
        bump(&self.disconnects, if exact { "exact" } else { "estimated" });
    }

    /// The API key file changed and was reloaded (`applied`) or, not parsing, refused
    /// with the keys in force kept (`refused`).
    pub fn key_file_reload(&self, applied: bool) {
        bump(
            &self.key_file_reloads,
            if applied { "applied" } else { "refused" },
        );
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
        counter(
            &mut out,
            "attach_auth_failures_total",
            "Authentication failures by reason.",
            "reason",
            &self.auth_failures,
        );
        histogram(
            &mut out,
            "attach_request_duration_seconds",
            "Time to the response head, by route.",
            &self.latency,
        );
        histogram(
            &mut out,
            "attach_upstream_ttfb_seconds",
            "Upstream time to first byte, by route.",
            &self.upstream_ttfb,
        );
        out.push_str("# HELP attach_tokens_total Tokens billed, by direction and model (at most 32 model labels, then other).\n# TYPE attach_tokens_total counter\n");
        if let Ok(m) = self.tokens.lock() {
            for (model, [prompt, completion]) in m.iter() {
                let model = model.replace(['\\', '"', '\n'], "_");
                for (direction, n) in [("prompt", prompt), ("completion", completion)] {
                    let _ = writeln!(
                        out,
                        "attach_tokens_total{{direction=\"{direction}\",model=\"{model}\"}} {n}"
                    );
                }
            }
        }
        for (name, help, label, m) in [
            (
                "attach_budget_refusals_total",
                "Requests refused by a budget, by what ran out.",
                "reason",
                &self.budget_refusals,
            ),
            (
                "attach_client_disconnects_total",
                "Metered responses the client left early, by how their tokens were counted.",
                "counts",
                &self.disconnects,
            ),
            (
                "attach_api_key_file_reloads_total",
                "Changes of the API key file, applied or refused (it did not parse; the keys in force stay).",
                "outcome",
                &self.key_file_reloads,
            ),
        ] {
            counter(&mut out, name, help, label, m);
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

    #[test]
    fn model_labels_are_bounded() {
        let m = Metrics::default();
        for i in 0..100 {
            m.tokens(Some(&format!("model-{i}")), 1, 2);
        }
        // Models 32..99 (68 of them) go to `other`: 68 × 2; model-0 keeps its label.
        m.tokens(Some("model-0"), 10, 20);
        let t = m.render();
        let series = t
            .lines()
            .filter(|l| l.starts_with("attach_tokens_total{"))
            .count();
        assert_eq!(
            series,
            2 * (MAX_MODEL_LABELS + 1),
            "32 models and other, two directions"
        );
        assert!(t.contains("attach_tokens_total{direction=\"prompt\",model=\"model-0\"} 11"));
        assert!(
            t.contains("attach_tokens_total{direction=\"completion\",model=\"other\"} 136"),
            "{t}"
        );
    }

    #[test]
    fn upstream_gauges_count_permits_waiters_and_refusals() {
        let slots = BTreeMap::from([
            ("a".to_owned(), UpstreamSlots::new(3)),
            ("evil\"} 1\n".to_owned(), UpstreamSlots::new(1)),
        ]);
        let (a, b) = (&slots["a"], &slots["evil\"} 1\n"]);
        let _held = a.permits.clone().try_acquire_owned().unwrap();
        let _w = a.wait();
        {
            let _gone = a.wait();
        }
        b.saturated();
        let t = UpstreamSlots::render(&slots);
        for line in [
            "attach_upstream_in_flight{upstream=\"a\"} 1\n",
            "attach_upstream_waiting{upstream=\"a\"} 1\n",
            "attach_upstream_saturated_total{upstream=\"a\"} 0\n",
            "attach_upstream_in_flight{upstream=\"evil_} 1_\"} 0\n",
            "attach_upstream_saturated_total{upstream=\"evil_} 1_\"} 1\n",
            "# TYPE attach_upstream_waiting gauge\n",
        ] {
            assert!(t.contains(line), "{line:?} in {t}");
        }
    }

    #[test]
    fn model_labels_are_escaped() {
        let m = Metrics::default();
        m.tokens(Some("evil\"} 1\nfake_metric{x=\""), 1, 2);
        let t = m.render();
        assert!(
            t.contains(
                "attach_tokens_total{direction=\"prompt\",model=\"evil_} 1_fake_metric{x=_\"} 1\n"
            ),
            "{t}"
        );
        assert!(!t.lines().any(|l| l.starts_with("fake_metric")), "{t}");
    }
}
