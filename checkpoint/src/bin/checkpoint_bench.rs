//! `checkpoint-bench`: the checkpoint engine's benchmark (docs/benchmarks/checkpoint.md).
//!
//! ```text
//! checkpoint-bench run WORKSPACE [--tmp DIR] [--tools "ours tar restic borg"] [--runs N]
//!                               [--markdown FILE] [--keep]
//! checkpoint-bench gen DIR [--files 100000] [--bytes 1000000000] [--seed 1]
//! checkpoint-bench create STORE TREE_ROOT [--hints FILE]     (one checkpoint, prints JSON)
//! checkpoint-bench restore STORE latest|ID TARGET
//! checkpoint-bench growth [--tmp DIR] [--tools "ours restic borg"] [--turns 200]
//!                         [--edit-checkpoints 8] [--edit-mib 256]
//! checkpoint-bench realpath STORE EVENTS --scenario NAME [--tmp DIR] [--runs 5]
//! ```
//!
//! `realpath` (issue 19) reads what a real session's agent recorded — EVENTS holds its
//! `checkpoint_created` journal events, one JSON object a line — and its store, and for
//! every `turn_end` and `pre_tool` checkpoint puts beside the agent's own wall time
//! (`duration_us`, and its `git_ms`, `fsync_ms`, `hook_wait_ms`) the time of
//! `tar | zstd -T0 -3` (+ `sync`) of exactly the files that changed since its parent
//! (both trees: workspace and conversation; contents as the checkpoint holds them, read
//! back from the store; removed paths as a whiteout list), median of `--runs`. Prints
//! one JSON line for the scenario on stdout, one line per checkpoint on stderr.
//!
//! `growth` (issue 19) measures the cost of files that grow or are edited in place, one
//! JSON line per scenario on stdout: `append` — a Claude-Code-like JSONL transcript of
//! ~1 MB growing ~50 KB per turn, one checkpoint of its directory per turn (the engine in
//! process with the watcher's one-path hint, restic `backup`, borg `create -C zstd,3`), and
//! `inplace` — a file of `--edit-mib` MiB (incompressible) with 1 MiB rewritten at a random
//! offset before each checkpoint. Store sizes are the bytes of all files in the store or
//! repository.
//!
//! `--runs N` (default 5): the short incremental operations of the engine and tar are
//! repeated N times from the same state and the median is reported. `--big-runs N`
//! (default 3): the full checkpoint and the restore of the engine and tar alternate N
//! times and the medians are reported. restic and borg run once per operation.
//!
//! `run` copies WORKSPACE into a temp dir and measures, on that copy, in one run: a full
//! checkpoint against `tar | zstd -T0 -3`, restic and borg; an incremental checkpoint after
//! 10 modified + 3 added + 3 deleted files (with the watcher's path hint and with a full
//! scan) against tar+zstd of just the changed files, restic and borg; and a restore
//! against extracting the equivalent tar.zst, restic and borg. The engine runs as a
//! subprocess (`create`/`restore` above), like the other tools, so process start, store
//! open and index loading are inside its times. Every measured command is followed by an
//! untimed `sync`; before each restore the clean page cache is dropped and the inputs are
//! re-read (as in shared/bench/checkpoint-anchors.sh), so restores start from the same state.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use parhelia_checkpoint::{
    ChangeHint, CheckpointId, CreateOutcome, CreateRequest, Store, TreeSpec,
};

