use super::*;

fn fixture(name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn src(path: &str, client: &'static str, shape: Shape) -> ConfigSource {
    ConfigSource {
        path: PathBuf::from(path),
        client,
        scope: Scope::User,
        shape,
        project: None,
        home: Some(PathBuf::from("/home/dev")),
    }
}

fn parse_fixture(file: &str, path: &str, client: &'static str, shape: Shape) -> Parsed {
    parse(&src(path, client, shape), &fixture(file))
}

fn get<'a>(p: &'a Parsed, name: &str) -> &'a McpServer {
    p.servers.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no server {name}: {:?}", p.servers))
}

/// No fixture secret may appear in anything we produce.
fn assert_no_secrets(p: &Parsed) {
    let all = format!(
        "{} {:?} {}",
        serde_json::to_string(&p.servers).unwrap(),
        p.servers,
        serde_json::to_string(&p.findings).unwrap()
    );
    for needle in ["SECRET", "secret", "ghp_", "value", "token>", "Bearer", "MY_ENV_VALUE", "$DB_CONNECTION"] {
        assert!(!all.contains(needle), "{needle} leaked into {all}");
    }
}

#[test]
fn claude_desktop() {
    let p = parse_fixture("claude_desktop_config.json", "/h/claude_desktop_config.json", "claude-desktop", Shape::McpServers);
    assert!(p.findings.is_empty(), "{:?}", p.findings);
    assert_eq!(p.servers.len(), 2);
    let gh = get(&p, "github");
    assert_eq!(gh.transport, Transport::Stdio);
    assert_eq!(gh.command.as_deref(), Some("npx"));
    assert_eq!(gh.args, vec!["-y", "@modelcontextprotocol/server-github"]);
    assert_eq!(gh.env_names, vec!["GITHUB_PERSONAL_ACCESS_TOKEN"]);
    assert_eq!(gh.container, vec!["mcpServers"]);
    assert!(gh.enabled);
    assert_no_secrets(&p);
}

#[test]
fn claude_code_user_and_projects() {
    let p = parse_fixture("claude.json", "/h/.claude.json", "claude-code", Shape::ClaudeCodeUser);
    assert!(p.findings.is_empty(), "{:?}", p.findings);
    assert_eq!(p.servers.len(), 3);
    assert_eq!(p.projects, vec![PathBuf::from("/home/dev/app"), PathBuf::from("/home/dev/empty")]);
    let pg = get(&p, "postgres");
    assert_eq!(pg.scope, Scope::Project);
    assert_eq!(pg.project.as_deref(), Some(Path::new("/home/dev/app")));
    assert_eq!(pg.container, vec!["projects", "/home/dev/app", "mcpServers"]);
    let sentry = get(&p, "sentry");
    assert_eq!(sentry.transport, Transport::StreamableHttp);
    assert_eq!(sentry.url.as_deref(), Some("https://mcp.sentry.dev/mcp"));
    assert_eq!(sentry.header_names, vec!["Authorization"]);
    // The same GitHub server as Claude Desktop's (different npx path, no -y).
    let desktop = parse_fixture("claude_desktop_config.json", "/x", "claude-desktop", Shape::McpServers);
    assert_eq!(get(&p, "github").fingerprint, get(&desktop, "github").fingerprint);
    assert_no_secrets(&p);
}

#[test]
fn project_mcp_json_with_unexpanded_url_is_a_finding() {
    let p = parse_fixture("project.mcp.json", "/p/.mcp.json", "claude-code", Shape::McpServers);
    assert_eq!(p.servers.len(), 2);
    assert_eq!(get(&p, "asana").transport, Transport::Sse);
    assert_eq!(p.findings.len(), 1);
    assert_eq!(p.findings[0].kind, FindingKind::InvalidServer);
    assert!(p.findings[0].problem.contains("api-server"), "{}", p.findings[0].problem);
}

#[test]
fn managed_mcp() {
    let mut s = src("/etc/claude-code/managed-mcp.json", "claude-code", Shape::McpServers);
    s.scope = Scope::Managed;
    s.home = None;
    let p = parse(&s, &fixture("managed-mcp.json"));
    let c = get(&p, "company-internal");
    assert_eq!(c.scope, Scope::Managed);
    assert_eq!(c.env_names, vec!["COMPANY_API_URL"]);
}

#[test]
fn cursor() {
    let p = parse_fixture("cursor_mcp.json", "/h/.cursor/mcp.json", "cursor", Shape::McpServers);
    assert_eq!(p.servers.len(), 3);
    assert_eq!(get(&p, "python-server").command.as_deref(), Some("python"));
    let r = get(&p, "server-name");
    assert_eq!(r.transport, Transport::StreamableHttp);
    assert_eq!(r.header_names, vec!["API_KEY"]);
    assert_no_secrets(&p);
}

