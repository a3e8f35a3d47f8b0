//! Operator operations shared by `kie admin`: opening the same store the server uses.

use crate::config::StoreArgs;
use crate::startup::StartError;
use crate::store::{Db, OpenOptions};

/// Opens (and migrates) the store named by `--data-dir`/`--database-url`/`--config`.
pub async fn open(args: &StoreArgs) -> Result<Db, StartError> {
    let (_data_dir, database, _storage) = args.resolve()?;
    let opts = OpenOptions {
        max_connections: 2,
        ..Default::default()
    };
    Ok(Db::open(&database, &opts).await?)
}

/// The setting in which `kie serve` records the storage it serves files from.
const SERVER_STORAGE: &str = "server.storage";

/// A storage URL in one spelling: a local directory as an absolute path, an S3 URL
/// without a trailing `/`.
pub fn normalize_storage(storage: &str) -> String {
    match storage.strip_prefix("file://") {
        Some(dir) => {
            let p = std::path::Path::new(dir);
            let abs = std::fs::canonicalize(p)
                .or_else(|_| std::path::absolute(p))
                .unwrap_or_else(|_| p.to_path_buf());
            format!("file://{}", abs.display())
        }
        None => storage.trim_end_matches('/').to_string(),
    }
}

/// Records the storage (and S3 endpoint and addressing) the server serves files from,
/// so that `kie admin file add` writes where the server reads (called at start).
pub async fn record_storage(
    db: &Db,
    storage: &str,
    s3: &crate::blobs::S3Options,
) -> Result<(), sqlx::Error> {
    let v = serde_json::json!({
        "storage": normalize_storage(storage),
        "s3Endpoint": s3.endpoint,
        "s3Addressing": match s3.addressing {
            crate::blobs::S3Addressing::Path => "path",
            crate::blobs::S3Addressing::Virtual => "virtual",
        },
    });
    crate::settings::set(db, SERVER_STORAGE, &v.to_string()).await
}

/// The object store for `kie admin file add`: the one the server recorded at its
/// last start (its S3 endpoint and addressing too, unless given here). Told a
/// different storage with `--storage` (or `KIE_STORAGE`, or the config file), it
/// refuses, rather than write bytes the server will never serve. With no server
/// record (the server never ran on this database): `--storage`, else the default.
pub async fn open_blobs(args: &StoreArgs, db: &Db) -> Result<crate::blobs::Blobs, StartError> {
    let (_data_dir, _database, default_storage) = args.resolve()?;
    let mut s3 = args.s3_options()?;
    let explicit = args.explicit_storage()?;
    let recorded = crate::settings::get(db, SERVER_STORAGE)
        .await
        .map_err(|e| StartError::Other(format!("cannot read the server's storage: {e}")))?
        .and_then(|v| serde_json::from_str::<serde_json::Value>(&v).ok());
    let storage = match (recorded, explicit) {
        (Some(r), explicit) => {
            let served = r["storage"].as_str().unwrap_or_default().to_string();
            if let Some(e) = explicit {
                if normalize_storage(&e) != served {
                    return Err(StartError::Other(format!(
                        "the server serves files from {served}, not {e}: drop --storage (kie admin then uses the server's) or start the server with --storage {e}"
                    )));
                }
            }
            if s3.endpoint.is_none() {
                s3.endpoint = r["s3Endpoint"].as_str().map(str::to_string);
            }
            if r["s3Addressing"] == "virtual" {
                s3.addressing = crate::blobs::S3Addressing::Virtual;
            }
            served
        }
        (None, Some(e)) => e,
        (None, None) => default_storage,
    };
    Ok(crate::blobs::Blobs::open_with(&storage, &s3)?)
}

/// The public base URL file URLs are printed with: the one the server wrote at start
/// (`server.public_url` setting), else `fallback` (`--public-url` or the config).
pub async fn public_url(db: &Db, fallback: &url::Url) -> url::Url {
    match crate::settings::get(db, "server.public_url").await {
        Ok(Some(u)) => url::Url::parse(&u).unwrap_or_else(|_| fallback.clone()),
        _ => fallback.clone(),
    }
}
