//! Sends an HTTP request that reached the wrong broker on to the one that
//! serves it, as it came (method, path, query, body and the headers that
//! matter), and brings the answer back: registry writes go to the leader
//! of `__schemas`, REST consumer-instance requests to the broker the
//! instance lives on. One plain HTTP/1.1 exchange per request: these are
//! rare or already spread out, a connection pool buys little.

use std::time::Duration;

use axum::body::Bytes;
use axum::http::{header, HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// The other broker's answer.
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
    }

    pub fn content_type(&self) -> Option<String> {
        self.header(header::CONTENT_TYPE.as_str())
    }
}

/// One request to `addr` (`HOST:PORT`), with `headers` added to `Host`.
pub async fn send(
    addr: &str,
    method: Method,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: Bytes,
    timeout: Duration,
) -> Result<Answer, String> {
    tokio::time::timeout(timeout, exchange(addr, method, path_and_query, headers, body))
        .await
        .map_err(|_| format!("{addr} did not answer within {} s", timeout.as_secs()))?
}

async fn exchange(
    addr: &str,
    method: Method,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Answer, String> {
    let stream =
        tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connecting to {addr}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = Request::builder().method(method).uri(path_and_query).header(header::HOST, addr);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| format!("{addr}: {e}"))?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| format!("{addr}: {e}"))?.to_bytes();
    Ok(Answer { status: parts.status.as_u16(), headers: parts.headers, body })
}
