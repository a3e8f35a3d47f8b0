//! `kie task create|get|wait`: the Jobs API.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use kie_sdk::download::plan_downloads;
use kie_sdk::{CreateTaskRequest, Downloader, RecordInfo, WaitOptions};
use serde_json::json;

use super::common::{one_line, parse_duration, print_json, ApiArgs};

#[derive(Subcommand)]
pub enum TaskCommand {
    /// Create a task and print its id (with --wait: wait for it like `task wait`)
    Create {
        /// Model name, e.g. demo/image
        #[arg(long)]
        model: String,
        /// Input as JSON, @FILE to read it from a file, or - for standard input
        #[arg(long, value_name = "JSON|@FILE|-")]
        input: String,
        /// URL that receives the completion callback
        #[arg(long, value_name = "URL")]
        callback_url: Option<String>,
        /// Wait until the task finishes
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        wait_args: WaitArgs,
        #[command(flatten)]
        api: ApiArgs,
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Show a task's record
    Get {
        task_id: String,
        #[command(flatten)]
        api: ApiArgs,
        /// Machine-readable output: the record as the API returns it
        #[arg(long)]
        json: bool,
    },
    /// Wait until a task succeeds or fails; exit 0 on success, 1 on failure or timeout
    Wait {
        task_id: String,
        #[command(flatten)]
        wait_args: WaitArgs,
        #[command(flatten)]
        api: ApiArgs,
        /// Machine-readable output: {"task": record, "downloads": [...]}
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct WaitArgs {
    /// Give up waiting after this long
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    timeout: Duration,
    /// First pause between polls (grows by half each poll, up to 15s)
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    interval: Duration,
    /// Download the result files into DIR once the task succeeds
    #[arg(long, value_name = "DIR")]
    download: Option<PathBuf>,
    /// Files downloaded at once
    #[arg(short = 'j', long = "jobs", default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    jobs: u16,
}

pub async fn run(cmd: TaskCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TaskCommand::Create {
            model,
            input,
            callback_url,
            wait,
            wait_args,
            api,
            json,
        } => {
            let input = read_input(&input)?;
            let client = api.client()?;
            let req = CreateTaskRequest {
                model,
                input,
                call_back_url: callback_url,
            };
            let task_id = client.create_task(&req).await?;
            if !wait {
                if json {
                    print_json(&json!({ "taskId": task_id }))?;
                } else {
                    println!("{task_id}");
                }
                return Ok(ExitCode::SUCCESS);
            }
            if !json {
                eprintln!("kie: created task {task_id}; waiting");
            }
            wait_for(&client, &task_id, &wait_args, json).await
        }
        TaskCommand::Get { task_id, api, json } => {
            let rec = api.client()?.record_info(&task_id).await?;
            if json {
                print_json(&rec)?;
            } else {
                print_record(&rec);
            }
            Ok(ExitCode::SUCCESS)
        }
        TaskCommand::Wait {
            task_id,
            wait_args,
            api,
            json,
        } => wait_for(&api.client()?, &task_id, &wait_args, json).await,
    }
}

async fn wait_for(
    client: &kie_sdk::Client,
    task_id: &str,
    w: &WaitArgs,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let opts = WaitOptions {
        timeout: w.timeout,
        initial_interval: w.interval,
        ..WaitOptions::default()
    };
    let rec = client.wait_task(task_id, &opts).await?;
    let success = rec.state == kie_wire::task::STATE_SUCCESS;
    let mut downloads = Vec::new();
    let mut all_arrived = true;
    if let (true, Some(dir)) = (success, &w.download) {
        let items = plan_downloads(&rec.result_urls(), dir);
        let reports = Downloader::new(client.clone())
            .concurrency(usize::from(w.jobs))
            .download_all(&items)
            .await;
        for r in &reports {
            let error = r.result.as_ref().err().map(|e| one_line(&e.to_string()));
            if let Some(e) = &error {
                eprintln!("kie: {}: {e}", r.url);
                all_arrived = false;
            }
            downloads.push(json!({
                "url": r.url, "path": r.path.display().to_string(), "bytes": r.bytes,
                "ok": error.is_none(), "error": error,
            }));
        }
    }
    if json {
        print_json(&json!({ "task": rec, "downloads": downloads }))?;
    } else {
        print_record(&rec);
        for d in downloads.iter().filter(|d| d["ok"] == true) {
            println!("saved {}", d["path"].as_str().unwrap_or_default());
        }
    }
    if !success {
        eprintln!(
            "kie: task {task_id} failed: {} {}",
            rec.fail_code,
            one_line(&rec.fail_msg)
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(if all_arrived {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_record(rec: &RecordInfo) {
    println!("task     {}", rec.task_id);
    println!("model    {}", rec.model);
    println!("state    {}", rec.state);
    println!("credits  {}", rec.consume_credits);
    if !rec.fail_code.is_empty() || !rec.fail_msg.is_empty() {
        println!("failure  {} {}", rec.fail_code, one_line(&rec.fail_msg));
    }
    for u in rec.result_urls() {
        println!("result   {u}");
    }
    if rec.result_urls().is_empty() && !rec.result_json.is_empty() {
        println!("result   {}", rec.result_json);
    }
}

fn read_input(s: &str) -> anyhow::Result<serde_json::Value> {
    let text = if s == "-" {
        std::io::read_to_string(std::io::stdin())
            .context("cannot read the input from standard input")?
    } else if let Some(path) = s.strip_prefix('@') {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?
    } else {
        s.to_string()
    };
    let v: serde_json::Value = serde_json::from_str(&text).context("--input is not valid JSON")?;
    anyhow::ensure!(v.is_object(), "--input must be a JSON object");
    Ok(v)
}
