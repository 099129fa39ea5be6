//! The integration part of the state: published events and the runs they
//! create, dependencies between jobs, and the sinks that receive the
//! lifecycle stream. A child module of `state`, like the others;
//! deterministic in the command's time.
//!
//! **Events.** `PublishEvent` records the event (kept [`EVENT_TTL_MS`], for
//! its idempotency key and for watchers) and creates one run of every job
//! whose `on_event` trigger matches it, in job id order: nominal time = the
//! entry's time, cause `Event`, the event's id and payload beside the run
//! ([`RunTrigger`]), idempotency key `job_id:event_id`. Overlap and pause
//! apply as to a fire (a paused job gets no run; overlap may skip one). An
//! idempotency key seen in the last 24 h answers with the first publish and
//! creates nothing; with another body it fails `ALREADY_EXISTS`.
//!
//! **Dependencies.** When a run ends, every job that runs `after` its job
//! is looked at ([`State::follow_upstream`]). Mode `Any`: one run per
//! upstream run ending in the condition. Mode `All`: the upstream job is
//! marked done in the *join* of the downstream job for the run's key — its
//! event id, else its nominal time — and the downstream run is created once
//! every upstream job is marked; the join then stays, marked fired, so the
//! same key never creates a second run, and is forgotten after
//! [`JOIN_TTL_MS`]. The downstream run inherits the nominal time and the
//! event, so chains (`a → b → c`) and fan-ins keep one key end to end.
//! Cycles are refused at create and update ([`State::check_no_cycle`]),
//! naming the cycle; deleting a job others depend on needs `force`, and
//! the dependents then stay, blocked ([`State::blocked_reason`]).
//!
//! **Sinks.** Definitions and the position each sink's receiver
//! acknowledged last; the leader delivers (`actors::sinks`) and records
//! progress with `AckSink`.
//!
//! Stored as a trailing part of the image ([`IntegrationImage`], format
//! version 6 on); a run's trigger and a role's topic globs are fields of
//! [`Run`] and [`Role`] in memory but not in their encodings, which earlier
//! formats fixed: [`State::from_image`] puts them back.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Changes, CommandResult, Response, State, Table};
use crate::error::Error;
use crate::scheduler::acl::{glob_match, Role, ROOT_ROLE};
use crate::scheduler::audit::{AuditKind, AuditRecord};
use crate::scheduler::job::{Job, JobId};
use crate::scheduler::run::{RunCause, RunId, RunStatus, RunTrigger};
use crate::scheduler::schedule::{DependencyMode, ScheduleSpec};

/// How long a published event (and its idempotency key) is kept, ms (24 h).
pub const EVENT_TTL_MS: i64 = 24 * 3_600_000;
/// How long the join of an `all` dependency waits for its last upstream
/// run, ms (24 h): a key whose upstream runs do not all end in the
/// condition within it creates nothing.
pub const JOIN_TTL_MS: i64 = 24 * 3_600_000;

/// A published event, as kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// `ev-<n>`: unique in the cluster, increasing.
    pub id: String,
    /// Its topic.
    pub topic: String,
    /// Its attributes.
    pub attributes: BTreeMap<String, String>,
    /// When it was committed, Unix ms (the nominal time of its runs).
    pub at_ms: i64,
    /// Runs it created.
    pub runs_created: u32,
    /// The publisher's idempotency key (empty: none).
    pub idempotency_key: String,
    /// SHA-256 of topic, attributes and payload: a repeat of the key with
    /// another body is refused.
    pub body_hash: [u8; 32],
    /// Who published it.
    pub principal: String,
}

/// What `PublishEvent` answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// The event's id.
    pub event_id: String,
    /// Runs it created.
    pub runs_created: u32,
    /// Its commit time, Unix ms.
    pub at_ms: i64,
    /// An earlier publish with the same idempotency key answered this.
    pub duplicate: bool,
}

/// The join of an `all` dependency for one key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Join {
    /// When it was opened, Unix ms (for expiry).
    pub at_ms: i64,
    /// Upstream jobs whose run for the key ended in the condition.
    pub done: BTreeSet<JobId>,
    /// The downstream run was created.
    pub fired: bool,
}