#[test]
fn windsurf_server_url_and_disabled() {
    let p = parse_fixture("windsurf_mcp_config.json", "/h/mcp_config.json", "windsurf", Shape::McpServers);
    assert_eq!(get(&p, "figma").url.as_deref(), Some("https://your-server-url/mcp"));
    assert!(!get(&p, "old").enabled);
    assert!(get(&p, "github").enabled);
}

#[test]
fn vscode_mcp_json_with_comments_and_trailing_commas() {
    let p = parse_fixture("vscode_mcp.json", "/h/.config/Code/User/mcp.json", "vscode", Shape::VsCodeMcp);
    assert!(p.findings.is_empty(), "{:?}", p.findings);
    let px = get(&p, "Perplexity");
    assert_eq!(px.command.as_deref(), Some("docker"));
    assert_eq!(px.container, vec!["servers"]);
    assert_eq!(get(&p, "github").url.as_deref(), Some("https://api.githubcopilot.com/mcp/"));
}

#[test]
fn vscode_settings() {
    let p = parse_fixture("vscode_settings.json", "/h/settings.json", "vscode", Shape::VsCodeSettings);
    assert!(p.findings.is_empty(), "{:?}", p.findings);
    assert_eq!(get(&p, "fetch").container, vec!["mcp", "servers"]);
}

#[test]
fn gemini_url_is_sse_and_http_url_is_streamable() {
    let p = parse_fixture("gemini_settings.json", "/h/.gemini/settings.json", "gemini-cli", Shape::McpServers);
    assert_eq!(get(&p, "sseServer").transport, Transport::Sse);
    assert_eq!(get(&p, "httpServer").transport, Transport::StreamableHttp);
    assert_eq!(get(&p, "pythonTools").env_names, vec!["API_KEY", "DATABASE_URL"]);
    assert_no_secrets(&p);
}

#[test]
fn opencode_command_array() {
    let p = parse_fixture("opencode.jsonc", "/h/.config/opencode/opencode.jsonc", "opencode", Shape::OpenCode);
    assert!(p.findings.is_empty(), "{:?}", p.findings);
    let l = get(&p, "my-local-mcp-server");
    assert_eq!(l.command.as_deref(), Some("npx"));
    assert_eq!(l.args, vec!["-y", "my-mcp-command"]);
    assert_eq!(l.env_names, vec!["MY_ENV_VAR"]);
    assert_eq!(get(&p, "my-remote-mcp").transport, Transport::StreamableHttp);
    assert!(!get(&p, "off").enabled);
    assert_no_secrets(&p);
}

#[test]
fn codex_toml() {
    let p = parse_fixture("codex_config.toml", "/h/.codex/config.toml", "codex", Shape::Codex);
    assert!(p.findings.is_empty(), "{:?}", p.findings);
    let c7 = get(&p, "context7");
    assert_eq!(c7.env_names, vec!["MY_ENV_VAR"]);
    assert_eq!(c7.container, vec!["mcp_servers"]);
    let figma = get(&p, "figma");
    assert_eq!(figma.header_names, vec!["Authorization", "X-Figma-Region"]);
    assert!(!get(&p, "chrome_devtools").enabled);
    assert_no_secrets(&p);
}

#[test]
fn zed_context_servers_all_shapes() {
    let p = parse_fixture("zed_settings.json", "/h/.config/zed/settings.json", "zed", Shape::Zed);
    assert!(p.findings.is_empty(), "{:?}", p.findings);
    assert_eq!(p.servers.len(), 3, "extension-provided server has nothing to identify");
    assert_eq!(get(&p, "your-mcp-server").args, vec!["arg-1", "arg-2"]);
    let legacy = get(&p, "legacy-server");
    assert_eq!(legacy.command.as_deref(), Some("/usr/local/bin/legacy-mcp"));
    assert_eq!(legacy.env_names, vec!["LEGACY_TOKEN"]);
    assert_no_secrets(&p);
}

#[test]
fn cline() {
    let p = parse_fixture("cline_mcp_settings.json", "/h/cline_mcp_settings.json", "cline", Shape::McpServers);
    assert_eq!(p.servers.len(), 2);
    assert!(p.servers.iter().all(|s| s.enabled));
}

