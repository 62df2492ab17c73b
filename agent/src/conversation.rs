//! The Claude Code conversation, as a checkpoint captures and restores it.
//!
//! Claude Code keeps a session's transcript at
//! `<config dir>/projects/<project dir name>/<session id>.jsonl`, and its
//! subagent files and large tool outputs under `.../<session id>/`. A
//! checkpoint stores a *staged* copy of exactly those (the transcript cut at
//! its last complete line, so a half-written line never travels), laid out
//! without the project directory name: `<session id>.jsonl` and
//! `<session id>/`. Installing puts them back under the project directory of
//! whatever workspace path the session now has, with fresh modification times
//! (Claude Code deletes transcripts older than `cleanupPeriodDays`).

use std::io;
use std::path::{Path, PathBuf};

/// Claude Code's project directory name for a (symlink-resolved) working
/// directory: every character outside `[A-Za-z0-9]` becomes `-`; past 200
/// characters, the first 200 plus `-` plus the base-36 absolute value of the
/// Java-style string hash of the path (measured with Claude Code 2.1.330).
pub fn project_dir_name(cwd: &Path) -> String {
    let path = cwd.to_string_lossy();
    let sanitized: String = path
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    if sanitized.chars().count() <= 200 {
        return sanitized;
    }
    let mut hash: i32 = 0;
    // JavaScript strings are UTF-16: hash code units, as Claude Code does.
    for unit in path.encode_utf16() {
        // (h << 5) - h + unit, in 32-bit integers.
        hash = hash.wrapping_mul(31).wrapping_add(i32::from(unit));
    }
    let prefix: String = sanitized.chars().take(200).collect();
    format!("{prefix}-{}", base36(hash.unsigned_abs()))
}

fn base36(mut n: u32) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ascii digits")
}

/// The project directory of `workspace` inside `config_dir`.
pub fn project_dir(config_dir: &Path, workspace: &Path) -> PathBuf {
    let real = std::fs::canonicalize(workspace).unwrap_or_else(|_| workspace.to_path_buf());
    config_dir.join("projects").join(project_dir_name(&real))
}

/// Replaces `staging` with a copy of the session's conversation: the
/// transcript cut at its last newline and the session's side directory.
/// A session that has no transcript yet stages an empty directory.
pub fn stage(
    config_dir: &Path,
    workspace: &Path,
    claude_session_id: &str,
    staging: &Path,
) -> io::Result<()> {
    if staging.exists() {
        std::fs::remove_dir_all(staging)?;
    }
    std::fs::create_dir_all(staging)?;
    let project = project_dir(config_dir, workspace);
    // The config dir is the session's to write: never read through a link in it
    // (that would copy a file from outside the sandbox into the checkpoint).
    if !is_real_dir(&config_dir.join("projects")) || !is_real_dir(&project) {
        return Ok(());
    }
    let transcript = project.join(format!("{claude_session_id}.jsonl"));
    match read_regular_file(&transcript) {
        Ok(bytes) => {
            let complete = bytes
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(0, |last_newline| last_newline + 1);
            std::fs::write(
                staging.join(format!("{claude_session_id}.jsonl")),
                &bytes[..complete],
            )?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let side = project.join(claude_session_id);
    if is_real_dir(&side) {
        copy_dir(&side, &staging.join(claude_session_id))?;
    }
    Ok(())
}

/// How long a turn's end waits for Claude Code to write the turn to its transcript
/// before the checkpoint is taken anyway.
pub const TURN_FLUSH_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Whether a transcript holds the whole of its last turn: the main thread's last
/// assistant entry has no tool call (the turn's final reply), every tool call since the
/// turn's prompt has its result, and, when the Stop hook named it, that reply's text is
/// the `last_assistant_message`. Claude Code writes its transcript behind its own
/// queue, so at the Stop hook the final reply (and in short turns the last tool result)
/// may not be there yet.
///
/// The transcript is the session's to write: any bytes give an answer, never a panic;
/// lines that are not JSON, sidechain (subagent) lines and a half-written last line
/// count for nothing.
pub fn turn_is_complete(transcript: &[u8], last_assistant_message: &str) -> bool {
    let complete = transcript
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |last_newline| last_newline + 1);
    let mut uses: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut results: std::collections::HashSet<String> = std::collections::HashSet::new();
    // The last assistant entry of the main thread: (has a tool call, its text).
    let mut last_assistant: Option<(bool, String)> = None;
    for line in transcript[..complete].split(|b| *b == b'\n').rev() {
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(line) else {
            continue;
        };
        if value["isSidechain"].as_bool() == Some(true) {
            continue;
        }
        let content = &value["message"]["content"];
        match value["type"].as_str() {
            Some("assistant") => {
                let mut has_tool_use = false;
                let mut text = String::new();
                for block in content.as_array().into_iter().flatten() {
                    match block["type"].as_str() {
                        Some("tool_use") => {
                            has_tool_use = true;
                            if let Some(id) = block["id"].as_str() {
                                uses.insert(id.to_string());
                            }
                        }
                        Some("text") => text.push_str(block["text"].as_str().unwrap_or("")),
                        _ => {}
                    }
                }
                if last_assistant.is_none() {
                    last_assistant = Some((has_tool_use, text));
                }
            }
            Some("user") => {
                let mut prompt = content.is_string();
                for block in content.as_array().into_iter().flatten() {
                    match block["type"].as_str() {
                        Some("tool_result") => {
                            if let Some(id) = block["tool_use_id"].as_str() {
                                results.insert(id.to_string());
                            }
                        }
                        Some("text") => prompt = true,
                        _ => {}
                    }
                }
                // The turn's prompt (Claude Code's own meta lines are not one).
                if prompt && value["isMeta"].as_bool() != Some(true) {
                    break;
                }
            }
            _ => {}
        }
    }
    let Some((has_tool_use, text)) = last_assistant else {
        return false;
    };
    let wanted = last_assistant_message.trim();
    !has_tool_use
        && uses.iter().all(|id| results.contains(id))
        // (`wanted` may be only the reply's tail.)
        && (wanted.is_empty() || !text.trim().is_empty() && text.trim().ends_with(wanted))
}

/// How much of the transcript's end the turn-end wait reads each time it looks: a tool
/// result always follows its call, so a turn cut at the window's start still shows
/// every call in the window with its result (the window's first, partial line counts
/// for nothing).
const TURN_TAIL_BYTES: u64 = 8 << 20;

/// The last at most `max` bytes of a regular file, without following a link at `path`.
fn read_regular_file_tail(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    use std::io::{Read, Seek};
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits() | nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "not a regular file",
        ));
    }
    file.seek(io::SeekFrom::Start(meta.len().saturating_sub(max)))?;
    let mut bytes = Vec::new();
    file.take(max).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Waits (up to `wait`, polling) until the session's transcript holds its last turn
