//! Who may drive the coordinator: the control socket trusts nobody by default.
//!
//! Every request on `coordinator.sock` must come from a peer that
//! - runs as the coordinator's own user (`SO_PEERCRED`),
//! - is in the coordinator's PID namespace: a process inside a session sandbox
//!   (bubblewrap gives each its own) is refused even if it reached the socket,
//! - and presents the control token: 32 random bytes the coordinator writes to
//!   `coordinator.token` (0600, beside the socket, in a directory no sandbox
//!   sees) each time it starts, sent as the `x-parhelia-control-token` header.
//!
//! A session without isolation runs as the user with the user's view of the
//! file system: it can read the token like any other file of the user, which is
//! why the product says plainly when sessions are not isolated (`doctor`, `task
//! create`). See `docs/security.md`.

use std::path::{Path, PathBuf};

use subtle::ConstantTimeEq;
use tonic::metadata::MetadataValue;
use tonic::{Request, Status};

use crate::error::CodedError;
use crate::error_codes;

/// The request header that carries the control token.
pub const TOKEN_HEADER: &str = "x-parhelia-control-token";

/// Where the token lives for a socket: beside it.
pub fn token_path(socket: &Path) -> PathBuf {
    socket.with_file_name("coordinator.token")
}

/// Writes a fresh token (0600, atomically, never through a link) and returns it.
pub fn issue_token(path: &Path) -> std::io::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let token = crate::ids::random_hex(32);
    let temp = path.with_file_name(".coordinator.token.tmp");
    match std::fs::remove_file(&temp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)?;
    file.write_all(token.as_bytes())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temp, path)?;
    Ok(token)
}

/// Reads the token beside `socket` (at most 256 bytes, never through a link).
pub fn read_token(socket: &Path) -> Option<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(token_path(socket))
        .ok()?;
    let mut text = String::new();
    file.take(256).read_to_string(&mut text).ok()?;
    Some(text.trim().to_string()).filter(|t| !t.is_empty())
}

/// What the coordinator knows of itself.
#[derive(Clone, Debug)]
pub struct Own {
    pub uid: u32,
    /// `readlink /proc/self/ns/pid` (e.g. `pid:[4026531836]`); `None` where
    /// /proc cannot tell, and then no peer passes the namespace check.
    pub pid_namespace: Option<String>,
    pub token: String,
}

/// What the coordinator can learn of a peer.
#[derive(Clone, Debug, Default)]
pub struct Peer {
    pub uid: Option<u32>,
    pub pid_namespace: Option<String>,
    pub token: Option<String>,
}

/// Why a peer is refused; `None` when it may drive the coordinator. Pure.
pub fn refusal(own: &Own, peer: &Peer) -> Option<&'static str> {
    match peer.uid {
        Some(uid) if uid == own.uid => {}
        Some(_) => return Some("the caller runs as another user"),
        None => return Some("the caller's credentials are unknown"),
    }
    match (&own.pid_namespace, &peer.pid_namespace) {
        (Some(ours), Some(theirs)) if ours == theirs => {}
        _ => return Some("the caller is inside a session sandbox (another PID namespace)"),
    }
    let presented = peer.token.as_deref().unwrap_or("");
    if presented.is_empty() {
        return Some("no control token was presented");
    }
    if !bool::from(presented.as_bytes().ct_eq(own.token.as_bytes())) {
        return Some("the control token does not match");
    }
    None
}

fn pid_namespace_of(pid: &str) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/ns/pid"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

impl Own {
    pub fn new(token: String) -> Own {
        Own {
            uid: nix::unistd::Uid::effective().as_raw(),
            pid_namespace: pid_namespace_of("self"),
            token,
        }
    }
}

/// The server-side check, as a tonic interceptor on the coordinator service.
#[derive(Clone, Debug)]
pub struct Guard(pub std::sync::Arc<Own>);

