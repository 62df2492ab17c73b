//! Text that came from a session, made safe to print on a terminal.
//!
//! A session controls much of what the CLI prints: checkpoint messages,
//! triggers and metadata, file paths inside checkpoints, task results and
//! error messages, event text. Printed raw, an escape sequence in any of them
//! drives the user's terminal (moves the cursor, rewrites earlier lines,
//! retitles the window, on some terminals answers back or writes files). Every
//! text front end passes such strings through one of the two functions here;
//! JSON output does not need them (serde escapes control characters).
//!
//! What is escaped: the C0 controls (U+0000..U+001F, ESC included), DEL
//! (U+007F), the C1 controls (U+0080..U+009F, which some terminals obey as
//! 8-bit CSI/OSC), and the bidirectional-override and line-separator
//! characters that make text display differently from what it is. Each is
//! shown as a visible escape: `\x1b`, `\x7f`, `\u{9b}`, `\u{202e}`; newline,
//! tab and carriage return as `\n`, `\t`, `\r`. A backslash is left alone (so
//! ordinary paths print unchanged): the output is for reading, not parsing.

use std::borrow::Cow;

/// Escapes every control character, newline and tab included: for values
/// shown on one line (a path, a message in a table, a field).
pub fn escape_untrusted(text: &str) -> Cow<'_, str> {
    escape(text, false)
}

/// Escapes control characters but keeps newlines and tabs (a `\r\n` line end
/// becomes `\n`): for multi-line content such as a task result, a diff, or a
/// rendered event.
pub fn escape_untrusted_text(text: &str) -> Cow<'_, str> {
    escape(text, true)
}

/// Whether `c` must not reach a terminal as itself.
fn is_unsafe(c: char, multiline: bool) -> bool {
    match c {
        '\n' | '\t' => !multiline,
        '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}' => true,
        // Arabic letter mark, LRM/RLM, line/paragraph separators, the
        // embedding/override controls and the isolates ("Trojan Source").
        '\u{061c}'
        | '\u{200e}'
        | '\u{200f}'
        | '\u{2028}'..='\u{202e}'
        | '\u{2066}'..='\u{2069}' => true,
        _ => false,
    }
}

fn escape(text: &str, multiline: bool) -> Cow<'_, str> {
    if !text.chars().any(|c| is_unsafe(c, multiline)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if !is_unsafe(c, multiline) {
            out.push(c);
            continue;
        }
        match c {
            '\r' if multiline && chars.peek() == Some(&'\n') => {}
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x80 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
        }
    }
    Cow::Owned(out)
}

/// Escapes every string inside a JSON value (keys included), for metadata
/// that a text view formats field by field.
pub fn escape_json_strings(value: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(s) => Value::String(escape_untrusted(s).into_owned()),
        Value::Array(items) => Value::Array(items.iter().map(escape_json_strings).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (escape_untrusted(k).into_owned(), escape_json_strings(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Whether a character may appear in escaped output.
    fn allowed(c: char, multiline: bool) -> bool {
        let n = c as u32;
        let control = n < 0x20 || (0x7f..=0x9f).contains(&n);
        !control || (multiline && (c == '\n' || c == '\t'))
    }

    #[test]
    fn escapes_terminal_sequences_visibly() {
        assert_eq!(
            escape_untrusted("ok\x1b[2J\x1b]0;pwned\x07done"),
            "ok\\x1b[2J\\x1b]0;pwned\\x07done"
        );
        assert_eq!(escape_untrusted("a\nb\tc\rd"), "a\\nb\\tc\\rd");
        assert_eq!(escape_untrusted_text("a\r\nb\tc\rd\n"), "a\nb\tc\\rd\n");
        assert_eq!(
            escape_untrusted("8-bit csi \u{9b}31m"),
            "8-bit csi \\u{9b}31m"
        );
        assert_eq!(escape_untrusted("del\u{7f}"), "del\\x7f");
        assert_eq!(escape_untrusted("txt.\u{202e}exe"), "txt.\\u{202e}exe");
        assert_eq!(escape_untrusted("\0"), "\\x00");
    }

    #[test]
    fn clean_text_is_borrowed_unchanged() {
        for s in [
            "",
            "plain",
            "src/main.rs",
            "naïve — ünïcode ✓",
            "back\\slash",
        ] {
            assert!(matches!(escape_untrusted(s), Cow::Borrowed(_)), "{s}");
            assert_eq!(escape_untrusted(s), s);
        }
        assert!(matches!(
            escape_untrusted_text("two\nlines\twith tab"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn json_strings_are_escaped_keys_included() {
        let v = serde_json::json!({"branch\u{1b}": ["m\u{1b}[1m", 3, null], "n": {"x": "\u{9b}"}});
        let escaped = escape_json_strings(&v).to_string();
        assert!(!escaped.contains('\u{1b}') && !escaped.contains('\u{9b}'));
        assert!(escaped.contains("m\\\\x1b[1m"), "{escaped}");
    }

    proptest! {
        #[test]
        fn single_line_output_has_no_control_characters(s in any::<String>()) {
            let out = escape_untrusted(&s);
            prop_assert!(out.chars().all(|c| allowed(c, false)), "{:?}", out);
        }

        #[test]
        fn multiline_output_keeps_only_newline_and_tab(s in any::<String>()) {
            let out = escape_untrusted_text(&s);
            prop_assert!(out.chars().all(|c| allowed(c, true)), "{:?}", out);
        }

        #[test]
        fn control_heavy_input_is_neutralised(
            parts in proptest::collection::vec(
                prop_oneof![
                    Just("\u{1b}[31m".to_string()),
                    Just("\u{1b}]52;c;aGk=\u{7}".to_string()),
                    Just("\u{9b}2J".to_string()),
                    Just("\r\n".to_string()),
                    Just("\u{0}".to_string()),
                    "[a-z/ .]{0,8}",
                ],
                0..20,
            )
        ) {
            let s: String = parts.concat();
            for multiline in [false, true] {
                let out = if multiline { escape_untrusted_text(&s) } else { escape_untrusted(&s) };
                prop_assert!(out.chars().all(|c| allowed(c, multiline)), "{:?}", out);
                // Nothing visible is lost: every printable character survives in order.
                let printable = |t: &str| t.chars().filter(|c| c.is_alphanumeric()).count();
                prop_assert!(printable(&out) >= printable(&s));
            }
        }
    }
}
