//! `parhelia help TOPIC` guides and `parhelia examples [TOPIC]`.
//!
//! The texts are files beside this module (`guides/*.txt`, `guides/examples/*.sh`),
//! compiled in with `include_str!`, so they read as plain text in the repository.
//! They cannot rot silently: a unit test parses every `parhelia …` line of every guide
//! and example with the CLI's own clap definition, and `tests/tests/e2e/examples.rs`
//! runs every example script against the local backend and the scripted model (the
//! Modal and GPU ones through `--dry-run` / `--estimate-only`).

use anyhow::Result;
use clap::CommandFactory;

use super::Cli;
use crate::error::coded;
use crate::error_codes;

/// A `parhelia help TOPIC` guide.
pub struct Guide {
    pub topic: &'static str,
    pub text: &'static str,
}

/// The guides, in the order `parhelia help` lists them (the seeds' topics).
pub const GUIDES: &[Guide] = &[
    Guide {
        topic: "task",
        text: include_str!("guides/task.txt"),
    },
    Guide {
        topic: "session",
        text: include_str!("guides/session.txt"),
    },
    Guide {
        topic: "checkpoint",
        text: include_str!("guides/checkpoint.txt"),
    },
    Guide {
        topic: "budget",
        text: include_str!("guides/budget.txt"),
    },
    Guide {
        topic: "container",
        text: include_str!("guides/container.txt"),
    },
    Guide {
        topic: "gpu",
        text: include_str!("guides/gpu.txt"),
    },
    Guide {
        topic: "modal",
        text: include_str!("guides/modal.txt"),
    },
    Guide {
        topic: "mcp",
        text: include_str!("guides/mcp.txt"),
    },
];

/// A `parhelia examples TOPIC` script.
pub struct Example {
    pub topic: &'static str,
    pub summary: &'static str,
    pub script: &'static str,
}

/// The example scripts. Each runs as written under `sh -e` (the e2e test does);
/// lines starting `# $ parhelia` are shown, not run (they wait for a terminal or a
/// client), and are checked by parsing only.
pub const EXAMPLES: &[Example] = &[
    Example {
        topic: "gpu",
        summary: "price and plan GPU tasks (A10G, A100, H100:2) on Modal",
        script: include_str!("guides/examples/gpu.sh"),
    },
    Example {
        topic: "checkpoint",
        summary: "list and compare checkpoints, resume from one, roll back",
        script: include_str!("guides/examples/checkpoint.sh"),
    },
    Example {
        topic: "budget",
        summary: "ceilings, per-task caps, estimates and spend history",
        script: include_str!("guides/examples/budget.sh"),
    },
    Example {
        topic: "parallel",
        summary: "queue several tasks, dispatch them together, follow them",
        script: include_str!("guides/examples/parallel.sh"),
    },
    Example {
        topic: "interactive",
        summary: "an interactive session: attach, send, logs, kill",
        script: include_str!("guides/examples/interactive.sh"),
    },
    Example {
        topic: "modal",
        summary: "set up Modal and plan a task on it",
        script: include_str!("guides/examples/modal.sh"),
    },
    Example {
        topic: "mcp",
        summary: "Parhelia as an MCP server for Claude Code",
        script: include_str!("guides/examples/mcp.sh"),
    },
];

pub fn guide(topic: &str) -> Option<&'static Guide> {
    GUIDES.iter().find(|g| g.topic.eq_ignore_ascii_case(topic))
}

pub fn example(topic: &str) -> Option<&'static Example> {
    EXAMPLES
        .iter()
        .find(|e| e.topic.eq_ignore_ascii_case(topic))
}

/// A guide as `parhelia help TOPIC` prints it: the text, then (for a topic that
/// is also a command) that command's subcommands, from clap, so the list is
/// always the real one.
pub fn guide_text(guide: &Guide) -> String {
    let mut out = guide.text.trim_end().to_string();
    out.push('\n');
    let command = Cli::command();
    if let Some(sub) = command.find_subcommand(guide.topic) {
        let visible: Vec<_> = sub.get_subcommands().filter(|c| !c.is_hide_set()).collect();
        if !visible.is_empty() {
            out.push_str(&format!(
                "\nCommands (parhelia {} COMMAND --help for each):\n",
                guide.topic
            ));
            for c in visible {
                let about = c.get_about().map(|a| a.to_string()).unwrap_or_default();
                let line = format!(
                    "  {:<10} {}",
                    c.get_name(),
                    about.lines().next().unwrap_or("")
                );
                out.push_str(&fit(&line, 80));
                out.push('\n');
            }
        }
    }
    out
}

/// `line` cut to `width` columns, with `…` where it was cut.
fn fit(line: &str, width: usize) -> String {
    if line.chars().count() <= width {
        return line.to_string();
    }
    let mut cut: String = line.chars().take(width - 1).collect();
    cut.push('…');
    cut
}

