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
    /// 200 on success; 401, 402, 404, 422, 455, 505 otherwise
    pub code: i64,
    pub msg: String,
    /// The temporary download link; null on error
    #[schema(nullable)]
    pub data: Option<String>,
}

/// `{"success": true, "code": 200, "msg": "File uploaded successfully", "data": {…}}`
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct UploadEnvelope {
    pub success: bool,
    /// 200 on success; 401, 422, 455, 505 otherwise
    pub code: i64,
    pub msg: String,
    /// Null on error
    #[schema(nullable)]
    pub data: Option<crate::api::upload::UploadedFile>,
}