/// whole ([`turn_is_complete`]); returns whether it did. A missing transcript or a link
/// in its place never does.
pub fn wait_for_turn(
    config_dir: &Path,
    workspace: &Path,
    claude_session_id: &str,
    last_assistant_message: &str,
    wait: std::time::Duration,
) -> bool {
    let transcript = project_dir(config_dir, workspace).join(format!("{claude_session_id}.jsonl"));
    let deadline = std::time::Instant::now() + wait;
    loop {
        if read_regular_file_tail(&transcript, TURN_TAIL_BYTES)
            .is_ok_and(|bytes| turn_is_complete(&bytes, last_assistant_message))
        {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A directory, and not a link to one.
fn is_real_dir(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}

/// Makes `path` a real directory: a link or file the session planted there is removed.
fn ensure_real_dir(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => std::fs::remove_file(path)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(path)
}

/// Reads a regular file without following a link at `path`.
fn read_regular_file(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits() | nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(nix::libc::ELOOP) {
                io::Error::new(io::ErrorKind::NotFound, "a link, not followed")
            } else {
                e
            }
        })?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "not a regular file",
        ));
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Installs a staged conversation for `workspace`, every file with a fresh
/// modification time. Files of other sessions in the project directory are
/// left alone; this session's own are replaced.
pub fn install(
    staging: &Path,
    config_dir: &Path,
    workspace: &Path,
    claude_session_id: &str,
) -> io::Result<()> {
    let project = project_dir(config_dir, workspace);
    // Links planted in the session's config dir are removed, never written through.
    std::fs::create_dir_all(config_dir)?;
    ensure_real_dir(&config_dir.join("projects"))?;
    ensure_real_dir(&project)?;
    let side = project.join(claude_session_id);
    match std::fs::symlink_metadata(&side) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(&side)?,
        Ok(_) => std::fs::remove_file(&side)?,
        Err(_) => {}
    }
    let transcript = format!("{claude_session_id}.jsonl");
    let staged_transcript = staging.join(&transcript);
    if staged_transcript.is_file() {
        let target = project.join(&transcript);
        match std::fs::remove_file(&target) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        // fs::copy writes a new file: its mtime is now.
        std::fs::copy(&staged_transcript, target)?;
    }
    let staged_side = staging.join(claude_session_id);
    if staged_side.is_dir() {
        copy_dir(&staged_side, &side)?;
    }
    Ok(())
}

