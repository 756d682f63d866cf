//! The bare-MQTT reference of the scale benchmark, measured on the same broker in the same run
//! as the fleet: one hub client publishes a 2 KB QoS 1 message to each of N bare clients' own
//! topics, and each client answers with a small QoS 1 message to a topic the hub subscribes to
//! with a wildcard. Nothing is stored or decoded at either end, so the time from the first
//! publish to the last answer is what the broker and the loopback network cost on this machine
//! at that moment; the fleet's publish figure divided by it is a ratio that does not move with
//! the machine's speed (issue #8 puts this reference at about 0.5 s for 10,000 clients). The
//! benchmark runs the fan-out in a few rounds on the same connections and reports the median.
//!
//! The clients run in worker processes like the agents
//! ([`WorkerRole::BareMqtt`](crate::load::worker::WorkerRole::BareMqtt)); the hub runs
//! in the benchmark's own process, where the server runs later.

use crate::load::worker::{Reply, Request, Requests, Status, WorkerSpec};
use anyhow::{Context, Result, bail};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, NetworkOptions, Packet, QoS};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinSet;

/// Size of each message the hub publishes (the reference in ../shared's field notes and issue #8).
pub const MESSAGE_BYTES: usize = 2048;
/// Size of each client's answer (about an ack's size).
pub const ANSWER_BYTES: usize = 160;
/// Each message starts with its round's number in this many ASCII digits, and each answer starts
/// with the message's first bytes: an answer that arrives late (a QoS 1 redelivery from an
/// earlier round) is not counted in the next.
const ROUND_TAG_BYTES: usize = 8;

/// The topic bare client `i` subscribes to.
pub fn down_topic(i: usize) -> String {
    format!("grid-bare/down/{i}")
}

/// The topic bare client `i` answers on.
pub fn up_topic(i: usize) -> String {
    format!("grid-bare/up/{i}")
}

/// The hub's subscription (every client's answers).
pub const UP_FILTER: &str = "grid-bare/up/+";

fn options(client_id: String, host: &str, port: u16, inflight: u16) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, host, port);
    o.set_keep_alive(Duration::from_secs(60))
        .set_clean_session(true)
        .set_inflight(inflight)
        .set_max_packet_size(64 * 1024, 64 * 1024);
    o
}

fn nodelay(eventloop: &mut EventLoop) {
    let mut net = NetworkOptions::new();
    net.set_tcp_nodelay(true);
    net.set_connection_timeout(10);
    eventloop.set_network_options(net);
}

