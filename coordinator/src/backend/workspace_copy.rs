//! Copying the user's workspace into a session: every file (including
//! `.git`), symlinks as symlinks (never followed), permission bits, and empty
//! directories. Sockets, FIFOs and device files are skipped. Paths listed in
//! `exclude` (the state directory, when it sits inside the workspace) are not
//! copied, so a session never contains the sessions directory itself.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// What a copy did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CopyStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub skipped: u64,
    pub bytes: u64,
}

/// Copies `src` into `dst` (created if missing; must be empty or absent).
pub fn copy_tree(src: &Path, dst: &Path, exclude: &[PathBuf]) -> Result<CopyStats> {
    let mut stats = CopyStats::default();
    fs::create_dir_all(dst).with_context(|| format!("creating {}", dst.display()))?;
    // Directory modes are applied last, so a read-only directory can still
    // be filled.
    let mut dir_modes: Vec<(PathBuf, u32)> = Vec::new();
    let root_mode = fs::metadata(src)
        .with_context(|| format!("reading {}", src.display()))?
        .permissions()
        .mode();
    dir_modes.push((dst.to_path_buf(), root_mode));

    let mut walker = walkdir::WalkDir::new(src)
        .follow_links(false)
        .min_depth(1)
        .into_iter();
    while let Some(entry) = walker.next() {
        let entry = entry.with_context(|| format!("walking {}", src.display()))?;
        let path = entry.path();
        if exclude.iter().any(|e| e == path) {
            if entry.file_type().is_dir() {
                walker.skip_current_dir();
            }
            stats.skipped += 1;
            continue;
        }
        let relative = path
            .strip_prefix(src)
            .context("walked outside the workspace")?;
        let target = dst.join(relative);
        let file_type = entry.file_type();
        if file_type.is_symlink() {
            let link =
                fs::read_link(path).with_context(|| format!("reading link {}", path.display()))?;
            std::os::unix::fs::symlink(&link, &target)
                .with_context(|| format!("creating link {}", target.display()))?;
            stats.symlinks += 1;
        } else if file_type.is_dir() {
            fs::create_dir(&target).or_else(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => Ok(()),
                _ => Err(e),
            })?;
            let mode = entry.metadata()?.permissions().mode();
            dir_modes.push((target, mode));
            stats.dirs += 1;
        } else if file_type.is_file() {
            // `fs::copy` carries the permission bits over.
            stats.bytes += fs::copy(path, &target)
                .with_context(|| format!("copying {} to {}", path.display(), target.display()))?;
            stats.files += 1;
        } else {
            tracing::debug!(path = %path.display(), "skipping a special file");
            stats.skipped += 1;
        }
    }
    for (dir, mode) in dir_modes.into_iter().rev() {
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {}", dir.display()))?;
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_git_symlinks_modes_and_empty_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir_all(src.join(".git/refs/heads")).unwrap();
        fs::write(src.join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
        fs::create_dir_all(src.join("empty/nested")).unwrap();
        fs::write(src.join("run.sh"), "#!/bin/sh\necho hi\n").unwrap();
        fs::set_permissions(src.join("run.sh"), fs::Permissions::from_mode(0o750)).unwrap();
        std::os::unix::fs::symlink("run.sh", src.join("link")).unwrap();
        std::os::unix::fs::symlink("/nonexistent/target", src.join("dangling")).unwrap();
        fs::create_dir(src.join("private")).unwrap();
        fs::write(src.join("private/x"), "x").unwrap();
        fs::set_permissions(src.join("private"), fs::Permissions::from_mode(0o500)).unwrap();
        fs::create_dir_all(src.join(".parhelia/sessions")).unwrap();
        fs::write(src.join(".parhelia/parhelia.db"), "db").unwrap();

        let dst = tmp.path().join("dst");
        let stats = copy_tree(&src, &dst, &[src.join(".parhelia")]).unwrap();

        assert_eq!(
            fs::read_to_string(dst.join(".git/HEAD")).unwrap(),
            "ref: refs/heads/main\n"
        );
        assert!(dst.join(".git/refs/heads").is_dir());
        assert!(dst.join("empty/nested").is_dir());
        assert_eq!(
            fs::metadata(dst.join("run.sh"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o750
        );
        assert_eq!(
            fs::read_link(dst.join("link")).unwrap(),
            Path::new("run.sh")
        );
        assert_eq!(
            fs::read_link(dst.join("dangling")).unwrap(),
            Path::new("/nonexistent/target")
        );
        assert_eq!(
            fs::metadata(dst.join("private"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o500
        );
        assert_eq!(fs::read_to_string(dst.join("private/x")).unwrap(), "x");
        assert!(
            !dst.join(".parhelia").exists(),
            "the state directory is never copied"
        );
        assert_eq!(stats.symlinks, 2);
        assert_eq!(stats.skipped, 1);

        // Let the temp dir clean up.
        fs::set_permissions(src.join("private"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::set_permissions(dst.join("private"), fs::Permissions::from_mode(0o700)).unwrap();
    }
}
