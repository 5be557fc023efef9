//! Where the agent keeps its data, shared by the agent and the CLI so both
//! agree on the spool's location.
//!
//! Pure path computation: this module must never create directories or read
//! files.

use std::ffi::OsString;
use std::path::PathBuf;

/// Environment variable that overrides the data directory.
pub const DATA_DIR_ENV: &str = "PALISADE_DATA_DIR";
/// The spool's file name inside the data directory.
pub const SPOOL_FILE_NAME: &str = "spool.db";

/// Used when no home directory is known (e.g. a system service without `HOME`).
pub const SYSTEM_DATA_DIR: &str = "/var/lib/palisade/agent";

/// The agent's data directory for this process's environment and OS:
/// `$PALISADE_DATA_DIR` if set; else `~/Library/Application Support/Palisade/agent`
/// on macOS and `~/.local/share/palisade/agent` elsewhere; else (no `HOME`)
/// [`SYSTEM_DATA_DIR`]. The agent and the CLI must both use this.
pub fn default_data_dir() -> PathBuf {
    data_dir_from(|k| std::env::var_os(k), std::env::consts::OS)
}

/// `default_data_dir()/spool.db`.
pub fn default_spool_path() -> PathBuf {
    default_data_dir().join(SPOOL_FILE_NAME)
}

/// [`default_data_dir`] with the environment and OS passed in (for tests).
pub fn data_dir_from(env: impl Fn(&str) -> Option<OsString>, os: &str) -> PathBuf {
    let nonempty = |k: &str| env(k).filter(|v| !v.is_empty());
    if let Some(dir) = nonempty(DATA_DIR_ENV) {
        return PathBuf::from(dir);
    }
    match (os, nonempty("HOME").map(PathBuf::from)) {
        ("macos", Some(home)) => home.join("Library/Application Support/Palisade/agent"),
        (_, Some(home)) => home.join(".local/share/palisade/agent"),
        (_, None) => PathBuf::from(SYSTEM_DATA_DIR),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let m: HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn override_wins_everywhere() {
        for os in ["linux", "macos", "windows"] {
            let e = env(&[(DATA_DIR_ENV, "/srv/p"), ("HOME", "/home/a")]);
            assert_eq!(data_dir_from(e, os), PathBuf::from("/srv/p"));
        }
    }

    #[test]
    fn platform_defaults() {
        assert_eq!(
            data_dir_from(env(&[("HOME", "/home/a")]), "linux"),
            PathBuf::from("/home/a/.local/share/palisade/agent")
        );
        assert_eq!(
            data_dir_from(env(&[("HOME", "/Users/a")]), "macos"),
            PathBuf::from("/Users/a/Library/Application Support/Palisade/agent")
        );
        assert_eq!(
            data_dir_from(env(&[]), "linux"),
            PathBuf::from(SYSTEM_DATA_DIR)
        );
    }

    #[test]
    fn empty_values_are_ignored() {
        assert_eq!(
            data_dir_from(env(&[(DATA_DIR_ENV, ""), ("HOME", "")]), "linux"),
            PathBuf::from(SYSTEM_DATA_DIR)
        );
    }
}
