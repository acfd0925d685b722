//! Errors of the collector. Every variant carries the path, so a log line or a metric label
//! can say which file was bad; [`ErrorKind`] is the bounded label set used in
//! `stallwatch_source_errors_total{kind}`.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// A malformed kernel file: which line (1-based) and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line number, 0 when the error is not about one line.
    pub line: usize,
    /// What was wrong, in a short sentence fragment.
    pub msg: String,
}

impl ParseError {
    pub fn new(line: usize, msg: impl Into<String>) -> Self {
        ParseError {
            line,
            msg: msg.into(),
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.msg)
        } else {
            write!(f, "line {}: {}", self.line, self.msg)
        }
    }
}

impl std::error::Error for ParseError {}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("parsing {}: {source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: ParseError,
    },
}

/// The bounded set of error kinds exported as a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorKind {
    Parse,
    Permission,
    Io,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Parse => "parse",
            ErrorKind::Permission => "permission",
            ErrorKind::Io => "io",
        }
    }
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Parse { .. } => ErrorKind::Parse,
            Error::Io { source, .. } if source.kind() == io::ErrorKind::PermissionDenied => {
                ErrorKind::Permission
            }
            Error::Io { .. } => ErrorKind::Io,
        }
    }

    pub(crate) fn parse(path: PathBuf, source: ParseError) -> Self {
        Error::Parse { path, source }
    }
}

/// Parses an unsigned decimal integer field, naming the line and field on failure.
pub(crate) fn parse_u64(s: &str, line: usize, what: &str) -> Result<u64, ParseError> {
    s.parse::<u64>().map_err(|_| {
        ParseError::new(
            line,
            format!("{what}: expected an unsigned integer, got {s:?}"),
        )
    })
}

/// Parses a decimal fraction (`0.52`), naming the line and field on failure.
pub(crate) fn parse_f64(s: &str, line: usize, what: &str) -> Result<f64, ParseError> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(ParseError::new(
            line,
            format!("{what}: expected a number, got {s:?}"),
        )),
    }
}
