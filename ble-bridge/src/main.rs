//! `phr-bridge`: parses the command line, starts tracing, calls the library.

use std::path::PathBuf;

use anyhow::Context;
use chrono::{DateTime, TimeDelta, Utc};
use clap::{Parser, Subcommand};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use phr_bridge::cumulative::DayZone;
use phr_bridge::mqtt::{MqttPassword, MqttUrl};
use phr_bridge::outbox::{DeadLetterFilter, Outbox};
use phr_bridge::simulate::{self, SimulateConfig};

#[derive(Debug, Parser)]
#[command(
    name = "phr-bridge",
    version,
    about = "BLE bridge for the PHR lifelog gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List nearby Bluetooth LE devices: name, address, RSSI, which decoder reads them.
    Scan {
        /// How long to listen.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
    /// Run the bridge: keep the configured wearables connected and deliver their data.
    Run {
        /// TOML configuration (see bridge.example.toml).
        #[arg(long, env = "PHR_BRIDGE_CONFIG")]
        config: PathBuf,
        /// Static MQTT password (broker with a password file); overrides `mqtt_password`.
        #[arg(long, env = "PHR_BRIDGE_MQTT_PASSWORD", hide_env_values = true)]
        mqtt_password: Option<MqttPassword>,
    },
    /// Show the outbox: batches and records waiting, each device's history marks, and the
    /// records the gateway refused (dead letters) or that were discarded.
    Status {
        #[arg(long, env = "PHR_BRIDGE_DATA_DIR", default_value = "phr-bridge-data")]
        data_dir: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Records the gateway refused, kept for the operator: list, replay or drop them.
    #[command(subcommand)]
    DeadLetter(DeadLetterCommand),
    /// Run simulated wearables through the real decode → outbox → MQTT pipeline.
    Simulate(Box<SimulateArgs>),
    /// Print this bridge's public key (made on first use), for the gateway operator to enrol
    /// it with `phr-gateway bridges enrol --bridge-id ID --public-key KEY`.
    Identity {
        #[arg(long, env = "PHR_BRIDGE_DATA_DIR", default_value = "phr-bridge-data")]
        data_dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum DeadLetterCommand {
    /// Dead letters per device and reason (or per refused batch), with counts and the
    /// measured range.
    List {
        #[arg(long, env = "PHR_BRIDGE_DATA_DIR", default_value = "phr-bridge-data")]
        data_dir: PathBuf,
        /// One line per refused batch instead of per device and reason.
        #[arg(long)]
        by_batch: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Moves dead letters back into the outbox as new batches (the same records, so the
    /// gateway stores none twice). Safe while `phr-bridge run` uses the same data dir.
    Replay {
        #[arg(long, env = "PHR_BRIDGE_DATA_DIR", default_value = "phr-bridge-data")]
        data_dir: PathBuf,
        /// Only this device's.
        #[arg(long)]
        device: Option<String>,
        /// Only those refused for this reason (a code such as `device_not_on_bridge`).
        #[arg(long, value_parser = parse_reason)]
        reason: Option<String>,
        /// Records per new batch.
        #[arg(long, default_value_t = 60)]
        batch_records: usize,
    },
    /// Discards dead letters for good (counted and logged). Both filters are required.
    Drop {
        #[arg(long, env = "PHR_BRIDGE_DATA_DIR", default_value = "phr-bridge-data")]
        data_dir: PathBuf,
        #[arg(long)]
        device: String,
        #[arg(long, value_parser = parse_reason)]
        reason: String,
        /// Confirms that these records are to be discarded.
        #[arg(long)]
        yes: bool,
    },
}

/// A rejection reason's code, checked against the codes the gateway sends.
fn parse_reason(s: &str) -> Result<String, String> {
    serde_json::from_value::<phr_schema::Reason>(serde_json::Value::String(s.to_owned()))
        .map(|r| r.code().to_owned())
        .map_err(|_| format!("{s:?} is not a rejection reason code (e.g. device_not_on_bridge, implausible_count)"))
}

/// Opens the outbox of `data_dir` for an operator command (it must exist).
fn open_outbox(data_dir: &std::path::Path) -> anyhow::Result<Outbox> {
    let path = data_dir.join("outbox.sqlite");
    anyhow::ensure!(path.exists(), "no outbox at {}", path.display());
    Outbox::open(&path, usize::MAX).with_context(|| path.display().to_string())
}

#[derive(Debug, clap::Args)]
struct SimulateArgs {
    /// Number of simulated bands.
    #[arg(long, default_value_t = 2)]
    devices: usize,
    /// This bridge's id (it publishes under it).
    #[arg(long, env = "PHR_BRIDGE_ID", default_value = "sim-bridge")]
    bridge_id: String,
    /// Broker to publish to.
    #[arg(long, env = "PHR_MQTT_URL", default_value = "mqtt://127.0.0.1:1883")]
    mqtt_url: MqttUrl,
    /// Static MQTT password, for a broker with a password file (Mosquitto); without it the
    /// bridge proves its id with its key, as the embedded broker expects.
    #[arg(long, env = "PHR_BRIDGE_MQTT_PASSWORD", hide_env_values = true)]
    mqtt_password: Option<MqttPassword>,
    /// With an mqtts:// URL: the CA certificates (PEM) the broker's certificate chains to.
    #[arg(long, env = "PHR_BRIDGE_MQTT_CA_FILE")]
    mqtt_ca_file: Option<PathBuf>,
    /// Topic prefix shared with the gateway.
    #[arg(long, env = "PHR_TOPIC_PREFIX", default_value = phr_schema::envelope::DEFAULT_PREFIX)]
    topic_prefix: String,
    /// Where the outbox lives.
    #[arg(long, env = "PHR_BRIDGE_DATA_DIR", default_value = "phr-bridge-data")]
    data_dir: PathBuf,
    /// Hours of history each band holds when first seen.
    #[arg(long, default_value_t = 24)]
    history_hours: i64,
    /// The bands' IANA time zone (their days, nights and daily totals follow its local time,
    /// DST included), e.g. America/New_York; an offset like +09:00 is a fixed offset, which
    /// cannot follow DST. `--utc-offset` is a deprecated alias.
    #[arg(long, alias = "utc-offset", default_value = phr_bridge::daemon::DEFAULT_TIME_ZONE)]
    time_zone: DayZone,
    /// Seed of the simulated data.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Stop generating at this RFC 3339 instant instead of running live.
    #[arg(long, value_parser = parse_time)]
    until: Option<DateTime<Utc>>,
    /// With --until: exit once the gateway has acked everything.
    #[arg(long, requires = "until")]
    exit_when_drained: bool,
    /// The gateway's channel key (64 hex characters), printed by `phr-gateway bridges enrol`.
    #[arg(long, env = "PHR_GATEWAY_KEY", value_parser = parse_key)]
    gateway_key: ed25519_dalek::VerifyingKey,
    /// Shortest time in seconds between two reports of the bands in range (for pairing from
    /// the dashboard); 0: none are sent.
    #[arg(long, default_value_t = phr_bridge::nearby::DEFAULT_INTERVAL.as_secs())]
    nearby_interval_secs: u64,
}

fn parse_key(s: &str) -> Result<ed25519_dalek::VerifyingKey, String> {
    phr_schema::channel::key_from_hex(s.trim())
        .ok_or_else(|| "expected the 64 hex characters `phr-gateway bridges enrol` prints".into())
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rumqttc=warn".into()),
        )
        // Logs to stderr: stdout is what a command prints (pairing codes, keys).
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Scan { seconds } => {
            let seen = phr_bridge::transport::scan(std::time::Duration::from_secs(seconds)).await?;
            if seen.is_empty() {
                println!("no devices seen in {seconds}s");
            }
            for s in seen {
                let decoders = s.decoders();
                println!(
                    "{:<17}  {:>4} dBm  {:<24}  {}",
                    s.address,
                    s.rssi.map_or_else(|| "?".to_owned(), |r| r.to_string()),
                    s.name.as_deref().unwrap_or("(no name)"),
                    if decoders.is_empty() {
                        "unsupported".to_owned()
                    } else {
                        decoders.join(", ")
                    }
                );
            }
        }
        Command::Run {
            config,
            mqtt_password,
        } => {
            let mut cfg = phr_bridge::daemon::BridgeConfig::from_file(&config)?;
            if mqtt_password.is_some() {
                cfg.mqtt_password = mqtt_password;
            }
            let shutdown = CancellationToken::new();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                stop.cancel();
            });
            let (status, _) = watch::channel(Default::default());
            phr_bridge::daemon::run(cfg, status, shutdown)
                .await
                .context("bridge failed")?;
        }
        Command::Status { data_dir, json } => {
            let outbox = open_outbox(&data_dir)?;
            let status = phr_bridge::outbox::StatusReport::read(&outbox)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status.text());
            }
        }
        Command::DeadLetter(DeadLetterCommand::List {
            data_dir,
            by_batch,
            json,
        }) => {
            let outbox = open_outbox(&data_dir)?;
            let groups = if by_batch {
                outbox.dead_letter_batches()?
            } else {
                outbox.dead_letter_groups()?
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&groups)?);
            } else if groups.is_empty() {
                println!("no dead letters");
            } else {
                for g in groups {
                    let batch = g
                        .batch_id
                        .map(|b| format!("  batch {b}"))
                        .unwrap_or_default();
                    println!(
                        "{:<24} {:<24} {:>7} records  measured {} .. {}  refused {} .. {}{batch}",
                        g.device_id,
                        g.reason,
                        g.records,
                        g.measured_from,
                        g.measured_to,
                        g.first_at,
                        g.last_at
                    );
                }
            }
        }
        Command::DeadLetter(DeadLetterCommand::Replay {
            data_dir,
            device,
            reason,
            batch_records,
        }) => {
            anyhow::ensure!(batch_records > 0, "--batch-records must be at least 1");
            let mut outbox = open_outbox(&data_dir)?;
            let filter = DeadLetterFilter {
                device_id: device,
                reason,
            };
            let r = outbox.replay(&filter, batch_records, chrono::Utc::now())?;
            tracing::info!(records = r.records, batches = r.batches, device = ?filter.device_id, reason = ?filter.reason, "dead letters replayed into the outbox");
            println!(
                "replayed {} records as {} batches into the outbox",
                r.records, r.batches
            );
        }
        Command::DeadLetter(DeadLetterCommand::Drop {
            data_dir,
            device,
            reason,
            yes,
        }) => {
            anyhow::ensure!(
                yes,
                "dropping discards these records for good; add --yes to confirm"
            );
            let mut outbox = open_outbox(&data_dir)?;
            let filter = DeadLetterFilter {
                device_id: Some(device),
                reason: Some(reason),
            };
            let n = outbox.drop_dead_letters(&filter)?;
            tracing::warn!(records = n, device = ?filter.device_id, reason = ?filter.reason, "dead letters dropped by the operator");
            println!("dropped {n} records");
        }
        Command::Identity { data_dir } => {
            let key = phr_bridge::identity::BridgeKey::load_or_create(&data_dir)?;
            println!("{}", key.public_hex());
        }
        Command::Simulate(a) => {
            let mut mqtt = a.mqtt_url.with_password(a.mqtt_password);
            if let Some(ca) = &a.mqtt_ca_file {
                mqtt = mqtt
                    .with_ca_file(ca)
                    .with_context(|| format!("--mqtt-ca-file {}", ca.display()))?;
            }
            let mut cfg = SimulateConfig::new(&a.bridge_id, a.devices, a.data_dir, mqtt);
            cfg.topic_prefix = a.topic_prefix;
            cfg.history = TimeDelta::hours(a.history_hours);
            cfg.time_zone = a.time_zone;
            cfg.seed = a.seed;
            cfg.until = a.until;
            cfg.exit_when_drained = a.exit_when_drained;
            cfg.gateway_key = Some(a.gateway_key);
            cfg.nearby_interval = (a.nearby_interval_secs > 0)
                .then(|| std::time::Duration::from_secs(a.nearby_interval_secs));
            let shutdown = CancellationToken::new();
            let (status, _) = watch::channel(Default::default());
            let stop = shutdown.clone();
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                stop.cancel();
            });
            simulate::run(cfg, status, shutdown)
                .await
                .context("simulated bridge failed")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn simulate(args: &[&str]) -> Result<SimulateArgs, clap::Error> {
        let key = "00".repeat(32);
        let mut argv = vec!["phr-bridge", "simulate", "--gateway-key", &key];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv)?.command {
            Command::Simulate(a) => Ok(*a),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn simulated_bands_take_an_iana_zone_and_the_old_offset_flag_still_parses() {
        let tokyo: DayZone = "Asia/Tokyo".parse().unwrap();
        assert_eq!(simulate(&[]).unwrap().time_zone, tokyo);
        assert_eq!(
            simulate(&["--time-zone", "America/New_York"])
                .unwrap()
                .time_zone,
            DayZone::Iana(chrono_tz::America::New_York)
        );
        // Deprecated alias: a fixed offset, as before.
        assert_eq!(
            simulate(&["--utc-offset", "+05:30"]).unwrap().time_zone,
            DayZone::Fixed(chrono::FixedOffset::east_opt(5 * 3600 + 1800).unwrap())
        );
        let err = simulate(&["--time-zone", "Mars/Base"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("not an IANA time zone"), "{err}");
    }
}
