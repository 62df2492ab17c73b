//! The unprivileged user tests run sessions as (uid separation, `agent/src/session_user.rs`).

/// The name of the test's session user.
pub const SESSION_USER: &str = "parhelia-sess";

/// The session user's name, uid and gid, creating the user (`useradd --system`) if needed.
/// `None`, with the reason printed, when the tests do not run as root or cannot create it.
pub fn session_user() -> Option<(String, u32, u32)> {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("note: not root, so sessions run as this user (no uid separation tested)");
        return None;
    }
    if nix::unistd::User::from_name(SESSION_USER)
        .ok()
        .flatten()
        .is_none()
    {
        let made = std::process::Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/bin/sh",
                SESSION_USER,
            ])
            .status();
        // 9: it exists (another test made it meanwhile).
        if !made.is_ok_and(|s| s.success() || s.code() == Some(9)) {
            eprintln!(
                "note: cannot create the user {SESSION_USER} (useradd); no uid separation tested"
            );
            return None;
        }
    }
    let user = nix::unistd::User::from_name(SESSION_USER).ok().flatten()?;
    Some((user.name, user.uid.as_raw(), user.gid.as_raw()))
}
