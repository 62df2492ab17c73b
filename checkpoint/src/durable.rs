//! A store as files that move: which of its files are its durable format, and in
//! which order a copy must write them.
//!
//! A store's durable format is `store.json`, `layers/*` and `manifests/*`, all
//! written once and never changed (a repair writes new names). The lock, `tmp/` and
//! the derived [`crate::mindex::CACHE_FILE`] stay where they are. A copy (another
//! directory, a Modal volume, a local mirror of one) writes layers before manifests:
//! a manifest is the commit point of its checkpoint (`docs/formats/checkpoint.md`),
//! so a copy interrupted anywhere never names a layer it does not hold.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{CheckpointError, IoContext};

/// The store's marker file (its format version).
pub const MARKER: &str = "store.json";
/// The directories of write-once files, data first: the order a copy writes them.
pub const DIRS: [&str; 2] = ["layers", "manifests"];

/// Whether `rel` (a path relative to a store's root, `/`-separated) names a file of
/// the store's durable format: `store.json`, or a plain name directly in `layers/` or
/// `manifests/` (no hidden names, nothing deeper).
pub fn is_durable_file(rel: &str) -> bool {
    rel == MARKER
        || DIRS.iter().any(|dir| {
            rel.strip_prefix(dir)
                .and_then(|rest| rest.strip_prefix('/'))
                .is_some_and(|name| {
                    !name.is_empty() && !name.contains('/') && !name.starts_with('.')
                })
        })
}

/// Whether writing `rel` commits a checkpoint (a manifest): a copy writes these after
/// every other file.
pub fn is_commit_point(rel: &str) -> bool {
    rel.strip_prefix(DIRS[1])
        .is_some_and(|rest| rest.starts_with('/'))
}

/// Splits durable files into what a copy writes first (the marker and layers) and
/// what it writes last (manifests), each in name order.
pub fn in_commit_order<'a, T: AsRef<str> + 'a>(
    rels: impl IntoIterator<Item = &'a T>,
) -> Vec<&'a T> {
    let mut all: Vec<&T> = rels.into_iter().collect();
    all.sort_by(|a, b| {
        (is_commit_point(a.as_ref()), a.as_ref()).cmp(&(is_commit_point(b.as_ref()), b.as_ref()))
    });
    all
}

/// The durable files of the store at `root`: relative path → size (regular files
/// only; a `.part` left by an interrupted copy is not one).
pub fn durable_files(root: &Path) -> std::io::Result<BTreeMap<String, u64>> {
    let mut files = BTreeMap::new();
    if let Ok(meta) = std::fs::symlink_metadata(root.join(MARKER))
        && meta.is_file()
    {
        files.insert(MARKER.to_string(), meta.len());
    }
    for dir in DIRS {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for entry in entries {
            let entry = entry?;
            let rel = format!("{dir}/{}", entry.file_name().to_string_lossy());
            let meta = entry.metadata()?;
            if meta.is_file() && is_durable_file(&rel) && !rel.ends_with(".part") {
                files.insert(rel, meta.len());
            }
        }
    }
    Ok(files)
}

/// Copies the durable files of the store at `from` that `to` lacks, in commit order,
/// each written to a temporary name in `to/tmp/`, synced and renamed: `to` never
/// names a layer it does not hold, and never holds half a file under its real name.
pub fn copy_missing(from: &Path, to: &Path) -> Result<(), CheckpointError> {
    for dir in DIRS.iter().chain(&["tmp"]) {
        std::fs::create_dir_all(to.join(dir)).io("create", &to.join(dir))?;
    }
    let files = durable_files(from).io("list", from)?;
    for rel in in_commit_order(files.keys()) {
        let target = to.join(rel);
        if target.exists() {
            continue;
        }
        let tmp = to.join("tmp").join(format!(
            "import-{}-{}",
            std::process::id(),
            rel.replace('/', "_")
        ));
        std::fs::copy(from.join(rel), &tmp).io("copy", &from.join(rel))?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .io("sync", &tmp)?;
        std::fs::rename(&tmp, &target).io("rename", &target)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_durable_format_is_the_marker_layers_and_manifests() {
        for yes in ["store.json", "layers/ab.tar.zst", "manifests/cp-1.manifest"] {
            assert!(is_durable_file(yes), "{yes}");
        }
        for no in [
            "lock",
            "tmp/x",
            "layers/sub/x",
            "layers/",
            "layers/.hidden",
            "layersx/a",
            "index.cache",
            "../store.json",
        ] {
            assert!(!is_durable_file(no), "{no}");
        }
    }

    #[test]
    fn manifests_come_last() {
        let rels = [
            "manifests/cp-1.manifest".to_string(),
            "layers/b".into(),
            "store.json".into(),
            "layers/a".into(),
        ];
        let ordered: Vec<&str> = in_commit_order(&rels)
            .into_iter()
            .map(|s| s.as_str())
            .collect();
        assert_eq!(
            ordered,
            [
                "layers/a",
                "layers/b",
                "store.json",
                "manifests/cp-1.manifest"
            ]
        );
    }

    #[test]
    fn a_copy_takes_what_is_missing_and_leaves_what_is_there() {
        let from = tempfile::tempdir().unwrap();
        let to = tempfile::tempdir().unwrap();
        for (rel, text) in [
            ("store.json", "{}"),
            ("layers/l1", "data"),
            ("manifests/m1", "manifest"),
            ("lock", "x"),
            ("index.cache", "x"),
        ] {
            let path = from.path().join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        std::fs::create_dir_all(to.path().join("layers")).unwrap();
        std::fs::write(to.path().join("layers/l1"), "kept").unwrap();
        copy_missing(from.path(), to.path()).unwrap();
        let copied = durable_files(to.path()).unwrap();
        assert_eq!(
            copied.keys().map(String::as_str).collect::<Vec<_>>(),
            ["layers/l1", "manifests/m1", "store.json"]
        );
        assert_eq!(
            std::fs::read_to_string(to.path().join("layers/l1")).unwrap(),
            "kept"
        );
        assert!(!to.path().join("lock").exists());
        assert!(!to.path().join("index.cache").exists());
    }
}
