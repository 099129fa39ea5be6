//! A TCP proxy per peer link, so the harness can cut, slow or break one link
//! without root.
//!
//! Each node is started with a dial map that sends its connections to peer
//! `j` (Raft gRPC and the worker network) to a proxy owned by the harness,
//! one proxy per ordered pair `(i, j)` and per kind of link. A proxy forwards
//! bytes both ways and obeys its [`LinkControl`]:
//!
//! - **cut**: existing connections are closed and new ones are closed on
//!   accept — the peer looks unreachable;
//! - **delay**: every chunk waits `delay_ms` before it is forwarded (order is
//!   kept, so this is latency, not reordering);
//! - **break**: each chunk closes the connection with probability
//!   `break_per_mille / 1000` — a lossy network as TCP sees it (bytes are never
//!   silently dropped inside a live stream, which TCP would not allow either).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The knobs of one link.
#[derive(Debug)]
pub struct LinkControl {
    cut: AtomicBool,
    delay_ms: AtomicU64,
    break_per_mille: AtomicU32,
    /// Bumped on every cut, so live connections notice and close.
    generation: watch::Sender<u64>,
}

impl Default for LinkControl {
    fn default() -> Self {
        LinkControl {
            cut: AtomicBool::new(false),
            delay_ms: AtomicU64::new(0),
            break_per_mille: AtomicU32::new(0),
            generation: watch::channel(0).0,
        }
    }
}

impl LinkControl {
    /// Cuts the link (closing live connections) or restores it.
    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
        if cut {
            self.generation.send_modify(|g| *g += 1);
        }
    }

    /// Sets the delay and the chance to break a connection per chunk.
    pub fn set_degraded(&self, delay_ms: u64, break_per_mille: u32) {
        self.delay_ms.store(delay_ms, Ordering::SeqCst);
        self.break_per_mille.store(break_per_mille, Ordering::SeqCst);
    }

    /// Back to a perfect link.
    pub fn heal(&self) {
        self.set_degraded(0, 0);
        self.set_cut(false);
    }

    fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }
}

/// A running proxy.
pub struct Proxy {
    /// Where nodes connect.
    pub listen: SocketAddr,
    /// Its knobs.
    pub control: Arc<LinkControl>,
}

impl Proxy {
    /// Starts a proxy on a free loopback port forwarding to `target`, until `shutdown`.
    pub async fn start(target: SocketAddr, seed: u64, shutdown: CancellationToken) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let listen = listener.local_addr()?;
        let control = Arc::new(LinkControl::default());
        let ctl = control.clone();
        tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    () = shutdown.cancelled() => return,
                };
                let Ok((inbound, _)) = accepted else { continue };
                if ctl.is_cut() {
                    drop(inbound);
                    continue;
                }
                let (ctl, shutdown) = (ctl.clone(), shutdown.clone());
                let seed = rng.gen();
                tokio::spawn(async move {
                    // Connect errors look like a dead peer to the node: fine.
                    if let Ok(outbound) = TcpStream::connect(target).await {
                        relay(inbound, outbound, ctl, seed, shutdown).await;
                    }
                });
            }
        });
        Ok(Proxy { listen, control })
    }
}

/// Forwards both ways until either side closes, the link is cut, or a break is drawn.
async fn relay(
    inbound: TcpStream,
    outbound: TcpStream,
    ctl: Arc<LinkControl>,
    seed: u64,
    shutdown: CancellationToken,
) {
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    let mut cut = ctl.generation.subscribe();
    cut.mark_unchanged();
    let forward = pump(in_read, out_write, ctl.clone(), seed);
    let backward = pump(out_read, in_write, ctl.clone(), seed.wrapping_add(1));
    tokio::select! {
        _ = forward => {}
        _ = backward => {}
        _ = cut.changed() => {}
        () = shutdown.cancelled() => {}
    }
    // Dropping the halves closes both connections.
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    ctl: Arc<LinkControl>,
    seed: u64,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if ctl.is_cut() {
            return;
        }
        let delay = ctl.delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let break_per_mille = ctl.break_per_mille.load(Ordering::Relaxed);
        if break_per_mille > 0 && rng.gen_range(0..1000) < break_per_mille {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
        stream.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await?;
        Ok(buf.to_vec())
    }

    #[tokio::test]
    async fn forwards_then_cuts_then_heals() {
        let shutdown = CancellationToken::new();
        let proxy = Proxy::start(echo_server().await, 1, shutdown.clone())
            .await
            .unwrap();
        let mut live = TcpStream::connect(proxy.listen).await.unwrap();
        assert_eq!(round_trip(&mut live).await.unwrap(), b"ping");

        proxy.control.set_cut(true);
        // The live connection is closed, and a new one is closed on accept.
        assert!(round_trip(&mut live).await.is_err());
        let mut refused = TcpStream::connect(proxy.listen).await.unwrap();
        assert!(round_trip(&mut refused).await.is_err());

        proxy.control.heal();
        let mut again = TcpStream::connect(proxy.listen).await.unwrap();
        assert_eq!(round_trip(&mut again).await.unwrap(), b"ping");
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_certain_break_closes_the_connection() {
        let shutdown = CancellationToken::new();
        let proxy = Proxy::start(echo_server().await, 2, shutdown.clone())
            .await
            .unwrap();
        proxy.control.set_degraded(0, 1000);
        let mut s = TcpStream::connect(proxy.listen).await.unwrap();
        assert!(round_trip(&mut s).await.is_err());
        shutdown.cancel();
    }
}
