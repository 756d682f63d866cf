//! The tokio shell around grid-proto's sans-IO `DeliveryTracker`: the MQTT event loop, inbound
//! message handling, the retry loop over the persisted outbox, and the telemetry batch writer.

use super::saved_states::{SAVED_STATES_BUDGET, SavedStates};
use super::{
    BrokerConfig, EmbeddedBroker, TransportConfig, TransportError, TransportResult,
    install_crypto_provider, random_hex,
};
use crate::store::{
    AckOutcome, AckRecord, AckTarget, CommandFilter, CommandRecord, DeviceRecord, OutboxRead,
    OutboxRecord, OutboxWrite, ScheduleFilter, ScheduleRef, StatusReport, Store, StoreError,
};
use grid_core::{DeviceId, ExecutionState, LifecycleEvent, Schedule, TelemetrySample, Timestamp};
use grid_proto::Codec;
use grid_proto::topic::{Topic, decode_on_topic, server_subscription};
use grid_proto::tracker::{Action, DeliveryKey, DeliveryTracker, DetachedState, TrackerState};
use grid_proto::v1::{Ack, Body, Envelope, MessageId, ScheduleAssign};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, NetworkOptions, Packet, QoS};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;

/// How often a device's delivery state is re-read and re-applied when replicas race on it.
const SAVE_RETRIES: usize = 16;

/// The most acks one batch writes (one transaction for the acks, one for the trackers).
const MAX_ACK_BATCH: usize = 512;

/// Parallel ack writers on PostgreSQL: one per core, at least two, at most eight. More writers
/// than cores only cut the batches smaller (each batch is seven statements whatever its size):
/// at 10,000 devices on 2 cores, four writers cost PostgreSQL 0.15 core-seconds more than two
/// (docs/benchmarks.md, "Eighth session").
fn ack_writers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8))
}

/// Store connections left to the retry loop and the API when the inbound handlers are busy.
const SPARE_CONNECTIONS: usize = 2;

/// A device's delivery state an ack batch saves, and what follows once it is saved.
struct PlannedSave<'a> {
    /// The device's codec.
    codec: Codec,
    /// What to carry out once saved.
    actions: Vec<Action>,
    /// The device.
    device: DeviceId,
    /// Its acks in the batch, in arrival order (redone one by one if the save loses a race).
    acks: Vec<&'a AckJob>,
    /// Delivery latencies (s) of the acceptances among them.
    latencies: Vec<f64>,
    /// Bytes of state written.
    state_bytes: usize,
    /// The state saved (kept in [`Inner::saved`] once it is), its detached JSON and the bytes
    /// of JSON it takes in the outbox with its messages.
    state: TrackerState,
    detached_json: String,
    saved_bytes: usize,
}

/// What an ack batch does to delivery states ([`Inner::plan_ack_states`]).
#[derive(Default)]
struct AckPlan<'a> {
    /// The states to save, in the order of `pending`.
    writes: Vec<OutboxWrite>,
    /// Per write, what follows once it is saved.
    pending: Vec<PlannedSave<'a>>,
    /// Devices whose state was not read (none saved, or locked by another writer): updated one
    /// by one.
    alone: Vec<(DeviceId, Vec<&'a AckJob>)>,
    /// The acks (by address) that recorded a schedule's acceptance ([`takes_delivery`]).
    accepted: HashSet<usize>,
}

/// Where an ack batch's time went (logged at debug level by the ack writer).
#[derive(Debug, Default)]
struct AckBatchTimes {
    /// Recording the acks and their lifecycle moves, reading the delivery states, applying the
    /// acks to them and saving them (one transaction).
    record: Duration,
    /// Acks whose delivery state was updated one by one (races, missing states).
    alone: usize,
    /// The time those took.
    rest: Duration,
    /// Bytes of delivery state written in the batch.
    state_bytes: usize,
}

/// The time since `*since`, restarting it.
fn lap(since: &mut Instant) -> Duration {
    let now = Instant::now();
    let d = now - *since;
    *since = now;
    d
}

/// An ack waiting for the batch writer; `done` fires once it is recorded (or refused).
struct AckJob {
    envelope: Envelope,
    received: Timestamp,
    done: tokio::sync::oneshot::Sender<()>,
}

/// A status report waiting for the status writer; `done` fires once it is recorded (or refused).
struct StatusJob {
    report: StatusReport,
    done: tokio::sync::oneshot::Sender<()>,
}

/// The most status reports one commit records.
const MAX_STATUS_BATCH: usize = 512;

/// How long a positive "device is registered" answer is cached.
const DEVICE_CACHE_TTL: Duration = Duration::from_secs(30);

/// Counters for `/metrics` (monotonic since start).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Messages received from devices.
    pub messages_in: u64,
    /// Messages published to devices (first sends and retries).
    pub messages_out: u64,
    /// Inbound messages refused (bad topic or payload, device id mismatch, unknown device or
    /// target).
    pub refused: u64,
    /// Acks that moved a lifecycle.
    pub acks_applied: u64,
    /// Of `acks_applied`, those that recorded a device taking a delivery: moved it from `queued`
    /// or `delivered` to `accepted`, or straight on to `executing` or `completed` (a schedule
    /// that started on arrival, answered `executing` alone, or an `executing` ack handled before
    /// its `accepted`). Counted after the commit.
    pub acceptances: u64,
    /// Duplicate acks (no change).
    pub acks_duplicate: u64,
    /// Acks the lifecycle ignored (stale or out of order).
    pub acks_ignored: u64,
    /// Telemetry samples written.
    pub telemetry_samples: u64,
    /// Publish, store or encoding failures.
    pub errors: u64,
    /// Resync sweeps finished (one after every new subscription; see
    /// [`TransportConfig::resync_delay`]).
    pub resyncs: u64,
    /// Deliveries the resync sweeps asked their devices about again.
    pub resync_asked: u64,
}

#[derive(Default)]
struct Counters {
    messages_in: AtomicU64,
    messages_out: AtomicU64,
    refused: AtomicU64,
    acks_applied: AtomicU64,
    acceptances: AtomicU64,
    acks_duplicate: AtomicU64,
    acks_ignored: AtomicU64,
    telemetry_samples: AtomicU64,
    errors: AtomicU64,
    resyncs: AtomicU64,
    resync_asked: AtomicU64,
}

/// Whether a lifecycle move records the device taking the delivery (see
/// [`TransportStats::acceptances`]).
fn takes_delivery(from: ExecutionState, to: ExecutionState) -> bool {
    use ExecutionState as S;
    matches!(from, S::Queued | S::Delivered)
        && matches!(to, S::Accepted | S::Executing | S::Completed)
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// What [`TransportHandle::distribute`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DistributeOutcome {
    /// The schedule is tracked now and was published (or will be, by the retry loop).
    Published,
    /// This version (or a newer one) was already tracked: nothing new was sent.
    AlreadyTracked,
}

/// The transport's entry point.
#[derive(Debug)]
pub struct Transport;

struct Inner {
    store: Arc<dyn Store>,
    client: AsyncClient,
    config: TransportConfig,
    healthy: AtomicBool,
    subscribed: watch::Sender<bool>,
    shutdown: watch::Sender<bool>,
    counters: Counters,
    telemetry: mpsc::Sender<(DeviceId, TelemetrySample)>,
    /// One queue per ack writer; a device's acks always go to the same writer, in order.
    acks: Vec<mpsc::Sender<AckJob>>,
    /// The status writer's queue: every agent reports a status when it starts a schedule, so
    /// status reports come in bursts with the acks and are committed in batches too.
    statuses: mpsc::Sender<StatusJob>,
    /// Store connections the inbound status and hello handlers may hold at once: the pool less
    /// one per ack writer and [`SPARE_CONNECTIONS`], so a burst of status messages (every agent
    /// sends one when it starts a schedule, right with its acks) does not leave the ack writers
    /// waiting for a connection (measured: up to 170 ms per batch at 1,000 devices).
    inbound_db: Semaphore,
    devices: Mutex<HashMap<DeviceId, Instant>>,
    /// `sent_at` of the newest hello processed per device (retained hellos come again on every
    /// re-subscription; older ones are skipped).
    hellos: Mutex<HashMap<DeviceId, Timestamp>>,
    /// The delivery states this server saved, parsed (restores skip parsing their messages).
    saved: SavedStates,
    _broker: Option<EmbeddedBroker>,
}

/// A cheap, cloneable handle on the running transport (what the API uses).
#[derive(Clone)]
pub struct TransportHandle {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TransportHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportHandle")
            .field("client_id", &self.inner.config.client_id)
            .field("healthy", &self.broker_healthy())
            .finish()
    }
}

