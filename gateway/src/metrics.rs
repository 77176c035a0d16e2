//! What the gateway exposes at `/metrics`, in the Prometheus text exposition format 0.0.4:
//! ingest counters, rejections by reason, quarantine and series sizes, the store's commit
//! latency and the HTTP API's latency by route, method and status (histograms), and the
//! gateway's MQTT session (re)connections.
//!
//! The metrics are prometheus-client's (atomic counters, histograms) in one `Registry`, written
//! by its 0.0.4 text encoder: every family has a `# HELP` and a `# TYPE` line before its
//! samples; a histogram has, per label set, cumulative `_bucket{le="..."}` samples ending with
//! `le="+Inf"`, then `_sum` and `_count`; label values are escaped (`\\`, `\"`, `\n`).
//!
//! The API's latency is recorded by [`observe_requests`], a middleware wrapped around every
//! route. Its `route` label is the route's pattern (`/api/v1/subjects/{person_id}/records`),
//! never the path, so ids and names never become label values; paths no route serves share
//! `route="unmatched"`.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::web;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use phr_schema::Ack;

/// Upper bounds, in seconds, of the latency histograms' buckets (0.5 ms to 10 s).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The `route` label of a request no route serves.
pub const UNMATCHED_ROUTE: &str = "unmatched";

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS.iter().copied())
}

/// Label set of one API latency series, in the order the labels are written.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, EncodeLabelSet)]
struct HttpLabels {
    route: String,
    method: &'static str,
    status: u16,
}

/// A labelled family whose series are written in label order. prometheus-client's `Family`
/// keeps a `HashMap`, so its series would come out in a different order at every scrape;
/// this one also declares its family (`# HELP`, `# TYPE`) before any series exists.
#[derive(Debug, Clone)]
struct SortedFamily<L, M> {
    series: Arc<Mutex<BTreeMap<L, M>>>,
    new_metric: fn() -> M,
}

impl<L: Ord + Clone, M: Clone> SortedFamily<L, M> {
    fn new(new_metric: fn() -> M) -> Self {
        Self {
            series: Arc::default(),
            new_metric,
        }
    }

    /// `f` on the metric of `labels` (created on first use).
    fn with<R>(&self, labels: &L, f: impl FnOnce(&M) -> R) -> R {
        let mut series = lock(&self.series);
        match series.get(labels) {
            Some(m) => f(m),
            None => f(series.entry(labels.clone()).or_insert_with(self.new_metric)),
        }
    }
}

impl<L, M> EncodeMetric for SortedFamily<L, M>
where
    L: EncodeLabelSet,
    M: EncodeMetric + TypedMetric,
{
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, m) in lock(&self.series).iter() {
            m.encode(encoder.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        M::TYPE
    }
}

/// The ingest and API counters, histograms and gauges, registered once in a
/// prometheus-client [`Registry`] that [`Metrics::render`] encodes. Counters are atomics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    batches_received: Counter,
    batches_acked: Counter,
    records_stored: Counter,
    records_duplicate: Counter,
    records_quarantined: Counter,
    rejected: SortedFamily<[(&'static str, &'static str); 1], Counter>,
    store_errors: Counter,
    batches_refused_unread: Counter,
    store_commits: Counter,
    /// Ingest transactions: latency distribution.
    commits: Histogram,
    mqtt_connects: Counter,
    /// Open MQTT connections at the embedded broker, as its router last reported them.
    mqtt_connections: Gauge<u64, AtomicU64>,
    /// Row counts, set from the store at each scrape.
    series_records: Gauge<u64, AtomicU64>,
    quarantine_records: Gauge<u64, AtomicU64>,
    http: SortedFamily<HttpLabels, Histogram>,
    /// What the embedded broker's front refused: connects, publishes, subscriptions.
    mqtt_refused: [Counter; 3],
}

/// The `what` label values of `phr_mqtt_refused_total`, in the order of `mqtt_refused`.
pub const MQTT_REFUSED: [&str; 3] = ["connect", "publish", "subscribe"];

