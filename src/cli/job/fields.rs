//! The job fields settable by flags, shared by `kairos job create` and
//! `kairos job update`, and how they are written into a job message.
//!
//! [`JobFields::apply`] writes only the flags given and returns the
//! update-mask paths it touched: labels and policy flags are merged into the
//! job's current values, so an update changes only what it names.

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};

use crate::api::convert::{ms_duration, ms_timestamp};
use crate::proto as pb;

/// `--overlap` values.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum OverlapArg {
    Skip,
    BufferOne,
    BufferAll,
    CancelOther,
    AllowAll,
}

/// `--after-condition` values.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum ConditionArg {
    Succeeded,
    Failed,
    Completed,
}

/// `--after-mode` values.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum ModeArg {
    All,
    Any,
}

/// `--catchup` values.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum CatchupArg {
    Latest,
    All,
    None,
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

fn label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not key=value"))
}

/// The job fields settable by flags (create and update).
#[derive(clap::Args, Debug, Default)]
pub struct JobFields {
    /// Handler type (noop, sleep, http, exec).
    #[arg(long = "type")]
    job_type: Option<String>,
    /// Owner service.
    #[arg(long)]
    owner: Option<String>,
    /// Cron expression: 5 fields, 6 with seconds, @daily..., or "@every 30s".
    #[arg(long, conflicts_with_all = ["at", "every"])]
    schedule: Option<String>,
    /// IANA time zone of the cron schedule (create: default UTC; update:
    /// the job keeps its zone unless this is given, and `--tz` alone moves
    /// the stored expression to another zone).
    #[arg(long, conflicts_with_all = ["at", "every"])]
    tz: Option<String>,
    /// One-shot fire time, RFC 3339.
    #[arg(long, conflicts_with = "every")]
    at: Option<DateTime<Utc>>,
    /// Fixed interval, aligned to the epoch (e.g. 30s, 5m).
    #[arg(long, value_parser = duration)]
    every: Option<Duration>,
    /// Offset of --every from the epoch alignment.
    #[arg(long, value_parser = duration, requires = "every")]
    phase: Option<Duration>,
    /// Run once per published event whose topic matches this glob
    /// (`*` any characters, `?` one), e.g. 'orders.*'.
    #[arg(long, conflicts_with_all = ["schedule", "tz", "at", "every", "after"])]
    on_event: Option<String>,
    /// With --on-event: an attribute the event must carry, key=value (repeatable).
    #[arg(long = "match", value_parser = label, requires = "on_event")]
    matches: Vec<(String, String)>,
    /// Run after these jobs (comma-separated ids).
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["schedule", "tz", "at", "every"])]
    after: Vec<String>,
    /// With --after: which ending of an upstream run counts (default succeeded).
    #[arg(long, value_enum, requires = "after")]
    after_condition: Option<ConditionArg>,
    /// With --after: all (one run once every upstream job has a run for the
    /// same nominal time or event; default) or any (one run per upstream run).
    #[arg(long, value_enum, requires = "after")]
    after_mode: Option<ModeArg>,
    /// Handler payload as text.
    #[arg(long, conflicts_with = "payload_file")]
    payload: Option<String>,
    /// Handler payload read from a file.
    #[arg(long)]
    payload_file: Option<std::path::PathBuf>,
    /// Label key=value (repeatable).
    #[arg(long = "label", value_parser = label)]
    labels: Vec<(String, String)>,
    /// Free-form metadata as a JSON object.
    #[arg(long)]
    fields: Option<String>,
    /// Overlap policy.
    #[arg(long, value_enum)]
    overlap: Option<OverlapArg>,
    /// Catch-up policy.
    #[arg(long, value_enum)]
    catchup: Option<CatchupArg>,
    /// Catch-up window (e.g. 1h).
    #[arg(long, value_parser = duration)]
    catchup_window: Option<Duration>,
    /// Most fires caught up with --catchup all.
    #[arg(long)]
    max_catchup: Option<u32>,
    /// Attempts in total including the first (1 to 100).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
    max_attempts: Option<u32>,
    /// Delay before the first retry.
    #[arg(long, value_parser = duration)]
    retry_initial: Option<Duration>,
    /// Longest delay between retries.
    #[arg(long, value_parser = duration)]
    retry_max: Option<Duration>,
    /// Attempt timeout.
    #[arg(long, value_parser = duration)]
    attempt_timeout: Option<Duration>,
    /// Create the job paused (update: true pauses, false resumes).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    paused: Option<bool>,
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

