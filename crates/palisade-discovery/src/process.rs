//! The processes running on the device, behind a trait so app matching and
//! MCP process stopping are unit-tested with fake process lists.
//!
//! Command lines often carry secrets (`--api-key ...`), so [`ProcInfo`]'s
//! Debug never prints arguments, and nothing here logs them. This module must
//! never signal a process: that is [`crate::enforce`]'s job, through
//! [`ProcessLister::terminate`].

use std::fmt;
use std::path::PathBuf;

/// One process, as much as the platform tells us.
#[derive(Clone, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: u32,
    /// Short process name (on Linux, the 15-byte `comm`).
    pub name: String,
    pub exe: Option<PathBuf>,
    /// Full argv, `cmd[0]` included. May hold secrets: never log it.
    pub cmd: Vec<String>,
}

impl fmt::Debug for ProcInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcInfo")
            .field("pid", &self.pid)
            .field("name", &self.name)
            .field("exe", &self.exe)
            .field("cmd", &format_args!("[{} args]", self.cmd.len()))
            .finish()
    }
}

/// Signals we send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    Term,
    Kill,
}

/// Lists processes and signals them. Injectable for tests.
pub trait ProcessLister: Send + Sync {
    fn list(&self) -> Vec<ProcInfo>;
    /// Send `sig` to `pid`; false when the process is gone or not ours to signal.
    fn signal(&self, pid: u32, sig: StopSignal) -> bool;
    /// Whether `pid` still exists (and is not a zombie).
    fn alive(&self, pid: u32) -> bool;
}

/// The real process table, through sysinfo.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemProcesses;

impl SystemProcesses {
    fn system_with(pids: Option<&[sysinfo::Pid]>) -> sysinfo::System {
        use sysinfo::{ProcessRefreshKind, ProcessesToUpdate, RefreshKind, UpdateKind};
        let kind = ProcessRefreshKind::nothing()
            .with_exe(UpdateKind::OnlyIfNotSet)
            .with_cmd(UpdateKind::OnlyIfNotSet);
        let mut sys = sysinfo::System::new_with_specifics(RefreshKind::nothing());
        let which = match pids {
            Some(p) => ProcessesToUpdate::Some(p),
            None => ProcessesToUpdate::All,
        };
        sys.refresh_processes_specifics(which, true, kind);
        sys
    }
}

impl ProcessLister for SystemProcesses {
    fn list(&self) -> Vec<ProcInfo> {
        let sys = Self::system_with(None);
        sys.processes()
            .values()
            .filter(|p| p.thread_kind().is_none())
            .map(|p| ProcInfo {
                pid: p.pid().as_u32(),
                name: p.name().to_string_lossy().into_owned(),
                exe: p.exe().map(|e| e.to_path_buf()),
                cmd: p.cmd().iter().map(|a| a.to_string_lossy().into_owned()).collect(),
            })
            .collect()
    }

    fn signal(&self, pid: u32, sig: StopSignal) -> bool {
        let spid = sysinfo::Pid::from_u32(pid);
        let sys = Self::system_with(Some(&[spid]));
        let Some(p) = sys.process(spid) else { return false };
        let s = match sig {
            StopSignal::Term => sysinfo::Signal::Term,
            StopSignal::Kill => sysinfo::Signal::Kill,
        };
        p.kill_with(s).unwrap_or(false)
    }

    fn alive(&self, pid: u32) -> bool {
        let spid = sysinfo::Pid::from_u32(pid);
        let sys = Self::system_with(Some(&[spid]));
        sys.process(spid)
            .is_some_and(|p| !matches!(p.status(), sysinfo::ProcessStatus::Zombie | sysinfo::ProcessStatus::Dead))
    }
}

/// Basename of a path-like string, without a Windows extension.
pub(crate) fn base(s: &str) -> &str {
    let b = s.rsplit(['/', '\\']).next().unwrap_or(s);
    b.strip_suffix(".exe").unwrap_or(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_arguments() {
        let p = ProcInfo {
            pid: 1,
            name: "node".into(),
            exe: None,
            cmd: vec!["node".into(), "--api-key=sk-secret".into()],
        };
        let d = format!("{p:?}");
        assert!(!d.contains("sk-secret") && d.contains("[2 args]"), "{d}");
    }

    #[test]
    fn system_lister_sees_this_process() {
        let me = std::process::id();
        let procs = SystemProcesses.list();
        let p = procs.iter().find(|p| p.pid == me).expect("own pid listed");
        assert!(!p.cmd.is_empty());
        assert!(SystemProcesses.alive(me));
    }

    #[test]
    fn base_strips_dirs_and_exe() {
        assert_eq!(base("/usr/bin/node"), "node");
        assert_eq!(base("C:\\x\\Cursor.exe"), "Cursor");
    }
}
