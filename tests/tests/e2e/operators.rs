//! What operators get: `/metrics` in the Prometheus text format (checked line by line with a
//! strict parser of format 0.0.4), and a Grafana dashboard whose every query names metrics a
//! running gateway serves.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, ensure, Context};
use chrono::{TimeDelta, Utc};
use uuid::Uuid;

use phr_e2e::{get_json, RawBridge, TestGateway};
use phr_schema::Batch;

const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../dashboards/grafana/phr-gateway.json"
);

/// Label names and values.
type Labels = Vec<(String, String)>;

/// One sample line: metric name, labels in the order written, value.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: Labels,
    value: f64,
}

impl Sample {
    fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The labels without `le`, as a key for the series of one histogram.
    fn series_key(&self) -> Labels {
        self.labels
            .iter()
            .filter(|(k, _)| k != "le")
            .cloned()
            .collect()
    }
}

/// A parsed exposition: every family's type, and every sample in order.
#[derive(Debug, Default)]
struct Exposition {
    types: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

impl Exposition {
    /// The family a sample name belongs to: itself, or for `_bucket`, `_sum` and `_count` of
    /// a declared histogram (or `_sum`, `_count` of a summary), the histogram.
    fn family_of(&self, name: &str) -> Option<String> {
        if self.types.contains_key(name) {
            return Some(name.to_owned());
        }
        ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
            let base = name.strip_suffix(suffix)?;
            match self.types.get(base).map(String::as_str) {
                Some("histogram") => Some(base.to_owned()),
                Some("summary") if *suffix != "_bucket" => Some(base.to_owned()),
                _ => None,
            }
        })
    }

    fn samples_of_family<'a>(&'a self, family: &'a str) -> impl Iterator<Item = &'a Sample> {
        self.samples
            .iter()
            .filter(move |s| self.family_of(&s.name).as_deref() == Some(family))
    }
}

fn is_name_start(c: char, colon: bool) -> bool {
    c.is_ascii_alphabetic() || c == '_' || (colon && c == ':')
}

fn is_name_char(c: char, colon: bool) -> bool {
    is_name_start(c, colon) || c.is_ascii_digit()
}

/// A metric name (`colon`) or label name at the start of `s`; the rest after it.
fn name(s: &str, colon: bool) -> anyhow::Result<(&str, &str)> {
    let end = s
        .char_indices()
        .find(|&(i, c)| {
            if i == 0 {
                !is_name_start(c, colon)
            } else {
                !is_name_char(c, colon)
            }
        })
        .map_or(s.len(), |(i, _)| i);
    ensure!(end > 0, "expected a name at {s:?}");
    Ok(s.split_at(end))
}

/// A Go-style float as the text format allows: decimal, exponent, `NaN`, `+Inf`, `-Inf`.
fn float(s: &str) -> anyhow::Result<f64> {
    match s {
        "NaN" => return Ok(f64::NAN),
        "+Inf" | "Inf" => return Ok(f64::INFINITY),
        "-Inf" => return Ok(f64::NEG_INFINITY),
        _ => {}
    }
    ensure!(
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-')),
        "not a number: {s:?}"
    );
    s.parse().with_context(|| format!("not a number: {s:?}"))
}

/// A quoted label value at the start of `s` (after the opening quote is checked here); the
/// unescaped value and the rest after the closing quote.
fn label_value(s: &str) -> anyhow::Result<(String, &str)> {
    let mut chars = s
        .strip_prefix('"')
        .context("label value without quote")?
        .char_indices();
    let mut value = String::new();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &s[i + 2..])),
            '\\' => match chars.next().map(|(_, c)| c) {
                Some('\\') => value.push('\\'),
                Some('"') => value.push('"'),
                Some('n') => value.push('\n'),
                other => bail!("invalid escape \\{other:?} in a label value"),
            },
            '\n' => bail!("raw line feed in a label value"),
            c => value.push(c),
        }
    }
    bail!("unterminated label value")
}

