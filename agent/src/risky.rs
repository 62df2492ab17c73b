//! Which tool calls are risky enough to checkpoint before they run.
//!
//! Pure: a PreToolUse payload's tool name and input in, a reason out. The
//! list errs on the side of checkpointing: a needless checkpoint costs a
//! little time; a missed one can cost the session's work.

/// Why a tool call is risky, or `None`. Only shell commands are inspected:
/// Claude Code's file tools change one file, which the next checkpoint keeps.
pub fn risky_reason(tool_name: &str, command: Option<&str>) -> Option<&'static str> {
    if tool_name != "Bash" {
        return None;
    }
    let command = command?;
    if command.contains(crate::hooks::CUT_MARKER) {
        // Too long to forward whole: what was left out cannot be judged.
        return Some("a command too long to read whole");
    }
    risky_command(command)
}

/// Why a shell command is risky, or `None`.
pub fn risky_command(command: &str) -> Option<&'static str> {
    // Normalise whitespace so `rm  -rf` and `git   reset` match too.
    let words: Vec<&str> = command.split_whitespace().collect();
    let joined = words.join(" ");
    let has = |needle: &str| joined.contains(needle);
    for (index, word) in words.iter().enumerate() {
        let rest = &words[index + 1..];
        if *word == "rm" || word.ends_with("/rm") {
            let recursive = rest.iter().take_while(|w| w.starts_with('-')).any(|flag| {
                *flag == "--recursive" || (!flag.starts_with("--") && flag.contains(['r', 'R']))
            });
            if recursive {
                return Some("recursive rm");
            }
        }
    }
    if has("git reset --hard") || (has("git reset") && has("--hard")) {
        return Some("git reset --hard");
    }
    if has("git push") && (has("--force") || has(" -f") || has("--force-with-lease")) {
        return Some("git push --force");
    }
    if has("git clean")
        && words
            .iter()
            .any(|w| w.starts_with('-') && !w.starts_with("--") && w.contains('f'))
    {
        return Some("git clean -f");
    }
    if has("git checkout -- ") || has("git checkout .") || has("git restore ") {
        return Some("git checkout/restore discards changes");
    }
    if has("git rebase")
        || has("git filter-branch")
        || has("git branch -D")
        || has("git stash drop")
        || has("git stash clear")
    {
        return Some("git history rewrite");
    }
    if has("find ") && has(" -delete") {
        return Some("find -delete");
    }
    if words
        .first()
        .is_some_and(|w| *w == "mv" || *w == "dd" || *w == "truncate" || w.starts_with("mkfs"))
    {
        return Some("overwriting file operation");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn risky_commands_are_recognised() {
        let risky = [
            "rm -rf build",
            "rm -r src",
            "rm  -Rf /tmp/x",
            "rm --recursive x",
            "cd a && rm -fr b",
            "/bin/rm -rf x",
            "git reset --hard HEAD~1",
            "git reset HEAD~2 --hard",
            "git push --force origin main",
            "git push -f",
            "git push --force-with-lease",
            "git clean -fdx",
            "git checkout -- .",
            "git restore src/main.rs",
            "git rebase -i main",
            "git branch -D feature",
            "git stash drop",
            "find . -name '*.o' -delete",
            "mv a.txt b.txt",
            "dd if=/dev/zero of=disk.img",
        ];
        for command in risky {
            assert!(risky_command(command).is_some(), "{command}");
        }
    }

    #[test]
    fn ordinary_commands_are_not() {
        let fine = [
            "ls -la",
            "cargo test",
            "rm file.txt",
            "rm -f file.txt",
            "git status",
            "git push origin main",
            "git commit -am 'rm -rf mention in message is not a command'",
            "echo hi",
            "grep -r reset src",
        ];
        for command in fine {
            assert_eq!(risky_command(command), None, "{command}");
        }
    }

    #[test]
    fn only_bash_is_inspected() {
        assert_eq!(risky_reason("Bash", Some("rm -rf /")), Some("recursive rm"));
        assert_eq!(risky_reason("Write", Some("rm -rf /")), None);
        assert_eq!(risky_reason("Bash", None), None);
    }
}
