//! The retention sweeper: deletes files past `expires_at` and bytes nobody records.
//!
//! Order for an expired file: the record is marked deleted (`deleted_at`) first, then
//! the bytes are removed. So a live record never points at missing bytes; if removing
//! the bytes fails (or the process dies in between), they are left without a live
//! record, which is exactly what the orphan pass removes on a later sweep.
//!
//! Orphan pass: every stored object whose id has no live record and that is older than
//! `orphan_grace` is deleted. The grace period covers the short window in `files::create`
//! between the bytes becoming visible and the record being inserted.
//!
//! Every node runs the sweeper; all steps are idempotent, so nodes need no coordination.

use futures::StreamExt;
use std::collections::HashSet;
use std::time::Duration;

use crate::blobs::Blobs;
use crate::store::{now_ms, Db};
use crate::{with_read, with_tx};

/// What one sweep did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Swept {
    pub expired: u64,
    pub orphans: u64,
}

const BATCH: i64 = 500;

/// One sweep: expired files, then orphan bytes.
pub async fn sweep_once(db: &Db, blobs: &Blobs, orphan_grace: Duration) -> anyhow::Result<Swept> {
    let mut out = Swept::default();
    let now = now_ms();
    loop {
        let due: Vec<(String, String)> = with_read!(db, |p| {
            sqlx::query_as(
            "SELECT id, storage_key FROM files WHERE deleted_at IS NULL AND expires_at <= $1 ORDER BY expires_at LIMIT $2"
        )
        .bind(now)
        .bind(BATCH)
        .fetch_all(p)
        .await?
        });
        if due.is_empty() {
            break;
        }
        let n = due.len() as i64;
        for (id, key) in due {
            let marked = with_tx!(db, |tx| {
                sqlx::query("UPDATE files SET deleted_at = $1 WHERE id = $2 AND deleted_at IS NULL")
                    .bind(now_ms())
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
            });
            if marked == 1 {
                out.expired += 1;
            }
            if let Err(e) = blobs.delete(&key).await {
                tracing::warn!(file_id = %id, error = %e, "could not delete expired file bytes; the orphan pass will retry");
            }
        }
        if n < BATCH {
            break;
        }
    }
    out.orphans = sweep_orphans(db, blobs, orphan_grace).await?;
    out.orphans += sweep_staged(blobs, orphan_grace).await;
    Ok(out)
}

/// The file id a storage key belongs to (`{id[..2]}/{id}`), if it is one of ours.
fn id_of_key(key: &str) -> Option<&str> {
    let (prefix, id) = key.split_once('/')?;
    (crate::files::serve::is_file_id(id) && id.starts_with(prefix) && prefix.len() == 2)
        .then_some(id)
}

async fn live_ids(db: &Db, ids: &[String]) -> Result<HashSet<String>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(HashSet::new());
    }
    let placeholders: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
    let sql = format!(
        "SELECT id FROM files WHERE deleted_at IS NULL AND id IN ({})",
        placeholders.join(", ")
    );
    // Not kept in the connections' statement caches: the list's length varies (the
    // last batch of every sweep), and each length would be a new cached statement on
    // whichever connection ran it — memory that grows for as long as the server runs.
    let rows: Vec<String> = with_read!(db, |p| {
        let mut q = sqlx::query_scalar(&sql).persistent(false);
        for id in ids {
            q = q.bind(id);
        }
        q.fetch_all(p).await?
    });
    Ok(rows.into_iter().collect())
}

async fn sweep_orphans(db: &Db, blobs: &Blobs, grace: Duration) -> anyhow::Result<u64> {
    let cutoff = now_ms() - grace.as_millis() as i64;
    let mut listing = blobs.list_all();
    let mut batch: Vec<(String, String)> = Vec::new();
    let mut removed = 0;
    loop {
        let next = listing.next().await;
        let done = next.is_none();
        if let Some(item) = next {
            let (key, modified) = item?;
            if modified > cutoff {
                continue;
            }
            match id_of_key(&key) {
                Some(id) => batch.push((key.clone(), id.to_string())),
                // S3: a bucket (or prefix) may be shared with others; only objects
                // of our key shape are ours to remove.
                None if matches!(blobs.kind, crate::blobs::BlobKind::S3 { .. }) => {}
                // not a key files::create makes: bytes nobody can reach
                None => batch.push((key, String::new())),
            }
        }
        if batch.len() >= 200 || (done && !batch.is_empty()) {
            let ids: Vec<String> = batch
                .iter()
                .filter(|(_, id)| !id.is_empty())
                .map(|(_, id)| id.clone())
                .collect();
            let live = live_ids(db, &ids).await?;
            for (key, id) in batch.drain(..) {
                if id.is_empty() || !live.contains(&id) {
                    match blobs.delete(&key).await {
                        Ok(()) => removed += 1,
                        Err(e) => tracing::warn!(error = %e, "could not delete orphan bytes"),
                    }
                }
            }
        }
        if done {
            return Ok(removed);
        }
    }
}

/// Local store only: removes staged writes (`{key}#{n}`, which the store's listing does
/// not show) untouched for longer than `grace`. A process killed mid-upload leaves
/// them; a live upload keeps touching its file, and no body takes longer than the
/// request body timeout between writes.
async fn sweep_staged(blobs: &Blobs, grace: Duration) -> u64 {
    let Some(root) = blobs.local_path("") else {
        return 0;
    };
    let walk = move || {
        let mut removed = 0;
        let Ok(prefixes) = std::fs::read_dir(&root) else {
            return 0;
        };
        for d in prefixes.flatten() {
            if !d.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let Ok(files) = std::fs::read_dir(d.path()) else {
                continue;
            };
            for f in files.flatten() {
                let name = f.file_name();
                let Some(name) = name.to_str() else { continue };
                let staged = name
                    .split_once('#')
                    .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
                if !staged {
                    continue;
                }
                let idle = f
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > grace);
                if idle && std::fs::remove_file(f.path()).is_ok() {
                    removed += 1;
                }
            }
        }
        removed
    };
    tokio::task::spawn_blocking(walk).await.unwrap_or(0)
}

/// Sweeps every `interval` until `shutdown` flips.
pub async fn run(
    db: Db,
    blobs: Blobs,
    interval: Duration,
    orphan_grace: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let pass = sweep_once(&db, &blobs, orphan_grace);
        // a long sweep must not hold up shutdown
        let r = tokio::select! {
            r = pass => r,
            _ = shutdown.changed() => return,
        };
        match r {
            Ok(s) if s.expired > 0 || s.orphans > 0 => {
                tracing::info!(expired = s.expired, orphans = s.orphans, "retention sweep")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "retention sweep failed; retrying next interval"),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_map_to_ids() {
        let id = format!("ab{}", "c".repeat(30));
        assert_eq!(super::id_of_key(&format!("ab/{id}")), Some(id.as_str()));
        assert_eq!(super::id_of_key(&format!("xy/{id}")), None);
        assert_eq!(super::id_of_key("stray.txt"), None);
    }
}
