//! Opening gRPC channels to a broker, in one place, so producer, consumer and
//! admin all get the same transport settings; and reading the bootstrap
//! list (`HOST:PORT,HOST:PORT,...`) every client takes.
//!
//! The settings matter for throughput: record batches are hundreds of KiB, so
//! HTTP/2's 64 KiB default flow-control windows would stall every request,
//! and Nagle's algorithm would delay the small ones.
//!
//! Bootstrap addresses are opened eagerly ([`Connection::open`]) so a wrong
//! address fails at once with its name; connections to brokers learned from
//! metadata are opened lazily ([`Connection::lazy`]) on their first call, as
//! most clients need only the leaders of the partitions they use.

use std::future::Future;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tributary_proto::v1::admin_client::AdminClient;
use tributary_proto::v1::audit_client::AuditClient;
use tributary_proto::v1::cluster_client::ClusterClient;
use tributary_proto::v1::group_client::GroupClient;
use tributary_proto::v1::log_client::LogClient;
use tributary_proto::v1::mirror_client::MirrorClient;

use crate::error::{Error, Result};

/// Largest gRPC message either way, the broker's limit too.
pub(crate) const MAX_MESSAGE: usize = 256 << 20;

/// How long opening a connection may take before we report the address.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connected broker address: the channel plus the address as the user gave
/// it, for error messages.
#[derive(Clone, Debug)]
pub(crate) struct Connection {
    pub channel: Channel,
    pub addr: String,
    /// Tells connections apart (clones share it).
    #[cfg_attr(not(test), allow(dead_code))]
    serial: u64,
}

