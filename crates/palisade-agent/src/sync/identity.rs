//! The device's control-plane identity: enrollment (token + CSR -> client
//! certificate), its storage, and the device facts sent with it.
//!
//! Storage: the private key lives in the agent's [`KeyStore`] (OS keyring or
//! a 0600 file) under [`DEVICE_KEY_NAME`]; the certificate chain and the
//! server CA are public and go to `data_dir` (0644); `identity.json` is
//! written last, atomically, and is the marker that an identity exists. A
//! crash half-way through enrollment therefore leaves no identity (the next
//! start enrolls again; the server supersedes the orphaned record by hardware
//! id). This module must never log or `Debug` the key or the enrollment token.

use super::SyncError;
use chrono::{DateTime, Utc};
use palisade_proto as proto;
use palisade_tls::{KeyStore, Secret};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tracing::{info, warn};

/// Key store entry holding the device's mTLS private key (PKCS#8 PEM).
pub const DEVICE_KEY_NAME: &str = "device-mtls-key";
/// Marker and metadata of an enrolled identity, in `data_dir`.
pub const IDENTITY_FILE: &str = "identity.json";
/// The issued client certificate chain (PEM), in `data_dir`.
pub const DEVICE_CERT_FILE: &str = "device-cert.pem";
/// The server CA returned at enrollment (PEM), in `data_dir`.
pub const SERVER_CA_FILE: &str = "server-ca.pem";
/// A random hardware id, kept when the platform offers none.
pub const HARDWARE_ID_FILE: &str = "hardware-id";

/// An enrolled device identity.
#[derive(Clone)]
pub struct DeviceIdentity {
    pub device_id: String,
    pub cert_chain_pem: String,
    pub server_ca_pem: String,
    pub not_after: Option<DateTime<Utc>>,
    key_pem: Arc<Secret>,
}

impl std::fmt::Debug for DeviceIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceIdentity")
            .field("device_id", &self.device_id)
            .field("not_after", &self.not_after)
            .field("key_pem", &"...")
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityFile {
    device_id: String,
    server_url: String,
    not_after_unix_ms: i64,
    enrolled_at: DateTime<Utc>,
}

// === impl DeviceIdentity ===

impl DeviceIdentity {
    /// The private key, PEM. Only for building the TLS identity.
    pub(crate) fn key_pem(&self) -> &Secret {
        &self.key_pem
    }
}

/// The enrolled device id, if `data_dir` holds an identity (no key access).
pub fn stored_device_id(data_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(data_dir.join(IDENTITY_FILE)).ok()?;
    let file: IdentityFile = serde_json::from_str(&text).ok()?;
    Some(file.device_id).filter(|id| !id.is_empty())
}

/// Forget the stored identity (the next start enrolls again), e.g. when
/// the control plane it belongs to no longer knows it. The key is left in
/// the key store; enrollment replaces it.
pub fn forget(data_dir: &Path) -> Result<(), SyncError> {
    let path = data_dir.join(IDENTITY_FILE);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(SyncError::Io { path, source }),
    }
}

