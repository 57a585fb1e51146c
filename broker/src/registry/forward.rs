//! Sends a registry write that reached a broker which is not the leader of
//! `__schemas` on to the leader's HTTP port, as it came (method, path,
//! query, body), and brings the answer back. One plain HTTP/1.1 exchange
//! per write: writes are rare and small, a connection pool buys nothing.

use std::time::Duration;

use axum::body::Bytes;
use axum::http::{header, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// The leader's answer.
pub struct Answer {
    pub status: u16,
    pub content_type: Option<String>,
    /// The leader's `__schemas` offset after the write (see
    /// [`super::OFFSET_HEADER`]).
    pub offset: Option<i64>,
    pub body: Bytes,
}

pub async fn send(
    addr: &str,
    method: Method,
    path_and_query: &str,
    content_type: Option<&str>,
    body: Bytes,
    timeout: Duration,
) -> Result<Answer, String> {
    tokio::time::timeout(timeout, exchange(addr, method, path_and_query, content_type, body))
        .await
        .map_err(|_| format!("{addr} did not answer within {} s", timeout.as_secs()))?
}

async fn exchange(
    addr: &str,
    method: Method,
    path_and_query: &str,
    content_type: Option<&str>,
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
    if let Some(ct) = content_type {
        req = req.header(header::CONTENT_TYPE, ct);
    }
    let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| format!("{addr}: {e}"))?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| format!("{addr}: {e}"))?.to_bytes();
    let text = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    Ok(Answer {
        status: parts.status.as_u16(),
        content_type: text(header::CONTENT_TYPE.as_str()),
        offset: text(super::OFFSET_HEADER).and_then(|v| v.parse().ok()),
        body,
    })
}
