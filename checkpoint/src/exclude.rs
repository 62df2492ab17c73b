//! Gitignore-style excludes, relative to a tree's root (the `ignore` crate's gitignore
//! matcher: `*.log`, `target/`, `/build`, `!keep.log`, `**/node_modules`).
//!
//! Promise: a path is excluded if it or any of its parent directories matches, exactly as
//! git decides; scans never descend into an excluded directory.

use std::path::Path;

use ignore::gitignore::{Gitignore, GitignoreBuilder};

use crate::entry::bytes_path;
use crate::error::{CheckpointError, Result};

pub struct Excludes {
    matcher: Option<Gitignore>,
}

impl Excludes {
    pub fn new(root: &Path, patterns: &[String]) -> Result<Excludes> {
        if patterns.is_empty() {
            return Ok(Excludes { matcher: None });
        }
        let mut b = GitignoreBuilder::new(root);
        for p in patterns {
            b.add_line(None, p)
                .map_err(|e| CheckpointError::invalid(format!("bad exclude pattern {p:?}: {e}")))?;
        }
        let g = b
            .build()
            .map_err(|e| CheckpointError::invalid(format!("bad exclude patterns: {e}")))?;
        Ok(Excludes { matcher: Some(g) })
    }

    /// Whether this relative path itself matches (its parents are the caller's business).
    pub fn matches(&self, rel: &[u8], is_dir: bool) -> bool {
        match &self.matcher {
            None => false,
            Some(g) => g.matched(bytes_path(rel), is_dir).is_ignore(),
        }
    }

    /// Whether this path or any parent directory matches.
    pub fn matches_with_parents(&self, rel: &[u8], is_dir: bool) -> bool {
        match &self.matcher {
            None => false,
            Some(g) => g
                .matched_path_or_any_parents(bytes_path(rel), is_dir)
                .is_ignore(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.matcher.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gitignore_semantics() {
        let e = Excludes::new(
            Path::new("/r"),
            &[
                "target/".into(),
                "*.log".into(),
                "!keep.log".into(),
                "/top".into(),
            ],
        )
        .unwrap();
        assert!(e.matches(b"target", true));
        assert!(!e.matches(b"target", false));
        assert!(e.matches(b"a/b.log", false));
        assert!(!e.matches(b"keep.log", false));
        assert!(e.matches(b"top", false));
        assert!(!e.matches(b"a/top", false));
        assert!(e.matches_with_parents(b"target/x/y.rs", false));
    }
}
