//! [`ConfigError`]: why a service config was rejected, naming the JSON path
//! of the offending value.

use std::fmt;

/// Why a service config was rejected.
///
/// Its [`Display`](fmt::Display) form is `path: rule`, e.g.
/// `methodConfig[1].retryPolicy.initialBackoff: "0s" must be > 0`, or, for
/// text that is not JSON at all,
/// `invalid JSON at line L column C: <parser message>`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    path: String,
    message: String,
    /// Line and column (both 1-based) of a JSON syntax error.
    position: Option<(usize, usize)>,
}

impl ConfigError {
    pub(super) fn new(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            path: path.into(),
            message: message.into(),
            position: None,
        }
    }

    pub(super) fn syntax(err: serde_json::Error) -> ConfigError {
        let (line, column) = (err.line(), err.column());
        let full = err.to_string();
        let suffix = format!(" at line {line} column {column}");
        let message = full.strip_suffix(&suffix).unwrap_or(&full).to_string();
        ConfigError {
            path: String::new(),
            message,
            position: Some((line, column)),
        }
    }

    /// The JSON path of the rejected value, e.g.
    /// `methodConfig[0].retryPolicy.retryableStatusCodes[2]`. Empty when the
    /// document as a whole is rejected (not JSON, or not an object).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// What is wrong, without the path.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The 1-based line of a JSON syntax error; `None` for other errors.
    pub fn line(&self) -> Option<usize> {
        self.position.map(|(line, _)| line)
    }

    /// The 1-based column of a JSON syntax error; `None` for other errors.
    pub fn column(&self) -> Option<usize> {
        self.position.map(|(_, column)| column)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, column)) => write!(
                f,
                "invalid JSON at line {line} column {column}: {}",
                self.message
            ),
            None if self.path.is_empty() => f.write_str(&self.message),
            None => write!(f, "{}: {}", self.path, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}
