//! How a client reaches a node: credentials, flag parsing for endpoints and
//! durations, and failures as one sentence that says what to try.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use clap::Args;
use meshkv::error::one_line;
use meshkv_client::{Client, ClientBuilder};
use tonic::transport::Uri;

use crate::cli::error::{Error, Result};

/// How a client proves itself and checks the node: a token, TLS files.
/// `Debug` leaves the token out.
#[derive(Clone, Default, Args)]
pub struct Credentials {
    /// A bearer token, sent as `authorization: Bearer TOKEN`.
    #[arg(long, env = "MESHKV_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The CA that signed the node's certificate, for https:// endpoints.
    #[arg(long, env = "MESHKV_CACERT")]
    pub cacert: Option<PathBuf>,
    /// A client certificate (PEM) from the cluster's CA, with --key.
    #[arg(id = "tls_cert", long = "cert", env = "MESHKV_CERT")]
    pub cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(id = "tls_key", long = "key", env = "MESHKV_KEY")]
    pub key: Option<PathBuf>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("cacert", &self.cacert)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish()
    }
}

impl Credentials {
    /// Client settings for `endpoints` with these credentials: TLS with
    /// --cacert (and --cert/--key) for `https://`. TLS files with an
    /// `http://` URL are a mistake, said so; a token in clear text to
    /// another machine is allowed, with a warning.
    pub fn builder(&self, endpoints: &[String]) -> Result<ClientBuilder> {
        let https = endpoints
            .iter()
            .filter(|u| u.starts_with("https://"))
            .count();
        if https > 0 && self.cacert.is_none() {
            return Err(Error::Usage(format!(
                "{} is https: give the CA that signed its certificate with --cacert \
                 (or MESHKV_CACERT)",
                endpoints[0]
            )));
        }
        if https < endpoints.len() && (self.cert.is_some() || self.cacert.is_some()) {
            return Err(Error::Usage(format!(
                "--cacert, --cert and --key need https:// endpoints, not {}",
                endpoints.join(", ")
            )));
        }
        let mut builder = Client::builder(endpoints.iter().cloned());
        if let Some(token) = &self.token {
            // The client refuses a token that is no header value.
            for url in endpoints.iter().filter(|u| !u.starts_with("https://")) {
                let host = url.parse::<Uri>().ok();
                if !host.as_ref().and_then(Uri::host).is_some_and(is_loopback) {
                    eprintln!(
                        "meshkv: warning: sending the token in clear text to {url}; anyone on \
                         the path can read it and use it. Use an https:// endpoint (the node \
                         needs TLS)"
                    );
                }
            }
            builder = builder.token(token.as_str());
        }
        if let Some(ca) = &self.cacert {
            builder = builder.ca_pem(read("--cacert", ca)?);
        }
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                builder = builder.identity(read("--cert", cert)?, read("--key", key)?);
            }
            (None, None) => {}
            _ => {
                return Err(Error::Usage(
                    "--cert and --key go together: give both or neither".into(),
                ))
            }
        }
        Ok(builder)
    }
}

fn read(flag: &str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(format!("cannot read {flag} {}", path.display()), e))
}

/// A host only this machine reaches: where a token may travel in clear.
fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Parses a duration flag: a number with a unit of `ms`, `s`, `m` or `h`
/// (`500ms`, `5s`, `1.5m`, `1h`), or a bare number of seconds (`10`,
/// `0.5`), so that flags that took seconds before keep their meaning.
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let bad = || {
        format!(
            "{s:?} is not a duration; write a number with a unit of ms, s, m or h \
             (500ms, 5s, 2m, 1h), or a number of seconds"
        )
    };
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let unit_nanos: u64 = match unit.trim_start() {
        "ms" => 1_000_000,
        "" | "s" => 1_000_000_000,
        "m" => 60 * 1_000_000_000,
        "h" => 3600 * 1_000_000_000,
        _ => return Err(bad()),
    };
    // Whole numbers stay in integers so that 1ms is exactly a millisecond.
    let nanos = if number.contains('.') {
        let n: f64 = number.parse().map_err(|_| bad())?;
        let nanos = (n * unit_nanos as f64).round();
        if !(0.0..u64::MAX as f64).contains(&nanos) {
            return Err(format!("{s:?} is too long a duration"));
        }
        nanos as u64
    } else {
        number
            .parse::<u64>()
            .map_err(|_| bad())?
            .checked_mul(unit_nanos)
            .ok_or_else(|| format!("{s:?} is too long a duration"))?
    };
    Ok(Duration::from_nanos(nanos))
}

/// Checks an `--endpoint` flag: an http:// or https:// URL with a host.
pub fn parse_endpoint(s: &str) -> std::result::Result<String, String> {
    let uri = s.parse::<tonic::transport::Uri>().ok();
    let usable = uri.is_some_and(|u| {
        matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some_and(|h| !h.is_empty())
    });
    if usable {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a node URL; expected http://HOST:PORT, e.g. http://127.0.0.1:50051"
        ))
    }
}

