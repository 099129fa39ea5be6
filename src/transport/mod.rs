//! Authenticated connections: who may open a connection to a node's peer
//! listener, and how a node opens one to a peer.
//!
//! Every peer connection is authenticated before its first HTTP/2 byte, in
//! one of two modes ([`PeerSecurity`]):
//!
//! - **Mutual TLS** (`--peer-tls-cert/-key/-ca`, see [`crate::tls`]): both
//!   ends present a certificate signed by the cluster's CA. Every byte after
//!   the handshake is encrypted and integrity-protected.
//! - **Cluster secret** (the default): the mutual HMAC challenge–response of
//!   [`handshake`] with the cluster cookie ([`secret`]).
//!
//! The server side is [`authenticated_incoming`]: an accept loop that sets
//! `TCP_NODELAY` on each accepted socket and runs each connection's
//! handshake in a task of its own (bounded by a timeout and by
//! [`MAX_PENDING_HANDSHAKES`]), so one slow or silent client cannot stall
//! the others; only connections that passed reach the gRPC server
//! (`serve_with_incoming`). The client side is [`PeerConnector`], a tonic
//! connector that dials through the node's [`DialMap`] and runs the same
//! handshake from the other end. The client API listener uses
//! [`authenticated_incoming`] too, with a TLS handshake ([`TlsHandshake`])
//! when `--tls-cert` is given.
//!
//! # Invariants
//!
//! * A connection whose handshake fails or times out is closed without ever
//!   being handed to the gRPC server: no request on it is decoded.
//! * The accept loop and every pending handshake end when the listener's
//!   shutdown token is cancelled or the server stops taking connections.
//! * A TLS client checks the server against the peer's address *as the
//!   membership names it*; a dial-map rewrite (a test proxy) changes where
//!   the bytes go, never whom the node expects at the other end.
//!
//! # IMPLEMENTATION CAVEATS
//!
//! * A refused connection is logged by the refusing side at `warn` with
//!   the remote address and reason; under a flood of bad connections that
//!   log is as loud as the flood.
//! * Beyond [`MAX_PENDING_HANDSHAKES`] connections mid-handshake, new
//!   connections wait in the kernel's accept queue.

pub mod handshake;
pub mod secret;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;
use tonic::transport::Uri;

use crate::dial::DialMap;
use crate::tls::{server_name, PeerTls};
pub use secret::ClusterSecret;

/// Connections that may be mid-handshake on one listener at once.
pub const MAX_PENDING_HANDSHAKES: usize = 256;
/// How long a TLS handshake may take.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = handshake::HANDSHAKE_TIMEOUT;
/// Authenticated connections waiting for the gRPC server to take them.
const READY_QUEUE: usize = 64;
/// The pause after a failed `accept` (e.g. out of file descriptors).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// How peer connections are authenticated.
#[derive(Clone, Debug)]
pub enum PeerSecurity {
    /// Mutual HMAC challenge–response with the cluster secret.
    ClusterSecret(ClusterSecret),
    /// Mutual TLS with the cluster's CA.
    MutualTls(PeerTls),
}

impl PeerSecurity {
    /// A short name of the mode, for logs.
    pub fn mode(&self) -> &'static str {
        match self {
            PeerSecurity::ClusterSecret(_) => "cluster secret (HMAC challenge-response)",
            PeerSecurity::MutualTls(_) => "mutual TLS",
        }
    }
}

/// The server side of one connection's authentication.
pub trait ServerHandshake: Clone + Send + Sync + 'static {
    /// The authenticated connection handed to the gRPC server.
    type Io: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static;
    /// Authenticates `stream` (bounded in time by the implementation). An
    /// error of kind `ConnectionAborted` means the client went away; any
    /// other is a refusal, logged as such.
    fn accept(&self, stream: TcpStream) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

/// The cluster-secret challenge–response, server side.
#[derive(Clone)]
pub struct SecretHandshake(pub ClusterSecret);

impl ServerHandshake for SecretHandshake {
    type Io = TcpStream;

