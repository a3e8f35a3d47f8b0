//! KIE.AI's catalog endpoints: `GET /api/v1/models` (optional `q`, `taskType`,
//! `provider`), and per model `…/{model}/price`, `…/{model}/schema` (its input as
//! JSON Schema) and `…/{model}/success-rate` (the last 24 h in 10-minute buckets from
//! this server's task outcomes). Model names contain `/` (`google/nano-banana`), so
//! the per-model endpoints share one catch-all route that splits off the last segment.
//!
//! At most `catalog_rate_limit` requests per second per account (KIE.AI: 1) over all
//! of them; past it the answer is code 429 inside HTTP 200, as KIE.AI does.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::config::{Model, ModelKind};
use crate::http::{ApiError, ApiOk, ApiResult};
use crate::state::AppState;

/// Length of the success-rate window.
pub const WINDOW_MS: i64 = 24 * 3600 * 1000;
/// One bucket of the success-rate window.
pub const BUCKET_MS: i64 = 10 * 60 * 1000;

/// The per-account limiter of these endpoints (`None`: off).
fn check_limit(state: &AppState, caller: &Caller) -> Result<(), ApiError> {
    if let Some(l) = &state.catalog_limiter {
        if l.check(&caller.account_id).is_err() {
            let mut e = ApiError::new(
                kie_wire::codes::RATE_LIMITED,
                format!(
                    "Rate limit exceeded: at most {} request(s) per second to the model catalog",
                    state.config.catalog_rate_limit
                ),
            );
            e.http_ok = true;
            return Err(e);
        }
    }
    Ok(())
}

/// One model of the list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelSummary {
    pub model: String,
    pub slug: String,
    pub title: String,
    pub provider: String,
    pub task_type: Vec<String>,
    pub description: String,
    pub pricing_desc: String,
    /// image, video, audio or text
    pub output: String,
    /// Price of one task in credits (the cheapest configuration)
    pub credits: f64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ModelList {
    pub total: usize,
    pub models: Vec<ModelSummary>,
}

/// `{"code": 200, "msg": "success", "data": {"total": N, "models": […]}}`
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ModelListEnvelope {
    pub code: i64,
    pub msg: String,
    #[schema(nullable)]
    pub data: Option<ModelList>,
}

#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ModelPriceEnvelope {
    pub code: i64,
    pub msg: String,
    #[schema(nullable)]
    pub data: Option<ModelPrice>,
}

#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct SuccessRateEnvelope {
    pub code: i64,
    pub msg: String,
    #[schema(nullable)]
    pub data: Option<SuccessRate>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    /// Words to look for in name, title, provider, family and task type
    q: Option<String>,
    /// e.g. text-to-video
    task_type: Option<String>,
    /// e.g. Google, Kling (case-insensitive)
    provider: Option<String>,
}

fn slug(name: &str) -> String {
    let mut s = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            s.push(c.to_ascii_lowercase());
        } else if !s.ends_with('-') {
            s.push('-');
        }
    }
    s.trim_matches('-').to_string()
}

fn kind_output(k: ModelKind) -> &'static str {
    match k {
        ModelKind::DemoImage => "image",
        ModelKind::DemoVideo => "video",
        ModelKind::DemoAudio => "audio",
        ModelKind::DemoText | ModelKind::External => "text",
    }
}

fn pricing_desc(m: &Model, state: &AppState) -> String {
    let price = m.price.to_string();
    if !m.price_published {
        return format!(
            "No published price; {price} credits per task (this server's default_model_price)"
        );
    }
    match m.spec.as_ref().and_then(|s| s.price_note.as_deref()) {
        Some(note) if m.spec.as_ref().and_then(|s| s.price.as_deref()) == Some(&*price) => {
            format!("{price} credits: {note}")
        }
        _ => {
            let _ = state;
            format!("{price} credits per task")
        }
    }
}

fn summary(m: &Model, state: &AppState) -> ModelSummary {
    let credits = m.price.to_string().parse().unwrap_or(0.0);
    match &m.spec {
        Some(s) => ModelSummary {
            model: m.name.clone(),
            slug: slug(&m.name),
            title: s.title.clone(),
            provider: s.provider.clone(),
            task_type: s.task_types(),
            description: s.description(),
            pricing_desc: pricing_desc(m, state),
            output: s.output.as_str().into(),
            credits,
        },
        None => ModelSummary {
            model: m.name.clone(),
            slug: slug(&m.name),
            title: m.name.clone(),
            provider: "kie-common".into(),
            task_type: vec![format!("text-to-{}", kind_output(m.kind))],
            description: if m.kind == ModelKind::External {
                "Served by an external worker of this server.".into()
            } else {
                "Built-in demo model of kie serve (input.prompt required).".into()
            },
            pricing_desc: pricing_desc(m, state),
            output: kind_output(m.kind).into(),
            credits,
        },
    }
}

