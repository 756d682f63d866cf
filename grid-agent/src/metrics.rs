//! The optional Prometheus endpoint: a tiny HTTP/1.1 responder on a `TcpListener` (no web
//! framework), serving the agent's counters as Prometheus text on any path.

use crate::engine::EngineMetrics;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the endpoint shows: the engine's counters plus the shell's.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsSnapshot {
    /// The engine's counters.
    pub engine: EngineMetrics,
    /// Messages waiting in the outbox.
    pub outbox_len: u64,
    /// MQTT (re)connections so far.
    pub connects: u64,
    /// Safety-layer interventions (clamps, watchdog, sensor errors) so far.
    pub safety_events: u64,
    /// The power the safety layer applied last (kW, positive = charging).
    pub applied_kw: f64,
}

/// Shared, updated by the shell on every tick.
pub type SharedMetrics = Arc<Mutex<MetricsSnapshot>>;

/// Renders `m` in the Prometheus text exposition format.
pub fn render(device: &str, m: &MetricsSnapshot) -> String {
    let e = &m.engine;
    let mut out = String::new();
    let mut put = |name: &str, kind: &str, help: &str, value: f64| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name}{{device=\"{device}\"}} {value}");
    };
    put(
        "grid_agent_messages_received_total",
        "counter",
        "Downlink messages received.",
        e.messages_received as f64,
    );
    put(
        "grid_agent_schedules_started_total",
        "counter",
        "Schedule versions started.",
        e.schedules_started as f64,
    );
    put(
        "grid_agent_rejected_total",
        "counter",
        "Downlink messages rejected.",
        e.rejected as f64,
    );
    put(
        "grid_agent_schedules_accepted_total",
        "counter",
        "Schedules accepted.",
        e.schedules_accepted as f64,
    );
    put(
        "grid_agent_acks_total",
        "counter",
        "Lifecycle acks produced.",
        e.acks as f64,
    );
    put(
        "grid_agent_telemetry_batches_total",
        "counter",
        "Telemetry batches produced.",
        e.telemetry_batches as f64,
    );
    put(
        "grid_agent_telemetry_dropped_total",
        "counter",
        "Buffered telemetry dropped while offline.",
        e.telemetry_dropped as f64,
    );
    put(
        "grid_agent_setpoint_kw",
        "gauge",
        "Requested setpoint in kW (positive = charging).",
        e.setpoint_kw,
    );
    put(
        "grid_agent_applied_kw",
        "gauge",
        "Setpoint applied by the safety layer in kW (positive = charging).",
        m.applied_kw,
    );
    put(
        "grid_agent_soc_ratio",
        "gauge",
        "Last state of charge read (0..1).",
        e.soc.unwrap_or(f64::NAN),
    );
    put(
        "grid_agent_fallback_active",
        "gauge",
        "1 when the fallback applies.",
        f64::from(u8::from(e.fallback_active)),
    );
    put(
        "grid_agent_connected",
        "gauge",
        "1 when the MQTT session is up.",
        f64::from(u8::from(e.connected)),
    );
    put(
        "grid_agent_safe_mode",
        "gauge",
        "1 in safe mode (store was corrupt).",
        f64::from(u8::from(e.safe_mode)),
    );
    put(
        "grid_agent_outbox_messages",
        "gauge",
        "Messages waiting for the broker.",
        m.outbox_len as f64,
    );
    put(
        "grid_agent_grid_import_kw",
        "gauge",
        "Last grid-meter reading in kW (positive = importing from the grid; NaN = none).",
        e.grid_import_kw.unwrap_or(f64::NAN),
    );
    put(
        "grid_agent_meter_missing",
        "gauge",
        "1 when the self-consumption fallback applies without a fresh grid-meter reading (battery idle).",
        f64::from(u8::from(e.meter_missing)),
    );
    put(
        "grid_agent_connects_total",
        "counter",
        "MQTT connections established.",
        m.connects as f64,
    );
    put(
        "grid_agent_safety_events_total",
        "counter",
        "Safety-layer interventions.",
        m.safety_events as f64,
    );
    out
}

/// Serves `metrics` on `listener` until the task is dropped. Each connection gets one response.
pub async fn serve(listener: TcpListener, device: String, metrics: SharedMetrics) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let body = {
            let m = metrics.lock().map(|m| m.clone()).unwrap_or_default();
            render(&device, &m)
        };
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            // Read the request head (anything up to 1 KiB); the path does not matter.
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(2), sock.read(&mut buf)).await;
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(body.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_prometheus_text() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared: SharedMetrics = Arc::default();
        shared.lock().unwrap().engine.schedules_accepted = 3;
        shared.lock().unwrap().engine.meter_missing = true;
        let task = tokio::spawn(serve(listener, "bat-1".into(), shared));
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).await.unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
        assert!(
            text.contains("grid_agent_schedules_accepted_total{device=\"bat-1\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("grid_agent_meter_missing{device=\"bat-1\"} 1"),
            "{text}"
        );
        task.abort();
    }
}
