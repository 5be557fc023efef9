//! Discovery and MCP enforcement on the device: the agent side of
//! `palisade-discovery`.
//!
//! **What it watches.** Every user home's AI client configs (Claude Desktop
//! and Code, Cursor, Windsurf, VS Code, Cline, Gemini CLI, OpenCode, Codex,
//! Zed, Continue, LM Studio) through `palisade_discovery::watch` (file
//! watchers plus a periodic rescan), the catalog apps installed or running
//! (rechecked at the same interval), the policy handle (every change
//! re-applies enforcement) and the recorder's stream (unknown apps seen
//! talking to AI hosts, ids `exe:<name>`). New MCP entries and apps become
//! `mcp.discovered` / `app.discovered` records; the whole inventory goes to
//! the control plane as a full snapshot (see [`report`]).
//!
//! **What it may rewrite, and how it undoes it.** With `discovery.enforce`,
//! a stdio MCP server that policy refuses (deny, or pending while pending
//! means block) is disabled in its client's config by the `Enforcer`: the
//! original bytes are saved under `data_dir/discovery/backups` first, and
//! the undo receipt is persisted in `data_dir/discovery/receipts.json`, so
//! when the decision turns to allow (even after a restart) the file is put
//! back byte for byte (or, if the user edited it since, just the entry).
//! Its running processes are stopped. Claude Code's `managed-settings.json`
//! and Codex's `requirements.toml` (under the scan root) are regenerated
//! from their originals, which come back when nothing is refused. Refused
//! REMOTE servers are never edited out: they are published to the proxy
//! ([`BlockedRemotes`]), which refuses them by URL. Every action is a
//! `mcp.blocked` record.
//!
//! **What it never reads.** Env variable and header VALUES: the discovery
//! crate keeps names only, and this module only moves its value-free records.
//! It never blocks the proxy (file and process work runs on blocking
//! threads) and never waits on the control plane (the reporter is separate).

pub mod remote;
pub mod report;
pub mod state;

#[cfg(test)]
mod tests;

pub use remote::{BlockedRemote, BlockedRemotes};

use crate::config::DiscoveryConfig;
use crate::proxy::ProxyState;
use crate::sync::{InventoryItem, SyncHandle};
use palisade_core::policy::ItemPolicy;
use palisade_core::{AuditEvent, EventKind, UserRef};
use palisade_discovery::enforce::managed::{self, ManagedOutcome, ManagedPaths};
use palisade_discovery::{
    events, AppSighting, Catalog, EnforcementAction, Enforcer, EntryKey, HomeSource, Inventory,
    McpServer, ProcessLister, ScanConfig, SystemProcesses, WatchConfig, WatchUpdate,
};
use state::{PersistedState, StateDir};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, watch};
use tracing::{debug, error, info, warn};

/// Everything the discovery task works with; built by `Agent::start`.
pub struct DiscoveryInputs {
    pub config: DiscoveryConfig,
    pub data_dir: PathBuf,
    pub state: Arc<ProxyState>,
    pub sync: Option<SyncHandle>,
    pub catalog: Arc<Catalog>,
}

/// Tuning the defaults get right for a fleet; tests shorten them.
#[derive(Debug, Clone)]
pub struct DiscoveryOptions {
    /// Quiet time after a file event before rescanning.
    pub debounce: Duration,
    /// SIGTERM -> SIGKILL grace for a refused server's processes.
    pub stop_grace: Duration,
}

impl Default for DiscoveryOptions {
    fn default() -> Self {
        Self {
            debounce: palisade_discovery::watch::DEFAULT_DEBOUNCE,
            stop_grace: palisade_discovery::enforce::DEFAULT_STOP_GRACE,
        }
    }
}

/// The discovery task, ready to [`run`](Discovery::run).
pub struct Discovery {
    inputs: DiscoveryInputs,
    opts: DiscoveryOptions,
}

/// The Enforcer and what it needs on a blocking thread.
struct EnforceCtx {
    enforcer: Enforcer,
    managed: ManagedPaths,
    managed_state: PathBuf,
    /// The last managed-file error, so a persistent one is recorded once.
    last_managed_error: Option<String>,
}

