//! `palisade approvals`: list the fleet catalog of AI apps and MCP servers
//! and approve or deny them, through the control plane's admin API
//! (`/api/v1/approvals`).
//!
//! The admin token comes from `--token` or `PALISADE_TOKEN` and is only ever
//! sent as a bearer header: it must never be printed, logged or put in an
//! error (its type's `Debug` hides it). Names come from devices and are
//! untrusted: the table view strips control characters.

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};
use std::io::Write;
use std::str::FromStr;

pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";
/// Widest a name cell gets before it is cut with `…`.
const NAME_WIDTH: usize = 40;

#[derive(Debug, Args)]
pub struct ApprovalsArgs {
    /// Control plane admin API base URL.
    #[arg(long, env = "PALISADE_SERVER", default_value = DEFAULT_SERVER, global = true)]
    pub server: String,
    /// Admin bearer token.
    #[arg(long, env = "PALISADE_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<Token>,
    #[command(subcommand)]
    pub command: ApprovalsCommand,
}

#[derive(Debug, Subcommand)]
pub enum ApprovalsCommand {
    /// List catalog items with their status and device count (newest first).
    List(ListArgs),
    /// Approve an app or MCP server (publishes a policy version).
    Approve(DecideArgs),
    /// Deny an app or MCP server (publishes a policy version).
    Deny(DecideArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(long, value_enum)]
    pub kind: Option<Kind>,
    #[arg(long, value_enum)]
    pub status: Option<Status>,
    /// Most items to show.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: u32,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct DecideArgs {
    #[arg(value_enum)]
    pub kind: Kind,
    /// App id, or MCP server fingerprint, as `list` shows it.
    pub id: String,
    /// Why (kept in the policy rule and the admin audit log).
    #[arg(long)]
    pub note: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    App,
    Mcp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Status {
    Pending,
    Approved,
    Denied,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// An admin token. Never printed: `Debug` shows `…`.
#[derive(Clone)]
pub struct Token(String);

#[derive(Debug, thiserror::Error)]
pub enum ApprovalsError {
    #[error("no admin token: pass --token or set PALISADE_TOKEN")]
    NoToken,
    #[error("server URL {0:?} must start with http:// or https://")]
    BadServer(String),
    #[error("cannot reach the control plane at {server}: {source}")]
    Unreachable {
        server: String,
        source: reqwest::Error,
    },
    #[error("the control plane refused the request ({status}): {message}")]
    Api { status: u16, message: String },
    #[error("unexpected answer from the control plane: {0}")]
    BadResponse(String),
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
}

// === impl Token ===

impl FromStr for Token {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t.is_empty() {
            return Err("the token is empty".into());
        }
        Ok(Token(t.to_string()))
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(…)")
    }
}

// === impl Kind, Status ===

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::App => "app",
            Kind::Mcp => "mcp",
        }
    }
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Approved => "approved",
            Status::Denied => "denied",
        }
    }
}

/// A minimal admin API client.
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Token,
}

impl Client {
    pub fn new(server: &str, token: Token) -> Result<Self, ApprovalsError> {
        let base = server.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ApprovalsError::BadServer(server.to_string()));
        }
        Ok(Self {
            http: reqwest::Client::new(),
            base: base.to_string(),
            token,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> Result<Value, ApprovalsError> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token.0)
            .query(query);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .map_err(|source| ApprovalsError::Unreachable {
                server: self.base.clone(),
                source: source.without_url(),
            })?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| {
            ApprovalsError::BadResponse(format!("reading the body: {}", e.without_url()))
        })?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if !status.is_success() {
            let message = v["error"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_string());
            return Err(ApprovalsError::Api {
                status: status.as_u16(),
                message,
            });
        }
        if v.is_null() {
            return Err(ApprovalsError::BadResponse(format!(
                "{status} without a JSON body"
            )));
        }
        Ok(v)
    }

    /// `GET /api/v1/approvals`: the items array.
    pub async fn list(
        &self,
        kind: Option<Kind>,
        status: Option<Status>,
        limit: u32,
    ) -> Result<Vec<Value>, ApprovalsError> {
        let mut q = vec![("limit", limit.to_string())];
        if let Some(k) = kind {
            q.push(("kind", k.as_str().to_string()));
        }
        if let Some(s) = status {
            q.push(("status", s.as_str().to_string()));
        }
        let v = self
            .call(reqwest::Method::GET, "/api/v1/approvals", &q, None)
            .await?;
        v["items"]
            .as_array()
            .cloned()
            .ok_or_else(|| ApprovalsError::BadResponse("no items array".into()))
    }

    /// `POST /api/v1/approvals/{kind}/{id}/{approve|deny}`: the decided item
    /// with `policy_version` and `changed`.
    pub async fn decide(
        &self,
        kind: Kind,
        id: &str,
        approve: bool,
        note: Option<&str>,
    ) -> Result<Value, ApprovalsError> {
        let verb = if approve { "approve" } else { "deny" };
        let path = format!(
            "/api/v1/approvals/{}/{}/{verb}",
            kind.as_str(),
            encode_segment(id)
        );
        let body = note.map(|n| json!({ "note": n }));
        self.call(reqwest::Method::POST, &path, &[], body).await
    }
}

