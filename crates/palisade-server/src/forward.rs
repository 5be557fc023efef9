//! Live SIEM forwarding: one task per `[[forward]]` target tails the event
//! store by seq and sends each record as an RFC 5424 message in an RFC 6587
//! octet-counted frame, over TCP or TLS (RFC 5425).
//!
//! # Delivery
//! Syslog over TCP has no acknowledgement, so the forwarder uses the one the
//! transport gives: after writing and flushing a page it waits until the
//! collector's TCP stack has acknowledged every byte (Linux `TIOCOUTQ` = 0,
//! and no pending socket error), and only then saves the page's last seq as
//! the target's cursor (`forward_cursors`). After any failure it reconnects
//! (exponential backoff with jitter) and resends from the saved cursor.
//! * **Nothing is lost** that the collector's TCP stack did not acknowledge:
//!   a collector that is down, unreachable or stalls keeps the cursor where
//!   it is; a server restart resumes from the cursor.
//! * **Duplicates** happen only when a connection fails between writing a
//!   page and seeing it acknowledged: that page (at most
//!   [`EXPORT_PAGE_ROWS`] records) is sent again. The normal case has none.
//!   Collectors can drop them by the `id` SD-PARAM (the record's UUID).
//! * **Residual window:** bytes the collector's kernel acknowledged but the
//!   collector process never read (it crashed or closed with unread data)
//!   are lost; only an application-level acknowledgement (RELP) could close
//!   that, and syslog over TCP/TLS has none. On non-Linux systems the
//!   confirmation is the flush alone, which widens the window to the local
//!   socket buffer.
//!
//! The tailer reads only up to [`Store::event_watermark`], so on PostgreSQL a
//! transaction that commits a lower seq late is never skipped. With several
//! servers on one PostgreSQL, a target is forwarded by whichever server holds
//! its advisory lease; the others stand by.
//!
//! This module must never log record contents; errors name the target and
//! the failure only.

use crate::config::{ForwardConfig, ForwardStart, ForwardTransport};
use crate::export::{octet_frame, record_value, syslog_message_capped, EXPORT_PAGE_ROWS};
use crate::store::{EventFilter, Store, StoreError};
use chrono::{DateTime, Utc};
use rand::Rng;
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// First reconnect delay; doubles per failure up to the target's `max_backoff_ms`.
pub const BASE_BACKOFF: Duration = Duration::from_millis(100);
/// How long a connection attempt (TCP + TLS handshake) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("forward[{name}]: cannot read ca_file {path}: {source}")]
    CaFile {
        name: String,
        path: String,
        source: std::io::Error,
    },
    #[error("forward[{name}]: ca_file {path} holds no usable certificate")]
    NoCerts { name: String, path: String },
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("connect: timed out after {0:?}")]
    ConnectTimeout(Duration),
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    #[error("send: {0}")]
    Send(std::io::Error),
    #[error("collector closed the connection")]
    PeerClosed,
    #[error("collector did not acknowledge {0} bytes within the confirm timeout")]
    NotAcknowledged(usize),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("lost the forwarding lease")]
    LeaseLost,
}

/// What `GET /api/v1/forwarders` shows of one target on this server.
#[derive(Debug, Clone, Serialize)]
pub struct ForwardStatus {
    pub name: String,
    pub address: String,
    pub transport: &'static str,
    /// starting | connecting | forwarding | backoff | standby | stopped
    pub state: &'static str,
    /// Last seq confirmed delivered by this server's task.
    pub cursor: i64,
    /// Records confirmed delivered since this server started.
    pub sent: u64,
    /// Connections opened since this server started.
    pub connections: u64,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    pub last_sent_at: Option<DateTime<Utc>>,
}

/// Live status of every target, shared with the admin API.
#[derive(Debug, Clone, Default)]
pub struct Forwarders {
    targets: Arc<Vec<Arc<Mutex<ForwardStatus>>>>,
}

impl Forwarders {
    pub fn statuses(&self) -> Vec<ForwardStatus> {
        self.targets
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect()
    }
}

