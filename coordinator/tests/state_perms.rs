//! State files are private whatever the umask (issue 11, item 8).
//!
//! One test per process-wide umask setting would race in one binary, so the
//! in-process check runs its umasks one after another inside a single test,
//! and the binary check runs `parhelia` under `sh -c 'umask …'`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use nix::sys::stat::{Mode, umask};
use parhelia::db::{Db, db_files};
use parhelia::state_dir::{StateDir, StateDirSource};

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Every file and directory under `root` (root included) is closed to group
/// and others.
fn assert_all_private(root: &Path) {
    for entry in walkdir::WalkDir::new(root).follow_links(false) {
        let entry = entry.unwrap();
        let m = mode(entry.path());
        if entry.file_type().is_symlink() {
            continue;
        }
        assert_eq!(
            m & 0o077,
            0,
            "{} is mode {m:o}: readable by others",
            entry.path().display()
        );
    }
}

/// A `.parhelia/` the user made with `mkdir` (0755) under umask 022 or 000:
/// the open path narrows the directory before the database exists, and the
/// database, its WAL and its shared-memory file are 0600 — without relying on
/// the process umask.
#[test]
fn state_dir_and_database_files_are_private_under_any_umask() {
    for mask in [0o022, 0o000] {
        let old = umask(Mode::from_bits_truncate(mask));
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join(".parhelia");
        std::fs::create_dir(&root).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();

        let mut state = StateDir::new(root.clone(), StateDirSource::WalkedUp);
        state.ensure_private().unwrap();
        assert_eq!(mode(&root), 0o700, "umask {mask:o}");
        let db = Db::open(&state.db_path()).unwrap();
        db.coordinator_id().unwrap(); // a write: the WAL has content
        let [main, wal, shm, _] = db_files(&state.db_path());
        for file in [&main, &wal, &shm] {
            assert_eq!(mode(file), 0o600, "{} under umask {mask:o}", file.display());
        }
        assert_all_private(&root);
        drop(db);
        umask(old);
    }
}

/// The real CLI under umask 000 on a 0755 `.parhelia/`: every file it leaves
/// in the state directory is owner-only.
#[test]
fn the_cli_leaves_only_private_files_under_umask_000() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join(".parhelia");
    std::fs::create_dir(&root).unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg("umask 000; exec \"$0\" --state-dir \"$1\" task list")
        .arg(env!("CARGO_BIN_EXE_parhelia"))
        .arg(&root)
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(root.join("parhelia.db").exists());
    assert_eq!(mode(&root), 0o700);
    assert_all_private(&root);
}
