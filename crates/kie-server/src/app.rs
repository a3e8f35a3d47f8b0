//! The service at the top floor: the router (every route, every layer, built once),
//! the operational endpoints, background work, binding and graceful shutdown. The
//! shared state it serves is `state::AppState`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::{host_key, Config};
use crate::http;
use crate::settings;
use crate::state::{open_stores, AppState, StartError};

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
        record_bounded("ip_limiter", l.len(), crate::ratelimit::IP_LIMITER_MAX);
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
    let (known, unknown) = state.files.keys.lens();
    let key_max = crate::files::links::KEY_CACHE_MAX;
    record_bounded("link_keys", known, key_max);
    record_bounded("link_keys_unknown", unknown, key_max);
    if let Some(f) = state.db.fast() {
        let (balances, files, signing) = f.cache_lens();
        let max = crate::store::fastread::MAX_CACHED;
        record_bounded("balance_cache", balances, max);
        record_bounded("file_cache", files, max);
        record_bounded("signing_key_cache", signing, max);
    }
    if let crate::store::Db::Sqlite(_) = &state.db {
        crate::metrics::record_sqlite_page_cache(crate::store::sqlite_raw::page_cache_usage());
    }
    if let crate::store::Db::Postgres(pg) = &state.db {
        record_bounded("balance_cache", pg.balances.len(), pg.balances.max());
        record_bounded("file_records", pg.records.len(), pg.records.max());
        record_bounded(
            "signing_key_cache",
            pg.active_key.len(),
            pg.active_key.max(),
        );
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

/// The whole service `kie serve` runs: the one request path ([`http::pipeline`],
/// which also sets the default body limit) around the router. It wraps the router
/// once, not each route: a request pays no box for the pipeline and one for its
/// route, however many routes there are.
pub type App = http::pipeline::PipelineService<Router>;

/// The whole router: the public API (documented in OpenAPI), operational endpoints,
/// and the layers every answer passes through.
pub fn router(state: AppState) -> App {
    crate::metrics::handle();
    let (api, openapi) = crate::api::routes(&state.settings).split_for_parts();
    let openapi_json = Arc::new(openapi.to_pretty_json().expect("openapi serialises"));
    // the API's handlers carry their route layer already (label and feature switch,
    // `api::routes`); the others get theirs here
    let rest = Router::new()
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
        .route_layer(http::pipeline::RouteLabel::default());
    let router = Router::new()
        .merge(api)
        .merge(rest)
        .fallback(http::unknown_endpoint)
        .with_state(state.clone());
    // the one request path: every route, every backend (see `http::pipeline`)
    use tower::Layer;
    http::pipeline::Pipeline::new(state).layer(router)
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
        let connection = move |peer: std::net::SocketAddr| app.clone().for_peer(peer.ip());
        let served =
            crate::conn_guard::serve(listener, connection, limits, shutdown_tx.subscribe()).await;
        graceful.abort();
        let _ = shutdown_tx.send(true);
        while tasks.join_next().await.is_some() {}
        state.db.close().await;
        served.map_err(|e| StartError::Other(format!("server error: {e}")))
    }
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
