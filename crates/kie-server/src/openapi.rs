//! Schemas for the OpenAPI document (the wire types live in `kie-wire`, which has no
//! OpenAPI dependency, so their documented shapes are declared here).

use utoipa::ToSchema;

/// `{"code": 200, "msg": "success", "data": <number>}`
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct CreditEnvelope {
    /// 200 on success; 401, 429, 455, 500, 505 otherwise
    pub code: i64,
    pub msg: String,
    /// Available credits; null on error
    #[schema(nullable)]
    pub data: Option<f64>,
}

/// `{"code": <int>, "msg": <string>, "data": null}`
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ErrorEnvelope {
    pub code: i64,
    pub msg: String,
    #[schema(nullable)]
    pub data: Option<String>,
}

/// `{"code": 200, "msg": "success", "data": "<temporary link>"}`
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct LinkEnvelope {
    /// 200 on success; 401, 402, 404, 422, 433 (the key's usage cap), 455, 505 otherwise
    pub code: i64,
    pub msg: String,
    /// The temporary download link; null on error
    #[schema(nullable)]
    pub data: Option<String>,
}

/// `POST /api/v1/jobs/createTask` body.
#[derive(ToSchema)]
#[allow(dead_code, non_snake_case)]
pub struct CreateTaskBody {
    /// A model of the catalog, e.g. `demo/image`
    pub model: String,
    /// Model input, checked against the model's fields (GET /api/v1/models/{model}/schema); `demo/*` models need `prompt`
    pub input: serde_json::Value,
    /// http(s) URL that receives the callback when the task finishes
    #[schema(nullable)]
    pub callBackUrl: Option<String>,
}

#[derive(ToSchema)]
#[allow(dead_code, non_snake_case)]
pub struct TaskIdData {
    pub taskId: String,
}

/// `{"code": 200, "msg": "success", "data": {"taskId": …}}`
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct CreateTaskEnvelope {
    pub code: i64,
    pub msg: String,
    #[schema(nullable)]
    pub data: Option<TaskIdData>,
}

/// A task record (`param` and `resultJson` are JSON strings; times epoch ms).
#[derive(ToSchema)]
#[allow(dead_code, non_snake_case)]
pub struct RecordInfoData {
    pub taskId: String,
    pub model: String,
    /// waiting | queuing | generating | success | fail
    pub state: String,
    pub param: String,
    pub resultJson: String,
    pub failCode: String,
    pub failMsg: String,
    #[schema(nullable)]
    pub costTime: Option<i64>,
    #[schema(nullable)]
    pub createTime: Option<i64>,
    #[schema(nullable)]
    pub updateTime: Option<i64>,
    #[schema(nullable)]
    pub completeTime: Option<i64>,
    pub consumeCredits: f64,
    pub creditsConsumed: f64,
    pub remainedCredits: f64,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct RecordInfoEnvelope {
    pub code: i64,
    pub msg: String,
    #[schema(nullable)]
    pub data: Option<RecordInfoData>,
}

/// `data` is a JSON Schema (2020-12) of the model's `input` object.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct SchemaEnvelope {
    pub code: i64,
    pub msg: String,
    #[schema(nullable)]
    pub data: Option<serde_json::Value>,
}