/// One target, ready to run.
struct Target {
    cfg: ForwardConfig,
    tls: Option<(tokio_rustls::TlsConnector, rustls::pki_types::ServerName<'static>)>,
    status: Arc<Mutex<ForwardStatus>>,
}

/// Build every target (reading CA files now, so a bad one fails startup)
/// and spawn one task each; they stop when `shutdown` turns true.
pub fn spawn_all(
    store: &Store,
    cfgs: &[ForwardConfig],
    shutdown: watch::Receiver<bool>,
) -> Result<(Forwarders, Vec<JoinHandle<()>>), ForwardError> {
    let targets = cfgs.iter().map(Target::new).collect::<Result<Vec<_>, _>>()?;
    let forwarders = Forwarders {
        targets: Arc::new(targets.iter().map(|t| t.status.clone()).collect()),
    };
    let handles = targets
        .into_iter()
        .map(|t| tokio::spawn(t.run(store.clone(), shutdown.clone())))
        .collect();
    Ok((forwarders, handles))
}

// === impl Target ===

impl Target {
    fn new(cfg: &ForwardConfig) -> Result<Self, ForwardError> {
        let tls = match cfg.transport {
            ForwardTransport::Tcp => None,
            ForwardTransport::Tls => Some(tls_connector(cfg)?),
        };
        let status = ForwardStatus {
            name: cfg.name.clone(),
            address: cfg.address.clone(),
            transport: match cfg.transport {
                ForwardTransport::Tcp => "tcp",
                ForwardTransport::Tls => "tls",
            },
            state: "starting",
            cursor: 0,
            sent: 0,
            connections: 0,
            last_error: None,
            last_error_at: None,
            last_sent_at: None,
        };
        Ok(Self {
            cfg: cfg.clone(),
            tls,
            status: Arc::new(Mutex::new(status)),
        })
    }

