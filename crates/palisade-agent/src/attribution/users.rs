//! User names for uids, via the system's user database (`getpwuid_r`, so
//! NSS/LDAP/directory users resolve too).
//!
//! This holds the module's only `unsafe`: one FFI call with a caller-owned
//! buffer. It must never cache or guess a name.

/// Name of the user running this process: the effective uid's name, else
/// `$USER` / `$USERNAME`.
pub fn current_os_user() -> Option<String> {
    #[cfg(unix)]
    if let Some(name) = user_name_for_uid(effective_uid()) {
        return Some(name);
    }
    ["USER", "USERNAME", "LOGNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
}

#[cfg(unix)]
#[allow(unsafe_code)]
fn effective_uid() -> u32 {
    // SAFETY: geteuid takes no arguments, cannot fail and touches no memory of ours.
    unsafe { libc::geteuid() }
}

/// The user name for `uid`, or `None` when the user database has no entry.
#[cfg(unix)]
#[allow(unsafe_code)]
pub fn user_name_for_uid(uid: u32) -> Option<String> {
    use std::ffi::CStr;
    let mut buf = vec![0 as libc::c_char; 1024];
    loop {
        // SAFETY: `passwd` is plain old data that getpwuid_r fills in; all-zero
        // is a valid initial value for it.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is to memory we own and outlives the call;
        // `buf.len()` is the true size of `buf`. On success `result` points at
        // `pwd`, whose string fields point into `buf`.
        let rc =
            unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 || result.is_null() || pwd.pw_name.is_null() {
            return None;
        }
        // SAFETY: pw_name is a NUL-terminated string inside `buf`, which is
        // still alive and unmodified here.
        let name = unsafe { CStr::from_ptr(pwd.pw_name) };
        return Some(name.to_string_lossy().into_owned());
    }
}

/// No user database lookups off unix.
#[cfg(not(unix))]
pub fn user_name_for_uid(_uid: u32) -> Option<String> {
    None
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn root_is_uid_zero() {
        assert_eq!(user_name_for_uid(0).as_deref(), Some("root"));
    }

    #[test]
    fn unknown_uid_has_no_name() {
        assert_eq!(user_name_for_uid(4_000_000_000), None);
    }

    #[test]
    fn current_user_is_the_effective_uid_name_when_it_has_one() {
        match user_name_for_uid(effective_uid()) {
            Some(name) => assert_eq!(current_os_user(), Some(name)),
            None => assert_eq!(
                current_os_user(),
                std::env::var("USER").ok().filter(|u| !u.is_empty())
            ),
        }
    }
}