/// The task's memory while running.
struct Live {
    inputs: DiscoveryInputs,
    dir: StateDir,
    persisted: PersistedState,
    /// Servers enforcement needs: the current ones plus refused ones that
    /// left the configs.
    remembered: BTreeMap<EntryKey, McpServer>,
    inventory: Option<Arc<Inventory>>,
    apps: Vec<AppSighting>,
    traffic_apps: BTreeMap<String, AppSighting>,
    enforce: Option<Arc<Mutex<EnforceCtx>>>,
    report_tx: watch::Sender<Option<Arc<Vec<InventoryItem>>>>,
    /// What the watcher scans; used for our own re-check scans.
    scan: ScanConfig,
    /// When to re-check configs we just edited (see [`Live::recheck`]).
    recheck_at: Option<tokio::time::Instant>,
    recheck_delay: Duration,
}

// === impl Discovery ===

impl Discovery {
    pub fn new(inputs: DiscoveryInputs) -> Self {
        Self {
            inputs,
            opts: DiscoveryOptions::default(),
        }
    }

    pub fn set_options(&mut self, opts: DiscoveryOptions) {
        self.opts = opts;
    }

    /// The watch configuration for `cfg`.
    fn watch_config(&self) -> WatchConfig {
        let cfg = &self.inputs.config;
        let scan = ScanConfig {
            root: cfg.scan_root(),
            homes: match &cfg.homes {
                Some(h) => HomeSource::Explicit(h.clone()),
                None => HomeSource::Auto,
            },
            // The agent runs as root on a device; `$HOME` only matters when a
            // user runs it by hand against the real root.
            current_home: match (&cfg.root, &cfg.homes) {
                (None, None) => std::env::var_os("HOME").map(PathBuf::from),
                _ => None,
            },
            ..ScanConfig::default()
        };
        let mut w = WatchConfig::new(scan);
        w.debounce = self.opts.debounce;
        w.rescan_interval = Duration::from_secs(cfg.rescan_interval_secs);
        w
    }

    /// Watch, report and enforce until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let wcfg = self.watch_config();
        let scan = wcfg.scan.clone();
        let recheck_delay = wcfg.debounce * 4 + Duration::from_millis(500);
        let (watch_handle, mut updates) = match palisade_discovery::watch(wcfg) {
            Ok(x) => x,
            Err(error) => {
                error!(%error, "MCP discovery cannot start; nothing is discovered or enforced");
                return;
            }
        };
        let Discovery { inputs, opts } = self;
        let dir = StateDir::new(inputs.data_dir.join("discovery"));
        let persisted = dir.load_state();
        let enforce = inputs.config.enforce.then(|| {
            let mut enforcer = Enforcer::new(dir.backups(), Box::new(SystemProcesses) as Box<dyn ProcessLister>)
                .with_grace(opts.stop_grace);
            match dir.load_receipts() {
                Ok(r) => {
                    if !r.is_empty() {
                        info!(receipts = r.len(), "Loaded MCP enforcement receipts");
                    }
                    enforcer.load_receipts(r);
                }
                Err(error) => error!(%error, "MCP enforcement receipts unusable; disabled entries need a manual restore from the backups directory"),
            }
            Arc::new(Mutex::new(EnforceCtx {
                enforcer,
                managed: ManagedPaths::for_root(&inputs.config.scan_root(), palisade_discovery::apps::current_os()),
                managed_state: dir.managed(),
                last_managed_error: None,
            }))
        });
        let (report_tx, report_rx) = watch::channel(None);
        let reporter = inputs
            .sync
            .clone()
            .map(|sync| tokio::spawn(report::run_reporter(sync, report_rx, stop.clone())));
        let remembered = persisted
            .servers
            .iter()
            .map(|s| (s.entry_key(), s.clone()))
            .collect();
        let traffic_apps = persisted
            .traffic_apps
            .iter()
            .map(|a| (a.app_id.clone(), a.clone()))
            .collect();
        let mut policy_rx = inputs.state.policy.subscribe();
        let mut traffic = Some(inputs.state.recorder.subscribe());
        let mut app_tick =
            tokio::time::interval(Duration::from_secs(inputs.config.rescan_interval_secs));
        app_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut live = Live {
            inputs,
            dir,
            persisted,
            remembered,
            inventory: None,
            apps: Vec::new(),
            traffic_apps,
            enforce,
            report_tx,
            scan,
            recheck_at: None,
            recheck_delay,
        };
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                upd = updates.recv() => match upd {
                    Some(u) => live.on_update(u).await,
                    None => {
                        warn!("MCP inventory watch ended");
                        break;
                    }
                },
                r = policy_rx.changed() => {
                    if r.is_err() {
                        break;
                    }
                    debug!("Policy changed; re-applying MCP decisions");
                    live.enforce_now().await;
                }
                ev = recv_traffic(&mut traffic) => live.on_record(&ev),
                _ = sleep_until(live.recheck_at), if live.recheck_at.is_some() => live.recheck().await,
                _ = app_tick.tick() => live.detect_apps().await,
            }
        }
        watch_handle.stop().await;
        if let Some(r) = reporter {
            r.abort();
        }
        debug!("Discovery stopped");
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The next record from the recorder; pending forever once it is closed.
async fn recv_traffic(rx: &mut Option<broadcast::Receiver<Arc<AuditEvent>>>) -> Arc<AuditEvent> {
    loop {
        let Some(r) = rx else {
            return std::future::pending().await;
        };
        match r.recv().await {
            Ok(ev) => return ev,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                debug!(missed = n, "Discovery lagged behind the recorder")
            }
            Err(broadcast::error::RecvError::Closed) => *rx = None,
        }
    }
}

