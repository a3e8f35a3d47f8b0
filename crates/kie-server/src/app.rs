//! The service: shared state, the router, start-up checks and graceful shutdown.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::auth::Authenticator;
use crate::config::{host_key, Config};
use crate::http::{self, ApiError};
use crate::settings::{self, LiveSettings};
use crate::store::{self, Db, OpenOptions};

/// Everything a handler needs: one `Arc`, so the clone every extractor and middleware
/// makes per request is a single reference-count increment (cloning the fields one by
/// one was ~10% of a `GET /api/v1/chat/credit`, see BENCHMARKS.md). Fields are reached
/// through `Deref` (`state.db`, `state.config`, …).
#[derive(Clone)]
pub struct AppState(Arc<AppStateInner>);

impl std::ops::Deref for AppState {
    type Target = AppStateInner;
    fn deref(&self) -> &AppStateInner {
        &self.0
    }
}

/// The fields of [`AppState`].
pub struct AppStateInner {
    pub config: Arc<Config>,
    pub db: Db,
    /// File bytes (local directory or S3).
    pub blobs: crate::blobs::Blobs,
    pub auth: Arc<Authenticator>,
    pub settings: LiveSettings,
    /// Download links, URL-upload client (see `files::FilesState`).
    pub files: Arc<crate::files::FilesState>,
    /// Flips to `true` when the server starts shutting down (ends long polls).
    pub shutdown: watch::Receiver<bool>,
    /// Wake-ups of task workers and the webhook dispatcher.
    pub jobs: crate::tasks::Runtime,
    /// The per-client-IP request limit (`None`: off). See `conn_guard`.
    pub ip_limiter: Option<Arc<crate::conn_guard::IpLimiter>>,
    /// Whether the database is reachable (PostgreSQL probe; see `store::health`).
    pub db_health: store::health::DbHealth,
    /// Direct point reads for the hottest endpoints (SQLite only; see `store::fastread`).
    pub fast: Option<Arc<crate::store::fastread::FastReader>>,
    /// Per-account limit of the catalog endpoints (`None`: off). See `api::models`.
    pub catalog_limiter: Option<Arc<crate::ratelimit::KeyedLimiter<Arc<str>>>>,
}

/// Errors that stop `kie serve` from starting, each one line for the operator.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Store(#[from] store::OpenError),
    #[error("cannot open storage: {0}")]
    Blobs(#[from] crate::blobs::BlobError),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: String, reason: String },
    #[error("{0}")]
    Other(String),
}

/// Which feature switch guards a path (see `settings::FEATURES`).
fn feature_of(path: &str) -> Option<&'static str> {
    if path == "/api/v1/chat/credit" {
        Some("credits")
    } else if path == "/api/v1/common/download-url" {
        Some("download-url")
    } else if path.starts_with("/api/file-") {
        Some("file-upload")
    } else if path.starts_with("/api/v1/jobs/") {
        Some("jobs")
    } else {
        None
    }
}

/// Maintenance (455) and disabled features (505) for `/api/...`, before auth.
async fn api_guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(refused) = api_refusal(&state, req.uri().path()) {
        return refused;
    }
    next.run(req).await
}

/// The answer of [`api_guard`] for `path`, if it refuses it.
pub fn api_refusal(state: &AppState, path: &str) -> Option<Response> {
    if !path.starts_with("/api/") {
        return None;
    }
    let s = state.settings.current();
    let err = if s.maintenance {
        Some(ApiError::maintenance())
    } else {
        feature_of(path)
            .filter(|f| s.is_disabled(f))
            .map(ApiError::feature_disabled)
    };
    err.map(|mut e| {
        e.upload = path.starts_with("/api/file-");
        e.into_response()
    })
}

/// Answers API and worker requests at once while the database is known to be down,
/// and answers requests already waiting (for a connection, or for a query on a stalled
/// database) as soon as it goes down: code 500 with a request id, never a hang.
/// Dropping a handler mid-transaction rolls the transaction back.
async fn db_guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if path.starts_with("/links/") || path.starts_with("/files/") {
        // File serving may answer from its caches while the database is down: give it
        // a moment, never the full connection wait.
        let mut down = state.db_health.subscribe();
        return tokio::select! {
            r = next.run(req) => r,
            Ok(()) = async {
                down.wait_for(|d| *d).await.map(|_| ())?;
                tokio::time::sleep(Duration::from_millis(500)).await;
                Ok::<(), watch::error::RecvError>(())
            } => {
                tracing::error!("serving a file failed: database unreachable");
                let body = r#"{"code":500,"msg":"server error","data":null}"#;
                let mut r = (StatusCode::INTERNAL_SERVER_ERROR, body).into_response();
                let h = r.headers_mut();
                h.insert(
                    axum::http::header::CONTENT_TYPE,
                    axum::http::HeaderValue::from_static("application/json"),
                );
                h.insert(
                    axum::http::header::CACHE_CONTROL,
                    axum::http::HeaderValue::from_static("no-store"),
                );
                r
            }
        };
    }
    if !(path.starts_with("/api/") || path.starts_with("/internal/")) {
        return next.run(req).await;
    }
    let upload = path.starts_with("/api/file-");
    let unreachable = move || {
        let mut e = ApiError::internal("database unreachable");
        e.upload = upload;
        e.into_response()
    };
    let mut down = state.db_health.subscribe();
    if *down.borrow_and_update() {
        return unreachable();
    }
    tokio::select! {
        r = next.run(req) => r,
        Ok(_) = down.wait_for(|d| *d) => unreachable(),
    }
}

