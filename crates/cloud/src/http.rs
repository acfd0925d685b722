//! The cloud side's HTTP, in one place at the bottom of the crate: the HTTPS client the AWS SDK
//! uses (IMDS, the credentials chain, CloudWatch), the client of the SigV4-signed EC2 Query
//! call, and the one-line error chain every AWS failure is logged with.
//!
//! Both clients are rustls with ring, the agent's own TLS stack: no aws-lc C build and one crypto
//! library in the binary. The API modules (`imds`, `ec2`, `cloudwatch`) import this module and
//! nothing of each other or of the loops in `runner`.

use std::time::Duration;

use aws_smithy_runtime_api::client::http::SharedHttpClient;

/// The SDK's HTTPS client (aws-smithy-http-client on rustls with ring).
pub fn sdk_client() -> SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https()
}

/// The client of the hand-signed EC2 Query call: `timeout` bounds each whole request.
pub fn query_client(timeout: Duration) -> Result<reqwest_cloud::Client, String> {
    reqwest_cloud::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| error_chain(&e))
}

/// The error and its sources on one line (the SDK's top-level messages are terse: "dispatch
/// failure" says nothing until its sources say "connection refused"). A source whose message
/// the line already contains is not repeated.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct E(&'static str, Option<Box<E>>);
    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for E {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn the_chain_is_one_line_without_repeats() {
        let e = E(
            "dispatch failure",
            Some(Box::new(E(
                "io error: connection refused",
                Some(Box::new(E("connection refused", None))),
            ))),
        );
        assert_eq!(
            error_chain(&e),
            "dispatch failure: io error: connection refused"
        );
        assert_eq!(error_chain(&E("alone", None)), "alone");
    }

    #[tokio::test]
    async fn the_query_client_reports_a_refused_connection_with_its_cause() {
        // A port nobody listens on: bind, read the port, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("ephemeral port")
            .port();
        let c = query_client(Duration::from_secs(2)).expect("client");
        let e = c
            .post(format!("http://127.0.0.1:{port}/"))
            .send()
            .await
            .expect_err("nothing listens");
        let msg = error_chain(&e);
        assert!(msg.to_lowercase().contains("refused"), "{msg}");
    }
}
