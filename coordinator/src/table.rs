//! The CLI's tables and colors: one place that decides how wide a table may
//! be and whether it may carry color, and lays tables out through
//! comfy-table.
//!
//! Layout: columns are separated by spaces (no borders), headers as before.
//! Ids and short values (statuses, costs, ages) are never cut: a column is
//! as wide as its longest value, and at least the width it had in the old
//! 80-column layout, so a listing of ordinary values reads as it always did.
//! Only free text (a prompt, a message) gives way: on a terminal it is cut
//! to the terminal's width with an ellipsis; anywhere else (a pipe, a file,
//! `parhelia mcp-server`) nothing is cut, so a script gets whole values.
//!
//! Color: `--color auto|always|never`. `auto` colors only a terminal, and
//! not when `NO_COLOR` is set to anything non-empty; `CLICOLOR_FORCE`
//! (non-empty, not `0`) forces it on in `auto`. Color marks meaning only:
//! failed/lost states red, running/busy yellow, completed/healthy green, and
//! the `error[Ennn]` prefix red. `--json` output never goes through here.
//!
//! Cell text comes from sessions (prompts, messages): it is escaped
//! ([`crate::term::escape_untrusted`]) before color is added, so the only
//! escape sequences a table carries are the ones this module writes.
//!
//! Pure: the layout is decided from a [`Look`] the caller passes. What this process's
//! stdout and stderr are (a terminal? which `--color`?) is detected once at start by
//! [`crate::output_look`].

use comfy_table::{
    Cell as ComfyCell, CellAlignment, Color, ColumnConstraint, ContentArrangement, Row, TableStyle,
    Width,
};

use crate::term::escape_untrusted;

/// `--color`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    /// Color on a terminal, unless `NO_COLOR` is set (`CLICOLOR_FORCE` forces it)
    #[default]
    Auto,
    /// Always color (even into a pipe)
    Always,
    /// Never color
    Never,
}

/// Whether output may be colored: `choice`, the environment (`env` looks
/// a variable up) and whether the stream is a terminal.
pub fn color_enabled(
    choice: ColorChoice,
    env: impl Fn(&str) -> Option<String>,
    is_terminal: bool,
) -> bool {
    let set = |name: &str| env(name).is_some_and(|v| !v.is_empty());
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto if set("NO_COLOR") => false,
        ColorChoice::Auto
            if set("CLICOLOR_FORCE") && env("CLICOLOR_FORCE").as_deref() != Some("0") =>
        {
            true
        }
        ColorChoice::Auto => is_terminal && env("TERM").as_deref() != Some("dumb"),
    }
}

/// How wide a table may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fit {
    /// No limit: nothing is cut (not a terminal).
    Whole,
    /// The terminal's width (comfy-table asks the terminal stdout is).
    Terminal,
    /// A fixed width (tests).
    Columns(u16),
}

/// How text output looks: its width and whether it carries color.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Look {
    pub fit: Fit,
    pub color: bool,
}

impl Look {
    /// Whole values, no color: a pipe, a file, a test, the MCP server.
    pub const PLAIN: Look = Look {
        fit: Fit::Whole,
        color: false,
    };
}

/// What a colored word means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tone {
    /// Failed, lost, damaged.
    Bad,
    /// Running, busy, degraded: in progress or needs watching.
    Busy,
    /// Completed, healthy.
    Good,
}

impl Tone {
    fn color(self) -> Color {
        match self {
            Tone::Bad => Color::Red,
            Tone::Busy => Color::Yellow,
            Tone::Good => Color::Green,
        }
    }

    fn sgr(self) -> &'static str {
        match self {
            Tone::Bad => "\x1b[31m",
            Tone::Busy => "\x1b[33m",
            Tone::Good => "\x1b[32m",
        }
    }
}

/// The tone of a status, state or health word, if it has one.
pub fn status_tone(word: &str) -> Option<Tone> {
    match word {
        "failed" | "lost" | "dead" | "unhealthy" | "orphaned" | "DAMAGED" | "error"
        | "interrupted" => Some(Tone::Bad),
        "running" | "busy" | "starting" | "stopping" | "degraded" | "dispatched" | "resuming" => {
            Some(Tone::Busy)
        }
        "completed" | "healthy" | "succeeded" => Some(Tone::Good),
        _ => None,
    }
}

/// `text` in `tone`'s color when `color` (for text outside tables, such as
/// the `error[Ennn]` prefix).
pub fn paint(text: &str, tone: Tone, color: bool) -> String {
    if color {
        format!("{}{text}\x1b[0m", tone.sgr())
    } else {
        text.to_string()
    }
}