async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({"status": "ok"}))
}

/// Ready when the database and the object store answer. A real 503 otherwise, whatever
/// the status mode, because load balancers read the HTTP status.
async fn readyz(State(state): State<AppState>) -> Response {
    let (db_ok, store_ok) = tokio::join!(
        async {
            let mut down = state.db_health.subscribe();
            !*down.borrow_and_update() && {
                let ping = tokio::time::timeout(crate::store::health::NO_ANSWER, state.db.ping());
                tokio::select! {
                    r = ping => matches!(r, Ok(Ok(()))),
                    Ok(_) = down.wait_for(|d| *d) => false,
                }
            }
        },
        async {
            matches!(
                tokio::time::timeout(Duration::from_millis(1500), state.blobs.ping()).await,
                Ok(Ok(()))
            )
        },
    );
    let ok = db_ok && store_ok;
    let body = serde_json::json!({"status": if ok {"ready"} else {"unavailable"}, "database": db_ok, "store": store_ok});
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// Sets the `kie_bounded_*` gauges: every in-memory structure keyed by something a
/// client or the load chooses, with its current size and its bound (each bound and its
/// eviction are documented beside the structure).
fn record_bounded_sizes(state: &AppState) {
    use crate::metrics::record_bounded;
    if let Some(l) = &state.ip_limiter {
        record_bounded("ip_limiter", l.len(), crate::conn_guard::IP_LIMITER_MAX);
    }
    record_bounded(
        "key_limiter",
        state.auth.limiter_len(),
        crate::auth::LIMITER_MAX,
    );
    record_bounded("auth_cache", state.auth.cache_len(), crate::auth::CACHE_MAX);
    record_bounded(
        "key_last_used",
        state.auth.last_used_len(),
        crate::auth::LAST_USED_MAX,
    );
    if let Some(l) = &state.catalog_limiter {
        record_bounded("catalog_limiter", l.len(), l.max());
    }
    record_bounded(
        "file_records",
        state.files.records.len(),
        crate::files::RecordCache::MAX,
    );
    let (known, unknown) = state.files.keys.lens();
    let key_max = crate::files::links::KEY_CACHE_MAX;
    record_bounded("link_keys", known, key_max);
    record_bounded("link_keys_unknown", unknown, key_max);
    if let Some(f) = &state.fast {
        let (balances, files, signing) = f.cache_lens();
        let max = crate::store::fastread::MAX_CACHED;
        record_bounded("balance_cache", balances, max);
        record_bounded("file_cache", files, max);
        record_bounded("signing_key_cache", signing, max);
    }
    record_bounded(
        "settings_disabled_features",
        state.settings.current().disabled.len(),
        settings::FEATURES.len(),
    );
    record_bounded(
        "metric_label_sets",
        crate::metrics::request_handles_len(),
        crate::metrics::MAX_HANDLES,
    );
}

async fn metrics_endpoint(State(state): State<AppState>) -> impl IntoResponse {
    record_bounded_sizes(&state);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        crate::metrics::handle().render(),
    )
}

/// The whole router: the public API (documented in OpenAPI), operational endpoints,
/// and the layers every answer passes through.
pub fn router(state: AppState) -> Router {
    crate::metrics::handle();
    let (api, openapi) = crate::api::routes().split_for_parts();
    let openapi_json = Arc::new(openapi.to_pretty_json().expect("openapi serialises"));
    let router = Router::new()
        .merge(api)
        .merge(crate::files::serve::routes())
        .merge(crate::workers::http::routes())
        .merge(crate::console::routes())
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_endpoint))
        .route(
            "/openapi.json",
            get(move || {
                let doc = openapi_json.clone();
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        (*doc).clone(),
                    )
                }
            }),
        )
        .fallback(http::unknown_endpoint)
        .route_layer(middleware::from_fn(http::route_label_layer))
        .layer(middleware::from_fn_with_state(state.clone(), db_guard))
        .layer(middleware::from_fn_with_state(state.clone(), api_guard))
        .layer(axum::extract::DefaultBodyLimit::max(state.config.max_body))
        .layer(middleware::from_fn_with_state(
            state.config.request_body_timeout,
            crate::conn_guard::body_deadline,
        ));
    let router = match &state.ip_limiter {
        Some(l) => router.layer(middleware::from_fn_with_state(
            l.clone(),
            crate::conn_guard::ip_limit,
        )),
        None => router,
    };
    router
        .layer(middleware::from_fn_with_state(
            state.clone(),
            http::envelope_layer,
        ))
        .with_state(state)
}

