//! `kie download`: batch downloads through the SDK's `Downloader`.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use kie_sdk::download::plan_downloads;
use kie_sdk::{DownloadReport, DownloadStatus, Downloader};
use serde::Serialize;

use super::common::{one_line, print_json, ApiArgs};
use super::progress::Bars;

#[derive(Args)]
#[command(after_help = "\
Each file is written to NAME.part and renamed when complete; an interrupted run is \
resumed with Range/If-Range, a link that answers 403 is replaced by a fresh one (needs \
the API key), and files already present with the server's size are skipped. Blank \
lines, #-comments and duplicate URLs are ignored. Exit status 0 only if every file \
arrived.")]
pub struct DownloadArgs {
    /// File URLs or temporary links
    #[arg(value_name = "URL")]
    pub urls: Vec<String>,
    /// Read URLs from FILE, one per line ("-" reads standard input)
    #[arg(short = 'i', long = "input", value_name = "FILE")]
    pub input: Option<String>,
    /// Directory to write into (created if missing)
    #[arg(
        short = 'o',
        long = "output-dir",
        value_name = "DIR",
        default_value = "."
    )]
    pub output_dir: PathBuf,
    /// Files transferred at once
    #[arg(short = 'j', long = "jobs", value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: u16,
    /// Do not fsync each file before renaming it into place (faster on a slow disk; a
    /// power loss may then leave a final name with missing bytes, as with curl)
    #[arg(long)]
    pub no_fsync: bool,
    #[command(flatten)]
    pub api: ApiArgs,
    /// Machine-readable output: an array of {"url","path","bytes","ok","error"}
    #[arg(long)]
    pub json: bool,
}

/// One entry of the `--json` array.
#[derive(Serialize)]
struct FileResult {
    url: String,
    path: String,
    bytes: u64,
    ok: bool,
    error: Option<String>,
}

pub async fn run(a: DownloadArgs) -> anyhow::Result<ExitCode> {
    let mut urls = a.urls.clone();
    if let Some(input) = &a.input {
        urls.extend(read_list(input)?);
    }
    let urls: Vec<String> = urls
        .into_iter()
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty() && !u.starts_with('#'))
        .collect();
    let items = plan_downloads(&urls, &a.output_dir);
    if items.is_empty() {
        anyhow::bail!("no URLs to download (give them as arguments or with -i FILE)");
    }
    let client = a.api.client()?;
    let mut downloader = Downloader::new(client)
        .concurrency(usize::from(a.jobs))
        .fsync(!a.no_fsync);
    let bars = Bars::for_terminal(items.len());
    if let Some(b) = &bars {
        let b = b.clone();
        downloader = downloader.on_progress(move |p| b.update(p));
    }
    let reports = downloader.download_all(&items).await;
    if let Some(b) = &bars {
        b.finish();
    }

    let failed = reports.iter().filter(|r| !r.is_ok()).count();
    if a.json {
        let out: Vec<FileResult> = reports.iter().map(file_result).collect();
        print_json(&out)?;
    } else {
        for r in &reports {
            if let Ok(status) = &r.result {
                let how = match status {
                    DownloadStatus::Downloaded => "downloaded",
                    DownloadStatus::Resumed => "resumed",
                    DownloadStatus::AlreadyComplete => "already complete",
                };
                println!("{}\t{} bytes\t{how}", r.path.display(), r.bytes);
            }
        }
    }
    for r in reports.iter().filter(|r| !r.is_ok()) {
        eprintln!("kie: {}: {}", r.url, error_text(r));
    }
    if failed > 0 {
        eprintln!("kie: {failed} of {} files failed", reports.len());
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn error_text(r: &DownloadReport) -> String {
    match &r.result {
        Ok(_) => String::new(),
        Err(e) => one_line(&e.to_string()),
    }
}

fn file_result(r: &DownloadReport) -> FileResult {
    FileResult {
        url: r.url.clone(),
        path: r.path.display().to_string(),
        bytes: r.bytes,
        ok: r.is_ok(),
        error: r.result.as_ref().err().map(|e| one_line(&e.to_string())),
    }
}

fn read_list(input: &str) -> anyhow::Result<Vec<String>> {
    let lines: Result<Vec<String>, _> = if input == "-" {
        std::io::stdin().lock().lines().collect()
    } else {
        let f = std::fs::File::open(input).with_context(|| format!("cannot open {input}"))?;
        std::io::BufReader::new(f).lines().collect()
    };
    lines.with_context(|| format!("cannot read {input}"))
}
