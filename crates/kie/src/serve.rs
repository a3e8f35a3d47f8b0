//! `kie serve`: start the service.

use std::process::ExitCode;

use kie_server::config::LogFormat;
use kie_server::{Config, ServeArgs, Server};

pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("KIE_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,hyper=warn"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.with_target(false).try_init(),
    };
}

/// Threads of the blocking pool (file reads and writes, DNS look-ups for callbacks and
/// URL uploads), at most. Each blocking operation here takes microseconds; tokio's
/// default (512) let the pool ratchet up to its busiest moment and stay there — idle
/// threads are woken in turn, so none reaches its 10 s keep-alive — each with its own
/// allocator heap: RSS crept up for as long as load lasted. With 32 the pool still
/// grew for two minutes of a soak (38 → 49 threads, RSS with it); 8 is reached within
/// seconds and served more requests per second in the same soak (BENCHMARKS.md,
/// "Soak"). More work than threads waits in the pool's queue.
const BLOCKING_THREADS: usize = 8;

pub fn run(args: ServeArgs) -> ExitCode {
    let config = match Config::from_args(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kie serve: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(config.log_format);
    if let kie_server::config::DatabaseUrl::Sqlite(_) = config.database {
        use kie_server::store::{sqlite_page_cache_slots, sqlite_raw};
        let slots = sqlite_page_cache_slots(config.db_max_connections);
        // SAFETY: nothing has used SQLite yet, and this is the process's only thread
        // (the runtime starts below).
        let reserved = unsafe { sqlite_raw::reserve_page_cache(slots) };
        tracing::debug!(?reserved, "SQLite page caches");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kie serve: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let explicit_public_url = args.public_url.is_some() || config_file_sets_public_url(&args);
    rt.block_on(async move {
        let server = match Server::bind(config, explicit_public_url).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("kie serve: {e}");
                return ExitCode::FAILURE;
            }
        };
        let state = server.state.clone();
        let base = state.config.public_url.as_str().trim_end_matches('/').to_string();
        if state.config.demo {
            match kie_server::demo::ensure(&state.db, &state.config.data_dir).await {
                Ok(d) => {
                    if d.created {
                        println!("demo account 'demo' ({}) created with 100 credits", d.account_id);
                    } else {
                        println!("demo account 'demo' ({}) already exists", d.account_id);
                    }
                    match d.key {
                        Some(k) => {
                            println!("demo API key: {k}");
                            println!("try: curl -s {base}/api/v1/chat/credit -H \"Authorization: Bearer {k}\"");
                            println!(
                                "models ({}: KIE.AI's catalog and demo/*): curl -s {base}/api/v1/models -H \"Authorization: Bearer {k}\"",
                                state.config.models.len()
                            );
                        }
                        None => println!(
                            "demo API key: not available here (create one with: kie admin key create --account demo)"
                        ),
                    }
                }
                Err(e) => {
                    eprintln!("kie serve: cannot create the demo account: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        let addr = server.local_addr();
        println!("listening on http://{addr}");
        tracing::info!(%addr, public_url = %base, backend = state.db.backend(), "kie serve started");
        match server.run(kie_server::app::shutdown_signal()).await {
            Ok(()) => {
                tracing::info!("stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("kie serve: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Whether the TOML file names a public URL (then it is not derived from the port).
fn config_file_sets_public_url(args: &ServeArgs) -> bool {
    args.store
        .config
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| t.parse::<toml::Table>().ok())
        .is_some_and(|t| t.contains_key("public_url"))
}
