//! Which workspace paths changed since the last checkpoint, from a file
//! watcher (notify: inotify on Linux), so a checkpoint after a small change
//! does not rescan the tree.
//!
//! Promise: [`ChangeTracker::take`] returns either a set of relative paths
//! that is a superset of everything created, modified, deleted or renamed
//! since the previous `take` (and nothing only opened or read), or [`ChangeHint::Unknown`] when that cannot be
//! guaranteed — the watcher could not start, reported an error, or the kernel
//! dropped events (queue overflow). The checkpoint engine rescans on Unknown,
//! so either way the checkpoint is exact.
//!
//! A directory that appears (created or renamed in) is walked here and all its
//! entries are added: files created inside it before its own watch was in
//! place produce no events of their own.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};
use parhelia_checkpoint::ChangeHint;

enum Pending {
    Paths(BTreeSet<PathBuf>),
    /// Events may have been lost: the next checkpoint must rescan.
    Unknown,
}

struct Shared {
    root: PathBuf,
    pending: Pending,
}

impl Shared {
    fn add(&mut self, absolute: &Path) {
        let Ok(relative) = absolute.strip_prefix(&self.root) else {
            return;
        };
        if relative.as_os_str().is_empty() {
            return;
        }
        // Only the event's own path: `take` adds the parents for the engine.
        if let Pending::Paths(paths) = &mut self.pending {
            paths.insert(relative.to_path_buf());
        }
    }

    fn add_tree(&mut self, absolute: &Path) {
        self.add(absolute);
        if absolute.is_dir() {
            for entry in walkdir::WalkDir::new(absolute)
                .min_depth(1)
                .follow_links(false)
            {
                match entry {
                    Ok(entry) => self.add(entry.path()),
                    Err(_) => {
                        self.pending = Pending::Unknown;
                        return;
                    }
                }
            }
        }
    }
}

pub struct ChangeTracker {
    shared: Arc<Mutex<Shared>>,
    /// The previous checkpoint's git capture, which the next builds on with the events
    /// this tracker hands out (kept here: every `take` must reach it, or it goes stale).
    git: Mutex<crate::git_state::GitCache>,
    // Dropping the watcher stops it; kept for the tracker's lifetime.
    _watcher: Option<notify::RecommendedWatcher>,
}