const N_MOD: usize = 10;
const N_ADD: usize = 3;
const N_DEL: usize = 3;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let r = match args.get(1).map(String::as_str) {
        Some("gen") if args.len() >= 3 => generate(&args[2..]),
        Some("create") if args.len() >= 4 => op_create(&args[2..]),
        Some("restore") if args.len() >= 5 => op_restore(&args[2..]),
        Some("run") if args.len() >= 3 => run(&args[2..]),
        Some("growth") => growth(&args[2..]),
        Some("realpath") if args.len() >= 4 => realpath(&args[2..]),
        _ => Err("usage: checkpoint-bench run WORKSPACE [--tmp DIR] [--tools LIST] [--runs N] [--big-runs N] [--markdown FILE] [--keep] | gen DIR [--files N] [--bytes B] [--seed S] | create STORE ROOT [--hints FILE] | restore STORE latest|ID TARGET".into()),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("checkpoint-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

type R<T = ()> = Result<T, String>;

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn open_store(args: &[String]) -> R<Store> {
    let mut store = Store::open(Path::new(&args[0])).map_err(|e| e.to_string())?;
    if let Some(n) = flag(args, "--threads") {
        store = store.with_threads(n.parse().map_err(|e| format!("--threads: {e}"))?);
    }
    Ok(store)
}

fn op_create(args: &[String]) -> R {
    let store = open_store(args)?;
    let hint = match flag(args, "--hints") {
        Some(f) => ChangeHint::Paths(
            fs::read_to_string(f)
                .map_err(|e| e.to_string())?
                .lines()
                .filter(|l| !l.is_empty())
                .map(PathBuf::from)
                .collect(),
        ),
        None => ChangeHint::Unknown,
    };
    let req = CreateRequest {
        trees: vec![(
            TreeSpec {
                name: "workspace".into(),
                root: PathBuf::from(&args[1]),
                excludes: vec![],
            },
            hint,
        )],
        parent: None,
        trigger: "manual".into(),
        message: None,
        metadata: serde_json::json!({}),
        skip_if_unchanged: false,
    };
    match store
        .create(&req)
        .map_err(|e| format!("{} {e}", e.code()))?
    {
        CreateOutcome::Created(m) => println!(
            "{}",
            serde_json::json!({"id": m.id, "stats": m.stats, "files": m.file_count()})
        ),
        CreateOutcome::Unchanged(id) => println!("{}", serde_json::json!({"unchanged": id})),
    }
    Ok(())
}

fn op_restore(args: &[String]) -> R {
    let store = open_store(args)?;
    let id = if args[1] == "latest" {
        store
            .latest()
            .map_err(|e| e.to_string())?
            .ok_or("empty store")?
            .id
    } else {
        CheckpointId(args[1].clone())
    };
    let stats = store
        .restore_tree(&id, "workspace", Path::new(&args[2]))
        .map_err(|e| format!("{} {e}", e.code()))?;
    println!("{stats:?}");
    Ok(())
}

// ---------------------------------------------------------------- generator

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

const WORDS: &[&str] = &[
    "fn",
    "let",
    "mut",
    "self",
    "impl",
    "struct",
    "enum",
    "match",
    "return",
    "if",
    "else",
    "for",
    "in",
    "while",
    "pub",
    "use",
    "crate",
    "mod",
    "const",
    "static",
    "Result",
    "Option",
    "Some",
    "None",
    "Ok",
    "Err",
    "String",
    "Vec",
    "u64",
    "usize",
    "value",
    "index",
    "buffer",
    "config",
    "request",
    "response",
    "handler",
    "session",
    "checkpoint",
    "store",
    "manifest",
    "layer",
    "error",
    "context",
    "path",
    "file",
    "read",
    "write",
    "open",
    "close",
    "len",
    "iter",
    "map",
    "filter",
    "collect",
    "clone",
    "into",
    "from",
    "as_ref",
    "unwrap",
    "expect",
    "debug",
    "info",
    "trace",
    "=",
    "==",
    "+",
    "-",
    "*",
    "->",
    "=>",
    "::",
    ".",
    ",",
    ";",
    "(",
    ")",
    "{",
    "}",
    "[",
    "]",
    "&",
    "0",
    "1",
    "42",
    "\"text\"",
];

fn text(rng: &mut Rng, size: usize, out: &mut Vec<u8>) {
    out.clear();
    let mut col = 0;
    let mut indent = 0usize;
    while out.len() < size {
        if col == 0 {
            indent = (indent + rng.below(3) as usize).saturating_sub(1).min(6);
            out.resize(out.len() + indent * 4, b' ');
        }
        let w = WORDS[rng.below(WORDS.len() as u64) as usize];
        out.extend_from_slice(w.as_bytes());
        if rng.below(9) == 0 {
            // identifiers with numbers keep the text from being trivially compressible
            out.extend_from_slice(format!("_{}", rng.below(100_000)).as_bytes());
        }
        col += w.len() + 1;
        if col > 60 + rng.below(30) as usize {
            out.push(b'\n');
            col = 0;
        } else {
            out.push(b' ');
        }
    }
    out.truncate(size);
}

/// A tree of `files` files totalling about `bytes`: mostly small source-like text, some
/// medium text, some mixed text/binary, a few large incompressible files, and about 3%
/// exact duplicates (vendored copies), spread over about `files / 20` directories.
fn generate(args: &[String]) -> R {
    let dir = PathBuf::from(&args[0]);
    let files: usize = flag(args, "--files")
        .unwrap_or("100000")
        .parse()
        .map_err(|e| format!("--files: {e}"))?;
    let bytes: u64 = flag(args, "--bytes")
        .unwrap_or("1000000000")
        .parse()
        .map_err(|e| format!("--bytes: {e}"))?;
    let mut rng = Rng(flag(args, "--seed")
        .unwrap_or("1")
        .parse::<u64>()
        .map_err(|e| format!("--seed: {e}"))?
        | 1);
    if dir.exists() {
        return Err(format!("{} exists", dir.display()));
    }
    // Directories: a random tree, up to 5 levels.
    let ndirs = (files / 20).max(1);
    let mut dirs = vec![PathBuf::new()];
    for i in 1..ndirs {
        let parent = dirs[rng.below(dirs.len().min(1 + i / 2) as u64) as usize].clone();
        let p = if parent.components().count() >= 5 {
            dirs[rng.below(8.min(dirs.len() as u64)) as usize].clone()
        } else {
            parent
        };
        dirs.push(p.join(format!("{}_{i}", WORDS[rng.below(60) as usize])));
    }
    for d in &dirs {
        fs::create_dir_all(dir.join(d)).map_err(|e| e.to_string())?;
    }
    // Sizes by class, then scaled to the requested total.
    let mut plan: Vec<(u8, u64)> = (0..files)
        .map(|_| {
            let c = rng.below(1000);
            if c < 700 {
                (0, 100 + rng.below(6_000))
            } else if c < 950 {
                (0, 6_000 + rng.below(18_000))
            } else if c < 995 {
                (1, 24_000 + rng.below(100_000))
            } else {
                (2, 128_000 + rng.below(900_000))
            }
        })
        .collect();
    let total: u64 = plan.iter().map(|p| p.1).sum();
    let scale = bytes as f64 / total as f64;
    for p in &mut plan {
        p.1 = ((p.1 as f64 * scale) as u64).max(1);
    }
    let mut buf = Vec::new();
    let mut written: Vec<PathBuf> = Vec::new();
    for (i, (class, size)) in plan.into_iter().enumerate() {
        let d = &dirs[rng.below(dirs.len() as u64) as usize];
        let ext = ["rs", "md", "json", "txt", "toml", "bin", "png"][(i + class as usize * 5) % 7];
        let path = dir
            .join(d)
            .join(format!("{}_{i}.{ext}", WORDS[rng.below(60) as usize]));
        if !written.is_empty() && rng.below(100) < 3 {
            let src = &written[rng.below(written.len() as u64) as usize];
            fs::copy(src, &path).map_err(|e| e.to_string())?;
            continue;
        }
        let size = size as usize;
        match class {
            0 => text(&mut rng, size, &mut buf),
            1 => {
                text(&mut rng, size / 2, &mut buf);
                let mut rnd = vec![0u8; size - buf.len()];
                rng.fill(&mut rnd);
                buf.extend_from_slice(&rnd);
            }
            _ => {
                buf.resize(size, 0);
                rng.fill(&mut buf);
            }
        }
        fs::write(&path, &buf).map_err(|e| e.to_string())?;
        if written.len() < 10_000 {
            written.push(path);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- benchmark

struct Row {
    tool: &'static str,
    op: String,
    secs: f64,
    cpu: f64,
    bytes: Option<u64>,
}

struct Bench {
    t: PathBuf,
    rows: Vec<Row>,
    can_drop: bool,
    runs: usize,
    big_runs: usize,
}

fn sh(cmd: &str) -> R {
    let st = Command::new("bash")
        .arg("-c")
        .arg(cmd)
        .status()
        .map_err(|e| e.to_string())?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("command failed ({st}): {cmd}"))
    }
}

fn du(p: &Path) -> u64 {
    walkdir::WalkDir::new(p)
        .into_iter()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

impl Bench {
    /// Times `bash -c cmd` (wall clock; user+sys from GNU time), then syncs untimed.
    fn measure(
        &mut self,
        tool: &'static str,
        op: &str,
        cmd: &str,
        bytes: impl FnOnce(&Bench) -> Option<u64>,
    ) -> R<f64> {
        let tf = self.t.join(".time");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.t.join("log"))
            .map_err(|e| e.to_string())?;
        let start = Instant::now();
        let st = Command::new("/usr/bin/time")
            .args(["-f", "%U %S", "-o"])
            .arg(&tf)
            .args(["bash", "-c", cmd])
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .status()
            .map_err(|e| e.to_string())?;
        let secs = start.elapsed().as_secs_f64();
        if !st.success() {
            let _ = sh(&format!("tail -n 5 {}/log >&2", self.t.display()));
            return Err(format!("{tool} / {op} failed: {cmd}"));
        }
        let cpu = fs::read_to_string(&tf)
            .ok()
            .and_then(|s| {
                s.lines().last().map(|l| {
                    l.split_whitespace()
                        .filter_map(|x| x.parse::<f64>().ok())
                        .sum()
                })
            })
            .unwrap_or(0.0);
        let b = bytes(self);
        eprintln!(
            "  {tool:<8} {op:<44} {secs:>9.3}s  {}",
            b.map(|b| b.to_string()).unwrap_or_default()
        );
        self.rows.push(Row {
            tool,
            op: op.to_string(),
            secs,
            cpu,
            bytes: b,
        });
        sh("sync")?;
        Ok(secs)
    }

    /// Drops the clean page cache and re-reads `dirs` (see the module docs).
    fn settle(&self, dirs: &[&Path]) -> R {
        if self.can_drop {
            sh("sync; echo 1 > /proc/sys/vm/drop_caches")?;
            for d in dirs {
                if d.is_dir() {
                    sh(&format!(
                        "tar -C '{}' -cf - . 2>/dev/null | cat > /dev/null",
                        d.display()
                    ))?;
                } else {
                    sh(&format!("cat '{}' > /dev/null", d.display()))?;
                }
            }
        }
        Ok(())
    }

    /// Replaces all rows of (tool, op) by their median (no-op for fewer than two).
    fn collapse(&mut self, tool: &'static str, op: &str) {
        let mut rows: Vec<Row> = Vec::new();
        let mut i = 0;
        while i < self.rows.len() {
            if self.rows[i].tool == tool && self.rows[i].op == op {
                rows.push(self.rows.remove(i));
            } else {
                i += 1;
            }
        }
        if rows.is_empty() {
            return;
        }
        let n = rows.len();
        rows.sort_by(|a, b| a.secs.total_cmp(&b.secs));
        let mut median = rows.swap_remove(n / 2);
        if n > 1 {
            median.op = format!("{op} (median of {n})");
        }
        self.rows.push(median);
    }

    /// Measures a short operation `runs` times (`prepare` before each, untimed) and keeps
    /// the median as one row.
    fn measure_median(
        &mut self,
        tool: &'static str,
        op: &str,
        prepare: &dyn Fn() -> R,
        cmd: &str,
        bytes: &dyn Fn(&Bench) -> Option<u64>,
    ) -> R {
        let mut rows = Vec::new();
        for _ in 0..self.runs {
            prepare()?;
            sh("sync")?;
            self.measure(tool, op, cmd, |b| bytes(b))?;
            rows.push(self.rows.pop().expect("just measured"));
        }
        rows.sort_by(|a, b| a.secs.total_cmp(&b.secs));
        let n = rows.len();
        let mut median = rows.swap_remove(n / 2);
        median.op = format!("{op} (median of {n})");
        self.rows.push(median);
        Ok(())
    }

    fn get(&self, tool: &str, op: &str) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| r.tool == tool && (r.op == op || r.op.starts_with(&format!("{op} (median"))))
    }
}

fn listing(root: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(root).min_depth(1).sort_by_file_name() {
        let Ok(e) = e else { continue };
        let rel = e
            .path()
            .strip_prefix(root)
            .unwrap_or(e.path())
            .to_path_buf();
        let Ok(md) = fs::symlink_metadata(e.path()) else {
            continue;
        };
        let v = if md.file_type().is_symlink() {
            format!("L {:?}", fs::read_link(e.path()).ok())
        } else if md.is_dir() {
            format!("D {:o}", md.mode() & 0o777)
        } else {
            format!(
                "F {:o} {}",
                md.mode() & 0o777,
                blake3::hash(&fs::read(e.path()).unwrap_or_default()).to_hex()
            )
        };
        out.push((rel, v));
    }
    out
}

struct ChangeSet {
    modified: Vec<String>,
    added: Vec<String>,
    deleted: Vec<String>,
}

/// The anchors script's change set: files outside .git under 1 MiB, spread evenly.
fn pick_changes(ws: &Path) -> R<ChangeSet> {
    let mut all = Vec::new();
    for e in walkdir::WalkDir::new(ws)
        .min_depth(1)
        .into_iter()
        .filter_entry(|e| e.file_name() != ".git" || e.depth() != 1)
    {
        let e = e.map_err(|e| e.to_string())?;
        if e.file_type().is_file() && e.metadata().map_err(|e| e.to_string())?.len() < 1 << 20 {
            all.push(
                e.path()
                    .strip_prefix(ws)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            );
        }
    }
    all.sort();
    let need = N_MOD + N_DEL;
    if all.len() <= need {
        return Err("workspace has too few files".into());
    }
    let step = all.len() / (need + 1);
    let pick: Vec<String> = (1..=need).map(|k| all[k * step - 1].clone()).collect();
    let modified = pick[..N_MOD].to_vec();
    let deleted = pick[N_MOD..].to_vec();
    let added = (0..N_ADD)
        .map(|i| {
            let d = Path::new(&modified[i % N_MOD])
                .parent()
                .map(|p| p.to_path_buf())
                .unwrap_or_default();
            d.join(format!("anchors_new_{}.dat", i + 1))
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    Ok(ChangeSet {
        modified,
        added,
        deleted,
    })
}

/// Edits like the anchors script: 64 bytes overwritten mid-file plus an appended line;
/// deletions; additions (1 MiB random, then 8 KiB base64 text).
fn mutate(ws: &Path, c: &ChangeSet) -> R {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for (i, f) in c.modified.iter().enumerate() {
        let p = ws.join(f);
        let mut data = fs::read(&p).map_err(|e| e.to_string())?;
        let mid = data.len() / 2;
        let stamp = format!("anchors-edit-{:04}-{:032}", i + 1, rng.next());
        let end = (mid + stamp.len()).min(data.len());
        data.splice(mid..end, stamp.bytes());
        data.extend_from_slice(format!("\n// anchors: edited {}\n", i + 1).as_bytes());
        fs::write(&p, data).map_err(|e| e.to_string())?;
    }
    for f in &c.deleted {
        fs::remove_file(ws.join(f)).map_err(|e| e.to_string())?;
    }
    for (i, f) in c.added.iter().enumerate() {
        let mut data = vec![0u8; if i == 0 { 1 << 20 } else { 6144 }];
        rng.fill(&mut data);
        if i > 0 {
            const B64: &[u8; 64] =
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
            data = data.iter().map(|b| B64[(*b & 63) as usize]).collect();
            data = data
                .chunks(76)
                .flat_map(|l| l.iter().copied().chain([b'\n']))
                .collect();
        }
        fs::write(ws.join(f), data).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn run(args: &[String]) -> R {
    let src = fs::canonicalize(&args[0]).map_err(|e| format!("{}: {e}", args[0]))?;
    let tools: BTreeSet<String> = flag(args, "--tools")
        .unwrap_or("ours tar restic borg")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let tmp_parent = flag(args, "--tmp")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let t = tmp_parent.join(format!("ckbench.{}", std::process::id()));
    fs::create_dir_all(&t).map_err(|e| e.to_string())?;
    let can_drop = fs::OpenOptions::new()
        .write(true)
        .open("/proc/sys/vm/drop_caches")
        .is_ok();
    let runs: usize = flag(args, "--runs")
        .unwrap_or("5")
        .parse()
        .map_err(|e| format!("--runs: {e}"))?;
    let big_runs: usize = flag(args, "--big-runs")
        .unwrap_or("3")
        .parse()
        .map_err(|e| format!("--big-runs: {e}"))?;
    let mut b = Bench {
        t: t.clone(),
        rows: Vec::new(),
        can_drop,
        runs: runs.max(1),
        big_runs: big_runs.max(1),
    };
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let exe = exe.display();
    let ws = t.join("ws");
    let q = |p: &Path| format!("'{}'", p.display());

    eprintln!(
        "checkpoint-bench: copying {} -> {}",
        src.display(),
        ws.display()
    );
    sh(&format!("cp -a {} {} && sync", q(&src), q(&ws)))?;
    if ws.join(".git").is_dir() {
        let _ = sh(&format!(
            "git -C {} status --porcelain > /dev/null 2>&1",
            q(&ws)
        ));
    }
    let (mut nfiles, mut ndirs, mut nbytes) = (0u64, 0u64, 0u64);
    for e in walkdir::WalkDir::new(&ws)
        .min_depth(1)
        .into_iter()
        .flatten()
    {
        if e.file_type().is_dir() {
            ndirs += 1;
        } else if e.file_type().is_file() {
            nfiles += 1;
            nbytes += e.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    let changes = pick_changes(&ws)?;
    let out = |cmd: &str| -> String {
        Command::new("bash")
            .args(["-c", cmd])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let header = format!(
        "workspace: {} — {nfiles} files, {ndirs} dirs, {nbytes} bytes\n\nmachine: {} CPUs ({}), {} GiB RAM, {} filesystem; load average at start: {}\n\nversions: {} / {} / {}; caches dropped before restores: {}",
        src.display(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        out("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs"),
        out("awk '/MemTotal/{printf \"%.1f\", $2/1048576}' /proc/meminfo"),
        out(&format!("df -PT {} | awk 'NR==2{{print $2}}'", q(&t))),
        out("cut -d' ' -f1-3 /proc/loadavg"),
        out("zstd -V | head -1 | sed 's/,.*//'"),
        out("restic version 2>/dev/null | cut -d' ' -f1-2"),
        out("borg --version 2>/dev/null"),
        if can_drop { "yes" } else { "no" },
    );
    eprintln!("{header}");
    let (store, store_scan) = (t.join("store"), t.join("store-scan"));
    let (restic_repo, borg_repo) = (t.join("restic"), t.join("borg"));
    let env = format!(
        "export RESTIC_PASSWORD=bench RESTIC_CACHE_DIR={} BORG_BASE_DIR={} BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes BORG_PASSPHRASE=;",
        q(&t.join("restic-cache")),
        q(&t.join("borg-base"))
    );

    // Full: the engine and tar alternate `big_runs` times; medians are reported.
    for _ in 0..b.big_runs {
        if tools.contains("ours") {
            sh(&format!("rm -rf {} && sync", q(&store)))?;
            b.measure(
                "ours",
                "full checkpoint",
                &format!("{exe} create {} {}", q(&store), q(&ws)),
                |_| Some(du(&store)),
            )?;
        }
        if tools.contains("tar") {
            sh(&format!("rm -f {}/base.tar.zst && sync", q(&t)))?;
            b.measure(
                "tar",
                "full (tar | zstd -T0 -3)",
                &format!("tar -C {} -cf - . | zstd -q -T0 -3 -o {t}/base.tar.zst && sync {t}/base.tar.zst", q(&ws), t = q(&t)),
                |b| fs::metadata(b.t.join("base.tar.zst")).ok().map(|m| m.len()),
            )?;
        }
    }
    b.collapse("ours", "full checkpoint");
    b.collapse("tar", "full (tar | zstd -T0 -3)");
    if tools.contains("ours") {
        sh(&format!("cp -a {} {}", q(&store), q(&store_scan)))?;
    }
    if tools.contains("restic") {
        sh(&format!("{env} restic -q -r {} init", q(&restic_repo)))?;
        b.measure(
            "restic",
            "full (backup)",
            &format!(
                "{env} cd {} && restic -q -r {} backup .",
                q(&ws),
                q(&restic_repo)
            ),
            |_| Some(du(&restic_repo)),
        )?;
    }
    if tools.contains("borg") {
        sh(&format!("{env} borg init -e none {}", q(&borg_repo)))?;
        b.measure(
            "borg",
            "full (create -C zstd,3)",
            &format!(
                "{env} cd {} && borg create -C zstd,3 {}::s0 .",
                q(&ws),
                q(&borg_repo)
            ),
            |_| Some(du(&borg_repo)),
        )?;
    }

    // Incremental.
    mutate(&ws, &changes)?;
    let hints = t.join("hints.lst");
    let changed: Vec<&String> = changes.modified.iter().chain(&changes.added).collect();
    fs::write(
        &hints,
        changed
            .iter()
            .chain(changes.deleted.iter().collect::<Vec<_>>().iter())
            .map(|s| format!("{s}\n"))
            .collect::<String>(),
    )
    .map_err(|e| e.to_string())?;
    fs::write(
        t.join("changed.lst"),
        changed.iter().map(|s| format!("{s}\n")).collect::<String>(),
    )
    .map_err(|e| e.to_string())?;
    fs::write(
        t.join(".anchors_whiteouts"),
        changes
            .deleted
            .iter()
            .map(|s| format!("{s}\n"))
            .collect::<String>(),
    )
    .map_err(|e| e.to_string())?;
    // Stores are write-once files, so a hard-linked copy is an exact, cheap snapshot: each
    // repetition starts from the same store state.
    sh("sync")?;
    if tools.contains("ours") {
        let (base, scan_base) = (t.join("store-base"), t.join("store-scan-base"));
        sh(&format!(
            "mv {} {} && mv {} {}",
            q(&store),
            q(&base),
            q(&store_scan),
            q(&scan_base)
        ))?;
        let s0 = du(&base);
        let snap = |from: &Path, to: &Path| {
            sh(&format!(
                "rm -rf {t} && cp -al {f} {t}",
                f = q(from),
                t = q(to)
            ))
        };
        b.measure_median(
            "ours",
            "incr checkpoint (watcher Paths hint)",
            &|| snap(&base, &store),
            &format!(
                "{exe} create {} {} --hints {}",
                q(&store),
                q(&ws),
                q(&hints)
            ),
            &|b| Some(du(&b.t.join("store")) - s0),
        )?;
        b.measure_median(
            "ours",
            "incr checkpoint (Unknown: full scan)",
            &|| snap(&scan_base, &store_scan),
            &format!("{exe} create {} {}", q(&store_scan), q(&ws)),
            &|b| Some(du(&b.t.join("store-scan")) - s0),
        )?;
        // What the scan path cannot beat by much: visiting every entry and taking its stat
        // (what the stat fast path compares), one process, nothing stored.
        b.measure_median(
            "find",
            "stat walk (find -printf size, mtime, ctime, inode)",
            &|| Ok(()),
            &format!("find {} -printf '%s %T@ %C@ %i\\n' > /dev/null", q(&ws)),
            &|_| None,
        )?;
    }
    if tools.contains("tar") {
        b.measure_median(
            "tar",
            "incr (known change list)",
            &|| Ok(()),
            &format!("rm -f {t}/delta.tar.zst; tar -cf - -C {} --no-recursion -T {t}/changed.lst -C {t} .anchors_whiteouts | zstd -q -T0 -3 -o {t}/delta.tar.zst && sync {t}/delta.tar.zst", q(&ws), t = q(&t)),
            &|b| fs::metadata(b.t.join("delta.tar.zst")).ok().map(|m| m.len()),
        )?;
    }
    if tools.contains("restic") {
        let s0 = du(&restic_repo);
        b.measure(
            "restic",
            "incr (backup)",
            &format!(
                "{env} cd {} && restic -q -r {} backup .",
                q(&ws),
                q(&restic_repo)
            ),
            |_| Some(du(&restic_repo) - s0),
        )?;
    }
    if tools.contains("borg") {
        let s0 = du(&borg_repo);
        b.measure(
            "borg",
            "incr (create)",
            &format!(
                "{env} cd {} && borg create -C zstd,3 {}::s1 .",
                q(&ws),
                q(&borg_repo)
            ),
            |_| Some(du(&borg_repo) - s0),
        )?;
    }

    // Restore: the engine and extracting the equivalent tar.zst alternate `big_runs`
    // times, each from dropped caches with its inputs re-read; medians are reported.
    let expected = listing(&ws);
    let mut verified = Vec::new();
    if tools.contains("tar") {
        sh(&format!(
            "tar -C {} -cf - . | zstd -q -T0 -3 -o {}/final.tar.zst",
            q(&ws),
            q(&t)
        ))?;
    }
    for run in 0..b.big_runs {
        let last = run + 1 == b.big_runs;
        // Each run restores into its own directory, and nothing is deleted until the end:
        // ext4 skips recently freed inodes, which makes creating files right after a large
        // `rm -rf` several times slower and would penalise whichever runs next.
        if tools.contains("ours") {
            let out = t.join(format!("rest-ours-{run}"));
            b.settle(&[&store])?;
            b.measure(
                "ours",
                "restore (latest, empty target)",
                &format!("{exe} restore {} latest {}", q(&store), q(&out)),
                |_| Some(du(&out)),
            )?;
            if last {
                verified.push(format!(
                    "ours={}",
                    if listing(&out) == expected {
                        "ok"
                    } else {
                        "MISMATCH"
                    }
                ));
            }
        }
        if tools.contains("tar") {
            let out = t.join(format!("rest-tar-{run}"));
            b.settle(&[&t.join("final.tar.zst")])?;
            b.measure(
                "tar",
                "extract equivalent tar.zst",
                &format!(
                    "mkdir -p {o} && zstd -q -dc {}/final.tar.zst | tar -C {o} -xf -",
                    q(&t),
                    o = q(&out)
                ),
                |_| Some(du(&out)),
            )?;
            if last {
                verified.push(format!(
                    "tar={}",
                    if listing(&out) == expected {
                        "ok"
                    } else {
                        "MISMATCH"
                    }
                ));
            }
        }
    }
    b.collapse("ours", "restore (latest, empty target)");
    b.collapse("tar", "extract equivalent tar.zst");
    if tools.contains("tar") {
        let out = t.join("rest-tar");
        b.settle(&[&t.join("base.tar.zst"), &t.join("delta.tar.zst")])?;
        b.measure(
            "tar",
            "extract base + delta + whiteouts",
            &format!(
                "mkdir -p {o} && zstd -q -dc {t}/base.tar.zst | tar -C {o} -xf - && zstd -q -dc {t}/delta.tar.zst | tar -C {o} -xf - && cd {o} && xargs -d '\\n' rm -f < .anchors_whiteouts && rm -f .anchors_whiteouts",
                t = q(&t),
                o = q(&out)
            ),
            |_| Some(du(&out)),
        )?;
    }
    if tools.contains("restic") {
        let out = t.join("rest-restic");
        b.settle(&[&restic_repo, &t.join("restic-cache")])?;
        b.measure(
            "restic",
            "restore latest",
            &format!(
                "{env} restic -q -r {} restore latest --target {}",
                q(&restic_repo),
                q(&out)
            ),
            |_| Some(du(&out)),
        )?;
    }
    if tools.contains("borg") {
        let out = t.join("rest-borg");
        b.settle(&[&borg_repo])?;
        b.measure(
            "borg",
            "extract latest",
            &format!(
                "{env} mkdir -p {o} && cd {o} && borg extract {}::s1",
                q(&borg_repo),
                o = q(&out)
            ),
            |_| Some(du(&out)),
        )?;
    }

    // Report.
    let mut md = String::new();
    md.push_str(&format!(
        "{header}\n\n| tool | operation | wall s | cpu s | bytes |\n|---|---|---:|---:|---:|\n"
    ));
    for r in &b.rows {
        let op = r.op.replace('|', "\\|");
        md.push_str(&format!(
            "| {} | {op} | {:.3} | {:.2} | {} |\n",
            r.tool,
            r.secs,
            r.cpu,
            r.bytes.map(|b| b.to_string()).unwrap_or_default()
        ));
    }
    md.push_str(&format!(
        "\nload average at end: {}; restores verified against the edited workspace: {}\n\n",
        out("cut -d' ' -f1-3 /proc/loadavg"),
        verified.join(" ")
    ));
    let ratio = |a: Option<&Row>, c: Option<&Row>| a.zip(c).map(|(a, c)| a.secs / c.secs);
    let size_ratio = |a: Option<&Row>, c: Option<&Row>| {
        a.zip(c)
            .and_then(|(a, c)| Some(a.bytes? as f64 / c.bytes? as f64))
    };
    let mut targets = Vec::new();
    let mut target = |name: &str, value: Option<f64>, ok: fn(f64) -> bool, fmt: &str| {
        if let Some(v) = value {
            targets.push(format!(
                "| {} | {} | {} |",
                name.replace('|', "\\|"),
                fmt.replace("{}", &format!("{v:.2}")),
                if ok(v) { "met" } else { "**missed**" }
            ));
        }
    };
    let inc = b.get("ours", "incr checkpoint (watcher Paths hint)");
    target(
        "incremental vs tar+zstd of the changed files (≤ 2x)",
        ratio(inc, b.get("tar", "incr (known change list)")),
        |v| v <= 2.0,
        "{}x",
    );
    target(
        "restic incremental vs ours (≥ 20x faster)",
        ratio(b.get("restic", "incr (backup)"), inc),
        |v| v >= 20.0,
        "{}x",
    );
    target(
        "full vs tar | zstd -T0 -3 (≤ 1x)",
        ratio(
            b.get("ours", "full checkpoint"),
            b.get("tar", "full (tar | zstd -T0 -3)"),
        ),
        |v| v <= 1.0,
        "{}x",
    );
    target(
        "full output vs restic repo (≤ 1x)",
        size_ratio(
            b.get("ours", "full checkpoint"),
            b.get("restic", "full (backup)"),
        ),
        |v| v <= 1.0,
        "{}x",
    );
    target(
        "restore vs extracting the tar.zst (≤ 1x)",
        ratio(
            b.get("ours", "restore (latest, empty target)"),
            b.get("tar", "extract equivalent tar.zst"),
        ),
        |v| v <= 1.0,
        "{}x",
    );
    let scan = b.get("ours", "incr checkpoint (Unknown: full scan)");
    target(
        "scan incremental vs a plain stat walk (≤ 1.5x)",
        ratio(
            scan,
            b.get("find", "stat walk (find -printf size, mtime, ctime, inode)"),
        ),
        |v| v <= 1.5,
        "{}x",
    );
    target(
        "restic incremental vs ours, scan path (≥ 20x faster)",
        ratio(b.get("restic", "incr (backup)"), scan),
        |v| v >= 20.0,
        "{}x",
    );
    let info = [
        (
            "scan incremental vs tar of the changed files",
            ratio(scan, b.get("tar", "incr (known change list)")),
        ),
        (
            "borg incremental vs ours (hint)",
            ratio(b.get("borg", "incr (create)"), inc),
        ),
        (
            "full vs restic",
            ratio(
                b.get("ours", "full checkpoint"),
                b.get("restic", "full (backup)"),
            ),
        ),
        (
            "full vs borg",
            ratio(
                b.get("ours", "full checkpoint"),
                b.get("borg", "full (create -C zstd,3)"),
            ),
        ),
        (
            "full output vs tar.zst",
            size_ratio(
                b.get("ours", "full checkpoint"),
                b.get("tar", "full (tar | zstd -T0 -3)"),
            ),
        ),
        (
            "full output vs borg repo",
            size_ratio(
                b.get("ours", "full checkpoint"),
                b.get("borg", "full (create -C zstd,3)"),
            ),
        ),
        (
            "restore vs restic",
            ratio(
                b.get("ours", "restore (latest, empty target)"),
                b.get("restic", "restore latest"),
            ),
        ),
        (
            "restore vs borg",
            ratio(
                b.get("ours", "restore (latest, empty target)"),
                b.get("borg", "extract latest"),
            ),
        ),
    ];
    md.push_str("| target | ratio | result |\n|---|---:|---|\n");
    for l in targets {
        md.push_str(&l);
        md.push('\n');
    }
    md.push_str("\n| other ratios (ours / other unless stated) | value |\n|---|---:|\n");
    for (name, v) in info {
        if let Some(v) = v {
            md.push_str(&format!("| {name} | {v:.2}x |\n"));
        }
    }
    println!("{md}");
    if let Some(f) = flag(args, "--markdown") {
        let mut file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(f)
            .map_err(|e| e.to_string())?;
        file.write_all(md.as_bytes()).map_err(|e| e.to_string())?;
    }
    if args.iter().any(|a| a == "--keep") {
        eprintln!("kept {}", t.display());
    } else {
        let _ = Command::new("rm")
            .arg("-rf")
            .arg(&t)
            .stdin(Stdio::null())
            .status();
    }
    Ok(())
}

// ---------------------------------------------------------------- growth (issue 19)

/// Claude-Code-like JSONL lines (uuids, timestamps, text, tool calls) of about `bytes`.
fn jsonl_lines(rng: &mut Rng, bytes: usize, turn: usize, out: &mut Vec<u8>) {
    let start = out.len();
    let mut body = Vec::new();
    while out.len() - start < bytes {
        let uuid = format!(
            "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
            rng.next() as u32,
            rng.below(1 << 16),
            rng.below(1 << 12),
            rng.below(1 << 12),
            rng.next() & 0xffff_ffff_ffff
        );
        let kind = rng.below(4);
        let n = 200 + rng.below(1800) as usize;
        text(rng, n, &mut body);
        let t = String::from_utf8_lossy(&body)
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        let line = match kind {
            0 => format!(
                r#"{{"parentUuid":"{uuid}","isSidechain":false,"userType":"external","cwd":"/workspace","sessionId":"5f0c2a9e-1d7b-4c1e-9a51-3b8f2f6f7d10","version":"2.0.0","type":"user","message":{{"role":"user","content":"{t}"}},"uuid":"{uuid}","timestamp":"2026-12-07T20:{:02}:{:02}.{:03}Z"}}"#,
                turn % 60,
                rng.below(60),
                rng.below(1000)
            ),
            1 => format!(
                r#"{{"parentUuid":"{uuid}","type":"assistant","message":{{"id":"msg_{:024x}","role":"assistant","model":"claude-sonnet-4","content":[{{"type":"tool_use","id":"toolu_{:020x}","name":"Edit","input":{{"file_path":"/workspace/src/lib_{}.rs","old_string":"{t}","new_string":"{t} // changed"}}}}],"usage":{{"input_tokens":{},"output_tokens":{}}}}},"uuid":"{uuid}","timestamp":"2026-12-07T20:{:02}:{:02}.{:03}Z"}}"#,
                rng.next() as u128 * 31,
                rng.next() as u128,
                rng.below(100),
                rng.below(50_000),
                rng.below(4_000),
                turn % 60,
                rng.below(60),
                rng.below(1000)
            ),
            _ => format!(
                r#"{{"parentUuid":"{uuid}","type":"assistant","message":{{"role":"assistant","content":[{{"type":"text","text":"{t}"}}]}},"uuid":"{uuid}","timestamp":"2026-12-07T20:{:02}:{:02}.{:03}Z"}}"#,
                turn % 60,
                rng.below(60),
                rng.below(1000)
            ),
        };
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
}

fn median_u64(v: &mut [u64]) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[v.len() / 2]
}

fn zstd_len(data: &[u8]) -> u64 {
    zstd::bulk::compress(data, 3).map_or(0, |c| c.len() as u64)
}

fn q(p: &Path) -> String {
    format!("'{}'", p.display())
}

/// One tool's store over the scenario: (bytes after each checkpoint).
struct Side {
    sizes: Vec<u64>,
}

struct GrowthTools {
    restic: Option<(String, PathBuf)>,
    borg: Option<(String, PathBuf)>,
}

impl GrowthTools {
    fn new(t: &Path, tools: &str, name: &str) -> R<GrowthTools> {
        let env = format!(
            "RESTIC_PASSWORD=bench RESTIC_CACHE_DIR={} BORG_BASE_DIR={} BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes BORG_PASSPHRASE=",
            q(&t.join(format!("{name}-restic-cache"))),
            q(&t.join(format!("{name}-borg-base")))
        );
        let restic = if tools.contains("restic") {
            let r = t.join(format!("{name}-restic"));
            sh(&format!("{env} restic -q -r {} init >/dev/null", q(&r)))?;
            Some((env.clone(), r))
        } else {
            None
        };
        let borg = if tools.contains("borg") {
            let b = t.join(format!("{name}-borg"));
            sh(&format!("{env} borg init -e none {}", q(&b)))?;
            Some((env, b))
        } else {
            None
        };
        Ok(GrowthTools { restic, borg })
    }

    /// One backup of `dir` by each tool; their repository sizes.
    fn backup(&self, dir: &Path, n: usize) -> R<(Option<u64>, Option<u64>)> {
        let mut out = (None, None);
        if let Some((env, r)) = &self.restic {
            sh(&format!(
                "cd {} && {env} restic -q -r {} backup . >/dev/null",
                q(dir),
                q(r)
            ))?;
            out.0 = Some(du(r));
        }
        if let Some((env, b)) = &self.borg {
            sh(&format!(
                "cd {} && {env} borg create -C zstd,3 {}::s{n} .",
                q(dir),
                q(b)
            ))?;
            out.1 = Some(du(b));
        }
        Ok(out)
    }
}

fn create_hinted(store: &Store, root: &Path, rel: &str) -> R<(u64, f64)> {
    let req = CreateRequest {
        trees: vec![(
            TreeSpec {
                name: "conversation".into(),
                root: root.to_path_buf(),
                excludes: vec![],
            },
            ChangeHint::Paths([PathBuf::from(rel)].into_iter().collect()),
        )],
        parent: None,
        trigger: "turn_end".into(),
        message: None,
        metadata: serde_json::json!({}),
        skip_if_unchanged: false,
    };
    let t0 = Instant::now();
    let out = store
        .create(&req)
        .map_err(|e| format!("{} {e}", e.code()))?;
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    match out {
        // What this checkpoint added to the store: its layers and its manifest.
        CreateOutcome::Created(m) => {
            let manifest = store
                .root()
                .join("manifests")
                .join(format!("{}.manifest", m.id));
            let len = fs::metadata(&manifest).map_err(|e| e.to_string())?.len();
            Ok((m.stats.written_bytes + len, ms))
        }
        CreateOutcome::Unchanged(_) => Ok((0, ms)),
    }
}

fn growth(args: &[String]) -> R {
    let tmp = PathBuf::from(flag(args, "--tmp").unwrap_or("/tmp"));
    let tools = flag(args, "--tools")
        .unwrap_or("ours restic borg")
        .to_string();
    let turns: usize = flag(args, "--turns")
        .unwrap_or("200")
        .parse()
        .map_err(|e| format!("--turns: {e}"))?;
    let edits: usize = flag(args, "--edit-checkpoints")
        .unwrap_or("8")
        .parse()
        .map_err(|e| format!("--edit-checkpoints: {e}"))?;
    let edit_mib: usize = flag(args, "--edit-mib")
        .unwrap_or("256")
        .parse()
        .map_err(|e| format!("--edit-mib: {e}"))?;
    let t = tmp.join(format!("parhelia-growth-{}", std::process::id()));
    fs::create_dir_all(&t).map_err(|e| e.to_string())?;
    let result = (|| -> R {
        growth_append(&t, &tools, turns)?;
        if edits > 0 {
            growth_inplace(&t, &tools, edits, edit_mib)?;
        }
        Ok(())
    })();
    if !args.iter().any(|a| a == "--keep") {
        let _ = fs::remove_dir_all(&t);
    }
    result
}

fn growth_append(t: &Path, tools: &str, turns: usize) -> R {
    let conv = t.join("append-conv");
    fs::create_dir_all(&conv).map_err(|e| e.to_string())?;
    let file = conv.join("5f0c2a9e-1d7b-4c1e-9a51-3b8f2f6f7d10.jsonl");
    let rel = "5f0c2a9e-1d7b-4c1e-9a51-3b8f2f6f7d10.jsonl";
    let mut rng = Rng(0x19c);
    let mut data = Vec::new();
    jsonl_lines(&mut rng, 1_000_000, 0, &mut data);
    fs::write(&file, &data).map_err(|e| e.to_string())?;
    let store_dir = t.join("append-store");
    let store = Store::open(&store_dir).map_err(|e| e.to_string())?;
    let others = GrowthTools::new(t, tools, "append")?;
    let (_, ms0) = create_hinted(&store, &conv, rel)?;
    let (r0, b0) = others.backup(&conv, 0)?;
    eprintln!(
        "growth append: turn 0: file {} bytes, ours {} ({ms0:.1} ms), restic {r0:?}, borg {b0:?}",
        data.len(),
        du(&store_dir)
    );
    let mut ours = Side {
        sizes: vec![du(&store_dir)],
    };
    let mut restic = Side {
        sizes: vec![r0.unwrap_or(0)],
    };
    let mut borg = Side {
        sizes: vec![b0.unwrap_or(0)],
    };
    let (mut ms, mut new_bytes, mut appended_z) = (Vec::new(), Vec::new(), Vec::new());
    let mut committed = Vec::new();
    // Per turn: how far the store's growth exceeds 2x the compressed appended bytes.
    let mut worst_excess: i64 = i64::MIN;
    let mut appended_total = 0u64;
    for turn in 1..=turns {
        let mut more = Vec::new();
        jsonl_lines(&mut rng, 50_000, turn, &mut more);
        {
            use std::io::Write as _;
            let mut f = fs::OpenOptions::new()
                .append(true)
                .open(&file)
                .map_err(|e| e.to_string())?;
            f.write_all(&more).map_err(|e| e.to_string())?;
        }
        appended_total += more.len() as u64;
        let z = zstd_len(&more);
        appended_z.push(z);
        let before = *ours.sizes.last().expect("turn 0");
        let (nb, m) = create_hinted(&store, &conv, rel)?;
        let after = du(&store_dir);
        ms.push((m * 1000.0) as u64);
        new_bytes.push(after - before);
        committed.push(nb);
        worst_excess = worst_excess.max(nb as i64 - 2 * z as i64);
        ours.sizes.push(after);
        let (r, b) = others.backup(&conv, turn)?;
        restic.sizes.push(r.unwrap_or(0));
        borg.sizes.push(b.unwrap_or(0));
        if turn % 25 == 0 || turn == turns || std::env::var_os("GROWTH_VERBOSE").is_some() {
            eprintln!(
                "growth append: turn {turn}: ours {after} (+{} store, {nb} layers+manifest, appended {z} zstd; {m:.1} ms), restic {r:?}, borg {b:?}",
                after - before
            );
        }
    }
    let final_len = fs::metadata(&file).map_err(|e| e.to_string())?.len();
    let final_z = zstd_len(&fs::read(&file).map_err(|e| e.to_string())?);
    let curve: Vec<serde_json::Value> = (0..=turns)
        .filter(|i| i % 25 == 0 || *i == turns)
        .map(|i| serde_json::json!([i, ours.sizes[i], restic.sizes[i], borg.sizes[i]]))
        .collect();
    let best_other = [restic.sizes[turns], borg.sizes[turns]]
        .into_iter()
        .filter(|s| *s > 0)
        .min();
    println!(
        "{}",
        serde_json::json!({
            "scenario": "append",
            "turns": turns,
            "store_bytes": ours.sizes[turns],
            "restic_bytes": others.restic.as_ref().map(|_| restic.sizes[turns]),
            "borg_bytes": others.borg.as_ref().map(|_| borg.sizes[turns]),
            "appended_bytes": appended_total,
            "median_incremental_ms": median_u64(&mut ms.clone()) as f64 / 1000.0,
            "ratio_to_best_other": best_other.map(|b| ours.sizes[turns] as f64 / b as f64),
            "final_file_bytes": final_len,
            "final_file_zstd_bytes": final_z,
            "median_incremental_store_bytes": median_u64(&mut new_bytes.clone()),
            "max_incremental_store_bytes": new_bytes.iter().max(),
            "median_appended_zstd_bytes": median_u64(&mut appended_z.clone()),
            "median_incremental_new_bytes": median_u64(&mut committed.clone()),
            "max_incremental_new_bytes": committed.iter().max(),
            "max_excess_over_2x_appended_zstd": worst_excess,
            "curve_turn_ours_restic_borg": curve,
        })
    );
    Ok(())
}

fn growth_inplace(t: &Path, tools: &str, checkpoints: usize, mib: usize) -> R {
    let dir = t.join("inplace-data");
    fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let rel = "model.bin";
    let file = dir.join(rel);
    let mut rng = Rng(0x256);
    {
        use std::io::Write as _;
        let mut f = std::io::BufWriter::new(fs::File::create(&file).map_err(|e| e.to_string())?);
        for _ in 0..(mib << 17) {
            f.write_all(&rng.next().to_le_bytes())
                .map_err(|e| e.to_string())?;
        }
        f.flush().map_err(|e| e.to_string())?;
    }
    let store_dir = t.join("inplace-store");
    let store = Store::open(&store_dir).map_err(|e| e.to_string())?;
    let others = GrowthTools::new(t, tools, "inplace")?;
    create_hinted(&store, &dir, rel)?;
    others.backup(&dir, 0)?;
    let (mut ours_prev, mut sizes) = (du(&store_dir), (0, 0));
    eprintln!("growth inplace: first checkpoint {ours_prev} bytes");
    let (mut ms, mut new_bytes) = (Vec::new(), Vec::new());
    for k in 1..=checkpoints {
        use std::io::{Seek, SeekFrom, Write as _};
        let at = rng.below(((mib as u64) << 20) - (1 << 20));
        let mut f = fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .map_err(|e| e.to_string())?;
        f.seek(SeekFrom::Start(at)).map_err(|e| e.to_string())?;
        let block: Vec<u8> = (0..(1 << 17))
            .flat_map(|_| rng.next().to_le_bytes())
            .collect();
        f.write_all(&block).map_err(|e| e.to_string())?;
        drop(f);
        let (nb, m) = create_hinted(&store, &dir, rel)?;
        let now = du(&store_dir);
        ms.push((m * 1000.0) as u64);
        new_bytes.push(nb);
        eprintln!(
            "growth inplace: checkpoint {k}: +{} store bytes ({nb} layers+manifest), {m:.1} ms",
            now - ours_prev
        );
        ours_prev = now;
        let (r, b) = others.backup(&dir, k)?;
        sizes = (r.unwrap_or(0), b.unwrap_or(0));
    }
    println!(
        "{}",
        serde_json::json!({
            "scenario": "inplace",
            "turns": checkpoints,
            "file_bytes": (mib as u64) << 20,
            "store_bytes": ours_prev,
            "restic_bytes": others.restic.as_ref().map(|_| sizes.0),
            "borg_bytes": others.borg.as_ref().map(|_| sizes.1),
            "appended_bytes": 0,
            "rewritten_bytes_per_checkpoint": 1 << 20,
            "median_incremental_ms": median_u64(&mut ms.clone()) as f64 / 1000.0,
            "median_incremental_new_bytes": median_u64(&mut new_bytes.clone()),
            "max_incremental_new_bytes": new_bytes.iter().max(),
        })
    );
    Ok(())
}

/// Percentile `q` (0..=1) of sorted `v` (nearest rank); 0 for none.
fn pct(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// See the module docs: a real session's checkpoints against tar+zstd of what changed.
fn realpath(args: &[String]) -> R {
    let store = Store::open(Path::new(&args[0])).map_err(|e| e.to_string())?;
    let events = fs::read_to_string(&args[1]).map_err(|e| format!("{}: {e}", args[1]))?;
    let scenario = flag(args, "--scenario").unwrap_or("session");
    let runs: usize = flag(args, "--runs")
        .unwrap_or("5")
        .parse()
        .map_err(|e| format!("--runs: {e}"))?;
    let tmp = PathBuf::from(flag(args, "--tmp").unwrap_or("/tmp"))
        .join(format!("parhelia-realpath-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(|e| e.to_string())?;
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    #[derive(Default)]
    struct Sample {
        ours_ms: f64,
        tar_ms: f64,
        git_ms: Option<u64>,
        fsync_ms: Option<u64>,
        hook_wait_ms: Option<u64>,
        changed: usize,
        changed_bytes: u64,
    }
    let mut samples: Vec<(String, Sample)> = Vec::new();
    let (mut files, mut bytes) = (0u64, 0u64);
    for line in events.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("event: {e}"))?;
        let c = &v["kind"]["checkpoint_created"];
        let trigger = c["trigger"].as_str().unwrap_or("");
        if c["skipped"].as_bool().unwrap_or(false) || !["turn_end", "pre_tool"].contains(&trigger) {
            continue;
        }
        let id = CheckpointId::parse(c["checkpoint_id"].as_str().unwrap_or(""))
            .map_err(|e| e.to_string())?;
        let m = store.load(&id).map_err(|e| e.to_string())?;
        let Some(parent) = m.parent.clone() else {
            continue;
        };
        files = m.tree("workspace").map_or(0, |t| t.file_count);
        bytes = m.tree("workspace").map_or(0, |t| t.total_bytes);
        let ours_ms = match c["duration_us"].as_u64() {
            Some(us) => us as f64 / 1000.0,
            None => c["duration_ms"].as_u64().unwrap_or(0) as f64,
        };
        // The changed files as this checkpoint holds them, and the removed ones' names.
        let dir = tmp.join("changed");
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let diff = store.diff(&parent, &id).map_err(|e| e.to_string())?;
        let mut list = Vec::new();
        let mut whiteouts = Vec::new();
        let mut changed_bytes = 0u64;
        for e in diff.added.iter().chain(&diff.modified) {
            if e.kind != parhelia_checkpoint::EntryKind::File {
                continue;
            }
            let content = store
                .read_file(&id, &e.tree, &e.path)
                .map_err(|e| e.to_string())?;
            let rel = Path::new(&e.tree).join(&e.path);
            let dest = dir.join(&rel);
            fs::create_dir_all(dest.parent().unwrap()).map_err(|e| e.to_string())?;
            fs::write(&dest, &content).map_err(|e| e.to_string())?;
            changed_bytes += content.len() as u64;
            list.push(rel);
        }
        for e in &diff.removed {
            whiteouts.push(Path::new(&e.tree).join(&e.path).display().to_string());
        }
        fs::write(dir.join(".whiteouts"), whiteouts.join("\n")).map_err(|e| e.to_string())?;
        let lst = tmp.join("changed.lst");
        fs::write(
            &lst,
            list.iter()
                .map(|p| format!("{}\n", p.display()))
                .collect::<String>(),
        )
        .map_err(|e| e.to_string())?;
        sh("sync")?;
        let mut tar = Vec::new();
        for _ in 0..runs.max(1) {
            let out = tmp.join("delta.tar.zst");
            let _ = fs::remove_file(&out);
            let cmd = format!(
                "tar -cf - -C {d} --no-recursion -T {l} .whiteouts | zstd -q -T0 -3 -o {o} && sync {o}",
                d = q(&dir),
                l = q(&lst),
                o = q(&out)
            );
            let start = Instant::now();
            sh(&cmd)?;
            tar.push(start.elapsed().as_secs_f64() * 1000.0);
            sh("sync")?;
        }
        let sample = Sample {
            ours_ms,
            tar_ms: pct(&tar, 0.5),
            git_ms: c["git_ms"].as_u64(),
            fsync_ms: c["fsync_ms"].as_u64(),
            hook_wait_ms: c["hook_wait_ms"].as_u64(),
            changed: list.len() + whiteouts.len(),
            changed_bytes,
        };
        eprintln!(
            "  {trigger:<8} {id}  ours {:>8.2} ms  tar {:>7.2} ms  ({:.2}x)  git {:?} fsync {:?} hook wait {:?}  {} changed, {} B",
            sample.ours_ms,
            sample.tar_ms,
            sample.ours_ms / sample.tar_ms,
            sample.git_ms,
            sample.fsync_ms,
            sample.hook_wait_ms,
            sample.changed,
            sample.changed_bytes
        );
        samples.push((trigger.to_string(), sample));
    }
    let _ = fs::remove_dir_all(&tmp);
    if samples.is_empty() {
        return Err("no turn_end or pre_tool checkpoint with a parent in the events".into());
    }
    let col = |f: &dyn Fn(&Sample) -> Option<f64>| -> Vec<f64> {
        samples.iter().filter_map(|(_, s)| f(s)).collect()
    };
    let ours = col(&|s| Some(s.ours_ms));
    let tar = col(&|s| Some(s.tar_ms));
    let ratios = col(&|s| Some(s.ours_ms / s.tar_ms));
    let git = col(&|s| s.git_ms.map(|v| v as f64));
    let fsync = col(&|s| s.fsync_ms.map(|v| v as f64));
    let hook = col(&|s| s.hook_wait_ms.map(|v| v as f64));
    let round = |x: f64| (x * 100.0).round() / 100.0;
    println!(
        "{}",
        serde_json::json!({
            "scenario": scenario,
            "files": files,
            "bytes": bytes,
            "checkpoints": samples.len(),
            "turn_end": samples.iter().filter(|(t, _)| t == "turn_end").count(),
            "pre_tool": samples.iter().filter(|(t, _)| t == "pre_tool").count(),
            "median_ms": round(pct(&ours, 0.5)),
            "p90_ms": round(pct(&ours, 0.9)),
            "max_ms": round(pct(&ours, 1.0)),
            "median_tar_ms": round(pct(&tar, 0.5)),
            "ratio_of_medians": round(pct(&ours, 0.5) / pct(&tar, 0.5)),
            "median_ratio": round(pct(&ratios, 0.5)),
            "max_ratio": round(pct(&ratios, 1.0)),
            "median_git_ms": round(pct(&git, 0.5)),
            "max_git_ms": round(pct(&git, 1.0)),
            "median_fsync_ms": round(pct(&fsync, 0.5)),
            "median_hook_wait_ms": round(pct(&hook, 0.5)),
            "max_hook_wait_ms": round(pct(&hook, 1.0)),
            "median_changed_files": pct(&col(&|s| Some(s.changed as f64)), 0.5),
            "median_changed_bytes": pct(&col(&|s| Some(s.changed_bytes as f64)), 0.5),
            "load": load,
        })
    );
    Ok(())
}
