//! Small measuring helpers: percentiles and /proc readings (RSS, CPU time).
//! Pure parsing is separated from file reading so it can be tested; nothing
//! here may touch the network or another process beyond reading /proc.

use std::time::Duration;

/// Kernel clock ticks per second for /proc/<pid>/stat times (USER_HZ, 100 on Linux).
const USER_HZ: f64 = 100.0;

/// Nearest-rank percentile `p` (0.0..=1.0) of sorted `v`; `None` when empty.
pub fn percentile(v: &[Duration], p: f64) -> Option<Duration> {
    if v.is_empty() || !(0.0..=1.0).contains(&p) {
        return None;
    }
    let rank = (p * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

/// Milliseconds with three decimals, for printing.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Value in kB of a `Key:   123 kB` line in /proc/<pid>/status text.
pub fn status_kb(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Resident set of `pid` now and at its peak (VmRSS, VmHWM), in kB.
pub fn rss_kb(pid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some((status_kb(&s, "VmRSS")?, status_kb(&s, "VmHWM")?))
}

/// User + system CPU seconds from /proc/<pid>/stat text.
pub fn stat_cpu_secs(stat: &str) -> Option<f64> {
    // The command name (field 2) may hold spaces and parentheses: fields
    // after the last ')' are fixed. utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// CPU seconds `pid` has used so far.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    stat_cpu_secs(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Busy and total CPU seconds of the whole machine (all cores) from /proc/stat text.
pub fn proc_stat_cpu_secs(stat: &str) -> Option<(f64, f64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).map(|x| x.parse().ok()).collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]; guest time is already in user.
    if v.len() < 8 {
        return None;
    }
    let total: u64 = v[..8].iter().sum();
    let idle = v[3] + v[4];
    Some(((total - idle) as f64 / USER_HZ, total as f64 / USER_HZ))
}

/// Busy and total CPU seconds of the whole machine so far.
pub fn machine_cpu_secs() -> Option<(f64, f64)> {
    proc_stat_cpu_secs(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// CPU seconds used so far by every process whose command name is `comm`
/// (e.g. the `postgres` backends, which do the database work for the server).
pub fn cpu_secs_named(comm: &str) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0.0 };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == comm))
        .filter_map(cpu_secs)
        .sum()
}

/// CPU used by everything on the machine during a phase, split into ours and others'.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuShare {
    /// Server process CPU seconds.
    pub server: f64,
    /// Load generator CPU seconds.
    pub client: f64,
    /// PostgreSQL backends (processes named `postgres`), CPU seconds. Backends
    /// that exit during the phase are missed, so this is a lower bound.
    pub database: f64,
    /// Other processes (and the kernel on their behalf), CPU seconds.
    pub others: f64,
    /// CPU seconds the machine had (cores x wall).
    pub capacity: f64,
}

/// Snapshot to take at the start of a phase.
#[derive(Debug, Clone, Copy)]
pub struct CpuMark {
    server: f64,
    client: f64,
    database: f64,
    busy: f64,
    total: f64,
}

impl CpuMark {
    pub fn now(server_pid: u32) -> Option<Self> {
        let (busy, total) = machine_cpu_secs()?;
        Some(Self {
            server: cpu_secs(server_pid)?,
            client: cpu_secs(std::process::id())?,
            database: cpu_secs_named("postgres"),
            busy,
            total,
        })
    }

    /// CPU used since `self`.
    pub fn since(&self, server_pid: u32) -> Option<CpuShare> {
        let now = Self::now(server_pid)?;
        let server = now.server - self.server;
        let client = now.client - self.client;
        let database = (now.database - self.database).max(0.0);
        let busy = now.busy - self.busy;
        Some(CpuShare {
            server,
            client,
            database,
            others: (busy - server - client - database).max(0.0),
            capacity: now.total - self.total,
        })
    }
}

