//! Config errors that name the file, the line and the key, and the [`Locator`] that finds the
//! line of any key path (`sampler.interval`, `probe[1].size`, `threads.group_rules[0].group`)
//! from the TOML document's own spans, whatever form the file uses (`[section]` headers,
//! dotted keys, inline tables, arrays of tables).

use std::fmt;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// A config error that names the file, line and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub key: Option<String>,
    pub msg: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        if let Some(k) = &self.key {
            write!(f, ": key `{k}`")?;
        }
        write!(f, ": {}", self.msg)
    }
}

impl std::error::Error for ConfigError {}

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

/// Finds lines of keys in one config text. Built once per parse; the text is parsed a second
/// time into toml's spanned tree (cheap: configs are small and capped in size).
pub struct Locator<'t> {
    file: &'t str,
    text: &'t str,
    root: Option<Spanned<DeTable<'t>>>,
}

impl<'t> Locator<'t> {
    pub fn new(file: &'t str, text: &'t str) -> Locator<'t> {
        Locator {
            file,
            text,
            // Recoverable: a syntax error further down still leaves the lines above it
            // locatable, and the broken key itself named where the parser got that far.
            root: Some(DeTable::parse_recoverable(text).0),
        }
    }

    /// The 1-based line of byte offset `at`.
    pub fn line_of(&self, at: usize) -> usize {
        self.text[..at.min(self.text.len())].matches('\n').count() + 1
    }

    /// The line where the value of `key` (a path like `probe[0].size`) is written, if it is.
    pub fn line(&self, key: &str) -> Option<usize> {
        let root = self.root.as_ref()?;
        let mut segs = parse_path(key).into_iter();
        let Some(Seg::Key(first)) = segs.next() else {
            return None;
        };
        let mut cur: &Spanned<DeValue<'_>> = root.get_ref().get(first.as_str())?;
        for s in segs {
            cur = match s {
                Seg::Key(k) => cur.get_ref().get(k.as_str())?,
                Seg::Index(i) => cur.get_ref().get(i)?,
            };
        }
        Some(self.line_of(cur.span().start))
    }

    /// The dotted path of the deepest key whose key or value contains byte offset `at`:
    /// what an error span from the TOML deserializer is about.
    pub fn key_at(&self, at: usize) -> Option<String> {
        let root = self.root.as_ref()?;
        let mut path = String::new();
        descend(root.get_ref(), at, &mut path);
        if !path.is_empty() {
            return Some(path);
        }
        // Past any value (an unterminated string ends where the line does): the last key
        // written on the same line before `at`.
        let mut keys = Vec::new();
        all_keys(root.get_ref(), "", &mut keys);
        let line = self.line_of(at);
        keys.into_iter()
            .filter(|(_, start)| *start <= at && self.line_of(*start) == line)
            .max_by_key(|(_, start)| *start)
            .map(|(p, _)| p)
    }

    /// An error about `key`, on the line where it is written.
    pub fn err(&self, key: &str, msg: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_string(),
            line: self.line(key),
            key: Some(key.to_string()),
            msg: msg.into(),
        }
    }
}

fn descend(table: &DeTable<'_>, at: usize, path: &mut String) {
    for (k, v) in table.iter() {
        let in_key = k.span().contains(&at);
        let in_value = v.span().contains(&at) || in_table(v.get_ref(), at);
        if in_key || in_value {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(k.get_ref());
            if !in_key {
                descend_value(v.get_ref(), at, path);
            }
            return;
        }
    }
}

fn descend_value(v: &DeValue<'_>, at: usize, path: &mut String) {
    match v {
        DeValue::Table(t) => descend(t, at, path),
        DeValue::Array(a) => {
            for (i, e) in a.iter().enumerate() {
                if e.span().contains(&at) || in_table(e.get_ref(), at) {
                    path.push_str(&format!("[{i}]"));
                    descend_value(e.get_ref(), at, path);
                    return;
                }
            }
        }
        _ => {}
    }
}

