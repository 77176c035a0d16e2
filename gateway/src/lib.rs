//! The PHR gateway: receives record batches from bridges over MQTT, attributes each record to
//! the person whose device binding covers its measured time, stores it only with that
//! person's storage consent, acks the bridge after the commit, and serves the data through a
//! JWT-authenticated API.
//!
//! # Layout
//! - [`config`]: the configuration struct, its defaults and the TOML file.
//! - [`broker`]: the embedded rumqttd broker.
//! - [`consumer`]: the MQTT subscriber: open sealed batches, group commit, then a sealed ack.
//! - [`ingest`]: pure planning: validate, attribute, consent-check each record (the store
//!   crate's, `phr_store::ingest`: every backend applies it inside its ingest transaction).
//! - [`store`]: the store crate (`phr_store`): its traits and the SQLite backend.
//! - [`access`], [`auth`], [`idp`], [`channel`], [`pairing`]: the access core crate
//!   (`phr_access`): the data access layer (scope AND consent AND object, plus the disclosure
//!   log), tokens, trusted OpenID providers, the bridges' channels, starting a pairing, and
//!   exports.
//! - [`api`]: HTTP routes.
//! - [`dashboard`]: the dashboards crate (`phr_dashboards`, in `dashboards/`): the
//!   server-rendered pages (owner, clinician, pairing, sign-in) and their view model, mounted
//!   here.
//! - [`limits`]: per-caller rate limits.
//! - [`metrics`]: Prometheus counters.
//! - [`oauth`]: client credentials for PHR companies (token endpoint logic, discovery).
//! - time: one clock ([`Options::clock`], a [`store::Clock`]) given at start, held by the
//!   API's and the dashboards' state, the consumer and the identity providers; see below.
//!
//! # Time
//! Every decision about time reads the gateway's clock, never the system's directly: token
//! `exp`/`nbf`/`iat` (the gateway's own, providers', client assertions: jsonwebtoken's own
//! time checks are off), consent validity, rate-limit refill, sign-in, session, pairing and
//! export times, the nearby list's staleness, held records' expiry, the ingest time stamped on
//! records. The binary always uses the system clock; tests pass one they move forward
//! instead of sleeping ([`store::OffsetClock`]). Left on `Instant` (or the system clock),
//! because they measure, pace or only record rather than decide: request latency and commit
//! durations in [`metrics`]; the consumer's reconnect back-off, the broker's readiness probe
//! and the front's retries; the hold sweeper's interval (what it expires is the clock's; a
//! test that moves the clock calls `expire_held` itself); the identity providers' key and
//! discovery refetch pacing (a monotonic limit on requests to them); the channel-key cache's
//! freshness; the front's one-refusal-line-a-second log throttle; the store's time budget for
//! a sync page's scan and its `created_at` stamps on people, bridges, devices, bindings and
//! clients; and the operator CLI (`main.rs`).

pub mod api;
pub mod broker;
pub mod config;
pub mod consumer;
pub mod limits;
pub mod metrics;
pub mod oauth;

use crate::store::prelude::*;
use crate::store::SharedClock;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, App, HttpServer};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use phr_schema::mqtt::MqttUrl;
use phr_schema::Topics;

pub use config::Config;
pub use phr_access::{self as access, auth, channel, idp, pairing};
pub use phr_dashboards as dashboard;
pub use phr_store as store;
pub use phr_store::ingest;

pub use phr_access::{Error, Result};

/// How long each part of the gateway gets to stop.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// A running gateway.
#[derive(Debug)]
pub struct Gateway {
    pub http_addr: SocketAddr,
    /// Where `/metrics` is served when it has its own listener (`metrics.listen`).
    pub metrics_addr: Option<SocketAddr>,
    /// The broker the gateway consumes from (the embedded one, or the external one).
    pub mqtt: MqttUrl,
    pub store: Arc<Store>,
    pub keys: Arc<auth::Keys>,
    /// The gateway's channel key (bridges are configured with its public half).
    pub channels: Arc<channel::Channels>,
    pub metrics: Arc<metrics::Metrics>,
    /// The gateway's MQTT client (messages to bridges).
    pub client: rumqttc::AsyncClient,
    pub topics: Topics,
    /// Where the gateway reads the time ([`Options::clock`]).
    pub clock: SharedClock,
    subscribed: watch::Receiver<bool>,
    server: actix_web::dev::ServerHandle,
    /// Each task with its name for the log.
    tasks: Vec<(&'static str, tokio::task::JoinHandle<()>)>,
}

pub use store::Store;

/// Binds the HTTP address from the config, naming it if it is taken.
pub fn bind_http(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).map_err(|e| Error::AddressInUse {
        addr,
        what: "HTTP API",
        source: e,
    })
}

