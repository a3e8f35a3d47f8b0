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

/// Every public API route with its documentation, and what differs per route: its
/// feature switch (`FeatureSwitch`, which the operator can turn off: 505), its envelope
/// (the File Upload API's, with `"success"`), its body limit. Each route gets its route
/// layer (`RouteLabel`: its label and its switch) here, once; everything else every
/// route shares, in `http::pipeline`.
pub fn routes(settings: &LiveSettings) -> OpenApiRouter<AppState> {
    let switched = |name| RouteLabel::switched(FeatureSwitch::new(settings, name));
    let credits = OpenApiRouter::new()
        .routes(routes!(credit::get_credit))
        .route_layer(switched("credits"));
    let download_url = OpenApiRouter::new()
        .routes(routes!(download_url::download_url))
        .route_layer(switched("download-url"));
    let jobs = OpenApiRouter::new()
        .routes(routes!(jobs::create_task))
        .routes(routes!(jobs::record_info))
        .route_layer(switched("jobs"));
    // The upload routes bound their bodies themselves (`max_upload` while streaming
    // into the store), instead of the 1 MiB JSON limit the router applies elsewhere.
    let uploads = OpenApiRouter::new()
        .routes(routes!(upload::file_stream_upload))
        .routes(routes!(upload::file_base64_upload))
        .routes(routes!(upload::file_url_upload))
        .route_layer(RouteLabel::switched(
            FeatureSwitch::new(settings, "file-upload").upload(),
        ))
        .layer(axum::extract::DefaultBodyLimit::disable());
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(account::list_tasks))
        .routes(routes!(account::usage))
        .routes(routes!(account::overview))
        .routes(routes!(account::list_files))
        .routes(routes!(account::list_callbacks))
        .routes(routes!(callbacks::get_webhook_key))
        .routes(routes!(callbacks::roll_webhook_key))
        .routes(routes!(callbacks::redeliver))
        .routes(routes!(callbacks::replay))
        .routes(routes!(models::list_models))
        // Model names contain '/': price, schema and success-rate share one catch-all
        // route (documented above as /api/v1/models/{model}/…).
        .route(
            "/api/v1/models/{*rest}",
            axum::routing::get(models::model_detail),
        )
        .routes(routes!(keys::list_keys, keys::create_key))
        .routes(routes!(keys::revoke_key))
        .routes(routes!(keys::roll_key))
        .routes(routes!(keys::update_key))
        .routes(routes!(alerts::get_alerts, alerts::set_alerts))
        .routes(routes!(alerts::test_alert))
        .routes(routes!(admin::list_accounts, admin::create_account))
        .routes(routes!(admin::get_account))
        .routes(routes!(admin::change_credits))
        .routes(routes!(admin::create_invite))
        .routes(routes!(admin::get_settings, admin::update_settings))
        .routes(routes!(admin::rotate_signing_key))
        .routes(routes!(admin::health))
        // the routes above: their label, no switch
        .route_layer(RouteLabel::default())
        .merge(credits)
        .merge(download_url)
        .merge(jobs)
        .merge(uploads)
}
