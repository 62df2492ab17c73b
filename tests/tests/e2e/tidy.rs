//! Tidy checks on the source tree, in the spirit of rust-analyzer's tidy tests: they read
//! the code as text and fail when its shape drifts from what `docs/ARCHITECTURE.md`
//! promises.
//!
//! - **No import circles.** Within each crate, the graph "file under `src/<m>` names
//!   `crate::<n>`" between top-level modules has no cycle, except the known ones listed
//!   below, each with the split that will remove it. A known circle that is gone (or has
//!   changed) fails too, so the list only shrinks.
//! - **Pure modules import no adapters.** The modules ARCHITECTURE names as pure logic
//!   (no IO) name only other pure modules, except the listed known violations.
//!
//! Test modules (`#[cfg(test)] mod …` to the end of a file) are not counted: tests may
//! use anything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without its trailing test module and without `//` comments.
fn code_of(text: &str) -> String {
    let mut code = text;
    let mut from = 0;
    while let Some(at) = code[from..].find("#[cfg(test)]") {
        let at = from + at;
        let rest = code[at + "#[cfg(test)]".len()..].trim_start();
        let rest = rest
            .strip_prefix("pub(crate) ")
            .or_else(|| rest.strip_prefix("pub "))
            .unwrap_or(rest);
        let line = rest.lines().next().unwrap_or("");
        if line.starts_with("mod ") && line.trim_end().ends_with('{') {
            code = &code[..at];
            break;
        }
        from = at + 1;
    }
    code.lines()
        .map(|line| match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The names right after each `crate::` (each first-level name of a `crate::{…}` group).
fn crate_paths(code: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let preceded_by_ident = rest[..at].chars().next_back().is_some_and(is_ident);
        rest = &rest[at + "crate::".len()..];
        if preceded_by_ident {
            // `parhelia_crate::…` and the like.
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut expect_name = true;
            let mut name = String::new();
            for c in group.chars() {
                if depth == 1 && !is_ident(c) && !name.is_empty() {
                    names.insert(std::mem::take(&mut name));
                    expect_name = false;
                }
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => expect_name = true,
                    c if depth == 1 && expect_name && is_ident(c) => name.push(c),
                    _ => {}
                }
            }
            if !name.is_empty() {
                names.insert(name);
            }
        } else {
            let name: String = rest.chars().take_while(|c| is_ident(*c)).collect();
            if !name.is_empty() {
                names.insert(name);
            }
        }
    }
    names
}

/// The top-level module graph of one crate's `src/` (binaries under `src/bin/` and the
/// crate roots are not modules of it).
fn module_graph(crate_dir: &str) -> Graph {
    let src = workspace().join(crate_dir).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let top_of = |path: &Path| -> Option<String> {
        let rel = path.strip_prefix(&src).expect("under src");
        let first = rel.components().next()?.as_os_str().to_str()?.to_owned();
        let top = first.strip_suffix(".rs").unwrap_or(&first).to_owned();
        (!matches!(top.as_str(), "lib" | "main" | "bin")).then_some(top)
    };
    let modules: BTreeSet<String> = files.iter().filter_map(|f| top_of(f)).collect();
    let mut graph: Graph = modules
        .iter()
        .map(|m| (m.clone(), BTreeSet::new()))
        .collect();
    for file in &files {
        let Some(top) = top_of(file) else { continue };
        let text = std::fs::read_to_string(file)
            .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
        let deps = graph.get_mut(&top).expect("listed");
        for name in crate_paths(&code_of(&text)) {
            if name != top && modules.contains(&name) {
                deps.insert(name);
            }
        }
    }
    graph
}

fn reachable(graph: &Graph, from: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![from.to_owned()];
    while let Some(m) = todo.pop() {
        for n in graph.get(&m).into_iter().flatten() {
            if seen.insert(n.clone()) {
                todo.push(n.clone());
            }
        }
    }
    seen
}

/// Every set of two or more modules that import each other in a circle (the strongly
/// connected components), each sorted.
fn circles(graph: &Graph) -> BTreeSet<Vec<String>> {
    let reach: BTreeMap<&String, BTreeSet<String>> =
        graph.keys().map(|m| (m, reachable(graph, m))).collect();
    let mut out = BTreeSet::new();
    for m in graph.keys() {
        let mut comp: Vec<String> = graph
            .keys()
            .filter(|n| *n == m || (reach[m].contains(*n) && reach[*n].contains(m)))
            .cloned()
            .collect();
        comp.sort();
        if comp.len() > 1 {
            out.insert(comp);
        }
    }
    out
}

