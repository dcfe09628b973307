//! An error with its whole chain of causes on one line, for logs and start failures. Errors
//! keep their causes as `#[source]` (their own message never repeats the cause), so a log line
//! that wants the full story writes `error = %Chain(&e)`.

use std::fmt;

/// `outer: cause: root cause`.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'a));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(error) = cause {
            write!(f, ": {error}")?;
            cause = error.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Chain;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn every_cause_is_written_once_in_order() {
        let error = Outer(std::io::Error::other("root"));
        assert_eq!(Chain(&error).to_string(), "outer: root");
    }
}
