//! The public API (`/api/...`), documented with utoipa. Routes are registered through
//! `OpenApiRouter`, so a route cannot exist without its OpenAPI entry.

pub mod account;
pub mod admin;
pub mod alerts;
pub mod callbacks;
pub mod credit;
pub mod download_url;
pub mod jobs;
pub mod keys;
pub mod models;
pub mod upload;

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::http::guard::FeatureSwitch;
use crate::http::pipeline::RouteLabel;
use crate::settings::LiveSettings;
use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "kie-common",
        description = "KIE.AI Common API: credits, temporary download links, file uploads, jobs and webhook callbacks. Every /api answer is the envelope {code, msg, data}.",
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    paths(models::model_price, models::model_schema, models::model_success_rate),
    tags(
        (name = "common", description = "Common API"),
        (name = "upload", description = "File Upload API (answers also carry \"success\")"),
        (name = "jobs", description = "Jobs API: tasks that create files and spend credits"),
        (name = "account", description = "The account's own tasks, ledger and callbacks (what the console shows)"),
        (name = "models", description = "Model catalog: KIE.AI Market models this server runs, their prices, input schemas and success rates (at most 1 request/s per account; code 429 inside HTTP 200)"),
        (name = "keys", description = "The account's API keys: list, create, revoke, roll, update (a key with the management scope only)"),
        (name = "alerts", description = "The account's low-balance alerts: thresholds, alert URL, a test event (a key with the management scope only)"),
        (name = "admin", description = "The operator API: accounts, credits, invites, switches, signing-key rotation, health (an operator token, Bearer kieop_…, from kie admin operator-token create; answers in maintenance mode too)")
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "operator",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("kieop_…")
                    .description(Some(
                        "An operator token from kie admin operator-token create",
                    ))
                    .build(),
            ),
        );
    }
}

/// One handler with its OpenAPI entry (utoipa-axum's `routes!`), wrapped in its
/// route layer `$layer` (a [`RouteLabel`]) with `Handler::layer`: the layer runs inside
/// the handler's own route, so a request pays no boxed route level for it. A path with
/// several handlers takes one `route!` each (their methods merge).
macro_rules! route {
    ($layer:expr, $handler:path) => {{
        let (schemas, paths, _) = routes!($handler);
        let mut methods = axum::routing::MethodRouter::new();
        for item in paths.paths.values() {
            for filter in method_filters(item) {
                methods = methods.on(
                    filter,
                    axum::handler::Handler::layer($handler, $layer.clone()),
                );
            }
        }
        (schemas, paths, methods)
    }};
}

/// The methods a documented path item answers (what `routes!` registers).
fn method_filters(item: &utoipa::openapi::PathItem) -> Vec<axum::routing::MethodFilter> {
    use axum::routing::MethodFilter as M;
    [
        (item.get.is_some(), M::GET),
        (item.put.is_some(), M::PUT),
        (item.post.is_some(), M::POST),
        (item.delete.is_some(), M::DELETE),
        (item.options.is_some(), M::OPTIONS),
        (item.head.is_some(), M::HEAD),
        (item.patch.is_some(), M::PATCH),
        (item.trace.is_some(), M::TRACE),
    ]
    .into_iter()
    .filter_map(|(on, m)| on.then_some(m))
    .collect()
}

/// Every public API route with its documentation, and what differs per route: its
/// feature switch (`FeatureSwitch`, which the operator can turn off: 505), its envelope
/// (the File Upload API's, with `"success"`), its body limit. Each route gets its route
/// layer (`RouteLabel`: its label and its switch) here, once (`route!`); everything
/// else every route shares, in `http::pipeline`.
pub fn routes(settings: &LiveSettings) -> OpenApiRouter<AppState> {
    let switched = |name| RouteLabel::switched(FeatureSwitch::new(settings, name));
    let credits = switched("credits");
    let download_url = switched("download-url");
    let jobs = switched("jobs");
    let upload = RouteLabel::switched(FeatureSwitch::new(settings, "file-upload").upload());
    // the routes without a switch: their label only
    let plain = RouteLabel::default();
    // The upload routes bound their bodies themselves (`max_upload` while streaming
    // into the store), instead of the 1 MiB JSON limit the router applies elsewhere.
    let uploads = OpenApiRouter::new()
        .routes(route!(upload, upload::file_stream_upload))
        .routes(route!(upload, upload::file_base64_upload))
        .routes(route!(upload, upload::file_url_upload))
        .layer(axum::extract::DefaultBodyLimit::disable());
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(route!(credits, credit::get_credit))
        .routes(route!(download_url, download_url::download_url))
        .routes(route!(jobs, jobs::create_task))
        .routes(route!(jobs, jobs::record_info))
        .routes(route!(plain, account::list_tasks))
        .routes(route!(plain, account::usage))
        .routes(route!(plain, account::overview))
        .routes(route!(plain, account::list_files))
        .routes(route!(plain, account::list_callbacks))
        .routes(route!(plain, callbacks::get_webhook_key))
        .routes(route!(plain, callbacks::roll_webhook_key))
        .routes(route!(plain, callbacks::redeliver))
        .routes(route!(plain, callbacks::replay))
        .routes(route!(plain, models::list_models))
        // Model names contain '/': price, schema and success-rate share one catch-all
        // route (documented above as /api/v1/models/{model}/…).
        .route(
            "/api/v1/models/{*rest}",
            axum::routing::get(axum::handler::Handler::layer(
                models::model_detail,
                plain.clone(),
            )),
        )
        .routes(route!(plain, keys::list_keys))
        .routes(route!(plain, keys::create_key))
        .routes(route!(plain, keys::revoke_key))
        .routes(route!(plain, keys::roll_key))
        .routes(route!(plain, keys::update_key))
        .routes(route!(plain, alerts::get_alerts))
        .routes(route!(plain, alerts::set_alerts))
        .routes(route!(plain, alerts::test_alert))
        .routes(route!(plain, admin::list_accounts))
        .routes(route!(plain, admin::create_account))
        .routes(route!(plain, admin::get_account))
        .routes(route!(plain, admin::change_credits))
        .routes(route!(plain, admin::create_invite))
        .routes(route!(plain, admin::get_settings))
        .routes(route!(plain, admin::update_settings))
        .routes(route!(plain, admin::rotate_signing_key))
        .routes(route!(plain, admin::health))
        .merge(uploads)
}