/// How long a client waits for the TCP connection to a node.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// For `map_err` in the client commands: a failed call as one sentence
/// that says what went wrong at `endpoint` and what to try. The status
/// itself, with its causes, goes to the debug log (`RUST_LOG=debug`).
pub fn request_error(
    endpoint: &str,
    timeout: Duration,
) -> impl Fn(meshkv_client::Error) -> Error + '_ {
    move |err| {
        tracing::debug!(endpoint, error = ?err, "request failed");
        match err {
            meshkv_client::Error::Status(status) => {
                Error::Request(describe_status(endpoint, timeout, &status))
            }
            meshkv_client::Error::Connect { source, .. } => connect_error(endpoint)(source),
            meshkv_client::Error::Config(what) => Error::Usage(what),
        }
    }
}

/// For `map_err` when connecting eagerly (`meshkv bench`): like
/// [`request_error`], for a transport error.
pub fn connect_error(endpoint: &str) -> impl Fn(tonic::transport::Error) -> Error + '_ {
    move |err| {
        tracing::debug!(endpoint, error = ?err, "connect failed");
        let reason = connect_failure(&err).unwrap_or_else(|| one_line(&err));
        Error::Request(format!("cannot connect to {endpoint}: {reason}"))
    }
}

/// The sentence for a failed request, by what failed: the connection, the
/// deadline, or the node's answer.
pub(super) fn describe_status(endpoint: &str, timeout: Duration, status: &tonic::Status) -> String {
    use tonic::Code;
    if let Some(reason) = connect_failure(status) {
        return format!("cannot connect to {endpoint}: {reason}");
    }
    let msg = status.message();
    // Neither meshkv nor gRPC answered: something else listens there.
    if msg.contains("grpc-status header missing") || msg.contains("h2 protocol error") {
        return format!(
            "{endpoint} does not answer like a meshkv node; is the address right? ({msg})"
        );
    }
    match status.code() {
        Code::OutOfRange if msg.contains("message length too large") => format!(
            "{endpoint} refused the request as too large; a value must fit the node's \
             limits.max_value_bytes ({msg})"
        ),
        // tonic reports its own client deadline as Cancelled.
        Code::DeadlineExceeded | Code::Cancelled
            if msg.to_ascii_lowercase().contains("timeout") =>
        {
            format!(
                "{endpoint} did not answer within {timeout:?} (is the node overloaded? raise --timeout)"
            )
        }
        Code::InvalidArgument
        | Code::OutOfRange
        | Code::FailedPrecondition
        | Code::PermissionDenied
        | Code::NotFound
        | Code::AlreadyExists => format!("{endpoint} refused the request: {msg}"),
        Code::Unauthenticated => {
            format!("{endpoint} refused the request: {msg} (pass --token or set MESHKV_TOKEN)")
        }
        Code::ResourceExhausted => {
            format!("{endpoint} is overloaded and refused the request: {msg} (retry later)")
        }
        Code::Unavailable => format!("{endpoint} cannot serve the request now: {msg}"),
        Code::Unimplemented => {
            format!("{endpoint} does not serve this call; is it a meshkv node? ({msg})")
        }
        code => format!("{endpoint} failed the request ({code:?}): {msg}"),
    }
}

/// Why the connection to a node failed, when that is what `err` (a status
/// or a transport error) comes down to, with a hint for what to do.
fn connect_failure(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    use std::io::ErrorKind;
    let mut transport = false;
    let mut cause = Some(err);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(match io.kind() {
                ErrorKind::ConnectionRefused => {
                    "connection refused (is a node running there? set --endpoint)".into()
                }
                ErrorKind::TimedOut => format!(
                    "no answer within {CONNECT_TIMEOUT:?} (is the address right? set --endpoint)"
                ),
                _ => format!("{} (set --endpoint)", plain_io(io)),
            });
        }
        transport |= e.is::<tonic::transport::Error>();
        // tonic's connect timeout is an error of its own, not an io::Error.
        if transport && e.to_string().contains("timed out") {
            return Some(format!(
                "no answer within {CONNECT_TIMEOUT:?} (is the address right? set --endpoint)"
            ));
        }
        cause = e.source();
    }
    None
}

/// An io::Error's text without the `(os error N)` suffix, lower-cased like
/// the rest of the sentence.
fn plain_io(err: &std::io::Error) -> String {
    let text = err.to_string();
    let text = text.split(" (os error").next().unwrap_or(&text);
    let mut chars = text.chars();
    chars
        .next()
        .map(|c| c.to_lowercase().chain(chars).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_hosts_may_see_a_token_in_clear() {
        // Issue 24 item 7: the CLI sent bearer tokens over http:// to any
        // host without a word.
        for h in ["localhost", "127.0.0.1", "127.3.4.5", "[::1]", "::1"] {
            assert!(is_loopback(h), "{h}");
        }
        for h in ["10.0.0.2", "node2", "example.com", "[2001:db8::1]", ""] {
            assert!(!is_loopback(h), "{h}");
        }
    }
}
