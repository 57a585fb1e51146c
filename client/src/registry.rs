//! A client of a Confluent-compatible schema registry (Tributary's own, on
//! every broker's HTTP port, or Confluent's): register, look up, check and
//! configure schemas, with an id cache so a serializer registers its schema
//! once and a deserializer fetches each writer schema once.
//!
//! One plain HTTP/1.1 exchange per call that misses the cache; registry
//! calls are rare next to records.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{header, Method, Request};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::error::{Error, Result};

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";
const TIMEOUT: Duration = Duration::from_secs(30);

/// A registered schema as the registry returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredSchema {
    pub subject: String,
    pub version: u32,
    pub id: u32,
    pub schema: String,
}

pub struct RegistryClient {
    /// `host:port`.
    addr: String,
    ids: Mutex<HashMap<(String, String), u32>>,
    schemas: Mutex<HashMap<u32, Arc<str>>>,
}

impl RegistryClient {
    /// `url`: `http://HOST:PORT` (or just `HOST:PORT`). Only plain HTTP.
    pub fn new(url: &str) -> Result<RegistryClient> {
        let addr = url.strip_prefix("http://").unwrap_or(url).trim_end_matches('/');
        if addr.is_empty() || addr.contains('/') || url.starts_with("https://") {
            return Err(Error::InvalidArgument(format!(
                "schema registry URL '{url}': expected http://HOST:PORT (https is not supported)"
            )));
        }
        Ok(RegistryClient { addr: addr.to_string(), ids: Mutex::default(), schemas: Mutex::default() })
    }

    /// One request; the parsed JSON answer, or the registry's error.
    pub async fn request(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let (status, text) =
            tokio::time::timeout(TIMEOUT, self.exchange(method, path, body)).await.map_err(|_| {
                Error::Timeout(format!("schema registry {} did not answer within 30 s", self.addr))
            })??;
        let value: Value = serde_json::from_slice(&text)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&text).into_owned()));
        if (200..300).contains(&status) {
            return Ok(value);
        }
        Err(Error::Registry {
            status,
            code: value["error_code"].as_i64().unwrap_or(i64::from(status)),
            message: value["message"].as_str().map_or_else(|| value.to_string(), str::to_string),
        })
    }

    async fn exchange(&self, method: Method, path: &str, body: String) -> Result<(u16, Bytes)> {
        let transport =
            |e: &dyn std::fmt::Display| Error::Transport(format!("schema registry {}: {e}", self.addr));
        let stream = tokio::net::TcpStream::connect(&self.addr).await.map_err(|e| transport(&e))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| transport(&e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.addr)
            .header(header::CONTENT_TYPE, CONTENT_TYPE)
            .header(header::ACCEPT, CONTENT_TYPE)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| transport(&e))?;
        let resp = sender.send_request(req).await.map_err(|e| transport(&e))?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.map_err(|e| transport(&e))?.to_bytes();
        Ok((status, bytes))
    }

    /// Registers `schema` (Avro JSON) under `subject`; its id. Cached: the
    /// same schema under the same subject asks the registry once.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32> {
        let key = (subject.to_string(), schema.to_string());
        if let Some(id) = self.ids.lock().get(&key) {
            return Ok(*id);
        }
        let v = self
            .request(
                Method::POST,
                &format!("/subjects/{}/versions", encode(subject)),
                Some(json!({"schema": schema})),
            )
            .await?;
        let id = id_of(&v)?;
        self.ids.lock().insert(key, id);
        self.schemas.lock().entry(id).or_insert_with(|| Arc::from(schema));
        Ok(id)
    }

    /// The schema text with id `id`. Cached (ids never change meaning).
    pub async fn schema(&self, id: u32) -> Result<Arc<str>> {
        if let Some(s) = self.schemas.lock().get(&id) {
            return Ok(s.clone());
        }
        let v = self.request(Method::GET, &format!("/schemas/ids/{id}"), None).await?;
        let text: Arc<str> = Arc::from(v["schema"].as_str().ok_or_else(|| bad_answer(&v))?);
        self.schemas.lock().insert(id, text.clone());
        Ok(text)
    }

    pub async fn subjects(&self) -> Result<Vec<String>> {
        let v = self.request(Method::GET, "/subjects", None).await?;
        serde_json::from_value(v.clone()).map_err(|_| bad_answer(&v))
    }

    /// A version of a subject: a number, or `latest`.
    pub async fn version(&self, subject: &str, version: &str) -> Result<RegisteredSchema> {
        let v = self
            .request(
                Method::GET,
                &format!("/subjects/{}/versions/{}", encode(subject), encode(version)),
                None,
            )
            .await?;
        Ok(RegisteredSchema {
            subject: v["subject"].as_str().unwrap_or(subject).to_string(),
            version: v["version"]
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| bad_answer(&v))?,
            id: id_of(&v)?,
            schema: v["schema"].as_str().ok_or_else(|| bad_answer(&v))?.to_string(),
        })
    }

    /// Whether `schema` may become the next version of `subject`, and if
    /// not, why.
    pub async fn check(&self, subject: &str, schema: &str) -> Result<(bool, Vec<String>)> {
        let path = format!("/compatibility/subjects/{}/versions/latest?verbose=true", encode(subject));
        let v = self.request(Method::POST, &path, Some(json!({"schema": schema}))).await?;
        let ok = v["is_compatible"].as_bool().ok_or_else(|| bad_answer(&v))?;
        let messages = v["messages"]
            .as_array()
            .map(|m| m.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        Ok((ok, messages))
    }

    /// The compatibility level of `subject` (falling back to the global
    /// one), or the global one.
    pub async fn compatibility(&self, subject: Option<&str>) -> Result<String> {
        let path = match subject {
            Some(s) => format!("/config/{}?defaultToGlobal=true", encode(s)),
            None => "/config".to_string(),
        };
        let v = self.request(Method::GET, &path, None).await?;
        v["compatibilityLevel"].as_str().map(str::to_string).ok_or_else(|| bad_answer(&v))
    }

    pub async fn set_compatibility(&self, subject: Option<&str>, level: &str) -> Result<String> {
        let path = match subject {
            Some(s) => format!("/config/{}", encode(s)),
            None => "/config".to_string(),
        };
        let v = self.request(Method::PUT, &path, Some(json!({"compatibility": level}))).await?;
        v["compatibility"].as_str().map(str::to_string).ok_or_else(|| bad_answer(&v))
    }
}

fn id_of(v: &Value) -> Result<u32> {
    v["id"].as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(|| bad_answer(v))
}

fn bad_answer(v: &Value) -> Error {
    Error::Corrupt(format!("unexpected schema registry answer: {v}"))
}

/// Percent-encodes a path segment (subject names may hold any character).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(RegistryClient::new("http://h:1").unwrap().addr, "h:1");
        assert_eq!(RegistryClient::new("h:1/").unwrap().addr, "h:1");
        assert!(RegistryClient::new("https://h:1").is_err());
        assert!(RegistryClient::new("http://h:1/x").is_err());
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(encode("orders-value"), "orders-value");
        assert_eq!(encode("a/b c"), "a%2Fb%20c");
    }
}
