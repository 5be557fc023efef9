//! `palisade events`: query this device's spool and print the records as a
//! table, a JSON array or JSON lines.
//!
//! Read-only: it opens the spool with `Spool::open_read_only` and must never
//! modify it, so it is safe while the agent runs. Prompt text is untrusted:
//! the table view strips control characters so a record cannot drive the
//! terminal.

use crate::time_arg::parse_time;
use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Args, ValueEnum};
use palisade_core::AuditEvent;
use palisade_spool::{EventFilter, Spool, SpoolError};
use std::io::Write;
use std::path::PathBuf;

/// Widest a free-text table cell gets before it is cut with `…`.
const SUMMARY_WIDTH: usize = 60;

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Spool file to read [default: $PALISADE_DATA_DIR/spool.db, else the agent's data dir].
    #[arg(long, value_name = "PATH")]
    pub spool: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Record kind, e.g. interaction, app.discovered, spool.dropped.
    #[arg(long, value_name = "K")]
    pub kind: Option<String>,
    /// Provider id, e.g. openai, anthropic, gemini.
    #[arg(long, value_name = "P")]
    pub provider: Option<String>,
    /// Model name (exact, case-insensitive).
    #[arg(long, value_name = "M")]
    pub model: Option<String>,
    /// App (process) name (exact, case-insensitive).
    #[arg(long, value_name = "A")]
    pub app: Option<String>,
    /// Policy decision.
    #[arg(long, value_enum, value_name = "D")]
    pub decision: Option<DecisionArg>,
    /// Only records at or after this time: RFC 3339, a date, or an age such as 24h or 7d.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub since: Option<DateTime<Utc>>,
    /// Only records before this time (same forms as --since).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub until: Option<DateTime<Utc>>,
    /// Case-insensitive substring of the prompt or response text.
    #[arg(long, value_name = "T")]
    pub text: Option<String>,
    /// Show only the newest N matching records.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Jsonl,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DecisionArg {
    Allow,
    Block,
    Redact,
}

impl DecisionArg {
    fn as_str(self) -> &'static str {
        match self {
            DecisionArg::Allow => "allow",
            DecisionArg::Block => "block",
            DecisionArg::Redact => "redact",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error(
        "no spool at {path}: the agent has not recorded anything here yet, or keeps its data elsewhere \
         (pass --spool PATH or set PALISADE_DATA_DIR)"
    )]
    NoSpool { path: PathBuf },
    #[error(
        "permission denied reading {path}: the spool is private to the user the agent runs as \
         (run this as that user, e.g. with sudo)"
    )]
    NoPermission { path: PathBuf },
    #[error("--since {since} is not before --until {until}")]
    EmptyRange { since: String, until: String },
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
    #[error("cannot encode records as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl EventsArgs {
    fn filter(&self) -> Result<EventFilter, EventsError> {
        if let (Some(since), Some(until)) = (self.since, self.until) {
            if since >= until {
                return Err(EventsError::EmptyRange {
                    since: rfc3339(since),
                    until: rfc3339(until),
                });
            }
        }
        Ok(EventFilter {
            kind: self.kind.clone(),
            provider: self.provider.clone(),
            model: self.model.clone(),
            app: self.app.clone(),
            decision: self.decision.map(|d| d.as_str().to_string()),
            since: self.since,
            until: self.until,
            text: self.text.clone(),
            limit: self.limit.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        })
    }
}

/// Run `palisade events`, writing to `out`.
pub async fn run(args: EventsArgs, out: &mut impl Write) -> Result<(), EventsError> {
    let filter = args.filter()?;
    let path = match &args.spool {
        Some(p) => p.clone(),
        None => palisade_spool::default_spool_path(),
    };
    let spool = Spool::open_read_only(&path).await.map_err(open_error)?;
    let events = spool.query(&filter).await?;
    spool.close().await;
    render(&events, args.format, out)?;
    out.flush()?;
    Ok(())
}

fn open_error(e: SpoolError) -> EventsError {
    match e {
        SpoolError::NotFound { path } => EventsError::NoSpool { path },
        SpoolError::Io { path, source }
            if source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            EventsError::NoPermission { path }
        }
        other => EventsError::Spool(other),
    }
}

fn render(events: &[AuditEvent], format: Format, out: &mut impl Write) -> Result<(), EventsError> {
    match format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, events)?;
            writeln!(out)?;
        }
        Format::Jsonl => {
            for ev in events {
                serde_json::to_writer(&mut *out, ev)?;
                writeln!(out)?;
            }
        }
        Format::Table => write_table(events, out)?,
    }
    Ok(())
}

const HEADERS: [&str; 9] = [
    "TIME", "KIND", "USER", "APP", "PROVIDER", "MODEL", "DECISION", "TOKENS", "SUMMARY",
];

fn write_table(events: &[AuditEvent], out: &mut impl Write) -> std::io::Result<()> {
    let rows: Vec<[String; 9]> = events.iter().map(table_row).collect();
    let mut widths = HEADERS.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 9]| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s.trim_end().to_string()
    };
    writeln!(out, "{}", line(HEADERS))?;
    for row in &rows {
        writeln!(out, "{}", line(row.each_ref().map(String::as_str)))?;
    }
    Ok(())
}

