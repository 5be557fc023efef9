//! Plain TCP servers on loopback for blind-tunnel tests and throughput
//! benches: an echo server and a byte-counting sink.
//!
//! They never parse what they receive and never listen beyond 127.0.0.1.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// A TCP echo server on 127.0.0.1:0; runs until the runtime shuts down.
pub async fn start_echo_tcp() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo server");
    let addr = listener.local_addr().expect("echo server address");
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                // A 256 KiB copy buffer (tokio's default is 8 KiB): the
                // tunnel benchmark echoes 100 MB through this, and small
                // reads made the echo itself the slow part.
                let (r, mut w) = sock.split();
                let mut r = tokio::io::BufReader::with_capacity(256 * 1024, r);
                let _ = tokio::io::copy_buf(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// A server that reads and discards everything, counting bytes.
#[derive(Debug, Clone)]
pub struct SinkServer {
    pub addr: SocketAddr,
    received: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
}

impl SinkServer {
    /// Bytes received so far over all connections.
    pub fn bytes_received(&self) -> u64 {
        self.received.load(Ordering::Acquire)
    }

    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Acquire)
    }

    /// Wait until at least `n` bytes arrived (polls; no timing assumptions).
    pub async fn wait_for(&self, n: u64) {
        while self.bytes_received() < n {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }
}

/// A byte-counting sink on 127.0.0.1:0; runs until the runtime shuts down.
pub async fn start_sink_tcp() -> SinkServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind sink server");
    let sink = SinkServer {
        addr: listener.local_addr().expect("sink server address"),
        received: Arc::new(AtomicU64::new(0)),
        connections: Arc::new(AtomicU64::new(0)),
    };
    let s = sink.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            s.connections.fetch_add(1, Ordering::AcqRel);
            let received = s.received.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                while let Ok(n) = sock.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    received.fetch_add(n as u64, Ordering::AcqRel);
                }
            });
        }
    });
    sink
}
