//! What the scenarios share: latency histograms, the clusters they start
//! (with `KAIROS_BENCH_WORKERS` / `KAIROS_BENCH_AGENT_ARGS`), channels, the
//! job a `create` writes, and the nodes' CPU and memory from `/proc`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use kairos::proto as pb;
use kairos::proto::job_service_client::JobServiceClient;
use kairos_testkit::{Authed, Bearer, TestCluster};

/// An empty histogram of latencies in microseconds, 3 significant digits.
pub(crate) fn latency_histogram() -> Histogram<u64> {
    Histogram::new(3).expect("3 significant digits")
}

/// The latency at quantile `q` of `latencies` (µs), in ms.
pub(crate) fn quantile_ms(latencies: &Histogram<u64>, q: f64) -> f64 {
    latencies.value_at_quantile(q) as f64 / 1000.0
}

/// A progress line, overwritten in place.
pub(crate) fn progress(line: String) {
    eprint!("\r{line:<100}");
}

/// A lazily connecting channel to `addr` whose calls carry the token `secret`.
pub(crate) async fn channel(addr: &str, secret: &str) -> Authed {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .tcp_nodelay(true)
        .connect_lazy();
    Authed::new(channel, Bearer::new(secret))
}

/// Extra agent flags for the clusters this tool starts: `KAIROS_BENCH_WORKERS`
/// sets `--workers` (default: the agent's own, 4 × cores), and
/// `KAIROS_BENCH_AGENT_ARGS` adds any flags (split on spaces), e.g.
/// `--election-timeout-ms 250 --heartbeat-ms 50`. A worker slot is held from
/// the `StartAttempts` commit to the `FinishAttempts` commit, so with `noop`
/// runs the slots, not the scheduler, bound the run rate unless there are
/// many of them.
pub(crate) fn agent_args() -> Vec<&'static str> {
    let mut args = Vec::new();
    if let Ok(n) = std::env::var("KAIROS_BENCH_WORKERS") {
        args.push("--workers".to_string());
        args.push(n);
    }
    if let Ok(extra) = std::env::var("KAIROS_BENCH_AGENT_ARGS") {
        args.extend(extra.split_whitespace().map(str::to_string));
    }
    // The cluster lives as long as the tool: leaking a few flags is fine.
    args.into_iter()
        .map(|a| &*Box::leak(a.into_boxed_str()))
        .collect()
}

/// A three-node cluster of this tool ([`agent_args`]), ready, its ACL
/// bootstrapped (the root token is `cluster.token()`), and its leader.
pub(crate) async fn started_cluster() -> (TestCluster, u64) {
    started_cluster_with(&[]).await
}

/// [`started_cluster`] with more agent flags.
pub(crate) async fn started_cluster_with(extra: &[&str]) -> (TestCluster, u64) {
    let mut args = agent_args();
    args.extend_from_slice(extra);
    let cluster = TestCluster::start(3, &args);
    cluster.wait_ready(Duration::from_secs(60)).await;
    let leader = cluster.wait_leader(Duration::from_secs(60)).await;
    (cluster, leader)
}

/// One write of the `create` scenario: a job that fires once a year, so that
/// none fires while it is measured.
pub(crate) async fn create_job(
    jobs: &mut JobServiceClient<Authed>,
    key: String,
    body: &str,
) -> Result<(), tonic::Status> {
    let job = pb::ScheduledJob {
        id: key,
        r#type: "noop".into(),
        schedule: "@yearly".into(),
        payload: body.as_bytes().to_vec(),
        ..Default::default()
    };
    let request = pb::CreateJobRequest {
        job: Some(job),
        request_id: String::new(),
    };
    jobs.create_job(request).await.map(|_| ())
}

