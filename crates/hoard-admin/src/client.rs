//! The client side of the operator API: a minimal HTTP/1.1 JSON client (one request per connection),
//! typed by the shared [`crate::api`] types for `hoard admin`, untyped ([`http_json`]) for tests.

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::api::ApiError;

/// A request that did not get a good answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallError {
    /// The HTTP status, when the server answered.
    pub status: Option<u16>,
    /// The server's error, when it sent one.
    pub error: Option<ApiError>,
    pub message: String,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CallError {}

fn failed(message: String) -> CallError {
    CallError {
        status: None,
        error: None,
        message,
    }
}

/// The operator API of one process.
#[derive(Clone, Debug)]
pub struct AdminClient {
    base: String,
    token: Option<String>,
}

impl AdminClient {
    /// `base` is `http://HOST:PORT`.
    pub fn new(base: &str) -> AdminClient {
        AdminClient {
            base: base.trim_end_matches('/').to_string(),
            token: None,
        }
    }

    /// Sends `token` as `Authorization: Bearer` with every request (an empty one is none).
    pub fn with_token(mut self, token: Option<String>) -> AdminClient {
        self.token = token.filter(|t| !t.is_empty());
        self
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CallError> {
        let body = call(&self.base, self.token.as_deref(), "GET", path, None).await?;
        decode(&self.base, path, &body)
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, CallError> {
        let payload = serde_json::to_string(body)
            .map_err(|e| failed(format!("cannot encode the request: {e}")))?;
        let body = call(
            &self.base,
            self.token.as_deref(),
            "POST",
            path,
            Some(payload),
        )
        .await?;
        decode(&self.base, path, &body)
    }
}

fn decode<T: DeserializeOwned>(base: &str, path: &str, body: &str) -> Result<T, CallError> {
    serde_json::from_str(body).map_err(|e| failed(format!("{base}{path}: unexpected answer: {e}")))
}

/// One request; the body of a 2xx answer, or the error.
async fn call(
    base: &str,
    token: Option<&str>,
    method: &str,
    path: &str,
    payload: Option<String>,
) -> Result<String, CallError> {
    let rest = base
        .strip_prefix("http://")
        .ok_or_else(|| failed(format!("admin address {base:?} must start with http://")))?;
    let host = rest.trim_end_matches('/');
    let mut stream = tokio::net::TcpStream::connect(host)
        .await
        .map_err(|e| failed(format!("cannot reach the admin API at {base}: {e}")))?;
    let payload = payload.unwrap_or_default();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{payload}",
        payload.len()
    );
    let io = |e: std::io::Error| failed(format!("admin API at {base}: {e}"));
    stream.write_all(req.as_bytes()).await.map_err(io)?;
    let mut resp = Vec::new();
    stream.read_to_end(&mut resp).await.map_err(io)?;
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| failed(format!("malformed HTTP answer from {base}")))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| failed(format!("malformed HTTP status from {base}")))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    if status < 400 {
        return Ok(body);
    }
    let error: Option<ApiError> = serde_json::from_str(&body).ok();
    let message = match &error {
        Some(e) => format!("{}: {}", e.code.replace('_', " "), e.message),
        None if status == 404 => format!(
            "{base}{path}: not found (is this the admin address of the process running meta?)"
        ),
        None => format!("{base}{path}: HTTP {status}: {}", body.trim()),
    };
    Err(CallError {
        status: Some(status),
        error,
        message,
    })
}

/// An untyped request, with `token` as its bearer token: the JSON answer, or the error as text.
pub async fn http_json(
    base: &str,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<serde_json::Value, String> {
    let payload = body.map(|b| b.to_string());
    let body = call(base, token, method, path, payload)
        .await
        .map_err(|e| e.message)?;
    serde_json::from_str(&body).map_err(|e| format!("{base}{path}: answer is not JSON: {e}"))
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}