/// The name kept from before the commit histogram, for existing dashboards and alerts.
const LEGACY_COMMIT_SECONDS: &str = "phr_store_commit_seconds_sum";
const COMMIT_DURATION: &str = "phr_store_commit_duration_seconds";

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        // prometheus-client appends `_total` to a counter's name and a full stop to each help.
        let mut counter = |name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let batches_received = counter("phr_batches_received", "MQTT record batches received");
        let batches_acked = counter("phr_batches_acked", "Batches committed and acked");
        let records_stored = counter("phr_records_stored", "Records stored for a person");
        let records_duplicate =
            counter("phr_records_duplicate", "Records already stored (resends)");
        let records_quarantined = counter("phr_records_quarantined", "Records no binding covers");
        let store_errors = counter(
            "phr_store_errors",
            "Ingest transactions that failed (batches not acked)",
        );
        let batches_refused_unread = counter(
            "phr_batches_refused_unread",
            "Batches (and nearby reports) refused unread: bridge not enrolled, or not sealed with its channel key; invalid nearby reports",
        );
        let store_commits = counter("phr_store_commits", "Ingest transactions committed");
        let mqtt_connects = counter(
            "phr_mqtt_connects",
            "Times the gateway's MQTT session connected (more than once means reconnects)",
        );
        let mqtt_connections = Gauge::default();
        registry.register(
            "phr_mqtt_connections",
            "Open MQTT connections at the embedded broker (bridges, the gateway itself), as its router last reported them (every 5 s while messages flow; 0 with an external broker)",
            mqtt_connections.clone(),
        );
        let commits = latency_histogram();
        registry.register(
            COMMIT_DURATION,
            "Time from the start of an ingest transaction to its durable commit",
            commits.clone(),
        );
        let rejected = SortedFamily::new(Counter::default);
        registry.register(
            "phr_records_rejected",
            "Records rejected, by reason",
            rejected.clone(),
        );
        let series_records = Gauge::default();
        registry.register(
            "phr_series_records",
            "Records in the series store",
            series_records.clone(),
        );
        let quarantine_records = Gauge::default();
        registry.register(
            "phr_quarantine_records",
            "Records held in quarantine",
            quarantine_records.clone(),
        );
        let refused = SortedFamily::new(Counter::default);
        let mqtt_refused = MQTT_REFUSED.map(|what| refused.with(&[("what", what)], Counter::clone));
        registry.register(
            "phr_mqtt_refused",
            "What the embedded broker refused: connections without valid credentials, publishes and subscriptions outside the client's own topics",
            refused,
        );
        let http = SortedFamily::new(latency_histogram);
        registry.register(
            "phr_http_request_duration_seconds",
            "HTTP API requests by route pattern, method and status: time until the response was ready",
            http.clone(),
        );
        Self {
            registry,
            batches_received,
            batches_acked,
            records_stored,
            records_duplicate,
            records_quarantined,
            rejected,
            store_errors,
            batches_refused_unread,
            store_commits,
            commits,
            mqtt_connects,
            mqtt_connections,
            series_records,
            quarantine_records,
            http,
            mqtt_refused,
        }
    }
}

impl Metrics {
    pub fn received(&self, n: usize) {
        self.batches_received.inc_by(n as u64);
    }

    pub fn committed(&self, acks: &[Ack], took: Duration) {
        self.commits.observe(took.as_secs_f64());
        self.store_commits.inc();
        for a in acks {
            self.batches_acked.inc();
            self.records_stored.inc_by(u64::from(a.stored));
            self.records_duplicate.inc_by(u64::from(a.duplicate));
            self.records_quarantined.inc_by(u64::from(a.quarantined));
            if let Some(e) = a.batch_error {
                let empty = u64::from(a.rejected.is_empty());
                self.rejected
                    .with(&[("reason", e.code())], |c| c.inc_by(empty));
            }
            for r in &a.rejected {
                self.rejected
                    .with(&[("reason", r.reason.code())], Counter::inc);
            }
        }
    }

    /// The consumer's MQTT session (re)connected.
    pub fn mqtt_connected(&self) {
        self.mqtt_connects.inc();
    }

    /// One refusal by the embedded broker's front; `what` is one of [`MQTT_REFUSED`].
    pub fn mqtt_refused(&self, what: &str) {
        if let Some(i) = MQTT_REFUSED.iter().position(|w| *w == what) {
            self.mqtt_refused[i].inc();
        }
    }

    /// The embedded broker's count of open MQTT connections.
    pub fn set_mqtt_connections(&self, n: u64) {
        self.mqtt_connections.set(n);
    }

    pub fn store_error(&self) {
        self.store_errors.inc();
    }

    /// A batch refused before it could be read: its bridge is not enrolled, or it did not open
    /// with the bridge's channel key. Nearby reports refused (so, or invalid) count here too.
    pub fn refused_batch(&self) {
        self.batches_refused_unread.inc();
    }