/// Copies regular files and directories (symlinks are copied as links).
fn copy_dir(from: &Path, to: &Path) -> io::Result<()> {
    for entry in walkdir::WalkDir::new(from).follow_links(false) {
        let entry = entry.map_err(io::Error::other)?;
        let relative = entry.path().strip_prefix(from).expect("under the root");
        let target = to.join(relative);
        let kind = entry.file_type();
        if kind.is_dir() {
            std::fs::create_dir_all(&target)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path())?, &target)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROMPT: &str = r#"{"type":"user","message":{"role":"user","content":"Do it"}}"#;
    const BASH: &str = r#"{"type":"assistant","message":{"id":"m1","content":[{"type":"tool_use","id":"t1","name":"Bash","input":{"command":"echo hi"}}]}}"#;
    const RESULT: &str = r#"{"type":"user","message":{"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":"hi"}]}}"#;
    const REPLY: &str = r#"{"type":"assistant","message":{"id":"m2","content":[{"type":"text","text":"All done."}]}}"#;
    const SUB: &str = r#"{"type":"assistant","isSidechain":true,"message":{"id":"m3","content":[{"type":"text","text":"sub"}]}}"#;

    fn lines(lines: &[&str]) -> Vec<u8> {
        lines
            .iter()
            .map(|l| format!("{l}\n"))
            .collect::<String>()
            .into_bytes()
    }

    /// The transcript as Claude Code had flushed it at the Stop hook of a short turn:
    /// the checkpoint then held a Bash call whose result and final reply were missing.
    #[test]
    fn a_turn_is_complete_only_with_its_final_reply_and_every_tool_result() {
        let whole = lines(&[PROMPT, BASH, RESULT, REPLY]);
        assert!(turn_is_complete(&whole, "All done."));
        assert!(turn_is_complete(&whole, ""));
        // The final reply not written yet.
        assert!(!turn_is_complete(
            &lines(&[PROMPT, BASH, RESULT]),
            "All done."
        ));
        assert!(!turn_is_complete(&lines(&[PROMPT, BASH, RESULT]), ""));
        // Nor the tool's result.
        assert!(!turn_is_complete(&lines(&[PROMPT, BASH]), ""));
        // A reply from an earlier turn is not this one's.
        let other = r#"{"type":"assistant","message":{"id":"m0","content":[{"type":"text","text":"Earlier."}]}}"#;
        assert!(!turn_is_complete(&lines(&[PROMPT, other]), "All done."));
        // Half a line is not a line.
        let mut half = lines(&[PROMPT, BASH, RESULT]);
        half.extend_from_slice(&REPLY.as_bytes()[..20]);
        assert!(!turn_is_complete(&half, "All done."));
        // Subagent lines neither complete nor spoil the main thread's turn.
        assert!(turn_is_complete(
            &lines(&[PROMPT, BASH, RESULT, REPLY, SUB]),
            "All done."
        ));
        assert!(!turn_is_complete(
            &lines(&[PROMPT, BASH, RESULT, SUB]),
            "sub"
        ));
        // A tool call of an earlier turn without a result does not hold this one up.
        let lone = r#"{"type":"assistant","message":{"id":"m0","content":[{"type":"tool_use","id":"t0","name":"Bash","input":{}}]}}"#;
        assert!(turn_is_complete(
            &lines(&[lone, PROMPT, BASH, RESULT, REPLY]),
            "All done."
        ));
        assert!(!turn_is_complete(b"", ""));
    }

    /// The wait reads only the transcript's end: a turn whose start is beyond the window
    /// still counts as whole, and a link planted for the transcript is not followed.
    #[test]
    fn the_turn_end_wait_reads_the_transcripts_tail_and_follows_no_link() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("t.jsonl");
        let mut bytes = vec![b'x'; 100];
        bytes.push(b'\n');
        bytes.extend(lines(&[PROMPT, BASH, RESULT, REPLY]));
        std::fs::write(&path, &bytes).unwrap();
        let tail = read_regular_file_tail(&path, 300).unwrap();
        assert!(tail.len() <= 300);
        assert!(turn_is_complete(&tail, "All done."));
        let link = tmp.path().join("link.jsonl");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(read_regular_file_tail(&link, 300).is_err());
    }

    proptest::proptest! {
        /// The session writes its transcript: any bytes give an answer.
        #[test]
        fn any_transcript_gives_an_answer(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512), wanted in ".{0,8}") {
            let _ = turn_is_complete(&bytes, &wanted);
        }
    }

    #[test]
    fn links_in_the_config_dir_are_neither_read_nor_written_through() {
        let tmp = tempfile::tempdir().unwrap();
        let workspace = tmp.path().join("ws");
        std::fs::create_dir(&workspace).unwrap();
        let config = tmp.path().join("config");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("host-secret"), "host secret\n").unwrap();
        let project = project_dir(&config, &workspace);
        std::fs::create_dir_all(&project).unwrap();
        // The transcript is a link to a file outside: staging must not copy it.
        std::os::unix::fs::symlink(outside.join("host-secret"), project.join("sid.jsonl")).unwrap();
        std::os::unix::fs::symlink(&outside, project.join("sid")).unwrap();
        let staging = tmp.path().join("staging");
        stage(&config, &workspace, "sid", &staging).unwrap();
        assert!(!staging.join("sid.jsonl").exists());
        assert!(!staging.join("sid").exists());

        // The whole projects dir is a link to outside: install writes into a real dir.
        std::fs::remove_dir_all(config.join("projects")).unwrap();
        std::os::unix::fs::symlink(&outside, config.join("projects")).unwrap();
        std::fs::write(staging.join("sid.jsonl"), "{}\n").unwrap();
        install(&staging, &config, &workspace, "sid").unwrap();
        let mut left: Vec<_> = std::fs::read_dir(&outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        left.sort();
        assert_eq!(left, ["host-secret"], "nothing was written outside");
        assert_eq!(
            std::fs::read_to_string(outside.join("host-secret")).unwrap(),
            "host secret\n"
        );
        assert!(
            std::fs::symlink_metadata(config.join("projects"))
                .unwrap()
                .is_dir()
        );
        assert_eq!(
            std::fs::read_to_string(project_dir(&config, &workspace).join("sid.jsonl")).unwrap(),
            "{}\n"
        );
    }

    #[test]
    fn short_paths_are_sanitized() {
        assert_eq!(
            project_dir_name(Path::new("/tmp/my repo/x_y.z")),
            "-tmp-my-repo-x-y-z"
        );
    }

    #[test]
    fn long_paths_get_the_hash_claude_code_uses() {
        // Measured: Claude Code 2.1.330 ran in this directory and created
        // `projects/<first 200 chars>-8skx26`.
        let path = format!("/tmp/cc-long/{}/{}", "a".repeat(120), "b".repeat(100));
        let name = project_dir_name(Path::new(&path));
        assert!(name.ends_with("-8skx26"), "{name}");
        assert_eq!(name.len(), 200 + 1 + "8skx26".len());
    }

    #[test]
    fn staging_cuts_the_torn_line_and_install_round_trips() {
        let tmp = tempfile::tempdir().unwrap();
        let workspace = tmp.path().join("ws");
        std::fs::create_dir(&workspace).unwrap();
        let config = tmp.path().join("config");
        let project = project_dir(&config, &workspace);
        std::fs::create_dir_all(project.join("sid/subagents")).unwrap();
        std::fs::write(
            project.join("sid.jsonl"),
            "{\"a\":1}\n{\"b\":2}\n{\"torn\":",
        )
        .unwrap();
        std::fs::write(project.join("sid/subagents/agent-1.jsonl"), "{}\n").unwrap();
        std::fs::write(project.join("other.jsonl"), "{}\n").unwrap();

        let staging = tmp.path().join("staging");
        stage(&config, &workspace, "sid", &staging).unwrap();
        assert_eq!(
            std::fs::read_to_string(staging.join("sid.jsonl")).unwrap(),
            "{\"a\":1}\n{\"b\":2}\n"
        );
        assert!(staging.join("sid/subagents/agent-1.jsonl").is_file());
        assert!(!staging.join("other.jsonl").exists(), "only this session");

        // Install into a fresh config dir for a workspace at another path.
        let moved = tmp.path().join("elsewhere");
        std::fs::create_dir(&moved).unwrap();
        let fresh = tmp.path().join("fresh-config");
        install(&staging, &fresh, &moved, "sid").unwrap();
        let target = project_dir(&fresh, &moved);
        assert_eq!(
            std::fs::read_to_string(target.join("sid.jsonl")).unwrap(),
            "{\"a\":1}\n{\"b\":2}\n"
        );
        assert!(target.join("sid/subagents/agent-1.jsonl").is_file());
        let age = std::fs::metadata(target.join("sid.jsonl"))
            .unwrap()
            .modified()
            .unwrap()
            .elapsed()
            .unwrap_or_default();
        assert!(age.as_secs() < 3600, "the transcript has a fresh mtime");
    }

    #[test]
    fn a_session_without_a_transcript_stages_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let staging = tmp.path().join("staging");
        stage(tmp.path(), tmp.path(), "sid", &staging).unwrap();
        assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0);
    }
}
