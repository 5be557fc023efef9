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

/// The agent's data directory for this process's environment and OS:
/// `$PALISADE_DATA_DIR` if set; else `~/Library/Application Support/Palisade/agent`
/// on macOS, `%LOCALAPPDATA%\Palisade\agent` on Windows, and
/// `${XDG_DATA_HOME:-~/.local/share}/palisade/agent` elsewhere.
/// `None` when no home directory is known.
pub fn default_data_dir() -> Option<PathBuf> {
    data_dir_from(|k| std::env::var_os(k), std::env::consts::OS)
}

/// `default_data_dir()/spool.db`.
pub fn default_spool_path() -> Option<PathBuf> {
    default_data_dir().map(|d| d.join(SPOOL_FILE_NAME))
}

/// [`default_data_dir`] with the environment and OS passed in (for tests).
pub fn data_dir_from(env: impl Fn(&str) -> Option<OsString>, os: &str) -> Option<PathBuf> {
    let nonempty = |k: &str| env(k).filter(|v| !v.is_empty());
    if let Some(dir) = nonempty(DATA_DIR_ENV) {
        return Some(PathBuf::from(dir));
    }
    match os {
        "macos" => nonempty("HOME").map(|h| PathBuf::from(h).join("Library/Application Support/Palisade/agent")),
        "windows" => nonempty("LOCALAPPDATA").map(|d| PathBuf::from(d).join("Palisade").join("agent")),
        _ => nonempty("XDG_DATA_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .or_else(|| nonempty("HOME").map(|h| PathBuf::from(h).join(".local/share")))
            .map(|d| d.join("palisade/agent")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let m: HashMap<String, OsString> = pairs.iter().map(|(k, v)| (k.to_string(), OsString::from(v))).collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn override_wins_everywhere() {
        for os in ["linux", "macos", "windows"] {
            let e = env(&[(DATA_DIR_ENV, "/srv/p"), ("HOME", "/home/a")]);
            assert_eq!(data_dir_from(e, os), Some(PathBuf::from("/srv/p")));
        }
    }

    #[test]
    fn platform_defaults() {
        assert_eq!(
            data_dir_from(env(&[("HOME", "/home/a")]), "linux"),
            Some(PathBuf::from("/home/a/.local/share/palisade/agent"))
        );
        assert_eq!(
            data_dir_from(env(&[("HOME", "/home/a"), ("XDG_DATA_HOME", "/x")]), "linux"),
            Some(PathBuf::from("/x/palisade/agent"))
        );
        assert_eq!(
            data_dir_from(env(&[("HOME", "/Users/a")]), "macos"),
            Some(PathBuf::from("/Users/a/Library/Application Support/Palisade/agent"))
        );
    }

    #[test]
    fn empty_or_relative_values_are_ignored() {
        assert_eq!(
            data_dir_from(env(&[(DATA_DIR_ENV, ""), ("HOME", "/h"), ("XDG_DATA_HOME", "rel")]), "linux"),
            Some(PathBuf::from("/h/.local/share/palisade/agent"))
        );
        assert_eq!(data_dir_from(env(&[]), "linux"), None);
    }
}