/// Load the stored identity. `Ok(None)`: never enrolled. An identity whose
/// key or certificate went missing is an error naming what is missing.
pub fn load(data_dir: &Path, keys: &KeyStore) -> Result<Option<DeviceIdentity>, SyncError> {
    let path = data_dir.join(IDENTITY_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(SyncError::Io { path, source }),
    };
    let file: IdentityFile = serde_json::from_str(&text).map_err(|e| SyncError::Corrupt {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    if file.device_id.trim().is_empty() {
        return Err(SyncError::Corrupt {
            path,
            reason: "device_id is empty".into(),
        });
    }
    let cert_chain_pem = read_pem(&data_dir.join(DEVICE_CERT_FILE))?;
    let server_ca_pem = read_pem(&data_dir.join(SERVER_CA_FILE))?;
    let key_pem = keys
        .get(DEVICE_KEY_NAME)?
        .ok_or_else(|| SyncError::MissingKey {
            name: DEVICE_KEY_NAME,
        })?;
    Ok(Some(DeviceIdentity {
        device_id: file.device_id,
        cert_chain_pem,
        server_ca_pem,
        not_after: DateTime::from_timestamp_millis(file.not_after_unix_ms),
        key_pem: Arc::new(key_pem),
    }))
}

fn read_pem(path: &Path) -> Result<String, SyncError> {
    let text = std::fs::read_to_string(path).map_err(|source| SyncError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if !text.contains("-----BEGIN CERTIFICATE-----") {
        return Err(SyncError::Corrupt {
            path: path.to_path_buf(),
            reason: "no PEM certificate".into(),
        });
    }
    Ok(text)
}

/// Persist a freshly enrolled identity: key, then certificates, then the
/// `identity.json` marker (atomic), so a crash never leaves half an identity.
pub fn save(
    data_dir: &Path,
    keys: &KeyStore,
    identity: &DeviceIdentity,
    server_url: &str,
) -> Result<(), SyncError> {
    keys.set(DEVICE_KEY_NAME, identity.key_pem.expose())?;
    write_atomic(&data_dir.join(DEVICE_CERT_FILE), identity.cert_chain_pem.as_bytes(), 0o644)?;
    write_atomic(&data_dir.join(SERVER_CA_FILE), identity.server_ca_pem.as_bytes(), 0o644)?;
    let file = IdentityFile {
        device_id: identity.device_id.clone(),
        server_url: server_url.to_string(),
        not_after_unix_ms: identity.not_after.map(|t| t.timestamp_millis()).unwrap_or(0),
        enrolled_at: Utc::now(),
    };
    let json = serde_json::to_vec_pretty(&file).expect("identity file serializes");
    write_atomic(&data_dir.join(IDENTITY_FILE), &json, 0o644)
}

/// Write `bytes` to a temp file next to `path`, fsync, rename over `path`.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), SyncError> {
    let io = |source| SyncError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.{}.tmp", uuid::Uuid::now_v7().simple()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        }
        #[cfg(not(unix))]
        let _ = mode;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

/// What the device reports about itself at enrollment.
pub fn device_facts(data_dir: &Path, hostname: &str, owner_email: Option<&str>) -> proto::DeviceFacts {
    proto::DeviceFacts {
        hostname: hostname.to_string(),
        os: os_description(),
        hardware_id: hardware_id(data_dir),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        owner_email: owner_email.unwrap_or_default().to_string(),
    }
}

/// `linux 6.1` style: the OS family plus the kernel / product version when
/// the platform tells us cheaply.
fn os_description() -> String {
    let os = std::env::consts::OS;
    let version = match os {
        "linux" => std::fs::read_to_string("/etc/os-release").ok().and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        }),
        "macos" => command_output("sw_vers", &["-productVersion"]),
        _ => None,
    };
    match version.filter(|v| !v.is_empty() && v.len() < 100) {
        Some(v) => format!("{os} ({v})"),
        None => os.to_string(),
    }
}

/// A stable id for this hardware / OS install: `/etc/machine-id` on Linux,
/// `IOPlatformUUID` on macOS. Elsewhere (or if unreadable) a random id is
/// created once and kept in `data_dir/hardware-id`; then a reimaged machine
/// is not recognised and the admin revokes the old record by hand.
pub fn hardware_id(data_dir: &Path) -> String {
    let platform = match std::env::consts::OS {
        "linux" => ["/etc/machine-id", "/var/lib/dbus/machine-id"]
            .iter()
            .find_map(|p| std::fs::read_to_string(p).ok())
            .map(|s| s.trim().to_string()),
        "macos" => command_output("ioreg", &["-rd1", "-c", "IOPlatformExpertDevice"])
            .and_then(|out| parse_ioreg_uuid(&out)),
        _ => None,
    };
    if let Some(id) = platform.filter(|s| !s.is_empty()) {
        return format!("{}:{id}", std::env::consts::OS);
    }
    let path = data_dir.join(HARDWARE_ID_FILE);
    if let Ok(s) = std::fs::read_to_string(&path) {
        if !s.trim().is_empty() {
            return s.trim().to_string();
        }
    }
    let id = format!("random:{}", uuid::Uuid::now_v7());
    if let Err(error) = write_atomic(&path, id.as_bytes(), 0o644) {
        warn!(%error, "Could not keep the generated hardware id; the next enrollment gets a new one");
    } else {
        info!(path = %path.display(), "No platform hardware id; generated one");
    }
    id
}

fn command_output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `"IOPlatformUUID" = "XXXXXXXX-..."` from `ioreg -rd1 -c IOPlatformExpertDevice`.
fn parse_ioreg_uuid(out: &str) -> Option<String> {
    out.lines()
        .find(|l| l.contains("\"IOPlatformUUID\""))
        .and_then(|l| l.split('=').nth(1))
        .map(|v| v.trim().trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
}

/// Generate a key pair and a CSR for enrollment. The CSR's subject is a
/// placeholder: the server assigns the device id and takes only the public key.
pub(crate) fn new_key_and_csr(placeholder_id: &str) -> Result<(Secret, String), SyncError> {
    let (key_pem, _public) = palisade_tls::generate_key_pair()?;
    let csr = palisade_tls::device_csr(&key_pem, placeholder_id)?;
    Ok((key_pem, csr))
}

/// Build the identity from an enrollment answer and the key we generated.
pub(crate) fn from_response(
    resp: proto::EnrollResponse,
    key_pem: Secret,
) -> Result<DeviceIdentity, SyncError> {
    let proto::EnrollResponse {
        device_id,
        certificate_chain_pem,
        server_ca_pem,
        not_after_unix_ms,
    } = resp;
    let bad = |reason: &str| SyncError::BadEnrollResponse {
        reason: reason.to_string(),
    };
    if device_id.trim().is_empty() || device_id.len() > palisade_tls::MAX_DEVICE_ID_LEN {
        return Err(bad("device_id is empty or too long"));
    }
    if !certificate_chain_pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(bad("certificate_chain_pem holds no certificate"));
    }
    if !server_ca_pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(bad("server_ca_pem holds no certificate"));
    }
    Ok(DeviceIdentity {
        device_id,
        cert_chain_pem: certificate_chain_pem,
        server_ca_pem,
        not_after: DateTime::from_timestamp_millis(not_after_unix_ms),
        key_pem: Arc::new(key_pem),
    })
}

