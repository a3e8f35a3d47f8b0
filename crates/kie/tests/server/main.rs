//! Integration tests of `kie serve` and `kie admin` through their public surface.
//! Run against SQLite by default, PostgreSQL with `KIE_TEST_BACKEND=postgres`.

mod harness;

mod files;
mod foundation;
mod jobs;
mod secrets;
mod ssrf;
mod wire_bodies;