impl ChangeTracker {
    /// Starts watching `root` recursively. The first `take` is always Unknown:
    /// nothing is known about changes made before the watcher started (an
    /// agent restart, a fresh container).
    pub fn start(root: &Path) -> ChangeTracker {
        let shared = Arc::new(Mutex::new(Shared {
            root: root.to_path_buf(),
            pending: Pending::Unknown,
        }));
        let handler_shared = Arc::clone(&shared);
        let watcher = notify::recommended_watcher(move |result: notify::Result<notify::Event>| {
            let mut shared = handler_shared.lock().unwrap_or_else(|p| p.into_inner());
            match result {
                Ok(event) => {
                    if event.need_rescan() {
                        shared.pending = Pending::Unknown;
                        return;
                    }
                    // Opening, reading and closing a file not opened for writing
                    // change nothing (inotify's `Access`). Counted, every file the
                    // previous checkpoint read would be hashed again by the next one
                    // (issue 19: every checkpoint re-read the tree). A close after
                    // writing is kept: a write through mmap brings no `Modify`.
                    if matches!(event.kind, EventKind::Access(kind)
                        if kind != AccessKind::Close(AccessMode::Write))
                    {
                        return;
                    }
                    let appeared = matches!(
                        event.kind,
                        EventKind::Create(_)
                            | EventKind::Modify(notify::event::ModifyKind::Name(_))
                    );
                    for path in &event.paths {
                        if appeared {
                            shared.add_tree(path);
                        } else {
                            shared.add(path);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the workspace watcher failed; the next checkpoint rescans");
                    shared.pending = Pending::Unknown;
                }
            }
        })
        .and_then(|mut watcher| {
            watcher.watch(root, RecursiveMode::Recursive)?;
            Ok(watcher)
        });
        let watcher = match watcher {
            Ok(watcher) => Some(watcher),
            Err(e) => {
                tracing::warn!(error = %e, root = %root.display(), "cannot watch the workspace; every checkpoint will rescan it");
                None
            }
        };
        ChangeTracker {
            shared,
            git: Mutex::new(crate::git_state::GitCache::default()),
            _watcher: watcher,
        }
    }

    /// The previous git capture (see the field).
    pub fn git_cache(&self) -> std::sync::MutexGuard<'_, crate::git_state::GitCache> {
        self.git.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the watcher is running (otherwise every hint is Unknown).
    pub fn is_watching(&self) -> bool {
        self._watcher.is_some()
    }

    /// The changes since the previous `take`, resetting the record: the paths events
    /// named and their parent directories (whose entry lists changed with a create, delete
    /// or rename).
    pub fn take(&self) -> ChangeHint {
        self.take_with_events().0
    }

    /// [`Self::take`], and the paths the events named themselves (without the parents
    /// added for the engine; `None` when the hint is Unknown): every path created,
    /// modified, deleted or renamed, where a directory renamed away stands for what it
    /// held (`git_state::capture_incremental` asks git about these).
    pub fn take_with_events(&self) -> (ChangeHint, Option<BTreeSet<PathBuf>>) {
        let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        let next = if self._watcher.is_some() {
            Pending::Paths(BTreeSet::new())
        } else {
            Pending::Unknown
        };
        match std::mem::replace(&mut shared.pending, next) {
            Pending::Paths(events) => {
                let mut paths = events.clone();
                for path in &events {
                    if let Some(parent) = path.parent()
                        && !parent.as_os_str().is_empty()
                    {
                        paths.insert(parent.to_path_buf());
                    }
                }
                (ChangeHint::Paths(paths), Some(events))
            }
            Pending::Unknown => (ChangeHint::Unknown, None),
        }
    }

    /// Puts back a hint whose checkpoint failed, so its changes are not lost.
    pub fn give_back(&self, hint: ChangeHint) {
        let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        match (hint, &mut shared.pending) {
            (ChangeHint::Paths(paths), Pending::Paths(current)) => current.extend(paths),
            (ChangeHint::Unknown, _) => shared.pending = Pending::Unknown,
            (_, Pending::Unknown) => {}
        }
    }

    /// Forget everything: the tree was just replaced wholesale (a restore).
    pub fn invalidate(&self) {
        self.shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pending = Pending::Unknown;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// Waits until the tracker has seen `expected` (events arrive on the
    /// watcher's thread), with a generous bound.
    fn wait_for(tracker: &ChangeTracker, expected: &[&str]) -> BTreeSet<PathBuf> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = BTreeSet::new();
        loop {
            if let ChangeHint::Paths(paths) = tracker.take() {
                seen.extend(paths);
            }
            if expected.iter().all(|p| seen.contains(Path::new(p))) {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "saw only {seen:?}, expected {expected:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn the_first_take_is_unknown_then_changes_are_tracked() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        std::fs::write(root.join("old.txt"), "x").unwrap();
        let tracker = ChangeTracker::start(&root);
        assert!(tracker.is_watching());
        assert!(matches!(tracker.take(), ChangeHint::Unknown));

        std::fs::write(root.join("a.txt"), "a").unwrap();
        std::fs::remove_file(root.join("old.txt")).unwrap();
        // A directory tree created in one go: its inner files may precede
        // their watch, and must be found anyway.
        std::fs::create_dir_all(root.join("d/e/f")).unwrap();
        std::fs::write(root.join("d/e/f/deep.txt"), "deep").unwrap();
        // deep.txt arrives through its own event or through the walk of `d`.
        wait_for(&tracker, &["a.txt", "old.txt", "d", "d/e/f/deep.txt"]);
    }

    /// Reads are not changes: files opened, read and closed (as a checkpoint reads
    /// what it hashes) are not in the next hint; a written one is.
    #[test]
    fn reading_files_is_not_a_change() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        std::fs::create_dir(root.join("src")).unwrap();
        for name in ["read.txt", "src/also-read.txt"] {
            std::fs::write(root.join(name), "unchanged").unwrap();
        }
        let tracker = ChangeTracker::start(&root);
        let _ = tracker.take();
        for name in ["read.txt", "src/also-read.txt"] {
            assert_eq!(std::fs::read(root.join(name)).unwrap(), b"unchanged");
            drop(std::fs::File::open(root.join(name)).unwrap());
        }
        let _ = std::fs::read_dir(root.join("src")).unwrap().count();
        // inotify delivers events in order: once the write is seen, the reads'
        // events (if any) were handled before it.
        std::fs::write(root.join("written.txt"), "new").unwrap();
        let seen = wait_for(&tracker, &["written.txt"]);
        assert_eq!(
            seen,
            BTreeSet::from([PathBuf::from("written.txt")]),
            "only the written file is a change"
        );
    }

    /// A file written through a shared mapping gets no modify event, only the close
    /// after writing: it is a change.
    #[test]
    fn a_file_written_through_mmap_is_a_change() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        std::fs::write(root.join("mapped.bin"), [0u8; 4096]).unwrap();
        let tracker = ChangeTracker::start(&root);
        let _ = tracker.take();
        // Python's mmap: the bytes change through the mapping, never through write(2).
        let status = std::process::Command::new("python3")
            .arg("-c")
            .arg(
                "import mmap,sys\nf=open(sys.argv[1],'r+b')\nm=mmap.mmap(f.fileno(),4096)\nm[0:16]=b'7'*16\nm.close()\nf.close()",
            )
            .arg(root.join("mapped.bin"))
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(
            &std::fs::read(root.join("mapped.bin")).unwrap()[..16],
            b"7777777777777777"
        );
        wait_for(&tracker, &["mapped.bin"]);
    }

    #[test]
    fn a_failed_checkpoint_gives_its_changes_back() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let tracker = ChangeTracker::start(&root);
        let _ = tracker.take();
        std::fs::write(root.join("a.txt"), "a").unwrap();
        let seen = wait_for(&tracker, &["a.txt"]);
        tracker.give_back(ChangeHint::Paths(seen));
        match tracker.take() {
            ChangeHint::Paths(paths) => assert!(paths.contains(Path::new("a.txt"))),
            ChangeHint::Unknown => panic!("expected paths"),
        }
        tracker.invalidate();
        assert!(matches!(tracker.take(), ChangeHint::Unknown));
    }
}
