//! Counters the gateway exposes at `/metrics` in the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use phr_schema::Ack;

#[derive(Debug, Default)]
pub struct Metrics {
    batches_received: AtomicU64,
    batches_acked: AtomicU64,
    records_stored: AtomicU64,
    records_duplicate: AtomicU64,
    records_quarantined: AtomicU64,
    rejected: Mutex<BTreeMap<&'static str, u64>>,
    store_errors: AtomicU64,
    commit_seconds_sum_micros: AtomicU64,
    commits: AtomicU64,
    mqtt_connects: AtomicU64,
}

impl Metrics {
    pub fn received(&self, n: usize) {
        self.batches_received.fetch_add(n as u64, Relaxed);
    }

    pub fn committed(&self, acks: &[Ack], took: std::time::Duration) {
        self.commits.fetch_add(1, Relaxed);
        self.commit_seconds_sum_micros
            .fetch_add(took.as_micros() as u64, Relaxed);
        let mut rejected = self.rejected.lock().unwrap_or_else(|p| p.into_inner());
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

    pub fn store_error(&self) {
        self.store_errors.fetch_add(1, Relaxed);
    }

    /// The Prometheus exposition; `series` and `quarantine` are current row counts.
    pub fn render(&self, series: u64, quarantine: u64) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
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
            "phr_store_commits_total",
            "Ingest transactions committed.",
            self.commits.load(Relaxed),
        );
        counter(
            "phr_mqtt_connects_total",
            "Times the gateway's MQTT session connected (more than once means reconnects).",
            self.mqtt_connects.load(Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP phr_store_commit_seconds_sum Time spent in ingest transactions.\n# TYPE phr_store_commit_seconds_sum counter\nphr_store_commit_seconds_sum {}",
            self.commit_seconds_sum_micros.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "# HELP phr_records_rejected_total Records rejected, by reason.\n# TYPE phr_records_rejected_total counter");
        for (reason, n) in self
            .rejected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(out, "phr_records_rejected_total{{reason=\"{reason}\"}} {n}");
        }
        let _ = writeln!(out, "# HELP phr_series_records Records in the series store.\n# TYPE phr_series_records gauge\nphr_series_records {series}");
        let _ = writeln!(out, "# HELP phr_quarantine_records Records held in quarantine.\n# TYPE phr_quarantine_records gauge\nphr_quarantine_records {quarantine}");
        out
    }
}
