//! The `kairos` binary: parse the command line, run it, and turn an error into
//! one line on stderr and exit code 1.

use clap::Parser;

#[tokio::main]
async fn main() {
    let cli = kairos::cli::Cli::parse();
    if let Err(e) = kairos::cli::run(cli).await {
        let reason = format!("{e:#}").replace('\n', " ");
        eprintln!("error: {reason}");
        std::process::exit(1);
    }
}
