//! `phr-demo`: parses the command line, starts tracing, runs the demo until Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;

use phr_demo::{AddrFlag, DemoOptions};
use phr_gateway::Config;

/// Run the whole pipeline on embedded defaults: the gateway with its embedded broker and
/// SQLite store, a simulated bridge with wearables, two demo people, a clinician and a company.
#[derive(Debug, Parser)]
#[command(name = "phr-demo", version)]
struct Cli {
    /// Data directory (a restarted demo resumes where it stopped).
    #[arg(long, default_value = "./phr-data")]
    data_dir: PathBuf,
    /// HTTP API address [default: 127.0.0.1:8080, or a free port if that is taken].
    #[arg(long)]
    http: Option<SocketAddr>,
    /// Embedded broker address [default: 127.0.0.1:1883, or a free port if that is taken].
    #[arg(long)]
    mqtt: Option<SocketAddr>,
    /// Simulated bands of the demo person (worn at once).
    #[arg(long, default_value_t = 2)]
    devices: usize,
    /// Hours of history the bands hold at start (30 days by default).
    #[arg(long, default_value_t = phr_demo::DEFAULT_HISTORY_HOURS)]
    history_hours: i64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rumqttd=warn,rumqttc=warn,actix_server=warn".into()),
        )
        // Logs to stderr: stdout is what the demo prints for people.
        .with_writer(std::io::stderr)
        .init();
    let a = Cli::parse();
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
    let shutdown = CancellationToken::new();
    let t = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        t.cancel();
    });
    phr_demo::run(opts, shutdown).await.context("demo failed")
}