/// What a column holds, which decides whether it may be cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// An id or a short value: never cut, left-aligned.
    Whole,
    /// A number: never cut, right-aligned.
    Number,
    /// Free text: cut with an ellipsis to fit a terminal.
    Text,
}

#[derive(Clone, Debug)]
struct Column {
    header: &'static str,
    kind: Kind,
    /// The narrowest the content may be (the old fixed layout's width).
    min: u16,
    /// Spaces after the column (none after the last).
    gap: u16,
}

/// One cell: text (escaped when added) and an optional tone.
#[derive(Clone, Debug)]
pub struct Cell {
    text: String,
    tone: Option<Tone>,
}

impl Cell {
    /// A status-like word, colored by [`status_tone`].
    pub fn status(word: &str) -> Self {
        Self {
            text: escape_untrusted(word).into_owned(),
            tone: status_tone(word),
        }
    }

    pub fn toned(text: &str, tone: Option<Tone>) -> Self {
        Self {
            text: escape_untrusted(text).into_owned(),
            tone,
        }
    }
}

impl From<&str> for Cell {
    fn from(text: &str) -> Self {
        Self::toned(text, None)
    }
}

impl From<String> for Cell {
    fn from(text: String) -> Self {
        Self::toned(&text, None)
    }
}

impl From<&String> for Cell {
    fn from(text: &String) -> Self {
        Self::toned(text, None)
    }
}

/// A table under construction: columns, then rows.
#[derive(Clone, Debug)]
pub struct Table {
    columns: Vec<Column>,
    rows: Vec<Vec<Cell>>,
    gap: u16,
}

impl Table {
    /// A table whose columns are `gap` spaces apart.
    pub fn new(gap: u16) -> Self {
        Self {
            columns: Vec::new(),
            rows: Vec::new(),
            gap,
        }
    }

    fn push(mut self, header: &'static str, kind: Kind, min: u16) -> Self {
        let gap = self.gap;
        self.columns.push(Column {
            header,
            kind,
            min,
            gap,
        });
        self
    }

    /// An id or short value column, at least `min` wide; never cut.
    pub fn whole(self, header: &'static str, min: u16) -> Self {
        self.push(header, Kind::Whole, min)
    }

    /// A right-aligned number column, at least `min` wide; never cut.
    pub fn number(self, header: &'static str, min: u16) -> Self {
        self.push(header, Kind::Number, min)
    }

    /// A free-text column: cut with `…` when the table must fit a terminal.
    pub fn text(self, header: &'static str) -> Self {
        self.push(header, Kind::Text, 0)
    }

    /// Sets the gap after the last column added.
    pub fn gap(mut self, gap: u16) -> Self {
        if let Some(c) = self.columns.last_mut() {
            c.gap = gap;
        }
        self
    }

    pub fn row(&mut self, cells: Vec<Cell>) {
        debug_assert_eq!(cells.len(), self.columns.len());
        self.rows.push(cells);
    }