/// `parhelia examples` with no topic: what there is.
pub fn examples_listing() -> String {
    let mut out = String::from("Runnable examples (parhelia examples TOPIC):\n");
    for e in EXAMPLES {
        out.push_str(&format!("  {:<12} {}\n", e.topic, e.summary));
    }
    out.push_str("\nGuides: parhelia help ");
    out.push_str(&GUIDES.iter().map(|g| g.topic).collect::<Vec<_>>().join("|"));
    out.push('\n');
    out
}

/// `parhelia examples [TOPIC]`.
pub fn examples(topic: Option<&str>) -> Result<i32> {
    let Some(topic) = topic else {
        out!("{}", examples_listing());
        return Ok(0);
    };
    let Some(example) = example(topic) else {
        let known: Vec<_> = EXAMPLES.iter().map(|e| e.topic).collect();
        return Err(coded(
            error_codes::HELP_TOPIC_NOT_FOUND,
            format!("no examples for `{topic}`; there are: {}", known.join(", ")),
        ));
    };
    out!("{}", example.script);
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// The `parhelia …` command lines of a text: lines (after indentation, and after
    /// `# $ ` in an example script) that start with `parhelia `, with a trailing
    /// `# comment` dropped. `$VAR` and `"$VAR"` stand for an id in example scripts.
    fn command_lines(text: &str) -> Vec<String> {
        // A line ending in `\` goes on on the next.
        text.replace("\\\n", " ")
            .lines()
            .map(str::trim_start)
            .map(|l| l.strip_prefix("# $ ").unwrap_or(l))
            .map(|l| {
                // `VAR=$(parhelia …)` assigns what a command prints.
                match l.find("$(parhelia ") {
                    Some(at) => l[at + 2..].trim_end_matches(')').to_string(),
                    None => l.to_string(),
                }
            })
            .filter(|l| l.starts_with("parhelia "))
            .map(|l| {
                let l = l.split(" | ").next().unwrap_or(&l).to_string();
                match l.find("  #").or_else(|| l.find(" # ")) {
                    Some(at) => l[..at].trim_end().to_string(),
                    None => l.trim_end().to_string(),
                }
            })
            .collect::<Vec<_>>()
    }

    fn parse(line: &str) -> std::result::Result<(), String> {
        let words = shlex::split(line).ok_or_else(|| format!("cannot split: {line}"))?;
        let words: Vec<String> = words
            .into_iter()
            .map(|w| match w.strip_prefix('$') {
                // A shell variable stands for an id.
                Some(var) if !var.is_empty() => "task-1a2b3c4d".to_string(),
                _ => w,
            })
            .collect();
        Cli::try_parse_from(&words)
            .map(|_| ())
            .map_err(|e| format!("`{line}`:\n{e}"))
    }

    #[test]
    fn every_command_in_every_guide_and_example_parses() {
        let mut failures = Vec::new();
        let mut count = 0;
        let texts = GUIDES
            .iter()
            .map(|g| (g.topic, g.text))
            .chain(EXAMPLES.iter().map(|e| (e.topic, e.script)));
        for (topic, text) in texts {
            let lines = command_lines(text);
            assert!(!lines.is_empty(), "{topic} names no command");
            for line in lines {
                count += 1;
                if let Err(e) = parse(&line) {
                    failures.push(format!("[{topic}] {e}"));
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        assert!(count > 100, "only {count} command lines found");
    }

    #[test]
    fn the_seeds_topics_all_have_guides_and_examples() {
        for topic in [
            "task",
            "session",
            "checkpoint",
            "budget",
            "container",
            "gpu",
            "modal",
            "mcp",
        ] {
            assert!(guide(topic).is_some(), "no guide for {topic}");
        }
        for topic in [
            "gpu",
            "checkpoint",
            "budget",
            "parallel",
            "interactive",
            "modal",
            "mcp",
        ] {
            assert!(example(topic).is_some(), "no examples for {topic}");
        }
    }

    #[test]
    fn guides_fit_80_columns() {
        for g in GUIDES {
            for line in guide_text(g).lines() {
                assert!(
                    line.chars().count() <= 80,
                    "{}: {} columns: {line}",
                    g.topic,
                    line.chars().count()
                );
            }
        }
        for e in EXAMPLES {
            for line in e.script.lines() {
                assert!(line.chars().count() <= 100, "{}: {line}", e.topic);
            }
        }
    }

    #[test]
    fn guide_snapshots() {
        for g in GUIDES {
            insta::assert_snapshot!(format!("guide_{}", g.topic), guide_text(g));
        }
    }

    #[test]
    fn example_snapshots() {
        insta::assert_snapshot!("examples_listing", examples_listing());
        for e in EXAMPLES {
            insta::assert_snapshot!(format!("examples_{}", e.topic), e.script);
        }
    }
}