/// `name{labels} value [timestamp]`.
fn sample_line(line: &str) -> anyhow::Result<Sample> {
    let (metric, mut rest) = name(line, true)?;
    let mut labels = Vec::new();
    if let Some(mut inner) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = inner.strip_prefix('}') {
                rest = after;
                break;
            }
            let (label, after) = name(inner, false)?;
            ensure!(!label.starts_with("__"), "reserved label name {label}");
            let after = after
                .strip_prefix('=')
                .context("expected = after a label name")?;
            let (value, after) = label_value(after)?;
            ensure!(
                labels.iter().all(|(k, _)| k != label),
                "label {label} twice"
            );
            labels.push((label.to_owned(), value));
            inner = match after.strip_prefix(',') {
                Some(a) => a,
                None => {
                    ensure!(after.starts_with('}'), "expected , or }} at {after:?}");
                    after
                }
            };
        }
    }
    let rest = rest
        .strip_prefix(' ')
        .context("expected a space before the value")?;
    let mut fields = rest.split(' ');
    let value = float(fields.next().unwrap_or_default())?;
    if let Some(ts) = fields.next() {
        ts.parse::<i64>()
            .with_context(|| format!("invalid timestamp {ts:?}"))?;
    }
    ensure!(fields.next().is_none(), "trailing fields");
    Ok(Sample {
        name: metric.to_owned(),
        labels,
        value,
    })
}

/// Parses a whole exposition strictly: every line is a comment, a HELP or TYPE line, or a
/// sample; a family's TYPE (at most one) and HELP (at most one) come before its samples,
/// its lines form one group, and no series appears twice.
fn parse(text: &str) -> anyhow::Result<Exposition> {
    ensure!(text.ends_with('\n'), "the exposition ends with a line feed");
    let mut exp = Exposition::default();
    let mut helped = BTreeSet::new();
    let mut finished: BTreeSet<String> = BTreeSet::new();
    let mut current: Option<String> = None;
    let mut seen = BTreeSet::new();
    for (n, line) in text.lines().enumerate() {
        let at = || format!("line {}: {line:?}", n + 1);
        let mut switch_to = |family: &str, current: &mut Option<String>| -> anyhow::Result<()> {
            if current.as_deref() != Some(family) {
                ensure!(
                    !finished.contains(family),
                    "{family} continues after other families"
                );
                if let Some(c) = current.take() {
                    finished.insert(c);
                }
                *current = Some(family.to_owned());
            }
            Ok(())
        };
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.trim_start_matches(' ').splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("HELP"), Some(metric), help) => {
                    name(metric, true)
                        .ok()
                        .filter(|(_, r)| r.is_empty())
                        .with_context(at)?;
                    if let Some(help) = help {
                        let mut chars = help.chars();
                        while let Some(c) = chars.next() {
                            if c == '\\' {
                                ensure!(
                                    matches!(chars.next(), Some('\\' | 'n')),
                                    "invalid escape in HELP, {}",
                                    at()
                                );
                            }
                        }
                    }
                    ensure!(helped.insert(metric.to_owned()), "second HELP, {}", at());
                    switch_to(metric, &mut current)?;
                }
                (Some("TYPE"), Some(metric), Some(kind)) => {
                    name(metric, true)
                        .ok()
                        .filter(|(_, r)| r.is_empty())
                        .with_context(at)?;
                    ensure!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                        "unknown type, {}",
                        at()
                    );
                    ensure!(
                        exp.samples
                            .iter()
                            .all(|s| exp.family_of(&s.name).as_deref() != Some(metric)
                                && s.name != metric),
                        "TYPE after samples, {}",
                        at()
                    );
                    ensure!(
                        exp.types
                            .insert(metric.to_owned(), kind.to_owned())
                            .is_none(),
                        "second TYPE, {}",
                        at()
                    );
                    switch_to(metric, &mut current)?;
                }
                (Some("TYPE"), _, _) => bail!("malformed TYPE, {}", at()),
                _ => {} // any other comment
            }
            continue;
        }
        let s = sample_line(line).with_context(at)?;
        let family = exp
            .family_of(&s.name)
            .with_context(|| format!("a sample without a TYPE line, {}", at()))?;
        switch_to(&family, &mut current)?;
        let mut key = s.labels.clone();
        key.sort();
        ensure!(seen.insert((s.name.clone(), key)), "series twice, {}", at());
        exp.samples.push(s);
    }
    check_histograms(&exp)?;
    Ok(exp)
}

/// Per series of each histogram: `le` ascending to `+Inf`, counts cumulative, `+Inf` equal
/// to `_count`, and a `_sum`.
fn check_histograms(exp: &Exposition) -> anyhow::Result<()> {
    for (family, _) in exp.types.iter().filter(|(_, k)| *k == "histogram") {
        let mut buckets: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
        let mut sums = BTreeMap::new();
        let mut counts = BTreeMap::new();
        for s in exp.samples_of_family(family) {
            let key = s.series_key();
            match s.name.strip_prefix(family.as_str()) {
                Some("_bucket") => {
                    let le = float(s.label("le").context("a bucket without le")?)?;
                    buckets.entry(key).or_default().push((le, s.value));
                }
                Some("_sum") => {
                    sums.insert(key, s.value);
                }
                Some("_count") => {
                    counts.insert(key, s.value);
                }
                _ => bail!("{} in histogram {family}", s.name),
            }
        }
        ensure!(
            buckets.keys().eq(counts.keys()) && counts.keys().eq(sums.keys()),
            "{family}: every series has buckets, _sum and _count"
        );
        for (key, bs) in &buckets {
            ensure!(
                bs.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
                "{family}{key:?}: le ascending, counts cumulative: {bs:?}"
            );
            let last = bs.last().context("buckets")?;
            ensure!(last.0 == f64::INFINITY, "{family}{key:?}: ends with +Inf");
            ensure!(
                Some(&last.1) == counts.get(key),
                "{family}{key:?}: +Inf bucket equals _count"
            );
        }
    }
    Ok(())
}

