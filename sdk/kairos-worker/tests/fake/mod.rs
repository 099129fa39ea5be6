//! A fake Kairos node: the `WorkerService` served by tonic on 127.0.0.1:0,
//! with the behaviours the tests need switched on by hand, and every call it
//! receives reported on a channel ([`Seen`]) so that tests await calls
//! instead of sleeping.
//!
//! Tasks given with [`FakeNode::assign`] go to the next poll. A poll waits
//! for a task, its `wait`, or a change of the node's switches
//! ([`FakeNode::forget_workers`], [`FakeNode::set_down`]), whichever comes
//! first.
//!
//! Also used by `examples/rust-worker/tests/cli.rs` (through `#[path]`);
//! each test crate uses part of it.
#![allow(dead_code)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kairos_worker::proto;
use kairos_worker::proto::worker_service_server::{WorkerService, WorkerServiceServer};
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status};

/// A call the fake node received (and accepted past its checks).
#[derive(Clone, Debug)]
pub enum Seen {
    Register {
        authorization: Option<String>,
        request: proto::RegisterWorkerRequest,
    },
    Poll {
        authorization: Option<String>,
        worker_id: String,
    },
    Heartbeat {
        task_token: Vec<u8>,
    },
    Complete {
        authorization: Option<String>,
        request: proto::CompleteTaskRequest,
    },
}

/// The node's switches and counters.
#[derive(Default)]
struct State {
    registrations: u64,
    known_workers: HashSet<String>,
    /// Every call answers UNAVAILABLE (pending polls too).
    down: bool,
    /// CompleteTask answers UNAVAILABLE.
    refuse_complete_unavailable: bool,
    /// Heartbeats of these tokens say `cancel_requested`.
    cancelled_tokens: HashSet<Vec<u8>>,
    /// Heartbeats and completions of these tokens answer FAILED_PRECONDITION.
    stale_tokens: HashSet<Vec<u8>>,
    completions: u64,
}

struct Inner {
    node_id: u64,
    /// `Bearer <secret>` required on every call, when set.
    required_authorization: Option<String>,
    heartbeat_interval: Duration,
    state: Mutex<State>,
    tasks_in: mpsc::UnboundedSender<proto::Task>,
    tasks_out: tokio::sync::Mutex<mpsc::UnboundedReceiver<proto::Task>>,
    /// Bumped on every switch change: pending polls re-check.
    changes: watch::Sender<u64>,
    seen: mpsc::UnboundedSender<Seen>,
}

/// A handle on a running fake node.
#[derive(Clone)]
pub struct FakeNode {
    inner: Arc<Inner>,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
}

/// A fake node's settings.
pub struct FakeSettings {
    pub node_id: u64,
    pub token: Option<&'static str>,
    pub heartbeat_interval: Duration,
    /// Serve TLS (https) with this identity, requiring a client certificate.
    pub tls: Option<FakeTls>,
}

/// PEMs of a TLS node: its certificate and key, and the CA its clients'
/// certificates must chain to.
pub struct FakeTls {
    pub cert_pem: String,
    pub key_pem: String,
    pub client_ca_pem: String,
}

impl Default for FakeSettings {
    fn default() -> Self {
        FakeSettings {
            node_id: 1,
            token: None,
            // Long: a poll waits 30 s (the worker's poll_wait), longer than any test.
            heartbeat_interval: Duration::from_secs(60),
            tls: None,
        }
    }
}

impl FakeNode {
    /// Starts a node; its calls are reported on the returned receiver.
    pub async fn start(settings: FakeSettings) -> (FakeNode, mpsc::UnboundedReceiver<Seen>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr: SocketAddr = listener.local_addr().expect("local address");
        let (tasks_in, tasks_out) = mpsc::unbounded_channel();
        let (seen, seen_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            node_id: settings.node_id,
            required_authorization: settings.token.map(|t| format!("Bearer {t}")),
            heartbeat_interval: settings.heartbeat_interval,
            state: Mutex::default(),
            tasks_in,
            tasks_out: tokio::sync::Mutex::new(tasks_out),
            changes: watch::channel(0).0,
            seen,
        });
        let service = WorkerServiceServer::new(Service(inner.clone()));
        let mut server = tonic::transport::Server::builder();
        let scheme = match &settings.tls {
            Some(tls) => {
                let config = tonic::transport::ServerTlsConfig::new()
                    .identity(tonic::transport::Identity::from_pem(&tls.cert_pem, &tls.key_pem))
                    .client_ca_root(tonic::transport::Certificate::from_pem(&tls.client_ca_pem));
                server = server.tls_config(config).expect("server TLS settings");
                "https"
            }
            None => "http",
        };
        tokio::spawn(
            server
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let node = FakeNode {
            inner,
            url: format!("{scheme}://{addr}"),
        };
        (node, seen_rx)
    }

    /// Gives `task` to the next poll.
    pub fn assign(&self, task: proto::Task) {
        self.inner.tasks_in.send(task).expect("the node is running");
    }

    /// Forgets every registered worker: their polls answer NOT_FOUND.
    pub fn forget_workers(&self) {
        self.change(|s| s.known_workers.clear());
    }

    /// Every call answers UNAVAILABLE (`true`), or is served again.
    pub fn set_down(&self, down: bool) {
        self.change(|s| s.down = down);
    }

    /// CompleteTask answers UNAVAILABLE.
    pub fn refuse_completions(&self) {
        self.change(|s| s.refuse_complete_unavailable = true);
    }

