//! Logs and traces of a node: the `tracing` subscriber, and OpenTelemetry
//! traces exported over OTLP/gRPC when an endpoint is configured.
//!
//! [`init`] installs one subscriber for the process: an `EnvFilter`
//! (`RUST_LOG`), the log formatter (text, or JSON lines that carry the
//! `trace_id` and `span_id` of the span they were written in), and — only
//! with `--otlp-endpoint` — a `tracing-opentelemetry` layer that turns the
//! node's spans into OpenTelemetry spans. Without an endpoint nothing of
//! OpenTelemetry runs and the hot paths create no spans at all
//! ([`enabled`] is false), so tracing that is off costs nothing.
//!
//! # Export never blocks
//!
//! Finished spans go to the SDK's batch processor, whose own thread exports
//! them in batches. In front of it sits [`BoundedSpanQueue`]: it admits a
//! span only while fewer than `OTEL_BSP_MAX_QUEUE_SIZE` (default 2,048)
//! admitted spans are waiting or being exported, and drops (and counts in
//! `kairos_trace_spans_dropped_total`) the rest. The count of spans in
//! flight goes down when an export ends, succeeded or not
//! ([`ReleasingExporter`]), so a collector that is away or slow costs a
//! node a bounded amount of memory and one atomic increment per span, and
//! never delays a request or the Raft path.
//!
//! # What a trace shows
//!
//! Sampling is decided where a trace would start, before any span is made
//! (`--trace-sampling`, the standard `OTEL_TRACES_SAMPLER_ARG`): a call that
//! arrives with a sampled W3C `traceparent` is traced, one with an unsampled
//! one is not, one without is traced with that probability, as is a fire
//! window and a dispatch with no creator; inside a trace every span is kept
//! ([`in_trace`]). An untraced request makes no span at all, so sampling
//! 1 % costs about 1 % of full tracing. The spans, by where they are made:
//!
//! - `kairos.api` (server): every gRPC call ([`grpc_server_span`]) and REST
//!   call (`crate::rest`), continuing an incoming `traceparent`;
//! - `kairos.forward` (client, on a follower) and `kairos.forwarded`
//!   (server, on the leader): a write forwarded over the peer API, the
//!   context in the request's metadata;
//! - `raft.propose` (the write in the leader's batcher), `raft.commit` (the
//!   log entry carrying it: append, replication, commit; linked to every
//!   write in the entry) and `raft.apply` (the state machine applying it);
//! - `timer.fire_window` (the leader's timer committing due fires: a fired
//!   run's trace starts here), `kairos.dispatch` (the leader assigning a run
//!   to a worker), `kairos.attempt` (the attempt on the worker node, whose
//!   context travels in the work item), `kairos.http` (the `http` handler's
//!   request, which sends `traceparent`); an external worker receives the
//!   context in `Task.trace_context`.
//!
//! The leader remembers, for runs it created itself, the span that created
//! them ([`RunTraces`]), so the dispatch of a triggered or fired run joins
//! that trace. The memory is the leader's own: a run dispatched by a new
//! leader after a failover, or one created by a dependency, starts a trace
//! of its own.
//!
//! Resource attributes: `service.name` (`--trace-service-name`, the
//! standard `OTEL_SERVICE_NAME`, default `kairos`), `service.instance.id` (the
//! node id) and `service.version`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime};

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, SpanData, SpanExporter, SpanProcessor,
};
use opentelemetry_sdk::Resource;
use prometheus_client::metrics::counter::Counter;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::fmt::format::{Format, Json, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::{Layer as _, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;

/// Spans waiting for export or being exported, at most, unless
/// `OTEL_BSP_MAX_QUEUE_SIZE` says otherwise.
const DEFAULT_MAX_QUEUED_SPANS: usize = 2_048;
/// How long one export may take before it is abandoned (its spans are lost).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the node waits for the last spans to leave at shutdown.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(2);
/// Runs whose creating span the leader remembers, at most (oldest forgotten first).
const MAX_REMEMBERED_RUNS: usize = 65_536;

/// Whether spans are exported (an OTLP endpoint is configured).
static ENABLED: AtomicBool = AtomicBool::new(false);

/// `--trace-sampling`, as the bits of an `f64`.
static SAMPLING: AtomicU64 = AtomicU64::new(0);

/// Spans dropped because the export queue was full.
static SPANS_DROPPED: LazyLock<Counter> = LazyLock::new(Counter::default);

/// Whether this process exports traces. Hot paths create their spans only
/// when it does.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Whether the code running now is inside a traced (sampled) span: child
/// spans are made only then, so an untraced request makes no spans.
pub fn in_trace() -> bool {
    enabled() && Context::map_current(|cx| cx.span().span_context().is_sampled())
}

/// Whether `parent` (received from a peer or a caller) is traced: its work
/// here joins its trace only then.
pub fn continues(parent: &Context) -> bool {
    enabled() && parent.span().span_context().is_sampled()
}

/// Whether a trace starts here, where no caller decided: drawn with the
/// `--trace-sampling` probability.
pub fn start_trace() -> bool {
    if !enabled() {
        return false;
    }
    let ratio = f64::from_bits(SAMPLING.load(Ordering::Relaxed));
    ratio >= 1.0 || (ratio > 0.0 && rand::random::<f64>() < ratio)
}

/// The parent a server span for a call carrying `headers` takes, or `None`
/// when the call is not traced: the caller's sampled context, none (a new
/// trace) when the caller sent no valid context and the draw says so.
/// A caller's context that is not sampled is respected.
pub fn admit(headers: &http::HeaderMap) -> Option<Context> {
    if !enabled() {
        return None;
    }
    let parent = extract_headers(headers);
    if parent.span().span_context().is_valid() {
        return continues(&parent).then_some(parent);
    }
    start_trace().then(Context::new)
}

/// The counter of spans dropped by the export queue, for `/metrics`.
pub fn spans_dropped() -> Counter {
    SPANS_DROPPED.clone()
}

/// Where and how traces are exported.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceSettings {
    /// OTLP/gRPC endpoint, e.g. `http://127.0.0.1:4317`.
    pub endpoint: String,
    /// Probability that a trace starting here is sampled, 0 to 1.
    pub sampling: f64,
    /// `service.name` of the spans.
    pub service_name: String,
}

/// What [`init`] started; [`Telemetry::shutdown`] exports what is left.
#[must_use = "dropping the guard does not flush the last spans; call shutdown"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still queued (bounded by a short timeout) and
    /// stops the exporter.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            ENABLED.store(false, Ordering::Relaxed);
            if let Err(e) = provider.shutdown_with_timeout(SHUTDOWN_FLUSH) {
                tracing::debug!("trace export did not finish at shutdown: {e}");
            }
        }
    }
}