impl Transport {
    /// Starts the transport: the embedded broker if configured, the MQTT client (TCP_NODELAY,
    /// clean session, manual acks), the inbound handler, the retry loop and the telemetry writer.
    /// Returns at once; [`TransportHandle::wait_ready`] waits for the subscription. The join
    /// handle ends after [`TransportHandle::shutdown`].
    ///
    /// ```no_run
    /// # async fn run(store: std::sync::Arc<dyn grid_server::store::Store>) -> Result<(), Box<dyn std::error::Error>> {
    /// use grid_server::mqtt::{Transport, TransportConfig};
    /// let config = TransportConfig::from_url_or_embedded(None, "127.0.0.1:1884".parse()?)?;
    /// let (transport, task) = Transport::start(config, store).await?;
    /// assert!(transport.wait_ready(std::time::Duration::from_secs(5)).await);
    /// transport.shutdown();
    /// task.await?;
    /// # Ok(()) }
    /// ```
    pub async fn start(
        mut config: TransportConfig,
        store: Arc<dyn Store>,
    ) -> TransportResult<(TransportHandle, JoinHandle<()>)> {
        install_crypto_provider();
        if matches!(config.broker, BrokerConfig::Embedded { .. }) {
            // rumqttd 0.20 keeps one cursor per shared group across every topic a wildcard
            // matches, and skips messages on topics whose log is behind it (measured: a second
            // device's acks never arrived). The embedded broker serves one process anyway, so it
            // gets a plain subscription.
            config.share_group = None;
        }
        let (broker, host, port, url) = match &config.broker {
            BrokerConfig::Embedded {
                listen,
                max_connections,
            } => {
                let (listen, max) = (*listen, *max_connections);
                let broker =
                    tokio::task::spawn_blocking(move || EmbeddedBroker::start(listen, max))
                        .await
                        .map_err(|e| TransportError::Io(std::io::Error::other(e)))??;
                let host = match listen.ip() {
                    ip if ip.is_unspecified() => "127.0.0.1".to_owned(),
                    ip => ip.to_string(),
                };
                (Some(broker), host, listen.port(), None)
            }
            BrokerConfig::External(url) => (None, url.host.clone(), url.port, Some(url.clone())),
        };
        let mut options = MqttOptions::new(&config.client_id, host, port);
        options
            .set_keep_alive(config.keep_alive.max(Duration::from_secs(5)))
            .set_clean_session(true)
            .set_manual_acks(true)
            .set_inflight(1000)
            .set_request_channel_capacity(10_000)
            .set_max_packet_size(256 * 1024, 256 * 1024);
        if let Some(url) = &url {
            if let Some(user) = &url.username {
                options.set_credentials(user.clone(), url.password.clone().unwrap_or_default());
            }
            if url.tls {
                options.set_transport(tls_transport(config.tls.as_ref())?);
            }
        }
        let (client, mut eventloop) = AsyncClient::new(options, 10_000);
        let mut net = NetworkOptions::new();
        net.set_tcp_nodelay(true);
        net.set_connection_timeout(10);
        eventloop.set_network_options(net);

        let (telemetry_tx, telemetry_rx) = mpsc::channel(config.telemetry_batch.max(1) * 16);
        // Writers run in parallel on PostgreSQL (the ack path waits on round trips, not on
        // the CPU); SQLite has one writer at a time anyway.
        let writers = match store.backend() {
            crate::store::Backend::Postgres => ack_writers(),
            _ => 1,
        };
        let (ack_txs, ack_rxs): (Vec<_>, Vec<_>) = (0..writers)
            .map(|_| mpsc::channel::<AckJob>(MAX_ACK_BATCH * 4))
            .unzip();
        let (status_tx, status_rx) = mpsc::channel::<StatusJob>(MAX_STATUS_BATCH * 4);
        let (subscribed, _) = watch::channel(false);
        let (shutdown, _) = watch::channel(false);
        let pool = usize::try_from(store.pool_stats().max).unwrap_or(usize::MAX);
        let inbound_db = Semaphore::new(pool.saturating_sub(writers + SPARE_CONNECTIONS).max(1));
        let inner = Arc::new(Inner {
            store,
            client,
            config,
            healthy: AtomicBool::new(false),
            subscribed,
            shutdown,
            counters: Counters::default(),
            telemetry: telemetry_tx,
            acks: ack_txs,
            statuses: status_tx,
            inbound_db,
            devices: Mutex::new(HashMap::new()),
            hellos: Mutex::new(HashMap::new()),
            saved: SavedStates::new(SAVED_STATES_BUDGET),
            _broker: broker,
        });
        let handle = TransportHandle {
            inner: inner.clone(),
        };
        let events = tokio::spawn(event_loop(inner.clone(), eventloop));
        let retries = tokio::spawn(retry_loop(inner.clone()));
        let writer = tokio::spawn(telemetry_writer(inner.clone(), telemetry_rx));
        let status_writer = tokio::spawn(status_writer(inner.clone(), status_rx));
        let ack_writers: Vec<_> = ack_rxs
            .into_iter()
            .map(|rx| tokio::spawn(ack_writer(inner.clone(), rx)))
            .collect();
        let reconcile = tokio::spawn(reconcile_on_start(handle.clone()));
        let orphans = tokio::spawn(resume_orphans(handle.clone()));
        let resyncs = tokio::spawn(resync_on_subscribe(inner.clone()));
        let task = tokio::spawn(async move {
            let named = [
                ("events", events),
                ("retries", retries),
                ("telemetry", writer),
                ("statuses", status_writer),
                ("reconcile", reconcile),
                ("orphans", orphans),
                ("resync", resyncs),
            ];
            for (name, task) in named
                .into_iter()
                .chain(ack_writers.into_iter().map(|t| ("acks", t)))
            {
                if let Err(e) = task.await {
                    tracing::error!(task = name, error = %e, "transport task failed");
                }
            }
        });
        Ok((handle, task))
    }
}

fn tls_transport(files: Option<&super::TlsFiles>) -> TransportResult<rumqttc::Transport> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|source| TransportError::TlsFile {
            path: path.to_owned(),
            source,
        })
    };
    match files {
        Some(files) => {
            let ca = read(&files.ca)?;
            let client = match &files.client {
                Some((cert, key)) => Some((read(cert)?, read(key)?)),
                None => None,
            };
            Ok(rumqttc::Transport::tls(ca, client, None))
        }
        // No CA given: the platform's roots.
        None => Ok(rumqttc::Transport::tls_with_config(Default::default())),
    }
}

impl TransportHandle {
    /// Whether the MQTT connection is up (for `/readyz`).
    pub fn broker_healthy(&self) -> bool {
        self.inner.healthy.load(Ordering::Relaxed)
    }

    /// Waits until the client is connected and subscribed; false on timeout.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let mut rx = self.inner.subscribed.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|s| *s))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// This replica's MQTT client id (also its outbox claim owner).
    pub fn client_id(&self) -> &str {
        &self.inner.config.client_id
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> TransportStats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TransportStats {
            messages_in: get(&c.messages_in),
            messages_out: get(&c.messages_out),
            refused: get(&c.refused),
            acks_applied: get(&c.acks_applied),
            acceptances: get(&c.acceptances),
            acks_duplicate: get(&c.acks_duplicate),
            acks_ignored: get(&c.acks_ignored),
            telemetry_samples: get(&c.telemetry_samples),
            errors: get(&c.errors),
            resyncs: get(&c.resyncs),
            resync_asked: get(&c.resync_asked),
        }
    }

