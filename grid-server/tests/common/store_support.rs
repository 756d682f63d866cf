//! Test support for the storage and MQTT tests: throw-away SQLite files and PostgreSQL schemas,
//! and builders for sites, devices, schedules and telemetry.
#![allow(dead_code)]

use grid_core::*;
use grid_server::store::{
    DEFAULT_TENANT, NewDevice, NewSchedule, PayloadCodec, PostgresStore, SiteRecord, SqliteStore,
    Store,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A unique name for this process and call.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}_{}_{}_{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// An SQLite store in a fresh temporary file, removed on drop.
pub struct TempSqlite {
    pub store: Arc<dyn Store>,
    pub url: String,
    dir: std::path::PathBuf,
}

impl TempSqlite {
    pub async fn new() -> Self {
        let dir = std::env::temp_dir().join(unique("grid-store"));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}/grid.db", dir.display());
        let store: Arc<dyn Store> = Arc::new(SqliteStore::connect(&url, 8).await.unwrap());
        Self { store, url, dir }
    }

    /// Opens the same file again (a "restarted server").
    pub async fn reopen(&self) -> Arc<dyn Store> {
        Arc::new(SqliteStore::connect(&self.url, 8).await.unwrap())
    }
}

impl Drop for TempSqlite {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The PostgreSQL URL of the live tests: `DATABASE_URL`, which must be set and name PostgreSQL.
pub fn live_database_url() -> String {
    let url = std::env::var("DATABASE_URL")
        .expect("live test: set DATABASE_URL=postgres://... (.ci/run does)");
    assert!(
        url.starts_with("postgres://") || url.starts_with("postgresql://"),
        "live test: DATABASE_URL must name PostgreSQL, got {url:?}"
    );
    url
}

/// A PostgreSQL store in a fresh schema of the `DATABASE_URL` database, so runs and tests do not
/// collide; [`PgSchema::drop_schema`] removes it.
pub struct PgSchema {
    pub store: Arc<dyn Store>,
    pub schema: String,
    url: String,
}

impl PgSchema {
    pub async fn new(url: &str) -> Self {
        let schema = unique("grid_test");
        let admin = sqlx::PgPool::connect(url)
            .await
            .unwrap_or_else(|e| panic!("live test: PostgreSQL at {url} unreachable: {e}"));
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let store = Self::open(url, &schema).await;
        Self {
            store,
            schema,
            url: url.to_owned(),
        }
    }

    /// Another store on the same schema (a second replica, or a restarted server).
    pub async fn reopen(&self) -> Arc<dyn Store> {
        Self::open(&self.url, &self.schema).await
    }

    async fn open(url: &str, schema: &str) -> Arc<dyn Store> {
        let options: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
        let options = options.options([("search_path", schema)]);
        Arc::new(PostgresStore::connect_with(options, 8).await.unwrap())
    }

    pub async fn drop_schema(self) {
        let admin = sqlx::PgPool::connect(&self.url).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA {} CASCADE",
            self.schema
        )))
        .execute(&admin)
        .await
        .unwrap();
        admin.close().await;
    }
}

pub fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

pub fn spec() -> BatterySpec {
    BatterySpec::new(BatteryParams::with_soc_window(10.0, 0.1, 0.9, 5.0)).unwrap()
}

pub fn site_record(id: &str, tenant: &str) -> SiteRecord {
    SiteRecord {
        id: SiteId::new(id).unwrap(),
        tenant: tenant.into(),
        name: Some(format!("site {id}")),
        feeder: None,
        grid: GridConnection::new(17.0, 11.0).unwrap(),
        demand_charge: DemandCharge::per_kw(0.0).unwrap(),
        tariff: None,
        price_series: None,
        created_at: Timestamp::UNIX_EPOCH,
        updated_at: Timestamp::UNIX_EPOCH,
    }
}

pub fn new_device(id: &str, site: &str) -> NewDevice {
    NewDevice {
        id: DeviceId::new(id).unwrap(),
        tenant: DEFAULT_TENANT.into(),
        site: SiteId::new(site).unwrap(),
        spec: spec(),
        label: None,
        codec: PayloadCodec::Json,
    }
}

/// Stores a site and `n` devices `{prefix}-0 ..` on it.
pub async fn fleet(store: &dyn Store, site: &str, prefix: &str, n: usize) -> Vec<DeviceId> {
    let now = t("2026-11-27T00:00:00Z");
    store
        .upsert_site(&site_record(site, DEFAULT_TENANT), now)
        .await
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..n {
        let d = store
            .register_device(&new_device(&format!("{prefix}-{i}"), site), now)
            .await
            .unwrap();
        ids.push(d.id);
    }
    ids
}

/// A valid one-day, hourly schedule that charges 1 kW for two hours then idles.
pub fn schedule(id: &str, device: &DeviceId, version: u64, start: &str) -> Schedule {
    let horizon = Horizon::new(t(start), SlotLength::HOUR, 24).unwrap();
    let mut setpoints = vec![Power::from_kw(0.0).unwrap(); 24];
    setpoints[0] = Power::from_kw(1.0).unwrap();
    setpoints[1] = Power::from_kw(1.0).unwrap();
    Schedule::planned(
        ScheduleId::new(id).unwrap(),
        device.clone(),
        ScheduleVersion(version),
        horizon,
        setpoints,
        &spec(),
        Energy::from_kwh(3.0).unwrap(),
        horizon.start(),
    )
    .unwrap()
}

pub fn new_schedule(id: &str, device: &DeviceId, version: u64, start: &str) -> NewSchedule {
    NewSchedule {
        schedule: schedule(id, device, version, start),
        correlation_id: Some(format!("req-{id}-{version}")),
    }
}

pub fn sample(at: &str, soc: f64, power_kw: f64) -> TelemetrySample {
    TelemetrySample {
        at: t(at),
        soc: Soc::from_fraction(soc).unwrap(),
        power: Power::from_kw(power_kw).unwrap(),
        voltage_v: 51.2,
        current_a: power_kw * 1000.0 / 51.2,
        temperature: Temperature::from_celsius(25.0).unwrap(),
        alarms: Alarms::NONE,
    }
}

/// A schedule like [`schedule`] on a horizon starting at the current hour (valid for ~a day).
pub fn live_schedule(id: &str, device: &DeviceId, version: u64) -> NewSchedule {
    let start = grid_core::time::floor_to_slot(Timestamp::now(), SlotLength::HOUR).unwrap();
    NewSchedule {
        schedule: schedule(id, device, version, &start.to_string()),
        correlation_id: Some(format!("req-{id}-{version}")),
    }
}
