//! The git state of the workspace, captured into every checkpoint's metadata:
//! HEAD, branch, a dirty summary and the stashes.
//!
//! Read-only: capturing never writes to the repository (no index refresh is
//! written back, no stash is touched). A workspace that is not a git
//! repository, or a repository git2 cannot read, gives `{"repository": false}`
//! or an `error` field rather than failing the checkpoint: the files are what
//! must be saved; git state is a description of them.

use std::path::{Path, PathBuf};

/// The captured state's types are the contract's: the coordinator reads them back from
/// checkpoint metadata (`parhelia_contract::checkpoint`).
pub use parhelia_contract::checkpoint::{DirtySummary, GitState, Stash};

/// Who reads the repository: the agent itself, or (uid separation) the session user
/// through `<agent_exe> git-state`, so git never reads a session's repository as root
/// (libgit2 refuses a repository another user owns, and should).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reader {
    Agent,
    SessionUser {
        agent_exe: PathBuf,
        uid: u32,
        gid: u32,
    },
}

/// How long the session user's reader may take, and how much it may print.
const READER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
const READER_MAX_OUTPUT: u64 = 4 << 20;

/// [`capture`] as `reader`. A reader that fails gives a state with an `error`.
pub fn capture_as(workspace: &Path, reader: &Reader) -> GitState {
    let Reader::SessionUser {
        agent_exe,
        uid,
        gid,
    } = reader
    else {
        return capture(workspace);
    };
    let failed = |why: String| GitState {
        repository: workspace.join(".git").exists(),
        error: Some(why),
        ..GitState::default()
    };
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    let child = std::process::Command::new(agent_exe)
        .arg("git-state")
        .arg("--workspace")
        .arg(workspace)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .current_dir("/")
        .uid(*uid)
        .gid(*gid)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => return failed(format!("the git state reader did not start: {e}")),
    };
    // Read on a thread so a reader that floods or hangs is cut off, never waited on.
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let output = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = (&mut stdout)
            .take(READER_MAX_OUTPUT)
            .read_to_end(&mut bytes);
        bytes
    });
    let deadline = std::time::Instant::now() + READER_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return failed("the git state reader did not finish in time".into());
            }
        }
    }
    let bytes = output.join().unwrap_or_default();
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| failed(format!("the git state reader's answer is unreadable: {e}")))
}

/// Captures the git state of `workspace` (which need not be a repository).
pub fn capture(workspace: &Path) -> GitState {
    let mut repo = match git2::Repository::open(workspace) {
        Ok(repo) => repo,
        Err(e) if e.code() == git2::ErrorCode::NotFound => return GitState::default(),
        Err(e) => {
            return GitState {
                repository: true,
                error: Some(e.message().to_string()),
                ..GitState::default()
            };
        }
    };
    let mut state = GitState {
        repository: true,
        ..GitState::default()
    };
    match repo.head() {
        Ok(head) => {
            state.head = head.target().map(|oid| oid.to_string());
            state.detached = !head.is_branch();
            if head.is_branch() {
                state.branch = head.shorthand().map(str::to_string);
            }
        }
        // An unborn branch (no commit yet): name it from HEAD's symbolic target.
        Err(e) if e.code() == git2::ErrorCode::UnbornBranch => {
            state.branch = repo
                .find_reference("HEAD")
                .ok()
                .and_then(|r| r.symbolic_target().map(str::to_string))
                .map(|t| t.trim_start_matches("refs/heads/").to_string());
        }
        Err(e) => state.error = Some(e.message().to_string()),
    }
    let mut options = git2::StatusOptions::new();
    options
        .include_untracked(true)
        .recurse_untracked_dirs(true)
        .exclude_submodules(true);
    match repo.statuses(Some(&mut options)) {
        Ok(statuses) => {
            for entry in statuses.iter() {
                let s = entry.status();
                let d = &mut state.dirty;
                if s.is_conflicted() {
                    d.conflicted += 1;
                    continue;
                }
                if s.intersects(
                    git2::Status::INDEX_NEW
                        | git2::Status::INDEX_MODIFIED
                        | git2::Status::INDEX_DELETED
                        | git2::Status::INDEX_RENAMED
                        | git2::Status::INDEX_TYPECHANGE,
                ) {
                    d.staged += 1;
                }
                if s.intersects(
                    git2::Status::WT_MODIFIED
                        | git2::Status::WT_RENAMED
                        | git2::Status::WT_TYPECHANGE,
                ) {
                    d.modified += 1;
                }
                if s.contains(git2::Status::WT_DELETED) {
                    d.deleted += 1;
                }
                if s.contains(git2::Status::WT_NEW) {
                    d.untracked += 1;
                }
            }
        }
        Err(e) => state.error = Some(e.message().to_string()),
    }
    let mut stashes = Vec::new();
    let _ = repo.stash_foreach(|index, message, oid| {
        stashes.push(Stash {
            index,
            message: message.to_string(),
            oid: oid.to_string(),
        });
        true
    });
    state.stashes = stashes;
    state
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn git(dir: &Path, args: &[&str]) {
        let status = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
            .args(args)
            .current_dir(dir)
            .status()
            .unwrap();
        assert!(status.success(), "git {args:?}");
    }

    #[test]
    fn a_plain_directory_is_not_a_repository() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(capture(dir.path()), GitState::default());
    }

    #[test]
    fn head_branch_dirty_summary_and_stashes() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        git(d, &["init", "-q", "-b", "main"]);
        let unborn = capture(d);
        assert!(unborn.repository);
        assert_eq!(unborn.branch.as_deref(), Some("main"));
        assert_eq!(unborn.head, None);

        std::fs::write(d.join("a.txt"), "a\n").unwrap();
        std::fs::write(d.join("b.txt"), "b\n").unwrap();
        git(d, &["add", "-A"]);
        git(d, &["commit", "-qm", "one"]);
        std::fs::write(d.join("a.txt"), "stashed\n").unwrap();
        git(d, &["stash", "push", "-qm", "wip"]);
        std::fs::write(d.join("a.txt"), "changed\n").unwrap();
        std::fs::remove_file(d.join("b.txt")).unwrap();
        std::fs::write(d.join("new.txt"), "n\n").unwrap();

        let state = capture(d);
        assert_eq!(state.branch.as_deref(), Some("main"));
        assert!(!state.detached);
        assert_eq!(state.head.as_ref().map(String::len), Some(40));
        assert_eq!(
            state.dirty,
            DirtySummary {
                modified: 1,
                deleted: 1,
                untracked: 1,
                ..DirtySummary::default()
            }
        );
        assert_eq!(state.stashes.len(), 1);
        assert!(state.stashes[0].message.contains("wip"));
    }
}