impl std::fmt::Display for CpuShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pct = |x: f64| x / self.capacity.max(1e-9) * 100.0;
        write!(
            f,
            "machine CPU: server {:.0}%, load generator {:.0}%, postgres {:.0}%, other processes {:.0}%, idle {:.0}% (of all cores)",
            pct(self.server),
            pct(self.client),
            pct(self.database),
            pct(self.others),
            (100.0 - pct(self.server + self.client + self.database + self.others)).max(0.0)
        )
    }
}

/// kB as MiB, for printing.
pub fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<_> = (1..=100).map(d).collect();
        assert_eq!(percentile(&v, 0.5), Some(d(50)));
        assert_eq!(percentile(&v, 0.99), Some(d(99)));
        assert_eq!(percentile(&v, 1.0), Some(d(100)));
        assert_eq!(percentile(&v, 0.0), Some(d(1)));
        assert_eq!(percentile(&[d(7)], 0.99), Some(d(7)));
    }

    #[test]
    fn percentile_of_nothing_or_out_of_range_is_none() {
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(percentile(&[d(1)], 1.5), None);
        assert_eq!(percentile(&[d(1)], -0.1), None);
    }

    #[test]
    fn status_lines_parse() {
        let s = "Name:\tpalisade-server\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\nThreads:\t3\n";
        assert_eq!(status_kb(s, "VmRSS"), Some(102_400));
        assert_eq!(status_kb(s, "VmHWM"), Some(204_800));
    }

    #[test]
    fn missing_or_garbled_status_lines_are_none() {
        assert_eq!(status_kb("Name:\tx\n", "VmRSS"), None);
        assert_eq!(status_kb("VmRSS:\tlots kB\n", "VmRSS"), None);
        assert_eq!(status_kb("VmRSS:\n", "VmRSS"), None);
        // A key that is only a prefix of another must not match it.
        assert_eq!(status_kb("VmRSSX:\t5 kB\n", "VmRSS"), None);
    }

    #[test]
    fn stat_cpu_skips_a_command_name_with_spaces() {
        let stat = "1234 (tokio (rt) w) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 50 0 0 20 0 9 0 100 0 0";
        assert_eq!(stat_cpu_secs(stat), Some(3.0));
    }

    #[test]
    fn garbled_stat_is_none() {
        assert_eq!(stat_cpu_secs("no parenthesis here"), None);
        assert_eq!(stat_cpu_secs("1 (x) S 1 2"), None);
        assert_eq!(stat_cpu_secs("1 (x) S 1 1 1 0 -1 0 0 0 0 0 abc 5"), None);
    }

    #[test]
    fn proc_stat_splits_busy_from_idle_and_iowait() {
        let s = "cpu  100 10 50 800 40 0 0 0 0 0\ncpu0 50 5 25 400 20 0 0 0 0 0\n";
        assert_eq!(proc_stat_cpu_secs(s), Some((1.6, 10.0)));
    }

    #[test]
    fn garbled_proc_stat_is_none() {
        assert_eq!(proc_stat_cpu_secs("intr 1 2 3\n"), None);
        assert_eq!(proc_stat_cpu_secs("cpu  1 2 3\n"), None);
        assert_eq!(proc_stat_cpu_secs("cpu  1 2 x 4 5 6 7 8\n"), None);
    }

    #[test]
    fn cpu_share_prints_percentages_of_capacity() {
        let s = CpuShare { server: 5.0, client: 1.0, database: 3.0, others: 2.0, capacity: 20.0 };
        assert_eq!(
            s.to_string(),
            "machine CPU: server 25%, load generator 5%, postgres 15%, other processes 10%, idle 45% (of all cores)"
        );
    }

    #[test]
    fn own_process_can_be_read() {
        let pid = std::process::id();
        let (rss, hwm) = rss_kb(pid).unwrap();
        assert!(rss > 0 && hwm >= rss);
        assert!(cpu_secs(pid).is_some());
        let (busy, total) = machine_cpu_secs().unwrap();
        assert!(total >= busy && busy >= 0.0);
    }
}