/// Background work of one server; every task stops when `shutdown` flips.
fn spawn_background(state: &AppState, tasks: &mut JoinSet<()>, shutdown: &watch::Receiver<bool>) {
    tasks.spawn(
        state
            .settings
            .clone()
            .refresh_loop(state.db.clone(), shutdown.clone()),
    );
    tasks.spawn(
        state
            .db_health
            .clone()
            .run(state.db.clone(), shutdown.clone()),
    );
    tasks.spawn(crate::files::sweep::run(
        state.db.clone(),
        state.blobs.clone(),
        state.config.sweep_interval,
        state.config.orphan_grace,
        shutdown.clone(),
    ));
    tasks.spawn(crate::tasks::reaper_loop(
        state.db.clone(),
        state.jobs.clone(),
        state.config.task_timeout,
        shutdown.clone(),
    ));
    tasks.spawn(crate::webhooks::dispatch::run(
        state.clone(),
        shutdown.clone(),
    ));
    for i in 0..state.config.demo_workers {
        tasks.spawn(crate::workers::demo::worker_loop(state.clone(), i));
    }
    let auth = state.auth.clone();
    let mut stop = shutdown.clone();
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(crate::auth::LAST_USED_FLUSH);
        let mut failing = false;
        loop {
            let last = tokio::select! {
                _ = tick.tick() => false,
                _ = stop.changed() => true,
            };
            match auth.flush_last_used().await {
                Ok(_) => failing = false,
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "could not record when keys were last used; retrying");
                }
                Err(_) => {}
            }
            if last {
                return;
            }
        }
    });
    let mut stop = shutdown.clone();
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(crate::metrics::RATE_SAMPLE_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => crate::metrics::sample_rates(),
                _ = stop.changed() => return,
            }
        }
    });
    let auth = state.auth.clone();
    let ip_limiter = state.ip_limiter.clone();
    let catalog_limiter = state.catalog_limiter.clone();
    let mut stop = shutdown.clone();
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    auth.housekeeping();
                    if let Some(l) = &ip_limiter {
                        l.housekeeping();
                    }
                    if let Some(l) = &catalog_limiter {
                        l.housekeeping();
                    }
                }
                _ = stop.changed() => return,
            }
        }
    });
}

/// Opens (and migrates) the database of `config` and opens its object store, which
/// must answer.
async fn open_stores(config: &Config) -> Result<(Db, crate::blobs::Blobs), StartError> {
    store::ensure_writable_dir(&config.data_dir)?;
    let opts = OpenOptions {
        max_connections: config.db_max_connections,
        statement_timeout: config.db_statement_timeout,
        pg_acquire_timeout: config.db_acquire_timeout,
        sqlite_group_commit: config.sqlite_group_commit,
        ..Default::default()
    };
    let db = Db::open(&config.database, &opts).await?;
    let blobs = crate::blobs::Blobs::open_with(&config.storage, &config.s3)?;
    // A store that does not answer (wrong endpoint, missing bucket, bad
    // credentials) stops the start with one line, like an unreachable database.
    if let Err(why) = blobs.check(Duration::from_secs(30)).await {
        return Err(StartError::Other(format!(
            "cannot open storage {}: {why}",
            blobs.describe()
        )));
    }
    Ok((db, blobs))
}

impl AppState {
    /// Opens the database and object store of `config` and builds the state [`router`]
    /// serves, without binding a port or starting background work (the settings
    /// refresh, sweeper, workers…): for driving the router in-process, e.g. with
    /// `tower::ServiceExt::oneshot` in tests. `config.public_url` is used as given.
    /// The sender flips the state's `shutdown` (ends long polls).
    pub async fn open(config: Config) -> Result<(AppState, watch::Sender<bool>), StartError> {
        let (db, blobs) = open_stores(&config).await?;
        AppState::build(config, db, blobs).await
    }

