//! Wire types shared by the kie-common server and SDK: the response envelope and its
//! codes, exact credit amounts, the API key format, task records and webhook signatures.
//!
//! Nothing in this crate does I/O, so both sides can depend on it.

pub mod apikey;
pub mod credits;
pub mod envelope;
pub mod secrets;
pub mod task;
pub mod webhook;

pub use credits::Credits;
pub use envelope::{codes, Envelope};
