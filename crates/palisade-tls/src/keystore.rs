//! Secret storage for the agent: the OS keyring when a working one exists,
//! else one file per secret (mode 0600) in a private directory (mode 0700).
//!
//! Keyring calls run on a helper thread with a timeout: keyring's Linux
//! backend drives its own tokio runtime and would panic or deadlock on a
//! runtime thread, and a locked keyring must not hang the agent forever.
//! This module must never log, print or `Debug` secret bytes, and must never
//! read a key file that group or others can access.

use crate::{Secret, TlsError};
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tracing::{info, warn};

/// How long the start-up probe may take before the keyring is declared unusable.
pub const KEYRING_PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a single keyring get/set/delete may take.
pub const KEYRING_OP_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest accepted key name.
pub const MAX_KEY_NAME_LEN: usize = 64;

const KEY_FILE_SUFFIX: &str = ".key";

/// Which store holds the secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyBackend {
    Keyring,
    File,
}

impl KeyBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyBackend::Keyring => "keyring",
            KeyBackend::File => "file",
        }
    }
}

impl fmt::Display for KeyBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Secret storage: the OS keyring when a working one exists, else files with
/// mode 0600 under `fallback_dir` (dir 0700).
///
/// With the keyring backend, a name missing from the keyring is still looked
/// up in `fallback_dir`: a key written while no keyring was available (an
/// earlier headless boot) keeps working, so the device CA does not change
/// when the keyring appears.
pub struct KeyStore {
    backend: KeyBackend,
    /// Keyring service name (only meaningful for the keyring backend).
    service: String,
    files: FileStore,
    reason: String,
}

// === impl KeyStore ===

impl KeyStore {
    /// Probe the keyring (write + read + delete a probe entry under
    /// `service`); on failure fall back to files. Logs which one was chosen
    /// and why. On headless Linux (no D-Bus session / no Secret Service) it is
    /// `File`.
    pub fn open(service: &str, fallback_dir: &Path) -> KeyStore {
        let files = FileStore {
            dir: fallback_dir.to_path_buf(),
        };
        match probe_keyring(service) {
            Ok(()) => {
                let reason = "keyring probe (write, read, delete) succeeded".to_string();
                info!(backend = "keyring", reason = %reason, service, "Key store selected");
                KeyStore {
                    backend: KeyBackend::Keyring,
                    service: service.to_string(),
                    files,
                    reason,
                }
            }
            Err(why) => {
                let reason = format!("no usable OS keyring: {why}");
                info!(
                    backend = "file",
                    reason = %reason,
                    dir = %fallback_dir.display(),
                    "Key store selected"
                );
                if let Err(error) = files.ensure_dir() {
                    // Not fatal here: every later `set` retries and reports it.
                    warn!(%error, dir = %fallback_dir.display(), "Key directory not usable yet");
                }
                KeyStore {
                    backend: KeyBackend::File,
                    service: service.to_string(),
                    files,
                    reason,
                }
            }
        }
    }

    /// Force the file backend (tests, `palisade up`). Creates the directory
    /// with mode 0700, or tightens an existing one we own.
    pub fn open_file(fallback_dir: &Path) -> Result<KeyStore, TlsError> {
        let files = FileStore {
            dir: fallback_dir.to_path_buf(),
        };
        files.ensure_dir()?;
        let reason = "file backend requested explicitly".to_string();
        info!(backend = "file", reason = %reason, dir = %fallback_dir.display(), "Key store selected");
        Ok(KeyStore {
            backend: KeyBackend::File,
            service: String::new(),
            files,
            reason,
        })
    }

    pub fn backend(&self) -> KeyBackend {
        self.backend
    }

    /// Why this backend was chosen (also logged at `open`).
    pub fn selection_reason(&self) -> &str {
        &self.reason
    }

    /// The file directory (the store itself, or the legacy fallback for the keyring).
    pub fn fallback_dir(&self) -> &Path {
        &self.files.dir
    }

