//! Storage: the [`Store`] trait the API and the MQTT transport use, with PostgreSQL (production)
//! and SQLite (the embedded default) implementations sharing one conformance test suite
//! (`tests/store_conformance.rs`).
//!
//! The store is used as `Arc<dyn Store>`. Every method takes the instants it needs as arguments
//! (no clock inside), so behaviour is deterministic under test.

mod error;
pub mod postgres;
pub mod sqlite;
mod types;

pub use error::{StoreError, StoreResult};
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;
pub use types::*;

/// What [`Store::record_acks_and_save`] asks of its caller once the acks are recorded: the
/// delivery states to save, given each ack's outcome and the states read.
pub type AckStatesFn<'a> = dyn for<'r> FnMut(&'r [StoreResult<AckOutcome>], &'r [OutboxRecord]) -> Vec<OutboxWrite>
    + Send
    + 'a;

use async_trait::async_trait;
use grid_core::{
    DeviceId, FeederId, LifecycleEvent, PriceSeries, ScheduleId, ScheduleVersion, SiteId,
    TelemetrySample, Timestamp,
};
use std::sync::Arc;
use std::time::Duration;

/// The database used when `DATABASE_URL` is unset: a file in the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://grid.db";

/// Opens the store a URL names and applies its migrations: `postgres://…` (or `postgresql://…`)
/// for PostgreSQL, `sqlite://PATH` (or `sqlite:PATH`) for an SQLite file, created if missing, in
/// WAL mode. `max_connections` bounds the pool.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use grid_server::store::{connect, Backend};
/// let dir = std::env::temp_dir().join(format!("grid-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let store = connect(&format!("sqlite://{}/grid.db", dir.display()), 4).await?;
/// assert_eq!(store.backend(), Backend::Sqlite);
/// store.ping().await?;
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub async fn connect(url: &str, max_connections: u32) -> StoreResult<Arc<dyn Store>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(
            PostgresStore::connect(url, max_connections).await?,
        ))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::connect(url, max_connections).await?))
    } else {
        Err(StoreError::UnsupportedUrl(url.to_owned()))
    }
}

impl dyn Store {
    /// Same as [`connect`]: `<dyn Store>::connect(url, max_connections)`.
    pub async fn connect(url: &str, max_connections: u32) -> StoreResult<Arc<dyn Store>> {
        connect(url, max_connections).await
    }
}