/// Installs the process's subscriber: `RUST_LOG` filters (default `info`),
/// logs in `format` on stderr, and, with `traces`, span export as node
/// `node_id`. Must run inside a tokio runtime when `traces` is given. A
/// second call in one process keeps the first subscriber.
pub fn init(format: LogFormat, traces: Option<&TraceSettings>, node_id: u64) -> anyhow::Result<Telemetry> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,openraft=warn,sled=warn,h2=warn,tower=warn")
    });
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let provider = traces.map(|t| tracer_provider(t, node_id)).transpose()?;
    // Only Kairos's own spans are exported: the libraries' (ractor's
    // `Actor` spans, which live as long as an actor) are not a request's.
    let otel = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("kairos"))
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                !meta.is_span() || meta.target().starts_with("kairos")
            }))
    });
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let installed = match format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .event_format(JsonWithTraceIds(
                        tracing_subscriber::fmt::format().json().flatten_event(true),
                    ))
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    if let Some(traces) = traces {
        SAMPLING.store(traces.sampling.to_bits(), Ordering::Relaxed);
    }
    if let (Ok(()), Some(provider)) = (&installed, &provider) {
        opentelemetry::global::set_tracer_provider(provider.clone());
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        ENABLED.store(true, Ordering::Relaxed);
    }
    Ok(Telemetry { provider })
}

