//! The README's first section, run as written (issue 14): install both binaries, then
//! run the first task in the user's own repository, with real Claude Code on the
//! scripted model.
//!
//! The lines are the first ```sh block of README.md, run verbatim by `sh -e` from the
//! repository root, with HOME a temporary directory holding the user's repository
//! `~/my-project`. `cargo install --locked --path coordinator|agent` is a real
//! `cargo install` into a temporary `CARGO_INSTALL_ROOT` when
//! `PARHELIA_README_REAL_INSTALL=1` (a release build of both crates: too slow for every
//! CI run). Otherwise a shell function named `cargo` stands in for exactly those two
//! lines: it accepts only `install --locked --path coordinator` and `… --path agent`
//! (anything else fails the test) and puts the binaries this test run built into
//! `$CARGO_INSTALL_ROOT/bin`, where `cargo install` would. `PATH` holds that directory
//! and Claude Code's, nothing of the build: so `parhelia` finds `parhelia-agent` the way
//! an installed one does (beside itself).

use std::path::{Path, PathBuf};
use std::process::Command;

use parhelia_testkit::harness::{Harness, bin_dir};
use parhelia_testkit::{Script, ToolCall, Turn};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The first ```sh block of the README's first `##` section.
fn first_section_lines() -> Vec<String> {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let section = readme
        .split("\n## ")
        .nth(1)
        .expect("README has a first section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("the first section has a ```sh block");
    block.lines().map(str::to_string).collect()
}

#[test]
fn the_first_section_installs_both_binaries_then_runs_a_task_in_the_users_repository() {
    let lines = first_section_lines();
    // In that order: both installs, then the task in the user's own repository.
    let install = |path: &str| {
        lines
            .iter()
            .position(|l| l.trim() == format!("cargo install --locked --path {path}"))
            .unwrap_or_else(|| panic!("no `cargo install --locked --path {path}` in {lines:#?}"))
    };
    let task = lines
        .iter()
        .position(|l| l.starts_with("parhelia task create") && l.contains("--workspace"))
        .expect("a task create in the user's repository");
    assert!(
        install("coordinator") < task && install("agent") < task,
        "{lines:#?}"
    );
    // The paths are the crates that build those binaries.
    let manifest =
        |p: &str| std::fs::read_to_string(repo_root().join(p).join("Cargo.toml")).unwrap();
    assert!(manifest("coordinator").contains("name = \"parhelia\""));
    assert!(manifest("agent").contains("name = \"parhelia-agent\""));

    let h = Harness::new(Script::new([
        Turn::tool_use([ToolCall::write("hello.txt", "hi\n")]),
        Turn::text("Wrote hello.txt."),
    ]));
    let home = h.root().to_path_buf();
    let project = home.join("my-project");
    std::fs::create_dir(&project).unwrap();
    std::fs::write(project.join("README"), "my project\n").unwrap();
    for args in [
        &["init", "-q"][..],
        &["add", "README"],
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.com",
            "commit",
            "-qm",
            "first",
        ],
    ] {
        let ok = Command::new("git")
            .args(args)
            .current_dir(&project)
            .status()
            .unwrap()
            .success();
        assert!(ok, "git {args:?}");
    }
    let install_root = tempfile::tempdir().unwrap();
    let real_install = std::env::var_os("PARHELIA_README_REAL_INSTALL").is_some_and(|v| v == "1");
    let shim = r#"
cargo() {
  if [ "$#" -ne 4 ] || [ "$1 $2 $3" != "install --locked --path" ]; then
    echo "the README runs an unexpected cargo command: cargo $*" >&2; return 1
  fi
  case "$4" in
    coordinator) bin=parhelia ;;
    agent) bin=parhelia-agent ;;
    *) echo "unknown package path $4" >&2; return 1 ;;
  esac
  test -f "$4/Cargo.toml" || { echo "no crate at $4" >&2; return 1; }
  mkdir -p "$CARGO_INSTALL_ROOT/bin" && cp "$PARHELIA_BUILT_BINS/$bin" "$CARGO_INSTALL_ROOT/bin/$bin"
}
"#;
    let script = format!(
        "{}{}\n",
        if real_install { "" } else { shim },
        lines.join("\n")
    );
    let claude = parhelia_testkit::claude_code::claude_bin().unwrap();
    let path = format!(
        "{}:{}:/usr/local/bin:/usr/bin:/bin",
        install_root.path().join("bin").display(),
        claude.parent().unwrap().display()
    );
    let mut command = Command::new("sh");
    command
        .arg("-ec")
        .arg(&script)
        .current_dir(repo_root())
        .env_clear()
        .env("HOME", &home)
        .env("PATH", path)
        .env("CARGO_INSTALL_ROOT", install_root.path())
        .env("PARHELIA_BUILT_BINS", bin_dir())
        .env("ANTHROPIC_BASE_URL", h.stand_in.base_url())
        .env("ANTHROPIC_API_KEY", "test-key-not-a-secret")
        .env("CLAUDE_CODE_MAX_RETRIES", "1");
    if real_install {
        for key in [
            "CARGO_HOME",
            "RUSTUP_HOME",
            "RUSTUP_TOOLCHAIN",
            "CARGO_TARGET_DIR",
        ] {
            if let Some(v) = std::env::var_os(key) {
                command.env(key, v);
            }
        }
        let cargo_home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cargo"));
        let path = format!(
            "{}:{}",
            std::env::var("PATH").unwrap_or_default(),
            cargo_home.join("bin").display()
        );
        command.env(
            "PATH",
            format!("{}:{path}", install_root.path().join("bin").display()),
        );
        command.env("HOME", &home);
    }
    let out = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the README's lines failed ({}):\n{script}\nstdout:\n{stdout}\nstderr:\n{stderr}\ncoordinator log:\n{}",
        out.status,
        h.coordinator_log()
    );
    assert!(stdout.contains("completed"), "{stdout}");
    for bin in ["parhelia", "parhelia-agent"] {
        assert!(install_root.path().join("bin").join(bin).is_file(), "{bin}");
    }
    // The task ran on a copy of the user's repository (the state directory found
    // from it is the one beside it) and left the repository itself alone.
    let tasks = h.json(&["task", "list", "--json"]);
    let task = &tasks[0];
    assert_eq!(task["status"], "completed", "{tasks:#}");
    assert_eq!(
        Path::new(task["workspace"].as_str().unwrap()),
        project.canonicalize().unwrap()
    );
    let session = task["session_id"].as_str().unwrap();
    let workspace = h.state().join("sessions").join(session).join("workspace");
    assert_eq!(
        std::fs::read_to_string(workspace.join("hello.txt")).unwrap(),
        "hi\n"
    );
    assert!(workspace.join("README").is_file() && workspace.join(".git").is_dir());
    assert!(!project.join("hello.txt").exists());
}
