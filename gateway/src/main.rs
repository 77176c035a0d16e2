//! `phr-gateway`: parses the command line, starts tracing, loads the config, calls the library.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use phr_gateway::demo::{self, AddrFlag, DemoOptions};
use phr_gateway::Config;

#[derive(Debug, Parser)]
#[command(name = "phr-gateway", version, about = "PHR lifelog ingestion gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway: MQTT ingest (embedded broker unless --mqtt-url), store, API.
    Serve(ServeArgs),
    /// Run the whole pipeline on embedded defaults with simulated wearables.
    Demo(DemoArgs),
    /// Token commands.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Disclosure-log commands.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Import a person's `fhir` export (FHIR R4 NDJSON from GET /api/v1/me/export) as that
    /// person's records. Exit 0 when every record was stored or already there; 1 when a
    /// line could not be read (then nothing is stored) or a record was refused.
    Import {
        #[arg(long, env = "PHR_DATA_DIR", default_value = "phr-data")]
        data_dir: PathBuf,
        /// The person the records are stored for.
        #[arg(long)]
        subject: String,
        /// The NDJSON file.
        file: PathBuf,
        /// Record a storage consent of the person for every data type first (when the person
        /// has asked for the import). Without it, records are stored only under a storage
        /// consent the person already has here.
        #[arg(long)]
        grant_storage_consent: bool,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the disclosure log's hash chain; exit 0 when intact, 1 when not.
    Verify {
        #[arg(long, env = "PHR_DATA_DIR", default_value = "phr-data")]
        data_dir: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// TOML configuration file (see gateway.example.toml).
    #[arg(long, env = "PHR_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (SQLite store, signing key).
    #[arg(long, env = "PHR_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// HTTP API address.
    #[arg(long, env = "PHR_HTTP_LISTEN")]
    http: Option<SocketAddr>,
    /// Embedded broker address (ignored with --mqtt-url).
    #[arg(long, env = "PHR_MQTT_LISTEN")]
    mqtt_listen: Option<SocketAddr>,
    /// External broker, e.g. mqtt://127.0.0.1:1883; the embedded broker is not started.
    #[arg(long, env = "PHR_MQTT_URL")]
    mqtt_url: Option<String>,
    /// Topic prefix shared with bridges.
    #[arg(long, env = "PHR_TOPIC_PREFIX")]
    topic_prefix: Option<String>,
}

#[derive(Debug, clap::Args)]
struct DemoArgs {
    /// Data directory.
    #[arg(long, default_value = "./phr-data")]
    data_dir: PathBuf,
    /// HTTP API address [default: 127.0.0.1:8080, or a free port if that is taken].
    #[arg(long)]
    http: Option<SocketAddr>,
    /// Embedded broker address [default: 127.0.0.1:1883, or a free port if that is taken].
    #[arg(long)]
    mqtt: Option<SocketAddr>,
    /// Simulated bands.
    #[arg(long, default_value_t = 2)]
    devices: usize,
    /// Hours of history the bands hold at start.
    #[arg(long, default_value_t = 24)]
    history_hours: i64,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Print an access token signed by this gateway's key.
    Issue {
        #[arg(long, env = "PHR_DATA_DIR", default_value = "phr-data")]
        data_dir: PathBuf,
        #[arg(long, env = "PHR_CONFIG")]
        config: Option<PathBuf>,
        /// The person (or client) the token is for.
        #[arg(long)]
        subject: String,
        /// Space-separated scopes, e.g. "patient/Observation.rs".
        #[arg(long)]
        scope: String,
        /// Lifetime in seconds [default: auth.token_ttl_secs].
        #[arg(long)]
        ttl: Option<i64>,
    },
}

fn load(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    Ok(match path {
        Some(p) => Config::from_file(p)?,
        None => Config::default(),
    })
}

fn shutdown_on_ctrl_c() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        t.cancel();
    });
    token
}

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rumqttd=warn,rumqttc=warn,actix_server=warn".into()),
        )
        .init();
    match Cli::parse().command {
        Command::Serve(a) => {
            let mut config = load(a.config.as_ref())?;
            if let Some(d) = a.data_dir {
                config.data_dir = d;
            }
            if let Some(h) = a.http {
                config.http.listen = h;
            }
            if let Some(m) = a.mqtt_listen {
                config.mqtt.listen = m;
            }
            if let Some(u) = a.mqtt_url {
                config.mqtt.url = Some(u);
            }
            if let Some(p) = a.topic_prefix {
                config.mqtt.topic_prefix = p;
            }
            phr_gateway::run(config, shutdown_on_ctrl_c())
                .await
                .context("gateway failed")?;
        }
        Command::Demo(a) => {
            let defaults = Config::default();
            let opts = DemoOptions {
                data_dir: a.data_dir,
                http: AddrFlag {
                    flag: "--http",
                    addr: a.http.unwrap_or(defaults.http.listen),
                    explicit: a.http.is_some(),
                },
                mqtt: AddrFlag {
                    flag: "--mqtt",
                    addr: a.mqtt.unwrap_or(defaults.mqtt.listen),
                    explicit: a.mqtt.is_some(),
                },
                devices: a.devices,
                history_hours: a.history_hours,
            };
            demo::run(opts, shutdown_on_ctrl_c())
                .await
                .context("demo failed")?;
        }
        Command::Token(TokenCommand::Issue {
            data_dir,
            config,
            subject,
            scope,
            ttl,
        }) => {
            let mut config = load(config.as_ref())?;
            config.data_dir = data_dir;
            let keys = phr_gateway::auth::Keys::load_or_create(
                &config.keys_dir(),
                &config.auth.issuer,
                &config.auth.audience,
            )?;
            let ttl = chrono::TimeDelta::seconds(ttl.unwrap_or(config.auth.token_ttl_secs));
            println!("{}", keys.issue(&subject, &scope, ttl, chrono::Utc::now())?);
        }
        Command::Audit(AuditCommand::Verify { data_dir }) => return verify_audit(&data_dir),
        Command::Import {
            data_dir,
            subject,
            file,
            grant_storage_consent,
        } => return import(&data_dir, &subject, &file, grant_storage_consent),
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// `audit verify`: the exit code is the answer, so scripts and cron can use it.
fn verify_audit(data_dir: &std::path::Path) -> anyhow::Result<std::process::ExitCode> {
    let config = Config {
        data_dir: data_dir.to_owned(),
        ..Config::default()
    };
    let store = phr_gateway::Store::open_read_only(&config.store_path())?;
    let v = store.verify_audit()?;
    match v.broken {
        None => {
            println!(
                "disclosure log intact: {} entries, hash chain verified",
                v.rows
            );
            Ok(std::process::ExitCode::SUCCESS)
        }
        Some((seq, why)) => {
            println!("disclosure log BROKEN at entry {seq}: {why}");
            Ok(std::process::ExitCode::from(1))
        }
    }
}

/// `import`: reads the whole file first, so a file with an unreadable line stores nothing.
/// Reports line numbers and reasons, never values.
fn import(
    data_dir: &std::path::Path,
    subject: &str,
    file: &std::path::Path,
    grant_storage_consent: bool,
) -> anyhow::Result<std::process::ExitCode> {
    use phr_gateway::store::export::read_fhir_ndjson;
    if !phr_schema::envelope::is_valid_id(subject) {
        anyhow::bail!("--subject must be 1-64 characters of A-Z a-z 0-9 . _ : -");
    }
    let input = std::fs::File::open(file).with_context(|| format!("{}", file.display()))?;
    let parsed = read_fhir_ndjson(std::io::BufReader::new(input))
        .with_context(|| format!("reading {}", file.display()))?;
    if !parsed.failures.is_empty() {
        for f in &parsed.failures {
            eprintln!("{}: line {}: {}", file.display(), f.line, f.reason);
        }
        println!(
            "import refused: {} of the lines could not be read; nothing was stored",
            parsed.failures.len()
        );
        return Ok(std::process::ExitCode::from(1));
    }
    let config = Config {
        data_dir: data_dir.to_owned(),
        ..Config::default()
    };
    std::fs::create_dir_all(data_dir).with_context(|| format!("{}", data_dir.display()))?;
    let store = phr_gateway::Store::open(&config.store_path())?;
    if grant_storage_consent {
        store.ensure_person(subject)?;
        store.grant_storage_consent(subject, &phr_schema::RecordType::ALL)?;
        println!("recorded a storage consent of {subject} for every data type");
    }
    let skipped = parsed.skipped_daily_totals;
    let (lines, records): (Vec<usize>, Vec<_>) = parsed.records.into_iter().unzip();
    let report = store.import_records(subject, &records, chrono::Utc::now())?;
    for (i, why) in &report.rejected {
        let line = lines.get(*i).copied().unwrap_or_default();
        eprintln!(
            "{}: line {line}: refused: {} ({why})",
            file.display(),
            why.code()
        );
    }
    println!(
        "imported for {subject}: {} stored, {} duplicate, {} rejected; {} daily totals skipped",
        report.stored,
        report.duplicate,
        report.rejected.len(),
        skipped
    );
    Ok(if report.rejected.is_empty() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(1)
    })
}
