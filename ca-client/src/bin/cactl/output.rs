//! What `--output` prints: the server's JSON as it came, or lines for people (tables and
//! `key value` lines). Formatting returns text, so it can be tested; callers print it.

use ca_client::Answer;
use serde_json::Value;

use crate::args::Output;

/// Prints an admin answer: with `--output json` the JSON the server sent, unchanged; for people,
/// whatever `human` makes of the typed body.
pub fn answer<T>(output: Output, answer: &Answer<T>, human: impl FnOnce(&T) -> String) {
    match output {
        Output::Json => println!("{}", answer.json),
        Output::Human => print!("{}", human(&answer.body)),
    }
}

/// Prints `json` (made here, not by the server) or `human`.
pub fn either(output: Output, json: Value, human: impl FnOnce() -> String) {
    match output {
        Output::Json => println!("{json}"),
        Output::Human => print!("{}", human()),
    }
}

/// `key value` lines with the key padded to `width`; fields without a value are left out.
pub fn fields(width: usize, fields: &[(&str, Option<String>)]) -> String {
    fields
        .iter()
        .filter_map(|(key, value)| {
            value
                .as_ref()
                .map(|value| format!("{key:<width$} {value}\n"))
        })
        .collect()
}

/// A table: a header row, then one row per item. Columns are (header, width); a width of 0 is
/// not padded; trailing blanks are trimmed.
pub fn table(columns: &[(&str, usize)], rows: impl IntoIterator<Item = Vec<String>>) -> String {
    let header = columns.iter().map(|(header, _)| (*header).to_owned());
    std::iter::once(header.collect())
        .chain(rows)
        .map(|cells: Vec<String>| {
            let line: Vec<String> = cells
                .iter()
                .zip(columns)
                .map(|(cell, (_, width))| format!("{cell:<width$}"))
                .collect();
            format!("{}\n", line.join(" ").trim_end())
        })
        .collect()
}

/// A JSON value as a person reads it: strings bare, `null` empty.
pub fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_pad_columns_and_trim_line_ends() {
        let out = table(
            &[("ID", 4), ("NAME", 6), ("NOTE", 0)],
            [
                vec!["1".to_owned(), "web".to_owned(), String::new()],
                vec!["22".to_owned(), "longer-name".to_owned(), "x".to_owned()],
            ],
        );
        assert_eq!(out, "ID   NAME   NOTE\n1    web\n22   longer-name x\n");
    }

    #[test]
    fn fields_leave_out_absent_values_and_keep_empty_ones() {
        let out = fields(
            6,
            &[
                ("a", Some("1".to_owned())),
                ("b", None),
                ("c", Some(String::new())),
            ],
        );
        assert_eq!(out, "a      1\nc      \n");
    }

    #[test]
    fn text_of_json() {
        assert_eq!(text(&serde_json::json!("s")), "s");
        assert_eq!(text(&Value::Null), "");
        assert_eq!(text(&serde_json::json!(3)), "3");
        assert_eq!(text(&serde_json::json!(true)), "true");
    }
}