/// Percent-encode one path segment (everything but RFC 3986 unreserved).
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Printable, single-line, at most `width` characters.
fn cell(s: &str, width: usize) -> String {
    let clean: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if clean.chars().count() > width {
        let mut cut: String = clean.chars().take(width.saturating_sub(1)).collect();
        cut.push('…');
        cut
    } else {
        clean
    }
}

fn str_field<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or("")
}

/// The table `list` prints.
pub fn write_table(items: &[Value], out: &mut impl Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<4} {:<8} {:>7} {:<20} {:<NAME_WIDTH$} ID",
        "KIND", "STATUS", "DEVICES", "LAST SEEN", "NAME"
    )?;
    for i in items {
        let last_seen = str_field(i, "last_seen");
        writeln!(
            out,
            "{:<4} {:<8} {:>7} {:<20} {:<NAME_WIDTH$} {}",
            cell(str_field(i, "kind"), 4),
            cell(str_field(i, "status"), 8),
            i["device_count"].as_u64().unwrap_or(0),
            cell(last_seen.get(..19).unwrap_or(last_seen), 20),
            cell(str_field(i, "name"), NAME_WIDTH),
            cell(str_field(i, "id"), 200),
        )?;
    }
    Ok(())
}

/// Run `palisade approvals …`, writing results to `out`.
pub async fn run(args: ApprovalsArgs, out: &mut impl Write) -> Result<(), ApprovalsError> {
    let token = args.token.ok_or(ApprovalsError::NoToken)?;
    let client = Client::new(&args.server, token)?;
    match args.command {
        ApprovalsCommand::List(l) => {
            let items = client.list(l.kind, l.status, l.limit).await?;
            match l.format {
                Format::Json => {
                    serde_json::to_writer_pretty(&mut *out, &items)
                        .map_err(|e| ApprovalsError::Output(e.into()))?;
                    writeln!(out)?;
                }
                Format::Table => write_table(&items, out)?,
            }
        }
        ApprovalsCommand::Approve(d) => decided(&client, d, true, out).await?,
        ApprovalsCommand::Deny(d) => decided(&client, d, false, out).await?,
    }
    Ok(())
}

async fn decided(
    client: &Client,
    d: DecideArgs,
    approve: bool,
    out: &mut impl Write,
) -> Result<(), ApprovalsError> {
    let v = client
        .decide(d.kind, &d.id, approve, d.note.as_deref())
        .await?;
    let version = v["policy_version"].as_u64().unwrap_or(0);
    let what = format!(
        "{} {} ({})",
        d.kind.as_str(),
        cell(str_field(&v, "id"), 200),
        cell(str_field(&v, "name"), NAME_WIDTH)
    );
    let status = cell(str_field(&v, "status"), 8);
    if v["changed"].as_bool().unwrap_or(false) {
        writeln!(out, "{status} {what}: policy version {version}")?;
    } else {
        writeln!(
            out,
            "{what} was already {status}: policy version {version} (unchanged)"
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_never_shows_in_debug() {
        let t: Token = "s3cr3t-token".parse().unwrap();
        assert_eq!(format!("{t:?}"), "Token(…)");
        assert!("  ".parse::<Token>().is_err());
    }

    #[test]
    fn ids_are_one_path_segment() {
        assert_eq!(encode_segment("sha256:ab12"), "sha256:ab12");
        assert_eq!(encode_segment("exe:my tool"), "exe:my%20tool");
        assert_eq!(encode_segment("a/../b?x#"), "a%2F..%2Fb%3Fx%23");
        assert_eq!(encode_segment("é"), "%C3%A9");
    }

    #[test]
    fn bad_server_urls_are_refused() {
        let t: Token = "t".parse().unwrap();
        assert!(matches!(
            Client::new("127.0.0.1:8080", t),
            Err(ApprovalsError::BadServer(_))
        ));
    }

    #[test]
    fn table_cells_cannot_drive_the_terminal() {
        let items = vec![json!({
            "kind": "mcp", "status": "pending", "device_count": 3,
            "last_seen": "2026-01-02T03:04:05.678Z",
            "name": "evil\u{1b}[2Jname", "id": "fp1",
        })];
        let mut out = Vec::new();
        write_table(&items, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains('\u{1b}'), "{text}");
        let row = text.lines().nth(1).unwrap();
        assert!(
            row.starts_with("mcp  pending        3 2026-01-02T03:04:05"),
            "{row}"
        );
        assert!(row.ends_with(" fp1"), "{row}");
        let long = cell(&"x".repeat(100), 10);
        assert_eq!(long.chars().count(), 10);
        assert!(long.ends_with('…'));
    }
}
