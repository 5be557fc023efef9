//! Linux attribution from procfs: find the client socket in
//! `/proc/net/tcp{,6}` (its inode and uid), then the process whose
//! `/proc/<pid>/fd/*` links to `socket:[inode]`.
//!
//! Only reads procfs. Entries we may not read (other users' processes when
//! not root) are skipped, never fatal; this module must never panic on what
//! the kernel or a fixture hands it.

use super::{canonical, user_name_for_uid, AttributionError, Attributor, ProcessInfo};
use std::collections::VecDeque;
use std::ffi::OsStr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tracing::debug;

/// Default procfs mount point.
pub const PROC_ROOT: &str = "/proc";

/// One row of `/proc/net/tcp` or `/proc/net/tcp6`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SocketEntry {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub uid: u32,
    pub inode: u64,
}

/// How many recently matched pids are checked before a full scan.
const RECENT_PIDS: usize = 16;

/// Attributes sockets by reading a procfs tree (by default `/proc`).
///
/// Cost: two socket-table reads, then a scan of `/proc/<pid>/fd`. The pids
/// that held recent connections are checked first (coding agents open many
/// connections from one process), then processes owned by the socket's uid,
/// then the rest. Lookups do blocking file I/O: call them off the async
/// executor (`spawn_blocking`).
#[derive(Debug)]
pub struct ProcNetAttributor {
    root: PathBuf,
    /// Ask the kernel for the one socket over netlink before reading the
    /// procfs tables (only against the real `/proc`).
    netlink: bool,
    recent: Mutex<VecDeque<u32>>,
}

impl Default for ProcNetAttributor {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcNetAttributor {
    pub fn new() -> Self {
        Self {
            netlink: cfg!(target_os = "linux"),
            ..Self::with_root(PROC_ROOT)
        }
    }

    /// Read procfs from `root` instead of `/proc` (fixtures, containers).
    pub fn with_root(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            netlink: false,
            recent: Mutex::new(VecDeque::with_capacity(RECENT_PIDS)),
        }
    }

    fn recent_pids(&self) -> Vec<u32> {
        self.recent
            .lock()
            .map(|r| r.iter().copied().collect())
            .unwrap_or_default()
    }

    fn remember(&self, pid: u32) {
        if let Ok(mut r) = self.recent.lock() {
            r.retain(|p| *p != pid);
            r.push_front(pid);
            r.truncate(RECENT_PIDS);
        }
    }

    /// The socket whose local end is `peer` and remote end is `local`.
    fn find_socket(
        &self,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Result<SocketEntry, AttributionError> {
        let (want_local, want_remote) = (canonical(peer), canonical(local));
        #[cfg(target_os = "linux")]
        if self.netlink {
            use super::sockdiag::{self, DiagError};
            match sockdiag::lookup(want_local, want_remote) {
                Ok(e) => {
                    return Ok(SocketEntry {
                        local: peer,
                        remote: local,
                        uid: e.uid,
                        inode: e.inode,
                    })
                }
                Err(DiagError::NotFound) => {
                    return Err(AttributionError::SocketNotFound { peer, local })
                }
                Err(DiagError::Unavailable(why)) => {
                    debug!(why, "sock_diag unavailable; reading /proc/net/tcp")
                }
            }
        }
        let mut read_any = false;
        for table in ["net/tcp", "net/tcp6"] {
            let path = self.root.join(table);
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                // A kernel without IPv6 has no tcp6; only fail if neither table exists.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(AttributionError::Io { path, source }),
            };
            read_any = true;
            for entry in parse_table(&path, &text)? {
                if canonical(entry.local) == want_local && canonical(entry.remote) == want_remote {
                    return Ok(entry);
                }
            }
        }
        if !read_any {
            let path = self.root.join("net/tcp");
            return Err(AttributionError::Io {
                path,
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no TCP socket table"),
            });
        }
        Err(AttributionError::SocketNotFound { peer, local })
    }

    /// The pid holding `socket:[inode]`: recently matched pids first, then
    /// processes owned by `uid` (a socket's uid is usually its creator's),
    /// then everyone else.
    fn find_owner(&self, inode: u64, uid: u32) -> Option<u32> {
        let target = format!("socket:[{inode}]");
        let recent = self.recent_pids();
        if let Some(pid) = recent.iter().copied().find(|pid| self.holds(*pid, &target)) {
            self.remember(pid);
            return Some(pid);
        }
        let dir = std::fs::read_dir(&self.root).ok()?;
        let mut pids: Vec<(bool, u32)> = dir
            .filter_map(Result::ok)
            .filter_map(|e| {
                let pid: u32 = e.file_name().to_str()?.parse().ok()?;
                Some((owner_uid(&e.path()) != Some(uid), pid))
            })
            .filter(|(_, pid)| !recent.contains(pid))
            .collect();
        pids.sort_unstable();
        let pid = pids
            .into_iter()
            .map(|(_, pid)| pid)
            .find(|pid| self.holds(*pid, &target))?;
        self.remember(pid);
        Some(pid)
    }

