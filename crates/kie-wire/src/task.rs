//! Task records and callback payloads of the Jobs API (SPEC §4, §6), with the exact
//! field names and types clients in the wild parse strictly.

use serde::{Deserialize, Serialize};

use crate::Credits;

pub const STATE_WAITING: &str = "waiting";
pub const STATE_QUEUING: &str = "queuing";
pub const STATE_GENERATING: &str = "generating";
pub const STATE_SUCCESS: &str = "success";
pub const STATE_FAIL: &str = "fail";

/// `POST /api/v1/jobs/createTask` request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateTaskRequest {
    pub model: String,
    pub input: serde_json::Value,
    #[serde(
        rename = "callBackUrl",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub call_back_url: Option<String>,
}

/// `data` of a createTask answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateTaskData {
    #[serde(rename = "taskId")]
    pub task_id: String,
}

/// `data` of `GET /api/v1/jobs/recordInfo`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordInfo {
    pub task_id: String,
    pub model: String,
    pub state: String,
    /// The original request as a JSON string.
    pub param: String,
    /// `{"resultUrls":[…]}` or `{"resultObject":…}` as a JSON string; `""` until done.
    pub result_json: String,
    pub fail_code: String,
    pub fail_msg: String,
    /// Milliseconds spent generating, once known.
    pub cost_time: Option<i64>,
    pub create_time: Option<i64>,
    pub update_time: Option<i64>,
    pub complete_time: Option<i64>,
    pub consume_credits: Credits,
    /// Repeats `consumeCredits` (clients in the wild read this name); absent in some
    /// KIE.AI answers.
    #[serde(default)]
    pub credits_consumed: Credits,
    /// The available balance; absent in some KIE.AI answers.
    #[serde(default)]
    pub remained_credits: Credits,
}

impl RecordInfo {
    pub fn is_finished(&self) -> bool {
        self.state == STATE_SUCCESS || self.state == STATE_FAIL
    }

    /// The result URLs of a media task (empty when there are none).
    pub fn result_urls(&self) -> Vec<String> {
        #[derive(Deserialize)]
        struct R {
            #[serde(rename = "resultUrls", default)]
            result_urls: Vec<String>,
        }
        serde_json::from_str::<R>(&self.result_json)
            .map(|r| r.result_urls)
            .unwrap_or_default()
    }
}