/// An outbound webhook receiving lifecycle events.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkDef {
    /// Unique name.
    pub name: String,
    /// Where events are POSTed.
    pub url: String,
    /// Lifecycle event kinds (their proto numbers); empty: all.
    pub kinds: Vec<i32>,
    /// Job id glob; empty: every event.
    pub job: String,
    /// When it was created, Unix ms.
    pub created_ms: i64,
    /// Who created it.
    pub created_by: String,
    /// The position the receiver acknowledged last.
    pub delivered: u64,
}

/// The integration part of a state image (format version 6 on).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct IntegrationImage {
    /// Published events of the last [`EVENT_TTL_MS`], by id.
    pub(super) events: Table<String, EventRecord>,
    /// Event id by idempotency key.
    pub(super) event_keys: Table<String, String>,
    /// The number of the next event.
    pub(super) next_event: u64,
    /// The trigger of each kept run that has one, by run.
    pub(super) run_triggers: Table<RunId, Arc<RunTrigger>>,
    /// Joins of `all` dependencies, by (downstream job, key).
    pub(super) joins: Table<(JobId, String), Join>,
    /// Sinks by name.
    pub(super) sinks: Table<String, SinkDef>,
    /// Topic globs of each role that has some, by role name.
    pub(super) role_topics: Table<String, Vec<String>>,
}

/// Indexes derived from the jobs and the integration part.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct IntegrationIndex {
    /// Jobs with an `on_event` trigger.
    event_jobs: BTreeSet<JobId>,
    /// Downstream jobs of each upstream job id (which need not exist).
    dependents: BTreeMap<JobId, BTreeSet<JobId>>,
    /// `(at_ms, id)` of every kept event, oldest first.
    event_expiry: BTreeSet<(i64, String)>,
    /// `(at_ms, key)` of every join, oldest first.
    join_expiry: BTreeSet<(i64, (JobId, String))>,
}

/// The body hash of a publish.
pub fn event_body_hash(topic: &str, attributes: &BTreeMap<String, String>, payload: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update((topic.len() as u64).to_le_bytes());
    hasher.update(topic.as_bytes());
    for (key, value) in attributes {
        hasher.update((key.len() as u64).to_le_bytes());
        hasher.update(key.as_bytes());
        hasher.update((value.len() as u64).to_le_bytes());
        hasher.update(value.as_bytes());
    }
    hasher.update(payload);
    hasher.finalize().into()
}

/// True when an `on_event` trigger matches an event.
pub fn trigger_matches(
    topic_glob: &str,
    matches: &BTreeMap<String, String>,
    topic: &str,
    attributes: &BTreeMap<String, String>,
) -> bool {
    glob_match(topic_glob, topic) && matches.iter().all(|(k, v)| attributes.get(k) == Some(v))
}

impl State {
    /// A kept published event.
    pub fn event(&self, id: &str) -> Option<&EventRecord> {
        self.integration.events.get(id)
    }

    /// Every sink, by name.
    pub fn sinks(&self) -> impl Iterator<Item = &SinkDef> {
        self.integration.sinks.values()
    }

    /// A sink by name.
    pub fn sink(&self, name: &str) -> Option<&SinkDef> {
        self.integration.sinks.get(name)
    }

