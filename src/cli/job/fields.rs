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
    /// IANA time zone of --schedule (default UTC).
    #[arg(long, requires = "schedule")]
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
    /// Attempts in total including the first.
    #[arg(long)]
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
        if let Some(kind) = self.schedule_kind() {
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

    /// The schedule the flags give (`--schedule`, `--at` or `--every`), if any.
    fn schedule_kind(&self) -> Option<pb::schedule_spec::Kind> {
        if let Some(expr) = &self.schedule {
            Some(pb::schedule_spec::Kind::Cron(pb::CronSchedule {
                expr: expr.clone(),
                timezone: self.tz.clone().unwrap_or_default(),
            }))
        } else if let Some(at) = self.at {
            Some(pb::schedule_spec::Kind::At(ms_timestamp(at.timestamp_millis())))
        } else {
            self.every.map(|every| {
                pb::schedule_spec::Kind::Every(pb::IntervalSchedule {
                    interval: Some(ms_duration(ms(every))),
                    phase: self.phase.map(|p| ms_duration(ms(p))),
                })
            })
        }
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
            r.max_attempts = n;
        }
        if let Some(d) = self.retry_initial {
            r.initial_interval = Some(ms_duration(ms(d)));
        }
        if let Some(d) = self.retry_max {
            r.max_interval = Some(ms_duration(ms(d)));
        }
    }
}
