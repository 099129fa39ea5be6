//! The `kairos` binary: parse the command line, run it, and turn an error into
//! one line on stderr and exit code 1 (a usage error: one line and exit code 2).

use clap::error::ErrorKind;
use clap::Parser;

/// mimalloc instead of glibc's malloc: glibc keeps freed memory resident
/// (its arenas hold the high-water mark), mimalloc returns it. Same code,
/// `kairos-bench scale --jobs 50000`, one after the other (2026-11-27):
/// resident growth 5.3–5.8 → 3.7–4.2 KB per job at rest, 7.7 → 5.5 KB per job
/// after a restart, restart to ready 1.5 → 0.7 s; dispatch CPU and create
/// throughput unchanged within the noise.
///
/// The `system-allocator` feature leaves glibc's malloc in place, for heap
/// profilers that intercept it (heaptrack).
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let cli = kairos::cli::Cli::try_parse().unwrap_or_else(|e| exit_on_usage_error(e));
    if let Err(e) = kairos::cli::run(cli).await {
        let reason = format!("{e:#}").replace('\n', " ");
        eprintln!("error: {reason}");
        std::process::exit(1);
    }
}

/// Ends the process for a command line clap refused. Help and version (also
/// the help clap shows for a missing subcommand) print as clap prints them; a
/// usage error (an unknown flag, a missing argument, a bad value), which clap
/// spreads over several lines, becomes one line like every other error, and
/// keeps clap's exit code 2.
fn exit_on_usage_error(error: clap::Error) -> ! {
    let is_help = matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    );
    if is_help {
        error.exit();
    }
    eprintln!("{}", one_line(&error.render().to_string()));
    std::process::exit(error.exit_code());
}

/// clap's rendering of a usage error on one line: its paragraphs (the error,
/// tips) joined by "; ", then the usage and the pointer to `--help` in
/// parentheses.
fn one_line(rendered: &str) -> String {
    let mut said = Vec::new();
    let mut usage = None;
    for paragraph in rendered.split("\n\n") {
        let text = paragraph.split_whitespace().collect::<Vec<_>>().join(" ");
        if text.is_empty() || text.starts_with("For more information") {
            continue;
        }
        match text.strip_prefix("Usage: ") {
            Some(line) => usage = Some(line.to_string()),
            None => said.push(text),
        }
    }
    let pointer = match usage {
        Some(line) => format!("usage: {line}; try '--help'"),
        None => "try '--help'".to_string(),
    };
    format!("{} ({pointer})", said.join("; "))
}