fn table_row(ev: &AuditEvent) -> [String; 9] {
    let dash = || "-".to_string();
    let app = ev.app.as_ref().and_then(|a| a.name.clone());
    let (provider, model, decision, tokens, summary) = match &ev.interaction {
        Some(i) => {
            let tokens = match (i.usage.input_tokens, i.usage.output_tokens) {
                (None, None) => dash(),
                (inp, outp) => format!("{}/{}", opt_num(inp), opt_num(outp)),
            };
            let text = i
                .error
                .as_ref()
                .map(|e| format!("error: {e}"))
                .or_else(|| i.request.prompt.clone())
                .unwrap_or_else(|| format!("{} {}", i.request.method, i.request.path));
            (
                Some(i.provider.clone()),
                i.model.clone(),
                Some(i.policy.decision.as_str().to_string()),
                tokens,
                text,
            )
        }
        None => (
            None,
            None,
            None,
            dash(),
            if ev.details.is_null() {
                String::new()
            } else {
                ev.details.to_string()
            },
        ),
    };
    [
        rfc3339(ev.time),
        clean(ev.kind.as_str(), SUMMARY_WIDTH),
        ev.user
            .os_user
            .as_deref()
            .map(|u| clean(u, 24))
            .unwrap_or_else(dash),
        app.as_deref().map(|a| clean(a, 24)).unwrap_or_else(dash),
        provider
            .filter(|p| !p.is_empty())
            .map(|p| clean(&p, 24))
            .unwrap_or_else(dash),
        model.map(|m| clean(&m, 40)).unwrap_or_else(dash),
        decision.unwrap_or_else(dash),
        tokens,
        clean(&summary, SUMMARY_WIDTH),
    ]
}

fn opt_num(n: Option<u64>) -> String {
    n.map(|n| n.to_string()).unwrap_or_else(|| "?".into())
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// One line of at most `max` characters with every control character
/// (newlines, ESC, ...) replaced by a space.
fn clean(s: &str, max: usize) -> String {
    let mut out = String::new();
    let mut n = 0;
    let mut last_space = false;
    for c in s.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if c == ' ' && last_space {
            continue;
        }
        last_space = c == ' ';
        if n + 1 == max {
            out.push('…');
            return out;
        }
        out.push(c);
        n += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_core::{DeviceRef, EventKind, Interaction, Usage, UserRef};

    #[test]
    fn clean_strips_control_characters_and_truncates() {
        assert_eq!(clean("a\nb\x1b[31mred\x07", 60), "a b [31mred ");
        assert_eq!(clean("abcdef", 4), "abc…");
        assert_eq!(clean("abc", 4), "abc");
        assert_eq!(clean("a  \n\n b", 60), "a b");
    }

    #[test]
    fn table_aligns_columns_and_shows_missing_values_as_dash() {
        let mut a = AuditEvent::new(
            EventKind::Interaction,
            DeviceRef::default(),
            UserRef {
                os_user: Some("alice".into()),
                email: None,
                team: None,
            },
        );
        a.interaction = Some(Interaction {
            provider: "openai".into(),
            model: Some("gpt-4o".into()),
            usage: Usage {
                input_tokens: Some(12),
                output_tokens: Some(3),
                ..Default::default()
            },
            request: palisade_core::RequestCapture {
                prompt: Some("hi\nthere".into()),
                ..Default::default()
            },
            ..Default::default()
        });
        let mut b = AuditEvent::new(
            EventKind::AppDiscovered,
            DeviceRef::default(),
            UserRef::default(),
        );
        b.details = serde_json::json!({"app": "Cursor"});
        let mut out = Vec::new();
        write_table(&[a, b], &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("TIME"));
        let col = lines[0].find("PROVIDER").unwrap();
        assert_eq!(&lines[1][col..col + 6], "openai", "{text}");
        assert_eq!(&lines[2][col..col + 1], "-", "{text}");
        assert!(lines[1].contains("12/3"));
        assert!(lines[1].ends_with("hi there"), "{text}");
        assert!(lines[2].ends_with(r#"{"app":"Cursor"}"#), "{text}");
    }

    #[test]
    fn open_errors_get_hints() {
        let denied = SpoolError::Io {
            path: "/root/x/spool.db".into(),
            source: std::io::ErrorKind::PermissionDenied.into(),
        };
        let e = open_error(denied);
        assert!(matches!(e, EventsError::NoPermission { .. }), "{e}");
        assert!(e.to_string().contains("sudo"), "{e}");
        let missing = open_error(SpoolError::NotFound {
            path: "/nope/spool.db".into(),
        });
        assert!(
            missing.to_string().contains("PALISADE_DATA_DIR"),
            "{missing}"
        );
        let other = open_error(SpoolError::ReadOnly);
        assert!(
            matches!(other, EventsError::Spool(SpoolError::ReadOnly)),
            "{other}"
        );
    }

    #[test]
    fn empty_range_is_rejected() {
        let t = Utc::now();
        let args = EventsArgs {
            spool: None,
            format: Format::Table,
            kind: None,
            provider: None,
            model: None,
            app: None,
            decision: None,
            since: Some(t),
            until: Some(t),
            text: None,
            limit: None,
        };
        let e = args.filter().unwrap_err();
        assert!(e.to_string().contains("is not before --until"), "{e}");
    }
}
