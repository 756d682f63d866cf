//! An independent MQTT observer: it subscribes to every device's schedule downlink and acks, and
//! measures delivery from the broker's side (publish seen → acceptance ack seen), without
//! trusting the server's or the agents' own bookkeeping.

use anyhow::{Context, Result};
use grid_core::ExecutionState;
use grid_proto::topic::{TopicKind, decode_on_topic};
use grid_proto::v1::Body;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// What the observer has seen so far.
#[derive(Debug, Default)]
pub struct Observed {
    /// First time each device's schedule downlink was seen, by (device, schedule id, version).
    pub published: HashMap<(String, String, u64), Instant>,
    /// First ack recording acceptance per (device, schedule id, version): `accepted`, or
    /// `executing` / `completed` from a device that started the version on arrival.
    pub accepted: HashMap<(String, String, u64), Instant>,
    /// Acks seen per state name (duplicates included).
    pub acks_by_state: HashMap<&'static str, u64>,
    /// Distinct (device, schedule, version, state) acks.
    pub distinct_acks: HashMap<(String, String, u64, &'static str), u64>,
    /// Messages that did not decode or whose topic and envelope disagree.
    pub undecodable: u64,
}

impl Observed {
    /// Publish-to-acceptance latencies in milliseconds.
    pub fn latencies_ms(&self) -> Vec<f64> {
        self.accepted
            .iter()
            .filter_map(|(k, at)| {
                self.published
                    .get(k)
                    .map(|p| at.saturating_duration_since(*p).as_secs_f64() * 1000.0)
            })
            .collect()
    }

    /// Distinct schedule versions acked with `state`.
    pub fn count(&self, state: ExecutionState) -> usize {
        self.distinct_acks
            .keys()
            .filter(|k| k.3 == state.as_str())
            .count()
    }
}

/// A running observer.
pub struct Observer {
    /// What it saw.
    pub seen: Arc<Mutex<Observed>>,
    client: AsyncClient,
    task: JoinHandle<()>,
}

impl Observer {
    /// Connects to the broker and subscribes; returns once the subscriptions are acknowledged.
    pub async fn start(host: &str, port: u16) -> Result<Self> {
        let mut opts = MqttOptions::new(
            format!("grid-sim-observer-{}", std::process::id()),
            host,
            port,
        );
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut events) = AsyncClient::new(opts, 1024);
        client
            .subscribe("grid/v1/+/down/schedule", QoS::AtLeastOnce)
            .await
            .context("observer subscribe")?;
        client
            .subscribe("grid/v1/+/up/ack", QoS::AtLeastOnce)
            .await
            .context("observer subscribe")?;
        let seen = Arc::new(Mutex::new(Observed::default()));
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
        let sink = seen.clone();
        let task = tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            let mut subacks = 0;
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        subacks += 1;
                        if subacks == 2
                            && let Some(tx) = ready.take()
                        {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => record(&sink, &p.topic, &p.payload),
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx)
            .await
            .context("the observer's subscriptions were not acknowledged within 10 s")?
            .ok();
        Ok(Self { seen, client, task })
    }

    /// Disconnects.
    pub async fn stop(self) {
        let _ = self.client.disconnect().await;
        self.task.abort();
    }
}

fn record(sink: &Mutex<Observed>, topic: &str, payload: &[u8]) {
    let now = Instant::now();
    let Ok(mut seen) = sink.lock() else { return };
    let Ok((topic, envelope)) = decode_on_topic(topic, payload) else {
        seen.undecodable += 1;
        return;
    };
    let device = envelope.device.to_string();
    match (topic.kind, envelope.body) {
        (TopicKind::Schedule, Body::ScheduleAssign(s)) => {
            let key = (device, s.schedule_id.to_string(), s.version.0);
            seen.published.entry(key).or_insert(now);
        }
        (TopicKind::Ack, Body::Ack(ack)) => {
            let state = ack.state.as_str();
            *seen.acks_by_state.entry(state).or_insert(0) += 1;
            if let Some(r) = ack.schedule {
                let key = (device, r.schedule_id.to_string(), r.version.0);
                *seen
                    .distinct_acks
                    .entry((key.0.clone(), key.1.clone(), key.2, state))
                    .or_insert(0) += 1;
                if matches!(
                    ack.state,
                    ExecutionState::Accepted
                        | ExecutionState::Executing
                        | ExecutionState::Completed
                ) {
                    seen.accepted.entry(key).or_insert(now);
                }
            }
        }
        _ => {}
    }
}
