//! The account's own history as JSON — what the console's Tasks, Usage and Callbacks
//! pages show, for scripts and `kie tasks list`, `kie usage`, `kie callbacks list`:
//! `GET /api/v1/account/tasks`, `/usage`, `/callbacks`. Read-only: any key of the
//! account may read them (endpoints that change keys or alerts need a management key,
//! see issue 16, and are not here).

use axum::extract::{Query, State};
use kie_wire::Credits;
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::http::{ApiError, ApiOk, ApiResult};
use crate::state::AppState;
use crate::{files, ledger, tasks, webhooks};

const MAX_LIMIT: i64 = 1000;

fn limit_of(raw: Option<&str>, default: i64) -> Result<i64, ApiError> {
    match raw.map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(default),
        Some(s) => match s.parse::<i64>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(ApiError::validation(format!(
                "Invalid parameter 'limit': an integer from 1 to {MAX_LIMIT}"
            ))),
        },
    }
}

fn since_of(raw: Option<&str>) -> Result<Option<i64>, ApiError> {
    match raw.map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => s
            .parse::<i64>()
            .map(Some)
            .map_err(|_| ApiError::validation("Invalid parameter 'since': epoch milliseconds")),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TasksQuery {
    /// Only tasks in this state (waiting, queuing, generating, success, fail)
    pub state: Option<String>,
    /// Only tasks of this model
    pub model: Option<String>,
    /// Only tasks created at or after this time (epoch milliseconds)
    pub since: Option<String>,
    /// At most this many (1–1000, default 50)
    pub limit: Option<String>,
}

/// One task of the account's log.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskSummary {
    pub task_id: String,
    pub model: String,
    pub state: String,
    /// Credits held for the task
    #[schema(value_type = f64)]
    pub price: Credits,
    /// Credits charged (0 until it succeeds)
    #[schema(value_type = f64)]
    pub consume_credits: Credits,
    pub create_time: i64,
    #[schema(nullable)]
    pub complete_time: Option<i64>,
    pub fail_code: String,
    pub fail_msg: String,
}

/// `{"code": 200, "msg": "success", "data": [task, …]}`
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct TasksEnvelope {
    pub code: i64,
    pub msg: String,
    #[schema(nullable)]
    pub data: Option<Vec<TaskSummary>>,
}

/// The account's tasks, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/account/tasks",
    tag = "account",
    params(TasksQuery),
    responses((status = 200, description = "Envelope; data = tasks, newest first. Codes: 200, 401, 422 (bad parameter), 455, 500", body = TasksEnvelope))
)]
pub async fn list_tasks(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<TasksQuery>,
) -> ApiResult<Vec<TaskSummary>> {
    let limit = limit_of(q.limit.as_deref(), 50)?;
    let filter = tasks::LogFilter {
        state: q.state.filter(|s| !s.is_empty()),
        model: q.model.filter(|s| !s.is_empty()),
        from: since_of(q.since.as_deref())?,
        to: None,
    };
    let rows = tasks::log(&state.db, &caller.account_id, &filter, None, limit).await?;
    Ok(ApiOk(
        rows.into_iter()
            .map(|t| TaskSummary {
                task_id: t.id,
                model: t.model,
                state: t.state,
                price: Credits(t.price),
                consume_credits: Credits(t.consume_credits),
                create_time: t.created_at,
                complete_time: t.completed_at,
                fail_code: t.fail_code,
                fail_msg: t.fail_msg,
            })
            .collect(),
    ))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// Only entries at or after this time (epoch milliseconds)
    pub since: Option<String>,
    /// At most this many (1–1000, default 100)
    pub limit: Option<String>,
}

/// One ledger entry.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageEntry {
    pub entry_id: String,
    /// grant, deduct, hold, post, void or adjust
    pub kind: String,
    /// Change of the balance
    #[schema(value_type = f64)]
    pub amount: Credits,
    /// Change of the held credits
    #[schema(value_type = f64)]
    pub held_delta: Credits,
    #[schema(nullable)]
    pub reason: Option<String>,
    pub created_at: i64,
}

/// `{"code": 200, "msg": "success", "data": [entry, …]}`
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct UsageEnvelope {
    pub code: i64,
    pub msg: String,
    #[schema(nullable)]
    pub data: Option<Vec<UsageEntry>>,
}

