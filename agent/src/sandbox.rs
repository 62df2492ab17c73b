//! The session sandbox: Claude Code, its tmux server and everything they start run inside
//! bubblewrap, while the agent itself stays outside it.
//!
//! Why the agent is outside: the agent holds the session secret, writes the journal and
//! the checkpoint store, and talks to the coordinator. Claude Code (and any command the
//! model runs, which prompt injection can choose) must reach none of that. So the agent
//! starts the tmux server itself as `bwrap … -- tmux -D -S <socket>` (tmux in the
//! foreground, as the sandbox's main process), talks to it through its socket from
//! outside, and every pane the server starts is inside.
//!
//! What the sandbox sees (see `docs/security.md`):
//! - the machine read-only (`--ro-bind / /`), a fresh `/dev`, its own `/proc` and PID
//!   namespace (no other process's environment or memory), its own IPC and UTS;
//! - empty tmpfs over every `hide` path the backend names (the coordinator's state
//!   directory, the user's home, `/tmp`, `/run/user`): no database, no other session, no
//!   coordinator socket, no other tmux socket, no dotfiles with credentials;
//! - read-only again: the `read_only` paths the backend names (e.g. `~/.gitconfig`, PATH
//!   directories under the home) and the directories of the Claude Code and agent
//!   binaries, so the hooks (`parhelia-agent hook`) can run;
//! - `binds` mounted from elsewhere after the plain mounts of their depth: the session's
//!   private home (`sessions/<sid>/home`) writable at the user's home path, and its
//!   writable copies of `shims` directories; a hidden regular file (a credential in a tool
//!   directory shown read-only) is covered by an empty one (`/dev/null`);
//! - writable: the workspace, Claude Code's config dir, the container's run directory
//!   (Claude Code's stream, stderr and exit status), the tmux socket directory and the
//!   sandbox-writable runtime directory (`claude.pid`) — nothing the agent trusts.
//!
//! `--die-with-parent`: when the agent dies the sandbox dies with it, so no Claude Code
//! keeps running unseen (and unbilled) after its agent is gone.
//!
//! Pids: inside its PID namespace the sandbox's processes have their own numbers; every
//! pid the sandbox reports (`#{pane_pid}`, `claude.pid`) is translated by
//! [`host_pid`], which only ever answers with a descendant of the sandbox process, so a
//! hostile sandbox cannot make the agent signal a process outside it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// `spec.json`'s `sandbox` object: what the backend wants hidden and exposed. The agent
/// adds its own directories (see the module docs).
pub use parhelia_contract::spec::{SandboxBind, SandboxSpec};

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum MountKind {
    Hide,
    ReadOnly,
    Writable,
    /// Mounted from another path (after the plain mounts at the same depth, so a private
    /// home replaces the tmpfs hiding the real one).
    Bind {
        source: PathBuf,
        writable: bool,
    },
}

/// The `bwrap` arguments (everything between `bwrap` and `--`) for a sandbox that sees
/// `spec` plus `writable` and `read_only`, starting in `cwd`.
///
/// Mounts are ordered by depth (then hides, read-only, writable at the same depth), so a
/// mount never hides a deeper one that was meant to show through it.
pub fn bwrap_args(
    spec: &SandboxSpec,
    writable: &[&Path],
    read_only: &[&Path],
    cwd: &Path,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "--ro-bind",
        "/",
        "/",
        "--dev",
        "/dev",
        "--unshare-pid",
        "--proc",
        "/proc",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--new-session",
        "--die-with-parent",
    ]
    .iter()
    .map(OsString::from)
    .collect();

    let mut mounts: Vec<(usize, MountKind, PathBuf)> = Vec::new();
    let mut add = |kind: MountKind, path: &Path| {
        if !path.is_absolute() || path == Path::new("/") {
            return;
        }
        let depth = path.components().count();
        if !mounts.iter().any(|(_, k, p)| *k == kind && p == path) {
            mounts.push((depth, kind, path.to_path_buf()));
        }
    };
    for bind in &spec.binds {
        if bind.source.is_absolute() {
            add(
                MountKind::Bind {
                    source: bind.source.clone(),
                    writable: bind.writable,
                },
                &bind.target,
            );
        }
    }
    for path in &spec.hide {
        add(MountKind::Hide, path);
    }
    for path in spec
        .read_only
        .iter()
        .map(PathBuf::as_path)
        .chain(read_only.iter().copied())
    {
        add(MountKind::ReadOnly, path);
    }
    for path in spec
        .writable
        .iter()
        .map(PathBuf::as_path)
        .chain(writable.iter().copied())
    {
        add(MountKind::Writable, path);
    }
    mounts.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    for (_, kind, path) in mounts {
        match kind {
            MountKind::Hide => {
                // A directory is covered by an empty tmpfs, a regular file (a credential
                // inside a tool directory shown read-only) by an empty one; a missing path
                // needs no hiding. A link is not hidden through: what it names is hidden
                // (or shown) by its own entry.
                match std::fs::symlink_metadata(&path) {
                    Ok(meta) if meta.is_dir() => {
                        args.push("--tmpfs".into());
                        args.push(path.into_os_string());
                    }
                    Ok(meta) if meta.is_file() => {
                        args.push("--ro-bind".into());
                        args.push("/dev/null".into());
                        args.push(path.into_os_string());
                    }
                    _ => {}
                }
            }
            MountKind::Bind { source, writable } => {
                args.push(if writable { "--bind" } else { "--ro-bind" }.into());
                args.push(source.into_os_string());
                args.push(path.into_os_string());
            }
            MountKind::ReadOnly => {
                args.push("--ro-bind-try".into());
                args.push(path.clone().into_os_string());
                args.push(path.into_os_string());
            }
            MountKind::Writable => {
                args.push("--bind".into());
                args.push(path.clone().into_os_string());
                args.push(path.into_os_string());
            }
        }
    }
    args.push("--chdir".into());
    args.push(cwd.as_os_str().to_owned());
    args
}