    /// Stops the transport (disconnects; pending telemetry is flushed). Deliveries in flight
    /// stay in the outbox for the next start or another replica.
    pub fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
    }

    /// Sends a stored schedule to its device: the device's delivery tracker takes it (superseding
    /// older versions of the same schedule id), its state is saved, then the message is published
    /// (QoS 1) and retried until the device answers or `expires_at` passes. Idempotent: a version
    /// already tracked is [`DistributeOutcome::AlreadyTracked`].
    pub async fn distribute(
        &self,
        schedule: &Schedule,
        correlation_id: Option<&str>,
    ) -> TransportResult<DistributeOutcome> {
        let device = self.inner.active_device(schedule.device()).await?;
        self.distribute_to(&device, schedule, correlation_id).await
    }

    /// [`TransportHandle::distribute`] with the device's record as the caller has just read it
    /// (the REST API has, to check the caller's tenant): one store read fewer. Refused like
    /// `distribute` if the record is another device's or says decommissioned.
    pub async fn distribute_to(
        &self,
        device: &DeviceRecord,
        schedule: &Schedule,
        correlation_id: Option<&str>,
    ) -> TransportResult<DistributeOutcome> {
        check_target(device, schedule.device())?;
        let now = Timestamp::now();
        let (key, envelope) = self
            .inner
            .assign_envelope(schedule, device, correlation_id, now)?;
        let mut fresh = false;
        self.inner
            .with_tracker(device, now, false, |tracker| {
                fresh = false;
                let (outcome, actions) = assign_once(tracker, now, &key, &envelope)?;
                fresh = outcome == DistributeOutcome::Published;
                Ok(actions)
            })
            .await?;
        Ok(if fresh {
            DistributeOutcome::Published
        } else {
            DistributeOutcome::AlreadyTracked
        })
    }

    /// [`TransportHandle::distribute`] for many schedules at once (a fleet's optimised day):
    /// the devices are read in one query, their delivery states in another and saved in one
    /// transaction, every send is recorded in one more, and then everything is published.
    /// Several schedules of one device are taken in order. Returns one outcome per schedule, in
    /// order; a device whose state another replica changed meanwhile is redone on its own.
    pub async fn distribute_many(
        &self,
        schedules: &[(&Schedule, Option<&str>)],
    ) -> Vec<TransportResult<DistributeOutcome>> {
        let inner = &self.inner;
        let now = Timestamp::now();
        // The devices in first-appearance order, each with the indices of its schedules.
        let mut ids: Vec<DeviceId> = Vec::new();
        let mut by_device: HashMap<&DeviceId, Vec<usize>> = HashMap::new();
        for (i, (s, _)) in schedules.iter().enumerate() {
            by_device
                .entry(s.device())
                .or_insert_with(|| {
                    ids.push(s.device().clone());
                    Vec::new()
                })
                .push(i);
        }
        let (devices, stored) = match async {
            let devices = inner.store.get_devices(&ids).await?;
            let stored = inner.store.outbox_load_many(&ids).await?;
            Ok::<_, StoreError>((devices, stored))
        }
        .await
        {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "batch distribution failed to load; distributing one by one");
                let mut out = Vec::with_capacity(schedules.len());
                for (s, c) in schedules {
                    out.push(self.distribute(s, *c).await);
                }
                return out;
            }
        };
        let mut out: Vec<Option<TransportResult<DistributeOutcome>>> =
            (0..schedules.len()).map(|_| None).collect();
        let mut writes = Vec::new();
        let mut pending = Vec::new();
        let mut redo = Vec::new();
        let devices: HashMap<&DeviceId, &DeviceRecord> = devices
            .iter()
            .filter(|d| d.decommissioned_at.is_none())
            .map(|d| (&d.id, d))
            .collect();
        let stored: HashMap<&DeviceId, _> = stored.iter().map(|r| (&r.device, r)).collect();
        for id in &ids {
            let device = devices.get(id).copied();
            let mine = by_device.remove(id).unwrap_or_default();
            let Some(device) = device else {
                for i in mine {
                    out[i] = Some(Err(TransportError::UnknownDevice(id.clone())));
                }
                continue;
            };
            let record = stored.get(id).copied();
            let mut tracker = match record {
                Some(r) => match inner.restore_state(r) {
                    Ok(state) => DeliveryTracker::restore(inner.config.tracker.clone(), state),
                    // Unreadable: the one-by-one path reports it per schedule.
                    Err(_) => {
                        redo.extend(mine);
                        continue;
                    }
                },
                None => inner.new_tracker(device),
            };
            let before = tracker.state().detached();
            let mut actions = Vec::new();
            for &i in &mine {
                let (schedule, correlation) = schedules[i];
                let result = inner
                    .assign_envelope(schedule, device, correlation, now)
                    .and_then(|(key, env)| assign_once(&mut tracker, now, &key, &env));
                out[i] = Some(result.map(|(outcome, more)| {
                    actions.extend(more);
                    outcome
                }));
            }
            let after = tracker.state().detached();
            if actions.is_empty() && after == before {
                if let Some(r) = record {
                    inner.keep_unchanged(r, tracker.into_state(), messages_read(r));
                }
                continue;
            }
            match state_write(&tracker, after, record.map(|r| (r, &before))) {
                Ok(write) => {
                    writes.push((write, record));
                    pending.push((tracker.codec(), actions, mine, tracker.into_state()));
                }
                Err(_) => redo.extend(mine),
            }
        }
        let mut batch = Vec::new();
        let (writes, records): (Vec<OutboxWrite>, Vec<Option<&OutboxRecord>>) =
            writes.into_iter().unzip();
        match inner.store.outbox_save_many(&writes, now).await {
            Ok(saved) => {
                let done = saved
                    .into_iter()
                    .zip(pending)
                    .zip(writes.iter().zip(records));
                for ((result, (codec, actions, mine, state)), (write, record)) in done {
                    match result {
                        Ok(_) => {
                            inner.note_saved(write, record, state);
                            batch.push((codec, actions));
                        }
                        Err(_) => redo.extend(mine),
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "saving a distribution batch failed; distributing one by one");
                redo.extend(pending.into_iter().flat_map(|(_, _, mine, _)| mine));
            }
        }
        inner.execute_many(batch, now).await;
        for i in redo {
            let (schedule, correlation) = schedules[i];
            out[i] = Some(self.distribute(schedule, correlation).await);
        }
        out.into_iter()
            .map(|r| r.unwrap_or(Ok(DistributeOutcome::AlreadyTracked)))
            .collect()
    }

    /// Sends a stored command (its id becomes the message id, so it must be a valid grid-proto
    /// message id: 1–64 of `A–Z a–z 0–9 . _ -`), tracked and retried like a schedule until the
    /// device answers or it expires. Idempotent per command id.
    pub async fn send_command(
        &self,
        command: &CommandRecord,
    ) -> TransportResult<DistributeOutcome> {
        let device = self.inner.active_device(&command.device).await?;
        self.send_command_to(&device, command).await
    }

    /// [`TransportHandle::send_command`] with the device's record as the caller has just read
    /// it (see [`TransportHandle::distribute_to`]).
    pub async fn send_command_to(
        &self,
        device: &DeviceRecord,
        command: &CommandRecord,
    ) -> TransportResult<DistributeOutcome> {
        check_target(device, &command.device)?;
        let now = Timestamp::now();
        let body = grid_proto::v1::Command::from_core(&command.command, command.expires_at)?;
        let id = MessageId::new(command.id.clone())?;
        let mut envelope = Envelope::new(id.clone(), device.id.clone(), now, Body::Command(body));
        envelope.correlation_id = command
            .correlation_id
            .as_deref()
            .filter(|c| valid_correlation(c))
            .map(str::to_owned);
        envelope.validate()?;
        let key = DeliveryKey::Command { id };
        let mut fresh = false;
        self.inner
            .with_tracker(device, now, false, |tracker| {
                fresh = false;
                if tracker.state_of(&key).is_some() {
                    return Ok(Vec::new());
                }
                fresh = true;
                Ok(tracker.command(now, envelope.clone())?)
            })
            .await?;
        Ok(if fresh {
            DistributeOutcome::Published
        } else {
            DistributeOutcome::AlreadyTracked
        })
    }
}

/// Refuses to send to `device` something addressed to `target`, or anything once the device is
/// decommissioned (as [`Inner::active_device`] would).
fn check_target(device: &DeviceRecord, target: &DeviceId) -> TransportResult<()> {
    if &device.id != target || device.decommissioned_at.is_some() {
        return Err(TransportError::UnknownDevice(target.clone()));
    }
    Ok(())
}

/// Lets `tracker` take a schedule version unless it already tracks it (or a newer one).
fn assign_once(
    tracker: &mut DeliveryTracker,
    now: Timestamp,
    key: &DeliveryKey,
    envelope: &Envelope,
) -> TransportResult<(DistributeOutcome, Vec<Action>)> {
    if tracker.state_of(key).is_some() {
        return Ok((DistributeOutcome::AlreadyTracked, Vec::new()));
    }
    match tracker.assign(now, envelope.clone()) {
        Ok(actions) => Ok((DistributeOutcome::Published, actions)),
        Err(grid_proto::Error::StaleVersion { .. }) => {
            Ok((DistributeOutcome::AlreadyTracked, Vec::new()))
        }
        Err(e) => Err(e.into()),
    }
}

