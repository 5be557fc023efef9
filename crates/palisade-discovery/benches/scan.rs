//! Full-scan benchmark and watcher idle-CPU measurement.
//!
//! Builds a home with 50 projects (each with `.mcp.json`, `.cursor/mcp.json`
//! and `.vscode/mcp.json`, all listed in `~/.claude.json`) plus every user
//! config, times full scans, then runs the watcher idle for 20 s and reads
//! this process's CPU time from /proc/self/stat. Run with
//! `cargo bench -p palisade-discovery --bench scan`.

use palisade_discovery::{scan, watch, ScanConfig, WatchConfig};
use std::path::Path;
use std::time::{Duration, Instant};

fn put(path: &Path, bytes: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)).unwrap()
}

/// utime + stime of this process in clock ticks (fields 14 and 15).
fn cpu_ticks() -> u64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let home = root.join("home/dev");
    for (rel, fx) in [
        (".config/Claude/claude_desktop_config.json", "claude_desktop_config.json"),
        (".cursor/mcp.json", "cursor_mcp.json"),
        (".codeium/windsurf/mcp_config.json", "windsurf_mcp_config.json"),
        (".config/Code/User/mcp.json", "vscode_mcp.json"),
        (".gemini/settings.json", "gemini_settings.json"),
        (".config/opencode/opencode.jsonc", "opencode.jsonc"),
        (".codex/config.toml", "codex_config.toml"),
        (".config/zed/settings.json", "zed_settings.json"),
        (".continue/config.yaml", "continue_config.yaml"),
        (".lmstudio/mcp.json", "lmstudio_mcp.json"),
    ] {
        put(&home.join(rel), &fixture(fx));
    }
    let mut projects = Vec::new();
    for i in 0..50 {
        let p = home.join(format!("src/project-{i:02}"));
        put(&p.join(".mcp.json"), &format!(r#"{{"mcpServers": {{"db-{i}": {{"command": "npx", "args": ["-y", "pg-mcp", "postgres://localhost/{i}"], "env": {{"PGPASSWORD": "x"}}}}}}}}"#));
        put(&p.join(".cursor/mcp.json"), &fixture("cursor_mcp.json"));
        put(&p.join(".vscode/mcp.json"), &fixture("vscode_mcp.json"));
        projects.push(format!("\"{}\": {{\"mcpServers\": {{}}}}", p.display()));
    }
    put(&home.join(".claude.json"), &format!(r#"{{"mcpServers": {{}}, "projects": {{{}}}}}"#, projects.join(",")));

    let cfg = ScanConfig::for_homes(root, vec![home.clone()]);
    let warm = scan(&cfg);
    println!("inventory: {} servers, {} findings, {} candidate paths", warm.servers.len(), warm.findings.len(), warm.candidates.len());
    let mut times = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let inv = scan(&cfg);
        times.push(t.elapsed());
        assert_eq!(inv.servers.len(), warm.servers.len());
    }
    times.sort();
    println!(
        "full scan (50 projects): median {:.2} ms, min {:.2} ms, max {:.2} ms over {} runs",
        times[times.len() / 2].as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3,
        times.len()
    );

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let (handle, mut rx) = watch(WatchConfig::new(cfg.clone())).unwrap();
        rx.recv().await.unwrap();
        let ticks_per_s = 100.0; // USER_HZ on Linux
        let before = cpu_ticks();
        let t = Instant::now();
        let idle = Duration::from_secs(20);
        let _ = tokio::time::timeout(idle, rx.recv()).await;
        let used = (cpu_ticks() - before) as f64 / ticks_per_s;
        println!(
            "watcher idle: {:.3} s CPU over {:.1} s wall ({:.3}% of one core)",
            used,
            t.elapsed().as_secs_f64(),
            used / t.elapsed().as_secs_f64() * 100.0
        );
        handle.stop().await;
    });
}
