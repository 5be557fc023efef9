//! Per-process attribution: which local process opened a TCP connection to
//! the proxy, so every record can name the app (name, executable, pid) and
//! the OS user behind it.
//!
//! Lookups are best effort and must never panic or block for long: an
//! attribution failure becomes an `AppRef` with `unknown_reason`, never a
//! dropped request. This module only reads process metadata; it must never
//! signal, trace or otherwise touch the processes it looks at.

mod procnet;
#[cfg(target_os = "linux")]
mod sockdiag;
mod unsupported;
mod users;

#[cfg(test)]
mod tests;

pub use procnet::ProcNetAttributor;
pub use unsupported::UnsupportedAttributor;
pub use users::{current_os_user, user_name_for_uid};

use palisade_core::AppRef;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// The process that holds one end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    /// Short process name (`comm` on Linux).
    pub name: String,
    /// Executable path, when readable.
    pub exe: Option<PathBuf>,
    /// Owner of the socket.
    pub uid: Option<u32>,
    /// User name for `uid`, when it resolves.
    pub user: Option<String>,
}

/// Why a connection could not be attributed.
#[derive(Debug, thiserror::Error)]
pub enum AttributionError {
    #[error("process attribution is not implemented on {os}")]
    Unsupported { os: &'static str },
    #[error("no TCP socket from {peer} to {local} in the kernel's socket tables")]
    SocketNotFound { peer: SocketAddr, local: SocketAddr },
    #[error("socket from {peer} (inode {inode}) has no owning process this agent can see")]
    OwnerNotFound { peer: SocketAddr, inode: u64 },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} line {line}: {reason}")]
    Parse {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("attribution lookup did not complete: {0}")]
    Interrupted(String),
}

/// Maps a connection seen by the proxy to the local process that opened it.
pub trait Attributor: Send + Sync + 'static {
    /// `peer` is the client's address as the proxy sees it (the client's
    /// local end), `local` is the proxy's listening side.
    fn lookup(&self, peer: SocketAddr, local: SocketAddr) -> Result<ProcessInfo, AttributionError>;
}

/// The attributor for this OS: [`ProcNetAttributor`] on Linux, otherwise an
/// [`UnsupportedAttributor`] that says so on every lookup.
pub fn platform_attributor() -> Arc<dyn Attributor> {
    if cfg!(target_os = "linux") {
        Arc::new(ProcNetAttributor::new())
    } else {
        Arc::new(UnsupportedAttributor::new(std::env::consts::OS))
    }
}

/// [`Attributor::lookup`] on the blocking pool, so a cold lookup (a scan of
/// every process's fds, milliseconds on a busy host) never stalls the
/// proxy's executor threads.
pub async fn lookup_off_executor(
    attributor: Arc<dyn Attributor>,
    peer: SocketAddr,
    local: SocketAddr,
) -> Result<ProcessInfo, AttributionError> {
    tokio::task::spawn_blocking(move || attributor.lookup(peer, local))
        .await
        .unwrap_or_else(|e| Err(AttributionError::Interrupted(e.to_string())))
}

/// The record's `app` for a lookup result: the process, or all-`None` with
/// the reason it is unknown.
pub fn app_ref(result: &Result<ProcessInfo, AttributionError>) -> AppRef {
    match result {
        Ok(p) => AppRef {
            name: Some(p.name.clone()),
            exe: p.exe.as_ref().map(|e| e.display().to_string()),
            pid: Some(p.pid),
            ..Default::default()
        },
        Err(e) => AppRef {
            unknown_reason: Some(e.to_string()),
            ..Default::default()
        },
    }
}

/// Treat `::ffff:a.b.c.d` as `a.b.c.d` so IPv4 clients of a dual-stack
/// listener match the IPv4 socket table and vice versa.
pub(crate) fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}
