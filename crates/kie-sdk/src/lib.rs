//! Client SDK for the KIE.AI Common API — and for `kie serve`, which speaks the same
//! wire format.
//!
//! * [`Client`]: credits, temporary download links, tasks, uploads; one pooled
//!   rustls HTTP client with connect/read timeouts and retries (see [`RetryPolicy`]).
//! * [`Downloader`]: batch downloads with bounded concurrency, `.part` files, resume
//!   with `Range`/`If-Range`, fresh links when one expires, progress callbacks.
//! * [`webhook::WebhookVerifier`] and the axum extractor
//!   [`webhook::VerifiedWebhook`]: both signature schemes, timestamp tolerance,
//!   replay protection.
//! * [`monitor::BalanceMonitor`]: burn rate, time to exhaustion, alerts once per
//!   threshold crossing.
//!
//! Errors are typed ([`Error`]) from the body `code`, whatever the HTTP status: KIE.AI
//! answers most errors with HTTP 200.
//!
//! ```
//! # use axum::{routing::{get, post}, Json, Router};
//! # use serde_json::json;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! # // A stand-in for the API, answering the way KIE.AI does (errors with HTTP 200).
//! # let app = Router::new()
//! #     .route("/api/v1/chat/credit", get(|| async { Json(json!({"code": 200, "msg": "success", "data": 100})) }))
//! #     .route("/api/v1/common/download-url", post(|| async {
//! #         Json(json!({"code": 422, "msg": "Invalid URL: external file URLs are not supported", "data": null}))
//! #     }));
//! # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! # std::env::set_var("KIE_BASE_URL", format!("http://{}", listener.local_addr().unwrap()));
//! # std::env::set_var("KIE_API_KEY", "my-key");
//! # tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
//! use kie_sdk::{Client, Credits, Error};
//!
//! // KIE_API_KEY and KIE_BASE_URL (default https://api.kie.ai)
//! let client = Client::from_env().unwrap();
//! assert_eq!(client.credits().await.unwrap(), "100".parse::<Credits>().unwrap());
//!
//! match client.download_url("https://example.com/cat.png").await {
//!     Err(Error::Validation { msg }) => assert!(msg.contains("external")),
//!     other => panic!("unexpected {other:?}"),
//! }
//! # }
//! ```

pub mod account;
pub mod alerts;
mod client;
pub mod download;
mod error;
pub mod keys;
pub mod monitor;
mod retry;
pub mod webhook;

pub use client::{
    Client, ClientBuilder, UploadedFile, WaitOptions, DEFAULT_BASE_URL, ENV_API_KEY, ENV_BASE_URL,
};
pub use download::{DownloadItem, DownloadReport, DownloadStatus, Downloader, Progress};
pub use error::{Error, Result};
pub use kie_wire::task::{CreateTaskRequest, RecordInfo};
pub use kie_wire::Credits;
pub use retry::RetryPolicy;
