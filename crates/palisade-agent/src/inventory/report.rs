//! The inventory as the control plane receives it: one item per distinct
//! MCP server (by fingerprint) and per app, sent as a full snapshot by a
//! reporter task that retries until the device is enrolled and the server
//! answers.
//!
//! Items carry only value-free fields (names, commands, args, env and
//! header NAMES, sanitised URLs, paths). The reporter must never make the
//! discovery loop wait: it works from the latest snapshot in a watch channel
//! and skips snapshots superseded while it was retrying.

use crate::sync::{InventoryItem, SyncHandle};
use palisade_discovery::{AppSighting, McpServer};
use palisade_proto::{INVENTORY_KIND_APP, INVENTORY_KIND_MCP_SERVER};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// The server refuses longer strings (`palisade_server::convert::MAX_FIELD_LEN`).
const MAX_NAME_BYTES: usize = 512;
/// Config locations listed per server; the rest are counted.
const MAX_CONFIGS_PER_ITEM: usize = 32;
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_CAP: Duration = Duration::from_secs(300);

/// A name the server accepts: no control characters, at most 512 bytes.
pub fn clean_name(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > MAX_NAME_BYTES {
        let mut cut = MAX_NAME_BYTES;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out.trim().to_string()
}

fn union<'a>(it: impl Iterator<Item = &'a String>) -> Vec<&'a String> {
    it.collect::<BTreeSet<_>>().into_iter().collect()
}

/// One item per fingerprint, listing every config that uses it.
pub fn mcp_items(servers: &[McpServer]) -> Vec<InventoryItem> {
    let mut by_fp: BTreeMap<&str, Vec<&McpServer>> = BTreeMap::new();
    for s in servers {
        by_fp.entry(s.fingerprint.as_str()).or_default().push(s);
    }
    by_fp
        .into_iter()
        .map(|(fp, list)| {
            let first = list[0];
            let configs: Vec<_> = list
                .iter()
                .take(MAX_CONFIGS_PER_ITEM)
                .map(|s| {
                    json!({
                        "client": s.client, "config_path": s.config_path, "name": s.name,
                        "scope": s.scope, "project": s.project, "home": s.home, "enabled": s.enabled,
                    })
                })
                .collect();
            InventoryItem {
                kind: INVENTORY_KIND_MCP_SERVER.into(),
                id: fp.to_string(),
                name: clean_name(&first.name),
                details: json!({
                    "transport": first.transport,
                    "command": first.command,
                    "args": first.args,
                    "url": first.url,
                    "env_names": union(list.iter().flat_map(|s| s.env_names.iter())),
                    "header_names": union(list.iter().flat_map(|s| s.header_names.iter())),
                    "clients": union(list.iter().map(|s| &s.client)),
                    "configs": configs,
                    "config_count": list.len(),
                }),
            }
        })
        .collect()
}

/// One item per app id.
pub fn app_items<'a>(apps: impl IntoIterator<Item = &'a AppSighting>) -> Vec<InventoryItem> {
    let mut by_id: BTreeMap<&str, &AppSighting> = BTreeMap::new();
    for a in apps {
        // A catalog sighting wins over a traffic sighting of the same id.
        by_id
            .entry(a.app_id.as_str())
            .and_modify(|e| {
                if a.known && !e.known {
                    *e = a
                }
            })
            .or_insert(a);
    }
    by_id
        .into_values()
        .map(|a| InventoryItem {
            kind: INVENTORY_KIND_APP.into(),
            id: a.app_id.clone(),
            name: clean_name(&a.name),
            details: json!({
                "kind": a.kind,
                "known": a.known,
                "installed_paths": a.installed_paths,
                "running": !a.running.is_empty(),
                "hosts": a.hosts,
            }),
        })
        .collect()
}

/// Send every new snapshot from `rx` as a full snapshot, retrying with
/// backoff; a newer snapshot replaces one still being retried.
pub async fn run_reporter(
    sync: SyncHandle,
    mut rx: watch::Receiver<Option<Arc<Vec<InventoryItem>>>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut last_sent: Option<Arc<Vec<InventoryItem>>> = None;
    loop {
        let Some(items) = rx.borrow_and_update().clone() else {
            tokio::select! {
                _ = stop.changed() => return,
                r = rx.changed() => if r.is_err() { return } else { continue },
            }
        };
        if last_sent.as_deref() == Some(&*items) {
            tokio::select! {
                _ = stop.changed() => return,
                r = rx.changed() => if r.is_err() { return } else { continue },
            }
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = sync.wait_enrolled() => {}
        }
        let mut delay = RETRY_FIRST;
        loop {
            match sync.report_inventory(items.to_vec(), true).await {
                Ok(accepted) => {
                    info!(items = items.len(), accepted, "Inventory reported");
                    last_sent = Some(items.clone());
                    break;
                }
                Err(error) => {
                    warn!(%error, items = items.len(), retry_in_ms = delay.as_millis() as u64, "Inventory report failed");
                    tokio::select! {
                        _ = stop.changed() => return,
                        _ = tokio::time::sleep(delay) => {}
                        r = rx.changed() => {
                            if r.is_err() { return }
                            debug!("Newer inventory superseded a report being retried");
                            // Keep the update flagged so the outer loop takes it.
                            rx.mark_changed();
                            break;
                        }
                    }
                    delay = (delay * 2).min(RETRY_CAP);
                }
            }
        }
    }
}