    pub fn get(&self, name: &str) -> Result<Option<Secret>, TlsError> {
        validate_name(name)?;
        match self.backend {
            KeyBackend::File => self.files.get(name),
            KeyBackend::Keyring => match keyring_get(&self.service, name)? {
                Some(secret) => Ok(Some(secret)),
                None => {
                    let found = self.files.get(name)?;
                    if found.is_some() {
                        info!(name, dir = %self.files.dir.display(), "Key found in file fallback, not in keyring");
                    }
                    Ok(found)
                }
            },
        }
    }

    /// Store `value` under `name`, replacing any previous value. The file
    /// backend writes a temp file (0600), fsyncs it and renames it over the
    /// old one, so a crash leaves either the old or the new value.
    pub fn set(&self, name: &str, value: &[u8]) -> Result<(), TlsError> {
        validate_name(name)?;
        match self.backend {
            KeyBackend::File => self.files.set(name, value),
            KeyBackend::Keyring => keyring_set(&self.service, name, value),
        }
    }

    /// Remove `name`. Removing a name that does not exist is not an error.
    pub fn delete(&self, name: &str) -> Result<(), TlsError> {
        validate_name(name)?;
        match self.backend {
            KeyBackend::File => self.files.delete(name),
            KeyBackend::Keyring => {
                keyring_delete(&self.service, name)?;
                self.files.delete(name)
            }
        }
    }
}

impl fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyStore")
            .field("backend", &self.backend)
            .field("service", &self.service)
            .field("dir", &self.files.dir)
            .finish_non_exhaustive()
    }
}

fn validate_name(name: &str) -> Result<(), TlsError> {
    let err = |reason| {
        Err(TlsError::InvalidKeyName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return err("empty");
    }
    if name.len() > MAX_KEY_NAME_LEN {
        return err("longer than 64 characters");
    }
    if name.starts_with('.') {
        return err("must not start with '.'");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return err("only ASCII letters, digits, '-', '_' and '.' are allowed");
    }
    Ok(())
}

// === impl FileStore ===

struct FileStore {
    dir: PathBuf,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl FileStore {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}{KEY_FILE_SUFFIX}"))
    }

    /// Create the directory 0700, or make an existing one private.
    fn ensure_dir(&self) -> Result<(), TlsError> {
        let dir = &self.dir;
        match fs::metadata(dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let mut builder = fs::DirBuilder::new();
                builder.recursive(true);
                #[cfg(unix)]
                std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
                builder
                    .create(dir)
                    .map_err(|e| TlsError::io("creating key directory", dir, e))?;
                set_mode(dir, 0o700).map_err(|e| TlsError::io("setting mode 0700 on", dir, e))?;
                Ok(())
            }
            Err(e) => Err(TlsError::io("inspecting key directory", dir, e)),
            Ok(meta) if !meta.is_dir() => Err(TlsError::InsecureKeyDir {
                path: dir.clone(),
                reason: "not a directory".to_string(),
            }),
            Ok(meta) => check_existing_dir(dir, &meta),
        }
    }

    fn get(&self, name: &str) -> Result<Option<Secret>, TlsError> {
        let path = self.path(name);
        let mut file = match open_no_follow(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(_) if is_symlink(&path) => return Err(TlsError::NotARegularFile { path }),
            Err(e) => return Err(TlsError::io("opening key file", &path, e)),
        };
        // Checks run on the opened descriptor, so a swapped file cannot slip in.
        let meta = file
            .metadata()
            .map_err(|e| TlsError::io("inspecting key file", &path, e))?;
        if !meta.is_file() {
            return Err(TlsError::NotARegularFile { path });
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o077 != 0 {
                return Err(TlsError::InsecureKeyFile { path, mode });
            }
        }
        let mut buf = zeroize::Zeroizing::new(Vec::with_capacity(meta.len() as usize));
        file.read_to_end(&mut buf)
            .map_err(|e| TlsError::io("reading key file", &path, e))?;
        Ok(Some(Secret::new(std::mem::take(&mut *buf))))
    }

    fn set(&self, name: &str, value: &[u8]) -> Result<(), TlsError> {
        self.ensure_dir()?;
        let path = self.path(name);
        let tmp = self.dir.join(format!(
            ".{name}.tmp.{}.{}",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let result = write_private(&tmp, value).and_then(|()| {
            fs::rename(&tmp, &path)
                .map_err(|e| TlsError::io("renaming temp key file onto", &path, e))
        });
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
            return result;
        }
        sync_dir(&self.dir);
        Ok(())
    }

    fn delete(&self, name: &str) -> Result<(), TlsError> {
        let path = self.path(name);
        match fs::remove_file(&path) {
            Ok(()) => {
                sync_dir(&self.dir);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(TlsError::io("deleting key file", &path, e)),
        }
    }
}

fn write_private(tmp: &Path, value: &[u8]) -> Result<(), TlsError> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut file = opts
        .open(tmp)
        .map_err(|e| TlsError::io("creating temp key file", tmp, e))?;
    file.write_all(value)
        .map_err(|e| TlsError::io("writing temp key file", tmp, e))?;
    file.sync_all()
        .map_err(|e| TlsError::io("syncing temp key file", tmp, e))?;
    Ok(())
}