    fn holds(&self, pid: u32, target: &str) -> bool {
        let Ok(fds) = std::fs::read_dir(self.root.join(pid.to_string()).join("fd")) else {
            return false; // gone, or another user's process
        };
        fds.filter_map(Result::ok).any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == OsStr::new(target))
        })
    }

    fn describe(&self, pid: u32, uid: u32) -> ProcessInfo {
        let dir = self.root.join(pid.to_string());
        let name = std::fs::read_to_string(dir.join("comm"))
            .map(|c| c.trim_end_matches('\n').to_string())
            .unwrap_or_default();
        let exe = std::fs::read_link(dir.join("exe"))
            .ok()
            .map(|p| strip_deleted(&p));
        ProcessInfo {
            pid,
            name,
            exe,
            uid: Some(uid),
            user: user_name_for_uid(uid),
        }
    }
}

impl Attributor for ProcNetAttributor {
    fn lookup(&self, peer: SocketAddr, local: SocketAddr) -> Result<ProcessInfo, AttributionError> {
        let entry = self.find_socket(peer, local)?;
        if entry.inode == 0 {
            // Orphaned / TIME_WAIT sockets have no inode and no process.
            return Err(AttributionError::OwnerNotFound { peer, inode: 0 });
        }
        let pid =
            self.find_owner(entry.inode, entry.uid)
                .ok_or(AttributionError::OwnerNotFound {
                    peer,
                    inode: entry.inode,
                })?;
        let info = self.describe(pid, entry.uid);
        debug!(%peer, pid, name = %info.name, "Attributed connection");
        Ok(info)
    }
}

#[cfg(unix)]
fn owner_uid(path: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.uid())
}

#[cfg(not(unix))]
fn owner_uid(_path: &Path) -> Option<u32> {
    None
}

/// The kernel appends " (deleted)" to the exe link of a replaced binary.
fn strip_deleted(p: &Path) -> PathBuf {
    match p.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
        Some(s) => PathBuf::from(s),
        None => p.to_path_buf(),
    }
}

/// Parse a whole `/proc/net/tcp{,6}` table (header line first).
pub(crate) fn parse_table(path: &Path, text: &str) -> Result<Vec<SocketEntry>, AttributionError> {
    text.lines()
        .enumerate()
        .skip(1)
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            parse_line(l).map_err(|reason| AttributionError::Parse {
                path: path.to_path_buf(),
                line: i + 1,
                reason,
            })
        })
        .collect()
}

/// Parse one row: `sl local rem st queues tr retrnsmt uid timeout inode ...`.
pub(crate) fn parse_line(line: &str) -> Result<SocketEntry, String> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 10 {
        return Err(format!("expected at least 10 fields, found {}", f.len()));
    }
    let local = parse_addr(f[1])?;
    let remote = parse_addr(f[2])?;
    let uid = f[7].parse().map_err(|_| format!("bad uid {:?}", f[7]))?;
    let inode = f[9].parse().map_err(|_| format!("bad inode {:?}", f[9]))?;
    Ok(SocketEntry {
        local,
        remote,
        uid,
        inode,
    })
}

/// Parse `HEXIP:HEXPORT`. The address is the kernel's network-order bytes
/// printed as host-order 32-bit words (so little-endian on x86); the port is
/// a plain host-order number.
pub(crate) fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    let (ip, port) = s
        .split_once(':')
        .ok_or_else(|| format!("address {s:?} has no ':'"))?;
    let port = u16::from_str_radix(port, 16).map_err(|_| format!("bad port in {s:?}"))?;
    if !ip.is_ascii() {
        return Err(format!("address {s:?} is not hex"));
    }
    let word = |w: &str| {
        u32::from_str_radix(w, 16)
            .map(u32::to_ne_bytes)
            .map_err(|_| format!("bad address {s:?}"))
    };
    let ip: IpAddr = match ip.len() {
        8 => Ipv4Addr::from(word(ip)?).into(),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_exact_mut(4).enumerate() {
                chunk.copy_from_slice(&word(&ip[i * 8..i * 8 + 8])?);
            }
            Ipv6Addr::from(bytes).into()
        }
        n => {
            return Err(format!(
                "address {s:?} has {n} hex digits, expected 8 or 32"
            ))
        }
    };
    Ok(SocketAddr::new(ip, port))
}
