//! End-to-end test of `palisade up`: the built binary on ports 0 and a temp
//! data dir. Reads the banner, checks the admin API lists exactly one
//! enrolled device and the proxy serves its PAC file, stops it with SIGTERM,
//! then starts it again on the same data dir (same device, new admin token).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(120);

struct Up {
    child: Child,
    banner: Vec<String>,
}

impl Up {
    fn start(data_dir: &std::path::Path) -> Up {
        let mut child = Command::new(env!("CARGO_BIN_EXE_palisade"))
            .args(["up", "--grpc-port", "0", "--admin-port", "0", "--proxy-port", "0", "--data-dir"])
            .arg(data_dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut banner = Vec::new();
        loop {
            let line = rx.recv_timeout(WAIT).expect("the banner within the deadline");
            let done = line.contains("Press Ctrl-C to stop.");
            banner.push(line);
            if done {
                break;
            }
        }
        Up { child, banner }
    }

    /// The value after `label:` in the banner.
    fn value(&self, label: &str) -> String {
        let prefix = format!("{label}:");
        self.banner
            .iter()
            .find_map(|l| l.trim().strip_prefix(&prefix).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| panic!("no {label} in banner:\n{}", self.banner.join("\n")))
    }

    fn sigterm_and_wait(mut self) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "palisade up exited with {status}");
                return;
            }
            assert!(std::time::Instant::now() < deadline, "palisade up did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 GET: (status, body).
fn get(url: &str, bearer: Option<&str>) -> (u16, String) {
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, "/".into()));
    let mut s = TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth = bearer.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status = raw.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

fn devices(api: &str, token: &str) -> Vec<serde_json::Value> {
    let (status, body) = get(&format!("{api}devices"), Some(token));
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["devices"].as_array().unwrap().clone()
}

#[test]
fn up_starts_an_enrolled_agent_and_a_second_run_reuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path());
    let proxy = up.value("Proxy");
    let api = up.value("API");
    let token = up.value("Admin token");
    let device_id = up.value("Device id");
    assert!(token.starts_with("pal_admin_"), "{token}");
    let ca = up.value("Device CA");
    assert!(std::path::Path::new(&ca).is_file(), "{ca}");
    assert!(up.banner.iter().any(|l| l.contains(&format!("export NODE_EXTRA_CA_CERTS={ca}"))));
    assert!(up.banner.iter().any(|l| l.contains(&format!("export HTTPS_PROXY={proxy}"))));

    let list = devices(&api, &token);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["id"], device_id.as_str());
    assert_eq!(list[0]["revoked"], false);
    let console = up.value("Console");
    let (status, page) = get(&console, None);
    assert_eq!(status, 200, "the console is served at {console}");
    assert!(page.contains("/console/app.js"), "{page}");
    let (status, _) = get(&format!("{api}devices"), Some("pal_admin_wrong"));
    assert_eq!(status, 401, "the API refuses a wrong token");

    let (status, pac) = get(&format!("{proxy}/proxy.pac"), None);
    assert_eq!(status, 200);
    assert!(pac.contains("FindProxyForURL"), "{pac}");
    assert!(pac.contains(&format!("PROXY {}", proxy.trim_start_matches("http://"))), "{pac}");
    up.sigterm_and_wait();

    let again = Up::start(dir.path());
    let token2 = again.value("Admin token");
    assert_ne!(token2, token, "every run prints a new admin token");
    assert_eq!(again.value("Device id"), device_id, "the identity is reused");
    let list = devices(&again.value("API"), &token2);
    assert_eq!(list.len(), 1, "no duplicate device: {list:?}");
    again.sigterm_and_wait();

    // A reset server store: the stale identity is dropped and the agent enrolls anew.
    for entry in std::fs::read_dir(dir.path().join("server")).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap().to_string_lossy().starts_with("palisade.db") {
            std::fs::remove_file(path).unwrap();
        }
    }
    let fresh = Up::start(dir.path());
    let new_id = fresh.value("Device id");
    assert_ne!(new_id, device_id);
    let list = devices(&fresh.value("API"), &fresh.value("Admin token"));
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["id"], new_id.as_str());
    fresh.sigterm_and_wait();
}
