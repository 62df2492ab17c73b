//! `--color`, `NO_COLOR`, `CLICOLOR_FORCE` and `--progress json`, through the
//! real binary (its stdout and stderr are pipes here, never a terminal).

use parhelia::db::{Db, NewLaunch, TaskUpdate};
use parhelia::ids::SessionSecret;
use parhelia::task_state::TaskStatus;

use crate::support::*;

const ESC: char = '\u{1b}';

/// A world with one failed task whose prompt is long.
fn world() -> World {
    let world = World::new();
    let db = Db::open(&world.root().join(".parhelia/parhelia.db")).unwrap();
    db.insert_launch(&NewLaunch {
        task_id: "task-00000001".into(),
        session_id: "sess-00000001".into(),
        container_id: "ctr-00000001".into(),
        claude_session_id: "uuid".into(),
        prompt: "Refactor the parser so that every error carries a span, then update all the tests and the docs that show error output".into(),
        task_type: "generic".into(),
        backend: "local".into(),
        workspace: None,
        model: None,
        max_turns: None,
        mode: "headless".into(),
        secret: SessionSecret::from_stored("s3cret".into()),
        workspace_dir: "/w".into(),
        volume_dir: "/v".into(),
    })
    .unwrap();
    db.transition_task("task-00000001", TaskStatus::Failed, &TaskUpdate::default())
        .unwrap();
    world
}

fn run(world: &World, env: &[(&str, &str)], args: &[&str]) -> (String, String) {
    let mut cmd = world.command(args);
    cmd.env_remove("NO_COLOR").env_remove("CLICOLOR_FORCE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn color_only_when_asked_and_never_in_json() {
    let world = world();
    // A pipe: no color, and the whole prompt (nothing cut).
    let (plain, _) = run(&world, &[], &["task", "list"]);
    assert!(!plain.contains(ESC), "{plain:?}");
    assert!(
        plain.contains("and the docs that show error output"),
        "{plain}"
    );
    assert!(
        plain.starts_with("ID             STATUS       COST"),
        "{plain}"
    );

    let (always, _) = run(&world, &[], &["--color", "always", "task", "list"]);
    // comfy-table (crossterm) writes red as `38;5;9`.
    assert!(always.contains("\u{1b}[38;5;9mfailed\u{1b}["), "{always:?}");
    assert!(always.contains("task-00000001"), "{always}");

    let (forced, _) = run(&world, &[("CLICOLOR_FORCE", "1")], &["task", "list"]);
    assert!(forced.contains(ESC), "{forced:?}");
    for (env, args) in [
        (
            &[("NO_COLOR", "1"), ("CLICOLOR_FORCE", "1")][..],
            &["task", "list"][..],
        ),
        (
            &[("CLICOLOR_FORCE", "1")][..],
            &["--color", "never", "task", "list"][..],
        ),
        (
            &[][..],
            &["--color", "always", "task", "list", "--json"][..],
        ),
        (
            &[][..],
            &["--color", "always", "session", "list", "--json"][..],
        ),
    ] {
        let (out, _) = run(&world, env, args);
        assert!(!out.contains(ESC), "{env:?} {args:?}: {out:?}");
    }

    // The error prefix on stderr.
    let (_, err) = run(&world, &[], &["task", "show", "task-deadbeef"]);
    assert!(err.starts_with("error[E201]"), "{err:?}");
    let (_, err) = run(
        &world,
        &[],
        &["--color", "always", "task", "show", "task-deadbeef"],
    );
    assert!(
        err.starts_with("\u{1b}[31merror[E201]\u{1b}[0m: "),
        "{err:?}"
    );
}

#[test]
fn progress_is_json_lines_on_stderr_off_a_terminal_unless_never() {
    let world = world();
    let args = ["session", "pull", "sess-00000001", "--checkpoint", "cp-1"];
    // `--progress never` (or PARHELIA_PROGRESS=never): no progress at all.
    for (env, flags) in [
        (vec![], vec!["--progress", "never"]),
        (vec![("PARHELIA_PROGRESS", "never")], vec![]),
    ] {
        let mut argv = flags.clone();
        argv.extend(args);
        let (_, err) = run(&world, &env, &argv);
        assert!(!err.contains("\"progress\""), "{err}");
        assert!(err.starts_with("error["), "{err}");
    }

    // Not a terminal, not asked (`auto`), or asked (`json`): the same JSON lines,
    // then the error.
    let mut with_json = vec!["--progress", "json"];
    with_json.extend(args);
    let (_, auto_err) = run(&world, &[], &args);
    let (out, err) = run(&world, &[], &with_json);
    let shape = |e: &str| -> Vec<String> {
        e.lines()
            .map(|l| l.split("\"elapsed_ms\"").next().unwrap_or(l).to_string())
            .collect()
    };
    assert_eq!(shape(&auto_err), shape(&err), "{auto_err}\n{err}");
    assert!(
        err.lines().last().unwrap_or("").starts_with("error[") || err.contains("\nerror["),
        "{err}"
    );
    assert!(!out.contains("progress"), "{out}");
    let lines: Vec<serde_json::Value> = err
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(lines.len() >= 2, "{err}");
    for l in &lines {
        assert_eq!(l["type"], "progress", "{l}");
        assert_eq!(l["op"], "session_pull", "{l}");
    }
    assert_eq!(lines[0]["event"], "step");
    assert_eq!(lines[0]["step"], "opening the session");
    let last = lines.last().unwrap();
    assert_eq!(last["event"], "finish", "{err}");
    assert_eq!(last["ok"], false, "{err}");
}