/// The SDK's provider: parent-based ratio sampling, the bounded queue in
/// front of the batch processor, the OTLP/gRPC exporter.
fn tracer_provider(settings: &TraceSettings, node_id: u64) -> anyhow::Result<SdkTracerProvider> {
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(settings.endpoint.clone())
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| anyhow::anyhow!("--otlp-endpoint {}: {e}", settings.endpoint))?;
    // The builder reads the standard OTEL_BSP_* variables; an export
    // gives up after the exporter's timeout.
    let config = BatchConfigBuilder::default().build();
    let capacity = std::env::var("OTEL_BSP_MAX_QUEUE_SIZE")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(DEFAULT_MAX_QUEUED_SPANS);
    let in_flight = Arc::new(AtomicUsize::new(0));
    let batch = BatchSpanProcessor::new(
        ReleasingExporter {
            inner: exporter,
            in_flight: in_flight.clone(),
        },
        config,
    );
    let resource = Resource::builder()
        .with_service_name(settings.service_name.clone())
        .with_attributes([
            KeyValue::new("service.instance.id", node_id.to_string()),
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        ])
        .build();
    Ok(SdkTracerProvider::builder()
        .with_resource(resource)
        // Sampled at the source: a span is made only in a trace that is
        // kept (see `admit`, `start_trace`, `in_trace`), so every span made is.
        .with_sampler(Sampler::AlwaysOn)
        .with_span_processor(BoundedSpanQueue {
            inner: batch,
            in_flight,
            capacity,
        })
        .build())
}

/// Admits finished spans to the batch processor while fewer than
/// `capacity` are in flight; drops and counts the others (see the module
/// docs).
#[derive(Debug)]
struct BoundedSpanQueue<P> {
    inner: P,
    /// Spans admitted and not yet through an export.
    in_flight: Arc<AtomicUsize>,
    capacity: usize,
}

impl<P: SpanProcessor> SpanProcessor for BoundedSpanQueue<P> {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        let admitted = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .is_ok();
        if admitted {
            self.inner.on_end(span);
        } else {
            SPANS_DROPPED.inc();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// An exporter that gives back the queue's room for every span it was
/// handed, once the export has ended either way.
#[derive(Debug)]
struct ReleasingExporter<E> {
    inner: E,
    in_flight: Arc<AtomicUsize>,
}

impl<E: SpanExporter> SpanExporter for ReleasingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let count = batch.len();
        let result = self.inner.export(batch).await;
        self.in_flight.fetch_sub(count, Ordering::AcqRel);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// JSON log lines with the current span's `trace_id` and `span_id` first
/// (when the line is written inside a traced span).
struct JsonWithTraceIds(Format<Json>);

impl<S, N> FormatEvent<S, N> for JsonWithTraceIds
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        let ids = enabled()
            .then(|| Context::map_current(|cx| cx.span().span_context().clone()))
            .filter(|span| span.is_valid());
        match (ids, line.strip_prefix('{')) {
            (Some(span), Some(rest)) => write!(
                writer,
                "{{\"trace_id\":\"{}\",\"span_id\":\"{}\",{rest}",
                span.trace_id(),
                span.span_id()
            ),
            _ => writer.write_str(&line),
        }
    }
}

/// Reads a W3C trace context from HTTP headers (gRPC metadata included).
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Writes a W3C trace context into HTTP headers.
struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// A single `traceparent` value, read or written.
#[derive(Default)]
struct TraceParent(Option<String>);

impl Extractor for TraceParent {
    fn get(&self, key: &str) -> Option<&str> {
        (key == "traceparent").then_some(self.0.as_deref()).flatten()
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent"]
    }
}

impl Injector for TraceParent {
    fn set(&mut self, key: &str, value: String) {
        if key == "traceparent" {
            self.0 = Some(value);
        }
    }
}

