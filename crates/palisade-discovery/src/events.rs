//! Audit events for discovery and enforcement (`mcp.discovered`,
//! `app.discovered`, `mcp.blocked`), in the envelope shared by all records.
//!
//! Details carry the value-free records from this crate only: names, paths,
//! fingerprints, pids. They must never carry config content.

use crate::apps::AppSighting;
use crate::enforce::EnforcementAction;
use crate::model::McpServer;
use palisade_core::record::{AuditEvent, DeviceRef, EventKind, UserRef};
use serde_json::json;

pub fn mcp_discovered(device: DeviceRef, user: UserRef, server: &McpServer) -> AuditEvent {
    let mut ev = AuditEvent::new(EventKind::McpDiscovered, device, user);
    ev.details = serde_json::to_value(server).expect("server serialises");
    ev
}

pub fn app_discovered(device: DeviceRef, user: UserRef, app: &AppSighting) -> AuditEvent {
    let mut ev = AuditEvent::new(EventKind::AppDiscovered, device, user);
    ev.details = serde_json::to_value(app).expect("sighting serialises");
    ev
}

/// One `mcp.blocked` event per enforcement action (restores are recorded
/// as `mcp.blocked` with `action: "restored"` so one stream tells the story).
pub fn mcp_enforcement(device: DeviceRef, user: UserRef, action: &EnforcementAction) -> AuditEvent {
    let mut ev = AuditEvent::new(EventKind::McpBlocked, device, user);
    ev.details = match action {
        EnforcementAction::Disabled { server, receipt } => json!({
            "action": "disabled", "fingerprint": server.fingerprint, "name": server.name,
            "client": server.client, "config_path": server.config_path, "method": receipt.method,
        }),
        EnforcementAction::ProcessesStopped { server, pids } => json!({
            "action": "processes-stopped", "fingerprint": server.fingerprint, "name": server.name,
            "client": server.client, "pids": pids,
        }),
        EnforcementAction::Restored { key, fingerprint, outcome } => json!({
            "action": "restored", "fingerprint": fingerprint, "name": key.name,
            "config_path": key.config_path, "outcome": outcome,
        }),
        EnforcementAction::Failed { key, fingerprint, error } => json!({
            "action": "failed", "fingerprint": fingerprint, "name": key.name,
            "config_path": key.config_path, "error": error,
        }),
    };
    ev
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EntryKey, Scope, Transport};
    use std::path::PathBuf;

    #[test]
    fn events_have_the_right_kind_and_no_values() {
        let s = McpServer {
            fingerprint: "ab".repeat(32),
            name: "gh".into(),
            transport: Transport::Stdio,
            command: Some("npx".into()),
            args: vec!["x".into()],
            env_names: vec!["GITHUB_TOKEN".into()],
            url: None,
            header_names: vec![],
            client: "cursor".into(),
            config_path: PathBuf::from("/h/.cursor/mcp.json"),
            scope: Scope::User,
            project: None,
            home: None,
            enabled: true,
            container: vec!["mcpServers".into()],
        };
        let ev = mcp_discovered(DeviceRef::default(), UserRef::default(), &s);
        let v = serde_json::to_value(&ev).unwrap();
        assert_eq!(v["kind"], "mcp.discovered");
        assert_eq!(v["details"]["env_names"][0], "GITHUB_TOKEN");
        let act = EnforcementAction::Restored {
            key: EntryKey { config_path: s.config_path.clone(), container: s.container.clone(), name: "gh".into() },
            fingerprint: s.fingerprint.clone(),
            outcome: crate::enforce::RestoreOutcome::Identical,
        };
        let v = serde_json::to_value(mcp_enforcement(DeviceRef::default(), UserRef::default(), &act)).unwrap();
        assert_eq!(v["kind"], "mcp.blocked");
        assert_eq!(v["details"]["action"], "restored");
        assert_eq!(v["details"]["outcome"], "identical");
    }
}