/// Starts everything: store, key, broker (unless external), MQTT consumer, HTTP API on
/// `http` (bound by the caller, so tests can pass port 0).
pub async fn start(
    config: &Config,
    http: TcpListener,
    shutdown: CancellationToken,
) -> Result<Gateway> {
    start_with(config, http, Options::default(), shutdown).await
}

/// As [`start`], with the embedded broker's front on `mqtt` when given (bound by the caller,
/// like `http`) instead of on `mqtt.listen`.
pub async fn start_with_mqtt(
    config: &Config,
    http: TcpListener,
    mqtt: Option<TcpListener>,
    shutdown: CancellationToken,
) -> Result<Gateway> {
    let options = Options {
        mqtt,
        ..Options::default()
    };
    start_with(config, http, options, shutdown).await
}

/// What a caller may hand [`start_with`] besides the configuration.
#[derive(Debug)]
pub struct Options {
    /// Where the embedded broker's front listens (bound by the caller); `None`: on
    /// `mqtt.listen`.
    pub mqtt: Option<TcpListener>,
    /// Where every decision about time reads it. The binary always uses the system clock;
    /// tests give a clock they can move forward ([`store::OffsetClock`]).
    pub clock: SharedClock,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            mqtt: None,
            clock: store::SystemClock::shared(),
        }
    }
}

