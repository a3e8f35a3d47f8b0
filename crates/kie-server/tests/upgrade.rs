//! Upgrading an existing SQLite database: a file migrated up to 0006 (before alerts, the
//! key roll and "last used"), holding an account, a task, its webhook delivery and the
//! delivery's attempts, is opened by the current server code. Migration 0007 rebuilds
//! `webhook_deliveries` (its `task_id` becomes nullable for balance events) inside
//! sqlx's one transaction, with the foreign-key checks deferred; this shows that every
//! row survives, every reference still holds, and the rebuilt table accepts what the
//! new code writes.

use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::Row;
use std::path::PathBuf;

use kie_server::config::DatabaseUrl;
use kie_server::store::{Db, OpenOptions};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "kie-upgrade-{name}-{}-{}",
        std::process::id(),
        kie_wire::apikey::random_base62(8)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test]
async fn a_database_at_0006_upgrades_with_its_deliveries_and_attempts() {
    let dir = temp_dir("0006");
    let db_path = dir.join("kie.db");
    // the first six migrations, byte for byte (so their checksums match the real ones)
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
    let old = dir.join("migrations");
    std::fs::create_dir_all(&old).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    for n in names.iter().filter(|n| n.as_str() < "0007") {
        std::fs::copy(src.join(n), old.join(n)).unwrap();
    }
    assert_eq!(std::fs::read_dir(&old).unwrap().count(), 6);

    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            SqliteConnectOptions::new()
                .filename(&db_path)
                .create_if_missing(true)
                .foreign_keys(true),
        )
        .await
        .unwrap();
    sqlx::migrate::Migrator::new(old.as_path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    sqlx::raw_sql(
        "INSERT INTO accounts (id, name, balance, held, created_at) VALUES ('acc_1', 'old', 1000, 50, 1);
         INSERT INTO holds (id, account_id, amount, created_at) VALUES ('hld_1', 'acc_1', 50, 1);
         INSERT INTO tasks (id, account_id, model, state, param, callback_url, hold_id, price, created_at, updated_at, deadline_at)
           VALUES ('task_1', 'acc_1', 'demo/text', 'generating', '{}', 'http://h/cb', 'hld_1', 50, 1, 1, 99);
         INSERT INTO webhook_deliveries (id, task_id, account_id, url, body, state, attempts, next_attempt_at, created_at)
           VALUES ('whd_1', 'task_1', 'acc_1', 'http://h/cb', '{\"code\":200}', 'pending', 2, 5, 1);
         INSERT INTO webhook_attempts (delivery_id, attempt, started_at, duration_ms, status, error)
           VALUES ('whd_1', 1, 2, 10, 500, NULL), ('whd_1', 2, 3, 12, NULL, 'timeout');",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;

    // the current code opens it: 0007 and later run
    let db = Db::open(
        &DatabaseUrl::Sqlite(db_path.clone()),
        &OpenOptions::default(),
    )
    .await
    .expect("the upgrade runs");
    let Db::Sqlite(s) = &db else { unreachable!() };
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&s.read)
            .await
            .unwrap();
    let files = names.iter().filter(|n| n.ends_with(".sql")).count() as i64;
    assert_eq!(versions, (1..=files).collect::<Vec<_>>());

    let d = sqlx::query(
        "SELECT task_id, account_id, url, body, state, attempts, next_attempt_at FROM webhook_deliveries WHERE id = 'whd_1'",
    )
    .fetch_one(&s.read)
    .await
    .unwrap();
    assert_eq!(d.get::<Option<String>, _>(0).as_deref(), Some("task_1"));
    assert_eq!(d.get::<String, _>(1), "acc_1");
    assert_eq!(d.get::<String, _>(2), "http://h/cb");
    assert_eq!(d.get::<String, _>(3), "{\"code\":200}");
    assert_eq!(d.get::<String, _>(4), "pending");
    assert_eq!(d.get::<i64, _>(5), 2);
    assert_eq!(d.get::<i64, _>(6), 5);
    let attempts: Vec<(i64, Option<i64>, Option<String>)> = sqlx::query_as(
        "SELECT attempt, status, error FROM webhook_attempts WHERE delivery_id = 'whd_1' ORDER BY attempt",
    )
    .fetch_all(&s.read)
    .await
    .unwrap();
    assert_eq!(
        attempts,
        vec![(1, Some(500), None), (2, None, Some("timeout".into()))]
    );
    // every reference holds after the rebuild
    let broken: Vec<(String, i64, String, i64)> = sqlx::query_as("PRAGMA foreign_key_check")
        .fetch_all(&s.read)
        .await
        .unwrap();
    assert!(broken.is_empty(), "{broken:?}");
    let (balance, held, state): (i64, i64, i64) =
        sqlx::query_as("SELECT balance, held, alert_state FROM accounts WHERE id = 'acc_1'")
            .fetch_one(&s.read)
            .await
            .unwrap();
    assert_eq!((balance, held, state), (1000, 50, 0));

    // the rebuilt table takes a delivery without a task (a balance event)
    sqlx::query(
        "INSERT INTO webhook_deliveries (id, task_id, account_id, url, body, state, attempts, next_attempt_at, created_at)
         VALUES ('evt_1', NULL, 'acc_1', 'http://h/alert', '{}', 'pending', 0, 1, 1)",
    )
    .execute(&s.write)
    .await
    .unwrap();
    // and still refuses a delivery for a task that does not exist
    let orphan = sqlx::query(
        "INSERT INTO webhook_deliveries (id, task_id, account_id, url, body, state, attempts, next_attempt_at, created_at)
         VALUES ('whd_2', 'task_nope', 'acc_1', 'http://h/cb', '{}', 'pending', 0, 1, 1)",
    )
    .execute(&s.write)
    .await;
    assert!(
        orphan.is_err(),
        "a delivery for a missing task was accepted"
    );
    db.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}