impl JobFields {
    /// Writes the given flags into `job`, returning the update-mask paths touched.
    pub fn apply(&self, job: &mut pb::ScheduledJob) -> anyhow::Result<Vec<String>> {
        let mut mask = Vec::new();
        if let Some(t) = &self.job_type {
            job.r#type = t.clone();
            mask.push("type");
        }
        if let Some(o) = &self.owner {
            job.owner_service = o.clone();
            mask.push("owner_service");
        }
        if let Some(kind) = self.schedule_kind(job.schedule_spec.as_ref())? {
            job.schedule_spec = Some(pb::ScheduleSpec { kind: Some(kind) });
            mask.push("schedule_spec");
        }
        if let Some(text) = &self.payload {
            job.payload = text.clone().into_bytes();
            mask.push("payload");
        }
        if let Some(path) = &self.payload_file {
            job.payload =
                std::fs::read(path).with_context(|| format!("--payload-file {}", path.display()))?;
            mask.push("payload");
        }
        if !self.labels.is_empty() || self.fields.is_some() {
            let metadata = job.metadata.get_or_insert_with(Default::default);
            metadata.labels.extend(self.labels.iter().cloned());
            if let Some(fields) = &self.fields {
                metadata.fields = Some(serde_json::from_str(fields).context("--fields: not a JSON object")?);
            }
            mask.push("metadata");
        }
        if self.apply_policies(job) {
            mask.push("policies");
        }
        if let Some(paused) = self.paused {
            job.paused = paused;
            mask.push("paused");
        }
        Ok(mask.into_iter().map(str::to_string).collect())
    }

    /// The schedule the flags give (`--schedule`, `--at` or `--every`, or
    /// `--tz` alone), if any, given the job's `current` schedule (none on
    /// create). An update changes only what it names: a new expression
    /// keeps the job's time zone, a new zone keeps its expression.
    fn schedule_kind(
        &self,
        current: Option<&pb::ScheduleSpec>,
    ) -> anyhow::Result<Option<pb::schedule_spec::Kind>> {
        let current_cron = match current.and_then(|spec| spec.kind.as_ref()) {
            Some(pb::schedule_spec::Kind::Cron(cron)) => Some(cron),
            _ => None,
        };
        if let Some(expr) = &self.schedule {
            let timezone = self
                .tz
                .clone()
                .or_else(|| current_cron.map(|cron| cron.timezone.clone()))
                .unwrap_or_default();
            return Ok(Some(pb::schedule_spec::Kind::Cron(pb::CronSchedule {
                expr: expr.clone(),
                timezone,
            })));
        }
        if let Some(timezone) = &self.tz {
            let Some(cron) = current_cron else {
                anyhow::bail!(
                    "--tz: a time zone belongs to a cron schedule: give --schedule too{}",
                    if current.is_some() {
                        " (this job's schedule is not a cron expression)"
                    } else {
                        ""
                    }
                );
            };
            return Ok(Some(pb::schedule_spec::Kind::Cron(pb::CronSchedule {
                expr: cron.expr.clone(),
                timezone: timezone.clone(),
            })));
        }
        if let Some(topic) = &self.on_event {
            return Ok(Some(pb::schedule_spec::Kind::OnEvent(pb::EventTrigger {
                topic: topic.clone(),
                r#match: self.matches.iter().cloned().collect(),
            })));
        }
        if !self.after.is_empty() {
            let condition = match self.after_condition {
                None | Some(ConditionArg::Succeeded) => pb::DependencyCondition::Succeeded,
                Some(ConditionArg::Failed) => pb::DependencyCondition::Failed,
                Some(ConditionArg::Completed) => pb::DependencyCondition::Completed,
            };
            let mode = match self.after_mode {
                None | Some(ModeArg::All) => pb::DependencyMode::All,
                Some(ModeArg::Any) => pb::DependencyMode::Any,
            };
            return Ok(Some(pb::schedule_spec::Kind::After(pb::Dependency {
                jobs: self.after.iter().map(|j| j.trim().to_string()).collect(),
                condition: condition as i32,
                mode: mode as i32,
            })));
        }
        if let Some(at) = self.at {
            return Ok(Some(pb::schedule_spec::Kind::At(ms_timestamp(
                at.timestamp_millis(),
            ))));
        }
        Ok(self.every.map(|every| {
            pb::schedule_spec::Kind::Every(pb::IntervalSchedule {
                interval: Some(ms_duration(ms(every))),
                phase: self.phase.map(|p| ms_duration(ms(p))),
            })
        }))
    }

