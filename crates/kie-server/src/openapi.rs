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
