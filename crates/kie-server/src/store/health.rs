//! Whether PostgreSQL is reachable, as seen by one dedicated probe connection.
//!
//! The pool alone cannot tell "the database is gone" from "every connection is busy":
//! both look like a wait for a connection, so its acquire timeout would have to be
//! short enough for an outage (failing requests on a busy pool) or long enough for a
//! busy pool (keeping requests waiting in an outage). The probe tells them apart: it
//! runs `SELECT 1` every 250 ms on its own connection, and the database is *down* when
//! that connection breaks and cannot be re-opened, or when it does not answer within
//! 1 s (a stalled host or a network partition). While down, requests fail at once
//! and requests already waiting are answered (see `http::guard::db_watch`); the first
//! successful probe brings the service back.
//!
//! SQLite is in-process: it is never down in this sense.

use sqlx::postgres::PgConnection;
use sqlx::Connection;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

use super::Db;

const PROBE_EVERY: Duration = Duration::from_millis(250);
/// A probe without an answer for this long means the database is down.
pub const NO_ANSWER: Duration = Duration::from_millis(1000);

/// Shared, cheap to clone; `true` in the channel = down.
#[derive(Clone, Debug)]
pub struct DbHealth {
    tx: Arc<watch::Sender<bool>>,
}

impl Default for DbHealth {
    fn default() -> Self {
        let (tx, _) = watch::channel(false);
        DbHealth { tx: Arc::new(tx) }
    }
}

/// Connection errors that say nothing about the database being gone.
fn is_not_an_outage(e: &sqlx::Error) -> bool {
    // too_many_connections: the server is up, only full
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("53300"))
}

impl DbHealth {
    pub fn is_down(&self) -> bool {
        *self.tx.borrow()
    }

    /// Changes to the state (`true` = down).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }

    fn set(&self, down: bool) -> bool {
        self.tx.send_if_modified(|v| {
            let changed = *v != down;
            *v = down;
            changed
        })
    }

    /// Probes until `shutdown` flips (returns at once for SQLite).
    pub async fn run(self, db: Db, mut shutdown: watch::Receiver<bool>) {
        let Db::Postgres(pg) = db else { return };
        let pool = pg.pool;
        let opts = pool.connect_options();
        let mut conn: Option<PgConnection> = None;
        let mut tick = tokio::time::interval(PROBE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let probe = tokio::time::timeout(NO_ANSWER, async {
                if conn.is_none() {
                    conn = Some(PgConnection::connect_with(&opts).await?);
                }
                let c = conn.as_mut().expect("connected above");
                sqlx::query("SELECT 1").execute(c).await.map(|_| ())
            })
            .await;
            let failure = match probe {
                Ok(Ok(())) => None,
                Ok(Err(e)) if is_not_an_outage(&e) => {
                    conn = None;
                    None
                }
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!("no answer within {} ms", NO_ANSWER.as_millis())),
            };
            match failure {
                None => {
                    if self.set(false) {
                        tracing::info!("database reachable again");
                    }
                }
                Some(reason) => {
                    conn = None;
                    if self.set(true) {
                        tracing::error!(error = %reason, "database unreachable: requests fail fast until it is back");
                    }
                }
            }
        }
    }
}
