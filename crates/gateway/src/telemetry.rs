//! Trace context and, with the cargo feature `otel`, OTLP trace export.
//!
//! Every proxied request runs in one `tracing` span named `request` whose fields are the
//! request's bounded, secret-free facts: `request_id`, `trace_id`, `http.request.method`,
//! `http.route` (one of [`crate::ROUTES`] or `other`), `http.response.status_code`,
//! `auth_method` (`api-key`, `oidc`, ... or `none`), `upstream` (the configured name) and
//! `model` (at most [`MODEL_MAX`] bytes, recorded once the policy allowed it). Never a
//! principal id, a tenant, a credential or a body. The log subscriber prints them on each
//! line of the request; the OTLP export sends them as span attributes.
//!
//! **One trace.** The gateway continues the caller's W3C `traceparent` (or starts a trace)
//! and sends the upstream a `traceparent` naming this hop as the parent. With export on
//! (`TraceExport::layer` in the subscriber), this hop *is* the exported span: its trace
//! id is the caller's, its parent is the caller's span, and its span id is the parent id
//! the upstream receives, so the caller's, the gateway's and the model server's spans join
//! in one tree. Without export the parent id sent upstream is random, as before.
//!
//! **Export** (feature `otel`): [`OtlpSettings::resolve`] reads the endpoint from a flag
//! or the standard `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`,
//! and the service name from `OTEL_SERVICE_NAME` (default `attach-gateway`);
//! `TraceExport::start` builds a tracer provider with a batch span processor (its own
//! thread; `OTEL_BSP_*` tune it) sending OTLP over HTTP with protobuf
//! (`OTEL_EXPORTER_OTLP_HEADERS` and `..._TIMEOUT` apply; `OTEL_TRACES_SAMPLER` chooses
//! sampling, parent-based always-on by default). Only the gateway's own spans (the
//! `request` span) are exported: log events are not (their text may name a principal). The span ends when the response
//! head is handed to the server; the time a streamed body takes is not in it.
//! `TraceExport::shutdown` exports what is queued (call it after
//! [`crate::Gateway::shutdown`]).

/// The longest `model` value recorded on the request span, in bytes (the name comes from
/// the client).
pub const MODEL_MAX: usize = 128;

/// The OTLP/HTTP path for traces, appended to a base endpoint.
const TRACES_PATH: &str = "/v1/traces";

/// The service name without `OTEL_SERVICE_NAME`.
pub const DEFAULT_SERVICE_NAME: &str = "attach-gateway";

/// Errors configuring or running the trace export.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP endpoint (from `setting`) is not an absolute http(s) URL.
    #[error("OTLP endpoint from {setting}: {reason}")]
    Endpoint {
        /// Where it came from: the flag or the environment variable's name.
        setting: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// The exporter could not be built.
    #[error("OTLP exporter: {0}")]
    Exporter(String),
    /// Spans could not be exported on flush or shutdown.
    #[error("OTLP export: {0}")]
    Export(String),
}

/// Where and as what service to export traces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpSettings {
    /// The full OTLP/HTTP traces URL (`.../v1/traces`).
    pub endpoint: url::Url,
    /// The `service.name` resource attribute.
    pub service_name: String,
}

