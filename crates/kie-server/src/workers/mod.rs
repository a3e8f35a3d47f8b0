//! The worker protocol: claim a task of the models you serve (long-poll), upload its
//! result files (streamed into the store as generated files of the task's account),
//! then complete or fail it.
//!
//! The same functions serve external workers over the internal HTTP API
//! ([`http`], authenticated by the worker token) and the built-in demo workers that
//! run inside the process ([`demo`]), so the embedded default exercises exactly the
//! path an external worker takes.

pub mod demo;
pub mod http;
pub mod media;

use bytes::Bytes;
use futures::Stream;
use kie_wire::Credits;
use serde::Serialize;
use std::time::{Duration, Instant};

use crate::blobs::BlobError;
use crate::files::{self, FileError, FileKind, FileRecord, NewFile};
use crate::state::AppState;
use crate::tasks::{self, FinishError, Task};

/// Longest long-poll a worker may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// How often a long-poll looks for tasks created on other nodes.
const CLAIM_POLL: Duration = Duration::from_millis(500);

/// What a worker gets when it claims a task.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimedTask {
    pub task_id: String,
    pub model: String,
    /// The `input` object of the createTask request.
    pub input: serde_json::Value,
    /// The whole createTask request as a JSON string.
    pub param: String,
    pub create_time: i64,
    /// Epoch ms after which the task times out and completing it is refused.
    pub deadline: i64,
}

impl From<Task> for ClaimedTask {
    fn from(t: Task) -> Self {
        let input = serde_json::from_str::<serde_json::Value>(&t.param)
            .ok()
            .and_then(|v| v.get("input").cloned())
            .unwrap_or_else(|| serde_json::json!({}));
        ClaimedTask {
            task_id: t.id,
            model: t.model,
            input,
            param: t.param,
            create_time: t.created_at,
            deadline: t.deadline_at,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("unknown task")]
    UnknownTask,
    #[error("task already finished (completed before, or timed out)")]
    AlreadyFinished,
    #[error("task is not being generated: claim it first")]
    NotClaimed,
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Internal(String),
}

impl From<FinishError> for WorkerError {
    fn from(e: FinishError) -> Self {
        match e {
            FinishError::UnknownTask => WorkerError::UnknownTask,
            FinishError::AlreadyFinished => WorkerError::AlreadyFinished,
            FinishError::NotClaimed => WorkerError::NotClaimed,
            FinishError::Internal(s) => WorkerError::Internal(s),
        }
    }
}

impl From<sqlx::Error> for WorkerError {
    fn from(e: sqlx::Error) -> Self {
        WorkerError::Internal(format!("database: {e}"))
    }
}

/// Claims a task of one of `models`, waiting up to `wait` for one to appear. `None`
/// when none appeared in time or the server is shutting down.
pub async fn claim(
    state: &AppState,
    models: &[String],
    wait: Duration,
    worker: &str,
) -> Result<Option<ClaimedTask>, WorkerError> {
    Ok(claim_many(state, models, wait, worker, 1).await?.pop())
}

/// Like [`claim`], taking up to `max` tasks at once (in-process workers use this to
/// pay one database commit for several tasks under load).
pub async fn claim_many(
    state: &AppState,
    models: &[String],
    wait: Duration,
    worker: &str,
    max: i64,
) -> Result<Vec<ClaimedTask>, WorkerError> {
    let deadline = Instant::now() + wait.min(MAX_WAIT);
    let mut stop = state.shutdown.clone();
    // SQLite: a claim that found nothing finds nothing again until something is
    // committed (a task's deadline only ever takes it out of reach)
    let mut gate = crate::store::PollGate::default();
    loop {
        if *stop.borrow() {
            return Ok(Vec::new());
        }
        // Registered before looking, so a task created in between still wakes us.
        let created = state.jobs.tasks.notified();
        tokio::pin!(created);
        created.as_mut().enable();
        if let Some(ticket) = gate.open(&state.db, crate::store::now_ms()) {
            let got = tasks::claim_batch(&state.db, models, worker, max).await?;
            if !got.is_empty() {
                return Ok(got.into_iter().map(ClaimedTask::from).collect());
            }
            gate.idle(ticket, i64::MAX);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Vec::new());
        }
        tokio::select! {
            _ = &mut created => {}
            _ = tokio::time::sleep(left.min(CLAIM_POLL)) => {}
            _ = stop.changed() => {}
        }
    }
}

/// A task that is being generated (result files may be added only then).
async fn generating(state: &AppState, task_id: &str) -> Result<Task, WorkerError> {
    let t = tasks::get(&state.db, task_id)
        .await?
        .ok_or(WorkerError::UnknownTask)?;
    if t.is_finished() {
        return Err(WorkerError::AlreadyFinished);
    }
    if t.state != kie_wire::task::STATE_GENERATING {
        return Err(WorkerError::NotClaimed);
    }
    Ok(t)
}

/// Streams a result file into the store as a generated file of the task's account.
pub async fn upload_file<S, E>(
    state: &AppState,
    task_id: &str,
    name: &str,
    content_type: &str,
    body: S,
) -> Result<FileRecord, WorkerError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let t = generating(state, task_id).await?;
    let f = NewFile {
        account_id: &t.account_id,
        name,
        content_type,
        kind: FileKind::Generated,
        upload_path: None,
        task_id: Some(&t.id),
        retention: state.config.retention_generated,
        max_size: state.config.max_upload,
    };
    files::create(&state.db, &state.blobs, f, body)
        .await
        .map_err(|e| match e {
            FileError::Invalid(m) => WorkerError::Invalid(m),
            FileError::Blob(b @ BlobError::TooLarge { .. }) => WorkerError::Invalid(b.to_string()),
            FileError::Blob(BlobError::Body(m)) => {
                WorkerError::Invalid(format!("reading the upload failed: {m}"))
            }
            other => WorkerError::Internal(other.to_string()),
        })
}

/// Completes a claimed task: `resultJson` lists the URLs of the files uploaded for it
/// (`{"resultUrls":[…]}`) and/or the worker's `resultObject`; the hold is posted with
/// `cost` (default: the model's price; never more).
pub async fn complete(
    state: &AppState,
    task_id: &str,
    cost: Option<Credits>,
    result_object: Option<serde_json::Value>,
) -> Result<Task, WorkerError> {
    if cost.is_some_and(|c| c.is_negative()) {
        return Err(WorkerError::Invalid(
            "costCredits must not be negative".into(),
        ));
    }
    // The task's state is checked by the completion itself (it must be generating).
    let urls: Vec<String> = files::of_task(&state.db, task_id)
        .await?
        .iter()
        .map(|f| f.url(&state.config.public_url))
        .collect();
    let mut result = serde_json::Map::new();
    if !urls.is_empty() || result_object.is_none() {
        result.insert("resultUrls".into(), urls.into());
    }
    if let Some(o) = result_object {
        result.insert("resultObject".into(), o);
    }
    let result_json = serde_json::Value::Object(result).to_string();
    let done = tasks::complete(&state.db, &state.jobs, task_id, result_json, cost).await?;
    crate::metrics::record_task_finished(&done.model, &done.state);
    Ok(done)
}

/// Fails a claimed task; its hold is voided.
pub async fn fail(
    state: &AppState,
    task_id: &str,
    code: &str,
    msg: &str,
) -> Result<Task, WorkerError> {
    let done = tasks::fail(&state.db, &state.jobs, task_id, code.into(), msg.into()).await?;
    crate::metrics::record_task_finished(&done.model, &done.state);
    Ok(done)
}