    /// The table as lines ending in `\n`, laid out for `look`.
    pub fn render_as(&self, look: Look) -> String {
        let mut t = comfy_table::Table::new();
        t.load_style(TableStyle::new());
        let fits = look.fit != Fit::Whole;
        match look.fit {
            Fit::Whole => {
                t.force_no_tty();
                t.set_content_arrangement(ContentArrangement::Disabled);
            }
            // comfy-table reads the width of the terminal stdout is.
            Fit::Terminal => {
                t.set_content_arrangement(ContentArrangement::Dynamic);
            }
            Fit::Columns(width) => {
                t.force_no_tty();
                t.set_width(width);
                t.set_content_arrangement(ContentArrangement::Dynamic);
            }
        }
        if look.color {
            t.enforce_styling();
            t.style_text_only();
        }
        t.set_header(self.columns.iter().map(|c| ComfyCell::new(c.header)));
        for cells in &self.rows {
            let mut row = Row::from(cells.iter().map(|cell| {
                let c = ComfyCell::new(&cell.text);
                match cell.tone {
                    Some(tone) if look.color => c.fg(tone.color()),
                    _ => c,
                }
            }));
            if fits {
                // Cut, not wrapped: one line per row.
                row.max_height(1);
            }
            t.add_row(row);
        }
        let widths = t.column_max_content_widths();
        let last = self.columns.len().saturating_sub(1);
        for (i, spec) in self.columns.iter().enumerate() {
            let Some(column) = t.column_mut(i) else {
                continue;
            };
            let gap = if i == last { 0 } else { spec.gap };
            column.set_padding((0, gap));
            if spec.kind == Kind::Number {
                column.set_cell_alignment(CellAlignment::Right);
            }
            let content = widths.get(i).copied().unwrap_or(0).max(spec.min);
            match spec.kind {
                Kind::Whole | Kind::Number => {
                    column.set_constraint(ColumnConstraint::Absolute(Width::Fixed(content + gap)));
                }
                // At least a few characters of text, whatever the terminal.
                Kind::Text if fits => {
                    // One word: cut at the width, not at the last space.
                    column.set_delimiter('\u{0}');
                    column.set_constraint(ColumnConstraint::LowerBoundary(Width::Fixed(
                        content.min(12) + gap,
                    )));
                }
                Kind::Text => {}
            }
        }
        let mut out = String::new();
        for line in t.lines() {
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn color_follows_the_flag_no_color_and_the_terminal() {
        use ColorChoice::*;
        assert!(color_enabled(Auto, env(&[]), true));
        assert!(!color_enabled(Auto, env(&[]), false));
        assert!(!color_enabled(Auto, env(&[("NO_COLOR", "1")]), true));
        // An empty NO_COLOR does not count (no-color.org).
        assert!(color_enabled(Auto, env(&[("NO_COLOR", "")]), true));
        assert!(color_enabled(Auto, env(&[("CLICOLOR_FORCE", "1")]), false));
        assert!(!color_enabled(Auto, env(&[("CLICOLOR_FORCE", "0")]), false));
        assert!(!color_enabled(
            Auto,
            env(&[("NO_COLOR", "1"), ("CLICOLOR_FORCE", "1")]),
            true
        ));
        assert!(!color_enabled(Auto, env(&[("TERM", "dumb")]), true));
        assert!(color_enabled(Always, env(&[("NO_COLOR", "1")]), false));
        assert!(!color_enabled(Never, env(&[("CLICOLOR_FORCE", "1")]), true));
    }

    fn sample() -> Table {
        let mut t = Table::new(2)
            .whole("ID", 13)
            .whole("STATUS", 11)
            .text("PROMPT");
        t.row(vec![
            "task-1a2b3c4d".into(),
            Cell::status("failed"),
            "Add a hello.txt that says hi, then run the whole test suite and fix every failure"
                .into(),
        ]);
        t.row(vec![
            "task-0000000000000000000000000042".into(),
            Cell::status("completed"),
            "short".into(),
        ]);
        t
    }

    #[test]
    fn whole_values_when_not_a_terminal() {
        insta::assert_snapshot!(sample().render_as(Look::PLAIN));
    }

    #[test]
    fn text_is_cut_to_the_width_and_ids_never() {
        for width in [60u16, 120] {
            let text = sample().render_as(Look {
                fit: Fit::Columns(width),
                color: false,
            });
            assert!(
                text.lines().all(|l| l.chars().count() <= width as usize),
                "{text}"
            );
            assert!(text.contains("task-0000000000000000000000000042"), "{text}");
            insta::assert_snapshot!(format!("width_{width}"), text);
        }
    }

    #[test]
    fn color_only_when_asked() {
        let plain = sample().render_as(Look {
            fit: Fit::Columns(80),
            color: false,
        });
        assert!(!plain.contains('\u{1b}'), "{plain:?}");
        let colored = sample().render_as(Look {
            fit: Fit::Columns(80),
            color: true,
        });
        assert!(colored.contains("\u{1b}["), "{colored:?}");
        // Only the status words: ids and text stay uncolored, and the
        // layout is the same once the escapes are taken out.
        let stripped = regex::Regex::new("\u{1b}\\[[0-9;]*m")
            .unwrap()
            .replace_all(&colored, "");
        assert_eq!(stripped, plain);
        assert_eq!(paint("error[E101]", Tone::Bad, false), "error[E101]");
        assert_eq!(
            paint("error[E101]", Tone::Bad, true),
            "\u{1b}[31merror[E101]\u{1b}[0m"
        );
    }

    #[test]
    fn session_text_is_escaped_before_color() {
        let mut t = Table::new(2).whole("ID", 2).text("MESSAGE");
        t.row(vec!["a".into(), "x\u{1b}[2Jy".into()]);
        let text = t.render_as(Look {
            fit: Fit::Whole,
            color: true,
        });
        assert!(!text.contains('\u{1b}'), "{text:?}");
        assert!(text.contains("x\\x1b[2Jy"), "{text}");
    }
}
