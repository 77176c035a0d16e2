//! What the gateway exposes at `/metrics`, in the Prometheus text exposition format 0.0.4:
//! ingest counters, rejections by reason, quarantine and series sizes, the store's commit
//! latency and the HTTP API's latency by route, method and status (histograms), and the
//! gateway's MQTT session (re)connections.
//!
//! Every family has a `# HELP` and a `# TYPE` line before its samples; a histogram has, per
//! label set, cumulative `_bucket{le="..."}` samples ending with `le="+Inf"`, then `_sum` and
//! `_count`. Label values are escaped (`\\`, `\"`, `\n`).
//!
//! The API's latency is recorded by [`observe_requests`], a middleware wrapped around every
//! route. Its `route` label is the route's pattern (`/api/v1/subjects/{person_id}/records`),
//! never the path, so ids and names never become label values; paths no route serves share
//! `route="unmatched"`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::web;

use phr_schema::Ack;

/// Upper bounds, in seconds, of the latency histograms' buckets (0.5 ms to 10 s).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The `route` label of a request no route serves.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// A Prometheus histogram: observations counted in buckets by upper bound, with their sum.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket, not cumulative; the last entry is above every bound (`+Inf`).
    counts: Vec<u64>,
    sum: f64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new(LATENCY_BUCKETS)
    }
}

impl Histogram {
    /// An empty histogram with buckets at `bounds` (ascending) and `+Inf`.
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
        }
    }

    pub fn observe(&mut self, value: f64) {
        // The first bucket whose bound is at least the value (`le` is inclusive).
        let i = self.bounds.partition_point(|b| *b < value);
        self.counts[i] += 1;
        self.sum += value;
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// `(le, cumulative count)` for every bucket, `+Inf` last.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut total = 0;
        self.bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(&self.counts)
            .map(|(le, n)| {
                total += n;
                (le, total)
            })
            .collect()
    }

    /// This histogram's samples for one label set (`labels` without `le`).
    fn render(&self, out: &mut String, name: &str, labels: &[(&str, &str)]) {
        for (le, n) in self.cumulative() {
            let le = format_value(le);
            let mut with_le = labels.to_vec();
            with_le.push(("le", &le));
            sample(out, &format!("{name}_bucket"), &with_le, &n.to_string());
        }
        sample(out, &format!("{name}_sum"), labels, &format_value(self.sum));
        sample(
            out,
            &format!("{name}_count"),
            labels,
            &self.count().to_string(),
        );
    }
}

/// Label set of one API latency series.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct HttpKey {
    route: String,
    method: &'static str,
    status: u16,
}

#[derive(Debug, Default)]
pub struct Metrics {
    batches_received: AtomicU64,
    batches_acked: AtomicU64,
    records_stored: AtomicU64,
    records_duplicate: AtomicU64,
    records_quarantined: AtomicU64,
    rejected: Mutex<BTreeMap<&'static str, u64>>,
    store_errors: AtomicU64,
    batches_refused_unread: AtomicU64,
    /// Ingest transactions: count, sum and latency distribution.
    commits: Mutex<Histogram>,
    mqtt_connects: AtomicU64,
    /// Open MQTT connections at the embedded broker, as its router last reported them.
    mqtt_connections: AtomicU64,
    http: Mutex<BTreeMap<HttpKey, Histogram>>,
    /// What the embedded broker's front refused: connects, publishes, subscriptions.
    mqtt_refused: [AtomicU64; 3],
}

/// The `what` label values of `phr_mqtt_refused_total`, in the order of `mqtt_refused`.
pub const MQTT_REFUSED: [&str; 3] = ["connect", "publish", "subscribe"];

impl Metrics {
    pub fn received(&self, n: usize) {
        self.batches_received.fetch_add(n as u64, Relaxed);
    }