/// CPU time (user + system) used so far by the running nodes, seconds.
pub(crate) fn cluster_cpu_seconds(cluster: &TestCluster) -> f64 {
    let ticks: u64 = cluster
        .nodes
        .iter()
        .filter_map(|node| node.pid())
        .filter_map(|pid| {
            procfs::process::Process::new(pid as i32)
                .and_then(|p| p.stat())
                .ok()
        })
        .map(|stat| stat.utime + stat.stime)
        .sum();
    ticks as f64 / procfs::ticks_per_second() as f64
}

/// Resident memory of `pid` in bytes (VmRSS).
pub(crate) fn resident_bytes(pid: u32) -> u64 {
    procfs::process::Process::new(pid as i32)
        .and_then(|p| p.status())
        .ok()
        .and_then(|status| status.vmrss)
        .map_or(0, |kb| kb * 1024)
}

/// Creates jobs `0..jobs` (built by `job`) with `clients` concurrent clients
/// against `addr` with the token `secret`, showing progress. A create is retried (same request id, so
/// a retry of one that did commit is answered as the first) at most 5 times;
/// a job that still fails stops the tool with the server's error.
pub(crate) async fn load_jobs(
    addr: &str,
    secret: &str,
    jobs: usize,
    clients: usize,
    label: &'static str,
    job: impl Fn(usize) -> pb::ScheduledJob + Send + Sync + 'static,
) {
    let job = Arc::new(job);
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (addr, secret) = (addr.to_string(), secret.to_string());
        let (next, done, job) = (next.clone(), done.clone(), job.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = JobServiceClient::new(channel(&addr, &secret).await);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= jobs {
                    return;
                }
                let request = pb::CreateJobRequest {
                    job: Some(job(i)),
                    request_id: format!("{label}-{i}"),
                };
                let mut attempt = 0;
                while let Err(status) = client.create_job(request.clone()).await {
                    attempt += 1;
                    assert!(attempt < 5, "create {i} failed 5 times, last: {status}");
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    while tasks.iter().any(|t| !t.is_finished()) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let done = done.load(Ordering::Relaxed);
        progress(format!(
            "{label}: loading jobs {done}/{jobs}, {:.0}/s",
            done as f64 / started.elapsed().as_secs_f64()
        ));
    }
    for task in tasks {
        task.await.expect("loader");
    }
}

/// The tracing settings a comparison measures: a name and the agent flags,
/// exporting to `endpoint`.
pub(crate) fn tracing_sides(endpoint: &str) -> Vec<(&'static str, Vec<String>)> {
    let traced = |sampling: &str| {
        vec![
            format!("--otlp-endpoint={endpoint}"),
            format!("--trace-sampling={sampling}"),
        ]
    };
    vec![
        ("off", Vec::new()),
        ("0.01", traced("0.01")),
        ("1.0", traced("1")),
    ]
}

/// The agent flags of a node exporting every trace to a collector that is
/// down: a listener on a free loopback port that accepts connections and
/// never answers (each export waits out its timeout). The listener lives
/// as long as the returned task.
pub(crate) async fn black_hole_collector() -> (Vec<String>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let endpoint = format!("http://{}", listener.local_addr().expect("bound"));
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let flags = vec![
        format!("--otlp-endpoint={endpoint}"),
        "--trace-sampling=1".to_string(),
    ];
    (flags, task)
}

/// An OTLP/gRPC trace receiver on a free loopback port that counts the
/// spans it gets and keeps nothing: its URL and the count.
pub(crate) async fn start_span_sink() -> (String, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    #[derive(Clone, Default)]
    struct Sink(Arc<AtomicU64>);

    #[tonic::async_trait]
    impl TraceService for Sink {
        async fn export(
            &self,
            request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            let spans: usize = request
                .into_inner()
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .map(|s| s.spans.len())
                .sum();
            self.0.fetch_add(spans as u64, Ordering::Relaxed);
            Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
        }
    }

    let sink = Sink::default();
    let received = sink.0.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let url = format!("http://{}", listener.local_addr().expect("bound"));
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(sink))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
    });
    (url, received)
}