/// The models this server accepts tasks for: KIE.AI's Market catalog, the built-in
/// `demo/*` models and the operator's own.
#[utoipa::path(
    get,
    path = "/api/v1/models",
    tag = "models",
    params(ListQuery),
    responses((status = 200, description = "Envelope; data = {total, models}. Codes: 200, 401, 429 (more than 1 request/s per account, inside HTTP 200), 455, 500", body = ModelListEnvelope))
)]
pub async fn list_models(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> ApiResult<ModelList> {
    check_limit(&state, &caller)?;
    let lower = |s: &Option<String>| {
        s.as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_lowercase)
    };
    let (words, task_type, provider) = (lower(&q.q), lower(&q.task_type), lower(&q.provider));
    let words: Vec<String> = words
        .map(|w| w.split_whitespace().map(String::from).collect())
        .unwrap_or_default();
    let models: Vec<ModelSummary> = state
        .config
        .models
        .values()
        .map(|m| (m, summary(m, &state)))
        .filter(|(m, s)| {
            let hay = format!(
                "{} {} {} {} {}",
                s.model,
                s.title,
                s.provider,
                m.spec.as_ref().map(|x| x.family.as_str()).unwrap_or(""),
                s.task_type.join(" ")
            )
            .to_lowercase();
            words.iter().all(|w| hay.contains(w.as_str()))
                && task_type
                    .as_ref()
                    .is_none_or(|t| s.task_type.iter().any(|x| x.to_lowercase() == *t))
                && provider
                    .as_ref()
                    .is_none_or(|p| s.provider.to_lowercase() == *p)
        })
        .map(|(_, s)| s)
        .collect();
    Ok(ApiOk(ModelList {
        total: models.len(),
        models,
    }))
}

/// `data` of `…/price`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelPrice {
    pub model: String,
    /// Credits held when a task is created and charged when it succeeds
    pub credits: f64,
    /// The same in USD at KIE.AI's credit price
    #[schema(nullable)]
    pub usd: Option<f64>,
    /// Whether KIE.AI (or the operator) publishes this price; false: the default
    pub published: bool,
    pub pricing_desc: String,
    /// Other tiers as KIE.AI lists them
    #[schema(nullable)]
    pub price_note: Option<String>,
}

/// A model's price.
#[utoipa::path(
    get,
    path = "/api/v1/models/{model}/price",
    tag = "models",
    params(("model" = String, Path, description = "Model name, slashes included, e.g. google/nano-banana")),
    responses((status = 200, description = "Envelope; data = the price. Codes: 200, 401, 404 (unknown model), 429 (inside HTTP 200), 455, 500", body = ModelPriceEnvelope))
)]
pub async fn model_price(state: &AppState, m: &Model) -> Result<ModelPrice, ApiError> {
    let credits: f64 = m.price.to_string().parse().unwrap_or(0.0);
    let rate = crate::catalog::catalog().credit_usd;
    Ok(ModelPrice {
        model: m.name.clone(),
        credits,
        usd: rate.map(|r| (credits * r * 1e6).round() / 1e6),
        published: m.price_published,
        pricing_desc: pricing_desc(m, state),
        price_note: m.spec.as_ref().and_then(|s| s.price_note.clone()),
    })
}

/// A model's input as JSON Schema (2020-12): properties with types, enums, bounds and
/// defaults, `required`, and `anyOf` for models accepting several input shapes.
#[utoipa::path(
    get,
    path = "/api/v1/models/{model}/schema",
    tag = "models",
    params(("model" = String, Path, description = "Model name, slashes included")),
    responses((status = 200, description = "Envelope; data = JSON Schema of `input`. Codes: 200, 401, 404, 429 (inside HTTP 200), 455, 500", body = crate::openapi::SchemaEnvelope))
)]
pub async fn model_schema(m: &Model) -> Value {
    match &m.spec {
        Some(s) => s.json_schema(),
        None if m.kind == ModelKind::External => json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": format!("{} input", m.name),
            "type": "object",
        }),
        None => json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": format!("{} input", m.name),
            "type": "object",
            "properties": {
                "prompt": {"type": "string", "minLength": 1},
                "width": {"type": "integer", "minimum": 1, "maximum": 1024},
                "height": {"type": "integer", "minimum": 1, "maximum": 1024},
            },
            "required": ["prompt"],
            "additionalProperties": true,
        }),
    }
}