impl OtlpSettings {
    /// The export settings from `flag` (a base URL like `OTEL_EXPORTER_OTLP_ENDPOINT`:
    /// `/v1/traces` is appended unless the path already ends with it), else
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as it is), else
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (`/v1/traces` appended), as `env` returns them (empty
    /// values count as unset). `None`: no endpoint anywhere, export is off.
    ///
    /// ```
    /// use attach_gateway::telemetry::OtlpSettings;
    /// let env = |name: &str| (name == "OTEL_SERVICE_NAME").then(|| "edge-1".to_owned());
    /// let s = OtlpSettings::resolve(Some("http://collector:4318"), env)?.expect("export on");
    /// assert_eq!(s.endpoint.as_str(), "http://collector:4318/v1/traces");
    /// assert_eq!(s.service_name, "edge-1");
    /// assert_eq!(OtlpSettings::resolve(None, |_| None)?, None);
    /// # Ok::<(), attach_gateway::telemetry::TelemetryError>(())
    /// ```
    pub fn resolve(
        flag: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<OtlpSettings>, TelemetryError> {
        let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let endpoint = if let Some(f) = flag {
            base_endpoint("--otlp-endpoint", f)?
        } else if let Some(v) = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            parse_endpoint("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &v)?
        } else if let Some(v) = env("OTEL_EXPORTER_OTLP_ENDPOINT") {
            base_endpoint("OTEL_EXPORTER_OTLP_ENDPOINT", &v)?
        } else {
            return Ok(None);
        };
        let service_name = env("OTEL_SERVICE_NAME")
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_owned());
        Ok(Some(OtlpSettings {
            endpoint,
            service_name,
        }))
    }

    /// [`OtlpSettings::resolve`] with the process environment.
    pub fn from_env(flag: Option<&str>) -> Result<Option<OtlpSettings>, TelemetryError> {
        Self::resolve(flag, |name| std::env::var(name).ok())
    }

    /// Whether the process environment names an OTLP traces endpoint (what a binary built
    /// without the `otel` feature warns about).
    pub fn in_env() -> bool {
        [
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ]
        .iter()
        .any(|n| std::env::var(n).is_ok_and(|v| !v.trim().is_empty()))
    }
}

