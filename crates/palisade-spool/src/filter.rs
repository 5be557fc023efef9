//! [`EventFilter`]: what `palisade events` asks the spool for, and the one
//! place that turns it into SQL.
//!
//! Every value is a bound parameter; this module must never format user
//! input into SQL text.

use chrono::{DateTime, Utc};
use sqlx::{QueryBuilder, Sqlite};

/// Which records to return from [`crate::Spool::query`]. Unset fields match
/// everything. String fields match exactly, ASCII case-insensitively except
/// `kind` and `decision`; `text` is a case-insensitive substring of the
/// prompt or the response text. `since` is inclusive, `until` exclusive.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventFilter {
    pub kind: Option<String>,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub app: Option<String>,
    pub decision: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub text: Option<String>,
    /// Newest `limit` matches (returned oldest first).
    pub limit: Option<usize>,
}

/// Escape `%`, `_` and the escape character itself for `LIKE ... ESCAPE '\'`.
pub(crate) fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `SELECT seq, id, body ...` for `f`, ordered oldest first. The filter and
/// the limit pick row numbers first so bodies are read only for the rows
/// returned, never sorted.
pub(crate) fn build_query(f: &EventFilter) -> QueryBuilder<'static, Sqlite> {
    let mut qb = QueryBuilder::new(
        "SELECT seq, id, body FROM events WHERE seq IN (SELECT seq FROM events WHERE 1 = 1",
    );
    if let Some(kind) = &f.kind {
        qb.push(" AND kind = ").push_bind(kind.clone());
    }
    for (column, value) in [
        ("provider", &f.provider),
        ("model", &f.model),
        ("app", &f.app),
    ] {
        if let Some(v) = value {
            // `column` is one of our own literals above, never user input.
            qb.push(format_args!(" AND {column} = "))
                .push_bind(v.clone())
                .push(" COLLATE NOCASE");
        }
    }
    if let Some(d) = &f.decision {
        qb.push(" AND decision = ")
            .push_bind(d.to_ascii_lowercase());
    }
    if let Some(since) = f.since {
        qb.push(" AND time_us >= ")
            .push_bind(since.timestamp_micros());
    }
    if let Some(until) = f.until {
        qb.push(" AND time_us < ")
            .push_bind(until.timestamp_micros());
    }
    if let Some(text) = &f.text {
        let pattern = format!("%{}%", like_escape(text));
        qb.push(" AND (json_extract(body, '$.request.prompt') LIKE ")
            .push_bind(pattern.clone())
            .push(" ESCAPE '\\' OR json_extract(body, '$.response.text') LIKE ")
            .push_bind(pattern)
            .push(" ESCAPE '\\')");
    }
    if let Some(limit) = f.limit {
        qb.push(" ORDER BY time_us DESC, seq DESC LIMIT ")
            .push_bind(i64::try_from(limit).unwrap_or(i64::MAX));
    }
    qb.push(") ORDER BY time_us ASC, seq ASC");
    qb
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_escape_escapes_wildcards_and_backslash() {
        assert_eq!(like_escape("100%_a\\b"), "100\\%\\_a\\\\b");
        assert_eq!(like_escape("plain"), "plain");
    }

    #[test]
    fn user_values_never_reach_sql_text() {
        let f = EventFilter {
            kind: Some("x' OR 1=1 --".into()),
            provider: Some("p'; DROP TABLE events; --".into()),
            text: Some("'); DELETE FROM events; --".into()),
            ..Default::default()
        };
        let sql = build_query(&f).into_sql();
        assert!(!sql.contains("DROP"), "{sql}");
        assert!(!sql.contains("DELETE"), "{sql}");
        assert!(!sql.contains("OR 1=1"), "{sql}");
    }
}
