//! Live inventory: `notify` watchers on the parent directories of every
//! config path (non-recursive), debounced, re-scanning on change and sending
//! the diff; plus a periodic full rescan as a backstop for anything the
//! watchers miss (new homes, projects deep under a walked root).
//!
//! The idle loop must never poll: it blocks on the event channel, the
//! rescan timer and the shutdown signal. Access (open/read) events are
//! ignored so our own reads cannot trigger rescans.

use crate::model::{Inventory, InventoryChange};
use crate::scan::{scan, ScanConfig};
use notify::{EventKind, RecursiveMode, Watcher};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(500);
/// Longest a burst of events can postpone a rescan.
pub const DEFAULT_MAX_DEBOUNCE: Duration = Duration::from_secs(5);
pub const DEFAULT_RESCAN_INTERVAL: Duration = Duration::from_secs(15 * 60);
const EVENT_QUEUE: usize = 1024;
const CHANGE_QUEUE: usize = 64;

#[derive(Debug, Clone)]
pub struct WatchConfig {
    pub scan: ScanConfig,
    /// Quiet time after the last event before rescanning.
    pub debounce: Duration,
    pub max_debounce: Duration,
    /// Full rescan interval (backstop).
    pub rescan_interval: Duration,
}

impl WatchConfig {
    pub fn new(scan: ScanConfig) -> Self {
        Self {
            scan,
            debounce: DEFAULT_DEBOUNCE,
            max_debounce: DEFAULT_MAX_DEBOUNCE,
            rescan_interval: DEFAULT_RESCAN_INTERVAL,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot create file watcher: {0}")]
    Notify(#[from] notify::Error),
}

/// A change sent by [`watch`], with the full inventory it leads to.
#[derive(Debug, Clone)]
pub struct WatchUpdate {
    pub change: InventoryChange,
    pub inventory: Arc<Inventory>,
    /// True for the first update (everything found is in `change.added`).
    pub initial: bool,
}

/// Stops the watcher when dropped or on [`WatchHandle::stop`].
#[derive(Debug)]
pub struct WatchHandle {
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl WatchHandle {
    /// Stop and wait for the loop to end.
    pub async fn stop(mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
    }
}

/// Start watching. Must be called inside a tokio runtime. The first update
/// is the initial scan; later ones arrive only when something changed.
pub fn watch(cfg: WatchConfig) -> Result<(WatchHandle, mpsc::Receiver<WatchUpdate>), WatchError> {
    let (ev_tx, ev_rx) = mpsc::channel::<Vec<PathBuf>>(EVENT_QUEUE);
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
        Ok(ev) if matches!(ev.kind, EventKind::Access(_)) => {}
        Ok(ev) => {
            // Full queue: a rescan is already due, dropping is fine.
            let _ = ev_tx.try_send(ev.paths);
        }
        Err(error) => warn!(%error, "File watcher error"),
    })?;
    let (out_tx, out_rx) = mpsc::channel(CHANGE_QUEUE);
    let (sd_tx, sd_rx) = oneshot::channel();
    let task = tokio::spawn(run(cfg, watcher, ev_rx, out_tx, sd_rx));
    Ok((
        WatchHandle {
            shutdown: Some(sd_tx),
            task: Some(task),
        },
        out_rx,
    ))
}

async fn rescan(cfg: &ScanConfig) -> Inventory {
    let cfg = cfg.clone();
    match tokio::task::spawn_blocking(move || scan(&cfg)).await {
        Ok(inv) => inv,
        Err(error) => {
            warn!(%error, "Scan task failed");
            Inventory::default()
        }
    }
}

/// Directories to watch for `candidates`: each candidate dir itself, and the
/// nearest existing ancestor of each candidate (so creating `~/.cursor/`
/// and then `mcp.json` is seen).
fn dirs_to_watch(candidates: &[PathBuf], root: &Path) -> BTreeSet<PathBuf> {
    let mut dirs = BTreeSet::new();
    for c in candidates {
        if c.is_dir() {
            dirs.insert(c.clone());
        }
        let mut p = c.parent();
        while let Some(d) = p {
            if d.is_dir() {
                dirs.insert(d.to_path_buf());
                break;
            }
            if d == root {
                break;
            }
            p = d.parent();
        }
    }
    dirs
}

/// Paths whose events matter: candidates, their ancestors, and entries of
/// candidate directories.
fn interesting(candidates: &[PathBuf]) -> BTreeSet<PathBuf> {
    let mut s = BTreeSet::new();
    for c in candidates {
        for a in c.ancestors() {
            if !s.insert(a.to_path_buf()) {
                break;
            }
        }
    }
    s
}

/// Whether an event on `paths` can change the inventory: it names a
/// candidate or one of its ancestors, or an entry of a candidate directory.
fn matters(paths: &[PathBuf], interesting: &BTreeSet<PathBuf>, candidates: &BTreeSet<PathBuf>) -> bool {
    // An event with no path (queue overflow) always matters.
    paths.is_empty()
        || paths.iter().any(|p| interesting.contains(p) || p.parent().is_some_and(|d| candidates.contains(d)))
}

struct Watched<W: Watcher> {
    watcher: W,
    dirs: BTreeSet<PathBuf>,
    interesting: BTreeSet<PathBuf>,
    candidates: BTreeSet<PathBuf>,
}

impl<W: Watcher> Watched<W> {
    fn update(&mut self, inv: &Inventory, root: &Path) {
        let want = dirs_to_watch(&inv.candidates, root);
        for d in self.dirs.difference(&want) {
            let _ = self.watcher.unwatch(d);
        }
        let mut now = BTreeSet::new();
        for d in &want {
            if self.dirs.contains(d) {
                now.insert(d.clone());
                continue;
            }
            match self.watcher.watch(d, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    now.insert(d.clone());
                }
                Err(error) => debug!(%error, dir = %d.display(), "Cannot watch directory"),
            }
        }
        self.dirs = now;
        self.interesting = interesting(&inv.candidates);
        self.candidates = inv.candidates.iter().cloned().collect();
    }
}

async fn run<W: Watcher + Send + 'static>(
    cfg: WatchConfig,
    watcher: W,
    mut ev_rx: mpsc::Receiver<Vec<PathBuf>>,
    out: mpsc::Sender<WatchUpdate>,
    mut shutdown: oneshot::Receiver<()>,
) {
    let mut current = rescan(&cfg.scan).await;
    let mut w = Watched {
        watcher,
        dirs: BTreeSet::new(),
        interesting: BTreeSet::new(),
        candidates: BTreeSet::new(),
    };
    w.update(&current, &cfg.scan.root);
    info!(servers = current.servers.len(), dirs = w.dirs.len(), "MCP inventory watch started");
    let first = WatchUpdate {
        change: Inventory::default().diff(&current),
        inventory: Arc::new(current.clone()),
        initial: true,
    };
    if out.send(first).await.is_err() {
        return;
    }
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + cfg.rescan_interval, cfg.rescan_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            ev = ev_rx.recv() => {
                let Some(paths) = ev else { break };
                if !matters(&paths, &w.interesting, &w.candidates) {
                    continue;
                }
                // Debounce: wait for quiet, but no longer than max_debounce.
                let hard = tokio::time::sleep(cfg.max_debounce);
                tokio::pin!(hard);
                loop {
                    tokio::select! {
                        _ = &mut hard => break,
                        _ = tokio::time::sleep(cfg.debounce) => break,
                        more = ev_rx.recv() => if more.is_none() { break },
                    }
                }
            }
            _ = interval.tick() => debug!("Periodic MCP rescan"),
        }
        let next = rescan(&cfg.scan).await;
        w.update(&next, &cfg.scan.root);
        let change = current.diff(&next);
        current = next;
        if change.is_empty() {
            continue;
        }
        info!(
            added = change.added.len(),
            removed = change.removed.len(),
            changed = change.changed.len(),
            findings = change.new_findings.len(),
            "MCP inventory changed"
        );
        let upd = WatchUpdate {
            change,
            inventory: Arc::new(current.clone()),
            initial: false,
        };
        if out.send(upd).await.is_err() {
            break;
        }
    }
    debug!("MCP inventory watch stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn put(path: &Path, bytes: &[u8]) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    async fn next(rx: &mut mpsc::Receiver<WatchUpdate>) -> WatchUpdate {
        tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("an update within 30s")
            .expect("channel open")
    }

    #[tokio::test]
    async fn a_new_server_in_a_config_is_reported() {
        let root = tempfile::tempdir().unwrap();
        let home = root.path().join("home/u");
        let f = home.join(".cursor/mcp.json");
        put(&f, br#"{"mcpServers": {"a": {"command": "a"}}}"#);
        let mut cfg = WatchConfig::new(ScanConfig::for_homes(root.path(), vec![home.clone()]));
        cfg.debounce = Duration::from_millis(100);
        cfg.rescan_interval = Duration::from_secs(3600);
        let (handle, mut rx) = watch(cfg).unwrap();
        let first = next(&mut rx).await;
        assert!(first.initial);
        assert_eq!(first.change.added.len(), 1);

        put(&f, br#"{"mcpServers": {"a": {"command": "a"}, "b": {"command": "npx", "args": ["b-mcp"]}}}"#);
        let upd = next(&mut rx).await;
        assert!(!upd.initial);
        assert_eq!(upd.change.added.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), vec!["b"]);
        assert_eq!(upd.inventory.servers.len(), 2);

        // A config in a directory that did not exist at start.
        put(&home.join(".gemini/settings.json"), br#"{"mcpServers": {"g": {"httpUrl": "https://g.example/mcp"}}}"#);
        let upd = next(&mut rx).await;
        assert_eq!(upd.change.added.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), vec!["g"]);

        std::fs::remove_file(&f).unwrap();
        let upd = next(&mut rx).await;
        assert_eq!(upd.change.removed.len(), 2);
        handle.stop().await;
    }

    #[tokio::test]
    async fn periodic_rescan_finds_what_watchers_cannot_see() {
        let root = tempfile::tempdir().unwrap();
        let home = root.path().join("home/u");
        std::fs::create_dir_all(&home).unwrap();
        let work = root.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        let mut scan_cfg = ScanConfig::for_homes(root.path(), vec![home]);
        scan_cfg.extra_project_roots = vec![work.clone()];
        let mut cfg = WatchConfig::new(scan_cfg);
        cfg.rescan_interval = Duration::from_millis(200);
        let (handle, mut rx) = watch(cfg).unwrap();
        assert!(next(&mut rx).await.change.added.is_empty());
        put(&work.join("deep/proj/.mcp.json"), br#"{"mcpServers": {"p": {"command": "p"}}}"#);
        let upd = next(&mut rx).await;
        assert_eq!(upd.change.added[0].name, "p");
        handle.stop().await;
    }

    #[test]
    fn watches_nearest_existing_ancestor() {
        let root = tempfile::tempdir().unwrap();
        let home = root.path().join("home/u");
        std::fs::create_dir_all(home.join(".cursor")).unwrap();
        let cands = vec![home.join(".cursor/mcp.json"), home.join(".config/zed/settings.json")];
        let dirs = dirs_to_watch(&cands, root.path());
        assert_eq!(dirs, [home.join(".cursor"), home.clone()].into_iter().collect());
        let set = interesting(&cands);
        let cont = home.join(".continue/mcpServers");
        let cset: BTreeSet<PathBuf> = cands.iter().cloned().chain([cont.clone()]).collect();
        assert!(matters(&[home.join(".config")], &set, &cset));
        assert!(matters(&[home.join(".cursor/mcp.json")], &set, &cset));
        assert!(matters(&[cont.join("new.yaml")], &set, &cset));
        assert!(matters(&[], &set, &cset));
        assert!(!matters(&[home.join(".bash_history")], &set, &cset));
        assert!(!matters(&[home.join(".cursor/extensions")], &set, &cset));
    }
}
