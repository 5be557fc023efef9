//! Phase (d): the server's per-record conversion cost, measured in this
//! process on one thread with the server library's own code path
//! (`IncomingEvent::try_from` + `into_new_event`), next to a typed-only parse
//! of the same bytes and a parse of only the indexed columns (what the store
//! needs if it keeps the bytes as sent). It explains the ingest figure (how
//! much of the server's CPU per event is JSON work); it must never be read as
//! the ingest rate itself. Times are this thread's CPU time, so other load on
//! the machine does not inflate them.

use super::records::RecordFactory;
use palisade_core::AuditEvent;
use palisade_server::convert::IncomingEvent;
use serde::Deserialize;
use std::borrow::Cow;

/// Only the columns the store indexes, borrowed from the bytes; everything
/// else is skipped, not built. (`AuditEvent` flattens `Interaction`, which
/// makes serde buffer the whole object first.)
#[derive(Deserialize)]
#[allow(dead_code)] // fields are read by the parser only; this models the work
struct IndexFields<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    time: Cow<'a, str>,
    #[serde(borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    device: DeviceIdx<'a>,
    #[serde(default, borrow)]
    provider: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    model: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    app: Option<AppIdx<'a>>,
    #[serde(default, borrow)]
    policy: Option<PolicyIdx<'a>>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct DeviceIdx<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct AppIdx<'a> {
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct PolicyIdx<'a> {
    #[serde(borrow)]
    decision: Cow<'a, str>,
}

/// CPU seconds this thread has used (10 ms resolution).
fn thread_cpu() -> f64 {
    std::fs::read_to_string("/proc/thread-self/stat").ok().and_then(|s| super::stats::stat_cpu_secs(&s)).unwrap_or(0.0)
}

/// What one record costs, in microseconds of one core.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecodeCost {
    /// Server path: JSON -> map -> AuditEvent, then map -> JSON string again.
    pub server_path_us: f64,
    /// Typed parse of the same bytes straight into `AuditEvent`, nothing else.
    pub typed_only_us: f64,
    /// Parse of only the indexed columns, borrowed, rest skipped.
    pub index_only_us: f64,
    pub records: usize,
}

/// Convert `records` fresh records both ways; returns per-record costs.
pub fn measure(records: usize) -> DecodeCost {
    let mut f = RecordFactory::new("0190a000-0000-7000-8000-000000000001", 5);
    let input: Vec<_> = (0..records).map(|_| f.record()).collect();
    let typed: Vec<_> = input.iter().map(|r| r.json.clone()).collect();

    let t = thread_cpu();
    let mut stored = 0usize;
    for r in input {
        if let Ok(ev) = IncomingEvent::try_from(r) {
            let (row, _) = ev.into_new_event("0190a000-0000-7000-8000-000000000001");
            stored += row.json.len();
        }
    }
    let server = thread_cpu() - t;

    let t = thread_cpu();
    let mut parsed = 0usize;
    for json in &typed {
        if serde_json::from_slice::<AuditEvent>(json).is_ok() {
            parsed += 1;
        }
    }
    let typed_only = thread_cpu() - t;

    let t = thread_cpu();
    for json in &typed {
        if serde_json::from_slice::<IndexFields>(json).is_ok() {
            parsed += 1;
        }
    }
    let index_only = thread_cpu() - t;
    std::hint::black_box((stored, parsed));
    let per = |secs: f64| secs * 1e6 / records.max(1) as f64;
    DecodeCost {
        server_path_us: per(server),
        typed_only_us: per(typed_only),
        index_only_us: per(index_only),
        records,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_records_pass_the_server_conversion() {
        let mut f = RecordFactory::new("dev-a", 1);
        for _ in 0..20 {
            let r = f.record();
            let id = r.id.clone();
            let ev = IncomingEvent::try_from(r).expect("the server must accept bench records");
            let (row, spoofed) = ev.into_new_event("dev-a");
            assert_eq!(row.id.to_string(), id);
            assert!(!spoofed);
            assert!(row.provider.is_some());
        }
        assert_eq!(measure(10).records, 10);
    }

    #[test]
    fn index_fields_parse_bench_records_and_skip_the_rest() {
        let r = RecordFactory::new("dev-b", 2).record();
        let idx: IndexFields = serde_json::from_slice(&r.json).unwrap();
        assert_eq!(idx.id, r.id);
        assert_eq!(idx.device.id, "dev-b");
        assert_eq!(idx.kind, "interaction");
        assert!(idx.provider.is_some() && idx.model.is_some());
        assert_eq!(idx.policy.unwrap().decision, "allow");
    }
}
