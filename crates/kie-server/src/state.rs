//! The shared state every handler, middleware and background task reads: one `Arc`
//! built once at start-up from the configuration and the opened stores. It sits below
//! everything that serves requests (`api`, `console`, `files::serve`, `http::layer`,
//! `workers`, `webhooks::dispatch`) and imports none of them; the router and the
//! server loop that put it to work are in `app`.

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::settings::{self, LiveSettings};
pub use crate::startup::StartError;
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
    pub ip_limiter: Option<Arc<crate::ratelimit::IpLimiter>>,
    /// Whether the database is reachable (PostgreSQL probe; see `store::health`).
    pub db_health: store::health::DbHealth,
    /// Per-account limit of the catalog endpoints (`None`: off). See `api::models`.
    pub catalog_limiter: Option<Arc<crate::ratelimit::KeyedLimiter<Arc<str>>>>,
}

impl axum::extract::FromRef<AppState> for Arc<Config> {
    fn from_ref(state: &AppState) -> Arc<Config> {
        state.config.clone()
    }
}

impl axum::extract::FromRef<AppState> for Arc<Authenticator> {
    fn from_ref(state: &AppState) -> Arc<Authenticator> {
        state.auth.clone()
    }
}

/// Opens (and migrates) the database of `config` and opens its object store, which
/// must answer.
pub(crate) async fn open_stores(config: &Config) -> Result<(Db, crate::blobs::Blobs), StartError> {
    store::ensure_writable_dir(&config.data_dir)?;
    let opts = OpenOptions {
        max_connections: config.db_max_connections,
        statement_timeout: config.db_statement_timeout,
        pg_acquire_timeout: config.db_acquire_timeout,
        sqlite_group_commit: config.sqlite_group_commit,
        balance_cache_ttl: config.balance_cache_ttl,
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
    pub(crate) async fn build(
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
        let ip_limiter = crate::ratelimit::IpLimiter::new(config.ip_rate_limit);
        let catalog_limiter =
            crate::ratelimit::catalog_limiter(config.catalog_rate_limit).map(Arc::new);
        let state = AppState(Arc::new(AppStateInner {
            catalog_limiter,
            ip_limiter,
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

fn store_err(e: sqlx::Error) -> StartError {
    StartError::Other(format!("database error during start-up: {e}"))
}
