//! Test support for the HTTP API tests: a real server (SQLite + embedded broker by default, or the
//! live PostgreSQL + Mosquitto), its router for `oneshot`, a tiny HTTP/1.1 client for the real
//! port, token helpers, and request builders.
#![allow(dead_code)]

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use grid_server::api::{self, AppState};
use grid_server::auth::{Claims, Role, unix_now};
use grid_server::config::Config;
use grid_server::server::{MqttDispatch, RunningServer, serve};
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt as _;

/// The HS256 secret of the test servers.
pub const SECRET: &str = "test-secret-test-secret-test-secret-0123";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A unique name for this process and call.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A running server and the router over the same store and transport.
pub struct TestApp {
    pub server: RunningServer,
    pub router: Router,
    pub config: Config,
    dir: Option<std::path::PathBuf>,
}

impl TestApp {
    /// SQLite in a temporary directory, an embedded broker on a free port, HTTP on port 0.
    pub async fn sqlite() -> Self {
        let dir = std::env::temp_dir().join(unique("grid-api"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut config = Config::default();
        config.database.url = format!("sqlite://{}/grid.db", dir.display());
        Self::start(config, Some(dir)).await
    }

    /// The live services of `.ci/run`: `DATABASE_URL` (PostgreSQL; a fresh schema per test) and
    /// `MQTT_URL`; panics when they are unset or unreachable.
    pub async fn live() -> Self {
        let db = std::env::var("DATABASE_URL")
            .expect("live test: set DATABASE_URL=postgres://... (.ci/run does)");
        assert!(
            db.starts_with("postgres"),
            "live test: DATABASE_URL must be PostgreSQL"
        );
        let mqtt = std::env::var("MQTT_URL")
            .expect("live test: set MQTT_URL=mqtt://127.0.0.1:1883 (.ci/run does)");
        let schema = unique("grid_api");
        let admin = sqlx::PgPool::connect(&db)
            .await
            .unwrap_or_else(|e| panic!("live test: PostgreSQL at {db} unreachable: {e}"));
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let sep = if db.contains('?') { '&' } else { '?' };
        let mut config = Config::default();
        config.database.url = format!("{db}{sep}options=-csearch_path%3D{schema}");
        config.mqtt.url = mqtt;
        Self::start(config, None).await
    }

    async fn start(mut config: Config, dir: Option<std::path::PathBuf>) -> Self {
        config.http.listen = "127.0.0.1:0".parse().unwrap();
        config.mqtt.listen = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        config.auth.secret = Some(SECRET.into());
        config.http.body_limit_bytes = 256 * 1024;
        let server = serve(config.clone()).await.expect("server starts");
        let state = AppState::new(
            server.store.clone(),
            Arc::new(MqttDispatch(server.transport.clone())),
            server.auth.clone(),
            config.http.clone(),
        );
        let router = api::router(state);
        Self {
            server,
            router,
            config,
            dir,
        }
    }

    /// A token with `role`, fleet-wide.
    pub fn token(&self, role: Role) -> String {
        self.server.auth.mint("test", role, None, None).unwrap()
    }

    /// A token with `role` bound to `tenant`.
    pub fn tenant_token(&self, role: Role, tenant: &str) -> String {
        self.server
            .auth
            .mint("test", role, Some(tenant), None)
            .unwrap()
    }

    /// Signs arbitrary claims with the server's key.
    pub fn sign(&self, claims: &Claims) -> String {
        self.server.auth.sign_claims(claims).unwrap()
    }

    /// Valid claims to start from.
    pub fn claims(&self, role: Role) -> Claims {
        let now = unix_now();
        Claims {
            sub: "test".into(),
            role,
            tenant: None,
            iss: self.config.auth.issuer.clone(),
            aud: self.config.auth.audience.clone(),
            exp: now + 600,
            iat: now,
        }
    }

    /// Sends a request through the router (`oneshot`).
    pub async fn call(&self, req: Request<Body>) -> Resp {
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), 64 << 20)
            .await
            .unwrap();
        Resp {
            status,
            headers,
            body: bytes.to_vec(),
        }
    }

    /// JSON request through the router.
    pub async fn json(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Resp {
        self.call(req(method, path, token, body)).await
    }

    pub async fn shutdown(self) {
        self.server.shutdown().await.unwrap();
        if let Some(dir) = self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A response.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {} {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts an RFC 7807 problem with this status and code; returns the body.
    pub fn problem(&self, status: u16, code: &str) -> Value {
        assert_eq!(self.status.as_u16(), status, "{}", self.text());
        assert_eq!(
            self.headers.get("content-type").unwrap(),
            "application/problem+json",
            "{}",
            self.text()
        );
        let v = self.json();
        assert_eq!(v["status"], status);
        assert_eq!(v["code"], code, "{v}");
        v
    }
}

/// Builds a request with an optional bearer token and JSON body.
pub fn req(method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    match body {
        Some(v) => b
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&v).unwrap()))
            .unwrap(),
        None => b.body(Body::empty()).unwrap(),
    }
}

/// A raw-body request.
pub fn raw(
    method: &str,
    path: &str,
    token: Option<&str>,
    content_type: &str,
    body: Vec<u8>,
) -> Request<Body> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", content_type);
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    b.body(Body::from(body)).unwrap()
}

/// A minimal HTTP/1.1 client for the real port: one request per connection.
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

/// A battery spec body.
pub fn spec_json() -> Value {
    serde_json::json!({
        "capacity_kwh": 10.0, "min_energy_kwh": 1.0, "max_energy_kwh": 9.0,
        "max_charge_kw": 5.0, "max_discharge_kw": 5.0,
        "charge_efficiency": 0.95, "discharge_efficiency": 0.95
    })
}

/// Creates a site and a device through the API (admin token), returning the device id.
pub async fn site_and_device(
    app: &TestApp,
    admin: &str,
    site: &str,
    device: &str,
    tenant: Option<&str>,
) {
    let mut body = serde_json::json!({"import_limit_kw": 17.0, "export_limit_kw": 11.0});
    if let Some(t) = tenant {
        body["tenant"] = t.into();
    }
    let r = app
        .json(
            "PUT",
            &format!("/api/v1/sites/{site}"),
            Some(admin),
            Some(body),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = app
        .json(
            "POST",
            "/api/v1/devices",
            Some(admin),
            Some(serde_json::json!({"id": device, "site": site, "spec": spec_json()})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
}

/// The start of the next UTC hour, RFC 3339.
pub fn next_hour() -> String {
    let now = jiff::Timestamp::now().as_second();
    let h = (now / 3600 + 1) * 3600;
    jiff::Timestamp::from_second(h).unwrap().to_string()
}