/// The account's ledger entries (grants, charges, holds, voids), newest first.
#[utoipa::path(
    get,
    path = "/api/v1/account/usage",
    tag = "account",
    params(UsageQuery),
    responses((status = 200, description = "Envelope; data = ledger entries, newest first. Codes: 200, 401, 422, 455, 500", body = UsageEnvelope))
)]
pub async fn usage(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<UsageQuery>,
) -> ApiResult<Vec<UsageEntry>> {
    let limit = limit_of(q.limit.as_deref(), 100)?;
    let since = since_of(q.since.as_deref())?;
    let rows = ledger::lines(&state.db, &caller.account_id, None, since, limit).await?;
    Ok(ApiOk(
        rows.into_iter()
            .map(|l| UsageEntry {
                entry_id: l.entry_id,
                kind: l.kind,
                amount: l.amount,
                held_delta: l.held_delta,
                reason: l.reason,
                created_at: l.created_at,
            })
            .collect(),
    ))
}

const DAY_MS: i64 = 86_400_000;

/// The console's Overview as data.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Overview {
    /// Posted balance minus held credits
    #[schema(value_type = f64)]
    pub available: Credits,
    /// Credits held by unfinished tasks
    #[schema(value_type = f64)]
    pub held: Credits,
    /// Credits spent per UTC day, the last 30 days, oldest first (`day`: YYYY-MM-DD)
    pub spent_per_day: Vec<DaySpent>,
    /// Credits per hour over the last 24 hours (the arithmetic of `kie monitor`)
    pub burn_per_hour: f64,
    /// When the available balance runs out at that rate (epoch ms; null: nothing spent)
    #[schema(nullable)]
    pub projected_exhaustion: Option<i64>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DaySpent {
    pub day: String,
    #[schema(value_type = f64)]
    pub spent: Credits,
}

/// `{"code": 200, "msg": "success", "data": {overview}}`
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct OverviewEnvelope {
    pub code: i64,
    pub msg: String,
    #[schema(nullable)]
    pub data: Option<Overview>,
}

/// Balance, held credits, spending per day over 30 days, burn rate and projected
/// exhaustion — what the console's Overview shows.
#[utoipa::path(
    get,
    path = "/api/v1/account/overview",
    tag = "account",
    responses((status = 200, description = "Envelope; data = the overview. Codes: 200, 401, 455, 500", body = OverviewEnvelope))
)]
pub async fn overview(State(state): State<AppState>, caller: Caller) -> ApiResult<Overview> {
    let acc = &caller.account_id;
    let bal = ledger::balance(&state.db, acc)
        .await?
        .ok_or_else(ApiError::unauthorized)?;
    let now = crate::store::now_ms();
    let today = now.div_euclid(DAY_MS);
    let first = today - 29;
    let per_day = ledger::spent_per_day(&state.db, acc, first, today, now).await?;
    let spent_per_day = (first..=today)
        .zip(per_day)
        .map(|(d, spent)| DaySpent {
            day: humantime::format_rfc3339(
                std::time::UNIX_EPOCH
                    + std::time::Duration::from_millis((d * DAY_MS).max(0) as u64),
            )
            .to_string()[..10]
                .to_string(),
            spent: Credits(spent),
        })
        .collect();
    let spent_24h = ledger::spent_since(&state.db, acc, now - DAY_MS).await?;
    let (burn_per_hour, eta) = ledger::burn(spent_24h, 86_400.0, bal.available());
    Ok(ApiOk(Overview {
        available: bal.available(),
        held: bal.held,
        spent_per_day,
        burn_per_hour: (burn_per_hour * 100.0).round() / 100.0,
        projected_exhaustion: eta.map(|secs| now + (secs * 1000.0) as i64),
    }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FilesQuery {
    /// Only files created before this time (epoch milliseconds): the next page
    pub before: Option<String>,
    /// At most this many (1–1000, default 50)
    pub limit: Option<String>,
}

/// One of the account's files.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FileSummary {
    pub file_id: String,
    pub file_name: String,
    /// `upload` or `generated`
    pub kind: String,
    pub mime_type: String,
    pub file_size: i64,
    /// The file URL (`POST /api/v1/common/download-url` turns it into a link)
    pub file_url: String,
    #[schema(nullable)]
    pub task_id: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
}

/// `{"code": 200, "msg": "success", "data": [file, …]}`
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct FilesEnvelope {
    pub code: i64,
    pub msg: String,
    #[schema(nullable)]
    pub data: Option<Vec<FileSummary>>,
}

/// The account's live files (uploaded and generated), newest first — the console's
/// Files page.
#[utoipa::path(
    get,
    path = "/api/v1/account/files",
    tag = "account",
    params(FilesQuery),
    responses((status = 200, description = "Envelope; data = files, newest first. Codes: 200, 401, 422, 455, 500", body = FilesEnvelope))
)]
pub async fn list_files(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<FilesQuery>,
) -> ApiResult<Vec<FileSummary>> {
    let limit = limit_of(q.limit.as_deref(), 50)?;
    let before =
        match q.before.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => Some(s.parse::<i64>().map_err(|_| {
                ApiError::validation("Invalid parameter 'before': epoch milliseconds")
            })?),
        };
    // the cursor of files::of_account is (created_at, id): every id sorts after ""
    let rows = files::of_account(
        &state.db,
        &caller.account_id,
        before.map(|t| (t, String::new())),
        limit,
    )
    .await?;
    let now = crate::store::now_ms();
    Ok(ApiOk(
        rows.into_iter()
            .filter(|f| files::is_live(f, now))
            .map(|f| FileSummary {
                file_url: crate::store::records::file_url(&state.config.public_url, &f.id, &f.name),
                file_id: f.id,
                file_name: f.name,
                kind: f.kind,
                mime_type: f.content_type,
                file_size: f.size,
                task_id: f.task_id,
                created_at: f.created_at,
                expires_at: f.expires_at,
            })
            .collect(),
    ))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CallbacksQuery {
    /// Only the delivery of this task
    #[serde(rename = "taskId")]
    pub task_id: Option<String>,
    /// At most this many (1–1000, default 50)
    pub limit: Option<String>,
}