/// Everything the server persists. Object-safe: hold it as `Arc<dyn Store>`.
///
/// Errors: [`StoreError::NotFound`] for unknown keys, [`StoreError::Conflict`] for unique keys,
/// stale versions and terminal states, [`StoreError::Invalid`] for unusable input (naming the
/// field), [`StoreError::Backend`] when the database fails.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    // --- health -------------------------------------------------------------------------------

    /// Which database this is.
    fn backend(&self) -> Backend;

    /// Checks the database answers (for `/readyz`).
    async fn ping(&self) -> StoreResult<()>;

    /// Connection pool figures (for `/metrics`).
    fn pool_stats(&self) -> PoolStats;

    // --- sites, feeders, prices ---------------------------------------------------------------

    /// Creates or replaces a site (`created_at`/`updated_at` of the argument are ignored; the
    /// stored creation time is kept). Returns the stored record.
    async fn upsert_site(&self, site: &SiteRecord, now: Timestamp) -> StoreResult<SiteRecord>;

    /// One site.
    async fn get_site(&self, id: &SiteId) -> StoreResult<SiteRecord>;

    /// Sites by id, filtered and paged.
    async fn list_sites(&self, filter: &SiteFilter) -> StoreResult<Page<SiteRecord>>;

    /// Deletes a site; [`StoreError::Conflict`] while devices (decommissioned or not) belong to it.
    async fn delete_site(&self, id: &SiteId) -> StoreResult<()>;

    /// Creates or replaces a feeder (stored creation time kept).
    async fn upsert_feeder(
        &self,
        feeder: &FeederRecord,
        now: Timestamp,
    ) -> StoreResult<FeederRecord>;

    /// One feeder.
    async fn get_feeder(&self, id: &FeederId) -> StoreResult<FeederRecord>;

    /// All feeders (of a tenant), by id.
    async fn list_feeders(&self, tenant: Option<&str>) -> StoreResult<Vec<FeederRecord>>;

    /// Stores a price series under `series` (e.g. a market area or a site id); slots already
    /// stored at the same start are replaced. Returns the number of slots written.
    async fn put_prices(&self, series: &str, prices: &PriceSeries) -> StoreResult<u64>;

    /// The stored slots of `series` starting in `[from, to)`, oldest first.
    async fn prices(
        &self,
        series: &str,
        from: Timestamp,
        to: Timestamp,
    ) -> StoreResult<Vec<PricePoint>>;

    /// The names of the stored price series.
    async fn list_price_series(&self) -> StoreResult<Vec<String>>;

    // --- devices ------------------------------------------------------------------------------

    /// Registers a device; [`StoreError::Conflict`] if the id exists, [`StoreError::NotFound`] if
    /// the site does not.
    async fn register_device(
        &self,
        device: &NewDevice,
        now: Timestamp,
    ) -> StoreResult<DeviceRecord>;

    /// One device (decommissioned ones included).
    async fn get_device(&self, id: &DeviceId) -> StoreResult<DeviceRecord>;

    /// Several devices by id (those that exist, in no particular order), in one query where the
    /// backend allows it.
    async fn get_devices(&self, ids: &[DeviceId]) -> StoreResult<Vec<DeviceRecord>> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            match self.get_device(id).await {
                Ok(d) => out.push(d),
                Err(StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Devices by id, filtered and paged.
    async fn list_devices(&self, filter: &DeviceFilter) -> StoreResult<Page<DeviceRecord>>;

    /// Changes a device; [`StoreError::Conflict`] if it is decommissioned.
    async fn update_device(
        &self,
        id: &DeviceId,
        update: &DeviceUpdate,
        now: Timestamp,
    ) -> StoreResult<DeviceRecord>;

    /// Decommissions a device: it keeps its history but gets nothing new; its pending schedules
    /// and commands are cancelled and its delivery state dropped. Idempotent.
    async fn decommission_device(&self, id: &DeviceId, now: Timestamp)
    -> StoreResult<DeviceRecord>;

    /// Records a `Status` message (online/offline, versions, active schedule). Reports older than
    /// the stored one are ignored; returns whether this one was applied.
    async fn record_status(&self, status: &StatusReport) -> StoreResult<bool>;

    /// Records many `Status` messages at once (one commit), as [`Store::record_status`] would one
    /// after the other in the given order; each report gets its own outcome (a report of an
    /// unknown device is that report's [`StoreError::NotFound`]). The outer error means none was
    /// recorded.
    async fn record_statuses(
        &self,
        reports: &[StatusReport],
    ) -> StoreResult<Vec<StoreResult<bool>>> {
        let mut out = Vec::with_capacity(reports.len());
        for report in reports {
            out.push(self.record_status(report).await);
        }
        Ok(out)
    }

    /// A device's live status: online flag, last status fields, newest schedule and its state,
    /// last telemetry sample.
    async fn device_status(&self, id: &DeviceId) -> StoreResult<DeviceStatus>;

    /// How many (not decommissioned) devices last reported online.
    async fn count_online(&self) -> StoreResult<u64>;

    // --- schedules ----------------------------------------------------------------------------

    /// Stores a new schedule (state `queued`). Its device must exist and not be decommissioned;
    /// its version must exceed every stored version of its id ([`StoreError::Conflict`]
    /// otherwise). Older non-terminal versions become `superseded` in the same transaction.
    async fn create_schedule(
        &self,
        new: &NewSchedule,
        now: Timestamp,
    ) -> StoreResult<ScheduleRecord>;

    /// One schedule version, or with `version: None` the newest.
    async fn get_schedule(
        &self,
        id: &ScheduleId,
        version: Option<ScheduleVersion>,
    ) -> StoreResult<ScheduleRecord>;

    /// Schedules, newest first, filtered and paged.
    async fn list_schedules(&self, filter: &ScheduleFilter) -> StoreResult<Page<ScheduleRecord>>;

    /// The schedules of a device that are not in a terminal state, oldest version first.
    async fn open_schedules(&self, device: &DeviceId) -> StoreResult<Vec<ScheduleRecord>>;

    /// Applies a lifecycle event to one schedule version (grid-core's state machine), recording
    /// `reason`. `Deliver` also counts a publication. An event the state machine refuses is a
    /// [`StoreError::Conflict`] naming the current state.
    async fn apply_schedule_event(
        &self,
        id: &ScheduleId,
        version: ScheduleVersion,
        event: LifecycleEvent,
        at: Timestamp,
        reason: Option<&str>,
    ) -> StoreResult<ScheduleRecord>;

    /// Records that schedule versions were sent: the `Deliver` event (queued → delivered, or a
    /// resend of a delivered one) with the publication counted, for all of them in one
    /// transaction where the backend allows it. Versions in any other state are left alone (a
    /// resend racing the device's answer). Returns how many were updated.
    async fn record_schedule_sends(
        &self,
        sends: &[(ScheduleId, ScheduleVersion)],
        at: Timestamp,
    ) -> StoreResult<u64> {
        let mut n = 0;
        for (id, version) in sends {
            match self
                .apply_schedule_event(id, *version, LifecycleEvent::Deliver, at, None)
                .await
            {
                Ok(_) => n += 1,
                Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    /// Cancels the newest non-terminal version of a schedule; [`StoreError::Conflict`] when
    /// every version is terminal. (Telling the device is the transport's job.)
    async fn cancel_schedule(
        &self,
        id: &ScheduleId,
        at: Timestamp,
        reason: Option<&str>,
    ) -> StoreResult<ScheduleRecord>;

    // --- commands -----------------------------------------------------------------------------

    /// Stores a command (state `queued`); [`StoreError::Conflict`] if the id exists.
    async fn create_command(&self, new: &NewCommand, now: Timestamp) -> StoreResult<CommandRecord>;

    /// One command.
    async fn get_command(&self, id: &str) -> StoreResult<CommandRecord>;

    /// Commands, newest first, filtered and paged.
    async fn list_commands(&self, filter: &CommandFilter) -> StoreResult<Page<CommandRecord>>;

    /// Applies a lifecycle event to a command, like [`Store::apply_schedule_event`].
    async fn apply_command_event(
        &self,
        id: &str,
        event: LifecycleEvent,
        at: Timestamp,
        reason: Option<&str>,
    ) -> StoreResult<CommandRecord>;

    // --- acks ---------------------------------------------------------------------------------

    /// Records a device's ack and moves its target through the lifecycle, atomically.
    /// Idempotent: the same message id twice, or the state the target already has, is a
    /// [`AckOutcome::Duplicate`]; an ack the state machine refuses is kept but
    /// [`AckOutcome::Ignored`]. An ack from another device than the target's is
    /// [`StoreError::Invalid`] (`device`); an unknown target [`StoreError::NotFound`].
    async fn record_ack(&self, ack: &AckRecord) -> StoreResult<AckOutcome>;

    /// Records several acks, each exactly as [`Store::record_ack`] would, in one transaction
    /// where the backend allows it (one commit for the batch). The outer error means nothing was
    /// recorded; the inner results are per ack, in order.
    async fn record_acks(&self, acks: &[AckRecord]) -> StoreResult<Vec<StoreResult<AckOutcome>>> {
        let mut out = Vec::with_capacity(acks.len());
        for a in acks {
            out.push(self.record_ack(a).await);
        }
        Ok(out)
    }

    /// The acks recorded for a target, in arrival order.
    async fn list_acks(&self, target: &AckTarget) -> StoreResult<Vec<AckRecord>>;

    // --- telemetry ----------------------------------------------------------------------------

    /// Inserts a batch of samples in one statement per chunk; a sample at an instant already
    /// stored for its device is skipped. Returns the number inserted. Devices must exist.
    async fn insert_telemetry(&self, batch: &[(DeviceId, TelemetrySample)]) -> StoreResult<u64>;

    /// Raw samples of one device in `[from, to)`, oldest first.
    async fn telemetry(&self, query: &TelemetryQuery) -> StoreResult<Vec<TelemetrySample>>;

    /// Downsampled telemetry (see [`TelemetryBucket`]); empty buckets are omitted.
    async fn telemetry_buckets(&self, query: &BucketQuery) -> StoreResult<Vec<TelemetryBucket>>;

    /// The newest sample of a device.
    async fn last_telemetry(&self, device: &DeviceId) -> StoreResult<Option<TelemetrySample>>;

    // --- delivery outbox ----------------------------------------------------------------------

    /// The saved delivery state of a device, if any.
    async fn outbox_load(&self, device: &DeviceId) -> StoreResult<Option<OutboxRecord>>;

    /// Saves a device's delivery state if nobody saved it since `write.expected_revision` was
    /// read (`None`: only if none is stored); returns the new revision, or
    /// [`StoreError::Conflict`] when another writer got there first (reload, re-apply, retry).
    /// Clears any claim. The saved messages are replaced only when `write.messages` is set.
    async fn outbox_save(&self, write: &OutboxWrite, now: Timestamp) -> StoreResult<u64>;

    /// The saved delivery states of several devices (those that have one), in one query where
    /// the backend allows it.
    async fn outbox_load_many(&self, devices: &[DeviceId]) -> StoreResult<Vec<OutboxRecord>> {
        let mut out = Vec::with_capacity(devices.len());
        for d in devices {
            if let Some(r) = self.outbox_load(d).await? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Saves several devices' delivery states, each like [`Store::outbox_save`], in one
    /// transaction where the backend allows it. The outer error means nothing was saved; an
    /// inner [`StoreError::Conflict`] means that device's state changed since it was read (the
    /// others are saved).
    async fn outbox_save_many(
        &self,
        writes: &[OutboxWrite],
        now: Timestamp,
    ) -> StoreResult<Vec<StoreResult<u64>>> {
        let mut out = Vec::with_capacity(writes.len());
        for w in writes {
            out.push(self.outbox_save(w, now).await);
        }
        Ok(out)
    }

    /// Records a batch of acks like [`Store::record_acks`], reads the delivery states of
    /// `devices` like [`Store::outbox_load_many`], and saves the states that `then` makes from
    /// the acks' outcomes and the states read like [`Store::outbox_save_many`], in one
    /// transaction where the backend allows it (one commit for the whole batch). On PostgreSQL
    /// the states read stay locked until the commit, so no other writer (another replica, the
    /// retry loop) changes one between its read and its save; a state another writer holds
    /// locked at that moment is not read (not waited for), so `then` may get fewer states than
    /// `devices`. A device's record comes without its messages when its stored state is the
    /// [`OutboxRead::known_state`] given ([`OutboxRecord::messages_omitted`]; the SQL stores omit
    /// them, this default reads every record whole). The outer error means nothing was recorded
    /// or saved. Returns the acks' outcomes and the saves' results.
    async fn record_acks_and_save(
        &self,
        acks: &[AckRecord],
        devices: &[OutboxRead],
        then: &mut AckStatesFn<'_>,
        now: Timestamp,
    ) -> StoreResult<AckBatchResult> {
        let acks = self.record_acks(acks).await?;
        let ids: Vec<DeviceId> = devices.iter().map(|d| d.device.clone()).collect();
        let stored = self.outbox_load_many(&ids).await?;
        let writes = then(&acks, &stored);
        let saved = self.outbox_save_many(&writes, now).await?;
        Ok(AckBatchResult { acks, saved })
    }

    /// Claims up to `limit` devices whose delivery state is due at `now` (next wakeup ≤ now) and
    /// that no live claim holds, for `lease`, on behalf of `owner` (a server replica), so replicas
    /// do not retry the same delivery at once. Earliest due first.
    async fn outbox_claim_due(
        &self,
        now: Timestamp,
        owner: &str,
        lease: Duration,
        limit: u32,
    ) -> StoreResult<Vec<OutboxRecord>>;

    /// How many devices have a pending wakeup.
    async fn outbox_pending(&self) -> StoreResult<u64>;

    /// The devices whose delivery state holds unfinished deliveries (a pending wakeup), in
    /// device-id order, at most `limit` of them after `after` (exclusive; `None`: from the
    /// first): the pages a resync walks.
    async fn outbox_open_devices(
        &self,
        after: Option<&DeviceId>,
        limit: u32,
    ) -> StoreResult<Vec<DeviceId>>;

    // --- forecast models ----------------------------------------------------------------------

    /// Stores a new version of a model (numbered after the newest of its name); with `activate`
    /// it becomes the only active version of its name.
    async fn put_model(&self, new: &NewModel, now: Timestamp) -> StoreResult<ModelInfo>;

    /// One model version with its artefact, or with `version: None` the newest.
    async fn get_model(&self, name: &str, version: Option<u64>) -> StoreResult<ModelRecord>;

    /// The active version of a model, if any.
    async fn active_model(&self, name: &str) -> StoreResult<Option<ModelRecord>>;

    /// Model descriptions (no artefacts), by name then version.
    async fn list_models(&self, filter: &ModelFilter) -> StoreResult<Vec<ModelInfo>>;

    /// Makes one version the active one of its name (the others become inactive).
    async fn activate_model(&self, name: &str, version: u64) -> StoreResult<ModelInfo>;

    // --- analytics ----------------------------------------------------------------------------

    /// Delivery success and latency over the schedules a query selects.
    async fn delivery_stats(&self, query: &DeliveryQuery) -> StoreResult<DeliveryStats>;

    // --- measured series and model monitoring (issue #9; appended for an easy merge) ----------

    /// Stores slots of a measured series (e.g. a site's load or PV, kW) starting at `start`,
    /// `slot_seconds` apart; non-finite values are gaps and are not written; slots already stored
    /// at the same start are replaced. Returns the number of slots written.
    async fn put_series(
        &self,
        series: &str,
        start: Timestamp,
        slot_seconds: u32,
        values: &[f64],
    ) -> StoreResult<u64>;

    /// The stored slots of a measured series starting in `[from, to)`, oldest first.
    async fn series_points(
        &self,
        series: &str,
        from: Timestamp,
        to: Timestamp,
    ) -> StoreResult<Vec<SeriesPoint>>;

    /// The names of the stored measured series.
    async fn list_series(&self) -> StoreResult<Vec<String>>;

    /// Replaces a model version's metadata (model monitoring writes its error history there).
    async fn update_model_metadata(
        &self,
        name: &str,
        version: u64,
        metadata: &serde_json::Value,
    ) -> StoreResult<ModelInfo>;
}