/// The directories that must be visible for `program` to run inside the sandbox: the
/// directory it is named in and the directory of what it resolves to (an npm bin link
/// points into its package, a native install into its versions directory).
pub fn program_dirs(program: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(parent) = program.parent().filter(|p| p.is_absolute()) {
        dirs.push(parent.to_path_buf());
    }
    if let Ok(real) = std::fs::canonicalize(program)
        && let Some(parent) = real.parent()
        && !dirs.iter().any(|d| d == parent)
    {
        dirs.push(parent.to_path_buf());
    }
    dirs
}

/// One process's identity as `/proc/<pid>/status` tells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcStatus {
    pub pid: u32,
    pub ppid: u32,
    /// The pid in each nested namespace, outermost first (`NSpid:`).
    pub ns_pids: Vec<u32>,
}

/// Parses `/proc/<pid>/status` (total: a malformed file gives `None`).
pub fn parse_status(pid: u32, text: &str) -> Option<ProcStatus> {
    let mut ppid = None;
    let mut ns_pids = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("PPid:") {
            ppid = rest.trim().parse().ok();
        } else if let Some(rest) = line.strip_prefix("NSpid:") {
            ns_pids = rest
                .split_whitespace()
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
        }
    }
    Some(ProcStatus {
        pid,
        ppid: ppid?,
        ns_pids,
    })
}

fn all_processes() -> Vec<ProcStatus> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            parse_status(pid, &text)
        })
        .collect()
}

/// Among the descendants of `root` (the sandbox process, a host pid), the host pid of
/// the process the sandbox calls `inner_pid`. Pure: `processes` is the process table.
pub fn find_host_pid(processes: &[ProcStatus], root: u32, inner_pid: u32) -> Option<u32> {
    let mut descendants = vec![root];
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for p in processes.iter().filter(|p| p.ppid == parent) {
            // A cycle cannot happen in a real table, but a reader stays total.
            if descendants.len() > processes.len() || descendants.contains(&p.pid) {
                continue;
            }
            descendants.push(p.pid);
            frontier.push(p.pid);
        }
    }
    processes
        .iter()
        .filter(|p| p.pid != root && descendants.contains(&p.pid))
        .find(|p| p.ns_pids.len() >= 2 && p.ns_pids.last() == Some(&inner_pid))
        .map(|p| p.pid)
}