/// Key of an announced entry: where it is configured and what it is.
fn seen_key(s: &McpServer) -> String {
    format!(
        "{}\u{0}{}\u{0}{}\u{0}{}",
        s.config_path.display(),
        s.container.join("\u{1}"),
        s.name,
        s.fingerprint
    )
}

/// Keep a seen-set bounded (dropping arbitrary old keys beyond the cap).
fn bound(set: &mut BTreeSet<String>) {
    while set.len() > state::MAX_SEEN {
        set.pop_first();
    }
}

/// The OS user a home belongs to: its directory name.
fn home_user(home: Option<&Path>) -> Option<String> {
    home.and_then(|h| h.file_name())
        .map(|n| n.to_string_lossy().into_owned())
}

/// Servers under `policy` that must not run: the Claude managed deny list,
/// and for Codex the still-allowed servers plus whether any was refused.
fn managed_sets<'a>(
    servers: impl Iterator<Item = &'a McpServer> + Clone,
    policy: &ItemPolicy,
) -> (Vec<McpServer>, Vec<McpServer>, bool) {
    let denied: Vec<McpServer> = servers
        .clone()
        .filter(|s| !policy.allows(&s.fingerprint))
        .cloned()
        .collect();
    let codex: Vec<&McpServer> = servers.filter(|s| s.client == "codex").collect();
    let allowed = codex
        .iter()
        .filter(|s| policy.allows(&s.fingerprint))
        .map(|s| (*s).clone())
        .collect();
    let any_denied = codex.iter().any(|s| !policy.allows(&s.fingerprint));
    (denied, allowed, any_denied)
}

// === impl EnforceCtx ===

impl EnforceCtx {
    /// Apply `policy`: the Enforcer on the current inventory, then the
    /// managed files from every remembered server. Blocking.
    fn apply(
        &mut self,
        policy: &ItemPolicy,
        inventory: &Inventory,
        remembered: &[McpServer],
    ) -> Applied {
        let actions = self.enforcer.apply(policy, inventory);
        let receipts = self.enforcer.receipts().cloned().collect();
        let (denied, allowed, any_denied) = managed_sets(remembered.iter(), policy);
        let mut managed_events = Vec::new();
        let mut errors = Vec::new();
        let claude = &self.managed.claude_managed_settings;
        match managed::sync_claude_managed(claude, &self.managed_state, &denied) {
            Ok(o) => managed_events.extend(managed_change(claude, o, denied.len())),
            Err(e) => errors.push((claude.clone(), e.to_string())),
        }
        let codex = &self.managed.codex_requirements;
        match managed::sync_codex_requirements(codex, &self.managed_state, &allowed, any_denied) {
            Ok(o) => managed_events.extend(managed_change(codex, o, usize::from(any_denied))),
            Err(e) => errors.push((codex.clone(), e.to_string())),
        }
        let joined = (!errors.is_empty()).then(|| {
            errors
                .iter()
                .map(|(p, e)| format!("{}: {e}", p.display()))
                .collect::<Vec<_>>()
                .join("; ")
        });
        if joined != self.last_managed_error {
            for (path, e) in &errors {
                warn!(error = %e, path = %path.display(), "Cannot write managed MCP policy");
                managed_events.push(serde_json::json!({
                    "action": "failed", "target": "managed-policy", "path": path, "error": e,
                }));
            }
            self.last_managed_error = joined;
        }
        Applied {
            actions,
            receipts,
            managed_events,
        }
    }
}

fn managed_change(path: &Path, o: ManagedOutcome, denied: usize) -> Option<serde_json::Value> {
    let outcome = match o {
        ManagedOutcome::Unchanged => return None,
        ManagedOutcome::Written => "written",
        ManagedOutcome::RestoredOriginal => "restored-original",
    };
    info!(path = %path.display(), outcome, "Managed MCP policy updated");
    Some(serde_json::json!({
        "action": "managed-policy", "path": path, "outcome": outcome, "denied": denied,
    }))
}