#[test]
fn continue_yaml_list_and_block() {
    let p = parse_fixture("continue_config.yaml", "/h/.continue/config.yaml", "continue", Shape::Continue);
    assert!(p.findings.is_empty(), "{:?}", p.findings);
    assert_eq!(get(&p, "SQLite MCP").env_names, vec!["SQLITE_KEY"]);
    assert_eq!(get(&p, "Remote").transport, Transport::StreamableHttp);
    assert_no_secrets(&p);
    let b = parse_fixture("continue_block.yaml", "/h/.continue/mcpServers/pw.yaml", "continue", Shape::Continue);
    assert_eq!(get(&b, "Browser search").args, vec!["@playwright/mcp@latest"]);
}

#[test]
fn lmstudio() {
    let p = parse_fixture("lmstudio_mcp.json", "/h/.lmstudio/mcp.json", "lmstudio", Shape::McpServers);
    assert_eq!(get(&p, "hf-mcp-server").url.as_deref(), Some("https://huggingface.co/mcp"));
}

#[test]
fn malformed_json_is_a_finding_without_content() {
    let s = src("/h/.cursor/mcp.json", "cursor", Shape::McpServers);
    let p = parse(&s, br#"{"mcpServers": {"x": {"command": "sk-leak", "args": "also-leak"}}"#);
    assert!(p.servers.is_empty());
    assert_eq!(p.findings.len(), 1);
    assert_eq!(p.findings[0].kind, FindingKind::Malformed);
    assert!(!p.findings[0].problem.contains("leak"), "{}", p.findings[0].problem);
    let p = parse(&s, b"{ not json");
    assert_eq!(p.findings[0].kind, FindingKind::Malformed);
    assert!(p.findings[0].problem.contains("line 1"), "{}", p.findings[0].problem);
}

#[test]
fn malformed_toml_and_yaml_are_findings_without_content() {
    let s = src("/h/.codex/config.toml", "codex", Shape::Codex);
    let p = parse(&s, b"[mcp_servers.x]\ncommand = \"npx\"\nenv = { K = \"sk-leak\" \n");
    assert_eq!(p.findings.len(), 1, "{:?}", p.findings);
    assert!(!p.findings[0].problem.contains("leak"), "{}", p.findings[0].problem);
    let s = src("/h/.continue/config.yaml", "continue", Shape::Continue);
    let p = parse(&s, b"mcpServers:\n  - name: a\n    command: [unclosed, sk-leak\n");
    assert_eq!(p.findings.len(), 1, "{:?}", p.findings);
    assert!(!p.findings[0].problem.contains("leak"), "{}", p.findings[0].problem);
    let p = parse(&s, b"mcpServers: 5\n");
    assert_eq!(p.findings[0].kind, FindingKind::Malformed);
}

#[test]
fn empty_and_non_utf8_files() {
    let s = src("/h/.cursor/mcp.json", "cursor", Shape::McpServers);
    let p = parse(&s, b"  \n");
    assert!(p.servers.is_empty() && p.findings.is_empty());
    let p = parse(&s, b"{}");
    assert!(p.servers.is_empty() && p.findings.is_empty());
    let p = parse(&s, &[0xff, 0xfe, 0x00]);
    assert_eq!(p.findings[0].kind, FindingKind::Malformed);
}

#[test]
fn entry_without_command_or_url_is_invalid() {
    let s = src("/h/.cursor/mcp.json", "cursor", Shape::McpServers);
    let p = parse(&s, br#"{"mcpServers": {"a": {"args": ["x"]}, "b": {"command": "ok"}, "c": {"url": "nope"}}}"#);
    assert_eq!(p.servers.len(), 1);
    assert_eq!(p.findings.len(), 2);
    assert!(p.findings.iter().all(|f| f.kind == FindingKind::InvalidServer));
}

#[test]
fn url_secrets_are_stripped() {
    let s = src("/h/.cursor/mcp.json", "cursor", Shape::McpServers);
    let p = parse(&s, br#"{"mcpServers": {"a": {"url": "https://u:hunter2@h.example/sse?token=abc&x=1"}}}"#);
    let a = get(&p, "a");
    assert_eq!(a.url.as_deref(), Some("https://h.example/sse?token=REDACTED&x=1"));
    assert_eq!(a.transport, Transport::Sse);
}

#[test]
fn websocket_urls() {
    let s = src("/h/.cursor/mcp.json", "cursor", Shape::McpServers);
    let p = parse(&s, br#"{"mcpServers": {"a": {"url": "wss://h.example/mcp"}}}"#);
    assert_eq!(get(&p, "a").transport, Transport::Ws);
}

#[test]
fn redact_quoted_hides_values() {
    assert_eq!(redact_quoted("invalid type: string \"sk-1\", expected x"), "invalid type: string \"…\", expected x");
    assert_eq!(redact_quoted("unterminated \"abc"), "unterminated \"…");
}
