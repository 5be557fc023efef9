//! Phase (b) and (c): policy propagation to a connected fleet, and the
//! server's memory while the fleet is connected.
//!
//! Every simulated agent opens its own mTLS connection and holds one
//! WatchPolicy stream, as a laptop does. Once all are connected and have
//! their current version, the bench PUTs a new policy through the admin API
//! and records, per agent, the time from just before the PUT to the moment
//! the agent's task holds the new version. Agents then keep their streams open
//! until the phase ends so the fleet stays connected while memory is read.
//! Must never PUT before the fleet is connected, and never count an agent
//! that did not receive the new version.

use super::agent::{device_channel, Enrolled};
use super::stats;
use super::{FleetError, Target};
use palisade_core::policy::{Decision, ItemRule};
use palisade_core::Policy;
use palisade_proto as proto;
use proto::policy_service_client::PolicyServiceClient;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, Semaphore};

#[derive(Debug, Clone)]
pub struct PropagationConfig {
    /// Connections being set up at once.
    pub connect_concurrency: usize,
    /// Longest time to get the whole fleet connected.
    pub connect_deadline: Duration,
    /// Longest wait, after the PUT, for every agent to hold the new version.
    pub receive_deadline: Duration,
    /// The server process, when it runs as one (its memory is read).
    pub server_pid: Option<u32>,
    /// Marker put into the new policy (an app rule id), so runs differ.
    pub marker: String,
}

#[derive(Debug, Clone, Default)]
pub struct PropagationReport {
    pub agents: usize,
    pub connected: usize,
    pub connect_failures: usize,
    pub first_connect_error: Option<String>,
    pub connect_elapsed: Duration,
    pub initial_version: u64,
    pub new_version: u64,
    /// Round trip of the admin PUT.
    pub put_elapsed: Duration,
    /// PUT-to-receipt per agent that received the new version, sorted.
    pub latencies: Vec<Duration>,
    /// Agents whose first newer version was not the one PUT.
    pub other_version: usize,
    /// Streams that ended (error or close) while waiting for the new version.
    pub streams_lost: usize,
    /// Server (VmRSS, VmHWM) kB with the fleet connected, before the PUT.
    pub server_rss_connected: Option<(u64, u64)>,
    /// Server (VmRSS, VmHWM) kB after propagation.
    pub server_rss_after: Option<(u64, u64)>,
    /// Server CPU seconds spent between the PUT and the last receipt.
    pub server_cpu_propagation: Option<f64>,
    /// This load generator's VmRSS kB with the fleet connected.
    pub client_rss_connected: Option<u64>,
}

/// What an agent task tells the coordinator.
enum AgentEvent {
    Ready { version: u64 },
    ConnectFailed(String),
    Received { at: Instant, version: u64 },
    Lost,
}

