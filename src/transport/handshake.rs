//! The cluster-secret handshake: a mutual HMAC-SHA256 challenge–response on
//! a peer connection's raw byte stream, before HTTP/2 starts.
//!
//! Three fixed-size frames, each side proving that it holds the secret
//! without sending it:
//!
//! ```text
//! server → client   MAGIC (8) | server nonce (32)                       40 bytes
//! client → server   MAGIC (8) | client nonce (32) | client proof (32)   72 bytes
//! server → client   server proof (32)                                    32 bytes
//!
//! client proof = HMAC-SHA256(secret, "kairos peer client" | MAGIC | server nonce | client nonce)
//! server proof = HMAC-SHA256(secret, "kairos peer server" | MAGIC | server nonce | client nonce)
//! ```
//!
//! # Invariants
//!
//! * The secret never crosses the wire; each proof covers a nonce the
//!   *other* side drew from the OS RNG for this connection, so a recorded
//!   proof is useless on another connection.
//! * The two directions use different labels: a proof cannot be reflected
//!   back at its sender.
//! * The server checks the client's proof (in constant time) before it sends
//!   anything that depends on the secret, and a wrong proof ends the
//!   connection: nothing of it reaches the gRPC server, so no RPC is decoded.
//!   The client checks the server's proof before it sends its first HTTP/2
//!   byte, so a node cannot be fooled into talking Raft to an impostor.
//! * Every read and write is of a fixed size, and the whole exchange is
//!   bounded by [`HANDSHAKE_TIMEOUT`].
//!
//! # IMPLEMENTATION CAVEATS
//!
//! * This authenticates the *start* of a connection, not each byte after it:
//!   the stream is neither encrypted nor integrity-protected, so an active
//!   attacker on the network path can read Raft traffic and could take over
//!   an established connection. Where the network between nodes is not
//!   trusted, use peer TLS (`--peer-tls-*`), which protects every byte.
//! * The answer to a wrong proof is a closed connection without a reason on
//!   the wire (a prober learns nothing); the refusing node logs it.

use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use rand::rngs::SysRng;
use rand::TryRng;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::secret::ClusterSecret;

/// The first bytes of both sides' first frame: protocol and version.
pub const MAGIC: [u8; 8] = *b"KRSPEER1";
/// How long the whole handshake may take on either side.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

const NONCE_BYTES: usize = 32;
const PROOF_BYTES: usize = 32;
const CLIENT_LABEL: &[u8] = b"kairos peer client";
const SERVER_LABEL: &[u8] = b"kairos peer server";

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The other side does not speak this protocol (or another version).
    #[error("not a Kairos peer (unexpected first bytes)")]
    NotAPeer,
    /// The other side's proof is wrong: it does not hold this cluster's secret.
    #[error("wrong cluster secret (the peer's proof does not match this node's cookie)")]
    WrongSecret,
    /// The exchange did not finish within [`HANDSHAKE_TIMEOUT`].
    #[error("no complete handshake within {HANDSHAKE_TIMEOUT:?}")]
    TimedOut,
    /// The OS random number generator failed.
    #[error("cannot draw a nonce from the OS RNG: {0}")]
    Rng(String),
    /// The connection failed or closed mid-handshake.
    #[error("connection failed during the handshake: {0}")]
    Io(#[from] std::io::Error),
}

fn nonce() -> Result<[u8; NONCE_BYTES], HandshakeError> {
    let mut nonce = [0u8; NONCE_BYTES];
    SysRng
        .try_fill_bytes(&mut nonce)
        .map_err(|e| HandshakeError::Rng(e.to_string()))?;
    Ok(nonce)
}

fn proof(
    secret: &ClusterSecret,
    label: &[u8],
    server_nonce: &[u8],
    client_nonce: &[u8],
) -> [u8; PROOF_BYTES] {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(label);
    mac.update(&MAGIC);
    mac.update(server_nonce);
    mac.update(client_nonce);
    mac.finalize().into_bytes().into()
}

fn matches(expected: &[u8; PROOF_BYTES], received: &[u8]) -> bool {
    bool::from(expected.as_slice().ct_eq(received))
}

/// The server side: challenges the client, checks its proof, proves itself.
/// On `Ok` the stream is ready for HTTP/2.
pub async fn accept<S>(stream: &mut S, secret: &ClusterSecret) -> Result<(), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let server_nonce = nonce()?;
        let mut challenge = [0u8; MAGIC.len() + NONCE_BYTES];
        challenge[..MAGIC.len()].copy_from_slice(&MAGIC);
        challenge[MAGIC.len()..].copy_from_slice(&server_nonce);
        stream.write_all(&challenge).await?;
        stream.flush().await?;

        let mut answer = [0u8; MAGIC.len() + NONCE_BYTES + PROOF_BYTES];
        stream.read_exact(&mut answer).await?;
        let (magic, rest) = answer.split_at(MAGIC.len());
        let (client_nonce, client_proof) = rest.split_at(NONCE_BYTES);
        if magic != MAGIC {
            return Err(HandshakeError::NotAPeer);
        }
        let expected = proof(secret, CLIENT_LABEL, &server_nonce, client_nonce);
        if !matches(&expected, client_proof) {
            return Err(HandshakeError::WrongSecret);
        }
        stream
            .write_all(&proof(secret, SERVER_LABEL, &server_nonce, client_nonce))
            .await?;
        stream.flush().await?;
        Ok(())
    })
    .await
    .map_err(|_| HandshakeError::TimedOut)?
}