    /// The jobs that run after `job_id`, in id order.
    pub fn dependents_of(&self, job_id: &str) -> Vec<JobId> {
        self.index
            .dependents
            .get(job_id)
            .map(|d| d.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Why `job` cannot run now, if something blocks it: an upstream job
    /// that does not exist (deleted with `force`).
    pub fn blocked_reason(&self, job: &Job) -> Option<String> {
        let missing: Vec<&str> = job
            .spec
            .schedule
            .upstream_jobs()
            .iter()
            .filter(|up| !self.jobs.contains_key(up.as_str()))
            .map(String::as_str)
            .collect();
        (!missing.is_empty()).then(|| {
            let what = if missing.len() == 1 { "job" } else { "jobs" };
            format!(
                "blocked: upstream {what} {} do{} not exist (deleted with --force); it runs again once \
                 {} exist{}",
                missing.join(", "),
                if missing.len() == 1 { "es" } else { "" },
                if missing.len() == 1 { "it" } else { "they" },
                if missing.len() == 1 { "s" } else { "" },
            )
        })
    }

    /// Refuses an `after` dependency of job `id` on `upstream` that would
    /// close a cycle, naming it (`a → b → c → a`: each runs after the one
    /// before it).
    pub(super) fn check_no_cycle(&self, id: &str, schedule: &ScheduleSpec) -> Result<(), Error> {
        // Follow the upstream edges from `id`'s new upstream jobs; reaching
        // `id` again is a cycle. Depth-first with the path kept.
        fn walk<'a>(
            state: &'a State,
            target: &str,
            node: &'a str,
            path: &mut Vec<&'a str>,
            seen: &mut BTreeSet<&'a str>,
        ) -> bool {
            if node == target {
                return true;
            }
            if !seen.insert(node) {
                return false;
            }
            let Some(job) = state.jobs.get(node) else {
                return false;
            };
            for up in job.spec.schedule.upstream_jobs() {
                path.push(up);
                if walk(state, target, up, path, seen) {
                    return true;
                }
                path.pop();
            }
            false
        }
        for up in schedule.upstream_jobs() {
            let mut path = vec![up.as_str()];
            let mut seen = BTreeSet::new();
            if walk(self, id, up, &mut path, &mut seen) {
                // `path` runs upstream from `id`'s upstream to `id`: print it
                // in the direction runs flow.
                let mut flow: Vec<&str> = path.into_iter().rev().collect();
                flow.push(id);
                return Err(Error::InvalidArgument(format!(
                    "schedule_spec.after: dependency cycle {}",
                    flow.join(" → ")
                )));
            }
        }
        Ok(())
    }

    /// Refuses an `after` dependency of job `id` on jobs that do not exist
    /// or that would close a cycle.
    pub(super) fn check_dependency(&self, id: &str, schedule: &ScheduleSpec) -> Result<(), Error> {
        let missing: Vec<&str> = schedule
            .upstream_jobs()
            .iter()
            .filter(|up| up.as_str() != id && !self.jobs.contains_key(up.as_str()))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "schedule_spec.after: upstream job {} does not exist",
                missing.join(", ")
            )));
        }
        self.check_no_cycle(id, schedule)
    }

    /// Refuses to delete `id` while other jobs run after it, unless `force`.
    pub(super) fn check_no_dependents(&self, id: &str) -> Result<(), Error> {
        let dependents = self.dependents_of(id);
        let existing: Vec<&str> = dependents
            .iter()
            .filter(|d| self.jobs.contains_key(d.as_str()))
            .map(String::as_str)
            .collect();
        if existing.is_empty() || !self.jobs.contains_key(id) {
            return Ok(());
        }
        Err(Error::FailedPrecondition(format!(
            "job {id:?} is upstream of {}: delete it with force (they stay, blocked, until a job {id:?} \
             exists again) or change their dependencies first",
            existing.join(", ")
        )))
    }

    /// Keeps the derived trigger indexes right when a job changes from
    /// `old` to `new` (either may be absent).
    pub(super) fn index_triggers(&mut self, old: Option<&Job>, new: Option<&Job>) {
        if let Some(old) = old {
            self.index.event_jobs.remove(&old.id);
            for up in old.spec.schedule.upstream_jobs() {
                if let Some(set) = self.index.dependents.get_mut(up) {
                    set.remove(&old.id);
                    if set.is_empty() {
                        self.index.dependents.remove(up);
                    }
                }
            }
        }
        if let Some(new) = new {
            if matches!(new.spec.schedule, ScheduleSpec::OnEvent { .. }) {
                self.index.event_jobs.insert(new.id.clone());
            }
            for up in new.spec.schedule.upstream_jobs() {
                self.index
                    .dependents
                    .entry(up.clone())
                    .or_default()
                    .insert(new.id.clone());
            }
        }
    }

    /// `PublishEvent`: records the event and creates the runs it triggers.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn publish_event(
        &mut self,
        topic: &str,
        attributes: &BTreeMap<String, String>,
        payload: &[u8],
        idempotency_key: &str,
        at_ms: i64,
        principal: &str,
        changes: &mut Changes,
    ) -> CommandResult {
        self.expire_events(at_ms);
        let body_hash = event_body_hash(topic, attributes, payload);
        if !idempotency_key.is_empty() {
            if let Some(first) = self
                .integration
                .event_keys
                .get(idempotency_key)
                .and_then(|id| self.integration.events.get(id))
            {
                if first.body_hash != body_hash {
                    return Err(Error::AlreadyExists(format!(
                        "idempotency key {idempotency_key:?} was used for another event ({}, topic {:?}) \
                         in the last 24 h",
                        first.id, first.topic
                    )));
                }
                return Ok(Response::Published(Published {
                    event_id: first.id.clone(),
                    runs_created: first.runs_created,
                    at_ms: first.at_ms,
                    duplicate: true,
                }));
            }
        }
        self.integration.next_event += 1;
        let event_id = format!("ev-{}", self.integration.next_event);
        let matching: Vec<JobId> = self
            .index
            .event_jobs
            .iter()
            .filter(|id| {
                self.jobs.get(id.as_str()).is_some_and(|job| {
                    !job.spec.paused
                        && matches!(&job.spec.schedule, ScheduleSpec::OnEvent { topic: glob, matches }
                            if trigger_matches(glob, matches, topic, attributes))
                })
            })
            .cloned()
            .collect();
        let payload = payload.to_vec();
        let mut runs_created = 0;
        for job_id in matching {
            let trigger = RunTrigger {
                event_id: event_id.clone(),
                event_payload: payload.clone(),
                upstream_run: None,
                key: event_id.clone(),
            };
            let run_id = self.create_run_with(&job_id, at_ms, RunCause::Event, Some(trigger), at_ms, changes);
            if self
                .runs
                .get(&run_id)
                .is_some_and(|r| r.status != RunStatus::Skipped)
            {
                runs_created += 1;
            }
            self.touch_last_fired(&job_id, at_ms);
        }
        let record = EventRecord {
            id: event_id.clone(),
            topic: topic.to_string(),
            attributes: attributes.clone(),
            at_ms,
            runs_created,
            idempotency_key: idempotency_key.to_string(),
            body_hash,
            principal: principal.to_string(),
        };
        if !idempotency_key.is_empty() {
            self.integration
                .event_keys
                .insert(idempotency_key.to_string(), event_id.clone());
        }
        self.index.event_expiry.insert((at_ms, event_id.clone()));
        self.integration.events.insert(event_id.clone(), record);
        self.audit_append(
            AuditRecord {
                kind: Some(AuditKind::Event),
                principal: principal.to_string(),
                method: "event.published".into(),
                resource: event_id.clone(),
                message: topic.to_string(),
                ..AuditRecord::default()
            },
            at_ms,
        );
        Ok(Response::Published(Published {
            event_id,
            runs_created,
            at_ms,
            duplicate: false,
        }))
    }

    /// Records `at_ms` as the job's latest run time (shown as `last_run`),
    /// without changing its version.
    fn touch_last_fired(&mut self, job_id: &str, at_ms: i64) {
        if let Some(job) = self.jobs.get(job_id) {
            if job.last_fired_ms.is_some_and(|t| t >= at_ms) {
                return;
            }
            let mut job = Job::clone(job);
            job.last_fired_ms = Some(at_ms);
            self.jobs.insert(job.id.clone(), Arc::new(job));
        }
    }

    /// Forgets events and joins older than their time to live.
    fn expire_events(&mut self, at_ms: i64) {
        let cutoff = at_ms.saturating_sub(EVENT_TTL_MS);
        while self.index.event_expiry.first().is_some_and(|(t, _)| *t < cutoff) {
            let (_, id) = self.index.event_expiry.pop_first().expect("first exists");
            if let Some(event) = self.integration.events.remove(&id) {
                if !event.idempotency_key.is_empty() {
                    self.integration.event_keys.remove(&event.idempotency_key);
                }
            }
        }
        let cutoff = at_ms.saturating_sub(JOIN_TTL_MS);
        while self.index.join_expiry.first().is_some_and(|(t, _)| *t < cutoff) {
            let (_, key) = self.index.join_expiry.pop_first().expect("first exists");
            self.integration.joins.remove(&key);
        }
    }

    /// Creates the runs of jobs that run after the runs that just ended
    /// (the terminal transitions in `changes`), and of theirs in turn when
    /// one ends at once (skipped). Called after each request's changes.
    pub(super) fn follow_upstream(&mut self, at_ms: i64, changes: &mut Changes) {
        if self.index.dependents.is_empty() {
            return;
        }
        let mut examined = 0;
        while examined < changes.transitions.len() {
            let transition = changes.transitions[examined].clone();
            examined += 1;
            if !transition.to.is_terminal() || !self.index.dependents.contains_key(&transition.job_id) {
                continue;
            }
            // The run may already be gone (history retention): the
            // transition carries what its dependents inherit.
            let trigger = transition.trigger.as_deref();
            let upstream = UpstreamRun {
                run_id: transition.run_id,
                nominal_ms: transition.nominal_ms,
                event_id: trigger.map(|t| t.event_id.clone()).unwrap_or_default(),
                event_payload: trigger.map(|t| t.event_payload.clone()).unwrap_or_default(),
            };
            for downstream in self.dependents_of(&transition.job_id) {
                self.follow_one(
                    &downstream,
                    &transition.job_id,
                    transition.to,
                    &upstream,
                    at_ms,
                    changes,
                );
            }
        }
    }

    /// One downstream job's answer to an upstream run ending in `status`.
    fn follow_one(
        &mut self,
        downstream: &str,
        upstream_job: &str,
        status: RunStatus,
        upstream: &UpstreamRun,
        at_ms: i64,
        changes: &mut Changes,
    ) {
        let Some(job) = self.jobs.get(downstream).cloned() else {
            return;
        };
        let ScheduleSpec::After {
            jobs,
            condition,
            mode,
        } = &job.spec.schedule
        else {
            return;
        };
        if job.spec.paused || !condition.is_met_by(status) {
            return;
        }
        let join_key = if upstream.event_id.is_empty() {
            format!("t{}", upstream.nominal_ms)
        } else {
            upstream.event_id.clone()
        };
        let key = match mode {
            DependencyMode::Any => format!("upstream-{}", upstream.run_id),
            DependencyMode::All if upstream.event_id.is_empty() => {
                crate::scheduler::run::nominal_key(upstream.nominal_ms)
            }
            DependencyMode::All => upstream.event_id.clone(),
        };
        if *mode == DependencyMode::All {
            let upstream_jobs: BTreeSet<&str> = jobs.iter().map(String::as_str).collect();
            let join_id = (downstream.to_string(), join_key);
            let mut join = self.integration.joins.get(&join_id).cloned().unwrap_or_else(|| {
                self.index.join_expiry.insert((at_ms, join_id.clone()));
                Join {
                    at_ms,
                    ..Join::default()
                }
            });
            join.done.insert(upstream_job.to_string());
            let complete = !join.fired && upstream_jobs.iter().all(|up| join.done.contains(*up));
            join.fired |= complete;
            self.integration.joins.insert(join_id, join);
            if !complete {
                return;
            }
        }
        let trigger = RunTrigger {
            event_id: upstream.event_id.clone(),
            event_payload: upstream.event_payload.clone(),
            upstream_run: Some(upstream.run_id),
            key,
        };
        self.create_run_with(
            downstream,
            upstream.nominal_ms,
            RunCause::Dependency,
            Some(trigger),
            at_ms,
            changes,
        );
        self.touch_last_fired(downstream, upstream.nominal_ms);
    }

    /// Records `trigger` as run `run_id`'s (or forgets it, with `None`).
    pub(super) fn set_run_trigger(&mut self, run_id: RunId, trigger: Option<Arc<RunTrigger>>) {
        match trigger {
            Some(trigger) => {
                self.integration.run_triggers.insert(run_id, trigger);
            }
            None => {
                self.integration.run_triggers.remove(&run_id);
            }
        }
    }

    /// `CreateSink`.
    pub(super) fn create_sink(&mut self, sink: &SinkDef, at_ms: i64, principal: &str) -> CommandResult {
        if self.integration.sinks.contains_key(&sink.name) {
            return Err(Error::AlreadyExists(format!(
                "sink {:?} already exists",
                sink.name
            )));
        }
        let sink = SinkDef {
            created_ms: at_ms,
            created_by: principal.to_string(),
            delivered: if sink.delivered == 0 {
                self.audit.head().seq
            } else {
                sink.delivered
            },
            ..sink.clone()
        };
        self.integration.sinks.insert(sink.name.clone(), sink.clone());
        Ok(Response::Sink(Box::new(sink)))
    }

    /// `DeleteSink`.
    pub(super) fn delete_sink(&mut self, name: &str) -> CommandResult {
        match self.integration.sinks.remove(name) {
            Some(_) => Ok(Response::Deleted),
            None => Err(Error::NotFound(format!("sink {name:?} not found"))),
        }
    }

    /// `AckSink`: the receiver acknowledged everything up to `position`
    /// (positions only move forward).
    pub(super) fn ack_sink(&mut self, name: &str, position: u64) -> CommandResult {
        let Some(sink) = self.integration.sinks.get_mut(name) else {
            return Err(Error::NotFound(format!("sink {name:?} not found")));
        };
        sink.delivered = sink.delivered.max(position);
        Ok(Response::Sink(Box::new(sink.clone())))
    }

    /// `CreateRoleWithScopes`: `CreateRole` with type and topic globs.
    pub(super) fn create_role_with_scopes(
        &mut self,
        role: &Role,
        types: &[String],
        topics: &[String],
        at_ms: i64,
        principal: &str,
    ) -> CommandResult {
        let result = self.create_role_scoped(role, types, at_ms, principal)?;
        if !topics.is_empty() && role.name != ROOT_ROLE {
            self.integration
                .role_topics
                .insert(role.name.clone(), topics.to_vec());
            if let Some(stored) = self.acl.roles.get_mut(&role.name) {
                stored.topics = topics.to_vec();
            }
        }
        match result {
            Response::Role(mut role) => {
                role.topics = topics.to_vec();
                Ok(Response::Role(role))
            }
            other => Ok(other),
        }
    }

    /// Forgets the topic globs of a deleted role.
    pub(super) fn forget_role_topics(&mut self, name: &str) {
        self.integration.role_topics.remove(name);
    }

    /// Puts the fields kept apart back on runs and roles, and rebuilds the
    /// derived indexes of this part (after an image is read).
    pub(super) fn restore_integration(&mut self) {
        for (run_id, trigger) in self.integration.run_triggers.clone().iter() {
            if let Some(run) = self.runs.get_mut(run_id) {
                run.trigger = Some(trigger.clone());
            }
        }
        for (name, topics) in self.integration.role_topics.clone().iter() {
            if let Some(role) = self.acl.roles.get_mut(name) {
                role.topics = topics.clone();
            }
        }
        self.index = IntegrationIndex::default();
        for job in self.jobs.values().cloned().collect::<Vec<_>>() {
            self.index_triggers(None, Some(&job));
        }
        self.index.event_expiry = self
            .integration
            .events
            .values()
            .map(|e| (e.at_ms, e.id.clone()))
            .collect();
        self.index.join_expiry = self
            .integration
            .joins
            .iter()
            .map(|(key, join)| (join.at_ms, key.clone()))
            .collect();
    }
}

/// What a downstream run inherits from the upstream run that ended.
struct UpstreamRun {
    run_id: RunId,
    nominal_ms: i64,
    event_id: String,
    event_payload: Vec<u8>,
}