    /// One API request answered: its route pattern (`None`: no route matched), method,
    /// status, and the time until the response was ready.
    pub fn observe_http(&self, route: Option<&str>, method: &Method, status: u16, took: Duration) {
        let labels = HttpLabels {
            route: route.unwrap_or(UNMATCHED_ROUTE).to_owned(),
            method: method_label(method),
            status,
        };
        self.http.with(&labels, |h| h.observe(took.as_secs_f64()));
    }

    /// The Prometheus text exposition (format 0.0.4); `series` and `quarantine` are current
    /// row counts.
    pub fn render(&self, series: u64, quarantine: u64) -> String {
        self.series_records.set(series);
        self.quarantine_records.set(quarantine);
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        // prometheus-client names every counter `<name>_total`, so the old name is written
        // here, with the histogram's sum exactly as encoded above.
        let sum_line = format!("{COMMIT_DURATION}_sum ");
        let sum = out
            .lines()
            .find_map(|l| l.strip_prefix(&sum_line))
            .unwrap_or("0")
            .to_owned();
        out.push_str(&format!(
            "# HELP {LEGACY_COMMIT_SECONDS} Time spent in ingest transactions.\n\
             # TYPE {LEGACY_COMMIT_SECONDS} counter\n\
             {LEGACY_COMMIT_SECONDS} {sum}\n"
        ));
        out
    }
}

/// The middleware that times every request (register it outermost, so rate-limited
/// requests count too). Reads the [`Metrics`] from the app data (`web::Data<Metrics>`).
pub async fn observe_requests(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let Some(metrics) = req.app_data::<web::Data<Metrics>>().cloned() else {
        return next.call(req).await;
    };
    let method = req.method().clone();
    // Read after routing from the response's request; this is for an error that has none.
    let pattern = req.match_pattern();
    let result = next.call(req).await;
    let (route, status) = match &result {
        Ok(res) => (res.request().match_pattern(), res.status()),
        Err(e) => (pattern, e.as_response_error().status_code()),
    };
    metrics.observe_http(
        route.as_deref(),
        &method,
        status.as_u16(),
        started.elapsed(),
    );
    result
}

/// The `method` label: the standard methods by name, anything else `other` (so that a
/// client cannot make up label values).
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Who may scrape `/metrics` on a listener (app data): whether this listener serves it at
/// all (not the public one when `metrics.listen` is set), and the token a scraper must send.
/// The token is kept as its SHA-256 and compared in constant time.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    served_here: bool,
    token_sha256: Option<[u8; 32]>,
}

impl Scrape {
    pub fn new(served_here: bool, token: Option<&str>) -> Self {
        Self {
            served_here,
            token_sha256: token.map(sha256),
        }
    }

    /// 404 where metrics are not served; 401 without the configured token.
    pub fn check(
        &self,
        headers: &actix_web::http::header::HeaderMap,
    ) -> Result<(), crate::api::error::ApiError> {
        use crate::api::error::ApiError;
        if !self.served_here {
            return Err(ApiError::NotFound);
        }
        let Some(expected) = &self.token_sha256 else {
            return Ok(());
        };
        // Hashing first makes the comparison's time independent of both lengths.
        let given = crate::api::bearer_token(headers).map(sha256);
        match given {
            Some(g) if crate::auth::same_secret(g, expected) => Ok(()),
            _ => Err(ApiError::Unauthorized),
        }
    }
}

