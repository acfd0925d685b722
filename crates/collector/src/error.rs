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
    /// The reader (or the sampler applying its reading) panicked; the driver restarted it.
    Panic,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 4] = [
        ErrorKind::Parse,
        ErrorKind::Permission,
        ErrorKind::Io,
        ErrorKind::Panic,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Parse => "parse",
            ErrorKind::Permission => "permission",
            ErrorKind::Io => "io",
            ErrorKind::Panic => "panic",
        }
    }

    /// The kind of a failed read: permission denied is the operator's to fix (capabilities),
    /// anything else is I/O.
    pub fn of_io(e: &io::Error) -> ErrorKind {
        if e.kind() == io::ErrorKind::PermissionDenied {
            ErrorKind::Permission
        } else {
            ErrorKind::Io
        }
    }
}

/// Errors counted by kind: what a walk over many files (threads, cgroups) met without failing
/// as a whole. Vanished processes and cgroups are churn, not errors, and are not counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrorCounts([u64; 4]);

impl ErrorCounts {
    pub fn add(&mut self, kind: ErrorKind) {
        self.add_n(kind, 1);
    }

    pub fn add_n(&mut self, kind: ErrorKind, n: u64) {
        let i = kind as usize;
        self.0[i] = self.0[i].saturating_add(n);
    }

    pub fn get(&self, kind: ErrorKind) -> u64 {
        self.0[kind as usize]
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &ErrorCounts) {
        for k in ErrorKind::ALL {
            self.add_n(k, other.get(k));
        }
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// `(kind, count)` for every kind, zeros included (a counter series per kind).
    pub fn iter(&self) -> impl Iterator<Item = (ErrorKind, u64)> + '_ {
        ErrorKind::ALL.into_iter().map(|k| (k, self.get(k)))
    }
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Parse { .. } => ErrorKind::Parse,
            Error::Io { source, .. } => ErrorKind::of_io(source),
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
