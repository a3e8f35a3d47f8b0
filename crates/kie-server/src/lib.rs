//! The kie-common service: a self-hostable implementation of the KIE.AI Common API.
//!
//! Where things are:
//! * `conn_guard` — connection limits, header/body timeouts, per-IP rate limit
//! * `http` — where a request enters: envelope, status mode, request ids, JSON bodies
//! * `auth` — API keys, their IP allowlists and per-key rate limits
//! * `ipallow` — CIDR blocks of key allowlists
//! * `ratelimit` — keyed rate limiters with a hard bound on remembered keys
//! * `ledger` — where the money is (all balance changes)
//! * `accounts` — accounts, API keys, webhook keys
//! * `settings` — maintenance mode and feature switches shared by all nodes
//! * `api` — the public endpoints, documented in OpenAPI
//! * `store` — the metadata store boundary (SQLite or PostgreSQL)
//! * `blobs` — the object-store boundary (local directory or S3) for file bytes
//! * `files` — stored files, their public URLs, download links and retention
//! * `net_guard` — the SSRF guard for outgoing requests (URL uploads and callbacks: the only one)
//! * `tasks` — Jobs API tasks: creation with a credit hold, queue, settlement
//! * `workers` — the worker protocol (internal API) and the in-process demo models
//! * `webhooks` — callback payloads, the durable outbox, the dispatcher (through `net_guard`)
//! * `console` — the web console (HTML pages, sessions, invites) on the same router
//! * `admin` / `demo` — operator operations used by `kie admin` and `kie serve --demo`

pub mod accounts;
pub mod admin;
pub mod alerts;
pub mod api;
pub mod app;
pub mod auth;
pub mod blobs;
pub mod catalog;
pub mod config;
pub mod conn_guard;
pub mod console;
pub mod demo;
pub mod files;
pub mod http;
pub mod ipallow;
pub mod ledger;
pub mod metrics;
pub mod net_guard;
pub mod openapi;
pub mod operator;
pub mod ratelimit;
pub mod settings;
pub mod startup;
pub mod state;
pub mod store;
pub mod tasks;
pub mod webhooks;
pub mod workers;

pub use app::Server;
pub use config::{Config, ServeArgs, StoreArgs};
pub use sqlx;
pub use startup::StartError;
pub use state::AppState;
