//! Opening files a session can write (its transcripts, its workspace): the session is
//! hostile input, so a reader never follows a symbolic link and never blocks on a FIFO.
//! A leaf module: the transcript and spend readers both use it.

use std::path::Path;

/// Opens a file the session can write: never through a symbolic link, only a regular file.
pub(crate) fn open_regular(path: &Path) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits() | nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)
        .ok()?;
    file.metadata().ok()?.is_file().then_some(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_fifos_and_directories_are_not_opened() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.jsonl");
        std::fs::write(&file, "x").unwrap();
        assert!(open_regular(&file).is_some());
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(open_regular(&link).is_none());
        assert!(open_regular(dir.path()).is_none());
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(open_regular(&fifo).is_none());
        assert!(open_regular(&dir.path().join("missing")).is_none());
    }
}
