//! The API client commands (SDK front end). Owned by the client-side work (issue 5).

use clap::Subcommand;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum ClientCommand {
    /// Show the account's available credit balance
    Credits {
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: ClientCommand) -> ExitCode {
    match cmd {
        ClientCommand::Credits { .. } => {
            eprintln!("kie: not implemented yet");
            ExitCode::FAILURE
        }
    }
}