fn parse_endpoint(setting: &'static str, value: &str) -> Result<url::Url, TelemetryError> {
    let refuse = |reason: String| TelemetryError::Endpoint { setting, reason };
    let url = url::Url::parse(value.trim()).map_err(|e| refuse(format!("not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(refuse(format!(
            "scheme `{}` (OTLP/HTTP needs http or https)",
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(refuse("no host".into()));
    }
    Ok(url)
}

fn base_endpoint(setting: &'static str, value: &str) -> Result<url::Url, TelemetryError> {
    let mut url = parse_endpoint(setting, value)?;
    if !url.path().ends_with(TRACES_PATH) {
        let path = format!("{}{TRACES_PATH}", url.path().trim_end_matches('/'));
        url.set_path(&path);
    }
    Ok(url)
}

/// A W3C `traceparent` header value taken apart: (trace id, parent id, flags), each
/// lowercase hex as received. `None` unless valid (version not `ff`, ids not all zero).
pub(crate) fn parse_traceparent(value: &str) -> Option<(&str, &str, &str)> {
    let parts: Vec<&str> = value.trim().split('-').collect();
    let ok = parts.len() >= 4
        && parts[0].len() == 2
        && parts[0] != "ff"
        && parts[1].len() == 32
        && parts[2].len() == 16
        && parts[3].len() == 2
        && parts[..4].iter().all(|p| {
            p.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
        && parts[1].bytes().any(|b| b != b'0')
        && parts[2].bytes().any(|b| b != b'0');
    ok.then(|| (parts[1], parts[2], parts[3]))
}

/// The W3C `traceparent` for the upstream request: the caller's trace continued with a
/// new parent id (this hop), or a new sampled trace. Returns (trace id, header value).
pub fn traceparent(incoming: Option<&str>) -> (String, String) {
    let hex = |n: usize| {
        let mut b = vec![0u8; n];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
        hex::encode(&b)
    };
    let (trace, flags) = incoming
        .and_then(parse_traceparent)
        .map(|(t, _, f)| (t.to_owned(), f.to_owned()))
        .unwrap_or_else(|| (hex(16), "01".into()));
    let value = format!("00-{trace}-{}-{flags}", hex(8));
    (trace, value)
}

/// This hop's trace context for `span` (a new `request` span not yet entered): with the
/// export layer on `span`, the caller's context becomes the exported span's parent and
/// the upstream's `traceparent` names the exported span; otherwise [`traceparent`].
/// Returns (trace id, header value).
pub(crate) fn continue_trace(span: &tracing::Span, incoming: Option<&str>) -> (String, String) {
    #[cfg(feature = "otel")]
    if let Some(ids) = otel::join(span, incoming) {
        return ids;
    }
    #[cfg(not(feature = "otel"))]
    let _ = span;
    traceparent(incoming)
}

/// `model` cut to at most [`MODEL_MAX`] bytes (on a character boundary).
pub(crate) fn bounded(model: &str) -> &str {
    let mut end = model.len().min(MODEL_MAX);
    while !model.is_char_boundary(end) {
        end -= 1;
    }
    &model[..end]
}

#[cfg(feature = "otel")]
pub use otel::TraceExport;

#[cfg(feature = "otel")]
mod otel {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
    };
    use opentelemetry_otlp::WithExportConfig;
    use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::registry::LookupSpan;
    use tracing_subscriber::Layer;

    use super::{OtlpSettings, TelemetryError};

    /// The OTLP trace export: a tracer provider with a batch span processor. Compose
    /// [`TraceExport::layer`] into the process's `tracing` subscriber; keep this value
    /// and call [`TraceExport::shutdown`] at the end (dropping it shuts down too, without
    /// reporting).
    ///
    /// ```
    /// use attach_gateway::telemetry::{OtlpSettings, TraceExport};
    /// use tracing_subscriber::layer::SubscriberExt;
    /// let settings = OtlpSettings::resolve(Some("http://127.0.0.1:4318"), |_| None)?
    ///     .expect("export on");
    /// let export = TraceExport::start(&settings)?;
    /// let subscriber = tracing_subscriber::registry().with(export.layer());
    /// tracing::subscriber::with_default(subscriber, || {
    ///     // Serve: each request's span is exported when it ends.
    /// });
    /// export.shutdown()?; // nothing was queued, nothing is sent
    /// # Ok::<(), attach_gateway::telemetry::TelemetryError>(())
    /// ```
    #[derive(Debug)]
    pub struct TraceExport {
        provider: Option<SdkTracerProvider>,
        tracer: SdkTracer,
    }

    impl TraceExport {
        /// Builds the exporter and the provider. Nothing is sent until spans end.
        pub fn start(settings: &OtlpSettings) -> Result<TraceExport, TelemetryError> {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(settings.endpoint.as_str())
                .build()
                .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
            let resource = opentelemetry_sdk::Resource::builder()
                .with_service_name(settings.service_name.clone())
                .build();
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource)
                .build();
            let tracer = provider.tracer("attach-gateway");
            Ok(TraceExport {
                provider: Some(provider),
                tracer,
            })
        }

        /// The `tracing` layer that exports the gateway's `request` spans (not log
        /// events, not other crates' spans) through this provider.
        pub fn layer<S>(&self) -> impl Layer<S>
        where
            S: tracing::Subscriber + for<'a> LookupSpan<'a>,
        {
            tracing_opentelemetry::layer()
                .with_tracer(self.tracer.clone())
                .with_location(false)
                .with_threads(false)
                .with_tracked_inactivity(false)
                .with_target(false)
                .with_filter(tracing_subscriber::filter::filter_fn(|m| {
                    m.is_span() && m.target().starts_with("attach_gateway")
                }))
        }

        /// Exports every ended span now (blocks until the collector answered or the
        /// export timed out).
        pub fn flush(&self) -> Result<(), TelemetryError> {
            match &self.provider {
                Some(p) => p
                    .force_flush()
                    .map_err(|e| TelemetryError::Export(e.to_string())),
                None => Ok(()),
            }
        }

        /// Exports what is queued and stops the processor's thread.
        pub fn shutdown(mut self) -> Result<(), TelemetryError> {
            match self.provider.take() {
                Some(p) => p
                    .shutdown()
                    .map_err(|e| TelemetryError::Export(e.to_string())),
                None => Ok(()),
            }
        }
    }

    impl Drop for TraceExport {
        fn drop(&mut self) {
            if let Some(p) = self.provider.take() {
                let _ = p.shutdown();
            }
        }
    }

    /// Makes the caller's context (or none: a new trace) the parent of `span`'s
    /// OpenTelemetry span and returns that span's ids as (trace id, `traceparent`).
    /// `None` when no export layer records `span`.
    pub(super) fn join(span: &tracing::Span, incoming: Option<&str>) -> Option<(String, String)> {
        let parent = match incoming.and_then(super::parse_traceparent) {
            Some((trace, parent, flags)) => {
                let remote = SpanContext::new(
                    TraceId::from_hex(trace).ok()?,
                    SpanId::from_hex(parent).ok()?,
                    TraceFlags::new(u8::from_str_radix(flags, 16).ok()?),
                    true,
                    TraceState::NONE,
                );
                opentelemetry::Context::new().with_remote_span_context(remote)
            }
            None => opentelemetry::Context::new(),
        };
        span.set_parent(parent).ok()?;
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        if !sc.is_valid() {
            return None;
        }
        let trace = format!("{:032x}", sc.trace_id());
        let value = format!(
            "00-{trace}-{:016x}-{:02x}",
            sc.span_id(),
            sc.trace_flags().to_u8()
        );
        Some((trace, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |n| {
            vars.iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn no_endpoint_no_export() {
        assert_eq!(OtlpSettings::resolve(None, env(&[])).unwrap(), None);
        let blank = [("OTEL_EXPORTER_OTLP_ENDPOINT", " ")];
        assert_eq!(OtlpSettings::resolve(None, env(&blank)).unwrap(), None);
    }

    #[test]
    fn flag_is_a_base_url_and_wins() {
        let vars = [
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://env:4318/x"),
            ("OTEL_SERVICE_NAME", "edge-1"),
        ];
        for (flag, want) in [
            ("http://collector:4318", "http://collector:4318/v1/traces"),
            ("http://collector:4318/", "http://collector:4318/v1/traces"),
            (
                "https://otlp.example/otlp/",
                "https://otlp.example/otlp/v1/traces",
            ),
            ("http://c:4318/v1/traces", "http://c:4318/v1/traces"),
        ] {
            let s = OtlpSettings::resolve(Some(flag), env(&vars))
                .unwrap()
                .unwrap();
            assert_eq!(s.endpoint.as_str(), want, "{flag}");
            assert_eq!(s.service_name, "edge-1");
        }
    }

    #[test]
    fn environment_per_the_otlp_exporter_spec() {
        let traces = [
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:4318/custom"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://base:4318"),
        ];
        let s = OtlpSettings::resolve(None, env(&traces)).unwrap().unwrap();
        assert_eq!(s.endpoint.as_str(), "http://t:4318/custom");
        assert_eq!(s.service_name, DEFAULT_SERVICE_NAME);
        let base = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://base:4318")];
        let s = OtlpSettings::resolve(None, env(&base)).unwrap().unwrap();
        assert_eq!(s.endpoint.as_str(), "http://base:4318/v1/traces");
    }

    #[test]
    fn bad_endpoints_are_refused_with_their_source() {
        for (flag, vars) in [
            (Some("collector:4318"), vec![]),
            (Some("grpc://collector:4317"), vec![]),
            (Some("not a url"), vec![]),
            (None, vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "file:///tmp/x")]),
        ] {
            let e = OtlpSettings::resolve(flag, env(&vars)).unwrap_err();
            assert!(matches!(e, TelemetryError::Endpoint { .. }), "{e}");
            let from = if flag.is_some() {
                "--otlp-endpoint"
            } else {
                "OTEL_EXPORTER_OTLP_ENDPOINT"
            };
            assert!(e.to_string().contains(from), "{e}");
        }
    }

    #[test]
    fn traceparent_continues_a_valid_caller_trace_only() {
        let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            parse_traceparent(caller),
            Some(("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", "01"))
        );
        let (trace, value) = traceparent(Some(caller));
        assert_eq!(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(value.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(!value.contains("00f067aa0ba902b7"));
        for bad in [
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-zz-bad-01",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
            assert_ne!(traceparent(Some(bad)).0, "4bf92f3577b34da6a3ce929d0e0e4736");
        }
    }

    #[test]
    fn model_is_bounded_on_a_character_boundary() {
        assert_eq!(bounded("llama3"), "llama3");
        let long = "é".repeat(100);
        let cut = bounded(&long);
        assert!(cut.len() <= MODEL_MAX && cut.len() >= MODEL_MAX - 1);
        assert!(long.starts_with(cut));
    }
}