/// Runs bare client `i` until aborted: subscribes to its topic on every connect (clean session)
/// and answers every message it receives. `subscribed` counts the clients whose first
/// subscription was acknowledged.
async fn bare_client(spec: WorkerSpec, i: usize, subscribed: Arc<AtomicUsize>) {
    let delay = if spec.reconnect_min_ms == 0 || spec.count == 0 {
        0
    } else {
        spec.reconnect_min_ms * (i - spec.first) as u64 / spec.count as u64
    };
    tokio::time::sleep(Duration::from_millis(delay)).await;
    let (client, mut eventloop) = AsyncClient::new(
        options(format!("grid-bare-{i:05}"), &spec.host, spec.port, 32),
        16,
    );
    nodelay(&mut eventloop);
    let mut counted = false;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                let _ = client.try_subscribe(down_topic(i), QoS::AtLeastOnce);
            }
            Ok(Event::Incoming(Packet::SubAck(_))) if !counted => {
                counted = true;
                subscribed.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let _ =
                    client.try_publish(up_topic(i), QoS::AtLeastOnce, false, answer_to(&p.payload));
            }
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Serves a [`WorkerRole::BareMqtt`](crate::load::worker::WorkerRole::BareMqtt) worker: starts
/// its bare clients, then answers [`Request::Status`] (`connected_once`: clients subscribed) and
/// [`Request::Stop`] until stopped or the end of `input`.
pub async fn serve<R, W>(spec: WorkerSpec, input: R, output: W) -> Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let subscribed = Arc::new(AtomicUsize::new(0));
    let mut clients = JoinSet::new();
    for i in spec.first..spec.first + spec.count {
        clients.spawn(bare_client(spec.clone(), i, subscribed.clone()));
    }
    let mut requests = Requests::new(input, output);
    let answered = async {
        while let Some(request) = requests.next().await? {
            let (reply, stop) = match request {
                Request::Status => {
                    let status = Status {
                        agents: spec.count,
                        connected_once: subscribed.load(Ordering::Relaxed),
                        reconnected_since_mark: 0,
                    };
                    (Reply::Status(status), false)
                }
                Request::Stop => (Reply::Ok, true),
                other => (
                    Reply::Error {
                        message: format!("a bare-MQTT worker does not serve {other:?}"),
                    },
                    false,
                ),
            };
            requests.reply(&reply).await?;
            if stop {
                break;
            }
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    clients.shutdown().await;
    answered
}

/// What the hub measured.
#[derive(Debug, Clone, PartialEq)]
pub struct HubResult {
    /// From the first publish until the last client's answer arrived.
    pub all_answered: Duration,
    /// From the first publish until every publish call had returned.
    pub publish_calls: Duration,
    /// Answers received more than once (QoS 1 may redeliver; 0 on a healthy loopback run).
    pub duplicates: usize,
    /// Answers to an earlier round's messages that arrived during this round (not counted).
    pub late: usize,
}

/// The hub: connects, subscribes to every answer, and returns a handle that publishes to `n`
/// clients and waits for their answers.
pub struct Hub {
    client: AsyncClient,
    poller: tokio::task::JoinHandle<()>,
    /// Each answer's client and round tag.
    answers: tokio::sync::mpsc::UnboundedReceiver<(usize, Option<u32>)>,
    /// The round [`Hub::fan_out`] runs next.
    round: u32,
}

impl Hub {
    /// Connects the hub to the broker at `host:port` and subscribes to [`UP_FILTER`].
    pub async fn connect(host: &str, port: u16) -> Result<Self> {
        let (client, mut eventloop) = AsyncClient::new(
            options(
                format!("grid-bare-hub-{}", std::process::id()),
                host,
                port,
                1000,
            ),
            10_000,
        );
        nodelay(&mut eventloop);
        let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel::<()>();
        let (tx, answers) = tokio::sync::mpsc::unbounded_channel();
        let sub = client.clone();
        let poller = tokio::spawn(async move {
            let mut subscribed_tx = Some(subscribed_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = sub.try_subscribe(UP_FILTER, QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(s) = subscribed_tx.take() {
                            let _ = s.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let i = p
                            .topic
                            .rsplit('/')
                            .next()
                            .and_then(|s| s.parse::<usize>().ok());
                        if let Some(i) = i {
                            let _ = tx.send((i, round_tag(&p.payload)));
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(30), subscribed_rx)
            .await
            .context("the bare-MQTT hub did not subscribe within 30 s")?
            .context("the bare-MQTT hub's event loop ended")?;
        Ok(Self {
            client,
            poller,
            answers,
            round: 0,
        })
    }

    /// Publishes one [`MESSAGE_BYTES`] message to each of clients `0..n` and waits (at most
    /// `timeout`) until each has answered it (answers to an earlier call's messages are not
    /// counted).
    pub async fn fan_out(&mut self, n: usize, timeout: Duration) -> Result<HubResult> {
        let round = self.round;
        self.round += 1;
        let payload = round_message(round);
        let t0 = Instant::now();
        let client = self.client.clone();
        let publisher = tokio::spawn(async move {
            for i in 0..n {
                client
                    .publish(down_topic(i), QoS::AtLeastOnce, false, payload.clone())
                    .await?;
            }
            Ok::<_, rumqttc::ClientError>(t0.elapsed())
        });
        let mut seen = vec![false; n];
        let mut distinct = 0;
        let mut duplicates = 0;
        let mut late = 0;
        let deadline = t0 + timeout;
        while distinct < n {
            let next = tokio::time::timeout_at(deadline.into(), self.answers.recv()).await;
            match next {
                Ok(Some((_, tag))) if tag != Some(round) => late += 1,
                Ok(Some((i, _))) if i < n => {
                    if seen[i] {
                        duplicates += 1;
                    } else {
                        seen[i] = true;
                        distinct += 1;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => bail!("the bare-MQTT hub's event loop ended"),
                Err(_) => bail!("only {distinct} of {n} bare clients answered within {timeout:?}"),
            }
        }
        let all_answered = t0.elapsed();
        let publish_calls = publisher
            .await
            .context("the bare-MQTT publisher panicked")?
            .context("publishing to the bare clients")?;
        Ok(HubResult {
            all_answered,
            publish_calls,
            duplicates,
            late,
        })
    }

    /// Disconnects the hub.
    pub async fn close(self) {
        let _ = self.client.disconnect().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.poller.abort();
    }
}

/// The hub's message of round `round`: its tag, then padding to [`MESSAGE_BYTES`].
fn round_message(round: u32) -> Vec<u8> {
    let mut message = vec![b'm'; MESSAGE_BYTES];
    message[..ROUND_TAG_BYTES].copy_from_slice(format!("{round:08}").as_bytes());
    message
}

/// A client's answer to `message`: the message's round tag, then padding to [`ANSWER_BYTES`].
fn answer_to(message: &[u8]) -> Vec<u8> {
    let mut answer = vec![b'a'; ANSWER_BYTES];
    let tag = message.len().min(ROUND_TAG_BYTES);
    answer[..tag].copy_from_slice(&message[..tag]);
    answer
}

/// The round number an answer carries in its first [`ROUND_TAG_BYTES`] bytes, if any.
fn round_tag(answer: &[u8]) -> Option<u32> {
    std::str::from_utf8(answer.get(..ROUND_TAG_BYTES)?)
        .ok()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_carries_its_messages_round() {
        let message = round_message(2);
        assert_eq!(message.len(), MESSAGE_BYTES);
        let answer = answer_to(&message);
        assert_eq!(answer.len(), ANSWER_BYTES);
        assert_eq!(round_tag(&answer), Some(2));
        assert_eq!(round_tag(&answer_to(&round_message(12_345))), Some(12_345));
        assert_eq!(round_tag(&[b'a'; ANSWER_BYTES]), None, "untagged");
        assert_eq!(round_tag(b"0001"), None, "too short");
    }
}
