//! Caller-controlled text on its way into a log line, an audit row, an error message or a
//! metric label: bounded and escaped, so a caller can neither grow what we store without limit
//! nor forge lines (CWE-117). Control characters (C0, DEL, C1) and the Unicode bidirectional
//! controls are written as `\u{..}`, a backslash as `\\`; past the limit the text is cut on a
//! character boundary (the limit counts what is written, escapes included) and the number of
//! bytes left out is said.

use std::fmt;

/// Longest caller-controlled text in a log line or an error message, in characters.
pub const LOG_CHARS: usize = 128;

/// `text`, escaped and cut after `max_chars` characters (the cut is marked `…[+N bytes]`).
pub fn bounded(text: &str, max_chars: usize) -> String {
    Bounded(text, max_chars).to_string()
}

/// A lazily escaped [`bounded`] view, for `tracing` fields: `caller = %Bounded(s, LOG_CHARS)`.
#[derive(Debug, Clone, Copy)]
pub struct Bounded<'a>(pub &'a str, pub usize);

impl fmt::Display for Bounded<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Bounded(text, max_chars) = *self;
        // `max_chars` bounds what is written (escapes count at their written length).
        let mut written = 0;
        let mut escaped = String::new();
        for (at, c) in text.char_indices() {
            escaped.clear();
            if c == '\\' {
                escaped.push_str("\\\\");
            } else if needs_escape(c) {
                escaped.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
            } else {
                escaped.push(c);
            }
            let width = escaped.chars().count();
            if written + width > max_chars {
                return write!(f, "…[+{} bytes]", text.len() - at);
            }
            f.write_str(&escaped)?;
            written += width;
        }
        Ok(())
    }
}

/// Characters that could end, rewrite or reorder a line in a terminal, a log viewer or a table.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}')
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

#[cfg(test)]
mod tests {
    use super::bounded;

    #[test]
    fn control_characters_never_pass() {
        let forged = "a\nb\rc\u{1b}[31md\u{0}e\u{7f}f\u{85}g\u{202e}h\\i";
        let out = bounded(forged, 1000);
        assert_eq!(
            out,
            "a\\u{a}b\\u{d}c\\u{1b}[31md\\u{0}e\\u{7f}f\\u{85}g\\u{202e}h\\\\i"
        );
        assert!(!out.chars().any(char::is_control));
    }

    #[test]
    fn long_text_is_cut_and_says_how_much() {
        let long = "é".repeat(300);
        let out = bounded(&long, 10);
        assert_eq!(out, format!("{}…[+{} bytes]", "é".repeat(10), 290 * 2));
        // Escapes count at their written length: the bound is on what is written.
        let newlines = "\n".repeat(100);
        let out = bounded(&newlines, 20);
        assert_eq!(out, format!("{}…[+96 bytes]", "\\u{a}".repeat(4)));
        assert_eq!(bounded("short", 10), "short");
        assert_eq!(bounded("exactly10!", 10), "exactly10!");
    }
}
