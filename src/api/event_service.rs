//! `EventService`: publishing events that trigger jobs, watching the
//! lifecycle stream, and managing sinks.
//!
//! - `PublishEvent` validates the event (`scheduler::validate::validate_publish`),
//!   checks `event:publish` on its topic and proposes `PublishEvent` as the
//!   caller's client write; the state machine records the event and creates
//!   the runs it triggers in the same entry (`scheduler::state::integration`).
//!   Retries of the node that routes the write carry its write id, and the
//!   publisher's `idempotency_key` is remembered for 24 h: a publish
//!   retried across a leader failover creates its runs once.
//! - `WatchEvents` streams lifecycle events ([`super::lifecycle`]).
//! - `CreateSink`, `ListSinks`, `DeleteSink` manage sinks (`sink:admin`);
//!   the leader delivers to them (`actors::sinks`).

use std::collections::BTreeMap;

use tonic::{Request, Response, Status};

use super::convert::ms_timestamp;
use super::lifecycle::{check_kinds, watch_events, EventFilter, Watcher};
use super::{to_status, Api};
use crate::proto as pb;
use crate::proto::event_service_server::EventService;
use crate::scheduler::acl::{Permission, Resource};
use crate::scheduler::state::SinkDef;
use crate::scheduler::validate::{validate_publish, validate_sink, MAX_TOPIC_LEN};
use crate::scheduler::{Command, Response as CommandResponse, State};

/// The message form of a sink, with its lag against `state`'s audit head.
pub fn sink_to_pb(state: &State, sink: &SinkDef, last_error: String) -> pb::Sink {
    pb::Sink {
        name: sink.name.clone(),
        url: sink.url.clone(),
        kinds: sink.kinds.clone(),
        job: sink.job.clone(),
        created_at: (sink.created_ms != 0).then(|| ms_timestamp(sink.created_ms)),
        created_by: sink.created_by.clone(),
        delivered_position: sink.delivered,
        lag: state.audit().head().seq.saturating_sub(sink.delivered),
        last_error,
        start_after: 0,
    }
}

fn unexpected(reply: CommandResponse) -> Status {
    Status::internal(format!("unexpected state machine reply {reply:?}"))
}

#[tonic::async_trait]
impl EventService for Api {
    async fn publish_event(
        &self,
        request: Request<pb::PublishEventRequest>,
    ) -> Result<Response<pb::PublishEventResponse>, Status> {
        let caller = self.caller(&request, "PublishEvent").await;
        self.observed(caller.method, async {
            let req = request.into_inner();
            let attributes: BTreeMap<String, String> = req.attributes.into_iter().collect();
            let command = validate_publish(&req.topic, &attributes, &req.payload, &req.idempotency_key)
                .map(|()| Command::PublishEvent {
                    topic: req.topic.clone(),
                    attributes,
                    payload: req.payload,
                    idempotency_key: req.idempotency_key.clone(),
                })
                .map_err(to_status);
            let resource = format!("topic {}", req.topic);
            match self
                .client_write(&caller, &resource, &req.idempotency_key, command)
                .await?
            {
                CommandResponse::Published(published) => Ok(Response::new(pb::PublishEventResponse {
                    event_id: published.event_id,
                    runs_created: published.runs_created,
                    time: Some(ms_timestamp(published.at_ms)),
                    duplicate: published.duplicate,
                })),
                other => Err(unexpected(other)),
            }
        })
        .await
    }

    type WatchEventsStream = tokio_stream::wrappers::ReceiverStream<Result<pb::LifecycleEvent, Status>>;

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let caller = self.caller(&request, "WatchEvents").await;
        self.observed(caller.method, async {
            let req = request.into_inner();
            check_kinds(&req.kinds, "kinds")?;
            for (field, glob) in [("job", &req.job), ("owner", &req.owner)] {
                if glob.len() > MAX_TOPIC_LEN {
                    return Err(Status::invalid_argument(format!(
                        "{field}: at most {MAX_TOPIC_LEN} characters"
                    )));
                }
            }
            {
                let state = self.node.state.read();
                let subject = self.authenticate(&caller, &state, "")?;
                if !subject.holds(Permission::EventWatch) {
                    self.check(
                        &caller,
                        &state,
                        &subject,
                        Permission::EventWatch,
                        &Resource::Cluster,
                    )?;
                }
            }
            let slot = self.watches.take()?;
            let filter = EventFilter {
                kinds: req.kinds,
                job: req.job,
                owner: req.owner,
            };
            let watcher = Watcher {
                credential: caller.credential.clone(),
            };
            let after = (!req.from_now).then_some(req.after);
            Ok(Response::new(watch_events(
                self.node.state.clone(),
                watcher,
                filter,
                after,
                slot,
                self.shutdown.clone(),
            )))
        })
        .await
    }

    async fn create_sink(
        &self,
        request: Request<pb::CreateSinkRequest>,
    ) -> Result<Response<pb::Sink>, Status> {
        let caller = self.caller(&request, "CreateSink").await;
        self.observed(caller.method, async {
            let sink = request.into_inner().sink.unwrap_or_default();
            let resource = format!("sink {}", sink.name);
            let command = validate_sink(&sink.name, &sink.url, &sink.job)
                .map_err(to_status)
                .and_then(|()| check_kinds(&sink.kinds, "sink.kinds"))
                .map(|()| Command::CreateSink {
                    sink: SinkDef {
                        name: sink.name.clone(),
                        url: sink.url.clone(),
                        kinds: sink.kinds.clone(),
                        job: sink.job.clone(),
                        delivered: sink.start_after,
                        ..SinkDef::default()
                    },
                });
            match self.client_write(&caller, &resource, "", command).await? {
                CommandResponse::Sink(stored) => {
                    let state = self.node.state.read();
                    Ok(Response::new(sink_to_pb(&state, &stored, String::new())))
                }
                other => Err(unexpected(other)),
            }
        })
        .await
    }

    async fn list_sinks(
        &self,
        request: Request<pb::ListSinksRequest>,
    ) -> Result<Response<pb::ListSinksResponse>, Status> {
        let caller = self.caller(&request, "ListSinks").await;
        self.observed(caller.method, async {
            self.read(0, |state| {
                let subject = self.authenticate(&caller, state, "")?;
                self.check(
                    &caller,
                    state,
                    &subject,
                    Permission::SinkAdmin,
                    &Resource::Cluster,
                )?;
                let sinks = state
                    .sinks()
                    .map(|sink| sink_to_pb(state, sink, self.sink_error(&sink.name)))
                    .collect();
                Ok(Response::new(pb::ListSinksResponse { sinks }))
            })
            .await
        })
        .await
    }

    async fn delete_sink(
        &self,
        request: Request<pb::DeleteSinkRequest>,
    ) -> Result<Response<pb::DeleteSinkResponse>, Status> {
        let caller = self.caller(&request, "DeleteSink").await;
        self.observed(caller.method, async {
            let name = request.into_inner().name;
            let resource = format!("sink {name}");
            let command = Ok(Command::DeleteSink { name });
            match self.client_write(&caller, &resource, "", command).await? {
                CommandResponse::Deleted => Ok(Response::new(pb::DeleteSinkResponse {})),
                other => Err(unexpected(other)),
            }
        })
        .await
    }
}

impl Api {
    /// The last delivery error of sink `name`, if this node delivers to it
    /// (it leads) and the latest attempt failed.
    fn sink_error(&self, name: &str) -> String {
        self.node.sink_status.last_error(name)
    }
}