fn next_serial() -> u64 {
    static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl Connection {
    /// Connects to `bootstrap` ("host:port", an `http://` prefix optional)
    /// and fails fast with the address when nothing answers.
    pub async fn open(bootstrap: &str) -> Result<Connection> {
        let endpoint = endpoint(bootstrap)?;
        let channel = endpoint.connect().await.map_err(|e| {
            Error::Transport(format!("cannot connect to {}: {}", bootstrap.trim(), error_chain(&e)))
        })?;
        Ok(Connection { channel, addr: bootstrap.trim().to_string(), serial: next_serial() })
    }

    /// A connection to `address` that is made on its first call (and made
    /// again after a failure); a broker that cannot be reached shows up as
    /// a transport error of that call, naming the address.
    pub fn lazy(address: &str) -> Result<Connection> {
        let channel = endpoint(address)?.connect_lazy();
        Ok(Connection { channel, addr: address.trim().to_string(), serial: next_serial() })
    }

    /// Whether both are the same connection (one is a clone of the other).
    #[cfg(test)]
    pub fn channel_is(&self, other: &Connection) -> bool {
        self.serial == other.serial
    }

    pub fn log(&self) -> LogClient<Channel> {
        LogClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    pub fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    pub fn mirror(&self) -> MirrorClient<Channel> {
        MirrorClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    pub fn audit(&self) -> AuditClient<Channel> {
        AuditClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    pub fn group(&self) -> GroupClient<Channel> {
        GroupClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    pub fn cluster(&self) -> ClusterClient<Channel> {
        ClusterClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    /// Maps a failed call's status, naming this broker when it is a
    /// transport failure.
    pub fn error(&self, status: tonic::Status) -> Error {
        Error::from_status(status, &self.addr)
    }

    /// Awaits one RPC (`what` names it for the timeout message), mapping its
    /// failure to an [`Error`].
    pub async fn call<T>(
        &self,
        what: &str,
        timeout: Duration,
        rpc: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T> {
        match tokio::time::timeout(timeout, rpc).await {
            Err(_) => Err(Error::Timeout(format!(
                "the broker at {} did not answer {what} within {} ms",
                self.addr,
                timeout.as_millis()
            ))),
            Ok(Err(status)) => Err(self.error(status)),
            Ok(Ok(response)) => Ok(response.into_inner()),
        }
    }
}

/// The addresses of a bootstrap list, `HOST:PORT,HOST:PORT,...` (spaces
/// and empty entries ignored, repeats dropped), each checked to be a usable
/// address.
pub(crate) fn bootstrap_list(list: &str) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        endpoint(entry)?;
        if !out.iter().any(|known| same_address(known, entry)) {
            out.push(entry.to_string());
        }
    }
    if out.is_empty() {
        return Err(Error::InvalidArgument(
            "the bootstrap list is empty; give one or more brokers as HOST:PORT,HOST:PORT, e.g. 127.0.0.1:7070"
                .into(),
        ));
    }
    Ok(out)
}

/// "host:port" without scheme or surrounding space, for comparing addresses.
pub(crate) fn normalize(address: &str) -> &str {
    let a = address.trim();
    a.strip_prefix("http://").or_else(|| a.strip_prefix("https://")).unwrap_or(a)
}

/// Whether two addresses name the same place (scheme and spaces aside).
pub(crate) fn same_address(a: &str, b: &str) -> bool {
    normalize(a) == normalize(b)
}

/// The URI tonic wants for a bootstrap address.
pub(crate) fn uri(bootstrap: &str) -> Result<String> {
    let b = bootstrap.trim();
    if b.is_empty() {
        return Err(Error::InvalidArgument(
            "the bootstrap address is empty; give one as HOST:PORT, e.g. 127.0.0.1:7070".into(),
        ));
    }
    if b.starts_with("http://") || b.starts_with("https://") {
        Ok(b.to_string())
    } else {
        Ok(format!("http://{b}"))
    }
}

fn endpoint(bootstrap: &str) -> Result<Endpoint> {
    let uri = uri(bootstrap)?;
    let endpoint = Endpoint::from_shared(uri).map_err(|e| {
        Error::InvalidArgument(format!(
            "bootstrap address '{}' is not HOST:PORT ({})",
            bootstrap.trim(),
            error_chain(&e)
        ))
    })?;
    Ok(endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .initial_stream_window_size(16 << 20)
        .initial_connection_window_size(64 << 20)
        .http2_adaptive_window(false)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20)))
}

/// "outer: inner: innermost", skipping repeats, so one line says it all.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = crate::error::one_line(&e.to_string());
    crate::error::append_sources(&mut text, e.source());
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_gets_a_scheme_when_it_has_none() {
        assert_eq!(uri("127.0.0.1:7070").unwrap(), "http://127.0.0.1:7070");
        assert_eq!(uri(" http://b:1 ").unwrap(), "http://b:1");
        assert!(uri("").is_err());
    }

    #[test]
    fn bootstrap_lists_keep_their_order_and_drop_repeats() {
        assert_eq!(bootstrap_list("127.0.0.1:7070").unwrap(), ["127.0.0.1:7070"]);
        assert_eq!(
            bootstrap_list(" a:1, b:2 ,,c:3,").unwrap(),
            ["a:1".to_string(), "b:2".to_string(), "c:3".to_string()]
        );
        assert_eq!(bootstrap_list("a:1,http://a:1,b:2").unwrap(), ["a:1".to_string(), "b:2".to_string()]);
        for empty in ["", " ", ",", " , ,"] {
            let e = bootstrap_list(empty).unwrap_err().to_string();
            assert!(e.contains("bootstrap list is empty"), "{empty:?}: {e}");
        }
        let e = bootstrap_list("a:1,not a host").unwrap_err().to_string();
        assert!(e.contains("'not a host'"), "{e}");
    }

    #[test]
    fn addresses_compare_without_scheme() {
        assert_eq!(normalize(" http://127.0.0.1:7070 "), "127.0.0.1:7070");
        assert_eq!(normalize("127.0.0.1:7070"), "127.0.0.1:7070");
        assert_eq!(normalize(""), "");
        assert!(same_address("http://b:1", " b:1"));
        assert!(!same_address("b:1", "b:2"));
    }
}