/// Connect every agent, PUT a new policy, time its arrival everywhere.
pub async fn run(
    target: &Target,
    agents: Vec<Enrolled>,
    cfg: &PropagationConfig,
) -> Result<PropagationReport, FleetError> {
    let n = agents.len();
    let mut report = PropagationReport { agents: n, ..Default::default() };
    let target = Arc::new(target.clone());
    let permits = Arc::new(Semaphore::new(cfg.connect_concurrency.max(1)));
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (done_tx, done_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let start = Instant::now();
    for agent in agents {
        tasks.spawn(agent_task(
            target.clone(),
            agent,
            permits.clone(),
            events_tx.clone(),
            done_rx.clone(),
            cfg.connect_deadline,
        ));
    }
    drop(events_tx);

    // 1. Wait for the whole fleet to be connected (or to have failed).
    let connect_by = tokio::time::Instant::now() + cfg.connect_deadline;
    let mut settled = 0;
    let mut early = Vec::new();
    while settled < n {
        let ev = match tokio::time::timeout_at(connect_by, events.recv()).await {
            Ok(Some(ev)) => ev,
            Ok(None) => break,
            Err(_) => {
                let _ = done_tx.send(true);
                return Err(FleetError::Timeout(format!(
                    "only {settled} of {n} agents connected within {:?}",
                    cfg.connect_deadline
                )));
            }
        };
        match ev {
            AgentEvent::Ready { version } => {
                report.connected += 1;
                report.initial_version = report.initial_version.max(version);
                settled += 1;
                if report.connected.is_multiple_of(1000) {
                    eprintln!("  {} agents connected ({:.1}s)", report.connected, start.elapsed().as_secs_f64());
                }
            }
            AgentEvent::ConnectFailed(e) => {
                report.connect_failures += 1;
                report.first_connect_error.get_or_insert(e);
                settled += 1;
            }
            // Nothing was published yet, so a stream that ends here was lost
            // after connecting; count it with the losses below.
            other => early.push(other),
        }
    }
    report.connect_elapsed = start.elapsed();
    report.client_rss_connected = stats::rss_kb(std::process::id()).map(|(rss, _)| rss);
    report.server_rss_connected = cfg.server_pid.and_then(stats::rss_kb);
    if report.connected == 0 {
        let _ = done_tx.send(true);
        return Err(FleetError::Timeout(format!(
            "no agent connected; first error: {}",
            report.first_connect_error.as_deref().unwrap_or("none")
        )));
    }

    // 2. Publish a new version and time its arrival at each agent.
    let cpu_before = cfg.server_pid.and_then(stats::cpu_secs);
    let t0 = Instant::now();
    report.new_version = put_policy(&target, &new_policy(&cfg.marker)).await?;
    report.put_elapsed = t0.elapsed();
    let mut receipts = Vec::with_capacity(report.connected);
    let mut pending = report.connected;
    for ev in early {
        if let AgentEvent::Lost = ev {
            report.streams_lost += 1;
            pending -= 1;
        }
    }
    let receive_by = tokio::time::Instant::now() + cfg.receive_deadline;
    while pending > 0 {
        match tokio::time::timeout_at(receive_by, events.recv()).await {
            Ok(Some(AgentEvent::Received { at, version })) => {
                pending -= 1;
                if version == report.new_version {
                    receipts.push(at.saturating_duration_since(t0));
                } else {
                    report.other_version += 1;
                }
            }
            Ok(Some(AgentEvent::Lost)) => {
                pending -= 1;
                report.streams_lost += 1;
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    let cpu_after = cfg.server_pid.and_then(stats::cpu_secs);
    report.server_cpu_propagation = cpu_before.zip(cpu_after).map(|(a, b)| b - a);
    report.server_rss_after = cfg.server_pid.and_then(stats::rss_kb);
    receipts.sort_unstable();
    report.latencies = receipts;

    // 3. Let every agent go, bounded in time.
    let _ = done_tx.send(true);
    let drained = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(res) = tasks.join_next().await {
            res.map_err(FleetError::Join)?;
        }
        Ok::<_, FleetError>(())
    })
    .await;
    match drained {
        Ok(res) => res?,
        Err(_) => tasks.abort_all(),
    }
    Ok(report)
}

/// One simulated agent: connect, watch, report the first newer version, stay
/// connected until told to stop.
async fn agent_task(
    target: Arc<Target>,
    agent: Enrolled,
    permits: Arc<Semaphore>,
    events: mpsc::UnboundedSender<AgentEvent>,
    mut done: watch::Receiver<bool>,
    connect_deadline: Duration,
) {
    let connected = tokio::time::timeout(connect_deadline, async {
        let _permit = permits.acquire().await.map_err(|e| e.to_string())?;
        let channel = device_channel(&target, &agent).await.map_err(|e| e.to_string())?;
        let mut client = PolicyServiceClient::new(channel);
        let mut stream = client
            .watch_policy(proto::WatchPolicyRequest { known_version: 0 })
            .await
            .map_err(|s| format!("WatchPolicy: {}", s.message()))?
            .into_inner();
        let first = stream
            .message()
            .await
            .map_err(|s| format!("WatchPolicy first message: {}", s.message()))?
            .ok_or_else(|| "WatchPolicy ended before the first version".to_string())?;
        Ok::<_, String>((client, stream, first.version))
    })
    .await
    .unwrap_or_else(|_| Err(format!("not connected within {connect_deadline:?}")));
    let (_client, mut stream, known) = match connected {
        Ok(c) => c,
        Err(e) => {
            let _ = events.send(AgentEvent::ConnectFailed(e));
            return;
        }
    };
    let _ = events.send(AgentEvent::Ready { version: known });
    loop {
        tokio::select! {
            m = stream.message() => match m {
                Ok(Some(u)) if u.version > known => {
                    let _ = events.send(AgentEvent::Received { at: Instant::now(), version: u.version });
                    break;
                }
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => {
                    let _ = events.send(AgentEvent::Lost);
                    return;
                }
            },
            _ = done.wait_for(|d| *d) => return,
        }
    }
    // Stay connected (stream and channel held) until the phase ends.
    let _ = done.wait_for(|d| *d).await;
}

/// The default policy plus one denied app named `marker`.
pub fn new_policy(marker: &str) -> Policy {
    let mut p = Policy::default();
    p.apps.rules.push(ItemRule { id: marker.to_string(), decision: Decision::Deny, note: Some("fleet bench".into()) });
    p
}

/// `PUT /api/v1/policy` as the bootstrap admin; returns the new version.
pub async fn put_policy(target: &Target, policy: &Policy) -> Result<u64, FleetError> {
    let body = serde_json::to_string(policy).map_err(|e| FleetError::Admin { status: 0, body: e.to_string() })?;
    let resp = target
        .http
        .put(format!("http://{}/api/v1/policy", target.admin_addr))
        .bearer_auth(target.admin_token.expose())
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(FleetError::Http)?;
    let status = resp.status().as_u16();
    let text = resp.text().await.map_err(FleetError::Http)?;
    if status != 200 {
        return Err(FleetError::Admin { status, body: text });
    }
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| FleetError::Admin { status, body: format!("{e}: {text}") })?;
    v["version"].as_u64().ok_or(FleetError::Admin { status, body: format!("no version in {text}") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_policy_is_valid_and_carries_the_marker() {
        let p = new_policy("fleet-bench-x");
        p.validate().unwrap();
        let back = Policy::from_json(&serde_json::to_string(&p).unwrap()).unwrap();
        assert!(!back.apps.allows("fleet-bench-x"));
    }
}
