//! `phr-gateway`: parses the command line, starts tracing, loads the config, calls the library.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

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
    /// Token commands.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Disclosure-log commands.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// OAuth clients (PHR companies) that get tokens at POST /oauth/token.
    #[command(subcommand)]
    Clients(ClientsCommand),
    /// Dashboard commands (sign-in links).
    #[command(subcommand)]
    Dashboard(DashboardCommand),
    /// Bridges: enrol one (register its key), print the gateway's channel key, list refused
    /// batches.
    #[command(subcommand)]
    Bridges(BridgesCommand),
    /// Devices: end a binding as an operator (a transfer to a new owner).
    #[command(subcommand)]
    Devices(DevicesCommand),
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

#[derive(Debug, Subcommand)]
enum DashboardCommand {
    /// Print a one-time sign-in link to the dashboards for a person. The link works once,
    /// for 15 minutes, and opens an 8-hour session; hand it over privately.
    Link {
        #[arg(long, env = "PHR_DATA_DIR", default_value = "phr-data")]
        data_dir: PathBuf,
        /// Who signs in: the person (owner) or the clinician's id.
        #[arg(long)]
        subject: String,
        /// `owner` sees their own data; `clinician` the patients who consented to them.
        #[arg(long, value_enum)]
        role: DashboardRole,
        /// The gateway's address as the browser reaches it [default: the issuer the gateway
        /// last ran with ({data_dir}/keys/issuer), else http://127.0.0.1:8080].
        #[arg(long)]
        base_url: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum DashboardRole {
    Clinician,
    Owner,
}

#[derive(Debug, Subcommand)]
enum BridgesCommand {
    /// Enrol a bridge: register its public key (`phr-bridge identity` prints it) and print
    /// the gateway key to configure on the bridge (`gateway_key`). Only enrolled bridges may
    /// connect, and only what they seal with their key counts.
    Enrol {
        #[arg(long, env = "PHR_DATA_DIR", default_value = "phr-data")]
        data_dir: PathBuf,
        /// 1-64 characters of A-Z a-z 0-9 . _ : -
        #[arg(long)]
        bridge_id: String,
        /// The bridge's Ed25519 public key, 64 hex characters.
        #[arg(long)]
        public_key: String,
    },
    /// Revoke a bridge's enrolment (lost or compromised): it can no longer connect, and what
    /// it seals is no longer read (a running gateway notices within a minute; the admin API,
    /// `DELETE /api/v1/admin/bridges/{id}`, at once).
    Revoke {
        #[arg(long, env = "PHR_DATA_DIR", default_value = "phr-data")]
        data_dir: PathBuf,
        #[arg(long)]
        bridge_id: String,
    },
    /// Print the gateway's channel key (what bridges are configured with as `gateway_key`).
    GatewayKey {
        #[arg(long, env = "PHR_DATA_DIR", default_value = "phr-data")]
        data_dir: PathBuf,
    },
    /// Batches refused unread or as a whole, per bridge, reason and minute.
    Refused {
        #[arg(long, env = "PHR_DATA_DIR", default_value = "phr-data")]
        data_dir: PathBuf,
        /// How far back, in minutes.
        #[arg(long, default_value_t = 60)]
        minutes: i64,
    },
}

#[derive(Debug, Subcommand)]
enum DevicesCommand {
    /// End whoever's open binding of a device now (a transfer: the new owner then pairs it).
    /// Written to the former owner's disclosure log.
    Release {
        #[arg(long, env = "PHR_DATA_DIR", default_value = "phr-data")]
        data_dir: PathBuf,
        #[arg(long)]
        device_id: String,
        /// Why, for the former owner's log.
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
enum ClientsCommand {
    /// Register a client. With --secret, a secret is generated and printed once; the gateway
    /// keeps only a salted hash of it.
    Add {
        #[arg(long, env = "PHR_DATA_DIR", default_value = "phr-data")]
        data_dir: PathBuf,
        /// 1-64 characters of A-Z a-z 0-9 . _ : -
        #[arg(long)]
        client_id: String,
        /// The company's name, for people.
        #[arg(long)]
        name: String,
        /// Space-separated SMART v2 system scopes, e.g. "system/Observation.rs" or
        /// "system/Observation.rs?code=http://loinc.org|55423-8".
        #[arg(long)]
        scope: String,
        /// The client's public keys (a JWK Set, JSON) for private_key_jwt.
        #[arg(long)]
        jwks: Option<PathBuf>,
        /// Generate a client secret (client_secret_basic / client_secret_post).
        #[arg(long)]
        secret: bool,
    },
    /// List the registered clients (never their secrets).
    List {
        #[arg(long, env = "PHR_DATA_DIR", default_value = "phr-data")]
        data_dir: PathBuf,
    },
    /// Disable a client: it gets no more tokens (those it holds expire within minutes).
    Disable {
        #[arg(long, env = "PHR_DATA_DIR", default_value = "phr-data")]
        data_dir: PathBuf,
        #[arg(long)]
        client_id: String,
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
    /// The gateway's password (user `phr-gateway`) at the external broker.
    #[arg(long, env = "PHR_MQTT_PASSWORD", hide_env_values = true)]
    mqtt_password: Option<phr_schema::mqtt::MqttPassword>,
    /// Topic prefix shared with bridges.
    #[arg(long, env = "PHR_TOPIC_PREFIX")]
    topic_prefix: Option<String>,
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
        // Logs to stderr: stdout is what a command prints for people and scripts.
        .with_writer(std::io::stderr)
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
            if let Some(p) = a.mqtt_password {
                config.mqtt.password = Some(p);
            }
            if let Some(p) = a.topic_prefix {
                config.mqtt.topic_prefix = p;
            }
            // A secret: from the environment only, never a flag (flags show in `ps`).
            if let Ok(t) = std::env::var("PHR_METRICS_TOKEN") {
                config.metrics.token = Some(phr_gateway::config::Secret(t));
            }
            phr_gateway::run(config, shutdown_on_ctrl_c())
                .await
                .context("gateway failed")?;
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
            // The issuer the gateway last ran with, unless one is configured.
            let issuer = match std::fs::read_to_string(
                config.keys_dir().join(phr_gateway::config::ISSUER_FILE),
            ) {
                Ok(i) if config.auth.issuer.is_empty() && !i.trim().is_empty() => {
                    i.trim().to_owned()
                }
                _ => config.issuer(),
            };
            let keys = phr_gateway::auth::Keys::load_or_create(
                &config.keys_dir(),
                &issuer,
                &config.auth.audience,
            )?;
            let ttl = chrono::TimeDelta::seconds(ttl.unwrap_or(config.auth.token_ttl_secs));
            println!("{}", keys.issue(&subject, &scope, ttl, chrono::Utc::now())?);
        }
        Command::Audit(AuditCommand::Verify { data_dir }) => return verify_audit(&data_dir),
        Command::Clients(c) => return clients(c),
        Command::Bridges(c) => return bridges(c),
        Command::Devices(DevicesCommand::Release {
            data_dir,
            device_id,
            reason,
        }) => {
            let store = open_store(&data_dir)?;
            match store.operator_release(&device_id, "operator", &reason, chrono::Utc::now())? {
                Some(owner) => println!("ended {owner}'s binding of {device_id}"),
                None => {
                    println!("nobody holds an open binding of {device_id}");
                    return Ok(std::process::ExitCode::from(1));
                }
            }
        }
        Command::Dashboard(DashboardCommand::Link {
            data_dir,
            subject,
            role,
            base_url,
        }) => dashboard_link(&data_dir, &subject, role, base_url)?,
        Command::Import {
            data_dir,
            subject,
            file,
            grant_storage_consent,
        } => return import(&data_dir, &subject, &file, grant_storage_consent),
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn open_store(data_dir: &std::path::Path) -> anyhow::Result<phr_gateway::Store> {
    let config = Config {
        data_dir: data_dir.to_owned(),
        ..Config::default()
    };
    std::fs::create_dir_all(data_dir).with_context(|| format!("{}", data_dir.display()))?;
    Ok(phr_gateway::Store::open(&config.store_path())?)
}

/// `bridges enrol|revoke|gateway-key|refused`.
fn bridges(command: BridgesCommand) -> anyhow::Result<std::process::ExitCode> {
    let gateway_key = |data_dir: &std::path::Path| -> anyhow::Result<String> {
        let config = Config {
            data_dir: data_dir.to_owned(),
            ..Config::default()
        };
        let key = phr_gateway::channel::load_or_create(&config.keys_dir())?;
        Ok(phr_schema::channel::key_to_hex(&key.verifying_key()))
    };
    match command {
        BridgesCommand::Enrol {
            data_dir,
            bridge_id,
            public_key,
        } => {
            if !phr_schema::envelope::is_valid_id(&bridge_id) {
                anyhow::bail!("--bridge-id must be 1-64 characters of A-Z a-z 0-9 . _ : -");
            }
            let store = open_store(&data_dir)?;
            store.register_bridge_key(&bridge_id, public_key.trim())?;
            println!("enrolled bridge {bridge_id}");
            println!("configure the bridge with:");
            println!("gateway_key = \"{}\"", gateway_key(&data_dir)?);
        }
        BridgesCommand::GatewayKey { data_dir } => println!("{}", gateway_key(&data_dir)?),
        BridgesCommand::Revoke {
            data_dir,
            bridge_id,
        } => {
            if open_store(&data_dir)?.revoke_bridge(&bridge_id)? {
                println!("revoked bridge {bridge_id}");
            } else {
                println!("no enrolled bridge {bridge_id}");
                return Ok(std::process::ExitCode::from(1));
            }
        }
        BridgesCommand::Refused { data_dir, minutes } => {
            let config = Config {
                data_dir,
                ..Config::default()
            };
            let store = phr_gateway::Store::open_read_only(&config.store_path())?;
            let since = chrono::Utc::now() - chrono::TimeDelta::minutes(minutes.max(0));
            let rows = store.refused_batches(since, 10_000)?;
            if rows.is_empty() {
                println!("no refused batches in the last {minutes} minutes");
            }
            for r in rows {
                println!(
                    "{}\t{}\t{}\t{}",
                    r.minute.to_rfc3339(),
                    r.bridge_id,
                    r.reason,
                    r.batches
                );
            }
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// `clients add|list|disable`.
fn clients(command: ClientsCommand) -> anyhow::Result<std::process::ExitCode> {
    use phr_gateway::store::clients::NewClient;
    match command {
        ClientsCommand::Add {
            data_dir,
            client_id,
            name,
            scope,
            jwks,
            secret,
        } => {
            let jwks = match jwks {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("{}", path.display()))?;
                    Some(
                        serde_json::from_str(&text)
                            .with_context(|| format!("{} is not JSON", path.display()))?,
                    )
                }
                None => None,
            };
            let new = NewClient {
                client_id,
                name,
                allowed_scopes: scope.split_whitespace().map(str::to_owned).collect(),
                jwks,
                secret,
            };
            if let Err(e) = phr_gateway::oauth::check_new_client(&new) {
                anyhow::bail!("{} ({})", e.message, e.code);
            }
            let store = open_store(&data_dir)?;
            let generated = store.add_client(&new)?;
            println!(
                "registered client {} with scopes: {}",
                new.client_id,
                new.allowed_scopes.join(" ")
            );
            if let Some(s) = generated {
                println!("client_secret: {}", s.expose());
                println!(
                    "WARNING: this secret is shown only now and is NOT stored by the gateway \
                     (only a salted hash is). Hand it to the client securely; if it is lost, \
                     register a new client."
                );
            }
        }
        ClientsCommand::List { data_dir } => {
            let config = Config {
                data_dir,
                ..Config::default()
            };
            let store = phr_gateway::Store::open_read_only(&config.store_path())?;
            let clients = store.list_clients()?;
            if clients.is_empty() {
                println!("no clients registered");
            }
            for c in clients {
                println!(
                    "{}\t{}\t{}\tauth: {}\tcreated {}{}",
                    c.client_id,
                    c.name,
                    c.allowed_scopes.join(" "),
                    c.auth_methods().join(","),
                    c.created_at.to_rfc3339(),
                    c.disabled_at
                        .map(|d| format!("\tDISABLED {}", d.to_rfc3339()))
                        .unwrap_or_default()
                );
            }
        }
        ClientsCommand::Disable {
            data_dir,
            client_id,
        } => {
            let store = open_store(&data_dir)?;
            if store.disable_client(&client_id, chrono::Utc::now())? {
                println!("client {client_id} disabled");
            } else {
                println!("no enabled client {client_id}");
                return Ok(std::process::ExitCode::from(1));
            }
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// `dashboard link`: issues a one-time sign-in code and prints the link carrying it.
fn dashboard_link(
    data_dir: &std::path::Path,
    subject: &str,
    role: DashboardRole,
    base_url: Option<String>,
) -> anyhow::Result<()> {
    use phr_gateway::dashboard::{session, Role};
    if !phr_schema::envelope::is_valid_id(subject) {
        anyhow::bail!("--subject must be 1-64 characters of A-Z a-z 0-9 . _ : -");
    }
    let role = match role {
        DashboardRole::Clinician => Role::Clinician,
        DashboardRole::Owner => Role::Owner,
    };
    let config = Config {
        data_dir: data_dir.to_owned(),
        ..Config::default()
    };
    let base = match base_url {
        Some(b) => b,
        None => std::fs::read_to_string(config.keys_dir().join(phr_gateway::config::ISSUER_FILE))
            .ok()
            .map(|i| i.trim().to_owned())
            .filter(|i| !i.is_empty())
            .unwrap_or_else(|| "http://127.0.0.1:8080".to_owned()),
    };
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        anyhow::bail!("--base-url must start with http:// or https://");
    }
    if !config.store_path().exists() {
        anyhow::bail!(
            "no store at {}; is --data-dir the gateway's data directory?",
            config.store_path().display()
        );
    }
    let store = phr_gateway::Store::open(&config.store_path())?;
    if role == Role::Owner && store.person_time_zone(subject)?.is_none() {
        eprintln!("note: {subject} is not registered here yet; their dashboard will be empty");
    }
    let ttl = session::SIGNIN_CODE_TTL;
    let code = store.issue_signin_code(subject, role, ttl, chrono::Utc::now())?;
    println!("{}", session::signin_url(&base, &code));
    eprintln!(
        "one-time sign-in link for {subject} ({}), valid {} minutes",
        role.as_str(),
        ttl.num_minutes()
    );
    Ok(())
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