    pub fn committed(&self, acks: &[Ack], took: Duration) {
        lock(&self.commits).observe(took.as_secs_f64());
        let mut rejected = lock(&self.rejected);
        for a in acks {
            self.batches_acked.fetch_add(1, Relaxed);
            self.records_stored.fetch_add(u64::from(a.stored), Relaxed);
            self.records_duplicate
                .fetch_add(u64::from(a.duplicate), Relaxed);
            self.records_quarantined
                .fetch_add(u64::from(a.quarantined), Relaxed);
            if let Some(e) = a.batch_error {
                *rejected.entry(e.code()).or_default() += u64::from(a.rejected.is_empty());
            }
            for r in &a.rejected {
                *rejected.entry(r.reason.code()).or_default() += 1;
            }
        }
    }

    /// The consumer's MQTT session (re)connected.
    pub fn mqtt_connected(&self) {
        self.mqtt_connects.fetch_add(1, Relaxed);
    }

    /// The embedded broker's count of open MQTT connections.
    /// One refusal by the embedded broker's front; `what` is one of [`MQTT_REFUSED`].
    pub fn mqtt_refused(&self, what: &str) {
        if let Some(i) = MQTT_REFUSED.iter().position(|w| *w == what) {
            self.mqtt_refused[i].fetch_add(1, Relaxed);
        }
    }

    pub fn set_mqtt_connections(&self, n: u64) {
        self.mqtt_connections.store(n, Relaxed);
    }

    pub fn store_error(&self) {
        self.store_errors.fetch_add(1, Relaxed);
    }

    /// A batch refused before it could be read: its bridge is not enrolled, or it did not open
    /// with the bridge's channel key. Nearby reports refused (so, or invalid) count here too.
    pub fn refused_batch(&self) {
        self.batches_refused_unread.fetch_add(1, Relaxed);
    }

    /// One API request answered: its route pattern (`None`: no route matched), method,
    /// status, and the time until the response was ready.
    pub fn observe_http(&self, route: Option<&str>, method: &Method, status: u16, took: Duration) {
        let key = HttpKey {
            route: route.unwrap_or(UNMATCHED_ROUTE).to_owned(),
            method: method_label(method),
            status,
        };
        lock(&self.http)
            .entry(key)
            .or_default()
            .observe(took.as_secs_f64());
    }

    /// The Prometheus exposition; `series` and `quarantine` are current row counts.
    pub fn render(&self, series: u64, quarantine: u64) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, v: u64| {
            family(&mut out, name, help, "counter");
            sample(&mut out, name, &[], &v.to_string());
        };
        counter(
            "phr_batches_received_total",
            "MQTT record batches received.",
            self.batches_received.load(Relaxed),
        );
        counter(
            "phr_batches_acked_total",
            "Batches committed and acked.",
            self.batches_acked.load(Relaxed),
        );
        counter(
            "phr_records_stored_total",
            "Records stored for a person.",
            self.records_stored.load(Relaxed),
        );
        counter(
            "phr_records_duplicate_total",
            "Records already stored (resends).",
            self.records_duplicate.load(Relaxed),
        );
        counter(
            "phr_records_quarantined_total",
            "Records no binding covers.",
            self.records_quarantined.load(Relaxed),
        );
        counter(
            "phr_store_errors_total",
            "Ingest transactions that failed (batches not acked).",
            self.store_errors.load(Relaxed),
        );
        counter(
            "phr_batches_refused_unread_total",
            "Batches (and nearby reports) refused unread: bridge not enrolled, or not sealed with its channel key; invalid nearby reports.",
            self.batches_refused_unread.load(Relaxed),
        );
        let commits = lock(&self.commits).clone();
        counter(
            "phr_store_commits_total",
            "Ingest transactions committed.",
            commits.count(),
        );
        counter(
            "phr_mqtt_connects_total",
            "Times the gateway's MQTT session connected (more than once means reconnects).",
            self.mqtt_connects.load(Relaxed),
        );
        family(
            &mut out,
            "phr_mqtt_connections",
            "Open MQTT connections at the embedded broker (bridges, the gateway itself), as its router last reported them (every 5 s while messages flow; 0 with an external broker).",
            "gauge",
        );
        sample(
            &mut out,
            "phr_mqtt_connections",
            &[],
            &self.mqtt_connections.load(Relaxed).to_string(),
        );
        // Kept for existing dashboards and alerts; the histogram below has the same sum.
        family(
            &mut out,
            "phr_store_commit_seconds_sum",
            "Time spent in ingest transactions.",
            "counter",
        );
        sample(
            &mut out,
            "phr_store_commit_seconds_sum",
            &[],
            &format_value(commits.sum()),
        );
        family(
            &mut out,
            "phr_store_commit_duration_seconds",
            "Time from the start of an ingest transaction to its durable commit.",
            "histogram",
        );
        commits.render(&mut out, "phr_store_commit_duration_seconds", &[]);