/// One callback delivery.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CallbackSummary {
    /// The Standard Webhooks `webhook-id`
    pub id: String,
    /// The task whose result this is; null for a balance alert event
    #[schema(nullable)]
    pub task_id: Option<String>,
    /// The event id (`evt_…`, also the `webhook-id`) of a balance alert event; null for
    /// a task's callback
    #[schema(nullable)]
    pub event: Option<String>,
    pub url: String,
    /// pending, delivered, stopped (410), failed (retries exhausted) or refused
    pub status: String,
    pub attempts: i64,
    /// HTTP status of the last attempt
    #[schema(nullable)]
    pub last_status: Option<i64>,
    /// Epoch milliseconds; null unless pending
    #[schema(nullable)]
    pub next_attempt_at: Option<i64>,
}

/// `{"code": 200, "msg": "success", "data": [delivery, …]}`
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct CallbacksEnvelope {
    pub code: i64,
    pub msg: String,
    #[schema(nullable)]
    pub data: Option<Vec<CallbackSummary>>,
}

/// The account's callback deliveries, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/account/callbacks",
    tag = "account",
    params(CallbacksQuery),
    responses((status = 200, description = "Envelope; data = deliveries, newest first. Codes: 200, 401, 422, 455, 500", body = CallbacksEnvelope))
)]
pub async fn list_callbacks(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<CallbacksQuery>,
) -> ApiResult<Vec<CallbackSummary>> {
    let limit = limit_of(q.limit.as_deref(), 50)?;
    let rows = match q.task_id.as_deref().filter(|t| !t.is_empty()) {
        // a task of another account has no deliveries here
        Some(t) => match tasks::get_for_account(&state.db, &caller.account_id, t).await? {
            Some(_) => webhooks::deliveries(&state.db, Some(t), limit).await?,
            None => Vec::new(),
        },
        None => webhooks::deliveries_of_account(&state.db, &caller.account_id, limit).await?,
    };
    Ok(ApiOk(
        rows.into_iter()
            .map(|d| CallbackSummary {
                id: d.id,
                task_id: d.event.is_none().then_some(d.task_id),
                event: d.event,
                url: d.url,
                status: d.state,
                attempts: d.attempts,
                last_status: d.last_status,
                next_attempt_at: d.next_attempt_at,
            })
            .collect(),
    ))
}
