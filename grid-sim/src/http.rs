//! A minimal HTTP/1.1 JSON client, enough for the demo to drive the server's REST API over a real
//! socket without pulling an HTTP client stack into the workspace.

use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The REST API of one server, with a bearer token.
#[derive(Debug, Clone)]
pub struct ApiClient {
    addr: SocketAddr,
    token: String,
}

/// A response: status code and JSON body (`Null` when empty).
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// Parsed body.
    pub body: Value,
}

impl ApiClient {
    /// A client for the server at `addr` using `token`.
    pub fn new(addr: SocketAddr, token: String) -> Self {
        Self { addr, token }
    }

    /// `method path` with an optional JSON body.
    pub async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Response> {
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nAccept: application/json\r\nConnection: close\r\n",
            self.addr, self.token
        );
        if body.is_some() {
            request.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                payload.len()
            ));
        }
        request.push_str("\r\n");
        request.push_str(&payload);
        let exchange = async {
            let mut stream = TcpStream::connect(self.addr).await?;
            stream.set_nodelay(true)?;
            stream.write_all(request.as_bytes()).await?;
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw).await?;
            Ok::<_, std::io::Error>(raw)
        };
        let raw = tokio::time::timeout(Duration::from_secs(60), exchange)
            .await
            .with_context(|| format!("{method} {path}: no answer within 60 s"))?
            .with_context(|| format!("{method} {path}"))?;
        parse_response(&raw).with_context(|| format!("{method} {path}: bad HTTP response"))
    }

    /// Like [`ApiClient::call`], failing unless the status is 2xx.
    pub async fn ok(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let r = self.call(method, path, body).await?;
        if !(200..300).contains(&r.status) {
            bail!("{method} {path} answered {}: {}", r.status, r.body);
        }
        Ok(r.body)
    }
}

fn parse_response(raw: &[u8]) -> Result<Response> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers")?;
    let head = std::str::from_utf8(&raw[..split]).context("headers are not UTF-8")?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .context("no status line")?
        .parse()
        .context("bad status code")?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    });
    let mut body = raw[split + 4..].to_vec();
    if chunked {
        body = dechunk(&body)?;
    }
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()))
    };
    Ok(Response { status, body })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("bad chunk header")?;
        let size = usize::from_str_radix(std::str::from_utf8(&data[..line_end])?.trim(), 16)?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_bodies() {
        let r =
            parse_response(b"HTTP/1.1 201 Created\r\ncontent-length: 7\r\n\r\n{\"a\":1}").unwrap();
        assert_eq!((r.status, r.body["a"].as_i64()), (201, Some(1)));
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\n[1,\r\n2\r\n2]\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body, serde_json::json!([1, 2]));
        assert_eq!(
            parse_response(b"HTTP/1.1 204 No Content\r\n\r\n")
                .unwrap()
                .body,
            Value::Null
        );
    }
}