/// The client side: answers the server's challenge and checks the server's
/// proof. On `Ok` the stream is ready for HTTP/2.
pub async fn connect<S>(stream: &mut S, secret: &ClusterSecret) -> Result<(), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let mut challenge = [0u8; MAGIC.len() + NONCE_BYTES];
        stream.read_exact(&mut challenge).await?;
        let (magic, server_nonce) = challenge.split_at(MAGIC.len());
        if magic != MAGIC {
            return Err(HandshakeError::NotAPeer);
        }
        let client_nonce = nonce()?;
        let mut answer = [0u8; MAGIC.len() + NONCE_BYTES + PROOF_BYTES];
        answer[..MAGIC.len()].copy_from_slice(&MAGIC);
        answer[MAGIC.len()..MAGIC.len() + NONCE_BYTES].copy_from_slice(&client_nonce);
        answer[MAGIC.len() + NONCE_BYTES..].copy_from_slice(&proof(
            secret,
            CLIENT_LABEL,
            server_nonce,
            &client_nonce,
        ));
        stream.write_all(&answer).await?;
        stream.flush().await?;

        let mut server_proof = [0u8; PROOF_BYTES];
        stream.read_exact(&mut server_proof).await?;
        let expected = proof(secret, SERVER_LABEL, server_nonce, &client_nonce);
        if !matches(&expected, &server_proof) {
            return Err(HandshakeError::WrongSecret);
        }
        Ok(())
    })
    .await
    .map_err(|_| HandshakeError::TimedOut)?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(value: &str) -> ClusterSecret {
        ClusterSecret::new(value.into(), "test").unwrap()
    }

    async fn both(
        server_secret: &str,
        client_secret: &str,
    ) -> (Result<(), HandshakeError>, Result<(), HandshakeError>) {
        let (mut server_end, mut client_end) = tokio::io::duplex(1024);
        let (server_secret, client_secret) = (secret(server_secret), secret(client_secret));
        let server = async move {
            let result = accept(&mut server_end, &server_secret).await;
            drop(server_end); // a refusing server closes the connection
            result
        };
        let client = async move { connect(&mut client_end, &client_secret).await };
        tokio::join!(server, client)
    }

    #[tokio::test]
    async fn the_same_secret_authenticates_both_sides() {
        let (server, client) = both("sixteen-bytes-ok", "sixteen-bytes-ok").await;
        server.unwrap();
        client.unwrap();
    }

    #[tokio::test]
    async fn a_client_with_another_secret_is_refused_and_learns_nothing() {
        let (server, client) = both("sixteen-bytes-ok", "sixteen-bytes-no").await;
        assert!(matches!(server, Err(HandshakeError::WrongSecret)), "{server:?}");
        // The server closed without a proof of its own.
        assert!(matches!(client, Err(HandshakeError::Io(_))), "{client:?}");
    }

    #[tokio::test]
    async fn a_client_that_is_not_a_peer_is_refused() {
        let (mut server_end, mut client_end) = tokio::io::duplex(1024);
        let server = tokio::spawn(async move { accept(&mut server_end, &secret("sixteen-bytes-ok")).await });
        let mut challenge = [0u8; 40];
        client_end.read_exact(&mut challenge).await.unwrap();
        assert_eq!(&challenge[..8], &MAGIC);
        // An HTTP/2 client's connection preface, padded to a frame's size.
        let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        preface.resize(72, 0);
        client_end.write_all(&preface).await.unwrap();
        let result = server.await.unwrap();
        assert!(matches!(result, Err(HandshakeError::NotAPeer)), "{result:?}");
    }

    #[tokio::test]
    async fn an_impostor_server_is_refused_by_the_client() {
        let (mut server_end, mut client_end) = tokio::io::duplex(1024);
        let client = tokio::spawn(async move { connect(&mut client_end, &secret("sixteen-bytes-ok")).await });
        // The impostor sends a challenge and a made-up proof.
        let mut challenge = MAGIC.to_vec();
        challenge.extend([7u8; 32]);
        server_end.write_all(&challenge).await.unwrap();
        let mut answer = [0u8; 72];
        server_end.read_exact(&mut answer).await.unwrap();
        server_end.write_all(&[0u8; 32]).await.unwrap();
        let result = client.await.unwrap();
        assert!(matches!(result, Err(HandshakeError::WrongSecret)), "{result:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_times_out() {
        let (mut server_end, _client_end) = tokio::io::duplex(1024);
        let result = accept(&mut server_end, &secret("sixteen-bytes-ok")).await;
        assert!(matches!(result, Err(HandshakeError::TimedOut)), "{result:?}");
    }

    #[test]
    fn proofs_differ_by_direction_and_by_nonce() {
        let s = secret("sixteen-bytes-ok");
        let client = proof(&s, CLIENT_LABEL, &[1; 32], &[2; 32]);
        assert_ne!(client, proof(&s, SERVER_LABEL, &[1; 32], &[2; 32]));
        assert_ne!(client, proof(&s, CLIENT_LABEL, &[1; 32], &[3; 32]));
        assert_ne!(
            client,
            proof(&secret("sixteen-bytes-no"), CLIENT_LABEL, &[1; 32], &[2; 32])
        );
    }
}
