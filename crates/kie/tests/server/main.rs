//! Integration tests of `kie serve` and `kie admin` through their public surface.
//! Run against SQLite by default, PostgreSQL with `KIE_TEST_BACKEND=postgres`.

mod harness;

mod admin_api;
mod alerts;
mod bounded;
mod callbacks;
mod caps;
mod catalog;
mod cli_e2e;
mod console;
mod crash;
mod diskfull;
mod files;
mod foundation;
mod group_commit;
mod hostile;
mod jobs;
mod keys;
mod multinode;
mod outage;
mod parity;
mod receiver;
mod s3;
mod secrets;
mod ssrf;
mod wire_bodies;