/// What one enforcement pass did.
struct Applied {
    actions: Vec<EnforcementAction>,
    receipts: Vec<palisade_discovery::DisableReceipt>,
    managed_events: Vec<serde_json::Value>,
}

// === impl Live ===

impl Live {
    fn user(&self, home: Option<&Path>) -> UserRef {
        UserRef {
            os_user: home_user(home),
            email: self.inputs.state.owner_email.clone(),
            team: self.inputs.state.team.clone(),
        }
    }

    fn record(&self, ev: AuditEvent) {
        self.inputs.state.recorder.record(ev);
    }

    fn save(&mut self) {
        self.persisted.servers = self.remembered.values().cloned().collect();
        self.persisted.traffic_apps = self.traffic_apps.values().cloned().collect();
        bound(&mut self.persisted.seen_entries);
        bound(&mut self.persisted.seen_apps);
        if let Err(error) = self.dir.save_state(&self.persisted) {
            warn!(%error, "Cannot save discovery state");
        }
    }

    /// Refresh what enforcement remembers: every current server, plus the
    /// refused ones no longer configured (so their managed-policy entries
    /// and proxy blocks stay while the refusal stands).
    fn remember(&mut self) {
        let policy = self.inputs.state.policy.current().policy.mcp.clone();
        let current: BTreeMap<EntryKey, McpServer> = self
            .inventory
            .iter()
            .flat_map(|i| i.servers.iter())
            .map(|s| (s.entry_key(), s.clone()))
            .collect();
        let old = std::mem::take(&mut self.remembered);
        self.remembered = current;
        for (k, s) in old {
            if !policy.allows(&s.fingerprint) {
                self.remembered.entry(k).or_insert(s);
            }
        }
    }

    async fn on_update(&mut self, u: WatchUpdate) {
        for f in &u.change.new_findings {
            warn!(path = %f.path.display(), kind = ?f.kind, problem = %f.problem, "MCP config finding");
        }
        self.take_inventory(u.inventory, u.initial).await;
    }

    /// Our own scan shortly after we edited configs. The watcher reports
    /// only differences from ITS last scan, so a server re-added within the
    /// debounce window after we removed it looks unchanged to it; this scan
    /// sees the file as it is and re-applies. Repeats while edits happen.
    async fn recheck(&mut self) {
        self.recheck_at = None;
        let cfg = self.scan.clone();
        match tokio::task::spawn_blocking(move || palisade_discovery::scan(&cfg)).await {
            Ok(inv) => {
                debug!(
                    servers = inv.servers.len(),
                    "Re-checked MCP configs after enforcement"
                );
                self.take_inventory(Arc::new(inv), false).await;
            }
            Err(error) => warn!(%error, "MCP re-check scan failed"),
        }
    }

    async fn take_inventory(&mut self, inventory: Arc<Inventory>, initial: bool) {
        let device = self.inputs.state.device.clone();
        for s in &inventory.servers {
            if self.persisted.seen_entries.insert(seen_key(s)) {
                info!(server = %s.name, client = %s.client, fingerprint = %s.fingerprint, "MCP server discovered");
                self.record(events::mcp_discovered(
                    device.clone(),
                    self.user(s.home.as_deref()),
                    s,
                ));
            }
        }
        self.inventory = Some(inventory);
        if initial {
            // Apps are detected against the homes the scan found.
            self.detect_apps().await;
        }
        self.enforce_now().await;
        self.publish_report();
    }