/// Best effort: make the rename durable. Failure only weakens crash safety.
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Err(error) = fs::File::open(dir).and_then(|d| d.sync_all()) {
        warn!(%error, dir = %dir.display(), "Could not fsync key directory");
    }
    #[cfg(not(unix))]
    let _ = dir;
}

fn open_no_follow(path: &Path) -> io::Result<fs::File> {
    let mut opts = fs::OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut opts, libc::O_NOFOLLOW);
    opts.open(path)
}

fn is_symlink(path: &Path) -> bool {
    fs::symlink_metadata(path)
        .map(|m| m.file_type().is_symlink())
        .unwrap_or(false)
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> io::Result<()> {
    Ok(())
}

#[cfg(unix)]
fn check_existing_dir(dir: &Path, meta: &fs::Metadata) -> Result<(), TlsError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o1000 != 0 {
        return Err(TlsError::InsecureKeyDir {
            path: dir.to_path_buf(),
            reason: format!(
                "shared sticky directory (mode {mode:04o}, like /tmp); use a private subdirectory"
            ),
        });
    }
    if mode & 0o077 != 0 {
        set_mode(dir, 0o700).map_err(|e| TlsError::InsecureKeyDir {
            path: dir.to_path_buf(),
            reason: format!(
                "mode {mode:04o} allows group/world access and could not be changed to 0700: {e}"
            ),
        })?;
        warn!(dir = %dir.display(), old_mode = format_args!("{mode:04o}"), "Tightened key directory to 0700");
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_existing_dir(_dir: &Path, _meta: &fs::Metadata) -> Result<(), TlsError> {
    Ok(())
}

// === keyring backend ===

#[cfg(any(target_os = "linux", target_os = "macos", target_os = "windows"))]
mod os_keyring {
    use super::*;
    use std::sync::mpsc;

    /// Run one keyring call on its own thread, bounded by `timeout`.
    ///
    /// A call that times out keeps its thread; it is detached and finishes
    /// (or not) on its own, which is the only safe option for a blocked call.
    fn run<T: Send + 'static>(
        op: &'static str,
        name: &str,
        timeout: Duration,
        f: impl FnOnce() -> keyring::Result<T> + Send + 'static,
    ) -> Result<T, TlsError> {
        let err = |message: String| TlsError::Keyring {
            op,
            name: name.to_string(),
            message,
        };
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("palisade-keyring".into())
            .spawn(move || {
                let _ = tx.send(f());
            })
            .map_err(|e| err(format!("cannot spawn keyring thread: {e}")))?;
        match rx.recv_timeout(timeout) {
            Ok(Ok(v)) => Ok(v),
            // Display only: some keyring error variants carry the secret bytes.
            Ok(Err(e)) => Err(err(e.to_string())),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                Err(err(format!("timed out after {timeout:?}")))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err(err("keyring thread panicked".to_string()))
            }
        }
    }

    pub(super) fn probe(service: &str) -> Result<(), String> {
        #[cfg(target_os = "linux")]
        if let Some(why) = super::linux_no_session_bus(|k| std::env::var_os(k)) {
            return Err(why);
        }
        let probe_name = format!("palisade-probe-{}", std::process::id());
        let service_owned = service.to_string();
        let user = probe_name.clone();
        let result = run("probe", &probe_name, KEYRING_PROBE_TIMEOUT, move || {
            let entry = keyring::Entry::new(&service_owned, &user)?;
            let want = b"palisade keyring probe".to_vec();
            entry.set_secret(&want)?;
            let got = entry.get_secret();
            let deleted = entry.delete_credential();
            let got = got?;
            deleted?;
            if got != want {
                return Err(keyring::Error::Invalid(
                    "probe".into(),
                    "read back a different value than was written".into(),
                ));
            }
            Ok(())
        });
        result.map_err(|e| match e {
            TlsError::Keyring { message, .. } => format!("keyring probe failed: {message}"),
            other => other.to_string(),
        })
    }

    pub(super) fn get(service: &str, name: &str) -> Result<Option<Secret>, TlsError> {
        let (service, user) = (service.to_string(), name.to_string());
        run(
            "get",
            name,
            KEYRING_OP_TIMEOUT,
            move || match keyring::Entry::new(&service, &user)?.get_secret() {
                Ok(bytes) => Ok(Some(Secret::new(bytes))),
                Err(keyring::Error::NoEntry) => Ok(None),
                Err(e) => Err(e),
            },
        )
    }

    pub(super) fn set(service: &str, name: &str, value: &[u8]) -> Result<(), TlsError> {
        let (service, user) = (service.to_string(), name.to_string());
        let value = Secret::new(value.to_vec());
        run("set", name, KEYRING_OP_TIMEOUT, move || {
            keyring::Entry::new(&service, &user)?.set_secret(value.expose())
        })
    }

    pub(super) fn delete(service: &str, name: &str) -> Result<(), TlsError> {
        let (service, user) = (service.to_string(), name.to_string());
        run(
            "delete",
            name,
            KEYRING_OP_TIMEOUT,
            move || match keyring::Entry::new(&service, &user)?.delete_credential() {
                Ok(()) | Err(keyring::Error::NoEntry) => Ok(()),
                Err(e) => Err(e),
            },
        )
    }
}

