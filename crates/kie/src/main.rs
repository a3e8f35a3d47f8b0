//! `kie`: the kie-common service (`serve`), its operator tools (`admin`) and the
//! KIE.AI API command line (`credits`, `link`, `download`, `monitor`, `webhook`, `task`,
//! `upload`).

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod admin;
mod client;
mod serve;

/// mimalloc instead of glibc's malloc: per-thread free lists make the many small,
/// short-lived allocations of a request (headers, envelopes, ids) cheaper; measured in
/// BENCHMARKS.md ("Credit endpoint").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// No transparent huge pages for this process: mimalloc asks for them on its arenas
/// (`madvise`), and every thread touching its first page then faults in 2 MiB — idle
/// RSS of `kie serve` was 38 MiB with them, 20 MiB without (bench/startup.sh).
fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl with PR_SET_THP_DISABLE only sets a flag of this process.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

#[derive(Parser)]
#[command(
    name = "kie",
    version,
    about = "KIE.AI Common API: a self-hostable service, its admin tools and an API client",
    long_about = "kie has three faces:\n\n  \
        kie serve      run the service (wire-compatible with api.kie.ai)\n  \
        kie admin ...  operator tools: accounts, API keys, credits, files, flags\n  \
        kie credits | link | download | monitor | webhook | task | upload\n                 \
        the API client, for https://api.kie.ai (default) or any kie serve\n\n\
        Client commands read KIE_API_KEY and KIE_BASE_URL; every command takes --json."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (SQLite + local files by default; PostgreSQL + S3 to scale out)
    Serve(kie_server::ServeArgs),
    /// Operator tools working on the service's database (also while it runs)
    Admin(admin::AdminArgs),
    #[command(flatten)]
    Client(client::ClientCommand),
}

/// At most two glibc malloc arenas. Rust code allocates through mimalloc, but SQLite
/// (C) uses glibc's malloc from every thread that runs a query — each sqlx connection
/// has its own worker thread — and glibc gives each such thread an arena of its own
/// (up to 8 per core), each keeping its freed pages. Under a sustained mixed load that
/// was 2.2 MiB more RSS per 10 minutes spread over a dozen arenas; with two, SQLite's
/// memory is reused (bench/soak.sh, BENCHMARKS.md "Soak").
fn few_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a parameter of glibc's allocator; called first thing in
    // main, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn main() -> ExitCode {
    few_malloc_arenas();
    no_huge_pages();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Admin(args) => admin::run(args),
        Command::Client(cmd) => client::run(cmd),
    }
}
