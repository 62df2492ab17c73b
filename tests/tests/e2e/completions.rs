//! `parhelia completions SHELL` and `parhelia man` (issue 16): the scripts load in real
//! bash and zsh, and Tab completes subcommands and the ids recorded in the state
//! directory (clap_complete's dynamic engine calls the real binary back).

use std::process::Command;

use parhelia_testkit::Script;
use parhelia_testkit::harness::Harness;

/// Runs `shell -c script` in the harness's directory and environment.
fn shell(h: &Harness, program: &str, script: &str) -> (bool, String, String) {
    let template = h.command(&[]);
    let mut command = Command::new(program);
    command.arg("-c").arg(script).current_dir(h.root());
    for (key, value) in template.get_envs() {
        match value {
            Some(value) => command.env(key, value),
            None => command.env_remove(key),
        };
    }
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// What bash's completion function offers for `words` (the last one being typed).
fn bash_complete(h: &Harness, words: &str) -> String {
    let script = format!(
        r#"set -e
source <(parhelia completions bash)
COMP_WORDS=({words})
COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
COMP_TYPE=9
_clap_complete_parhelia parhelia "${{COMP_WORDS[$COMP_CWORD]}}"
printf '%s\n' "${{COMPREPLY[@]}}""#
    );
    let (ok, stdout, stderr) = shell(h, "bash", &script);
    assert!(ok, "bash completion of {words} failed:\n{stdout}\n{stderr}");
    stdout
}

#[test]
fn every_shell_gets_a_script_and_bash_and_zsh_load_it() {
    let h = Harness::new(Script::new([]));
    for sh in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let script = h.ok(&["completions", sh]);
        assert!(script.contains("PARHELIA_COMPLETE"), "{sh}:\n{script}");
    }
    let (ok, stdout, stderr) = shell(
        &h,
        "bash",
        "set -e; source <(parhelia completions bash); complete -p parhelia",
    );
    assert!(
        ok && stdout.contains("_clap_complete_parhelia"),
        "{stdout}\n{stderr}"
    );
    let zsh = which::which("zsh").expect("zsh is installed (scripts/install-deps)");
    let (ok, stdout, stderr) = shell(
        &h,
        zsh.to_str().unwrap(),
        "autoload -U compinit && compinit -u && source <(parhelia completions zsh) \
         && (( $+_comps[parhelia] )) && echo registered",
    );
    assert!(ok && stdout.contains("registered"), "{stdout}\n{stderr}");
}

#[test]
fn tab_completes_commands_aliases_and_recorded_ids() {
    let h = Harness::new(Script::new([]));
    let task = h.ok(&["submit", "Later", "--no-dispatch"]);
    let task = task.lines().next().unwrap().trim().to_string();

    let subcommands = bash_complete(&h, "parhelia su");
    assert!(subcommands.lines().any(|l| l == "submit"), "{subcommands}");
    let ids = bash_complete(&h, "parhelia task show ''");
    assert!(ids.lines().any(|l| l == task), "{ids}");
    // Session arguments offer task ids too (they take either).
    let ids = bash_complete(&h, "parhelia attach task-");
    assert!(ids.lines().any(|l| l == task), "{ids}");
    let ids = bash_complete(&h, "parhelia s logs ''");
    assert!(ids.lines().any(|l| l == task), "{ids}");
}

#[test]
fn man_pages_render() {
    let h = Harness::new(Script::new([]));
    let page = h.ok(&["man"]);
    assert!(
        page.starts_with(".ie") || page.contains(".TH parhelia"),
        "{page}"
    );
    assert!(page.contains("submit"), "{page}");
    let dir = h.root().join("man");
    h.ok(&["man", "--out", dir.to_str().unwrap()]);
    for page in ["parhelia.1", "parhelia-task.1", "parhelia-task-create.1"] {
        assert!(dir.join(page).is_file(), "{page} missing");
    }
}