fn valid_correlation(c: &str) -> bool {
    !c.is_empty() && c.len() <= 128 && c.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// The lifecycle event that moves a delivery to `to`.
fn event_to(to: ExecutionState) -> Option<LifecycleEvent> {
    use ExecutionState as S;
    use LifecycleEvent as E;
    Some(match to {
        S::Queued => return None,
        S::Delivered => E::Deliver,
        S::Accepted => E::Accept,
        S::Rejected => E::Reject,
        S::Executing => E::Start,
        S::Completed => E::Complete,
        S::Failed => E::Fail,
        S::Expired => E::Expire,
        S::Superseded => E::Supersede,
        S::Cancelled => E::Cancel,
    })
}

/// Store errors that only mean "already recorded" when mirroring tracker transitions.
fn benign(e: &StoreError) -> bool {
    matches!(e, StoreError::Conflict { .. } | StoreError::NotFound { .. })
}

impl Inner {
    fn now_stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// The device, if registered and not decommissioned (cached briefly).
    async fn active_device(&self, id: &DeviceId) -> TransportResult<DeviceRecord> {
        let device = match self.store.get_device(id).await {
            Ok(d) => d,
            Err(StoreError::NotFound { .. }) => {
                return Err(TransportError::UnknownDevice(id.clone()));
            }
            Err(e) => return Err(e.into()),
        };
        if device.decommissioned_at.is_some() {
            return Err(TransportError::UnknownDevice(id.clone()));
        }
        Ok(device)
    }

    /// Whether a device may talk to us: registered and not decommissioned.
    async fn device_allowed(&self, id: &DeviceId) -> TransportResult<bool> {
        if let Ok(cache) = self.devices.lock()
            && cache
                .get(id)
                .is_some_and(|t| t.elapsed() < DEVICE_CACHE_TTL)
        {
            return Ok(true);
        }
        // A lookup holds a connection of the inbound handlers' share: when every cached entry
        // runs out at once (a fleet that connected together), thousands of lookups queue here
        // instead of taking the ack writers' connections (measured: 16,384 handlers on 16
        // connections, thousands of 10 s acquire timeouts and dropped messages at 10,000 devices).
        let Ok(_connection) = self.inbound_db.acquire().await else {
            return Err(TransportError::Io(std::io::Error::other(
                "the transport is stopping",
            )));
        };
        match self.active_device(id).await {
            Ok(_) => {
                if let Ok(mut cache) = self.devices.lock() {
                    if cache.len() > 100_000 {
                        cache.clear();
                    }
                    cache.insert(id.clone(), Instant::now());
                }
                Ok(true)
            }
            Err(TransportError::UnknownDevice(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Loads the device's tracker from the outbox (or makes one), applies `f`, saves the new
    /// state with an optimistic revision check (re-reading and re-applying on a race with another
    /// replica), and only then carries out the actions: the outbox is written before anything is
    /// published. With `force_save` the state is saved even if unchanged (clearing a claim).
    async fn with_tracker<F>(
        &self,
        device: &DeviceRecord,
        now: Timestamp,
        force_save: bool,
        mut f: F,
    ) -> TransportResult<()>
    where
        F: FnMut(&mut DeliveryTracker) -> TransportResult<Vec<Action>>,
    {
        for _ in 0..SAVE_RETRIES {
            let stored = self.store.outbox_load(&device.id).await?;
            let mut tracker = match &stored {
                Some(r) => {
                    DeliveryTracker::restore(self.config.tracker.clone(), self.restore_state(r)?)
                }
                None => self.new_tracker(device),
            };
            let before = tracker.state().detached();
            let actions = f(&mut tracker)?;
            let after = tracker.state().detached();
            if !force_save && actions.is_empty() && after == before {
                if let Some(r) = &stored {
                    self.keep_unchanged(r, tracker.into_state(), messages_read(r));
                }
                return Ok(());
            }
            let write = state_write(&tracker, after, stored.as_ref().map(|r| (r, &before)))?;
            match self.store.outbox_save(&write, now).await {
                Ok(_) => {
                    let codec = tracker.codec();
                    self.note_saved(&write, stored.as_ref(), tracker.into_state());
                    self.execute(codec, actions, now).await;
                    return Ok(());
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(TransportError::Contention(device.id.clone()))
    }

    /// The `ScheduleAssign` envelope that carries `schedule` to `device`, and its delivery key.
    fn assign_envelope(
        &self,
        schedule: &Schedule,
        device: &DeviceRecord,
        correlation_id: Option<&str>,
        now: Timestamp,
    ) -> TransportResult<(DeliveryKey, Envelope)> {
        let body = ScheduleAssign::from_schedule(schedule, self.config.reversion_timeout);
        let mut envelope = Envelope::new(
            MessageId::new(random_hex(16))?,
            device.id.clone(),
            now,
            Body::ScheduleAssign(body),
        );
        envelope.correlation_id = correlation_id
            .filter(|c| valid_correlation(c))
            .map(str::to_owned);
        envelope.validate()?;
        let key = DeliveryKey::Schedule(grid_proto::v1::ScheduleRef {
            schedule_id: schedule.id().clone(),
            version: schedule.version(),
        });
        Ok((key, envelope))
    }

    /// The delivery state `record` holds: the one this server saved as it (taken out of
    /// [`Inner::saved`]; the save that follows puts the next one back), or parsed.
    fn restore_state(&self, record: &OutboxRecord) -> TransportResult<TrackerState> {
        if record.messages_apart()
            && let Some((state, _)) = self.saved.take(&record.device, &record.state)
        {
            return Ok(state);
        }
        saved_state(record)
    }

    /// Keeps `state`, just saved by `write` over `read` (the record it was read from), for the
    /// next [`Inner::restore_state`].
    fn note_saved(&self, write: &OutboxWrite, read: Option<&OutboxRecord>, state: TrackerState) {
        self.saved.put(
            &write.state,
            state,
            saved_bytes(write, read.map_or(0, messages_read)),
        );
    }

    /// Puts back `state`, restored from `record` (whose messages take `messages_bytes` of JSON)
    /// and left as it was (nothing to save).
    fn keep_unchanged(&self, record: &OutboxRecord, state: TrackerState, messages_bytes: usize) {
        if record.messages_apart() {
            self.saved
                .put(&record.state, state, record.state.len() + messages_bytes);
        }
    }

    fn new_tracker(&self, device: &DeviceRecord) -> DeliveryTracker {
        let mut seed = [0u8; 8];
        let _ = getrandom::fill(&mut seed);
        let tracker = DeliveryTracker::new(
            device.id.clone(),
            self.config.tracker.clone(),
            u64::from_le_bytes(seed),
        );
        // Until the device's first hello, speak the codec it was registered with.
        let mut state = tracker.state().clone();
        state.codec = match device.codec {
            crate::store::PayloadCodec::Json => Codec::Json,
            crate::store::PayloadCodec::Cbor => Codec::Cbor,
        };
        DeliveryTracker::restore(self.config.tracker.clone(), state)
    }

    /// Carries out a tracker's actions: record each (re)send in the store, then publish it;
    /// mirror state changes into the store (already-recorded ones are fine).
    async fn execute(&self, codec: Codec, actions: Vec<Action>, now: Timestamp) {
        self.execute_many(vec![(codec, actions)], now).await;
    }

    /// [`Inner::execute`] for several trackers at once: every schedule send is recorded in one
    /// transaction before anything is published.
    async fn execute_many(&self, batch: Vec<(Codec, Vec<Action>)>, now: Timestamp) {
        let sends: Vec<(grid_core::ScheduleId, grid_core::ScheduleVersion)> = batch
            .iter()
            .flat_map(|(_, actions)| actions.iter())
            .filter_map(|a| match a {
                Action::Send(env) => match &env.body {
                    Body::ScheduleAssign(b) => Some((b.schedule_id.clone(), b.version)),
                    _ => None,
                },
                Action::StateChanged { .. } => None,
            })
            .collect();
        if let Err(e) = self.store.record_schedule_sends(&sends, now).await {
            bump(&self.counters.errors);
            tracing::warn!(sends = sends.len(), error = %e, "recording sends failed");
        }
        for (codec, actions) in batch {
            self.execute_recorded(codec, actions, now).await;
        }
    }

    /// Publishes the sends (schedule sends already recorded) and mirrors state changes.
    async fn execute_recorded(&self, codec: Codec, actions: Vec<Action>, now: Timestamp) {
        for action in actions {
            match action {
                Action::Send(envelope) => self.publish(codec, &envelope, now).await,
                Action::StateChanged {
                    key,
                    to,
                    reason,
                    detail,
                    ..
                } => {
                    let Some(event) = event_to(to) else { continue };
                    if event == LifecycleEvent::Deliver {
                        continue; // recorded with the send
                    }
                    let why = detail.or_else(|| reason.map(|r| r.as_str().to_owned()));
                    let result = match &key {
                        DeliveryKey::Schedule(r) => self
                            .store
                            .apply_schedule_event(
                                &r.schedule_id,
                                r.version,
                                event,
                                now,
                                why.as_deref(),
                            )
                            .await
                            .map(|_| ()),
                        DeliveryKey::Command { id } => self
                            .store
                            .apply_command_event(id.as_str(), event, now, why.as_deref())
                            .await
                            .map(|_| ()),
                    };
                    if let Err(e) = result
                        && !benign(&e)
                    {
                        bump(&self.counters.errors);
                        tracing::warn!(?key, error = %e, "recording a delivery state change failed");
                    }
                }
            }
        }
    }

    async fn publish(&self, codec: Codec, envelope: &Envelope, now: Timestamp) {
        let recorded = match &envelope.body {
            // Recorded by `execute_many`, in one transaction with the others of its batch.
            Body::ScheduleAssign(_) => Ok(()),
            Body::Command(_) => self
                .store
                .apply_command_event(envelope.id.as_str(), LifecycleEvent::Deliver, now, None)
                .await
                .map(|_| ()),
            _ => Ok(()),
        };
        if let Err(e) = recorded
            && !benign(&e)
        {
            bump(&self.counters.errors);
            tracing::warn!(id = %envelope.id.as_str(), error = %e, "recording a send failed");
        }
        let payload = match codec.encode(envelope) {
            Ok(p) => p,
            Err(e) => {
                bump(&self.counters.errors);
                tracing::error!(id = %envelope.id.as_str(), error = %e, "cannot encode a message");
                return;
            }
        };
        let topic = Topic::for_envelope(envelope).to_string();
        match self
            .client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
        {
            Ok(()) => bump(&self.counters.messages_out),
            Err(e) => {
                // The tracker resends it at its next attempt.
                bump(&self.counters.errors);
                tracing::warn!(error = %e, "publish failed");
            }
        }
    }

    /// Handles one inbound message; refusals are logged and counted, never fatal.
    async fn on_message(&self, topic: &str, payload: &[u8], retained: bool) {
        if payload.is_empty() {
            // An empty retained payload clears a retained status or hello: not a message.
            return;
        }
        bump(&self.counters.messages_in);
        let now = Timestamp::now();
        let (_, envelope) = match decode_on_topic(topic, payload) {
            Ok(x) => x,
            Err(e) => {
                bump(&self.counters.refused);
                tracing::warn!(topic, error = %e, "refused an inbound message");
                return;
            }
        };
        match self.device_allowed(&envelope.device).await {
            Ok(true) => {}
            Ok(false) => {
                bump(&self.counters.refused);
                tracing::warn!(device = %envelope.device, "message from an unknown or decommissioned device");
                return;
            }
            Err(e) => {
                bump(&self.counters.errors);
                tracing::warn!(error = %e, "device lookup failed");
                return;
            }
        }
        let result = match &envelope.body {
            Body::Ack(_) => {
                // Acks are written in batches (one commit for many devices); the PUBACK waits
                // until this one is recorded.
                let (done, recorded) = tokio::sync::oneshot::channel();
                let job = AckJob {
                    envelope,
                    received: now,
                    done,
                };
                let shard = shard_of(&job.envelope.device, self.acks.len());
                match self.acks[shard].send(job).await {
                    Ok(()) => {
                        let _ = recorded.await;
                        return;
                    }
                    // The writer is gone (shutting down): record it directly.
                    Err(mpsc::error::SendError(job)) => {
                        let envelope = job.envelope;
                        let result = self.on_ack(&envelope, now).await;
                        if let Err(e) = result {
                            bump(&self.counters.errors);
                            tracing::warn!(device = %envelope.device, error = %e, "handling an ack failed");
                        }
                        return;
                    }
                }
            }
            Body::Status(status) => {
                let report = StatusReport {
                    device: envelope.device.clone(),
                    online: status.online,
                    // Arrival order decides (a last will carries its connect-time instant).
                    at: now,
                    agent_version: Some(status.agent_version.clone()),
                    firmware_version: status.firmware_version.clone(),
                    active_schedule: status.active.as_ref().map(|a| ScheduleRef {
                        id: a.schedule_id.clone(),
                        version: a.version,
                    }),
                    capabilities: status.capabilities.clone(),
                    clock_offset_ms: status.clock_offset_ms,
                };
                // Recorded in a batch; the PUBACK waits until this one is.
                let (done, recorded) = tokio::sync::oneshot::channel();
                match self.statuses.send(StatusJob { report, done }).await {
                    Ok(()) => {
                        let _ = recorded.await;
                        return;
                    }
                    // The writer is gone (shutting down): record it directly.
                    Err(mpsc::error::SendError(job)) => self
                        .store
                        .record_status(&job.report)
                        .await
                        .map(|_| ())
                        .map_err(Into::into),
                }
            }
            Body::Telemetry(t) => {
                for s in &t.samples {
                    match s.to_core() {
                        Ok(sample) => {
                            if self
                                .telemetry
                                .send((envelope.device.clone(), sample))
                                .await
                                .is_err()
                            {
                                break;
                            }
                        }
                        Err(e) => {
                            bump(&self.counters.refused);
                            tracing::warn!(device = %envelope.device, error = %e, "bad telemetry sample");
                        }
                    }
                }
                Ok(())
            }
            Body::Hello(_) => {
                if !self.newest_hello(&envelope, retained) {
                    tracing::debug!(device = %envelope.device, "skipped a retained hello already processed");
                    return;
                }
                let Ok(_connection) = self.inbound_db.acquire().await else {
                    return;
                };
                self.on_hello(&envelope, now).await
            }
            Body::ScheduleAssign(_) | Body::Command(_) => {
                bump(&self.counters.refused);
                Ok(())
            }
        };
        if let Err(e) = result {
            bump(&self.counters.errors);
            tracing::warn!(device = %envelope.device, kind = envelope.kind().as_str(), error = %e, "handling an inbound message failed");
        }
    }

    async fn on_ack(&self, envelope: &Envelope, now: Timestamp) -> TransportResult<()> {
        let Some(record) = ack_record(envelope, now) else {
            bump(&self.counters.refused);
            return Ok(());
        };
        let mut accepted = false;
        match self.store.record_ack(&record).await {
            Ok(AckOutcome::Applied { from, state }) => {
                bump(&self.counters.acks_applied);
                accepted = takes_delivery(from, state);
                if accepted {
                    bump(&self.counters.acceptances);
                }
            }
            Ok(AckOutcome::Duplicate { .. }) => bump(&self.counters.acks_duplicate),
            Ok(AckOutcome::Ignored { .. }) => bump(&self.counters.acks_ignored),
            Err(e @ (StoreError::NotFound { .. } | StoreError::Invalid { .. })) => {
                bump(&self.counters.refused);
                tracing::warn!(device = %envelope.device, error = %e, "refused an ack");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
        // Stop the retries (and let the tracker follow the lifecycle).
        let device = self.active_device(&envelope.device).await?;
        self.with_tracker(&device, now, false, |tracker| {
            if std::mem::take(&mut accepted) {
                observe_acceptance(tracker, envelope, now);
            }
            Ok(tracker.on_ack(now, envelope))
        })
        .await
    }

    /// Records a batch of acks in one transaction: every ack row and lifecycle move, and every
    /// device's delivery state (read and locked in it, saved guarded by the revision read). The
    /// per-ack path
    /// ([`Inner::on_ack`]) is the fallback for whatever the batch could not settle (a database
    /// error, a race with another replica, a device without a saved tracker). Returns where the
    /// time went (for the debug log).
    async fn on_acks(&self, jobs: &[AckJob]) -> AckBatchTimes {
        let mut times = AckBatchTimes::default();
        let mut phase = Instant::now();
        let now = Timestamp::now();
        let mut records = Vec::with_capacity(jobs.len());
        let mut batched: Vec<&AckJob> = Vec::with_capacity(jobs.len());
        for job in jobs {
            match ack_record(&job.envelope, job.received) {
                Some(r) => {
                    records.push(r);
                    batched.push(job);
                }
                None => bump(&self.counters.refused),
            }
        }
        if records.is_empty() {
            return times;
        }
        // Each device once, with the state this server last saved for it: unchanged since, it
        // is not read back with its messages.
        let mut devices: Vec<OutboxRead> = Vec::new();
        let mut seen: HashSet<&DeviceId> = HashSet::new();
        for job in &batched {
            if seen.insert(&job.envelope.device) {
                devices.push(OutboxRead {
                    device: job.envelope.device.clone(),
                    known_state: self.saved.detached_json(&job.envelope.device),
                });
            }
        }
        // Made inside the store's transaction, once the acks' outcomes are known and the states
        // are read (and locked).
        let mut plan = AckPlan::default();
        let mut then = |results: &[crate::store::StoreResult<AckOutcome>],
                        stored: &[OutboxRecord]| {
            let stored: HashMap<&DeviceId, &OutboxRecord> =
                stored.iter().map(|r| (&r.device, r)).collect();
            plan = self.plan_ack_states(&batched, results, &stored);
            std::mem::take(&mut plan.writes)
        };
        let done = self
            .store
            .record_acks_and_save(&records, &devices, &mut then, now)
            .await;
        let AckPlan {
            pending,
            mut alone,
            accepted,
            writes: _,
        } = plan;
        let saved = match done {
            Ok(done) => {
                times.record = lap(&mut phase);
                for (job, result) in batched.iter().zip(&done.acks) {
                    self.count_ack(job, result);
                }
                done.saved
            }
            Err(e) => {
                tracing::warn!(acks = records.len(), error = %e, "writing an ack batch failed; writing them one by one");
                for job in &batched {
                    if let Err(e) = self.on_ack(&job.envelope, job.received).await {
                        bump(&self.counters.errors);
                        tracing::warn!(device = %job.envelope.device, error = %e, "handling an ack failed");
                    }
                }
                times.alone = batched.len();
                return times;
            }
        };
        for (result, p) in saved.into_iter().zip(pending) {
            times.state_bytes += p.state_bytes;
            match result {
                Ok(_) => {
                    for seconds in p.latencies {
                        crate::metrics::delivery_latency(seconds);
                    }
                    self.saved.put(&p.detached_json, p.state, p.saved_bytes);
                    self.execute(p.codec, p.actions, now).await;
                }
                // Another replica saved it meanwhile: redo this device alone.
                Err(_) => alone.push((p.device, p.acks)),
            }
        }
        times.alone = alone.iter().map(|(_, l)| l.len()).sum();
        phase = Instant::now();
        for (device, list) in alone {
            let record = match self.active_device(&device).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(%device, error = %e, "skipping the delivery state of an ack");
                    continue;
                }
            };
            for job in list {
                let mut observe = accepted.contains(&std::ptr::from_ref(job).addr());
                let result = self
                    .with_tracker(&record, now, false, |tracker| {
                        if std::mem::take(&mut observe) {
                            observe_acceptance(tracker, &job.envelope, job.received);
                        }
                        Ok(tracker.on_ack(job.received, &job.envelope))
                    })
                    .await;
                if let Err(e) = result {
                    bump(&self.counters.errors);
                    tracing::warn!(%device, error = %e, "updating a delivery state failed");
                }
            }
        }
        times.rest = lap(&mut phase);
        times
    }

    /// Counts a batched ack's outcome (and logs a refusal or failure).
    fn count_ack(&self, job: &AckJob, result: &crate::store::StoreResult<AckOutcome>) {
        match result {
            Ok(AckOutcome::Applied { from, state }) => {
                bump(&self.counters.acks_applied);
                if takes_delivery(*from, *state) {
                    bump(&self.counters.acceptances);
                }
            }
            Ok(AckOutcome::Duplicate { .. }) => bump(&self.counters.acks_duplicate),
            Ok(AckOutcome::Ignored { .. }) => bump(&self.counters.acks_ignored),
            Err(e @ (StoreError::NotFound { .. } | StoreError::Invalid { .. })) => {
                bump(&self.counters.refused);
                tracing::warn!(device = %job.envelope.device, error = %e, "refused an ack");
            }
            Err(e) => {
                bump(&self.counters.errors);
                tracing::warn!(device = %job.envelope.device, error = %e, "recording an ack failed");
            }
        }
    }

    /// What a batch of acks does to its devices' delivery states, given the acks' outcomes
    /// (`results`, in `batched`'s order) and the states read (`stored`): each device's acks that
    /// were recorded are applied to its tracker in arrival order. Pure apart from logging: the
    /// caller saves the writes and carries out the rest once they are saved.
    fn plan_ack_states<'a>(
        &self,
        batched: &[&'a AckJob],
        results: &[crate::store::StoreResult<AckOutcome>],
        stored: &HashMap<&DeviceId, &OutboxRecord>,
    ) -> AckPlan<'a> {
        let mut plan = AckPlan::default();
        // The devices whose acks were recorded, each with its acks in arrival order.
        let mut per_device: Vec<(DeviceId, Vec<&AckJob>)> = Vec::new();
        let mut device_index: HashMap<&DeviceId, usize> = HashMap::new();
        for (job, result) in batched.iter().zip(results) {
            match result {
                Ok(AckOutcome::Applied { from, state }) => {
                    if takes_delivery(*from, *state) {
                        plan.accepted.insert(std::ptr::from_ref(*job).addr());
                    }
                }
                Ok(_) => {}
                Err(_) => continue,
            }
            match device_index.get(&job.envelope.device) {
                Some(&k) => per_device[k].1.push(job),
                None => {
                    device_index.insert(&job.envelope.device, per_device.len());
                    per_device.push((job.envelope.device.clone(), vec![job]));
                }
            }
        }
        for (device, list) in per_device {
            let Some(record) = stored.get(&device) else {
                plan.alone.push((device, list));
                continue;
            };
            // The bytes of messages the record holds apart, for the cache's accounting.
            let mut messages_bytes = messages_read(record);
            let state = if record.messages_omitted {
                // Not read back: the state is the cached one, unless another task took it
                // meanwhile (then the one-by-one path reads it whole).
                match self.saved.take(&device, &record.state) {
                    Some((state, bytes)) => {
                        messages_bytes = bytes.saturating_sub(record.state.len());
                        state
                    }
                    None => {
                        plan.alone.push((device, list));
                        continue;
                    }
                }
            } else {
                match self.restore_state(record) {
                    Ok(state) => state,
                    Err(e) => {
                        bump(&self.counters.errors);
                        tracing::warn!(%device, error = %e, "unreadable delivery state");
                        continue;
                    }
                }
            };
            let mut tracker = DeliveryTracker::restore(self.config.tracker.clone(), state);
            let before = tracker.state().detached();
            let mut actions = Vec::new();
            let mut latencies = Vec::new();
            for job in &list {
                if plan.accepted.contains(&std::ptr::from_ref(*job).addr()) {
                    latencies.extend(acceptance_latency(&tracker, &job.envelope, job.received));
                }
                actions.extend(tracker.on_ack(job.received, &job.envelope));
            }
            // The acks themselves already moved the lifecycle in the store.
            actions.retain(|a| match a {
                Action::StateChanged { key, to, .. } => {
                    !list.iter().any(|j| acks_state(&j.envelope, key, *to))
                }
                Action::Send(_) => true,
            });
            let after = tracker.state().detached();
            if actions.is_empty() && after == before {
                self.keep_unchanged(record, tracker.into_state(), messages_bytes);
                continue;
            }
            let Ok(write) = state_write(&tracker, after, Some((*record, &before))) else {
                bump(&self.counters.errors);
                continue;
            };
            plan.pending.push(PlannedSave {
                codec: tracker.codec(),
                actions,
                device,
                acks: list,
                latencies,
                state_bytes: write.state.len() + write.messages.as_ref().map_or(0, String::len),
                state: tracker.into_state(),
                detached_json: write.state.clone(),
                saved_bytes: saved_bytes(&write, messages_bytes),
            });
            plan.writes.push(write);
        }
        plan
    }

    /// Notes a hello's `sent_at`; false for a retained hello no newer than one already processed
    /// from the device (a re-subscription delivers every retained hello again).
    fn newest_hello(&self, envelope: &Envelope, retained: bool) -> bool {
        let Ok(mut seen) = self.hellos.lock() else {
            return true;
        };
        match seen.get(&envelope.device) {
            Some(last) if retained && envelope.sent_at <= *last => false,
            _ => {
                if seen.len() > 1_000_000 {
                    seen.clear();
                }
                let newest = seen
                    .get(&envelope.device)
                    .map_or(envelope.sent_at, |l| (*l).max(envelope.sent_at));
                seen.insert(envelope.device.clone(), newest);
                true
            }
        }
    }

    /// Answers a hello with exactly what the device lacks: the tracker resends what the device
    /// does not hold, and schedules or commands the store has queued but no tracker took (a
    /// replica died between storing and distributing) are assigned now.
    async fn on_hello(&self, envelope: &Envelope, now: Timestamp) -> TransportResult<()> {
        let Body::Hello(hello) = &envelope.body else {
            return Ok(());
        };
        let device = self.active_device(&envelope.device).await?;
        let status = StatusReport {
            device: device.id.clone(),
            online: true,
            at: now,
            agent_version: Some(hello.agent_version.clone()),
            firmware_version: None,
            active_schedule: None,
            capabilities: hello.capabilities.clone(),
            clock_offset_ms: None,
        };
        self.store.record_status(&status).await?;
        let pending = self.untracked_envelopes(&device, now).await?;
        self.with_tracker(&device, now, false, |tracker| {
            let mut actions = tracker.on_hello(now, envelope);
            for (key, env) in &pending {
                if tracker.state_of(key).is_some() {
                    continue;
                }
                let more = match &env.body {
                    Body::ScheduleAssign(_) => match tracker.assign(now, env.clone()) {
                        Ok(a) => a,
                        Err(grid_proto::Error::StaleVersion { .. }) => Vec::new(),
                        Err(e) => return Err(e.into()),
                    },
                    _ => tracker.command(now, env.clone())?,
                };
                actions.extend(more);
            }
            Ok(actions)
        })
        .await
    }

    /// Envelopes for the device's queued (never sent) schedules and commands that are still
    /// valid.
    async fn untracked_envelopes(
        &self,
        device: &DeviceRecord,
        now: Timestamp,
    ) -> TransportResult<Vec<(DeliveryKey, Envelope)>> {
        let mut out = Vec::new();
        for rec in self.store.open_schedules(&device.id).await? {
            if rec.state != ExecutionState::Queued || rec.schedule.expires_at() <= now {
                continue;
            }
            let s = &rec.schedule;
            let body = ScheduleAssign::from_schedule(s, self.config.reversion_timeout);
            let mut env = Envelope::new(
                MessageId::new(random_hex(16))?,
                device.id.clone(),
                now,
                Body::ScheduleAssign(body),
            );
            env.correlation_id = rec.correlation_id.filter(|c| valid_correlation(c));
            if env.validate().is_err() {
                continue;
            }
            let key = DeliveryKey::Schedule(grid_proto::v1::ScheduleRef {
                schedule_id: s.id().clone(),
                version: s.version(),
            });
            out.push((key, env));
        }
        let commands = self
            .store
            .list_commands(&CommandFilter {
                device: Some(device.id.clone()),
                state: Some(ExecutionState::Queued),
                limit: 100,
                ..Default::default()
            })
            .await?;
        for c in commands.items {
            if c.expires_at <= now {
                continue;
            }
            let Ok(id) = MessageId::new(c.id.clone()) else {
                continue;
            };
            let Ok(body) = grid_proto::v1::Command::from_core(&c.command, c.expires_at) else {
                continue;
            };
            let mut env = Envelope::new(id.clone(), device.id.clone(), now, Body::Command(body));
            env.correlation_id = c.correlation_id.filter(|x| valid_correlation(x));
            if env.validate().is_ok() {
                out.push((DeliveryKey::Command { id }, env));
            }
        }
        Ok(out)
    }
}

/// Sends the PUBACKs of inbound messages in the order the messages arrived, each once its
/// handler is done (so the broker learns of a message only once the store has it). Handlers run
/// concurrently and finish in any order, but MQTT requires acks in arrival order (MQTT 3.1.1
/// §4.6, MQTT 5 §4.6); rumqttd drops a connection that acks out of order (measured: the demo's
/// server lost most acks that way).
async fn in_order_acker(
    inner: Arc<Inner>,
    mut queue: mpsc::UnboundedReceiver<(rumqttc::Publish, tokio::sync::oneshot::Receiver<()>)>,
) {
    while let Some((publish, handled)) = queue.recv().await {
        // A handler that panicked drops its sender: the message is acked as handled (it was
        // logged); the broker would otherwise redeliver it forever.
        let _ = handled.await;
        if inner.client.try_ack(&publish).is_err() {
            let _ = inner.client.ack(&publish).await;
        }
    }
}

async fn event_loop(inner: Arc<Inner>, mut eventloop: EventLoop) {
    let filter = server_subscription(inner.config.share_group.as_deref());
    let permits = Arc::new(Semaphore::new(inner.config.inbound_concurrency.max(1)));
    let (ack_queue, acks) = mpsc::unbounded_channel();
    let acker = tokio::spawn(in_order_acker(inner.clone(), acks));
    let mut stop = inner.shutdown.subscribe();
    let mut failures: u32 = 0;
    loop {
        let event = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                failures = 0;
                inner.healthy.store(true, Ordering::Relaxed);
                tracing::info!(client_id = %inner.config.client_id, %filter, "connected to the MQTT broker");
                // A clean session forgets subscriptions: subscribe on every (re)connect. The
                // request queue may be full right after a reconnect (acks and resends queued
                // while the broker was away), so the subscription waits for room in a task of
                // its own while this loop keeps polling (measured: a 10,000-device broker
                // restart dropped the subscription and the server heard nothing more).
                let client = inner.client.clone();
                let topic = filter.clone();
                tokio::spawn(async move {
                    if let Err(e) = client.subscribe(topic, QoS::AtLeastOnce).await {
                        tracing::error!(error = %e, "subscribing failed");
                    }
                });
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let ok = ack
                    .return_codes
                    .iter()
                    .all(|c| !matches!(c, rumqttc::SubscribeReasonCode::Failure));
                if ok {
                    inner.subscribed.send_replace(true);
                } else {
                    tracing::error!(%filter, "the broker refused the subscription");
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                let inner = inner.clone();
                let (handled, done) = tokio::sync::oneshot::channel();
                if publish.qos != QoS::AtMostOnce {
                    let _ = ack_queue.send((publish.clone(), done));
                }
                tokio::spawn(async move {
                    inner
                        .on_message(&publish.topic, &publish.payload, publish.retain)
                        .await;
                    let _ = handled.send(());
                    drop(permit);
                });
            }
            Ok(_) => {}
            Err(e) => {
                inner.healthy.store(false, Ordering::Relaxed);
                inner.subscribed.send_replace(false);
                failures = failures.saturating_add(1);
                if failures == 1 || failures.is_multiple_of(30) {
                    tracing::warn!(error = %e, "MQTT connection lost; reconnecting");
                }
                let pause = Duration::from_millis(200 * u64::from(failures.min(10)));
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => break,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
    inner.healthy.store(false, Ordering::Relaxed);
    drop(ack_queue);
    let _ = tokio::time::timeout(Duration::from_millis(500), acker).await;
    let _ = inner.client.try_disconnect();
    // Let the disconnect go out.
    let _ = tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await;
}

/// Claims due trackers from the outbox and polls them (resends, expiries).
async fn retry_loop(inner: Arc<Inner>) {
    let mut stop = inner.shutdown.subscribe();
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            _ = tokio::time::sleep(inner.config.retry_interval) => {}
        }
        if !inner.healthy.load(Ordering::Relaxed) {
            continue;
        }
        let now = Timestamp::now();
        let claimed = match inner
            .store
            .outbox_claim_due(now, &inner.config.client_id, inner.config.claim_lease, 500)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                bump(&inner.counters.errors);
                tracing::warn!(error = %e, "claiming due deliveries failed");
                continue;
            }
        };
        let mut tasks = tokio::task::JoinSet::new();
        for record in claimed {
            let inner = inner.clone();
            tasks.spawn(async move {
                let device = match inner.active_device(&record.device).await {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::warn!(device = %record.device, error = %e, "skipping a due delivery");
                        return;
                    }
                };
                if let Err(e) = inner
                    .with_tracker(&device, now, true, |tracker| Ok(tracker.poll(now)))
                    .await
                {
                    bump(&inner.counters.errors);
                    tracing::warn!(device = %device.id, error = %e, "retrying deliveries failed");
                }
            });
            while tasks.len() >= 32 {
                tasks.join_next().await;
            }
        }
        while tasks.join_next().await.is_some() {}
        if inner.now_stopping() {
            break;
        }
    }
}

/// A delivery state as saved: detached with its messages apart, or whole (saved before the
/// split).
fn saved_state(record: &OutboxRecord) -> TransportResult<TrackerState> {
    if record.messages_omitted {
        // Only the ack batch reads records this way, and it takes their states from the cache.
        return Err(
            StoreError::invalid("outbox.messages", "omitted from the read and not held").into(),
        );
    }
    match &record.messages {
        Some(messages) => Ok(TrackerState::attach(
            serde_json::from_str(&record.state)?,
            serde_json::from_str(messages)?,
        )?),
        None => Ok(serde_json::from_str(&record.state)?),
    }
}

/// What to save of `tracker`'s state (`detached` is its detached part) over `saved` (the record
/// it was read from and the detached state read): the detached part always, the messages only
/// when the saved ones do not fit it any more (a new record, one saved whole, or other
/// deliveries). Messages never change while tracked, so an ack rewrites a few hundred bytes.
fn state_write(
    tracker: &DeliveryTracker,
    detached: DetachedState,
    saved: Option<(&OutboxRecord, &DetachedState)>,
) -> TransportResult<OutboxWrite> {
    let kept = saved.is_some_and(|(record, read)| {
        record.messages_apart() && read.message_ids().eq(detached.message_ids())
    });
    let messages = if kept {
        None
    } else {
        Some(serde_json::to_string(&tracker.state().messages())?)
    };
    Ok(OutboxWrite {
        device: tracker.device().clone(),
        state: serde_json::to_string(&detached)?,
        messages,
        next_wakeup_at: tracker.next_wakeup(),
        expected_revision: saved.map(|(record, _)| record.revision),
    })
}

/// The bytes of JSON the outbox holds for a device once `write` is saved over a record whose
/// messages take `kept_messages` bytes: its detached state, and its messages or the ones it keeps.
fn saved_bytes(write: &OutboxWrite, kept_messages: usize) -> usize {
    write.state.len() + write.messages.as_ref().map_or(kept_messages, String::len)
}

/// The bytes of messages JSON read with `record` (0 if saved whole, or omitted from the read).
fn messages_read(record: &OutboxRecord) -> usize {
    record.messages.as_ref().map_or(0, String::len)
}

/// The store's record of an inbound ack; `None` when it names no target.
fn ack_record(envelope: &Envelope, received: Timestamp) -> Option<AckRecord> {
    let Body::Ack(ack) = &envelope.body else {
        return None;
    };
    let target = match (&ack.schedule, &ack.ref_id) {
        (Some(s), _) => AckTarget::Schedule {
            id: s.schedule_id.clone(),
            version: s.version,
        },
        (None, Some(r)) => AckTarget::Command {
            id: r.as_str().to_owned(),
        },
        (None, None) => return None,
    };
    Some(AckRecord {
        message_id: envelope.id.as_str().to_owned(),
        device: envelope.device.clone(),
        target,
        state: ack.state,
        reason_code: ack.reason.map(|r| r.as_str().to_owned()),
        reason: ack.detail.clone(),
        sent_at: envelope.sent_at,
        received_at: received,
    })
}

/// Feeds the delivery-latency histogram with an acceptance the store applied (see
/// [`acceptance_latency`]).
fn observe_acceptance(tracker: &DeliveryTracker, ack: &Envelope, received: Timestamp) {
    if let Some(seconds) = acceptance_latency(tracker, ack, received) {
        crate::metrics::delivery_latency(seconds);
    }
}

/// The delivery latency of an acceptance, in seconds: the time from the schedule version's first
/// send to the ack's arrival. The tracked message's `sent_at` is the instant of the first send
/// (the store records the same instant as `first_sent_at`; resends repeat the message
/// unchanged).
fn acceptance_latency(
    tracker: &DeliveryTracker,
    ack: &Envelope,
    received: Timestamp,
) -> Option<f64> {
    let Body::Ack(Ack {
        schedule: Some(r), ..
    }) = &ack.body
    else {
        return None;
    };
    let key = DeliveryKey::Schedule(r.clone());
    let d = tracker.deliveries().iter().find(|d| d.key == key)?;
    let ms = received.as_millisecond() - d.message()?.sent_at.as_millisecond();
    Some(ms.max(0) as f64 / 1000.0)
}

/// Which of `n` ack writers takes a device's acks (stable per device, so its acks stay in order).
fn shard_of(device: &DeviceId, n: usize) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    device.hash(&mut h);
    (h.finish() % n.max(1) as u64) as usize
}

/// Whether `envelope` is an ack that reports `key` in state `to` (so the store already has it).
fn acks_state(envelope: &Envelope, key: &DeliveryKey, to: ExecutionState) -> bool {
    let Body::Ack(ack) = &envelope.body else {
        return false;
    };
    if ack.state != to {
        return false;
    }
    match key {
        DeliveryKey::Schedule(r) => ack.schedule.as_ref() == Some(r),
        DeliveryKey::Command { id } => ack.schedule.is_none() && ack.ref_id.as_ref() == Some(id),
    }
}

/// Drains the ack queue in batches: whatever has queued up while the previous batch was being
/// written goes into the next (no artificial delay, so a lone ack is written at once).
async fn ack_writer(inner: Arc<Inner>, mut rx: mpsc::Receiver<AckJob>) {
    let mut stop = inner.shutdown.subscribe();
    while let Some(batch) = next_batch(&mut rx, &mut stop, MAX_ACK_BATCH).await {
        let started = Instant::now();
        let now_ms = Timestamp::now().as_millisecond();
        let waited_ms = batch
            .iter()
            .map(|j| now_ms - j.received.as_millisecond())
            .max()
            .unwrap_or(0);
        let times = inner.on_acks(&batch).await;
        tracing::debug!(
            acks = batch.len(),
            waited_ms,
            write_ms = started.elapsed().as_millis(),
            record_and_save_ms = times.record.as_secs_f64() * 1e3,
            alone = times.alone,
            alone_ms = times.rest.as_secs_f64() * 1e3,
            state_bytes = times.state_bytes,
            "ack batch written"
        );
        for job in batch {
            let _ = job.done.send(());
        }
    }
    let rest = queued_at_stop(&mut rx).await;
    if !rest.is_empty() {
        inner.on_acks(&rest).await;
    }
}

/// A batch writer's next batch: waits for one item (`None` once the transport stops), then takes
/// whatever else has queued up meanwhile, up to `max` (no artificial delay: a lone item goes at
/// once).
async fn next_batch<T>(
    rx: &mut mpsc::Receiver<T>,
    stop: &mut watch::Receiver<bool>,
    max: usize,
) -> Option<Vec<T>> {
    let first = tokio::select! {
        _ = stop.wait_for(|s| *s) => None,
        item = rx.recv() => item,
    }?;
    let mut batch = vec![first];
    while batch.len() < max {
        match rx.try_recv() {
            Ok(item) => batch.push(item),
            Err(_) => break,
        }
    }
    Some(batch)
}

/// What is still queued when the transport stops (a batch writer writes it before it ends).
async fn queued_at_stop<T>(rx: &mut mpsc::Receiver<T>) -> Vec<T> {
    rx.close();
    let mut rest = Vec::new();
    while let Some(item) = rx.recv().await {
        rest.push(item);
    }
    rest
}

/// Writes telemetry in batches of up to `telemetry_batch` samples, at least every
/// `telemetry_flush`.
async fn telemetry_writer(inner: Arc<Inner>, mut rx: mpsc::Receiver<(DeviceId, TelemetrySample)>) {
    let mut stop = inner.shutdown.subscribe();
    let max = inner.config.telemetry_batch.max(1);
    let mut batch = Vec::with_capacity(max);
    loop {
        let first = tokio::select! {
            _ = stop.wait_for(|s| *s) => None,
            s = rx.recv() => s,
        };
        let Some(first) = first else {
            // Flush what is queued, then stop.
            while let Ok(s) = rx.try_recv() {
                batch.push(s);
            }
            flush(&inner, &mut batch).await;
            break;
        };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + inner.config.telemetry_flush;
        while batch.len() < max {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(s)) => batch.push(s),
                _ => break,
            }
        }
        flush(&inner, &mut batch).await;
    }
}

/// Records status reports in batches (one commit each), holding one of the inbound handlers'
/// connections while it writes.
async fn status_writer(inner: Arc<Inner>, mut rx: mpsc::Receiver<StatusJob>) {
    let mut stop = inner.shutdown.subscribe();
    while let Some(batch) = next_batch(&mut rx, &mut stop, MAX_STATUS_BATCH).await {
        record_statuses(&inner, batch).await;
    }
    let rest = queued_at_stop(&mut rx).await;
    if !rest.is_empty() {
        record_statuses(&inner, rest).await;
    }
}

async fn record_statuses(inner: &Inner, batch: Vec<StatusJob>) {
    let reports: Vec<StatusReport> = batch.iter().map(|j| j.report.clone()).collect();
    let results = {
        let _connection = inner.inbound_db.acquire().await;
        match inner.store.record_statuses(&reports).await {
            Ok(results) => results,
            Err(e) => {
                tracing::warn!(reports = reports.len(), error = %e, "writing a status batch failed; writing them one by one");
                let mut results = Vec::with_capacity(reports.len());
                for report in &reports {
                    results.push(inner.store.record_status(report).await);
                }
                results
            }
        }
    };
    for (job, result) in batch.into_iter().zip(results) {
        if let Err(e) = result {
            bump(&inner.counters.errors);
            tracing::warn!(device = %job.report.device, kind = "status", error = %e, "handling an inbound message failed");
        }
        let _ = job.done.send(());
    }
}

async fn flush(inner: &Inner, batch: &mut Vec<(DeviceId, TelemetrySample)>) {
    if batch.is_empty() {
        return;
    }
    match inner.store.insert_telemetry(batch).await {
        Ok(n) => {
            inner
                .counters
                .telemetry_samples
                .fetch_add(n, Ordering::Relaxed);
        }
        Err(e) => {
            bump(&inner.counters.errors);
            tracing::warn!(samples = batch.len(), error = %e, "writing telemetry failed");
        }
    }
    batch.clear();
}

/// After the first subscription: hand every queued, never-distributed schedule and command to
/// its device's tracker (a replica may have died between storing and distributing).
async fn reconcile_on_start(handle: TransportHandle) {
    let mut ready = handle.inner.subscribed.subscribe();
    let mut stop = handle.inner.shutdown.subscribe();
    let ready_now = tokio::select! {
        _ = stop.wait_for(|s| *s) => false,
        r = ready.wait_for(|s| *s) => r.is_ok(),
    };
    if !ready_now {
        return;
    }
    let resumed = resume_queued(&handle, None).await;
    if resumed > 0 {
        tracing::info!(resumed, "resumed queued deliveries");
    }
}

/// After every new subscription (the first, and each after a reconnect: the server's session is
/// clean, so whatever devices sent while it had no subscription was dropped by the broker), and
/// once [`TransportConfig::resync_delay`] has passed with the subscription still up, asks every
/// device whose report is overdue where its deliveries stand ([`DeliveryTracker::resync`]): a
/// lost `executing`, `completed` or `failed` ack arrives again. With several replicas each one's
/// subscription triggers a sweep; the answers are idempotent.
async fn resync_on_subscribe(inner: Arc<Inner>) {
    let subscribed = inner.subscribed.subscribe();
    let stop = inner.shutdown.subscribe();
    let delay = inner.config.resync_delay;
    resync_loop(subscribed, stop, delay, || {
        let inner = inner.clone();
        async move {
            let asked = resync_sweep(&inner).await;
            bump(&inner.counters.resyncs);
            if asked > 0 {
                tracing::info!(asked, "asked devices again about overdue deliveries");
            }
        }
    })
    .await;
}

/// The schedule of [`resync_on_subscribe`]: one `sweep` per subscription that lasts `delay`,
/// until `stop`. A subscription lost and made again while a sweep runs gets a sweep of its own
/// (the broker may have dropped device reports during that outage too).
async fn resync_loop<F, Fut>(
    mut subscribed: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
    delay: Duration,
    mut sweep: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    loop {
        // Wait for a subscription that is new to this loop.
        let up = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            r = subscribed.wait_for(|s| *s) => r.is_ok(),
        };
        if !up {
            return;
        }
        let lost = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(delay) => false,
            // Lost again before the delay: the next subscription starts over.
            r = subscribed.wait_for(|s| !*s) => r.is_ok(),
        };
        if !lost {
            sweep().await;
            // The subscription changed while the sweep ran (lost, and perhaps made again): start
            // over, so a new one is swept too.
            if subscribed.has_changed().unwrap_or(false) {
                continue;
            }
        }
        // Wait for the subscription to go away before looking for the next one.
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            r = subscribed.wait_for(|s| !*s) => if r.is_err() { return },
        }
    }
}

