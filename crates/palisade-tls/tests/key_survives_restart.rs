//! A key written by one process is read back by another: the file key
//! store and the device CA survive a process restart (nothing lives only in
//! memory, unlike keyring's default mock store).

use palisade_tls::{DeviceCa, KeyBackend, KeyStore, CA_KEY_NAME};
use std::path::{Path, PathBuf};
use std::process::Command;

const CHILD_DIR_ENV: &str = "PALISADE_TLS_TEST_CHILD_DIR";
const CHILD_VALUE: &[u8] = b"written-by-the-child-process\x00\x01\x02";

fn keys(dir: &Path) -> PathBuf {
    dir.join("keys")
}
fn certs(dir: &Path) -> PathBuf {
    dir.join("certs")
}

/// Runs only when re-executed by `key_and_ca_survive_a_process_restart`.
#[test]
#[ignore = "helper: run in a child process by key_and_ca_survive_a_process_restart"]
fn child_writes_key_and_ca() {
    let dir = PathBuf::from(std::env::var_os(CHILD_DIR_ENV).expect("only run as a child process"));
    let store = KeyStore::open_file(&keys(&dir)).unwrap();
    store.set("restart-probe", CHILD_VALUE).unwrap();
    DeviceCa::load_or_create(&store, &certs(&dir), "restart-test").unwrap();
}

#[test]
fn key_and_ca_survive_a_process_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_writes_key_and_ca",
            "--ignored",
            "--test-threads=1",
            "--quiet",
        ])
        .env(CHILD_DIR_ENV, tmp.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "child process failed: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("1 passed"),
        "the helper really ran: {stdout}"
    );

    let store = KeyStore::open_file(&keys(tmp.path())).unwrap();
    assert_eq!(store.backend(), KeyBackend::File);
    let got = store
        .get("restart-probe")
        .unwrap()
        .expect("key written by the child is readable");
    assert_eq!(got.expose(), CHILD_VALUE);
    let key_before = store
        .get(CA_KEY_NAME)
        .unwrap()
        .expect("CA key persisted by the child");

    let cert_file = certs(tmp.path()).join(palisade_tls::CA_CERT_FILE);
    let cert_before = std::fs::read_to_string(&cert_file).unwrap();
    let ca = DeviceCa::load_or_create(&store, &certs(tmp.path()), "restart-test").unwrap();
    assert_eq!(
        ca.cert_pem(),
        cert_before,
        "same CA certificate, not a new one"
    );
    assert_eq!(store.get(CA_KEY_NAME).unwrap().unwrap(), key_before);
}