    /// The state of a server on opened stores: records the public URL for `kie admin`,
    /// makes sure the link key ring has a key, loads the settings snapshot.
    async fn build(
        config: Config,
        db: Db,
        blobs: crate::blobs::Blobs,
    ) -> Result<(AppState, watch::Sender<bool>), StartError> {
        // Lets `kie admin` print file URLs with the public base the server uses.
        settings::set(&db, "server.public_url", config.public_url.as_str())
            .await
            .map_err(store_err)?;
        // Lets `kie admin file add` write where this server reads.
        crate::admin::record_storage(&db, &config.storage, &config.s3)
            .await
            .map_err(store_err)?;
        // The link signing key ring has a key before the first link is asked for.
        crate::files::links::active_key(&db)
            .await
            .map_err(store_err)?;
        let files = crate::files::FilesState::new(&config)
            .map_err(|e| StartError::Other(format!("cannot build the HTTP client: {e}")))?;
        let snapshot = settings::load(&db).await.map_err(store_err)?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let config_first_delay_ms = config
            .webhook_retry_schedule
            .first()
            .map_or(0, |d| d.as_millis() as i64);
        let auth = Arc::new(Authenticator::new(
            db.clone(),
            config.auth_cache_ttl,
            config.key_rate_limit,
        ));
        let ip_limiter = crate::conn_guard::IpLimiter::new(config.ip_rate_limit);
        let fast = match &config.database {
            crate::config::DatabaseUrl::Sqlite(path) => {
                Some(Arc::new(crate::store::fastread::FastReader::new(path)))
            }
            crate::config::DatabaseUrl::Postgres(_) => None,
        };
        let catalog_limiter = crate::api::models::limiter(config.catalog_rate_limit).map(Arc::new);
        let state = AppState(Arc::new(AppStateInner {
            catalog_limiter,
            ip_limiter,
            fast,
            config: Arc::new(config),
            db,
            blobs,
            auth,
            settings: LiveSettings::new(snapshot),
            files: Arc::new(files),
            shutdown: shutdown_rx,
            jobs: crate::tasks::Runtime {
                first_callback_delay_ms: config_first_delay_ms,
                ..Default::default()
            },
            db_health: Default::default(),
        }));
        Ok((state, shutdown_tx))
    }
}

/// A bound, migrated, ready-to-run server.
pub struct Server {
    pub state: AppState,
    listener: TcpListener,
    shutdown_tx: watch::Sender<bool>,
}

impl Server {
    /// Opens the store, binds the port and prepares the state. Every failure is one
    /// line (see [`StartError`]).
    pub async fn bind(mut config: Config, public_url_explicit: bool) -> Result<Server, StartError> {
        let (db, blobs) = open_stores(&config).await?;
        let listener = TcpListener::bind(&config.bind)
            .await
            .map_err(|e| StartError::Listen {
                addr: config.bind.clone(),
                reason: match e.kind() {
                    std::io::ErrorKind::AddrInUse => "address already in use".into(),
                    std::io::ErrorKind::PermissionDenied => "permission denied".into(),
                    std::io::ErrorKind::AddrNotAvailable => {
                        "address not available on this machine".into()
                    }
                    _ => e.to_string(),
                },
            })?;
        let local = listener
            .local_addr()
            .map_err(|e| StartError::Other(e.to_string()))?;
        if !public_url_explicit {
            // With --bind …:0 the real port is known only now.
            let own = host_key(&config.public_url);
            config.public_url =
                url::Url::parse(&format!("http://{local}")).expect("socket addr URL");
            config.file_hosts.retain(|h| *h != own);
            config.file_hosts.push(host_key(&config.public_url));
        }
        let (state, shutdown_tx) = AppState::build(config, db, blobs).await?;
        Ok(Server {
            state,
            listener,
            shutdown_tx,
        })
    }

    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.listener.local_addr().expect("bound")
    }

    /// Serves until `signal` resolves, then stops accepting, lets in-flight requests
    /// and background work finish, and closes the database.
    pub async fn run(
        self,
        signal: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartError> {
        let Server {
            state,
            listener,
            shutdown_tx,
        } = self;
        let mut tasks = JoinSet::new();
        spawn_background(&state, &mut tasks, &state.shutdown);
        let app = router(state.clone());
        let tx = shutdown_tx.clone();
        let graceful = async move {
            signal.await;
            tracing::info!("shutting down: finishing in-flight requests");
            let _ = tx.send(true);
        };
        let limits = crate::conn_guard::Limits {
            max_connections: state.config.max_connections,
            header_read_timeout: state.config.header_read_timeout,
            request_body_timeout: state.config.request_body_timeout,
        };
        // Accepting, header/body timeouts and the connection limit: see conn_guard.
        let graceful = tokio::spawn(graceful);
        let served = crate::conn_guard::serve(
            listener,
            app,
            Some(state.clone()),
            limits,
            shutdown_tx.subscribe(),
        )
        .await;
        graceful.abort();
        let _ = shutdown_tx.send(true);
        while tasks.join_next().await.is_some() {}
        state.db.close().await;
        served.map_err(|e| StartError::Other(format!("server error: {e}")))
    }
}

fn store_err(e: sqlx::Error) -> StartError {
    StartError::Other(format!("database error during start-up: {e}"))
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