    fn set(&self, f: impl FnOnce(&mut ForwardStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    fn fail(&self, error: &ForwardError) {
        warn!(target_name = %self.cfg.name, %error, "Forwarding to the collector failed; will retry");
        let msg = error.to_string();
        self.set(|s| {
            s.state = "backoff";
            s.last_error = Some(msg);
            s.last_error_at = Some(Utc::now());
        });
    }

    fn filter(&self, after: i64) -> EventFilter {
        EventFilter {
            device_id: self.cfg.device.clone(),
            kind: self.cfg.kind.clone(),
            provider: self.cfg.provider.clone(),
            model: self.cfg.model.clone(),
            app: self.cfg.app.clone(),
            decision: self.cfg.decision.clone(),
            after_seq: Some(after),
            limit: EXPORT_PAGE_ROWS,
            ..EventFilter::default()
        }
    }

    async fn run(self, store: Store, mut shutdown: watch::Receiver<bool>) {
        let max_backoff = Duration::from_millis(self.cfg.max_backoff_ms);
        let mut failures: u32 = 0;
        while !*shutdown.borrow() {
            let outcome = self.session(&store, &mut shutdown).await;
            let pause = match outcome {
                Ok(Session::Stopped) => break,
                Ok(Session::Standby) => {
                    self.set(|s| s.state = "standby");
                    Duration::from_millis(self.cfg.poll_ms).max(Duration::from_secs(1))
                }
                Ok(Session::Progressed(e)) => {
                    failures = 1;
                    self.fail(&e);
                    backoff(BASE_BACKOFF, failures, max_backoff)
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    self.fail(&e);
                    backoff(BASE_BACKOFF, failures, max_backoff)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.changed() => {}
            }
        }
        self.set(|s| s.state = "stopped");
        info!(target_name = %self.cfg.name, "Forwarder stopped");
    }

    /// Hold the lease, connect, and send until shutdown or an error.
    async fn session(
        &self,
        store: &Store,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Session, ForwardError> {
        let Some(mut lease) = store.try_forward_lease(&self.cfg.name).await? else {
            return Ok(Session::Standby);
        };
        let mut cursor = match store.forward_cursor(&self.cfg.name).await? {
            Some(c) => c.last_seq,
            None => {
                let start = match self.cfg.start {
                    ForwardStart::Oldest => 0,
                    ForwardStart::Latest => store.event_watermark().await?,
                };
                store.save_forward_cursor(&self.cfg.name, start).await?;
                start
            }
        };
        self.set(|s| {
            s.state = "connecting";
            s.cursor = cursor;
        });
        let mut conn = self.connect().await?;
        self.set(|s| {
            s.connections += 1;
            s.state = "forwarding";
        });
        info!(target_name = %self.cfg.name, address = %self.cfg.address, cursor, "Forwarding to the collector");
        let mut progressed = false;
        let mut frame = Vec::new();
        let mut watermark = cursor;
        loop {
            if *shutdown.borrow() {
                return Ok(Session::Stopped);
            }
            let step = async {
                if !lease.is_held().await {
                    return Err(ForwardError::LeaseLost);
                }
                let mut rows = store.query_events(&self.filter(cursor)).await?;
                // Take the (locking, on PostgreSQL) watermark only when rows
                // go past the last one known, or to skip filtered-out rows;
                // then read again, so every read follows the watermark it
                // is cut at and a row at or below it cannot be missed.
                let newest = rows.last().map(|r| r.seq);
                if newest.is_some_and(|n| n > watermark)
                    || (newest.is_none() && store.max_event_seq().await? > cursor.max(watermark))
                {
                    watermark = store.event_watermark().await?;
                    rows = store.query_events(&self.filter(cursor)).await?;
                }
                rows.retain(|r| r.seq <= watermark);
                if rows.is_empty() {
                    if watermark > cursor {
                        // Nothing up to the watermark matches the filter: skip it.
                        store.save_forward_cursor(&self.cfg.name, watermark).await?;
                        cursor = watermark;
                    }
                    if conn.peer_closed().await {
                        return Err(ForwardError::PeerClosed);
                    }
                    return Ok(0);
                }
                if conn.peer_closed().await {
                    return Err(ForwardError::PeerClosed);
                }
                frame.clear();
                for ev in &rows {
                    let msg = syslog_message_capped(ev, &record_value(ev), self.cfg.max_message_bytes);
                    octet_frame(&msg, &mut frame);
                }
                conn.send(&frame).await?;
                conn.confirm(Duration::from_millis(self.cfg.confirm_timeout_ms)).await?;
                let last = rows.last().map_or(cursor, |r| r.seq);
                store.save_forward_cursor(&self.cfg.name, last).await?;
                cursor = last;
                Ok(rows.len())
            };
            match step.await {
                Ok(0) => {
                    self.set(|s| s.cursor = cursor);
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(self.cfg.poll_ms)) => {}
                        _ = shutdown.changed() => {}
                    }
                }
                Ok(n) => {
                    progressed = true;
                    self.set(|s| {
                        s.cursor = cursor;
                        s.sent += n as u64;
                        s.last_sent_at = Some(Utc::now());
                        s.state = "forwarding";
                    });
                }
                Err(e) if progressed => return Ok(Session::Progressed(e)),
                Err(e) => return Err(e),
            }
        }
    }

    async fn connect(&self) -> Result<Conn, ForwardError> {
        let connect = async {
            let tcp = TcpStream::connect(&self.cfg.address)
                .await
                .map_err(ForwardError::Connect)?;
            let _ = tcp.set_nodelay(true);
            match &self.tls {
                None => Ok(Conn::Tcp(tcp)),
                Some((connector, name)) => {
                    let tls = connector
                        .connect(name.clone(), tcp)
                        .await
                        .map_err(ForwardError::Tls)?;
                    Ok(Conn::Tls(Box::new(tls)))
                }
            }
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| ForwardError::ConnectTimeout(CONNECT_TIMEOUT))?
    }
}

/// How a session ended without an error to back off from.
enum Session {
    Stopped,
    Standby,
    /// It sent something before failing: back off from the first step again.
    Progressed(ForwardError),
}

/// `base * 2^(failures-1)`, capped, times a random factor in [0.5, 1.0).
fn backoff(base: Duration, failures: u32, max: Duration) -> Duration {
    let exp = base.saturating_mul(1u32 << failures.saturating_sub(1).min(20));
    let capped = exp.min(max);
    capped.mul_f64(rand::thread_rng().gen_range(0.5..1.0))
}

fn tls_connector(
    cfg: &ForwardConfig,
) -> Result<(tokio_rustls::TlsConnector, rustls::pki_types::ServerName<'static>), ForwardError> {
    let mut roots = rustls::RootCertStore::empty();
    match &cfg.ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|source| ForwardError::CaFile {
                name: cfg.name.clone(),
                path: path.display().to_string(),
                source,
            })?;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()).flatten() {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(ForwardError::NoCerts {
                    name: cfg.name.clone(),
                    path: path.display().to_string(),
                });
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ForwardError::Tls(std::io::Error::other(e)))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let host = cfg.host_port().map_or("", |(h, _)| h);
    let name = cfg.server_name.as_deref().unwrap_or(host).to_string();
    let name = rustls::pki_types::ServerName::try_from(name)
        .map_err(|e| ForwardError::Tls(std::io::Error::other(e)))?;
    Ok((tokio_rustls::TlsConnector::from(Arc::new(client)), name))
}

// === impl Conn ===

enum Conn {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Conn {
    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Tcp(t) => t,
            Conn::Tls(t) => t.get_ref().0,
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), ForwardError> {
        let r = match self {
            Conn::Tcp(t) => async { t.write_all(bytes).await?; t.flush().await }.await,
            Conn::Tls(t) => async { t.write_all(bytes).await?; t.flush().await }.await,
        };
        r.map_err(ForwardError::Send)
    }

