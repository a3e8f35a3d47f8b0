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
