//! Tests for the key store: file modes, atomic writes, refusals, backend selection.
//! Offline only; only the `open()` test may probe the real keyring (write+delete of a probe entry).

use super::*;
use std::os::unix::fs::PermissionsExt;

fn mode_of(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn set_get_roundtrip_and_survives_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("keys");
    {
        let store = KeyStore::open_file(&dir).unwrap();
        assert_eq!(store.backend(), KeyBackend::File);
        assert!(store.get("device-ca-key").unwrap().is_none());
        store
            .set("device-ca-key", b"\x00\x01binary\xffsecret")
            .unwrap();
    }
    let store = KeyStore::open_file(&dir).unwrap();
    let got = store
        .get("device-ca-key")
        .unwrap()
        .expect("key survives reopen");
    assert_eq!(got.expose(), b"\x00\x01binary\xffsecret");
}

#[test]
fn overwrite_replaces_and_leaves_no_temp_files() {
    let tmp = tempfile::tempdir().unwrap();
    let store = KeyStore::open_file(tmp.path()).unwrap();
    store.set("k", b"one").unwrap();
    store.set("k", b"two").unwrap();
    assert_eq!(store.get("k").unwrap().unwrap().expose(), b"two");
    let names: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec!["k.key".to_string()]);
}

#[test]
fn new_dir_is_0700_and_key_file_is_0600() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a").join("keys");
    let store = KeyStore::open_file(&dir).unwrap();
    assert_eq!(mode_of(&dir), 0o700);
    store.set("device-ca-key", b"x").unwrap();
    assert_eq!(mode_of(&dir.join("device-ca-key.key")), 0o600);
}

#[test]
fn existing_open_dir_is_tightened_to_0700() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("keys");
    fs::create_dir(&dir).unwrap();
    set_mode(&dir, 0o755).unwrap();
    KeyStore::open_file(&dir).unwrap();
    assert_eq!(mode_of(&dir), 0o700);
}

#[test]
fn sticky_shared_dir_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shared");
    fs::create_dir(&dir).unwrap();
    set_mode(&dir, 0o1777).unwrap();
    let err = KeyStore::open_file(&dir).unwrap_err();
    assert!(matches!(err, TlsError::InsecureKeyDir { .. }), "{err:?}");
    assert!(err.to_string().contains("sticky"), "{err}");
}

#[test]
fn dir_path_that_is_a_file_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("not-a-dir");
    fs::write(&file, b"").unwrap();
    let err = KeyStore::open_file(&file).unwrap_err();
    assert!(err.to_string().contains("not a directory"), "{err}");
}

#[test]
fn group_or_world_readable_key_file_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = KeyStore::open_file(tmp.path()).unwrap();
    store.set("device-ca-key", b"secret").unwrap();
    let path = tmp.path().join("device-ca-key.key");
    for mode in [0o644, 0o640, 0o604] {
        set_mode(&path, mode).unwrap();
        let err = store.get("device-ca-key").unwrap_err();
        assert!(
            matches!(err, TlsError::InsecureKeyFile { mode: m, .. } if m == mode),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("chmod 600"), "{msg}");
        assert!(!msg.contains("secret"), "{msg}");
    }
    set_mode(&path, 0o400).unwrap();
    assert_eq!(
        store.get("device-ca-key").unwrap().unwrap().expose(),
        b"secret"
    );
}

#[test]
fn symlinked_key_file_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = KeyStore::open_file(tmp.path()).unwrap();
    let target = tmp.path().join("elsewhere");
    fs::write(&target, b"secret").unwrap();
    set_mode(&target, 0o600).unwrap();
    std::os::unix::fs::symlink(&target, tmp.path().join("k.key")).unwrap();
    let err = store.get("k").unwrap_err();
    assert!(matches!(err, TlsError::NotARegularFile { .. }), "{err:?}");
}

#[test]
fn directory_in_place_of_key_file_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = KeyStore::open_file(tmp.path()).unwrap();
    fs::create_dir(tmp.path().join("k.key")).unwrap();
    set_mode(&tmp.path().join("k.key"), 0o700).unwrap();
    let err = store.get("k").unwrap_err();
    assert!(matches!(err, TlsError::NotARegularFile { .. }), "{err:?}");
}

#[test]
fn delete_removes_and_is_idempotent() {
    let tmp = tempfile::tempdir().unwrap();
    let store = KeyStore::open_file(tmp.path()).unwrap();
    store.set("k", b"v").unwrap();
    store.delete("k").unwrap();
    assert!(store.get("k").unwrap().is_none());
    store.delete("k").unwrap();
}

#[test]
fn bad_key_names_are_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let store = KeyStore::open_file(tmp.path()).unwrap();
    let long = "a".repeat(MAX_KEY_NAME_LEN + 1);
    for bad in [
        "",
        ".hidden",
        "../escape",
        "a/b",
        "sp ace",
        "nul\0",
        long.as_str(),
    ] {
        let err = store.set(bad, b"v").unwrap_err();
        assert!(
            matches!(err, TlsError::InvalidKeyName { .. }),
            "{bad:?}: {err:?}"
        );
        assert!(store.get(bad).is_err(), "{bad:?}");
        assert!(store.delete(bad).is_err(), "{bad:?}");
    }
    // Nothing was written outside (or inside) the directory.
    assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
}

#[test]
fn debug_does_not_print_secrets() {
    let tmp = tempfile::tempdir().unwrap();
    let store = KeyStore::open_file(tmp.path()).unwrap();
    store.set("k", b"TOPSECRETVALUE").unwrap();
    let secret = store.get("k").unwrap().unwrap();
    let dbg = format!("{store:?} {secret:?} {:?}", store.get("k"));
    assert!(!dbg.contains("TOPSECRETVALUE"), "{dbg}");
}

#[test]
fn open_on_headless_linux_falls_back_to_file_and_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("fallback");
    let store = KeyStore::open("palisade-test", &dir);
    let headless = linux_no_session_bus(|k| std::env::var_os(k)).is_some();
    if headless {
        assert_eq!(store.backend(), KeyBackend::File);
        assert!(
            store.selection_reason().contains("D-Bus"),
            "{}",
            store.selection_reason()
        );
        assert_eq!(mode_of(&dir), 0o700, "fallback dir prepared at open");
        store.set("k", b"v").unwrap();
        assert_eq!(store.get("k").unwrap().unwrap().expose(), b"v");
    } else {
        // A desktop session: either backend is a valid outcome, but it must say why.
        assert!(!store.selection_reason().is_empty());
    }
}

#[test]
fn session_bus_detection() {
    use std::ffi::OsString;
    let none = |_: &str| None::<OsString>;
    assert!(linux_no_session_bus(none)
        .unwrap()
        .contains("DBUS_SESSION_BUS_ADDRESS"));
    let with_addr =
        |k: &str| (k == "DBUS_SESSION_BUS_ADDRESS").then(|| OsString::from("unix:path=/x"));
    assert!(linux_no_session_bus(with_addr).is_none());
    let empty_addr = |k: &str| (k == "DBUS_SESSION_BUS_ADDRESS").then(|| OsString::from(""));
    assert!(linux_no_session_bus(empty_addr).is_some());
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("bus"), b"").unwrap();
    let rt = tmp.path().as_os_str().to_owned();
    let with_runtime = move |k: &str| (k == "XDG_RUNTIME_DIR").then(|| rt.clone());
    assert!(linux_no_session_bus(with_runtime).is_none());
}
