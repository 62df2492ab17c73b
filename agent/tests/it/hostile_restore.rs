//! The agent's restore (a resume or rollback: `restore_checkpoint` in the spec) against
//! hostile checkpoint stores (issue 11): the store is the session's own, so a session can
//! have written anything into it. For each case the agent must not panic or abort, must
//! finish the session with a coded error (E620–E624), and must leave the workspace
//! byte-for-byte as it was.
//!
//! A representative subset of `parhelia_checkpoint::hostile::cases` (one agent run costs
//! about a second): one case of each class — a count overflow, an index offset that
//! wraps, a decompression bomb, a size over the cap, content that does not match its
//! hash, a tar member of the wrong type, an overlong path, content missing from every
//! layer (what a planted layer that fails its hash leaves), symlink tricks in the tree and
//! in the store's own files, a FIFO in the store. The whole corpus runs against the
//! engine in `checkpoint/tests/it/hostile.rs`, and against the CLI and coordinator in
//! `tests/tests/e2e/hostile_store.rs`.

use std::collections::BTreeMap;
use std::path::Path;

use crate::support::*;
use parhelia_checkpoint::hostile::cases;
use parhelia_checkpoint::{ChangeHint, CreateOutcome, CreateRequest, Store, TreeSpec};

const SUBSET: &[&str] = &[
    "entry_count 2^62",
    "index len wraps offset+512+len",
    "512 MiB bomb from 16 KiB (bad hash)",
    "16 GiB declared, 1 MiB inflated",
    "content does not match its hash",
    "symlink member",
    "5000-byte path",
    "content missing from every layer",
    "symlink out, then a file through it",
    "manifest is a FIFO",
    "layer is a symlink to /dev/zero",
];

fn listing(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(root).unwrap().display().to_string();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
                out.insert(rel, b"<dir>".to_vec());
            } else if ft.is_symlink() {
                out.insert(
                    rel,
                    std::fs::read_link(e.path())
                        .unwrap()
                        .into_os_string()
                        .into_encoded_bytes(),
                );
            } else {
                out.insert(rel, std::fs::read(e.path()).unwrap());
            }
        }
    }
    out
}

#[tokio::test]
async fn the_agents_restore_refuses_hostile_stores_and_leaves_the_workspace_untouched() {
    let all = cases("workspace");
    let chosen: Vec<_> = all.iter().filter(|c| SUBSET.contains(&c.name)).collect();
    assert_eq!(chosen.len(), SUBSET.len(), "a subset case was renamed");
    for c in chosen {
        let fixture = Fixture::new();
        let ws = fixture.path("workspace");
        std::fs::write(ws.join("precious.txt"), "the user's work\n").unwrap();
        std::fs::create_dir_all(ws.join("src")).unwrap();
        std::fs::write(ws.join("src/lib.rs"), "fn main() {}\n").unwrap();
        // The store on the volume: one honest checkpoint of another tree, then the case's.
        let store = Store::open(&fixture.path("volume/checkpoints")).unwrap();
        let honest_src = fixture.path("honest");
        std::fs::create_dir_all(&honest_src).unwrap();
        std::fs::write(honest_src.join("a.txt"), "hello\n").unwrap();
        let request = CreateRequest {
            trees: vec![(
                TreeSpec {
                    name: "workspace".into(),
                    root: honest_src.clone(),
                    excludes: vec![],
                },
                ChangeHint::Unknown,
            )],
            parent: None,
            trigger: "manual".into(),
            message: None,
            metadata: serde_json::json!({}),
            skip_if_unchanged: false,
        };
        let CreateOutcome::Created(good) = store.create(&request).unwrap() else {
            panic!("unchanged")
        };
        let bad = (c.build)(&store, &good.id);
        let before = listing(&ws);

        let spec = fixture.write_spec(|s| {
            s["resume"] = true.into();
            s["restore_checkpoint"] = bad.to_string().into();
            s["linger_after_finish_ms"] = 0.into();
        });
        let mut child = fixture.spawn_agent(&spec);
        let status = wait_for_exit(&mut child).await;
        let mut stderr = String::new();
        use std::io::Read;
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        assert!(
            status.success(),
            "{}: the agent exited {status}: {stderr}",
            c.name
        );
        assert!(!stderr.contains("panicked"), "{}: {stderr}", c.name);
        let finished = session_finished(&fixture.journal());
        assert!(
            ["E620", "E621", "E622", "E624"].contains(&finished.error_code.as_str()),
            "{}: finished with {} {}",
            c.name,
            finished.error_code,
            finished.error_message
        );
        assert_eq!(listing(&ws), before, "{}: the workspace changed", c.name);
        fixture.assert_default_tmux_untouched();
    }
}