fn sha256(s: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use actix_web::test as web_test;
    use actix_web::{App, HttpResponse};

    /// The sample lines of `text` whose metric name is `name` (exactly).
    fn samples<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
            })
            .collect()
    }

    fn value(line: &str) -> f64 {
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    #[test]
    fn histogram_buckets_are_cumulative_inclusive_and_end_with_inf() {
        let family = SortedFamily::new(|| Histogram::new([0.1, 1.0]));
        for v in [0.05, 0.1, 0.5, 1.0, 7.0] {
            family.with(&[("route", "/a")], |h| h.observe(v));
        }
        let mut registry = Registry::default();
        registry.register("x_seconds", "X", family);
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).unwrap();
        assert_eq!(
            out,
            "# HELP x_seconds X.\n\
             # TYPE x_seconds histogram\n\
             x_seconds_bucket{route=\"/a\",le=\"0.1\"} 2\n\
             x_seconds_bucket{route=\"/a\",le=\"1\"} 4\n\
             x_seconds_bucket{route=\"/a\",le=\"+Inf\"} 5\n\
             x_seconds_sum{route=\"/a\"} 8.65\n\
             x_seconds_count{route=\"/a\"} 5\n"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::default();
        m.observe_http(Some("a\\b\"c\nd"), &Method::GET, 200, Duration::ZERO);
        assert!(
            m.render(0, 0)
                .contains("{route=\"a\\\\b\\\"c\\nd\",method=\"GET\",status=\"200\"} 1\n"),
            "backslash, quote and line feed"
        );
        let m = Metrics::default();
        m.observe_http(
            Some("/x/{id:\\d+}/\"q\""),
            &Method::GET,
            200,
            Duration::from_millis(3),
        );
        let text = m.render(0, 0);
        assert!(
            text.contains(
                "phr_http_request_duration_seconds_count{route=\"/x/{id:\\\\d+}/\\\"q\\\"\",method=\"GET\",status=\"200\"} 1"
            ),
            "{text}"
        );
    }

    #[test]
    fn every_family_is_declared_once_before_its_samples() {
        let m = Metrics::default();
        m.committed(&[], Duration::from_millis(4));
        m.observe_http(
            Some("/healthz"),
            &Method::GET,
            200,
            Duration::from_micros(300),
        );
        m.observe_http(
            None,
            &Method::from_bytes(b"BREW").unwrap(),
            404,
            Duration::ZERO,
        );
        m.mqtt_refused("publish");
        m.mqtt_refused("not-a-label");
        let text = m.render(7, 3);
        let mut declared: Vec<(String, String)> = Vec::new();
        let mut helped = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(
                    declared.iter().all(|(n, _)| n != name),
                    "{name} declared twice"
                );
                assert!(
                    helped.last() == Some(&name.to_owned()),
                    "HELP before TYPE: {name}"
                );
                declared.push((name.into(), kind.into()));
            } else if let Some(rest) = line.strip_prefix("# HELP ") {
                helped.push(rest.split_once(' ').unwrap().0.to_owned());
            } else {
                let name = line.split(['{', ' ']).next().unwrap();
                let (family, kind) = declared.last().unwrap();
                let ok = match kind.as_str() {
                    "histogram" => ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| name.strip_suffix(s) == Some(family)),
                    _ => name == family,
                };
                assert!(
                    ok,
                    "{line} is not a sample of the family declared last ({family})"
                );
            }
        }
        assert!(text.contains("phr_mqtt_refused_total{what=\"subscribe\"} 0\n"));
        assert!(text.contains("phr_mqtt_refused_total{what=\"publish\"} 1\n"));
        assert!(!text.contains("not-a-label"));
        assert_eq!(value(samples(&text, "phr_series_records")[0]), 7.0);
        assert_eq!(value(samples(&text, "phr_quarantine_records")[0]), 3.0);
        assert_eq!(value(samples(&text, "phr_store_commits_total")[0]), 1.0);
        assert_eq!(
            value(samples(&text, "phr_store_commit_duration_seconds_count")[0]),
            1.0
        );
        assert!(text.contains("phr_store_commit_duration_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("phr_store_commit_duration_seconds_bucket{le=\"0.0025\"} 0\n"));
        assert!(text.contains(
            "phr_http_request_duration_seconds_count{route=\"unmatched\",method=\"other\",status=\"404\"} 1\n"
        ));
        // The old name of the commit time still answers, with the histogram's sum.
        assert!((value(samples(&text, "phr_store_commit_seconds_sum")[0]) - 0.004).abs() < 1e-9);
    }

    #[actix_web::test]
    async fn the_middleware_labels_requests_by_route_pattern_not_path() {
        let metrics = web::Data::new(Metrics::default());
        let app = web_test::init_service(
            App::new()
                .app_data(metrics.clone())
                .wrap(actix_web::middleware::from_fn(observe_requests))
                .service(web::scope("/api").route(
                    "/people/{person_id}/records",
                    web::get().to(|| async { HttpResponse::Ok().finish() }),
                ))
                .default_service(web::to(|| async { HttpResponse::NotFound().finish() })),
        )
        .await;
        for path in [
            "/api/people/alice/records",
            "/api/people/bob/records",
            "/nope/alice",
        ] {
            web_test::call_service(&app, web_test::TestRequest::get().uri(path).to_request()).await;
        }
        let text = metrics.render(0, 0);
        let counts = samples(&text, "phr_http_request_duration_seconds_count");
        assert_eq!(
            counts,
            vec![
                "phr_http_request_duration_seconds_count{route=\"/api/people/{person_id}/records\",method=\"GET\",status=\"200\"} 2",
                "phr_http_request_duration_seconds_count{route=\"unmatched\",method=\"GET\",status=\"404\"} 1",
            ]
        );
        assert!(!text.contains("alice") && !text.contains("bob"), "{text}");
    }
}
