use super::remote::{compute, destination, jsonrpc_block_body, BlockedRemote, BlockedRemotes};
use super::report::{app_items, clean_name, mcp_items};
use super::state::{PersistedState, StateDir};
use super::*;
use palisade_core::policy::{Decision, ItemRule, PendingMode};
use palisade_discovery::{Scope, Transport};

fn server(name: &str, fp: &str, url: Option<&str>, client: &str) -> McpServer {
    McpServer {
        fingerprint: fp.into(),
        name: name.into(),
        transport: if url.is_some() {
            Transport::StreamableHttp
        } else {
            Transport::Stdio
        },
        command: url.is_none().then(|| "npx".to_string()),
        args: if url.is_none() {
            vec!["-y".into(), format!("{name}-mcp")]
        } else {
            vec![]
        },
        env_names: vec!["API_TOKEN".into()],
        url: url.map(Into::into),
        header_names: if url.is_some() {
            vec!["Authorization".into()]
        } else {
            vec![]
        },
        client: client.into(),
        config_path: PathBuf::from(format!("/home/u/.{client}/mcp.json")),
        scope: Scope::User,
        project: None,
        home: Some(PathBuf::from("/home/u")),
        enabled: true,
        container: vec!["mcpServers".into()],
    }
}

fn policy(rules: &[(&str, Decision)], pending: PendingMode) -> ItemPolicy {
    ItemPolicy {
        pending_mode: pending,
        rules: rules
            .iter()
            .map(|(id, d)| ItemRule {
                id: id.to_string(),
                decision: *d,
                note: None,
            })
            .collect(),
    }
}

#[test]
fn destinations_parse_with_default_ports_and_reject_other_schemes() {
    assert_eq!(
        destination("https://MCP.Example.com/mcp/"),
        Some(("mcp.example.com".into(), 443, "/mcp".into()))
    );
    assert_eq!(
        destination("http://h.example:8080/sse?x=1"),
        Some(("h.example".into(), 8080, "/sse".into()))
    );
    assert_eq!(
        destination("wss://h.example"),
        Some(("h.example".into(), 443, "".into()))
    );
    assert_eq!(
        destination("ws://[::1]:9/x"),
        Some(("[::1]".into(), 9, "/x".into()))
    );
    assert_eq!(destination("ftp://h.example/x"), None);
    assert_eq!(destination("not a url"), None);
    assert_eq!(destination("/relative/path"), None);
    assert_eq!(destination(""), None);
}

#[test]
fn only_destinations_no_allowed_server_shares_are_refused_whole() {
    let servers = vec![
        server("bad", "fp-bad", Some("https://evil.example/mcp"), "cursor"),
        server(
            "shared-bad",
            "fp-sb",
            Some("https://shared.example/a"),
            "cursor",
        ),
        server(
            "shared-ok",
            "fp-so",
            Some("https://shared.example/b"),
            "cursor",
        ),
        server("ok", "fp-ok", Some("https://fine.example/mcp"), "cursor"),
        server("local", "fp-local", None, "cursor"),
        server("broken-url", "fp-broken", Some("nonsense"), "cursor"),
    ];
    let p = policy(
        &[
            ("fp-bad", Decision::Deny),
            ("fp-sb", Decision::Deny),
            ("fp-local", Decision::Deny),
            ("fp-broken", Decision::Deny),
        ],
        PendingMode::Allow,
    );
    let list = compute(&servers, &p);
    assert_eq!(list.len(), 2, "{list:?}");
    let blocks = BlockedRemotes::default();
    blocks.set(list);
    let whole = blocks
        .for_connect("EVIL.example.", 443)
        .expect("evil refused whole");
    assert_eq!(
        (whole.name.as_str(), whole.fingerprint.as_str()),
        ("bad", "fp-bad")
    );
    assert!(
        blocks.for_connect("evil.example", 8443).is_none(),
        "another port is another destination"
    );
    assert!(
        blocks.for_connect("shared.example", 443).is_none(),
        "an allowed server shares it"
    );
    assert!(blocks.for_connect("fine.example", 443).is_none());
    let b = blocks
        .for_request("shared.example", 443, "/a?session=1")
        .expect("path refused");
    assert_eq!(b.name, "shared-bad");
    assert!(blocks.for_request("shared.example", 443, "/b").is_none());
    assert!(
        blocks.for_request("shared.example", 443, "/ab").is_none(),
        "prefix stops at a segment"
    );
    assert!(blocks
        .for_request("shared.example", 443, "/a/messages")
        .is_some());
}