/// Devices read per page by a resync sweep.
const RESYNC_PAGE: u32 = 500;

/// One resync: walks the devices with unfinished deliveries in pages and resyncs the trackers
/// with something overdue (at most 32 at once). Returns how many deliveries were asked about.
async fn resync_sweep(inner: &Arc<Inner>) -> u64 {
    let now = Timestamp::now();
    let asked = Arc::new(AtomicU64::new(0));
    let mut after: Option<DeviceId> = None;
    loop {
        if inner.now_stopping() {
            break;
        }
        let page = match inner
            .store
            .outbox_open_devices(after.as_ref(), RESYNC_PAGE)
            .await
        {
            Ok(p) => p,
            Err(e) => {
                bump(&inner.counters.errors);
                tracing::warn!(error = %e, "resync: listing devices failed");
                break;
            }
        };
        let Some(last) = page.last().cloned() else {
            break;
        };
        let records = match inner.store.outbox_load_many(&page).await {
            Ok(r) => r,
            Err(e) => {
                bump(&inner.counters.errors);
                tracing::warn!(error = %e, "resync: loading delivery states failed");
                break;
            }
        };
        let mut tasks = tokio::task::JoinSet::new();
        for record in records {
            let overdue = saved_state(&record).is_ok_and(|state| {
                DeliveryTracker::restore(inner.config.tracker.clone(), state).needs_resync(now)
            });
            if !overdue {
                continue;
            }
            let (inner, asked) = (inner.clone(), asked.clone());
            tasks.spawn(async move {
                let device = match inner.active_device(&record.device).await {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::debug!(device = %record.device, error = %e, "resync: skipped");
                        return;
                    }
                };
                // The closure runs again on a revision conflict: count the attempt that was saved.
                let mut sends = 0;
                let result = inner
                    .with_tracker(&device, now, false, |tracker| {
                        let actions = tracker.resync(now);
                        sends = actions
                            .iter()
                            .filter(|a| matches!(a, Action::Send(_)))
                            .count();
                        Ok(actions)
                    })
                    .await;
                match result {
                    Ok(()) => {
                        asked.fetch_add(sends as u64, Ordering::Relaxed);
                    }
                    Err(e) => {
                        bump(&inner.counters.errors);
                        tracing::warn!(device = %device.id, error = %e, "resync failed");
                    }
                }
            });
            while tasks.len() >= 32 {
                tasks.join_next().await;
            }
        }
        while tasks.join_next().await.is_some() {}
        if page.len() < RESYNC_PAGE as usize {
            break;
        }
        after = Some(last);
    }
    let asked = asked.load(Ordering::Relaxed);
    inner
        .counters
        .resync_asked
        .fetch_add(asked, Ordering::Relaxed);
    asked
}