    /// Heartbeats of `token` say the run was cancelled.
    pub fn cancel(&self, token: &[u8]) {
        self.change(|s| {
            s.cancelled_tokens.insert(token.to_vec());
        });
    }

    /// `token`'s attempt is no longer current.
    pub fn make_stale(&self, token: &[u8]) {
        self.change(|s| {
            s.stale_tokens.insert(token.to_vec());
        });
    }

    pub fn registrations(&self) -> u64 {
        self.inner.state().registrations
    }

    pub fn completions(&self) -> u64 {
        self.inner.state().completions
    }

    fn change(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.inner.state());
        self.inner.changes.send_modify(|v| *v += 1);
    }
}

impl Inner {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The call's `authorization`, after checking it (and that the node is up).
    fn admit<T>(&self, request: &Request<T>) -> Result<Option<String>, Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if let Some(required) = &self.required_authorization {
            if authorization.as_deref() != Some(required.as_str()) {
                return Err(Status::unauthenticated("a valid token is required"));
            }
        }
        self.check_up()?;
        Ok(authorization)
    }

    /// UNAVAILABLE while the node is down.
    fn check_up(&self) -> Result<(), Status> {
        if self.state().down {
            return Err(Status::unavailable("node down"));
        }
        Ok(())
    }

    fn report(&self, seen: Seen) {
        let _ = self.seen.send(seen);
    }
}

struct Service(Arc<Inner>);

#[tonic::async_trait]
impl WorkerService for Service {
    async fn register_worker(
        &self,
        request: Request<proto::RegisterWorkerRequest>,
    ) -> Result<Response<proto::RegisterWorkerResponse>, Status> {
        let node = &self.0;
        let authorization = node.admit(&request)?;
        let worker_id = {
            let mut state = node.state();
            state.registrations += 1;
            let worker_id = format!("n{}-w{}", node.node_id, state.registrations);
            state.known_workers.insert(worker_id.clone());
            worker_id
        };
        node.report(Seen::Register {
            authorization,
            request: request.into_inner(),
        });
        Ok(Response::new(proto::RegisterWorkerResponse {
            worker_id,
            heartbeat_interval: prost_types::Duration::try_from(node.heartbeat_interval).ok(),
            node_id: node.node_id,
        }))
    }

    async fn poll_task(
        &self,
        request: Request<proto::PollTaskRequest>,
    ) -> Result<Response<proto::PollTaskResponse>, Status> {
        let node = &self.0;
        let mut changes = node.changes.subscribe();
        let authorization = node.admit(&request)?;
        let request = request.into_inner();
        let known = |node: &Inner| node.state().known_workers.contains(&request.worker_id);
        if !known(node) {
            return Err(Status::not_found("unknown worker"));
        }
        node.report(Seen::Poll {
            authorization,
            worker_id: request.worker_id.clone(),
        });
        let wait = request
            .wait
            .and_then(|d| Duration::try_from(d).ok())
            .unwrap_or(Duration::from_secs(60));
        let deadline = tokio::time::sleep(wait);
        tokio::pin!(deadline);
        loop {
            let mut tasks = tokio::select! {
                tasks = node.tasks_out.lock() => tasks,
                _ = changes.changed() => {
                    node.check_up()?;
                    if !known(node) {
                        return Err(Status::not_found("unknown worker"));
                    }
                    continue;
                }
                _ = &mut deadline => return Ok(Response::new(proto::PollTaskResponse { task: None })),
            };
            tokio::select! {
                task = tasks.recv() => return Ok(Response::new(proto::PollTaskResponse { task })),
                _ = changes.changed() => {
                    drop(tasks);
                    node.check_up()?;
                    if !known(node) {
                        return Err(Status::not_found("unknown worker"));
                    }
                }
                _ = &mut deadline => return Ok(Response::new(proto::PollTaskResponse { task: None })),
            }
        }
    }

    async fn heartbeat_task(
        &self,
        request: Request<proto::HeartbeatTaskRequest>,
    ) -> Result<Response<proto::HeartbeatTaskResponse>, Status> {
        let node = &self.0;
        node.admit(&request)?;
        let token = request.into_inner().task_token;
        node.report(Seen::Heartbeat {
            task_token: token.clone(),
        });
        let state = node.state();
        if state.stale_tokens.contains(&token) {
            return Err(Status::failed_precondition("the attempt is no longer current"));
        }
        Ok(Response::new(proto::HeartbeatTaskResponse {
            cancel_requested: state.cancelled_tokens.contains(&token),
        }))
    }

    async fn complete_task(
        &self,
        request: Request<proto::CompleteTaskRequest>,
    ) -> Result<Response<proto::CompleteTaskResponse>, Status> {
        let node = &self.0;
        let authorization = node.admit(&request)?;
        let request = request.into_inner();
        let answer = {
            let mut state = node.state();
            state.completions += 1;
            if state.refuse_complete_unavailable {
                Err(Status::unavailable("not now"))
            } else if state.stale_tokens.contains(&request.task_token) {
                Err(Status::failed_precondition("the attempt is no longer current"))
            } else {
                Ok(Response::new(proto::CompleteTaskResponse {}))
            }
        };
        node.report(Seen::Complete {
            authorization,
            request,
        });
        answer
    }

    async fn list_workers(
        &self,
        _: Request<proto::ListWorkersRequest>,
    ) -> Result<Response<proto::ListWorkersResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn list_job_types(
        &self,
        _: Request<proto::ListJobTypesRequest>,
    ) -> Result<Response<proto::ListJobTypesResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn get_job_type(
        &self,
        _: Request<proto::GetJobTypeRequest>,
    ) -> Result<Response<proto::JobType>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }
}