#[test]
fn pending_servers_follow_the_pending_mode() {
    let servers = vec![server("r", "fp-r", Some("https://r.example/mcp"), "cursor")];
    assert!(compute(&servers, &policy(&[], PendingMode::Allow)).is_empty());
    assert_eq!(compute(&servers, &policy(&[], PendingMode::Block)).len(), 1);
    assert!(compute(
        &servers,
        &policy(&[("FP-R", Decision::Allow)], PendingMode::Block)
    )
    .is_empty());
}

#[test]
fn an_empty_path_prefix_covers_the_whole_host() {
    let b = BlockedRemote {
        host: "h".into(),
        port: 443,
        path_prefix: String::new(),
        fingerprint: "f".into(),
        name: "n".into(),
        whole_host: true,
    };
    assert!(b.covers_path("/") && b.covers_path("/anything") && b.covers_path(""));
}

#[test]
fn jsonrpc_body_names_the_server() {
    let v: serde_json::Value = serde_json::from_str(&jsonrpc_block_body("gh \"x\"")).unwrap();
    assert_eq!(v["jsonrpc"], "2.0");
    assert_eq!(v["error"]["code"], -32001);
    assert_eq!(
        v["error"]["message"],
        "Blocked by Palisade: MCP server 'gh \"x\"' is denied by policy"
    );
    assert!(v["id"].is_null());
}

#[test]
fn mcp_items_are_one_per_fingerprint_and_value_free() {
    let mut a = server("gh", "fp1", None, "cursor");
    a.env_names = vec!["GITHUB_TOKEN".into()];
    let mut b = server("github", "fp1", None, "claude-code");
    b.env_names = vec!["GITHUB_TOKEN".into(), "GH_HOST".into()];
    let c = server(
        "r",
        "fp2",
        Some("https://r.example/mcp?token=REDACTED"),
        "cursor",
    );
    let items = mcp_items(&[a, b, c]);
    assert_eq!(items.len(), 2);
    let one = items.iter().find(|i| i.id == "fp1").unwrap();
    assert_eq!(one.kind, palisade_proto::INVENTORY_KIND_MCP_SERVER);
    assert_eq!(one.name, "gh");
    assert_eq!(one.details["config_count"], 2);
    assert_eq!(
        one.details["env_names"],
        serde_json::json!(["GH_HOST", "GITHUB_TOKEN"])
    );
    assert_eq!(
        one.details["clients"],
        serde_json::json!(["claude-code", "cursor"])
    );
    let text =
        serde_json::to_string(&items.iter().map(|i| &i.details).collect::<Vec<_>>()).unwrap();
    assert!(!text.contains("ghp_") && !text.contains("secret"), "{text}");
}

#[test]
fn names_are_cleaned_for_the_server() {
    assert_eq!(clean_name("a\nb\u{7}c"), "a b c");
    let long = "é".repeat(400);
    let c = clean_name(&long);
    assert!(c.len() <= 512 && c.is_char_boundary(c.len()));
    assert_eq!(clean_name("   "), "");
}

#[test]
fn app_items_prefer_the_catalog_sighting() {
    let catalog = Catalog::builtin();
    let traffic =
        palisade_discovery::unknown_app_from_traffic(Path::new("/opt/x/MyTool"), "MyTool");
    let mut known = traffic.clone();
    known.known = true;
    known.name = "My Tool".into();
    let cursor =
        catalog.sighting_for_traffic(Path::new("/usr/bin/cursor"), "cursor", Some(1), "linux");
    let items = app_items([&traffic, &known, &cursor]);
    assert_eq!(items.len(), 2);
    let t = items.iter().find(|i| i.id == "exe:mytool").unwrap();
    assert_eq!(t.name, "My Tool");
    assert_eq!(t.details["running"], false);
    let c = items.iter().find(|i| i.id == "cursor").unwrap();
    assert_eq!(c.details["running"], true);
}

