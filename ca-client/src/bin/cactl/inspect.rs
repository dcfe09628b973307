//! `inspect`: decode a certificate, chain, CSR, CRL (PEM or DER) or SPIFFE bundle (JSON).

use std::path::Path;

use serde_json::Value;

use ca_client::files;

use crate::args::Cli;
use crate::output;

pub fn run(cli: &Cli, file: &Path) -> anyhow::Result<()> {
    let bytes = files::read(file)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let items = ca_client::inspect::describe(&bytes, now)?;
    let human = || {
        let described: Vec<String> = items.iter().map(|item| human(item, 0)).collect();
        described.join("\n")
    };
    output::either(cli.output, Value::Array(items.clone()), human);
    Ok(())
}

/// Indented `key  value` lines of a JSON object, for people.
fn human(value: &Value, indent: usize) -> String {
    let pad = " ".repeat(indent);
    let mut out = String::new();
    for (key, v) in value.as_object().into_iter().flatten() {
        match v {
            Value::Array(items) if items.iter().any(Value::is_object) => {
                out.push_str(&format!("{pad}{key}:\n"));
                for item in items {
                    out.push_str(&human(item, indent + 2));
                    out.push('\n');
                }
            }
            Value::Array(items) => {
                let list: Vec<String> = items.iter().map(output::text).collect();
                out.push_str(&format!("{pad}{key:<16} {}\n", list.join(", ")));
            }
            other => out.push_str(&format!("{pad}{key:<16} {}\n", output::text(other))),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_objects_are_indented_and_lists_joined() {
        let value = serde_json::json!({
            "a": "x",
            "b": [1, "two"],
            "c": [{"d": null}],
        });
        assert_eq!(
            human(&value, 0),
            "a                x\nb                1, two\nc:\n  d                \n\n"
        );
    }
}
