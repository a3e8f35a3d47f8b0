//! The `{"code", "msg", "data"}` envelope every `/api/...` answer carries.

use serde::{Deserialize, Serialize};

/// Body `code` values (SPEC §2). The HTTP status may differ (see `status_mode`).
pub mod codes {
    pub const SUCCESS: i64 = 200;
    pub const UNAUTHORIZED: i64 = 401;
    pub const INSUFFICIENT_CREDITS: i64 = 402;
    /// The API key's usage cap (hourly, daily or total) would be exceeded.
    pub const KEY_CAP_EXCEEDED: i64 = 433;
    pub const NOT_FOUND: i64 = 404;
    pub const METHOD_NOT_ALLOWED: i64 = 405;
    pub const VALIDATION: i64 = 422;
    pub const RATE_LIMITED: i64 = 429;
    pub const MAINTENANCE: i64 = 455;
    pub const SERVER_ERROR: i64 = 500;
    pub const FEATURE_DISABLED: i64 = 505;
}

/// The response envelope. `success` is only present on File Upload API answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub success: Option<bool>,
    pub code: i64,
    pub msg: String,
    pub data: Option<T>,
}

impl<T> Envelope<T> {
    pub fn ok(data: T) -> Self {
        Envelope {
            success: None,
            code: codes::SUCCESS,
            msg: "success".into(),
            data: Some(data),
        }
    }

    pub fn is_success(&self) -> bool {
        self.code == codes::SUCCESS
    }
}

impl Envelope<()> {
    pub fn error(code: i64, msg: impl Into<String>) -> Self {
        Envelope {
            success: None,
            code,
            msg: msg.into(),
            data: None,
        }
    }
}