/// As [`start`], with [`Options`].
pub async fn start_with(
    config: &Config,
    http: TcpListener,
    options: Options,
    shutdown: CancellationToken,
) -> Result<Gateway> {
    let Options { mqtt, clock } = options;
    // Configuration read from files first, so that a bad one starts nothing.
    let tls = config.http_tls()?;
    let metrics_token = config.metrics.bearer_token()?;
    std::fs::create_dir_all(&config.data_dir).map_err(|e| Error::io(&config.data_dir, e))?;
    let store = Arc::new(Store::open(&config.store_path())?);
    store.set_default_time_zone(config.default_time_zone()?)?;
    store.set_hold_without_consent_days(config.ingest.hold_without_consent_days);
    // Holds that ran out while the gateway was down end before anything is served.
    expire_held(&store, clock.now());
    // The issuer: as configured, else the address actually bound. Written down so that
    // `phr-gateway token issue` signs for the same issuer.
    let issuer = match http.local_addr() {
        Ok(addr) if config.auth.issuer.is_empty() => {
            format!("{}://{addr}", config.http_scheme())
        }
        _ => config.issuer(),
    };
    let keys = Arc::new(auth::Keys::load_or_create(
        &config.keys_dir(),
        &issuer,
        &config.auth.audience,
    )?);
    std::fs::write(config.keys_dir().join(config::ISSUER_FILE), &issuer)
        .map_err(|e| Error::io(&config.keys_dir(), e))?;
    let channels = Arc::new(channel::Channels::load_or_create(
        &config.keys_dir(),
        store.clone(),
    )?);
    let metrics = Arc::new(metrics::Metrics::default());

    // The gateway's own credential towards its embedded broker, fresh at every start.
    let gateway_secret = auth::random_hex::<24>();
    let external = config.external_broker()?;
    let embedded = external.is_none();
    let topics = Topics::new(&config.mqtt.topic_prefix);
    // `mqtt` is where bridges connect; `own` where the gateway's client does (the embedded
    // broker's private port, behind its authorising front).
    let (mqtt, own) = match external {
        Some(url) => (url.clone(), url),
        None => {
            let listen = config.mqtt.listen;
            let access = broker::Access {
                gateway_secret: gateway_secret.clone(),
                store: store.clone(),
            };
            let tls = match config.mqtt_tls()? {
                Some((cert, key)) => Some(broker::tls_acceptor(cert, key)?),
                None => None,
            };
            let tls_on = tls.is_some();
            let public = match mqtt {
                Some(l) => l,
                None => broker::bind_public(listen)?,
            };
            let guarded = broker::start_guarded(
                public,
                tls,
                access,
                topics.clone(),
                metrics.clone(),
                shutdown.clone(),
            )
            .await?;
            // The port bound, not the one asked for: `mqtt.listen` may say port 0.
            let bound = guarded.public;
            let mut public = MqttUrl::new(bound.ip().to_string(), bound.port());
            public.tls = tls_on;
            (public, guarded.private)
        }
    };

    let (subscribed_tx, subscribed) = watch::channel(false);
    let consumer_config = consumer::ConsumerConfig {
        mqtt: own,
        topics: topics.clone(),
        limits: config.limits(),
        credentials: if embedded {
            Some((broker::GATEWAY_USER.to_owned(), gateway_secret.clone()))
        } else {
            mqtt.password
                .as_ref()
                .map(|p| (broker::GATEWAY_USER.to_owned(), p.expose().to_owned()))
        },
        channels: channels.clone(),
        clock: clock.clone(),
    };
    let idp = Arc::new(idp::Providers::from_config(
        &config.auth.providers,
        clock.clone(),
    )?);
    let (client, eventloop) = consumer::connect(&consumer_config);
    let consumer = tokio::spawn(consumer::run(
        consumer_config,
        client.clone(),
        eventloop,
        store.clone(),
        metrics.clone(),
        subscribed_tx,
        shutdown.clone(),
    ));

    let state = api::AppState {
        idp: idp.clone(),
        public_base: (!config.auth.issuer.is_empty()).then(|| config.issuer()),
        store: store.clone(),
        keys: keys.clone(),
        channels: channels.clone(),
        metrics: metrics.clone(),
        mqtt: client.clone(),
        topics: topics.clone(),
        limiter: Arc::new(limits::RateLimiter::new(
            config.http.requests_per_minute,
            config.http.burst,
        )),
        exports: api::export::ExportSlots::new(config.export.per_subject, config.export.total),
        clock: clock.clone(),
    };
    let dashboards = dashboard::DashboardState {
        store: state.store.clone(),
        idp: state.idp.clone(),
        channels: state.channels.clone(),
        mqtt: state.mqtt.clone(),
        topics: state.topics.clone(),
        exports: state.exports.clone(),
        public_base: state.public_base.clone(),
        clock: state.clock.clone(),
    };
    let http_addr = http
        .local_addr()
        .map_err(|e| Error::Config(e.to_string()))?;
    let metrics_token = metrics_token.as_ref().map(|t| t.0.as_str());
    let public_scrape = metrics::Scrape::new(config.metrics.listen.is_none(), metrics_token);
    let forwarding = api::forwarded::Forwarding {
        trusted_proxies: config.http.trusted_proxies.clone(),
        tls: tls.is_some(),
    };
    let mut extra_tasks = vec![(
        "hold sweeper",
        tokio::spawn(sweep_held(store.clone(), clock.clone(), shutdown.clone())),
    )];
    let metrics_addr = match config.metrics.listen {
        Some(addr) => {
            let (addr, task) = serve_metrics(
                addr,
                state.clone(),
                metrics::Scrape::new(true, metrics_token),
                shutdown.clone(),
            )?;
            extra_tasks.push(("metrics server", task));
            Some(addr)
        }
        None => None,
    };
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(state.clone()))
            .app_data(web::Data::new(dashboards.clone()))
            .app_data(web::Data::new(dashboards.clone()))
            .app_data(web::Data::new(public_scrape.clone()))
            .app_data(web::Data::new(forwarding.clone()))
            .app_data(web::Data::from(state.metrics.clone()))
            .app_data(web::PayloadConfig::new(api::MAX_BODY_BYTES))
            .app_data(web::QueryConfig::default().error_handler(|e, _| {
                api::error::ApiError::bad_request("invalid_query", e.to_string()).into()
            }))
            .app_data(
                web::JsonConfig::default()
                    .limit(api::MAX_BODY_BYTES)
                    .error_handler(|e, _| {
                        api::body_error(&e.to_string(), actix_web::ResponseError::status_code(&e))
                    }),
            )
            .app_data(
                web::FormConfig::default()
                    .limit(api::MAX_BODY_BYTES)
                    .error_handler(|e, _| {
                        api::body_error(&e.to_string(), actix_web::ResponseError::status_code(&e))
                    }),
            )
            .app_data(web::PathConfig::default().error_handler(|e, _| {
                api::error::ApiError::bad_request("invalid_path", e.to_string()).into()
            }))
            .wrap(actix_web::middleware::from_fn(limits::rate_limit))
            // Outermost, so that it times rate-limited requests too.
            .wrap(actix_web::middleware::from_fn(metrics::observe_requests))
            .configure(api::configure)
            .default_service(web::to(api::not_found))
    })
    .workers(2)
    .disable_signals()
    .shutdown_timeout(5);
    let server = match tls {
        Some(tls) => server.listen_rustls_0_23(http, tls),
        None => server.listen(http),
    }
    .map_err(|e| Error::AddressInUse {
        addr: http_addr,
        what: "HTTP API",
        source: e,
    })?
    .run();
    let server_handle = server.handle();
    let http_task = tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    let stopper = {
        let handle = server_handle.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            handle.stop(true).await;
        })
    };
    tracing::info!(%http_addr, broker = %mqtt, data_dir = %config.data_dir.display(), "gateway started");
    let mut tasks = vec![
        ("MQTT consumer", consumer),
        ("HTTP server", http_task),
        ("HTTP stopper", stopper),
    ];
    tasks.extend(extra_tasks);
    Ok(Gateway {
        http_addr,
        metrics_addr,
        mqtt,
        store,
        keys,
        channels,
        metrics,
        client,
        topics,
        clock,
        subscribed,
        server: server_handle,
        tasks,
    })
}