    async fn accept(&self, mut stream: TcpStream) -> io::Result<TcpStream> {
        handshake::accept(&mut stream, &self.0).await.map_err(|e| {
            let kind = match e {
                handshake::HandshakeError::Io(_) => io::ErrorKind::ConnectionAborted,
                _ => io::ErrorKind::PermissionDenied,
            };
            io::Error::new(kind, e)
        })?;
        Ok(stream)
    }
}

/// A TLS handshake, server side (peer mutual TLS, or the client API's TLS).
#[derive(Clone)]
pub struct TlsHandshake(pub TlsAcceptor);

impl TlsHandshake {
    /// A handshake with `config`.
    pub fn new(config: Arc<ServerConfig>) -> TlsHandshake {
        TlsHandshake(TlsAcceptor::from(config))
    }
}

impl ServerHandshake for TlsHandshake {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;

    async fn accept(&self, stream: TcpStream) -> io::Result<Self::Io> {
        tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, self.0.accept(stream))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no TLS handshake within the timeout"))?
            .map_err(|e| {
                let kind = match e.kind() {
                    io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe => io::ErrorKind::ConnectionAborted,
                    _ => io::ErrorKind::PermissionDenied,
                };
                io::Error::new(kind, format!("TLS handshake failed: {e}"))
            })
    }
}

/// The connections accepted on `listener` that passed `handshake`, as a
/// stream for tonic's `serve_with_incoming`. `what` names the listener in
/// logs. The accept loop runs until `shutdown` is cancelled or the stream
/// is dropped; handshakes still pending then are abandoned.
pub fn authenticated_incoming<H: ServerHandshake>(
    listener: TcpListener,
    handshake: H,
    what: &'static str,
    shutdown: CancellationToken,
) -> ReceiverStream<io::Result<H::Io>> {
    let (ready, incoming) = mpsc::channel(READY_QUEUE);
    tokio::spawn(accept_loop(listener, handshake, what, ready, shutdown));
    ReceiverStream::new(incoming)
}

async fn accept_loop<H: ServerHandshake>(
    listener: TcpListener,
    handshake: H,
    what: &'static str,
    ready: mpsc::Sender<io::Result<H::Io>>,
    shutdown: CancellationToken,
) {
    let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    // Dropping the set at the end aborts the handshakes still running.
    let mut handshakes = JoinSet::new();
    loop {
        let permit = tokio::select! {
            permit = pending.clone().acquire_owned() => permit.expect("never closed"),
            _ = shutdown.cancelled() => return,
            _ = ready.closed() => return,
        };
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(listener = what, "accept failed: {e}");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
            _ = ready.closed() => return,
            // Reap finished handshakes so the set does not grow.
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => continue,
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(listener = what, %remote, "TCP_NODELAY: {e}");
        }
        let (handshake, ready) = (handshake.clone(), ready.clone());
        handshakes.spawn(async move {
            let _permit = permit;
            match handshake.accept(stream).await {
                Ok(io) => {
                    let _ = ready.send(Ok(io)).await;
                }
                // The client went away mid-handshake (e.g. its own connect
                // timeout): nothing was refused.
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {
                    tracing::debug!(listener = what, %remote, "connection closed during the handshake: {e}")
                }
                Err(e) => tracing::warn!(listener = what, %remote, "connection refused: {e}"),
            }
        });
    }
}

/// The tonic connector of one peer: dials where the node's dial map sends
/// the peer's address, then authenticates as [`PeerSecurity`] says.
#[derive(Clone)]
pub struct PeerConnector {
    /// The peer's address as the membership names it (the TLS server name).
    peer_addr: String,
    /// Where the node dials its peers.
    dial_map: Arc<DialMap>,
    /// How the connection is authenticated.
    security: Arc<PeerSecurity>,
}

/// An authenticated connection to a peer.
pub type PeerStream = Either<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>;

impl PeerConnector {
    /// A connector to the peer at `peer_addr`.
    pub fn new(peer_addr: &str, dial_map: Arc<DialMap>, security: Arc<PeerSecurity>) -> PeerConnector {
        PeerConnector {
            peer_addr: peer_addr.to_string(),
            dial_map,
            security,
        }
    }