/// The trace context `headers` carry (an empty context when none or invalid).
pub fn extract_headers(headers: &http::HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// Adds `span`'s trace context to `headers` (`traceparent`), when tracing
/// is on and the span is traced.
pub fn inject_headers(span: &tracing::Span, headers: &mut http::HeaderMap) {
    if enabled() {
        TraceContextPropagator::new().inject_context(&span.context(), &mut HeaderInjector(headers));
    }
}

/// `span`'s context as a W3C `traceparent` value; empty when tracing is off
/// or the span is not traced.
pub fn traceparent(span: &tracing::Span) -> String {
    if !enabled() {
        return String::new();
    }
    let mut value = TraceParent::default();
    TraceContextPropagator::new().inject_context(&span.context(), &mut value);
    value.0.unwrap_or_default()
}

/// The context a `traceparent` value names (empty when it names none).
pub fn context_of(traceparent: &str) -> Context {
    if traceparent.is_empty() {
        return Context::new();
    }
    TraceContextPropagator::new().extract(&TraceParent(Some(traceparent.to_string())))
}

/// Makes `parent` (a remote context) the parent of `span`, when it names one.
pub fn continue_from(span: &tracing::Span, parent: Context) {
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// The server span of a gRPC call on the client API: named after the
/// method, continuing the caller's `traceparent`. A disabled span when
/// the call is not traced ([`admit`]).
pub fn grpc_server_span(request: &http::Request<()>) -> tracing::Span {
    let Some(parent) = admit(request.headers()) else {
        return tracing::Span::none();
    };
    let path = request.uri().path().trim_start_matches('/');
    let (service, method) = path.split_once('/').unwrap_or((path, ""));
    let span = tracing::info_span!(
        parent: None,
        "kairos.api",
        otel.name = %path,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
    );
    continue_from(&span, parent);
    span
}

/// The spans that created runs on this node while it led, by run: the
/// dispatch of such a run joins the creator's trace. Bounded
/// ([`MAX_REMEMBERED_RUNS`], oldest forgotten first); filled by the
/// leader's apply of a traced write, so before the dispatcher can see the
/// run.
#[derive(Default)]
pub struct RunTraces {
    inner: Mutex<RememberedRuns>,
}

#[derive(Default)]
struct RememberedRuns {
    by_run: HashMap<u64, Context>,
    order: VecDeque<u64>,
}

impl RunTraces {
    /// Remembers that the span `creator` created `runs`.
    pub fn remember(&self, creator: &Context, runs: impl IntoIterator<Item = u64>) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for run in runs {
            if inner.by_run.insert(run, creator.clone()).is_none() {
                inner.order.push_back(run);
            }
            while inner.order.len() > MAX_REMEMBERED_RUNS {
                if let Some(oldest) = inner.order.pop_front() {
                    inner.by_run.remove(&oldest);
                }
            }
        }
    }

    /// The context that created `run`, if remembered.
    pub fn creator(&self, run: u64) -> Option<Context> {
        if !enabled() {
            return None;
        }
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.by_run.get(&run).cloned()
    }
}

/// What the leader's tracing shares between the proposer and the state
/// machine (whose apply runs in openraft's task, outside any request's
/// span): the traced writes of the entry in flight, when recent entries
/// were applied, and which span created which run.
#[derive(Default)]
pub struct LeaderTraces {
    /// When the leader's recent entries with traced writes were applied.
    pub apply_times: ApplyTimes,
    /// The spans that created runs, for their dispatch.
    pub runs: RunTraces,
    /// The entry the leader's batcher has in flight, if any of its writes is traced.
    proposal: Mutex<Option<TracedEntry>>,
}

/// An entry in flight with traced writes: its stamp (to recognise it when
/// applied) and the context of each of its writes (`None` when untraced),
/// in the entry's order.
#[derive(Clone, Debug)]
pub struct TracedEntry {
    /// The entry's `at_ms`.
    pub at_ms: i64,
    /// The entry's principal.
    pub principal: String,
    /// Per write of the entry, its span's context.
    pub writes: Vec<Option<Context>>,
}

impl LeaderTraces {
    /// Notes the entry about to be proposed (one entry is in flight at a
    /// time: see the write batcher).
    pub fn proposing(&self, entry: TracedEntry) {
        *self.proposal.lock().unwrap_or_else(|p| p.into_inner()) = Some(entry);
    }

    /// Forgets the entry in flight once its proposal has ended.
    pub fn proposed(&self) {
        self.proposal.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// The traced writes of the entry stamped `at_ms` by `principal`, if it
    /// is the one in flight (taken: asked once, by the apply).
    pub fn take_proposal(&self, at_ms: i64, principal: &str) -> Option<Vec<Option<Context>>> {
        let mut proposal = self.proposal.lock().unwrap_or_else(|p| p.into_inner());
        match proposal.as_ref() {
            Some(entry) if entry.at_ms == at_ms && entry.principal == principal => {
                proposal.take().map(|entry| entry.writes)
            }
            _ => None,
        }
    }
}

/// When the state machine applied the leader's most recent entries with
/// traced writes, so the proposer can show the apply of its entry as a
/// `raft.apply` span (the apply runs in openraft's task, outside the
/// proposal's span).
#[derive(Default)]
pub struct ApplyTimes {
    recent: Mutex<VecDeque<(u64, SystemTime, SystemTime)>>,
}

/// Entries whose apply times are kept, at most.
const KEPT_APPLY_TIMES: usize = 256;

impl ApplyTimes {
    /// Records that entry `index` was applied from `started` to `ended`.
    pub fn record(&self, index: u64, started: SystemTime, ended: SystemTime) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == KEPT_APPLY_TIMES {
            recent.pop_front();
        }
        recent.push_back((index, started, ended));
    }

    /// When entry `index` was applied, if that is still known.
    pub fn of(&self, index: u64) -> Option<(SystemTime, SystemTime)> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent
            .iter()
            .rev()
            .find(|(i, _, _)| *i == index)
            .map(|&(_, started, ended)| (started, ended))
    }
}