impl tonic::service::Interceptor for Guard {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let cred = request
            .extensions()
            .get::<tonic::transport::server::UdsConnectInfo>()
            .and_then(|info| info.peer_cred);
        let peer = Peer {
            uid: cred.map(|c| c.uid()),
            pid_namespace: cred
                .and_then(|c| c.pid())
                .filter(|pid| *pid > 0)
                .and_then(|pid| pid_namespace_of(&pid.to_string())),
            token: request
                .metadata()
                .get(TOKEN_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        };
        match refusal(&self.0, &peer) {
            None => Ok(request),
            Some(why) => {
                tracing::warn!(
                    uid = ?peer.uid,
                    pid = ?cred.and_then(|c| c.pid()),
                    why,
                    "refused a control request"
                );
                Err(CodedError::new(
                    error_codes::CONTROL_ACCESS_DENIED,
                    format!("the coordinator refused this request: {why}"),
                )
                .to_status())
            }
        }
    }
}

/// The client side: adds the token to every request.
#[derive(Clone, Debug)]
pub struct Bearer(pub Option<MetadataValue<tonic::metadata::Ascii>>);

impl Bearer {
    pub fn for_socket(socket: &Path) -> Bearer {
        Bearer(read_token(socket).and_then(|t| MetadataValue::try_from(t.as_str()).ok()))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(token) = &self.0 {
            request.metadata_mut().insert(TOKEN_HEADER, token.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own() -> Own {
        Own {
            uid: 1000,
            pid_namespace: Some("pid:[1]".into()),
            token: "t0k3n".into(),
        }
    }

    fn peer(uid: Option<u32>, ns: Option<&str>, token: Option<&str>) -> Peer {
        Peer {
            uid,
            pid_namespace: ns.map(str::to_string),
            token: token.map(str::to_string),
        }
    }

    #[test]
    fn only_our_user_outside_every_sandbox_with_the_token_gets_in() {
        let own = own();
        assert_eq!(
            refusal(&own, &peer(Some(1000), Some("pid:[1]"), Some("t0k3n"))),
            None
        );
        for (p, why) in [
            (
                peer(Some(0), Some("pid:[1]"), Some("t0k3n")),
                "another user",
            ),
            (peer(None, Some("pid:[1]"), Some("t0k3n")), "unknown"),
            (peer(Some(1000), Some("pid:[2]"), Some("t0k3n")), "sandbox"),
            (peer(Some(1000), None, Some("t0k3n")), "sandbox"),
            (peer(Some(1000), Some("pid:[1]"), None), "no control token"),
            (
                peer(Some(1000), Some("pid:[1]"), Some("")),
                "no control token",
            ),
            (
                peer(Some(1000), Some("pid:[1]"), Some("t0k3")),
                "does not match",
            ),
            (
                peer(Some(1000), Some("pid:[1]"), Some("t0k3n!")),
                "does not match",
            ),
        ] {
            let got = refusal(&own, &p).unwrap_or_else(|| panic!("{p:?} was let in"));
            assert!(got.contains(why), "{p:?}: {got}");
        }
    }

    #[test]
    fn a_coordinator_without_its_namespace_lets_nobody_in() {
        let own = Own {
            pid_namespace: None,
            ..own()
        };
        assert!(refusal(&own, &peer(Some(1000), Some("pid:[1]"), Some("t0k3n"))).is_some());
    }

    #[test]
    fn tokens_are_private_fresh_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("coordinator.sock");
        let first = issue_token(&token_path(&socket)).unwrap();
        let second = issue_token(&token_path(&socket)).unwrap();
        assert_ne!(first, second);
        assert_eq!(first.len(), 64);
        assert_eq!(read_token(&socket).as_deref(), Some(second.as_str()));
        let mode = std::fs::metadata(token_path(&socket))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // A link planted at the token's place is not followed.
        std::fs::remove_file(token_path(&socket)).unwrap();
        std::fs::write(dir.path().join("elsewhere"), "x".repeat(64)).unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), token_path(&socket)).unwrap();
        assert_eq!(read_token(&socket), None);
    }
}