/// Every key path in `table` with the offset where its key is written.
fn all_keys(table: &DeTable<'_>, prefix: &str, out: &mut Vec<(String, usize)>) {
    for (k, v) in table.iter() {
        let path = if prefix.is_empty() {
            k.get_ref().to_string()
        } else {
            format!("{prefix}.{}", k.get_ref())
        };
        out.push((path.clone(), k.span().start));
        match v.get_ref() {
            DeValue::Table(t) => all_keys(t, &path, out),
            DeValue::Array(a) => {
                for (i, e) in a.iter().enumerate() {
                    if let DeValue::Table(t) = e.get_ref() {
                        all_keys(t, &format!("{path}[{i}]"), out);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Whether any key or value inside table `v` spans `at` (a `[section]` table's own span does
/// not cover the lines below its header).
fn in_table(v: &DeValue<'_>, at: usize) -> bool {
    match v {
        DeValue::Table(t) => t.iter().any(|(k, v)| {
            k.span().contains(&at) || v.span().contains(&at) || in_table(v.get_ref(), at)
        }),
        DeValue::Array(a) => a
            .iter()
            .any(|e| e.span().contains(&at) || in_table(e.get_ref(), at)),
        _ => false,
    }
}

/// `probe[1].size` → Key(probe), Index(1), Key(size).
fn parse_path(key: &str) -> Vec<Seg> {
    let mut out = Vec::new();
    for part in key.split('.') {
        let (name, rest) = part.split_once('[').unwrap_or((part, ""));
        if !name.is_empty() {
            out.push(Seg::Key(name.to_string()));
        }
        for idx in rest.split('[') {
            if let Ok(i) = idx.trim_end_matches(']').parse() {
                out.push(Seg::Index(i));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_of_keys_in_every_toml_form() {
        let text = "\
top = 1
[sampler]
interval = \"1s\"

[threads]
timeout = \"5s\"
[[threads.group_rules]]
regex = \"a\"
[[threads.group_rules]]
group = \"b\"
[[probe]]
path = \"/x\"
[[probe]]
size = \"1MiB\"
[cloud]
volume = [ { device = \"nvme1n1\" },
  { device = \"xvdf\" } ]
[containers]
inline = { a = 1, b = 2 }
";
        let l = Locator::new("f", text);
        assert_eq!(l.line("sampler.interval"), Some(3));
        assert_eq!(l.line("threads.timeout"), Some(6));
        assert_eq!(l.line("threads.group_rules[1].group"), Some(10));
        assert_eq!(l.line("probe[0].path"), Some(12));
        assert_eq!(l.line("probe[1].size"), Some(14));
        assert_eq!(l.line("cloud.volume[1].device"), Some(17));
        assert_eq!(l.line("containers.inline.b"), Some(19));
        assert_eq!(l.line("sampler.nothing"), None);
        let at = |needle: &str| text.find(needle).unwrap();
        assert_eq!(l.key_at(at("\"1MiB\"")).as_deref(), Some("probe[1].size"));
        assert_eq!(
            l.key_at(at("group =")).as_deref(),
            Some("threads.group_rules[1].group")
        );
        assert_eq!(
            l.key_at(at("\"xvdf\"")).as_deref(),
            Some("cloud.volume[1].device")
        );
        let e = l.err("probe[1].size", "too big");
        assert_eq!(e.to_string(), "f:14: key `probe[1].size`: too big");
    }

    #[test]
    fn a_syntax_error_still_names_its_key() {
        let e = crate::config::parse("f", "[sampler]\npeak_window = \"60s\"\ninterval = \"1s\n")
            .unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        assert_eq!(e.key.as_deref(), Some("sampler.interval"), "{e}");
    }

    #[test]
    fn dotted_keys_at_top_level() {
        let text = "sampler.interval = \"0s\"\n\nthreads.top_groups = 5\n";
        let l = Locator::new("f", text);
        assert_eq!(l.line("sampler.interval"), Some(1));
        assert_eq!(l.line("threads.top_groups"), Some(3));
    }
}
