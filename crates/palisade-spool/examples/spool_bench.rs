//! Measures the spool on this machine: durable single appends (one fsync
//! each), batched appends, concurrent appends, peek/ack drain and a text
//! query. Prints figures; asserts nothing.
//!
//! `cargo run -p palisade-spool --example spool_bench [--release] [-- DIR]`

use palisade_core::{
    AppRef, AuditEvent, DeviceRef, EventKind, Interaction, RequestCapture, ResponseCapture, UserRef,
};
use palisade_spool::{EventFilter, Spool, SpoolOptions};
use std::time::{Duration, Instant};

fn event(i: usize) -> AuditEvent {
    let mut ev = AuditEvent::new(
        EventKind::Interaction,
        DeviceRef {
            id: "dev".into(),
            hostname: "host".into(),
            os: "linux".into(),
        },
        UserRef {
            os_user: Some("alice".into()),
            email: None,
            team: None,
        },
    );
    ev.app = Some(AppRef {
        name: Some("curl".into()),
        exe: Some("/usr/bin/curl".into()),
        pid: Some(1),
        ..Default::default()
    });
    ev.interaction = Some(Interaction {
        provider: "openai".into(),
        host: "api.openai.com".into(),
        endpoint: "chat.completions".into(),
        model: Some("gpt-4o".into()),
        request: RequestCapture {
            prompt: Some(format!("request {i}: {}", "lorem ipsum ".repeat(80))),
            ..Default::default()
        },
        response: ResponseCapture {
            status: Some(200),
            text: Some("dolor sit amet ".repeat(60)),
            ..Default::default()
        },
        ..Default::default()
    });
    ev
}

fn pct(v: &mut [Duration], p: usize) -> Duration {
    v.sort();
    v[(v.len() * p / 100).min(v.len() - 1)]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = match std::env::args().nth(1) {
        Some(d) => std::path::PathBuf::from(d),
        None => std::env::temp_dir().join(format!("spool-bench-{}", std::process::id())),
    };
    let path = dir.join("spool.db");
    let spool = Spool::open(&path, SpoolOptions::default()).await?;
    let body = serde_json::to_string(&event(0))?.len();
    println!("record size ~{body} bytes; spool at {}", path.display());

    let mut lat = Vec::new();
    let t = Instant::now();
    for i in 0..500 {
        let ev = event(i);
        let s = Instant::now();
        spool.append(&ev).await?;
        lat.push(s.elapsed());
    }
    let el = t.elapsed();
    println!(
        "single append (1 fsync each): {:.0}/s  p50 {:?}  p99 {:?}",
        500.0 / el.as_secs_f64(),
        pct(&mut lat, 50),
        pct(&mut lat, 99)
    );

    let evs: Vec<_> = (0..64 * 200).map(event).collect();
    let t = Instant::now();
    for chunk in evs.chunks(64) {
        spool.append_batch(chunk).await?;
    }
    println!(
        "batches of 64: {:.0} records/s",
        evs.len() as f64 / t.elapsed().as_secs_f64()
    );

    let t = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..50 {
        let spool = spool.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                spool.append(&event(100_000 + task * 100 + i)).await?;
            }
            Ok::<_, palisade_spool::SpoolError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    println!(
        "50 tasks x 20 single appends: {:.0} records/s",
        1000.0 / t.elapsed().as_secs_f64()
    );

    let stats = spool.stats().await?;
    let t = Instant::now();
    let hits = spool
        .query(&EventFilter {
            text: Some("request 12345:".into()),
            ..Default::default()
        })
        .await?;
    println!(
        "text query over {} records: {:?} ({} hit)",
        stats.count,
        t.elapsed(),
        hits.len()
    );
    let t = Instant::now();
    let recent = spool
        .query(&EventFilter {
            provider: Some("openai".into()),
            limit: Some(50),
            ..Default::default()
        })
        .await?;
    println!(
        "newest 50 by provider: {:?} ({} rows)",
        t.elapsed(),
        recent.len()
    );

    let t = Instant::now();
    let mut drained = 0;
    loop {
        let page = spool.peek(500).await?;
        if page.is_empty() {
            break;
        }
        let ids: Vec<_> = page.iter().map(|e| e.id).collect();
        drained += spool.ack(&ids).await?;
    }
    println!(
        "drain via peek(500)+ack: {:.0} records/s",
        drained as f64 / t.elapsed().as_secs_f64()
    );
    println!(
        "file after drain: {} bytes (was {} bytes)",
        spool.stats().await?.file_bytes,
        stats.file_bytes
    );
    spool.close().await;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
