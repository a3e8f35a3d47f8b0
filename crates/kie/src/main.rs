//! `kie`: the kie-common service (`serve`), its operator tools (`admin`) and the
//! KIE.AI API command line (`credits`, `link`, `download`, `monitor`, `webhook`, `task`,
//! `upload`).

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod admin;
mod client;
mod serve;

/// jemalloc for every allocation of the process: Rust's, and on Linux SQLite's too
/// (C; tikv-jemallocator's `unprefixed_malloc_on_supported_platforms` makes jemalloc
/// the process's `malloc`, so no glibc arenas keep SQLite's freed pages). Its
/// per-thread caches keep a request's many small, short-lived allocations cheap
/// (credit 20.6k instructions per request; mimalloc 20.9k, glibc's malloc ~18 % more),
/// and it gives unused pages back on a timer: under the same sustained load it ended
/// 2 MiB lower than mimalloc and rose less (BENCHMARKS.md "Soak", bench/soak.sh,
/// bench/callgrind.sh).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read when it starts: a background thread returns dirty pages
/// unused for one second (`dirty_decay_ms`; 10 s by default, and without the thread
/// only when some thread happens to allocate). The `MALLOC_CONF` environment variable
/// overrides them on Linux; where tikv-jemalloc-sys prefixes jemalloc's symbols (as on
/// macOS) this one is not read. The symbol is jemalloc's `malloc_conf`, declared by
/// tikv-jemalloc-sys as `Option<&'static c_char>`; jemalloc's own definition is weak.
#[export_name = "malloc_conf"]
static MALLOC_CONF: Option<&std::ffi::c_char> =
    // SAFETY: the pointer is that of a 'static, NUL-terminated literal.
    Some(unsafe { &*c"background_thread:true,dirty_decay_ms:1000".as_ptr() });

/// No transparent huge pages for this process: on a kernel whose THP mode is
/// `always`, every allocator extent a thread touches would be backed by 2 MiB pages
/// (idle RSS of `kie serve` was 38 MiB with them, 20 MiB without, when the allocator
/// asked for them; bench/startup.sh).
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

fn main() -> ExitCode {
    no_huge_pages();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Admin(args) => admin::run(args),
        Command::Client(cmd) => client::run(cmd),
    }
}
