//! Operator operations shared by `kie admin`: opening the same store the server uses.

use crate::config::StoreArgs;
use crate::store::{Db, OpenOptions};
use crate::StartError;

/// Opens (and migrates) the store named by `--data-dir`/`--database-url`/`--config`.
pub async fn open(args: &StoreArgs) -> Result<Db, StartError> {
    let (_data_dir, database, _storage) = args.resolve()?;
    let opts = OpenOptions {
        max_connections: 2,
        ..Default::default()
    };
    Ok(Db::open(&database, &opts).await?)
}

/// The object store named by `--storage`/`--data-dir`/`--config` (for `file add`).
pub fn open_blobs(args: &StoreArgs) -> Result<crate::blobs::Blobs, StartError> {
    let (_data_dir, _database, storage) = args.resolve()?;
    let s3 = args.s3_options()?;
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