#[test]
fn the_strict_parser_refuses_what_the_format_does_not_allow() {
    let ok = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"q\\\"\\\\\\n\"} 1\n\
              # TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3.5\nh_count 2\n";
    let exp = parse(ok).unwrap();
    assert_eq!(exp.samples[0].label("x"), Some("q\"\\\n"));
    for bad in [
        "a 1\n",                                          // no TYPE
        "# TYPE a counter\na 1\na 2\n",                   // series twice
        "# TYPE a counter\na{x=\"1} 1\n",                 // unterminated
        "# TYPE a counter\na{x=\"\\t\"} 1\n",             // bad escape
        "# TYPE a counter\na one\n",                      // value
        "# TYPE a counter\n# TYPE a gauge\na 1\n",        // TYPE twice
        "# TYPE a counter\n# TYPE b counter\nb 1\na 1\n", // not grouped
        "# TYPE a counter\na 1",                          // no final line feed
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n", // no +Inf
        "# TYPE a counter\na{1x=\"v\"} 1\n",                              // label name
    ] {
        assert!(parse(bad).is_err(), "accepted {bad:?}");
    }
}

/// Some of everything: stored, duplicate, rejected and quarantined records, and API calls
/// that answer 200, 401 or 404 on routes with and without path parameters.
async fn traffic(gw: &TestGateway) -> anyhow::Result<()> {
    let (person, bridge_id, band) = ("ops-person", "br-ops", "band-ops");
    gw.enrol(
        person,
        bridge_id,
        &[band.into()],
        Utc::now() - TimeDelta::days(1),
    )?;
    let mut bridge = gw.raw_bridge(bridge_id).await?;
    let at = |minutes_ago: i64, count: i64| {
        phr_e2e::minute_steps(
            band,
            bridge_id,
            Utc::now() - TimeDelta::minutes(minutes_ago),
            count,
        )
    };
    let batch = Batch::new(
        bridge_id,
        band,
        Uuid::new_v4(),
        vec![at(30, 50), at(29, 60), at(28, -5)],
    );
    let payload = serde_json::to_vec(&batch)?;
    for _ in 0..2 {
        bridge.publish(band, payload.clone()).await?;
        bridge.next_ack().await?;
    }
    let stray = "band-nobody";
    let batch = Batch::new(
        bridge_id,
        stray,
        Uuid::new_v4(),
        vec![phr_e2e::minute_steps(
            stray,
            bridge_id,
            Utc::now() - TimeDelta::minutes(10),
            12,
        )],
    );
    bridge.publish(stray, serde_json::to_vec(&batch)?).await?;
    let ack = bridge.next_ack().await?;
    ensure!(ack.quarantined == 1, "{ack:?}");

    let token = gw.owner_token(person);
    for (path, token, status) in [
        ("/healthz", None, 200),
        ("/api/v1/me/records?type=step-count", Some(&token), 200),
        ("/api/v1/me/records?type=step-count", None, 401),
        (
            "/api/v1/subjects/ops-person/records?type=step-count",
            Some(&token),
            200,
        ),
        ("/no/such/ops-person/path", None, 404),
    ] {
        let (s, body) = get_json(&gw.url(path), token.map(String::as_str))?;
        ensure!(s == status, "GET {path}: {s} {body}");
    }
    Ok(())
}