/// How often records held without storage consent are checked for expiry (and once at
/// start).
pub const HOLD_SWEEP_EVERY: Duration = Duration::from_secs(3600);

/// Deletes the held records expired at `now` ([`Store::expire_held`]), logging how many.
fn expire_held(store: &dyn Backend, now: chrono::DateTime<chrono::Utc>) {
    match store.expire_held(now) {
        Ok(0) => {}
        Ok(n) => tracing::info!(expired = n, "records held without storage consent expired"),
        Err(e) => {
            tracing::warn!(error = %e, "expiring records held without storage consent failed")
        }
    }
}

/// Runs [`expire_held`] every [`HOLD_SWEEP_EVERY`] until `shutdown`. The sweep's pace is
/// tokio's (a timer), what it expires is decided at `clock`'s time.
async fn sweep_held(store: Arc<dyn Backend>, clock: SharedClock, shutdown: CancellationToken) {
    let start = tokio::time::Instant::now() + HOLD_SWEEP_EVERY;
    let mut every = tokio::time::interval_at(start, HOLD_SWEEP_EVERY);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let (store, now) = (store.clone(), clock.now());
        if let Err(e) = tokio::task::spawn_blocking(move || expire_held(&store, now)).await {
            tracing::warn!(error = %e, "the hold sweep stopped");
        }
    }
}

/// `/metrics` on its own listener (`metrics.listen`), stopped by `shutdown`.
fn serve_metrics(
    addr: SocketAddr,
    state: api::AppState,
    scrape: metrics::Scrape,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let in_use = |e| Error::AddressInUse {
        addr,
        what: "metrics",
        source: e,
    };
    let listener = TcpListener::bind(addr).map_err(in_use)?;
    let bound = listener.local_addr().map_err(in_use)?;
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(state.clone()))
            .app_data(web::Data::new(scrape.clone()))
            .route(api::METRICS, web::get().to(api::metrics))
            .default_service(web::to(api::not_found))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(5)
    .listen(listener)
    .map_err(in_use)?
    .run();
    let handle = server.handle();
    let task = tokio::spawn(async move {
        tokio::pin!(server);
        tokio::select! {
            r = &mut server => if let Err(e) = r {
                tracing::error!(error = %e, "metrics server stopped");
            },
            () = shutdown.cancelled() => {
                handle.stop(true).await;
                let _ = server.await;
            }
        }
    });
    tracing::info!(%bound, "metrics served on their own listener");
    Ok((bound, task))
}

impl Gateway {
    /// Waits until the consumer's subscription is live, up to `timeout`.
    pub async fn wait_subscribed(&mut self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.subscribed.wait_for(|s| *s))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Waits for every task to end (after the shutdown token is cancelled).
    ///
    /// Each part gets [`STOP_GRACE`]; one that has not stopped by then is aborted and named in
    /// the log, so shutting down never hangs. (Seen once in many runs against Mosquitto: a
    /// task join that never completed; the cause is not found yet.)
    pub async fn stopped(self) {
        if tokio::time::timeout(STOP_GRACE, self.server.stop(true))
            .await
            .is_err()
        {
            tracing::warn!("the HTTP server did not stop in time");
        }
        for (name, task) in self.tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout(STOP_GRACE, task).await.is_err() {
                tracing::warn!(task = name, "did not stop in time; aborted");
                abort.abort();
            }
        }
    }
}

/// `phr-gateway serve`: runs until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<()> {
    let http = bind_http(config.http.listen)?;
    let gateway = start(&config, http, shutdown.clone()).await?;
    shutdown.cancelled().await;
    gateway.stopped().await;
    Ok(())
}
