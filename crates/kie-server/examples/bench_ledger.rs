//! Ledger throughput through the real store: `CALLERS` concurrent tasks each loop
//! `ledger::hold` (and, in `holds+posts` mode, `ledger::resolve(Post)` of that hold)
//! for `SECONDS`, then the invariants are checked (balance/held = sums of entries).
//!
//!   bench_ledger DATABASE_URL MODE CALLERS SECONDS [group-commit=on|off] [ACCOUNTS=one|per-caller]
//!
//! MODE is `holds` or `holds+posts`. ACCOUNTS `one` (default) makes every caller hold
//! on the same account (one hot row); `per-caller` gives each caller its own. Prints one line: `ops/s <n> ops <n> errors <n>`,
//! where every hold and every post counts as one operation.

use kie_server::config::parse_database_url;
use kie_server::ledger::{self, Resolution};
use kie_server::store::{Db, OpenOptions};
use kie_wire::Credits;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    // As `kie serve` does: SQLite's page caches in one buffer reserved before SQLite is
    // used (`BENCH_NO_PAGE_CACHE_RESERVE=1`: caches grow from the heap, for a before/after).
    let callers: u32 = a.get(3).and_then(|c| c.parse().ok()).unwrap_or(1);
    if a.get(1).is_some_and(|u| u.starts_with("sqlite:"))
        && std::env::var_os("BENCH_NO_PAGE_CACHE_RESERVE").is_none()
    {
        use kie_server::store::{sqlite_page_cache_slots, sqlite_raw};
        // SAFETY: SQLite is not used yet, and this is the process's only thread.
        unsafe { sqlite_raw::reserve_page_cache(sqlite_page_cache_slots(callers + 2)) };
    }
    tokio::runtime::Runtime::new()?.block_on(run(a))
}

async fn run(a: Vec<String>) -> anyhow::Result<()> {
    if a.len() < 5 {
        anyhow::bail!(
            "usage: bench_ledger DATABASE_URL holds|holds+posts CALLERS SECONDS [on|off]"
        );
    }
    let url = parse_database_url(&a[1]).map_err(|e| anyhow::anyhow!("{e}"))?;
    let posts = match a[2].as_str() {
        "holds" => false,
        "holds+posts" => true,
        m => anyhow::bail!("unknown mode {m}"),
    };
    let callers: usize = a[3].parse()?;
    let secs: f64 = a[4].parse()?;
    let group = a.get(5).map(|s| s != "off").unwrap_or(true);
    let per_caller = a.get(6).is_some_and(|s| s == "per-caller");
    let opts = OpenOptions {
        max_connections: callers as u32 + 2,
        sqlite_group_commit: group,
        ..Default::default()
    };
    let db = Db::open(&url, &opts).await?;
    let mut accounts = Vec::new();
    for _ in 0..if per_caller { callers } else { 1 } {
        let name = format!("bench-{}", kie_wire::apikey::random_base62(8));
        let acc = kie_server::accounts::create(&db, &name, Some(Credits(i64::MAX / 4))).await?;
        accounts.push(acc.id);
    }
    let ops = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(secs);
    let mut handles = Vec::new();
    for i in 0..callers {
        let acc = accounts[i % accounts.len()].clone();
        let (db, ops, errors) = (db.clone(), ops.clone(), errors.clone());
        handles.push(tokio::spawn(async move {
            while Instant::now() < until {
                match ledger::hold(&db, &acc, Credits(100), None).await {
                    Ok(h) => {
                        ops.fetch_add(1, Ordering::Relaxed);
                        if posts {
                            match ledger::resolve(
                                &db,
                                &h.hold_id,
                                Resolution::Post(Credits(60)),
                                None,
                            )
                            .await
                            {
                                Ok(_) => ops.fetch_add(1, Ordering::Relaxed),
                                Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                            };
                        }
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for h in handles {
        h.await?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let n = ops.load(Ordering::Relaxed);
    // The invariants still hold after the run.
    for acc in &accounts {
        let b = ledger::balance(&db, acc).await?.expect("account");
        let (sum, held) = ledger::entry_sums(&db, acc).await?;
        anyhow::ensure!(
            b.balance == sum && b.held == held,
            "ledger invariant broken"
        );
    }
    println!(
        "ops/s {:.0} ops {n} errors {} seconds {elapsed:.2}",
        n as f64 / elapsed,
        errors.load(Ordering::Relaxed)
    );
    db.close().await;
    Ok(())
}