/// Fails unless the crate's circles are exactly `known` (each with why it is still there).
fn assert_circles(crate_dir: &str, known: &[(&[&str], &str)]) {
    let graph = module_graph(crate_dir);
    let found = circles(&graph);
    let known: BTreeSet<Vec<String>> = known
        .iter()
        .map(|(ms, _)| {
            let mut v: Vec<String> = ms.iter().map(|m| m.to_string()).collect();
            v.sort();
            v
        })
        .collect();
    let describe = |comp: &Vec<String>| {
        comp.iter()
            .map(|m| {
                let inside: Vec<&String> = graph[m].iter().filter(|n| comp.contains(n)).collect();
                format!("  {m} -> {inside:?}")
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    if let Some(comp) = found.difference(&known).next() {
        panic!(
            "{crate_dir}/src: these modules import each other in a circle (break it: move what \
             they share into a small module both import):\n{}",
            describe(comp)
        );
    }
    if let Some(comp) = known.difference(&found).next() {
        panic!(
            "{crate_dir}/src: the known circle {comp:?} is gone or has changed; update the \
             exception list in tests/tests/e2e/tidy.rs (found: {found:?})"
        );
    }
}

/// Fails if a pure module names a module outside `pure`, except the `known` edges.
fn assert_pure(crate_dir: &str, pure: &[&str], known: &[(&str, &str, &str)]) {
    let graph = module_graph(crate_dir);
    let mut found = BTreeSet::new();
    for p in pure {
        let deps = graph
            .get(*p)
            .unwrap_or_else(|| panic!("{crate_dir}/src has no module {p}"));
        for d in deps {
            if !pure.contains(&d.as_str()) {
                found.insert((p.to_string(), d.clone()));
            }
        }
    }
    let known: BTreeSet<(String, String)> = known
        .iter()
        .map(|(a, b, _)| (a.to_string(), b.to_string()))
        .collect();
    let new: Vec<_> = found.difference(&known).collect();
    assert!(
        new.is_empty(),
        "{crate_dir}/src: pure modules import adapters: {new:?} (pure: {pure:?})"
    );
    let gone: Vec<_> = known.difference(&found).collect();
    assert!(
        gone.is_empty(),
        "{crate_dir}/src: known violations {gone:?} are gone; remove them from tests/tests/e2e/tidy.rs"
    );
}

#[test]
fn the_reader_finds_imports_in_every_form() {
    let code = code_of(
        "use crate::a::X;\nuse crate::{b, c::{D, E}, d as f};\nfn x() { crate::e::y(); }\n\
         // crate::commented\nuse parhelia_crate::g;\n#[cfg(test)]\nmod tests {\n    use crate::h;\n}\n",
    );
    let names: Vec<String> = crate_paths(&code).into_iter().collect();
    assert_eq!(names, ["a", "b", "c", "d", "e"]);
    let mut g = Graph::new();
    g.insert("a".into(), ["b".into()].into());
    g.insert("b".into(), ["c".into()].into());
    g.insert("c".into(), ["a".into()].into());
    g.insert("d".into(), ["a".into()].into());
    assert_eq!(
        circles(&g),
        BTreeSet::from([vec!["a".to_string(), "b".into(), "c".into()]])
    );
}

#[test]
fn no_import_circles_in_proto_checkpoint_or_tests() {
    assert_circles("contract", &[]);
    assert_circles("proto", &[]);
    assert_circles("checkpoint", &[]);
    assert_circles("tests", &[]);
}

#[test]
fn no_import_circles_in_the_agent() {
    assert_circles("agent", &[]);
}

#[test]
fn no_import_circles_in_the_coordinator() {
    assert_circles("coordinator", &[]);
}

#[test]
fn pure_modules_import_no_adapters() {
    // docs/ARCHITECTURE.md, "Pure logic (no IO)", plus the plain types they share.
    assert_pure(
        "coordinator",
        &[
            "task_state",
            "container_state",
            "reconcile",
            "queue",
            "event_filter",
            "budget",
            "rates",
            "render",
            "plan",
            "config",
            "error_codes",
            "error",
            "views",
            "records",
            "table",
            "term",
            "ids",
            "spec",
            "checks",
            "config_sync",
        ],
        &[],
    );
    // The checkpoint format's plain parts: encodings, entries, manifests, excludes.
    assert_pure(
        "checkpoint",
        &["codec", "entry", "error", "manifest", "exclude"],
        &[],
    );
}