    /// Dials and authenticates one connection.
    pub async fn connect(&self) -> io::Result<PeerStream> {
        let dial = self.dial_map.resolve(&self.peer_addr);
        let mut stream = TcpStream::connect(dial).await?;
        stream.set_nodelay(true)?;
        let refused = |e: &dyn std::fmt::Display| {
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("peer {} refused: {e}", self.peer_addr),
            )
        };
        match &*self.security {
            PeerSecurity::ClusterSecret(secret) => {
                handshake::connect(&mut stream, secret)
                    .await
                    .map_err(|e| refused(&e))?;
                Ok(Either::Left(stream))
            }
            PeerSecurity::MutualTls(tls) => {
                let name = server_name(&self.peer_addr).map_err(|e| refused(&e))?;
                let connect = TlsConnector::from(tls.client.clone()).connect(name, stream);
                let stream = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, connect)
                    .await
                    .map_err(|_| refused(&"no TLS handshake within the timeout"))?
                    .map_err(|e| refused(&e))?;
                Ok(Either::Right(stream))
            }
        }
    }
}

impl tower::Service<Uri> for PeerConnector {
    type Response = TokioIo<PeerStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let connector = self.clone();
        Box::pin(async move { connector.connect().await.map(TokioIo::new) })
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn secret(value: &str) -> ClusterSecret {
        ClusterSecret::new(value.into(), "test").unwrap()
    }

    /// A listener whose authenticated connections echo one byte.
    async fn echo_server(handshake: SecretHandshake, shutdown: CancellationToken) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let mut incoming = authenticated_incoming(listener, handshake, "test", shutdown);
        tokio::spawn(async move {
            use tokio_stream::StreamExt;
            while let Some(Ok(mut stream)) = incoming.next().await {
                tokio::spawn(async move {
                    let mut byte = [0u8; 1];
                    if stream.read_exact(&mut byte).await.is_ok() {
                        let _ = stream.write_all(&byte).await;
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_silent_client_does_not_stall_an_authenticated_one() {
        let shutdown = CancellationToken::new();
        let addr = echo_server(SecretHandshake(secret("sixteen-bytes-ok")), shutdown.clone()).await;
        // Connects and never says a word.
        let _silent = TcpStream::connect(&addr).await.unwrap();
        let connector = PeerConnector::new(
            &addr,
            Arc::default(),
            Arc::new(PeerSecurity::ClusterSecret(secret("sixteen-bytes-ok"))),
        );
        let mut stream = tokio::time::timeout(Duration::from_secs(3), connector.connect())
            .await
            .expect("not stalled behind the silent client")
            .unwrap();
        stream.write_all(b"x").await.unwrap();
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.unwrap();
        assert_eq!(&byte, b"x");
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_connector_with_another_secret_is_refused() {
        let shutdown = CancellationToken::new();
        let addr = echo_server(SecretHandshake(secret("sixteen-bytes-ok")), shutdown.clone()).await;
        let connector = PeerConnector::new(
            &addr,
            Arc::default(),
            Arc::new(PeerSecurity::ClusterSecret(secret("another-secret-16"))),
        );
        let Err(err) = connector.connect().await else {
            panic!("refused")
        };
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
        assert!(
            err.to_string().starts_with(&format!("peer {addr} refused: ")),
            "{err}"
        );
        shutdown.cancel();
    }

    #[tokio::test]
    async fn the_connector_dials_through_the_dial_map() {
        let shutdown = CancellationToken::new();
        let real = echo_server(SecretHandshake(secret("sixteen-bytes-ok")), shutdown.clone()).await;
        let unused = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let named = unused.local_addr().unwrap().to_string();
        drop(unused);
        let map = DialMap::parse(&format!("{named}={real}")).unwrap();
        let connector = PeerConnector::new(
            &named,
            Arc::new(map),
            Arc::new(PeerSecurity::ClusterSecret(secret("sixteen-bytes-ok"))),
        );
        connector.connect().await.unwrap();
        shutdown.cancel();
    }
}