/// Where the identity files live (for `palisade up` and docs).
pub fn identity_paths(data_dir: &Path) -> [PathBuf; 3] {
    [
        data_dir.join(IDENTITY_FILE),
        data_dir.join(DEVICE_CERT_FILE),
        data_dir.join(SERVER_CA_FILE),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    fn identity(key: &str) -> DeviceIdentity {
        DeviceIdentity {
            device_id: "dev-1".into(),
            cert_chain_pem: CERT.into(),
            server_ca_pem: CERT.into(),
            not_after: DateTime::from_timestamp_millis(1_900_000_000_000),
            key_pem: Arc::new(Secret::from(key.to_string())),
        }
    }

    #[test]
    fn save_then_load_round_trips_and_debug_hides_the_key() {
        let d = tempfile::tempdir().unwrap();
        let keys = KeyStore::open_file(&d.path().join("keys")).unwrap();
        assert!(load(d.path(), &keys).unwrap().is_none(), "nothing stored yet");
        save(d.path(), &keys, &identity("KEY-SECRET"), "https://x:1").unwrap();
        let got = load(d.path(), &keys).unwrap().unwrap();
        assert_eq!(got.device_id, "dev-1");
        assert_eq!(got.key_pem().expose(), b"KEY-SECRET");
        assert_eq!(got.not_after.unwrap().timestamp_millis(), 1_900_000_000_000);
        assert_eq!(stored_device_id(d.path()).as_deref(), Some("dev-1"));
        assert!(!format!("{got:?}").contains("KEY-SECRET"));
        forget(d.path()).unwrap();
        assert!(load(d.path(), &keys).unwrap().is_none(), "forgotten");
        forget(d.path()).unwrap();
    }

    #[test]
    fn missing_key_is_a_clear_error() {
        let d = tempfile::tempdir().unwrap();
        let keys = KeyStore::open_file(&d.path().join("keys")).unwrap();
        save(d.path(), &keys, &identity("k"), "https://x:1").unwrap();
        keys.delete(DEVICE_KEY_NAME).unwrap();
        let e = load(d.path(), &keys).unwrap_err();
        assert!(matches!(e, SyncError::MissingKey { .. }), "{e}");
        assert!(e.to_string().contains(DEVICE_KEY_NAME), "{e}");
    }

    #[test]
    fn corrupt_identity_file_and_missing_cert_are_named() {
        let d = tempfile::tempdir().unwrap();
        let keys = KeyStore::open_file(&d.path().join("keys")).unwrap();
        std::fs::write(d.path().join(IDENTITY_FILE), "{not json").unwrap();
        let e = load(d.path(), &keys).unwrap_err();
        assert!(matches!(e, SyncError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains(IDENTITY_FILE), "{e}");
        assert_eq!(stored_device_id(d.path()), None);

        save(d.path(), &keys, &identity("k"), "https://x:1").unwrap();
        std::fs::write(d.path().join(DEVICE_CERT_FILE), "garbage").unwrap();
        let e = load(d.path(), &keys).unwrap_err();
        assert!(e.to_string().contains(DEVICE_CERT_FILE), "{e}");
        std::fs::remove_file(d.path().join(DEVICE_CERT_FILE)).unwrap();
        let e = load(d.path(), &keys).unwrap_err();
        assert!(matches!(e, SyncError::Io { .. }), "{e}");
    }

    #[test]
    fn empty_device_id_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let keys = KeyStore::open_file(&d.path().join("keys")).unwrap();
        let mut id = identity("k");
        id.device_id = String::new();
        save(d.path(), &keys, &id, "https://x:1").unwrap();
        let e = load(d.path(), &keys).unwrap_err();
        assert!(e.to_string().contains("device_id is empty"), "{e}");
    }

    #[test]
    fn bad_enroll_responses_are_refused() {
        let ok = proto::EnrollResponse {
            device_id: "d".into(),
            certificate_chain_pem: CERT.into(),
            server_ca_pem: CERT.into(),
            not_after_unix_ms: 0,
        };
        assert!(from_response(ok.clone(), Secret::from("k".to_string())).is_ok());
        for (resp, want) in [
            (proto::EnrollResponse { device_id: "".into(), ..ok.clone() }, "device_id"),
            (proto::EnrollResponse { device_id: "x".repeat(65), ..ok.clone() }, "device_id"),
            (proto::EnrollResponse { certificate_chain_pem: "x".into(), ..ok.clone() }, "certificate_chain_pem"),
            (proto::EnrollResponse { server_ca_pem: "".into(), ..ok.clone() }, "server_ca_pem"),
        ] {
            let e = from_response(resp, Secret::from("k".to_string())).unwrap_err();
            assert!(e.to_string().contains(want), "{e}");
        }
    }

    #[test]
    fn hardware_id_is_stable_across_calls() {
        let d = tempfile::tempdir().unwrap();
        let a = hardware_id(d.path());
        assert!(!a.is_empty());
        assert_eq!(a, hardware_id(d.path()));
    }

    #[test]
    fn ioreg_output_is_parsed() {
        let out = "+-o J314sAP  <class IOPlatformExpertDevice>\n    {\n      \"IOPlatformSerialNumber\" = \"C02XX\"\n      \"IOPlatformUUID\" = \"1A2B3C4D-0000-1111-2222-333344445555\"\n    }\n";
        assert_eq!(parse_ioreg_uuid(out).as_deref(), Some("1A2B3C4D-0000-1111-2222-333344445555"));
        assert_eq!(parse_ioreg_uuid("nothing here"), None);
    }

    #[test]
    fn facts_carry_version_and_owner() {
        let d = tempfile::tempdir().unwrap();
        let f = device_facts(d.path(), "host-1", Some("a@x.com"));
        assert_eq!(f.hostname, "host-1");
        assert_eq!(f.owner_email, "a@x.com");
        assert_eq!(f.agent_version, env!("CARGO_PKG_VERSION"));
        assert!(f.os.starts_with(std::env::consts::OS));
        assert_eq!(device_facts(d.path(), "h", None).owner_email, "");
    }

    #[test]
    fn csr_is_generated_for_a_placeholder_id() {
        let (key, csr) = new_key_and_csr("local-123").unwrap();
        assert!(csr.contains("BEGIN CERTIFICATE REQUEST"));
        assert!(!key.is_empty());
    }
}