    /// Apply the current MCP policy: proxy blocks, config edits, processes,
    /// managed files. Records every action.
    async fn enforce_now(&mut self) {
        let Some(inventory) = self.inventory.clone() else {
            return;
        };
        self.remember();
        let Some(ctx) = self.enforce.clone() else {
            self.save();
            return;
        };
        let policy = self.inputs.state.policy.current().policy.mcp.clone();
        let blocked = remote::compute(self.remembered.values(), &policy);
        if blocked != *self.inputs.state.blocked_remote.current() {
            info!(blocked = blocked.len(), "Remote MCP blocks updated");
            self.inputs.state.blocked_remote.set(blocked);
        }
        let remembered: Vec<McpServer> = self.remembered.values().cloned().collect();
        let applied = tokio::task::spawn_blocking(move || {
            let mut ctx = ctx.lock().unwrap_or_else(|e| e.into_inner());
            ctx.apply(&policy, &inventory, &remembered)
        })
        .await;
        let applied = match applied {
            Ok(a) => a,
            Err(error) => {
                error!(%error, "MCP enforcement task failed");
                return;
            }
        };
        if applied
            .actions
            .iter()
            .any(|a| matches!(a, EnforcementAction::Disabled { .. }))
        {
            self.recheck_at = Some(tokio::time::Instant::now() + self.recheck_delay);
        }
        let device = self.inputs.state.device.clone();
        for a in &applied.actions {
            let home = match a {
                EnforcementAction::Disabled { server, .. }
                | EnforcementAction::ProcessesStopped { server, .. } => server.home.clone(),
                _ => None,
            };
            self.record(events::mcp_enforcement(
                device.clone(),
                self.user(home.as_deref()),
                a,
            ));
        }
        for details in applied.managed_events {
            let mut ev = AuditEvent::new(EventKind::McpBlocked, device.clone(), self.user(None));
            ev.details = details;
            self.record(ev);
        }
        if let Err(error) = self.dir.save_receipts(&applied.receipts) {
            error!(%error, "Cannot persist MCP enforcement receipts");
        }
        self.save();
    }

    /// Detect installed and running catalog apps; announce new ones.
    async fn detect_apps(&mut self) {
        // Until the first scan, the homes to look in are unknown.
        if self.inventory.is_none() {
            return;
        }
        let cfg = palisade_discovery::apps::DetectConfig {
            root: self.inputs.config.scan_root(),
            homes: self
                .inventory
                .as_ref()
                .map(|i| i.homes.clone())
                .unwrap_or_default(),
            os: palisade_discovery::apps::current_os().to_string(),
            path_dirs: match self.inputs.config.root {
                None => std::env::var_os("PATH")
                    .map(|p| std::env::split_paths(&p).collect())
                    .unwrap_or_default(),
                Some(_) => Vec::new(),
            },
        };
        let catalog = self.inputs.catalog.clone();
        let found = tokio::task::spawn_blocking(move || {
            let procs = SystemProcesses.list();
            palisade_discovery::detect_apps(&catalog, &cfg, &procs)
        })
        .await;
        let found = match found {
            Ok(f) => f,
            Err(error) => {
                warn!(%error, "App detection failed");
                return;
            }
        };
        let device = self.inputs.state.device.clone();
        for a in &found {
            if self.persisted.seen_apps.insert(a.app_id.clone()) {
                info!(app = %a.app_id, "AI app discovered");
                self.record(events::app_discovered(device.clone(), self.user(None), a));
            }
        }
        self.apps = found;
        self.save();
        self.publish_report();
    }

    /// Learn unknown apps from interaction records.
    fn on_record(&mut self, ev: &AuditEvent) {
        if ev.kind != EventKind::Interaction {
            return;
        }
        let Some(app) = &ev.app else { return };
        let Some(id) = app.id.as_deref().filter(|id| id.starts_with("exe:")) else {
            return;
        };
        if self.traffic_apps.contains_key(id) {
            return;
        }
        let exe = PathBuf::from(app.exe.clone().unwrap_or_default());
        let mut sighting =
            palisade_discovery::unknown_app_from_traffic(&exe, app.name.as_deref().unwrap_or(""));
        // The proxy's id is authoritative (it keys app policy).
        sighting.app_id = id.to_string();
        if let Some(i) = &ev.interaction {
            sighting.hosts = vec![i.host.clone()];
        }
        info!(app = %sighting.app_id, "Unknown AI app seen in traffic");
        if self.persisted.seen_apps.insert(sighting.app_id.clone()) {
            let user = UserRef {
                os_user: ev.user.os_user.clone(),
                email: self.inputs.state.owner_email.clone(),
                team: self.inputs.state.team.clone(),
            };
            self.record(events::app_discovered(
                self.inputs.state.device.clone(),
                user,
                &sighting,
            ));
        }
        self.traffic_apps.insert(sighting.app_id.clone(), sighting);
        self.save();
        self.publish_report();
    }

    /// Hand the full inventory to the reporter (no-op without a server).
    fn publish_report(&self) {
        let (Some(_), Some(inventory)) = (&self.inputs.sync, &self.inventory) else {
            return;
        };
        let mut items = report::mcp_items(&inventory.servers);
        items.extend(report::app_items(
            self.apps.iter().chain(self.traffic_apps.values()),
        ));
        let items = Arc::new(items);
        self.report_tx.send_if_modified(|cur| {
            if cur.as_deref() == Some(&*items) {
                false
            } else {
                *cur = Some(items);
                true
            }
        });
    }
}
