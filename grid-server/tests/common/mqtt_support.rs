//! Test support for the MQTT tests: a fake device (a plain rumqttc client playing the agent), free
//! ports, and the broker settings of the default (embedded rumqttd) and live (Mosquitto) runs.
#![allow(dead_code)]

use grid_core::{DeviceId, ExecutionState, Timestamp};
use grid_proto::Codec;
use grid_proto::topic::{Topic, agent_subscription};
use grid_proto::v1::{Ack, Body, Envelope, MessageId};
use rumqttc::{AsyncClient, Event, MqttOptions, NetworkOptions, Packet, QoS};
use std::time::Duration;
use tokio::sync::mpsc;

/// A free TCP port on loopback (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The live broker of `.ci/run`: `MQTT_URL`, which must be set.
pub fn live_mqtt_url() -> String {
    std::env::var("MQTT_URL").expect("live test: set MQTT_URL=mqtt://127.0.0.1:1883 (.ci/run does)")
}

/// A device played by a bare MQTT client: it subscribes to its downlink and can publish uplink
/// messages, well-formed or not.
pub struct FakeDevice {
    pub id: DeviceId,
    pub client: AsyncClient,
    rx: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeDevice {
    /// Connects to host:port as `id` and subscribes to `grid/v1/{id}/down/+`.
    pub async fn connect(host: &str, port: u16, id: &DeviceId) -> Self {
        Self::connect_with(host, port, id, None).await
    }

    /// Like [`FakeDevice::connect`], over `transport` (TLS with a client certificate, which need
    /// not be `id`'s: an impostor) when given.
    pub async fn connect_with(
        host: &str,
        port: u16,
        id: &DeviceId,
        transport: Option<rumqttc::Transport>,
    ) -> Self {
        let mut options = MqttOptions::new(
            format!("dev-{id}-{}", super::support::unique("c")),
            host,
            port,
        );
        options
            .set_keep_alive(Duration::from_secs(10))
            .set_clean_session(true);
        if let Some(transport) = transport {
            options.set_transport(transport);
        }
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        let mut net = NetworkOptions::new();
        net.set_tcp_nodelay(true);
        eventloop.set_network_options(net);
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
        let filter = agent_subscription(id);
        let sub_client = client.clone();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        sub_client
                            .try_subscribe(filter.clone(), QoS::AtLeastOnce)
                            .unwrap();
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ready_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send((p.topic.clone(), p.payload.to_vec()));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx.recv())
            .await
            .expect("fake device subscribed");
        Self {
            id: id.clone(),
            client,
            rx,
            task,
        }
    }

    /// The next downlink message, decoded, within `timeout`.
    pub async fn recv(&mut self, timeout: Duration) -> Option<Envelope> {
        let (topic, payload) = tokio::time::timeout(timeout, self.rx.recv()).await.ok()??;
        let (parsed, env) = grid_proto::topic::decode_on_topic(&topic, &payload).unwrap();
        assert_eq!(parsed.device, self.id, "only our own downlink arrives");
        Some(env)
    }

    /// The next message on any topic the client subscribed to, undecoded, within `timeout`.
    pub async fn recv_raw(&mut self, timeout: Duration) -> Option<(String, Vec<u8>)> {
        tokio::time::timeout(timeout, self.rx.recv()).await.ok()?
    }

    /// Publishes an envelope on its topic (JSON) at QoS 1, retained where the protocol says so
    /// (status and hello), as an agent does.
    pub async fn send(&self, envelope: &Envelope) {
        let topic = Topic::for_envelope(envelope);
        let retain = topic.kind.retained();
        self.client
            .publish(
                topic.to_string(),
                QoS::AtLeastOnce,
                retain,
                Codec::Json.encode(envelope).unwrap(),
            )
            .await
            .unwrap();
    }

    /// Publishes raw bytes on any topic.
    pub async fn send_raw(&self, topic: &str, payload: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }

    /// An envelope from this device.
    pub fn envelope(&self, body: Body) -> Envelope {
        Envelope::new(
            MessageId::new(super::support::unique("m").replace('_', "-")).unwrap(),
            self.id.clone(),
            Timestamp::now(),
            body,
        )
    }

    /// The ack a well-behaved agent sends for a downlink message.
    pub fn ack_for(&self, message: &Envelope, state: ExecutionState) -> Envelope {
        let ack = match &message.body {
            Body::ScheduleAssign(s) => {
                Ack::for_schedule(s.schedule_ref(), Some(message.id.clone()), state)
            }
            _ => Ack::for_message(message.id.clone(), state),
        };
        self.envelope(Body::Ack(ack))
    }

    /// Plays a simple agent until dropped: accepts every schedule, completes every command, and
    /// answers duplicates again (acks are at-least-once).
    pub fn auto_ack(self) -> tokio::task::JoinHandle<()> {
        self.auto_ack_schedules_with(ExecutionState::Accepted)
    }

    /// As [`FakeDevice::auto_ack`], answering schedules with `state` (`executing`: a device that
    /// accepts and starts a schedule in one step).
    pub fn auto_ack_schedules_with(
        mut self,
        schedule_state: ExecutionState,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            while let Some(msg) = self.recv(Duration::from_secs(3600)).await {
                let state = match msg.body {
                    Body::ScheduleAssign(_) => schedule_state,
                    _ => ExecutionState::Completed,
                };
                let ack = self.ack_for(&msg, state);
                self.send(&ack).await;
            }
        })
    }
}

impl Drop for FakeDevice {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Polls `check` every 20 ms until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