        family(
            &mut out,
            "phr_records_rejected_total",
            "Records rejected, by reason.",
            "counter",
        );
        for (reason, n) in lock(&self.rejected).iter() {
            sample(
                &mut out,
                "phr_records_rejected_total",
                &[("reason", reason)],
                &n.to_string(),
            );
        }
        family(
            &mut out,
            "phr_series_records",
            "Records in the series store.",
            "gauge",
        );
        sample(&mut out, "phr_series_records", &[], &series.to_string());
        family(
            &mut out,
            "phr_quarantine_records",
            "Records held in quarantine.",
            "gauge",
        );
        sample(
            &mut out,
            "phr_quarantine_records",
            &[],
            &quarantine.to_string(),
        );

        family(
            &mut out,
            "phr_mqtt_refused_total",
            "What the embedded broker refused: connections without valid credentials, publishes and subscriptions outside the client's own topics.",
            "counter",
        );
        for (what, n) in MQTT_REFUSED.iter().zip(&self.mqtt_refused) {
            sample(
                &mut out,
                "phr_mqtt_refused_total",
                &[("what", what)],
                &n.load(Relaxed).to_string(),
            );
        }

        family(
            &mut out,
            "phr_http_request_duration_seconds",
            "HTTP API requests by route pattern, method and status: time until the response was ready.",
            "histogram",
        );
        let http = lock(&self.http).clone();
        for (k, h) in &http {
            let status = k.status.to_string();
            h.render(
                &mut out,
                "phr_http_request_duration_seconds",
                &[
                    ("route", &k.route),
                    ("method", k.method),
                    ("status", &status),
                ],
            );
        }
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

/// The `# HELP` and `# TYPE` lines of a family.
fn family(out: &mut String, name: &str, help: &str, kind: &str) {
    let help = help.replace('\\', "\\\\").replace('\n', "\\n");
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// One sample line: `name{label="value",...} value`.
fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: &str) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{}\"", escape_label_value(v));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// A label value as the text format wants it: backslash, double quote and line feed escaped.
pub fn escape_label_value(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// A sample value or `le` bound: `+Inf`, `-Inf`, `NaN`, else the shortest decimal.
fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        v.to_string()
    }
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
        let mut h = Histogram::new(&[0.1, 1.0]);
        for v in [0.05, 0.1, 0.5, 1.0, 7.0] {
            h.observe(v);
        }
        assert_eq!(h.cumulative(), vec![(0.1, 2), (1.0, 4), (f64::INFINITY, 5)]);
        assert_eq!(h.count(), 5);
        assert!((h.sum() - 8.65).abs() < 1e-9);
        let mut out = String::new();
        h.render(&mut out, "x_seconds", &[("route", "/a")]);
        assert_eq!(
            out,
            "x_seconds_bucket{route=\"/a\",le=\"0.1\"} 2\n\
             x_seconds_bucket{route=\"/a\",le=\"1\"} 4\n\
             x_seconds_bucket{route=\"/a\",le=\"+Inf\"} 5\n\
             x_seconds_sum{route=\"/a\"} 8.65\n\
             x_seconds_count{route=\"/a\"} 5\n"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(
            escape_label_value("a\\b\"c\nd"),
            "a\\\\b\\\"c\\nd",
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
