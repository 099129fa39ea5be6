//! `kairos cron next EXPR`: the next fire times of a cron expression, computed
//! by the same [`Schedule`] code the scheduler uses, one RFC 3339 line each.

use chrono::{DateTime, Utc};

use super::output::outln;
use crate::scheduler::{Schedule, ScheduleSpec};

/// `kairos cron`.
#[derive(clap::Args, Debug)]
pub struct CronCommand {
    #[command(subcommand)]
    action: CronAction,
}

#[derive(clap::Subcommand, Debug)]
enum CronAction {
    /// Print the next fire times of EXPR.
    Next {
        /// 5-field, 6-field (seconds first), @daily-style macro, or "@every 30s".
        expr: String,
        /// IANA time zone the fields are read in (default UTC); times print in it.
        #[arg(long)]
        tz: Option<String>,
        /// Start after this instant, RFC 3339 (default: now).
        #[arg(long)]
        after: Option<DateTime<Utc>>,
        /// How many fire times.
        #[arg(long, default_value_t = 5)]
        count: usize,
    },
}

/// The next `count` fire times of `expr` in `tz` after `after`, as RFC 3339
/// strings in that zone's offset.
pub fn next_fires(
    expr: &str,
    tz: Option<&str>,
    after: DateTime<Utc>,
    count: usize,
) -> anyhow::Result<Vec<String>> {
    let timezone = tz.unwrap_or("").to_string();
    let schedule = Schedule::compile(&ScheduleSpec::Cron {
        expr: expr.to_string(),
        timezone: timezone.clone(),
    })?;
    let zone: chrono_tz::Tz = if timezone.is_empty() {
        chrono_tz::UTC
    } else {
        timezone.parse().map_err(anyhow::Error::msg)?
    };
    Ok(schedule
        .upcoming(after, count)
        .into_iter()
        .map(|t| {
            let local = t.with_timezone(&zone);
            if zone == chrono_tz::UTC {
                t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            } else {
                local.to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
            }
        })
        .collect())
}

/// Runs a `kairos cron` command.
pub fn run(cmd: CronCommand) -> anyhow::Result<()> {
    match cmd.action {
        CronAction::Next {
            expr,
            tz,
            after,
            count,
        } => {
            let times = next_fires(&expr, tz.as_deref(), after.unwrap_or_else(Utc::now), count)?;
            if times.is_empty() {
                anyhow::bail!("{expr:?} has no fire time after the given instant");
            }
            for t in times {
                outln!("{t}");
            }
            Ok(())
        }
    }
}
