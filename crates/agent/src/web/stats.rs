//! `stallwatch_http_*`: the web layer's own bounded instrumentation, so an operator can see a
//! connection flood or a password flood (and the limits holding) from the scrape itself.
//! Label values are fixed lists.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType::{Counter, Gauge};

use super::auth::BasicAuth;
use super::conns::{Closed, Conns};
use crate::metrics::{family, single, Labels};

#[derive(Debug)]
pub struct WebCollector {
    pub conns: Arc<Conns>,
    /// `None` without `basic_auth_users`: then no auth series.
    pub auth: Option<Arc<BasicAuth>>,
    /// The process's soft `RLIMIT_NOFILE` after start-up raised it.
    pub nofile: u64,
}

fn n(c: &AtomicU64) -> f64 {
    c.load(Ordering::Relaxed) as f64
}

fn reason(r: &'static str) -> Labels<'static> {
    vec![("reason", Cow::Borrowed(r))]
}

impl Collector for WebCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.conns.stats;
        single(
            &mut e,
            "http_connections",
            "HTTP connections open now.",
            None,
            Gauge,
            self.conns.open() as f64,
        )?;
        single(
            &mut e,
            "http_connections_limit",
            "Most HTTP connections held at once (--web.max-connections, lowered to fit the open-file limit); at the limit the longest-idle connection makes room.",
            None,
            Gauge,
            self.conns.limits().max_connections as f64,
        )?;
        single(
            &mut e,
            "http_connections_accepted",
            "HTTP connections accepted.",
            None,
            Counter,
            n(&s.accepted),
        )?;
        family(
            &mut e,
            "http_connections_closed",
            "HTTP connections closed by the server, by reason: header_timeout, idle_timeout, write_timeout, evicted (made room at the limit), refused (not admitted: every slot busy).",
            None,
            Counter,
            Closed::LABELS
                .iter()
                .map(|(c, r)| (reason(r), n(&s.closed[*c as usize]))),
        )?;
        single(
            &mut e,
            "http_accept_errors",
            "Failed accept(2) calls (EMFILE and the like); the connection waits in the backlog.",
            None,
            Counter,
            n(&s.accept_errors),
        )?;
        single(
            &mut e,
            "process_max_fds",
            "The agent's soft open-file limit (RLIMIT_NOFILE), raised to the hard limit at start.",
            None,
            Gauge,
            self.nofile as f64,
        )?;
        let Some(auth) = &self.auth else {
            return Ok(());
        };
        let a = &auth.stats;
        single(
            &mut e,
            "http_auth_bcrypt_verifications",
            "bcrypt verifications run for basic auth (cached credentials, good or bad, need none).",
            None,
            Counter,
            n(&a.bcrypt_runs),
        )?;
        family(
            &mut e,
            "http_auth_rejected",
            "Requests refused by basic auth, by reason: missing (no or malformed credentials), invalid (wrong user or password), busy (answered 429: the verification queue was full for this client).",
            None,
            Counter,
            [
                ("missing", &a.rejected_missing),
                ("invalid", &a.rejected_invalid),
                ("busy", &a.rejected_busy),
            ]
            .into_iter()
            .map(|(r, c)| (reason(r), n(c))),
        )?;
        single(
            &mut e,
            "http_auth_queue_limit",
            "Basic-auth verifications admitted at once (one runs, the rest wait); sized at start so the queue drains in about 2 s.",
            None,
            Gauge,
            auth.queue_capacity() as f64,
        )
    }
}