/// The host pid of the sandbox's `inner_pid`, looked up in the live process table.
pub fn host_pid(root: u32, inner_pid: u32) -> Option<u32> {
    find_host_pid(&all_processes(), root, inner_pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(args: &[OsString]) -> Vec<String> {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn deeper_mounts_come_after_the_ones_they_sit_in() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let ws = state.join("sessions/s/workspace");
        std::fs::create_dir_all(&ws).unwrap();
        let spec = SandboxSpec {
            hide: vec![dir.path().to_path_buf(), state.clone()],
            read_only: vec![dir.path().join("bin")],
            writable: vec![],
            binds: vec![],
        };
        let args = text(&bwrap_args(&spec, &[&ws], &[], &ws));
        let at = |flag: &str, path: &Path| {
            args.windows(2)
                .position(|w| w[0] == flag && w[1] == path.to_string_lossy())
                .unwrap_or_else(|| panic!("{flag} {} missing in {args:?}", path.display()))
        };
        let hide_root = at("--tmpfs", dir.path());
        let hide_state = at("--tmpfs", &state);
        let bin = at("--ro-bind-try", &dir.path().join("bin"));
        let bind = at("--bind", &ws);
        assert!(hide_root < hide_state && hide_state < bind && hide_root < bin);
        assert!(args.contains(&"--unshare-pid".to_string()));
        assert!(args.contains(&"--die-with-parent".to_string()));
        assert_eq!(args.last().unwrap(), &ws.to_string_lossy());
    }

    #[test]
    fn the_root_is_never_hidden_or_rebound() {
        let spec = SandboxSpec {
            hide: vec!["/".into(), "relative".into()],
            read_only: vec![],
            writable: vec!["/".into()],
            binds: vec![SandboxBind {
                source: "relative".into(),
                target: "/x".into(),
                writable: true,
            }],
        };
        let args = text(&bwrap_args(&spec, &[], &[], Path::new("/")));
        assert!(!args.iter().any(|a| a == "--tmpfs" || a == "--bind"));
    }

    #[test]
    fn status_files_parse_totally() {
        let s = parse_status(42, "Name:\ttmux\nPPid:\t7\nNSpid:\t42\t2\n").unwrap();
        assert_eq!((s.ppid, s.ns_pids), (7, vec![42, 2]));
        assert!(parse_status(1, "garbage").is_none());
        assert!(parse_status(1, "PPid:\t1\nNSpid:\tx\n").is_none());
    }

    #[test]
    fn only_descendants_of_the_sandbox_are_answered() {
        let p = |pid, ppid, ns: &[u32]| ProcStatus {
            pid,
            ppid,
            ns_pids: ns.to_vec(),
        };
        let table = vec![
            p(100, 1, &[100]),
            p(101, 100, &[101, 1]),
            p(102, 101, &[102, 2]),
            p(103, 102, &[103, 3]),
            // Another sandbox's pid 3: not ours.
            p(200, 1, &[200]),
            p(201, 200, &[201, 3]),
        ];
        assert_eq!(find_host_pid(&table, 100, 3), Some(103));
        assert_eq!(find_host_pid(&table, 100, 2), Some(102));
        assert_eq!(find_host_pid(&table, 100, 9), None);
        assert_eq!(find_host_pid(&table, 200, 3), Some(201));
    }

    #[test]
    fn a_sandboxed_process_sees_only_what_it_was_given() {
        if !Path::new("/usr/bin/bwrap").exists() && which("bwrap").is_none() {
            eprintln!("bwrap is not installed; the sandbox itself is not exercised here");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let hidden = dir.path().join("state");
        let ws = hidden.join("ws");
        std::fs::create_dir_all(&ws).unwrap();
        std::fs::write(hidden.join("secret.db"), "top secret").unwrap();
        let spec = SandboxSpec {
            hide: vec![hidden.clone()],
            ..SandboxSpec::default()
        };
        let script = format!(
            "cat {db} 2>/dev/null && echo LEAK; echo ok > {ws}/out; touch {outside} 2>/dev/null && echo ESCAPE; ls /proc | grep -c '^[0-9]'",
            db = hidden.join("secret.db").display(),
            ws = ws.display(),
            outside = dir.path().join("outside").display(),
        );
        let out = std::process::Command::new("bwrap")
            .args(bwrap_args(&spec, &[&ws], &[], &ws))
            .args(["--", "/bin/sh", "-c", &script])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{out:?}");
        assert!(
            !stdout.contains("LEAK") && !stdout.contains("ESCAPE"),
            "{stdout}"
        );
        assert_eq!(std::fs::read_to_string(ws.join("out")).unwrap(), "ok\n");
        assert!(!dir.path().join("outside").exists());
        let processes: u32 = stdout.trim().lines().last().unwrap().parse().unwrap();
        assert!(processes <= 4, "the sandbox sees {processes} processes");
    }

    /// The private home: hidden real home, a private directory bound at its path (writes
    /// land there), a tool directory shown read-only over it with a credential file in it
    /// masked, and a writable copy of its `shims` bound over that.
    #[test]
    fn a_private_home_takes_the_writes_and_masks_credentials() {
        if !Path::new("/usr/bin/bwrap").exists() && which("bwrap").is_none() {
            eprintln!("bwrap is not installed; the sandbox itself is not exercised here");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let private = dir.path().join("private");
        let tool = home.join(".tool");
        std::fs::create_dir_all(tool.join("shims")).unwrap();
        std::fs::create_dir_all(private.join(".tool/shims")).unwrap();
        std::fs::write(tool.join("credentials"), "token=PLANTED").unwrap();
        std::fs::write(tool.join("README"), "tool readme").unwrap();
        std::fs::write(home.join("dotfile"), "real").unwrap();
        let spec = SandboxSpec {
            hide: vec![
                dir.path().to_path_buf(),
                home.clone(),
                tool.join("credentials"),
            ],
            read_only: vec![tool.clone()],
            writable: vec![],
            binds: vec![
                SandboxBind {
                    source: private.clone(),
                    target: home.clone(),
                    writable: true,
                },
                SandboxBind {
                    source: private.join(".tool/shims"),
                    target: tool.join("shims"),
                    writable: true,
                },
            ],
        };
        let script = format!(
            "cat {home}/dotfile 2>/dev/null && echo SAW-REAL; echo mine > {home}/written; \
             cat {tool}/credentials; cat {tool}/README; echo; \
             touch {tool}/new 2>/dev/null && echo TOOL-WRITABLE; echo s > {tool}/shims/python && echo shim-ok",
            home = home.display(),
            tool = tool.display(),
        );
        let out = std::process::Command::new("bwrap")
            .args(bwrap_args(&spec, &[], &[], Path::new("/")))
            .args(["--", "/bin/sh", "-c", &script])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{out:?}");
        assert!(!stdout.contains("SAW-REAL"), "{stdout}");
        assert!(!stdout.contains("PLANTED"), "{stdout}");
        assert!(stdout.contains("tool readme"), "{stdout}");
        assert!(!stdout.contains("TOOL-WRITABLE"), "{stdout}");
        assert!(stdout.contains("shim-ok"), "{stdout}");
        assert_eq!(
            std::fs::read_to_string(private.join("written")).unwrap(),
            "mine\n"
        );
        assert!(!home.join("written").exists());
        assert_eq!(
            std::fs::read_to_string(private.join(".tool/shims/python")).unwrap(),
            "s\n"
        );
        assert!(!tool.join("shims/python").exists());
    }

    /// The mount targets of an argument list, in order (`--tmpfs P`, `--ro-bind[-try] S P`,
    /// `--bind S P`).
    fn targets(args: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < args.len() {
            match args[i].as_str() {
                "--tmpfs" => {
                    out.push(args[i + 1].clone());
                    i += 2;
                }
                "--ro-bind" | "--ro-bind-try" | "--bind" if args[i + 1] != "/" => {
                    out.push(args[i + 2].clone());
                    i += 3;
                }
                _ => i += 1,
            }
        }
        out
    }

    proptest::proptest! {
        /// Whatever the spec names, no mount is ever made before one that contains it
        /// (which would hide it): a private home bound over the hidden home comes before
        /// the tool directories shown in it, and those before the shims bound over them.
        #[test]
        fn no_mount_is_hidden_by_a_later_one(
            parts in proptest::collection::vec(
                (proptest::collection::vec(0u8..3, 1..4), 0u8..4), 1..12),
        ) {
            let mut spec = SandboxSpec::default();
            let root = PathBuf::from("/nonexistent-parhelia-prop");
            for (names, kind) in &parts {
                let mut path = root.clone();
                for n in names {
                    path.push(["a", "b", "c"][*n as usize]);
                }
                match kind {
                    0 => spec.hide.push(path),
                    1 => spec.read_only.push(path),
                    2 => spec.writable.push(path),
                    _ => spec.binds.push(SandboxBind {
                        source: PathBuf::from("/elsewhere"),
                        target: path,
                        writable: true,
                    }),
                }
            }
            let args = text(&bwrap_args(&spec, &[], &[], Path::new("/")));
            let order = targets(&args);
            for (i, first) in order.iter().enumerate() {
                for after in &order[i + 1..] {
                    // Nothing mounted after `first` may contain it (it would hide it).
                    proptest::prop_assert!(
                        after == first || !Path::new(first).starts_with(after),
                        "{after} is mounted after {first}, which it contains: {order:?}"
                    );
                }
            }
            // Every bind is there, from its source.
            for bind in &spec.binds {
                let target = bind.target.to_string_lossy().into_owned();
                proptest::prop_assert!(args.windows(3).any(|w| w[0] == "--bind"
                    && w[1] == "/elsewhere" && w[2] == target), "{target} missing: {args:?}");
            }
        }
    }

    fn which(program: &str) -> Option<PathBuf> {
        which::which(program).ok()
    }
}