/// While running: every claim lease, hand schedules and commands that are still queued a lease
/// after they were stored to their trackers. A replica that dies between storing a schedule and
/// distributing it (SIGKILL mid-request) leaves it queued with no tracker; without this sweep it
/// would wait for the other replicas' restart or the device's next hello. A live replica's own
/// store-then-distribute takes milliseconds, far less than the lease, and distributing twice is
/// harmless ([`DistributeOutcome::AlreadyTracked`]).
async fn resume_orphans(handle: TransportHandle) {
    let mut stop = handle.inner.shutdown.subscribe();
    let lease = handle.inner.config.claim_lease;
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            _ = tokio::time::sleep(lease) => {}
        }
        if !handle.broker_healthy() {
            continue;
        }
        let age = jiff::SignedDuration::try_from(lease).unwrap_or(jiff::SignedDuration::MAX);
        let Ok(cutoff) = Timestamp::now().checked_sub(age) else {
            continue;
        };
        let resumed = resume_queued(&handle, Some(cutoff)).await;
        if resumed > 0 {
            tracing::info!(
                resumed,
                "distributed schedules or commands a dead replica had stored"
            );
        }
    }
}

/// Distributes every queued (never sent), unexpired schedule and command stored before
/// `created_before` (all of them with `None`); returns how many were published now.
async fn resume_queued(handle: &TransportHandle, created_before: Option<Timestamp>) -> usize {
    let store = handle.inner.store.clone();
    let mut filter = ScheduleFilter {
        state: Some(ExecutionState::Queued),
        created_to: created_before,
        limit: 500,
        ..Default::default()
    };
    let mut resumed = 0usize;
    loop {
        let page = match store.list_schedules(&filter).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "listing queued schedules failed");
                return resumed;
            }
        };
        let now = Timestamp::now();
        for rec in &page.items {
            if rec.schedule.expires_at() <= now {
                continue;
            }
            match handle
                .distribute(&rec.schedule, rec.correlation_id.as_deref())
                .await
            {
                Ok(DistributeOutcome::Published) => resumed += 1,
                Ok(DistributeOutcome::AlreadyTracked) => {}
                Err(e) => tracing::debug!(schedule = %rec.schedule.id(), error = %e, "not resumed"),
            }
        }
        match page.next_cursor {
            Some(c) => filter.after = Some(c),
            None => break,
        }
    }
    let mut cfilter = CommandFilter {
        state: Some(ExecutionState::Queued),
        limit: 500,
        ..Default::default()
    };
    loop {
        let page = match store.list_commands(&cfilter).await {
            Ok(p) => p,
            Err(_) => break,
        };
        let now = Timestamp::now();
        for c in &page.items {
            if c.expires_at > now
                && created_before.is_none_or(|t| c.created_at < t)
                && matches!(
                    handle.send_command(c).await,
                    Ok(DistributeOutcome::Published)
                )
            {
                resumed += 1;
            }
        }
        match page.next_cursor {
            Some(c) => cfilter.after = Some(c),
            None => break,
        }
    }
    resumed
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reconnect while a resync sweep runs (the subscription lost and made again before the
    /// sweep ends) gets a sweep of its own; a steady subscription gets one, a later one another.
    #[tokio::test]
    async fn a_subscription_made_during_a_sweep_gets_its_own_sweep() {
        let (subscribed, subscribed_rx) = watch::channel(false);
        let (stop, stop_rx) = watch::channel(false);
        let subscribed = Arc::new(subscribed);
        let sweeps = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let subscribed = subscribed.clone();
            let sweeps = sweeps.clone();
            resync_loop(
                subscribed_rx,
                stop_rx,
                Duration::from_millis(20),
                move || {
                    let subscribed = subscribed.clone();
                    let sweeps = sweeps.clone();
                    async move {
                        if sweeps.fetch_add(1, Ordering::SeqCst) == 0 {
                            subscribed.send_replace(false);
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            subscribed.send_replace(true);
                        }
                    }
                },
            )
        });
        let settle = || tokio::time::sleep(Duration::from_millis(300));
        subscribed.send_replace(true);
        settle().await;
        assert_eq!(
            sweeps.load(Ordering::SeqCst),
            2,
            "the second subscription was swept"
        );
        settle().await;
        assert_eq!(
            sweeps.load(Ordering::SeqCst),
            2,
            "a steady subscription is swept once"
        );
        subscribed.send_replace(false);
        settle().await;
        subscribed.send_replace(true);
        settle().await;
        assert_eq!(
            sweeps.load(Ordering::SeqCst),
            3,
            "a later subscription is swept"
        );
        stop.send_replace(true);
        task.await.unwrap();
    }
}