/// Exports a span that already happened, from `started` to `ended`, as a
/// child of `parent` (when `parent` is traced).
pub fn record_past_span(
    name: &'static str,
    parent: &tracing::Span,
    started: SystemTime,
    ended: SystemTime,
    attributes: Vec<KeyValue>,
) {
    use opentelemetry::trace::{Span as _, Tracer as _};
    if !enabled() {
        return;
    }
    let parent = parent.context();
    if !parent.span().span_context().is_sampled() {
        return;
    }
    let tracer = opentelemetry::global::tracer("kairos");
    let mut span = tracer
        .span_builder(name)
        .with_start_time(started)
        .with_attributes(attributes)
        .start_with_context(&tracer, &parent);
    span.end_with_timestamp(ended);
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

    #[test]
    fn a_traceparent_round_trips_through_headers_and_strings() {
        let remote = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let cx = Context::new().with_remote_span_context(remote.clone());
        let mut headers = http::HeaderMap::new();
        TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(&mut headers));
        assert_eq!(
            headers["traceparent"],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        let back = extract_headers(&headers);
        assert_eq!(back.span().span_context().trace_id(), remote.trace_id());
        let parsed = context_of("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert_eq!(parsed.span().span_context().span_id(), remote.span_id());
        assert!(!context_of("").span().span_context().is_valid());
        assert!(!context_of("garbage").span().span_context().is_valid());
    }

    /// Counts exports and holds each until released.
    #[derive(Debug, Default)]
    struct CountingExporter {
        exported: Arc<AtomicUsize>,
    }

    impl SpanExporter for CountingExporter {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.exported.fetch_add(batch.len(), Ordering::SeqCst);
            Ok(())
        }
    }

    /// A processor that keeps what it is given (an export that never ends).
    #[derive(Debug, Default)]
    struct Holding {
        held: Mutex<Vec<SpanData>>,
    }

    impl SpanProcessor for Holding {
        fn on_start(&self, _: &mut opentelemetry_sdk::trace::Span, _: &Context) {}
        fn on_end(&self, span: SpanData) {
            self.held.lock().unwrap().push(span);
        }
        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
            Ok(())
        }
    }

    fn finished_span(provider: &SdkTracerProvider) {
        use opentelemetry::trace::{Span, Tracer};
        provider.tracer("test").start("s").end();
    }

    #[test]
    fn a_full_queue_drops_and_counts_spans_and_room_returns_after_an_export() {
        let in_flight = Arc::new(AtomicUsize::new(0));
        let queue = BoundedSpanQueue {
            inner: Holding::default(),
            in_flight: in_flight.clone(),
            capacity: 3,
        };
        let provider = SdkTracerProvider::builder().with_span_processor(queue).build();
        let dropped_before = SPANS_DROPPED.get();
        for _ in 0..5 {
            finished_span(&provider);
        }
        assert_eq!(in_flight.load(Ordering::SeqCst), 3);
        assert!(SPANS_DROPPED.get() - dropped_before >= 2);

        // An export of two gives their room back.
        let exported = Arc::new(AtomicUsize::new(0));
        let exporter = ReleasingExporter {
            inner: CountingExporter {
                exported: exported.clone(),
            },
            in_flight: in_flight.clone(),
        };
        let spans = vec![sample_span(), sample_span()];
        futures::executor::block_on(exporter.export(spans)).unwrap();
        assert_eq!(exported.load(Ordering::SeqCst), 2);
        assert_eq!(in_flight.load(Ordering::SeqCst), 1);
        finished_span(&provider);
        assert_eq!(in_flight.load(Ordering::SeqCst), 2);
    }

    fn sample_span() -> SpanData {
        SpanData {
            span_context: SpanContext::empty_context(),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: opentelemetry::trace::SpanKind::Internal,
            name: "s".into(),
            start_time: std::time::SystemTime::UNIX_EPOCH,
            end_time: std::time::SystemTime::UNIX_EPOCH,
            attributes: Vec::new(),
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status: opentelemetry::trace::Status::Unset,
            instrumentation_scope: Default::default(),
        }
    }
}
