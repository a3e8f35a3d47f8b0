//! The console: server-rendered HTML pages for account holders (`/console/…`) and
//! operators (`/console/admin/…`), served by the same router and middleware stack as
//! the API (`app::router` merges [`routes`]).
//!
//! * `users` — people, invites, sessions, passwords, sign-in lockout (database)
//! * `session` — the session cookie, the signed-in extractors and CSRF checks
//! * `layout` — the page frame (navigation, sign-out) and small view helpers
//! * `chart` — the 30-day spending chart as accessible inline SVG
//! * `pages` — sign-in, invite and the account holder's pages
//! * `admin` — the operator's pages
//!
//! Every page is answered with a strict `Content-Security-Policy` (scripts and styles
//! only from `/console/static/`, served from the binary), `X-Frame-Options: DENY`,
//! `no-store` caching and no referrer. Templates are `maud` macros: every value
//! spliced into a page is HTML-escaped unless wrapped in `PreEscaped`, which only
//! the server-drawn SVG chart uses.

pub mod admin;
pub mod chart;
pub mod layout;
pub mod pages;
pub mod session;
pub mod users;

use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::state::AppState;

const CONSOLE_CSS: &str = include_str!("static/console.css");
const CONSOLE_JS: &str = include_str!("static/console.js");

/// The console's routes, with its security headers.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/console", get(pages::root))
        .route("/console/", get(pages::root))
        .route("/console/login", get(pages::login_form).post(pages::login))
        .route("/console/logout", post(pages::logout))
        .route(
            "/console/invite/{token}",
            get(pages::invite_form).post(pages::invite_accept),
        )
        .route("/console/overview", get(pages::overview))
        .route("/console/keys", get(pages::keys).post(pages::create_key))
        .route("/console/keys/{id}/revoke", post(pages::revoke_key))
        .route("/console/keys/{id}/roll", post(pages::roll_key))
        .route("/console/keys/{id}/update", post(pages::update_key))
        .route("/console/tasks", get(pages::tasks))
        .route("/console/tasks/{id}", get(pages::task))
        .route("/console/files", get(pages::files))
        .route("/console/files/{id}/link", post(pages::file_link))
        .route("/console/usage", get(pages::usage))
        .route("/console/usage.csv", get(pages::usage_csv))
        .route("/console/callbacks", get(pages::callbacks))
        .route("/console/callbacks/key", post(pages::webhook_key))
        .route("/console/callbacks/replay", post(pages::replay))
        .route("/console/callbacks/{id}/redeliver", post(pages::redeliver))
        .route(
            "/console/alerts",
            get(pages::alerts).post(pages::set_alerts),
        )
        .route("/console/alerts/test", post(pages::test_alert))
        .route("/console/admin", get(admin::accounts))
        .route("/console/admin/", get(admin::accounts))
        .route("/console/admin/health", get(admin::health))
        .route("/console/admin/accounts/{id}", get(admin::account))
        .route("/console/admin/accounts/{id}/credits", post(admin::credits))
        .route("/console/admin/accounts/{id}/invite", post(admin::invite))
        .route(
            "/console/admin/settings",
            get(admin::settings).post(admin::change_setting),
        )
        .route("/console/static/console.css", get(css))
        .route("/console/static/console.js", get(js))
        .route("/console/{*rest}", get(pages::not_found))
        .layer(middleware::from_fn(security_headers))
}

/// Headers on every console answer.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        CONSOLE_CSS,
    )
        .into_response()
}

async fn js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        CONSOLE_JS,
    )
        .into_response()
}