    /// Merges the policy flags into `job.policies`; true if any was given.
    fn apply_policies(&self, job: &mut pb::ScheduledJob) -> bool {
        let p = job.policies.get_or_insert_with(Default::default);
        let before = p.clone();
        if let Some(o) = self.overlap {
            p.overlap = match o {
                OverlapArg::Skip => pb::OverlapPolicy::Skip,
                OverlapArg::BufferOne => pb::OverlapPolicy::BufferOne,
                OverlapArg::BufferAll => pb::OverlapPolicy::BufferAll,
                OverlapArg::CancelOther => pb::OverlapPolicy::CancelOther,
                OverlapArg::AllowAll => pb::OverlapPolicy::AllowAll,
            } as i32;
        }
        if let Some(c) = self.catchup {
            p.catchup = match c {
                CatchupArg::Latest => pb::CatchupPolicy::Latest,
                CatchupArg::All => pb::CatchupPolicy::All,
                CatchupArg::None => pb::CatchupPolicy::None,
            } as i32;
        }
        if let Some(w) = self.catchup_window {
            p.catchup_window = Some(ms_duration(ms(w)));
        }
        if let Some(n) = self.max_catchup {
            p.max_catchup = n;
        }
        self.apply_retry(p);
        if let Some(d) = self.attempt_timeout {
            p.timeouts.get_or_insert_with(Default::default).attempt_timeout = Some(ms_duration(ms(d)));
        }
        *p != before
    }

    /// Merges the retry flags into `policies.retry`, if any was given.
    fn apply_retry(&self, policies: &mut pb::Policies) {
        let retry_given =
            self.max_attempts.is_some() || self.retry_initial.is_some() || self.retry_max.is_some();
        if !retry_given {
            return;
        }
        let r = policies.retry.get_or_insert_with(Default::default);
        if let Some(n) = self.max_attempts {
            r.max_attempts = Some(n);
        }
        if let Some(d) = self.retry_initial {
            r.initial_interval = Some(ms_duration(ms(d)));
        }
        if let Some(d) = self.retry_max {
            r.max_interval = Some(ms_duration(ms(d)));
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// The flags as a command line would give them.
    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        fields: JobFields,
    }

    fn flags(args: &[&str]) -> JobFields {
        Flags::try_parse_from(std::iter::once("kairos").chain(args.iter().copied()))
            .unwrap()
            .fields
    }

    fn cron_job(expr: &str, timezone: &str) -> pb::ScheduledJob {
        let cron = pb::CronSchedule {
            expr: expr.into(),
            timezone: timezone.into(),
        };
        pb::ScheduledJob {
            schedule_spec: Some(pb::ScheduleSpec {
                kind: Some(pb::schedule_spec::Kind::Cron(cron)),
            }),
            ..Default::default()
        }
    }

    fn cron_of(job: &pb::ScheduledJob) -> (String, String) {
        match job.schedule_spec.as_ref().and_then(|s| s.kind.as_ref()) {
            Some(pb::schedule_spec::Kind::Cron(c)) => (c.expr.clone(), c.timezone.clone()),
            other => panic!("not a cron schedule: {other:?}"),
        }
    }

    #[test]
    fn an_update_of_the_expression_keeps_the_jobs_time_zone() {
        let mut job = cron_job("30 2 * * *", "Europe/Berlin");
        let mask = flags(&["--schedule", "0 3 * * *"]).apply(&mut job).unwrap();
        assert_eq!(mask, ["schedule_spec"]);
        assert_eq!(cron_of(&job), ("0 3 * * *".into(), "Europe/Berlin".into()));

        let mut job = cron_job("30 2 * * *", "Europe/Berlin");
        flags(&["--schedule", "0 3 * * *", "--tz", "UTC"])
            .apply(&mut job)
            .unwrap();
        assert_eq!(cron_of(&job), ("0 3 * * *".into(), "UTC".into()));
    }

    #[test]
    fn a_time_zone_alone_moves_the_stored_expression() {
        let mut job = cron_job("30 2 * * *", "Europe/Berlin");
        let mask = flags(&["--tz", "Asia/Tokyo"]).apply(&mut job).unwrap();
        assert_eq!(mask, ["schedule_spec"]);
        assert_eq!(cron_of(&job), ("30 2 * * *".into(), "Asia/Tokyo".into()));
    }

    #[test]
    fn a_time_zone_without_a_cron_schedule_is_refused() {
        // Create: nothing to attach the zone to.
        let e = flags(&["--tz", "Asia/Tokyo"])
            .apply(&mut pb::ScheduledJob::default())
            .unwrap_err();
        assert!(e.to_string().starts_with("--tz: "), "{e}");
        // Update of an interval job.
        let mut job = pb::ScheduledJob::default();
        flags(&["--every", "30s"]).apply(&mut job).unwrap();
        let e = flags(&["--tz", "Asia/Tokyo"]).apply(&mut job).unwrap_err();
        assert!(e.to_string().contains("not a cron expression"), "{e}");
        // A create with both flags still works.
        let mut job = pb::ScheduledJob::default();
        flags(&["--schedule", "0 9 * * 1-5", "--tz", "Europe/Berlin"])
            .apply(&mut job)
            .unwrap();
        assert_eq!(cron_of(&job), ("0 9 * * 1-5".into(), "Europe/Berlin".into()));
    }
}