/// One 10-minute bucket.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateBucket {
    /// Epoch ms, inclusive
    pub start: i64,
    /// Epoch ms, exclusive
    pub end: i64,
    pub total: u64,
    pub success: u64,
    pub fail: u64,
    /// success / total; null when no task finished in the bucket
    #[schema(nullable)]
    pub success_rate: Option<f64>,
    #[schema(nullable)]
    pub fail_rate: Option<f64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SuccessRate {
    pub model: String,
    pub window_hours: u32,
    pub bucket_minutes: u32,
    pub total: u64,
    pub success: u64,
    pub fail: u64,
    #[schema(nullable)]
    pub success_rate: Option<f64>,
    /// 144 buckets, oldest first; the last one holds now
    pub buckets: Vec<RateBucket>,
}

fn rate(part: u64, total: u64) -> Option<f64> {
    (total > 0).then(|| ((part as f64 / total as f64) * 10_000.0).round() / 10_000.0)
}

/// Success and failure of this server's tasks of a model over the last 24 h.
#[utoipa::path(
    get,
    path = "/api/v1/models/{model}/success-rate",
    tag = "models",
    params(("model" = String, Path, description = "Model name, slashes included")),
    responses((status = 200, description = "Envelope; data = 144 ten-minute buckets of the last 24 h (null rates where nothing finished). Codes: 200, 401, 404, 429 (inside HTTP 200), 455, 500", body = SuccessRateEnvelope))
)]
pub async fn model_success_rate(state: &AppState, m: &Model) -> Result<SuccessRate, ApiError> {
    let now = crate::store::now_ms();
    // buckets end on a 10-minute boundary after now; the oldest starts 24 h before it
    let end = (now / BUCKET_MS + 1) * BUCKET_MS;
    let start = end - WINDOW_MS;
    let rows: Vec<(i64, String)> = crate::with_read!(&state.db, |p| {
        sqlx::query_as(
        "SELECT completed_at, state FROM tasks WHERE model = $1 AND state IN ('success','fail') \
         AND completed_at >= $2 AND completed_at < $3"
    )
    .bind(&m.name)
    .bind(start)
    .bind(end)
    .fetch_all(p)
    .await?
    });
    let n = (WINDOW_MS / BUCKET_MS) as usize;
    let mut counts = vec![(0u64, 0u64); n];
    for (at, st) in rows {
        let i = ((at - start) / BUCKET_MS).clamp(0, n as i64 - 1) as usize;
        if st == "success" {
            counts[i].0 += 1;
        } else {
            counts[i].1 += 1;
        }
    }
    let (mut s_all, mut f_all) = (0, 0);
    let buckets = counts
        .into_iter()
        .enumerate()
        .map(|(i, (s, f))| {
            s_all += s;
            f_all += f;
            let b0 = start + i as i64 * BUCKET_MS;
            RateBucket {
                start: b0,
                end: b0 + BUCKET_MS,
                total: s + f,
                success: s,
                fail: f,
                success_rate: rate(s, s + f),
                fail_rate: rate(f, s + f),
            }
        })
        .collect();
    Ok(SuccessRate {
        model: m.name.clone(),
        window_hours: 24,
        bucket_minutes: 10,
        total: s_all + f_all,
        success: s_all,
        fail: f_all,
        success_rate: rate(s_all, s_all + f_all),
        buckets,
    })
}

/// `GET /api/v1/models/{*rest}`: `{model}/price`, `{model}/schema`,
/// `{model}/success-rate` (model names contain `/`).
pub async fn model_detail(
    State(state): State<AppState>,
    caller: Caller,
    Path(rest): Path<String>,
) -> Response {
    let run = async {
        let (name, what) = rest
            .rsplit_once('/')
            .ok_or_else(|| ApiError::not_found("Unknown endpoint"))?;
        if !matches!(what, "price" | "schema" | "success-rate") {
            return Err(ApiError::not_found("Unknown endpoint"));
        }
        check_limit(&state, &caller)?;
        let m = state.config.models.get(name).ok_or_else(|| {
            ApiError::not_found(format!("Model not found: '{}'", name.escape_default()))
        })?;
        Ok(match what {
            "price" => ApiOk(
                serde_json::to_value(model_price(&state, m).await?).map_err(ApiError::internal)?,
            ),
            "schema" => ApiOk(model_schema(m).await),
            _ => ApiOk(
                serde_json::to_value(model_success_rate(&state, m).await?)
                    .map_err(ApiError::internal)?,
            ),
        })
    };
    match run.await {
        Ok(ok) => ok.into_response(),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        assert_eq!(slug("google/nano-banana"), "google-nano-banana");
        assert_eq!(slug("kling-2.6/text-to-video"), "kling-2-6-text-to-video");
    }
}
