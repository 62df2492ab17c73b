//! Helpers shared by the integration tests: canonical tree listings and request builders.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use parhelia_checkpoint::{ChangeHint, CreateOutcome, CreateRequest, Manifest, TreeSpec};

/// path -> "F <mode> <blake3>" | "D <mode>" | "L <target>", everything below `root`.
pub fn listing(root: &Path) -> BTreeMap<String, String> {
    listing_except(root, &[])
}

pub fn listing_except(root: &Path, skip: &[&str]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(root)
        .min_depth(1)
        .follow_links(false)
        .sort_by_file_name()
    {
        let e = e.unwrap();
        let rel = e
            .path()
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if skip
            .iter()
            .any(|s| rel == *s || rel.starts_with(&format!("{s}/")))
        {
            continue;
        }
        let md = fs::symlink_metadata(e.path()).unwrap();
        let mode = md.permissions().mode() & 0o777;
        let v = if md.file_type().is_symlink() {
            format!("L {}", fs::read_link(e.path()).unwrap().display())
        } else if md.is_dir() {
            format!("D {mode:o}")
        } else {
            format!(
                "F {mode:o} {}",
                blake3::hash(&fs::read(e.path()).unwrap()).to_hex()
            )
        };
        out.insert(rel, v);
    }
    out
}

pub fn spec(name: &str, root: &Path) -> TreeSpec {
    TreeSpec {
        name: name.into(),
        root: root.to_path_buf(),
        excludes: vec![],
    }
}

pub fn request(trees: Vec<(TreeSpec, ChangeHint)>) -> CreateRequest {
    CreateRequest {
        trees,
        parent: None,
        trigger: "manual".into(),
        message: None,
        metadata: serde_json::json!({}),
        skip_if_unchanged: false,
    }
}

pub fn unknown(name: &str, root: &Path) -> CreateRequest {
    request(vec![(spec(name, root), ChangeHint::Unknown)])
}

pub fn paths(name: &str, root: &Path, ps: &[&str]) -> CreateRequest {
    let set: BTreeSet<PathBuf> = ps.iter().map(PathBuf::from).collect();
    request(vec![(spec(name, root), ChangeHint::Paths(set))])
}

pub fn created(o: CreateOutcome) -> Manifest {
    match o {
        CreateOutcome::Created(m) => m,
        CreateOutcome::Unchanged(id) => panic!("expected a new checkpoint, got Unchanged({id})"),
    }
}

pub fn write(root: &Path, rel: &str, content: &[u8]) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, content).unwrap();
}
