//! The client's error type; foreign errors are wrapped as text, never re-exported.

/// What went wrong on the client side.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("the server refused: {status} {code}: {message}")]
    Server {
        status: u16,
        code: String,
        message: String,
    },
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
    #[error("key generation failed: {0}")]
    Key(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid argument: {0}")]
    Argument(String),
}