    /// A collector never sends; anything readable (EOF, an error, a TLS
    /// close_notify) means it has gone.
    async fn peer_closed(&mut self) -> bool {
        let mut buf = [0u8; 512];
        let read = async {
            match self {
                Conn::Tcp(t) => t.read(&mut buf).await,
                Conn::Tls(t) => t.read(&mut buf).await,
            }
        };
        match tokio::time::timeout(Duration::ZERO, read).await {
            Err(_) => false,
            Ok(Ok(n)) => n == 0,
            Ok(Err(_)) => true,
        }
    }

    /// Wait until the peer's TCP stack acknowledged everything written.
    async fn confirm(&self, limit: Duration) -> Result<(), ForwardError> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut pause = Duration::from_millis(1);
        loop {
            if let Some(e) = self.tcp().take_error().map_err(ForwardError::Send)? {
                return Err(ForwardError::Send(e));
            }
            let left = unacked_bytes(self.tcp()).map_err(ForwardError::Send)?;
            if left == 0 {
                // A reset empties the send queue too: make sure none arrived.
                return match self.tcp().take_error().map_err(ForwardError::Send)? {
                    Some(e) => Err(ForwardError::Send(e)),
                    None => Ok(()),
                };
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ForwardError::NotAcknowledged(left));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }
}

/// Bytes written to `s` that the peer has not acknowledged yet.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn unacked_bytes(s: &TcpStream) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one c_int through the pointer,
    // which points at `n`; the fd is a live TCP socket borrowed from `s`.
    let r = unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut n as *mut libc::c_int) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(usize::try_from(n).unwrap_or(0))
}

/// Without `TIOCOUTQ` a flushed write counts as delivered (see the module docs).
#[cfg(not(target_os = "linux"))]
fn unacked_bytes(_: &TcpStream) -> std::io::Result<usize> {
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let max = Duration::from_secs(30);
        for failures in 1..40 {
            let d = backoff(BASE_BACKOFF, failures, max);
            let full = BASE_BACKOFF.saturating_mul(1 << (failures - 1).min(20)).min(max);
            assert!(d >= full / 2 && d < full, "{failures}: {d:?} vs {full:?}");
        }
    }
}
