//! Opening gRPC channels to a broker, in one place, so producer, consumer and
//! admin all get the same transport settings.
//!
//! The settings matter for throughput: record batches are hundreds of KiB, so
//! HTTP/2's 64 KiB default flow-control windows would stall every request,
//! and Nagle's algorithm would delay the small ones.

use std::future::Future;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tributary_proto::v1::admin_client::AdminClient;
use tributary_proto::v1::group_client::GroupClient;
use tributary_proto::v1::log_client::LogClient;

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
}

impl Connection {
    /// Connects to `bootstrap` ("host:port", an `http://` prefix optional)
    /// and fails fast with the address when nothing answers.
    pub async fn open(bootstrap: &str) -> Result<Connection> {
        let endpoint = endpoint(bootstrap)?;
        let channel = endpoint.connect().await.map_err(|e| {
            Error::Transport(format!("cannot connect to {}: {}", bootstrap.trim(), error_chain(&e)))
        })?;
        Ok(Connection { channel, addr: bootstrap.trim().to_string() })
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

    pub fn group(&self) -> GroupClient<Channel> {
        GroupClient::new(self.channel.clone())
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
}