fn scrape(gw: &TestGateway) -> anyhow::Result<String> {
    let resp = ureq::get(&gw.url("/metrics")).call()?;
    ensure!(
        resp.content_type() == "text/plain",
        "content type {}",
        resp.content_type()
    );
    ensure!(
        resp.header("Content-Type")
            .is_some_and(|c| c.contains("version=0.0.4")),
        "{:?}",
        resp.header("Content-Type")
    );
    Ok(resp.into_string()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_valid_prometheus_text_and_label_api_latency_by_route_pattern(
) -> anyhow::Result<()> {
    let gw = TestGateway::start().await?;
    traffic(&gw).await?;
    let text = scrape(&gw)?;
    let exp = parse(&text).with_context(|| text.clone())?;

    let value = |name: &str| {
        exp.samples
            .iter()
            .find(|s| s.name == name && s.labels.is_empty())
            .map(|s| s.value)
    };
    assert_eq!(value("phr_records_stored_total"), Some(2.0));
    assert_eq!(value("phr_records_duplicate_total"), Some(2.0));
    assert_eq!(value("phr_records_quarantined_total"), Some(1.0));
    assert_eq!(value("phr_quarantine_records"), Some(1.0));
    assert_eq!(value("phr_batches_acked_total"), Some(3.0));
    assert_eq!(exp.types["phr_store_commit_duration_seconds"], "histogram");
    assert_eq!(exp.types["phr_http_request_duration_seconds"], "histogram");
    assert!(value("phr_store_commit_duration_seconds_count").is_some_and(|n| n >= 1.0));
    // The name kept from before the histogram, with the same sum.
    assert_eq!(
        value("phr_store_commit_seconds_sum"),
        value("phr_store_commit_duration_seconds_sum")
    );
    let rejected: Vec<_> = exp
        .samples
        .iter()
        .filter(|s| s.name == "phr_records_rejected_total")
        .collect();
    assert!(
        !rejected.is_empty() && rejected.iter().all(|s| s.label("reason").is_some()),
        "{rejected:?}"
    );

    let requests: BTreeSet<(String, String, String)> = exp
        .samples
        .iter()
        .filter(|s| s.name == "phr_http_request_duration_seconds_count")
        .map(|s| {
            let l = |n| s.label(n).unwrap_or_default().to_owned();
            (l("route"), l("method"), l("status"))
        })
        .collect();
    for expected in [
        ("/healthz", "200"),
        ("/api/v1/me/records", "200"),
        ("/api/v1/me/records", "401"),
        ("/api/v1/subjects/{person_id}/records", "200"),
        ("unmatched", "404"),
    ] {
        assert!(
            requests.contains(&(expected.0.into(), "GET".into(), expected.1.into())),
            "{expected:?} not in {requests:?}"
        );
    }
    // No id reaches a label: routes are patterns.
    assert!(
        exp.samples
            .iter()
            .flat_map(|s| &s.labels)
            .all(|(_, v)| !v.contains("ops-person")),
        "{text}"
    );
    // The scrape itself is counted by the next one.
    let again = parse(&scrape(&gw)?)?;
    assert!(again
        .samples
        .iter()
        .any(|s| s.name == "phr_http_request_duration_seconds_count"
            && s.label("route") == Some("/metrics")));
    gw.stop().await;
    Ok(())
}

/// The `phr_...` metric names a PromQL expression refers to.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(found) = expr[i..].find("phr_") {
        let start = i + found;
        let boundary = start == 0 || !is_name_char(char::from(bytes[start - 1]), true);
        let end = expr[start..]
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .map_or(expr.len(), |e| start + e);
        if boundary {
            out.insert(expr[start..end].to_owned());
        }
        i = end;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_imports_and_queries_only_exported_metrics() -> anyhow::Result<()> {
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(DASHBOARD).with_context(|| DASHBOARD.to_owned())?,
    )?;
    assert_eq!(dashboard["schemaVersion"], 39);
    assert!(dashboard["uid"].as_str().is_some_and(|u| !u.is_empty()));
    assert!(dashboard["title"].as_str().is_some_and(|t| !t.is_empty()));
    let inputs = dashboard["__inputs"].as_array().context("__inputs")?;
    assert!(
        inputs.iter().any(|i| i["name"] == "DS_PROMETHEUS"
            && i["type"] == "datasource"
            && i["pluginId"] == "prometheus"),
        "{inputs:?}"
    );
    let panels = dashboard["panels"].as_array().context("panels")?;
    assert!(!panels.is_empty());

    let mut ids = BTreeSet::new();
    let mut queried: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for p in panels {
        let title = p["title"].as_str().context("a panel title")?;
        assert!(
            ids.insert(p["id"].as_u64().context("a panel id")?),
            "{title}"
        );
        assert!(
            matches!(p["type"].as_str(), Some("timeseries" | "stat")),
            "{title}: {}",
            p["type"]
        );
        assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
        assert!(p["gridPos"]["w"].as_u64().is_some_and(|w| w > 0 && w <= 24));
        let targets = p["targets"].as_array().context("targets")?;
        assert!(!targets.is_empty(), "{title}");
        for t in targets {
            let expr = t["expr"].as_str().context("an expr")?;
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{title}: {expr}");
            for n in names {
                queried.entry(n).or_default().push(title.to_owned());
            }
        }
    }
    for wanted in [
        "phr_records_stored_total",
        "phr_batches_acked_total",
        "phr_records_rejected_total",
        "phr_quarantine_records",
        "phr_records_duplicate_total",
        "phr_store_commit_duration_seconds_bucket",
        "phr_http_request_duration_seconds_bucket",
        "phr_http_request_duration_seconds_count",
        "phr_mqtt_connects_total",
    ] {
        assert!(queried.contains_key(wanted), "no panel queries {wanted}");
    }

    let gw = TestGateway::start().await?;
    traffic(&gw).await?;
    let exp = parse(&scrape(&gw)?)?;
    for (name, titles) in &queried {
        let family = exp
            .family_of(name)
            .with_context(|| format!("{name} (panels {titles:?}) is not exported"))?;
        assert!(
            exp.samples_of_family(&family).next().is_some(),
            "{name} (panels {titles:?}) has no sample after traffic"
        );
        if name != &family {
            assert_eq!(exp.types[&family], "histogram", "{name}");
        }
    }
    gw.stop().await;
    Ok(())
}

/// `phr_mqtt_connections` follows the embedded broker's open connections: the gateway's own
/// session plus each bridge, down again when a bridge goes (the broker reports it every 5 s
/// while messages flow, so the bridges keep publishing here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_mqtt_connections_are_counted_at_the_embedded_broker() -> anyhow::Result<()> {
    let gw = TestGateway::start_configured(None, |_| {}).await?;
    let base = gw.url("");
    for b in ["br-m1", "br-m2"] {
        gw.enrol(
            &format!("p-{b}"),
            b,
            &[format!("band-{b}")],
            Utc::now() - TimeDelta::days(1),
        )?;
    }
    let mut one = gw.raw_bridge("br-m1").await?;
    let mut two = Some(gw.raw_bridge("br-m2").await?);
    let mut minute = 0;
    let mut publish = |bridge: &mut RawBridge, band: &str| {
        minute += 1;
        let r = phr_e2e::minute_steps(
            band,
            &bridge.bridge.clone(),
            Utc::now() - TimeDelta::minutes(600 - minute),
            10,
        );
        (band.to_owned(), vec![r])
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        let (band, recs) = publish(&mut one, "band-br-m1");
        phr_e2e::send(&mut one, &band, recs).await?;
        if let Some(t) = two.as_mut() {
            let (band, recs) = publish(t, "band-br-m2");
            phr_e2e::send(t, &band, recs).await?;
        }
        let n = phr_e2e::metric(&base, "phr_mqtt_connections")?;
        seen.push(n);
        if two.is_some() && n == 3.0 {
            two = None; // the second bridge goes away
        } else if two.is_none() && n == 2.0 {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "phr_mqtt_connections never showed 3 then 2: {seen:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    gw.stop().await;
    Ok(())
}

/// A plain start of the real binary, logging as an operator sees it (the default filter, no
/// `RUST_LOG`), writes no ERROR line. rumqttd 0.20 logged `no-connection id 0 is already gone`
/// on every start, for the DISCONNECT of the gateway's own readiness probe of the embedded
/// broker (`broker::answers_mqtt`).
#[tokio::test]
async fn a_gateway_start_logs_no_error() -> anyhow::Result<()> {
    use std::process::{Command, Stdio};
    use std::time::Duration;

    use phr_e2e::{any_port, binary, call, started_line, wait_for, Process};

    let bin = binary("phr-gateway", "phr-gateway")?;
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("stderr.log");
    let child = Command::new(&bin)
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--http")
        .arg(any_port().to_string())
        .arg("--mqtt-listen")
        .arg(any_port().to_string())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let mut gateway = Process(child);
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    // Started: the probe, then the gateway's own client subscribed at the broker (its line
    // comes after the router has handled the probe's connection), and HTTP answers.
    wait_for(
        "the gateway's subscription",
        Duration::from_secs(60),
        || {
            read()
                .contains("subscribed to bridge records")
                .then_some(())
        },
    )
    .await?;
    let (http, _) = read()
        .lines()
        .find_map(started_line)
        .expect("the addresses bound, in the start line");
    let (status, _) = call("GET", &format!("http://{http}/healthz"), None, None)?;
    assert_eq!(status, 200);
    gateway.kill();
    let text = read();
    assert!(text.contains("gateway started"), "{text}");
    let errors: Vec<&str> = text.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(errors.is_empty(), "{errors:#?}\n{text}");
    Ok(())
}
