//! `kie upload`: the File Upload API (streamed multipart, base64, or fetched by URL).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use super::common::{print_json, ApiArgs};

#[derive(Args)]
#[command(after_help = "\
By default FILE is streamed with POST /api/file-stream-upload (any size, flat memory).
--base64 sends it as JSON to /api/file-base64-upload (small files). --url makes SOURCE a \
URL that the server fetches itself (/api/file-url-upload). Uploads are kept 3 days; the same \
name in the same path replaces the earlier file. Prints the file URL.")]
pub struct UploadArgs {
    /// The file to upload (with --url: the URL the server should fetch)
    #[arg(value_name = "FILE|URL")]
    pub source: String,
    /// Folder on the server, e.g. images/user-uploads (no leading or trailing /)
    #[arg(long, value_name = "P")]
    pub path: String,
    /// File name on the server (default: the source's name)
    #[arg(long, value_name = "N")]
    pub name: Option<String>,
    /// Send the file base64-encoded in JSON instead of streaming it
    #[arg(long, conflicts_with = "url")]
    pub base64: bool,
    /// SOURCE is a URL for the server to fetch
    #[arg(long)]
    pub url: bool,
    /// Base URL of the File Upload API when it is not the API's (KIE.AI uses a separate host)
    #[arg(long, env = "KIE_UPLOAD_BASE_URL", value_name = "URL")]
    pub upload_base_url: Option<String>,
    #[command(flatten)]
    pub api: ApiArgs,
    /// Machine-readable output: the upload's data object
    #[arg(long)]
    pub json: bool,
}

pub async fn run(a: UploadArgs) -> anyhow::Result<ExitCode> {
    let mut builder = a.api.builder();
    if let Some(u) = &a.upload_base_url {
        builder = builder.upload_base_url(u);
    }
    let client = builder.build()?;
    let path = a.path.trim_matches('/');
    let uploaded = if a.url {
        client
            .upload_url(&a.source, path, a.name.as_deref())
            .await?
    } else {
        let file = PathBuf::from(&a.source);
        if a.base64 {
            let bytes = tokio::fs::read(&file)
                .await
                .with_context(|| format!("cannot read {}", file.display()))?;
            let name = match &a.name {
                Some(n) => n.clone(),
                None => file
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .context("FILE has no name")?,
            };
            client.upload_base64(&bytes, path, Some(&name)).await?
        } else {
            client.upload_file(&file, path, a.name.as_deref()).await?
        }
    };
    if a.json {
        print_json(&uploaded)?;
    } else {
        println!("{}", uploaded.file_url);
    }
    Ok(ExitCode::SUCCESS)
}