#[cfg(any(target_os = "linux", target_os = "macos", target_os = "windows"))]
use os_keyring::{
    delete as keyring_delete, get as keyring_get, probe as probe_keyring, set as keyring_set,
};

#[cfg(not(any(target_os = "linux", target_os = "macos", target_os = "windows")))]
fn probe_keyring(_service: &str) -> Result<(), String> {
    Err("no keyring support is built for this operating system".to_string())
}

#[cfg(not(any(target_os = "linux", target_os = "macos", target_os = "windows")))]
fn keyring_unavailable<T>(op: &'static str, name: &str) -> Result<T, TlsError> {
    Err(TlsError::Keyring {
        op,
        name: name.to_string(),
        message: "not supported on this OS".into(),
    })
}
#[cfg(not(any(target_os = "linux", target_os = "macos", target_os = "windows")))]
fn keyring_get(_s: &str, name: &str) -> Result<Option<Secret>, TlsError> {
    keyring_unavailable("get", name)
}
#[cfg(not(any(target_os = "linux", target_os = "macos", target_os = "windows")))]
fn keyring_set(_s: &str, name: &str, _v: &[u8]) -> Result<(), TlsError> {
    keyring_unavailable("set", name)
}
#[cfg(not(any(target_os = "linux", target_os = "macos", target_os = "windows")))]
fn keyring_delete(_s: &str, name: &str) -> Result<(), TlsError> {
    keyring_unavailable("delete", name)
}

/// On Linux the Secret Service lives on the D-Bus session bus. Without one
/// (root daemons, SSH sessions, containers) there is no keyring to probe;
/// say so plainly instead of surfacing a D-Bus connection error.
#[cfg(target_os = "linux")]
fn linux_no_session_bus(env: impl Fn(&str) -> Option<std::ffi::OsString>) -> Option<String> {
    if env("DBUS_SESSION_BUS_ADDRESS").is_some_and(|v| !v.is_empty()) {
        return None;
    }
    if let Some(runtime) = env("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        if Path::new(&runtime).join("bus").exists() {
            return None;
        }
    }
    Some(
        "no D-Bus session bus (DBUS_SESSION_BUS_ADDRESS unset and no $XDG_RUNTIME_DIR/bus), \
         so no Secret Service"
            .to_string(),
    )
}

#[cfg(test)]
mod tests;