#[test]
fn state_round_trips_and_damage_is_moved_aside() {
    let d = tempfile::tempdir().unwrap();
    let dir = StateDir::new(d.path().join("discovery"));
    assert_eq!(dir.load_state(), PersistedState::default());
    assert!(dir.load_receipts().unwrap().is_empty());
    let mut s = PersistedState::default();
    s.seen_apps.insert("cursor".into());
    s.servers.push(server("a", "fp", None, "cursor"));
    dir.save_state(&s).unwrap();
    assert_eq!(dir.load_state(), s);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join(state::STATE_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    std::fs::write(dir.path().join(state::RECEIPTS_FILE), "{ not json").unwrap();
    let e = dir.load_receipts().unwrap_err().to_string();
    assert!(e.contains("damaged") && e.contains("moved aside"), "{e}");
    assert!(dir.path().join("receipts.json.damaged").exists());
    assert!(
        dir.load_receipts().unwrap().is_empty(),
        "the damaged file no longer blocks"
    );

    std::fs::write(dir.path().join(state::STATE_FILE), "[1,2").unwrap();
    assert_eq!(dir.load_state(), PersistedState::default());
    std::fs::write(dir.path().join(state::STATE_FILE), r#"{"unknown_key": 1}"#).unwrap();
    assert_eq!(
        dir.load_state(),
        PersistedState::default(),
        "unknown keys are damage, not silently dropped"
    );
}

#[test]
fn managed_sets_split_denied_and_codex_allowlist() {
    let servers = [
        server("a", "fa", None, "codex"),
        server("b", "fb", None, "codex"),
        server("c", "fc", None, "cursor"),
    ];
    let (denied, allowed, any) = managed_sets(
        servers.iter(),
        &policy(&[("fa", Decision::Deny)], PendingMode::Allow),
    );
    assert_eq!(
        denied.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["a"]
    );
    assert_eq!(
        allowed.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["b"]
    );
    assert!(any);
    let (denied, allowed, any) = managed_sets(
        servers.iter(),
        &policy(&[("fc", Decision::Deny)], PendingMode::Allow),
    );
    assert_eq!(denied.len(), 1);
    assert_eq!(allowed.len(), 2);
    assert!(
        !any,
        "no Codex server is refused: requirements.toml stays the admin's"
    );
}

#[test]
fn seen_keys_tell_entries_apart_and_sets_stay_bounded() {
    let a = server("a", "fp", None, "cursor");
    let mut b = a.clone();
    b.fingerprint = "fp2".into();
    assert_ne!(
        seen_key(&a),
        seen_key(&b),
        "a changed definition is announced again"
    );
    let mut set: BTreeSet<String> = (0..state::MAX_SEEN + 5).map(|i| i.to_string()).collect();
    bound(&mut set);
    assert_eq!(set.len(), state::MAX_SEEN);
    assert_eq!(
        home_user(Some(Path::new("/home/jane"))).as_deref(),
        Some("jane")
    );
    assert_eq!(home_user(None), None);
}

#[tokio::test]
async fn policy_handle_notifies_on_set_only() {
    let h = crate::proxy::PolicyHandle::new(palisade_core::Policy::default(), None).unwrap();
    let mut rx = h.subscribe();
    assert!(!rx.has_changed().unwrap());
    h.set(palisade_core::Policy { version: 7, ..Default::default() }).unwrap();
    assert!(rx.has_changed().unwrap());
    assert_eq!(*rx.borrow_and_update(), 1);
    // A policy whose guardrails do not compile is refused and not announced.
    let mut bad = palisade_core::Policy::default();
    bad.guardrails
        .custom
        .push(palisade_core::policy::CustomRule {
            id: "x".into(),
            regex: Some("(".into()),
            keywords: vec![],
            action: palisade_core::GuardAction::Block,
        });
    assert!(h.set(bad).is_err());
    assert!(!rx.has_changed().unwrap());
}
