//! Logging: `--log.format=logfmt` (the Prometheus exporters' default, `ts=… level=… msg=…`)
//! or `json`, to stderr, filtered by `--log.level`. tracing-subscriber has no logfmt writer,
//! so a small `FormatEvent` does it here.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::cli::{LogFormat, LogLevel};

pub fn init(level: LogLevel, format: LogFormat) {
    let level = match level {
        LogLevel::Debug => Level::DEBUG,
        LogLevel::Info => Level::INFO,
        LogLevel::Warn => Level::WARN,
        LogLevel::Error => Level::ERROR,
    };
    // Our crates at the chosen level; noisy dependencies (hyper, aya) only from WARN.
    let filter = tracing_subscriber::filter::Targets::new()
        .with_default(Level::WARN.min(level))
        .with_target("stallwatch", level)
        .with_target("stallwatch_collector", level);
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let registry = tracing_subscriber::registry().with(filter);
    let res = match format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Logfmt => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .event_format(Logfmt)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    // Already initialised (tests): keep the first subscriber.
    let _ = res;
}

struct Logfmt;

impl<S, N> FormatEvent<S, N> for Logfmt
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let ts = humantime::format_rfc3339_millis(std::time::SystemTime::now());
        let meta = event.metadata();
        let mut v = Fields::default();
        event.record(&mut v);
        write!(
            w,
            "ts={ts} level={} source={}",
            meta.level().as_str().to_ascii_lowercase(),
            meta.target()
        )?;
        write!(w, " msg=")?;
        quote(&mut w, &v.message)?;
        for (k, val) in &v.rest {
            write!(w, " {k}=")?;
            quote(&mut w, val)?;
        }
        writeln!(w)
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    rest: Vec<(&'static str, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.rest.push((field.name(), value.to_string()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let mut s = String::new();
        let _ = write!(s, "{value:?}");
        if field.name() == "message" {
            self.message = s;
        } else {
            self.rest.push((field.name(), s));
        }
    }
}

/// Writes a logfmt value, quoted when it has spaces, quotes, `=` or control characters.
fn quote(w: &mut Writer<'_>, s: &str) -> fmt::Result {
    let needs = s.is_empty()
        || s.chars()
            .any(|c| c == ' ' || c == '"' || c == '=' || c.is_control());
    if !needs {
        return w.write_str(s);
    }
    w.write_char('"')?;
    for c in s.chars() {
        match c {
            '"' => w.write_str("\\\"")?,
            '\\' => w.write_str("\\\\")?,
            '\n' => w.write_str("\\n")?,
            c if c.is_control() => write!(w, "\\u{{{:x}}}", c as u32)?,
            c => w.write_char(c)?,
        }
    }
    w.write_char('"')
}
