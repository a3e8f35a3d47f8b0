//! `kie serve --demo`: a demo account with credits, created once per data directory.
//!
//! The demo key is kept in `<data-dir>/demo-api-key` (mode 0600) so that later
//! `--demo` starts can print it again; the database stores only its digest, as for
//! every key.

use kie_wire::{apikey, Credits};
use std::path::Path;

use crate::accounts::{self, AccountError};
use crate::store::Db;

pub const DEMO_ACCOUNT: &str = "demo";
pub const DEMO_CREDITS: Credits = Credits(10_000);
const KEY_FILE: &str = "demo-api-key";

pub struct Demo {
    pub account_id: String,
    pub key: Option<String>,
    pub created: bool,
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()
}

pub async fn ensure(db: &Db, data_dir: &Path) -> Result<Demo, AccountError> {
    let key_path = data_dir.join(KEY_FILE);
    if let Some(acc) = accounts::find(db, DEMO_ACCOUNT).await? {
        let key = std::fs::read_to_string(&key_path)
            .ok()
            .map(|k| k.trim().to_string())
            .filter(|k| apikey::is_well_formed(k));
        return Ok(Demo {
            account_id: acc.id,
            key,
            created: false,
        });
    }
    let acc = match accounts::create(db, DEMO_ACCOUNT, Some(DEMO_CREDITS)).await {
        Ok(a) => a,
        // Another node created it at the same moment.
        Err(AccountError::NameTaken(_)) => {
            let a = accounts::get(db, DEMO_ACCOUNT).await?;
            return Ok(Demo {
                account_id: a.id,
                key: None,
                created: false,
            });
        }
        Err(e) => return Err(e),
    };
    let key = accounts::create_key(db, &acc.id, Some("demo"), None).await?;
    if let Err(e) = write_private(&key_path, &key.key) {
        tracing::warn!(error = %e, "could not save the demo key file; the key is printed only now");
    }
    Ok(Demo {
        account_id: acc.id,
        key: Some(key.key),
        created: true,
    })
}
