//! Operator switches kept in the database so every node sees them: maintenance mode
//! and disabled features. Each server refreshes a snapshot every 500 ms, so a change
//! made with `kie admin` on any node takes effect everywhere within a second.

use arc_swap::ArcSwap;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use crate::store::{now_ms, Db};
use crate::{with_read, with_tx};

/// Features an operator can disable (answered with code 505 while disabled).
pub const FEATURES: &[(&str, &str)] = &[
    ("credits", "GET /api/v1/chat/credit"),
    ("download-url", "POST /api/v1/common/download-url"),
    ("file-upload", "POST /api/file-*-upload"),
    (
        "jobs",
        "POST /api/v1/jobs/createTask, GET /api/v1/jobs/recordInfo",
    ),
    (
        "public-result-urls",
        "GET on generated file URLs without a link",
    ),
    (
        "callbacks",
        "webhook callbacks (deliveries wait while disabled)",
    ),
];

const MAINTENANCE: &str = "maintenance";
const FEATURE_PREFIX: &str = "feature:";

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub maintenance: bool,
    pub disabled: BTreeSet<String>,
}

impl Snapshot {
    pub fn is_disabled(&self, feature: &str) -> bool {
        self.disabled.contains(feature)
    }
}

pub async fn load(db: &Db) -> Result<Snapshot, sqlx::Error> {
    let rows: Vec<(String, String)> = with_read!(db, |p| {
        sqlx::query_as("SELECT name, value FROM settings")
            .fetch_all(p)
            .await?
    });
    let mut s = Snapshot::default();
    for (name, value) in rows {
        if name == MAINTENANCE {
            s.maintenance = value == "on";
        } else if let Some(f) = name.strip_prefix(FEATURE_PREFIX) {
            // Only known switches: the snapshot holds at most `FEATURES.len()` names,
            // whatever rows the table has.
            if value == "disabled" && FEATURES.iter().any(|(name, _)| *name == f) {
                s.disabled.insert(f.to_string());
            }
        }
    }
    Ok(s)
}

pub async fn set(db: &Db, name: &str, value: &str) -> Result<(), sqlx::Error> {
    set_many(db, &[(name.to_string(), value)]).await
}

/// Writes several settings in one transaction: all of them, or none.
pub async fn set_many(db: &Db, values: &[(String, &str)]) -> Result<(), sqlx::Error> {
    let now = now_ms();
    with_tx!(db, |tx| {
        for (name, value) in values {
            sqlx::query(
                "INSERT INTO settings (name, value, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            )
            .bind(name)
            .bind(*value)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
    });
    Ok(())
}

/// A change of switches: maintenance and features (by name, `true`: enabled). Unknown
/// feature names are refused before anything is written.
pub async fn switch(
    db: &Db,
    maintenance: Option<bool>,
    features: &[(String, bool)],
) -> Result<(), SwitchError> {
    let mut values = Vec::new();
    if let Some(on) = maintenance {
        values.push((MAINTENANCE.to_string(), if on { "on" } else { "off" }));
    }
    for (f, enabled) in features {
        if !FEATURES.iter().any(|(name, _)| name == f) {
            return Err(SwitchError::UnknownFeature(f.clone()));
        }
        let v = if *enabled { "enabled" } else { "disabled" };
        values.push((format!("{FEATURE_PREFIX}{f}"), v));
    }
    Ok(set_many(db, &values).await?)
}

fn feature_names() -> String {
    FEATURES
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    #[error("no feature '{0}' (known: {known})", known = feature_names())]
    UnknownFeature(String),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

pub async fn get(db: &Db, name: &str) -> Result<Option<String>, sqlx::Error> {
    with_read!(db, |p| {
        sqlx::query_scalar("SELECT value FROM settings WHERE name = $1")
            .bind(name)
            .fetch_optional(p)
            .await
    })
}

pub async fn set_maintenance(db: &Db, on: bool) -> Result<(), sqlx::Error> {
    set(db, MAINTENANCE, if on { "on" } else { "off" }).await
}

pub async fn set_feature(db: &Db, feature: &str, enabled: bool) -> Result<(), sqlx::Error> {
    set(
        db,
        &format!("{FEATURE_PREFIX}{feature}"),
        if enabled { "enabled" } else { "disabled" },
    )
    .await
}

/// The live snapshot a server consults on every request.
#[derive(Clone)]
pub struct LiveSettings(Arc<ArcSwap<Snapshot>>);

impl LiveSettings {
    pub fn new(initial: Snapshot) -> Self {
        LiveSettings(Arc::new(ArcSwap::from_pointee(initial)))
    }

    pub fn current(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.0.load()
    }

    /// Refreshes the snapshot until `shutdown` fires. A failed read keeps the last
    /// snapshot (and is logged once per outage).
    pub async fn refresh_loop(self, db: Db, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        // SQLite: no read while nothing was committed since the last one
        let mut gate = crate::store::PollGate::default();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let Some(ticket) = gate.open(&db, now_ms()) else {
                continue;
            };
            let loaded = load(&db).await;
            match &loaded {
                Ok(_) => gate.idle(ticket, i64::MAX),
                Err(_) => gate.busy(ticket),
            }
            match loaded {
                Ok(s) => {
                    if failing {
                        tracing::info!("settings refresh recovered");
                        failing = false;
                    }
                    if **self.0.load() != s {
                        self.0.store(Arc::new(s));
                    }
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "settings refresh failed; keeping the last snapshot");
                        failing = true;
                    }
                }
            }
        }
    }
}
