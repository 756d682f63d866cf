// The SQL shared by the PostgreSQL and SQLite stores, included into `postgres.rs` and `sqlite.rs`
// (each defines `Db`, `This`, `BACKEND`, `BEGIN` and the statement macros `sql!`, `sql_exec!`,
// `sql_scalar!` and `acks_by_target!` first, and the multi-row statements below as functions of
// the same names and signatures: PostgreSQL binds one array per column into a fixed text,
// SQLite builds `VALUES (…), (…)` lists). Both schemas keep instants as BIGINT milliseconds
// and JSON as TEXT, and both databases accept `$N` placeholders, `ON CONFLICT` upserts and
// `RETURNING`, so one text serves both. Every static statement goes through those macros, which
// check it at compile time against the PostgreSQL schema (see the `postgres` module doc); the
// conformance suite runs every query against each backend.

use crate::store::types::{from_ms, ms};
use crate::store::*;
use async_trait::async_trait;
use grid_core::{
    Alarms, BatterySpec, Command, DemandCharge, DeviceId, ExecutionState, FeederId, GridConnection,
    LifecycleEvent, Power, PriceSeries, Schedule, ScheduleId, ScheduleVersion, SiteId, Soc,
    TelemetrySample, Temperature, Timestamp,
};
use sqlx::{QueryBuilder, Row};
use std::collections::HashMap;
use std::time::Duration;

type DbRow = <Db as sqlx::Database>::Row;
type Conn = <Db as sqlx::Database>::Connection;

// The rows of the multi-row statements, which each backend writes its own way (see the module
// docs of `postgres` and `sqlite`): `schedule_states`, `command_states`, `insert_acks`,
// `update_lifecycle_states`, `mark_schedules_sent`, `outbox_rows`, `outbox_rows_locked`,
// `update_outbox_rows`, `insert_outbox_rows`, `update_device_statuses` and
// `report_schedules_in_force`.

/// A device's status report, applied only if no newer one is recorded. An offline report
/// (`online` false) sets only `online` and `status_ms` and keeps the last known details.
struct StatusRow<'a> {
    device: &'a DeviceId,
    online: bool,
    at_ms: i64,
    agent_version: Option<&'a str>,
    firmware_version: Option<&'a str>,
    capabilities_json: String,
    clock_offset_ms: Option<i64>,
    schedule_id: Option<&'a str>,
    schedule_version: Option<i64>,
}

/// What a device's acks say about its schedule in force (`devices.reported_schedule_*`), applied
/// only if no newer report is recorded (`at_ms`: when the ack arrived, the clock of status
/// reports too): `schedule` (none: nothing in force) replaces the reported one, provided it is
/// `only_if` when that is given.
#[derive(Debug, Clone, Copy, PartialEq)]
struct InForceRow<'a> {
    device: &'a str,
    at_ms: i64,
    schedule: Option<(&'a str, i64)>,
    only_if: Option<(&'a str, i64)>,
}

/// Folds one applied lifecycle move of `device`'s `schedule` into what its acks (in arrival
/// order) have said so far about its schedule in force: an `executing` move names the schedule;
/// a terminal move of a schedule that was executing ends it (if it is still the one reported);
/// other moves say nothing.
fn in_force_after<'a>(
    said: Option<InForceRow<'a>>,
    device: &'a str,
    schedule: (&'a str, i64),
    from: ExecutionState,
    to: ExecutionState,
    at_ms: i64,
) -> Option<InForceRow<'a>> {
    if to == ExecutionState::Executing {
        return Some(InForceRow {
            device,
            at_ms,
            schedule: Some(schedule),
            only_if: None,
        });
    }
    if !(to.is_terminal() && from == ExecutionState::Executing) {
        return said;
    }
    match said {
        None => Some(InForceRow {
            device,
            at_ms,
            schedule: None,
            only_if: Some(schedule),
        }),
        // Started and ended within these acks: nothing is in force.
        Some(s) if s.schedule == Some(schedule) => Some(InForceRow {
            device,
            at_ms: at_ms.max(s.at_ms),
            schedule: None,
            only_if: None,
        }),
        // Another schedule ended: the one these acks started stands.
        Some(s) => Some(s),
    }
}

/// An ack to insert.
struct AckRow<'a> {
    message_id: &'a str,
    device_id: &'a str,
    /// `schedule` or `command`.
    target_kind: &'static str,
    target_id: &'a str,
    /// 0 for a command.
    target_version: i64,
    state: &'static str,
    reason_code: Option<&'a str>,
    reason: Option<&'a str>,
    sent_ms: i64,
    received_ms: i64,
}

/// The table a multi-row lifecycle update moves rows of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LifecycleTable {
    Schedules,
    Commands,
}

/// A schedule's or command's lifecycle move, applied only if its state is still `original`.
struct LifecycleMove<'a> {
    id: &'a str,
    /// 0 for a command.
    version: i64,
    state: &'static str,
    reason: Option<&'a str>,
    updated_ms: i64,
    answered_ms: Option<i64>,
    original: &'static str,
}

/// A delivery state saved over the row at `revision` (messages kept when `None`).
struct OutboxUpdate<'a> {
    device_id: &'a str,
    state_json: &'a str,
    next_wakeup_ms: Option<i64>,
    revision: i64,
    messages_json: Option<&'a str>,
}

/// A new delivery state row (revision 1).
struct OutboxInsert<'a> {
    device_id: &'a str,
    state_json: &'a str,
    messages_json: Option<&'a str>,
    next_wakeup_ms: Option<i64>,
}

/// The non-terminal lifecycle states, as an SQL list; the queries spell it out literally (they
/// must be `&'static str`), and a test checks this copy against grid-core.
#[cfg_attr(not(test), allow(dead_code))]
const OPEN_STATES: &str = "('queued','delivered','accepted','executing')";

/// How often an optimistic state update is retried when another writer got there first.
const STATE_RETRIES: usize = 8;

/// The most rows one multi-row INSERT carries (keeps under both databases' bind limits).
const INSERT_CHUNK: usize = 1000;

/// The most bytes of delivery state (detached state and messages) one multi-row outbox statement
/// carries. Every statement's arguments are encoded into one buffer, grown by doubling, then
/// copied into the connection's write buffer, which keeps that size: 500 schedules in one
/// statement (1.4 MB) made each publish batch fault in fresh memory, a sixth of the server's CPU
/// in a 10,000-device publish.
const OUTBOX_STATEMENT_BYTES: usize = 256 << 10;

/// `rows` in consecutive runs of at most `max` bytes by `size` (a larger row runs alone).
fn byte_chunks<T>(rows: &[T], max: usize, size: impl Fn(&T) -> usize) -> Vec<&[T]> {
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, row) in rows.iter().enumerate() {
        let n = size(row);
        if i > start && bytes + n > max {
            chunks.push(&rows[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += n;
    }
    if start < rows.len() {
        chunks.push(&rows[start..]);
    }
    chunks
}

/// An ack target as `(kind, id, version)`: kind `command` (version 0) or `schedule`, so
/// commands sort (and are locked) before schedules.
type TargetKey = (&'static str, String, i64);

/// `target`'s [`TargetKey`].
fn target_key(target: &AckTarget) -> StoreResult<TargetKey> {
    Ok(match target {
        AckTarget::Schedule { id, version } => {
            ("schedule", id.as_str().to_owned(), version_param(*version)?)
        }
        AckTarget::Command { id } => ("command", id.clone(), 0),
    })
}

/// The outcomes of a batch of acks, one per ack (an ack left unprocessed is an error).
fn finish_acks(out: Vec<Option<StoreResult<AckOutcome>>>) -> Vec<StoreResult<AckOutcome>> {
    out.into_iter()
        .map(|r| r.unwrap_or_else(|| Err(StoreError::invalid("ack", "not processed"))))
        .collect()
}

/// The length checks of an ack's free-text fields.
fn check_ack_text(ack: &AckRecord) -> StoreResult<()> {
    check_text("message_id", &ack.message_id, 128)?;
    check_opt_text("reason_code", ack.reason_code.as_deref(), 64)?;
    check_opt_text("reason", ack.reason.as_deref(), 500)
}

fn col<'r, T>(row: &'r DbRow, name: &str) -> StoreResult<T>
where
    T: sqlx::Decode<'r, Db> + sqlx::Type<Db>,
{
    row.try_get(name).map_err(StoreError::from)
}

fn ts(row: &DbRow, name: &'static str) -> StoreResult<Timestamp> {
    from_ms(name, col::<i64>(row, name)?)
}

fn opt_ts(row: &DbRow, name: &'static str) -> StoreResult<Option<Timestamp>> {
    col::<Option<i64>>(row, name)?
        .map(|v| from_ms(name, v))
        .transpose()
}

fn parse_id<T>(what: &'static str, value: String) -> StoreResult<T>
where
    T: std::str::FromStr<Err = grid_core::Error>,
{
    value.parse().map_err(|e| StoreError::corrupt(what, e))
}

fn opt_id<T>(what: &'static str, value: Option<String>) -> StoreResult<Option<T>>
where
    T: std::str::FromStr<Err = grid_core::Error>,
{
    value.map(|v| parse_id(what, v)).transpose()
}

fn to_json<T: serde::Serialize>(what: &'static str, value: &T) -> StoreResult<String> {
    serde_json::to_string(value).map_err(|e| StoreError::invalid(what, e.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(what: &'static str, text: &str) -> StoreResult<T> {
    serde_json::from_str(text).map_err(|e| StoreError::corrupt(what, e))
}

fn state_col(row: &DbRow, name: &'static str) -> StoreResult<ExecutionState> {
    let text: String = col(row, name)?;
    ExecutionState::parse(&text).ok_or_else(|| StoreError::corrupt(name, format!("state {text:?}")))
}

fn version_param(version: ScheduleVersion) -> StoreResult<i64> {
    i64::try_from(version.0).map_err(|_| StoreError::invalid("version", "must be below 2^63"))
}

fn version_col(row: &DbRow, name: &'static str) -> StoreResult<ScheduleVersion> {
    let v: i64 = col(row, name)?;
    u64::try_from(v)
        .map(ScheduleVersion)
        .map_err(|_| StoreError::corrupt(name, format!("negative version {v}")))
}

fn count_col(row: &DbRow, name: &'static str) -> StoreResult<u64> {
    Ok(u64::try_from(col::<i64>(row, name)?).unwrap_or(0))
}

fn attempts_col(row: &DbRow) -> StoreResult<u32> {
    Ok(u32::try_from(col::<i32>(row, "attempts")?).unwrap_or(0))
}

/// Maps a unique-key violation to [`StoreError::Conflict`], anything else to a backend error.
fn unique(
    entity: &'static str,
    key: impl std::fmt::Display,
) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |e| match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::conflict(entity, key, "already exists")
        }
        _ => StoreError::Backend(e),
    }
}

fn check_text(field: &'static str, value: &str, max: usize) -> StoreResult<()> {
    if value.is_empty() || value.len() > max {
        return Err(StoreError::invalid(
            field,
            format!("must be 1..={max} bytes, got {}", value.len()),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(StoreError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

fn check_opt_text(field: &'static str, value: Option<&str>, max: usize) -> StoreResult<()> {
    value.map_or(Ok(()), |v| check_text(field, v, max))
}

fn page<T>(mut items: Vec<T>, limit: u32, cursor: impl Fn(&T) -> String) -> Page<T> {
    let more = items.len() > limit as usize;
    items.truncate(limit as usize);
    let next_cursor = if more { items.last().map(cursor) } else { None };
    Page { items, next_cursor }
}

/// The event a device's reported state stands for (`queued` reports nothing).
fn event_for(state: ExecutionState) -> Option<LifecycleEvent> {
    use ExecutionState as S;
    use LifecycleEvent as E;
    match state {
        S::Queued => None,
        S::Delivered => Some(E::Deliver),
        S::Accepted => Some(E::Accept),
        S::Rejected => Some(E::Reject),
        S::Executing => Some(E::Start),
        S::Completed => Some(E::Complete),
        S::Failed => Some(E::Fail),
        S::Expired => Some(E::Expire),
        S::Superseded => Some(E::Supersede),
        S::Cancelled => Some(E::Cancel),
    }
}

/// Whether reaching `state` means the device answered (for the answer time).
fn is_device_answer(event: LifecycleEvent) -> bool {
    !matches!(
        event,
        LifecycleEvent::Deliver | LifecycleEvent::Supersede | LifecycleEvent::Cancel
    )
}

fn site_from_row(row: &DbRow) -> StoreResult<SiteRecord> {
    let grid = GridConnection::new(col(row, "import_limit_kw")?, col(row, "export_limit_kw")?)
        .map_err(|e| StoreError::corrupt("site.grid", e))?;
    let demand_charge = DemandCharge::per_kw(col(row, "demand_charge_per_kw")?)
        .map_err(|e| StoreError::corrupt("site.demand_charge", e))?;
    Ok(SiteRecord {
        id: parse_id("site.id", col(row, "id")?)?,
        tenant: col(row, "tenant")?,
        name: col(row, "name")?,
        feeder: opt_id("site.feeder", col(row, "feeder_id")?)?,
        grid,
        demand_charge,
        tariff: col::<Option<String>>(row, "tariff_json")?
            .map(|t| from_json("site.tariff", &t))
            .transpose()?,
        price_series: col(row, "price_series")?,
        created_at: ts(row, "created_ms")?,
        updated_at: ts(row, "updated_ms")?,
    })
}

fn feeder_from_row(row: &DbRow) -> StoreResult<FeederRecord> {
    Ok(FeederRecord {
        id: parse_id("feeder.id", col(row, "id")?)?,
        tenant: col(row, "tenant")?,
        name: col(row, "name")?,
        envelope: col::<Option<String>>(row, "envelope_json")?
            .map(|t| from_json("feeder.envelope", &t))
            .transpose()?,
        created_at: ts(row, "created_ms")?,
        updated_at: ts(row, "updated_ms")?,
    })
}

fn device_from_row(row: &DbRow) -> StoreResult<DeviceRecord> {
    let codec: String = col(row, "codec")?;
    Ok(DeviceRecord {
        id: parse_id("device.id", col(row, "id")?)?,
        tenant: col(row, "tenant")?,
        site: parse_id("device.site", col(row, "site_id")?)?,
        spec: from_json::<BatterySpec>("device.spec", &col::<String>(row, "spec_json")?)?,
        label: col(row, "label")?,
        codec: PayloadCodec::parse(&codec)
            .ok_or_else(|| StoreError::corrupt("device.codec", codec))?,
        created_at: ts(row, "created_ms")?,
        updated_at: ts(row, "updated_ms")?,
        decommissioned_at: opt_ts(row, "decommissioned_ms")?,
    })
}

fn schedule_from_row(row: &DbRow) -> StoreResult<ScheduleRecord> {
    Ok(ScheduleRecord {
        schedule: from_json::<Schedule>("schedule", &col::<String>(row, "parts_json")?)?,
        state: state_col(row, "state")?,
        reason: col(row, "reason")?,
        correlation_id: col(row, "correlation_id")?,
        created_at: ts(row, "created_ms")?,
        updated_at: ts(row, "updated_ms")?,
        first_sent_at: opt_ts(row, "first_sent_ms")?,
        last_sent_at: opt_ts(row, "last_sent_ms")?,
        attempts: attempts_col(row)?,
        answered_at: opt_ts(row, "answered_ms")?,
    })
}

fn command_from_row(row: &DbRow) -> StoreResult<CommandRecord> {
    Ok(CommandRecord {
        id: col(row, "id")?,
        device: parse_id("command.device", col(row, "device_id")?)?,
        command: from_json::<Command>("command", &col::<String>(row, "command_json")?)?,
        state: state_col(row, "state")?,
        reason: col(row, "reason")?,
        correlation_id: col(row, "correlation_id")?,
        expires_at: ts(row, "expires_ms")?,
        created_at: ts(row, "created_ms")?,
        updated_at: ts(row, "updated_ms")?,
        first_sent_at: opt_ts(row, "first_sent_ms")?,
        attempts: attempts_col(row)?,
        answered_at: opt_ts(row, "answered_ms")?,
    })
}

fn ack_from_row(row: &DbRow) -> StoreResult<AckRecord> {
    let kind: String = col(row, "target_kind")?;
    let target_id: String = col(row, "target_id")?;
    let target = match kind.as_str() {
        "schedule" => AckTarget::Schedule {
            id: parse_id("ack.target_id", target_id)?,
            version: version_col(row, "target_version")?,
        },
        "command" => AckTarget::Command { id: target_id },
        other => return Err(StoreError::corrupt("ack.target_kind", other)),
    };
    Ok(AckRecord {
        message_id: col(row, "message_id")?,
        device: parse_id("ack.device", col(row, "device_id")?)?,
        target,
        state: state_col(row, "state")?,
        reason_code: col(row, "reason_code")?,
        reason: col(row, "reason")?,
        sent_at: ts(row, "sent_ms")?,
        received_at: ts(row, "received_ms")?,
    })
}

fn sample_from_row(row: &DbRow) -> StoreResult<TelemetrySample> {
    let corrupt = |e: grid_core::Error| StoreError::corrupt("telemetry", e);
    Ok(TelemetrySample {
        at: ts(row, "at_ms")?,
        soc: Soc::from_fraction(col(row, "soc")?).map_err(corrupt)?,
        power: Power::from_kw(col(row, "power_kw")?).map_err(corrupt)?,
        voltage_v: col(row, "voltage_v")?,
        current_a: col(row, "current_a")?,
        temperature: Temperature::from_celsius(col(row, "temperature_c")?).map_err(corrupt)?,
        alarms: Alarms(u32::try_from(col::<i64>(row, "alarms")?).unwrap_or(u32::MAX)),
    })
}

fn outbox_from_row(row: &DbRow) -> StoreResult<OutboxRecord> {
    Ok(OutboxRecord {
        device: parse_id("outbox.device", col(row, "device_id")?)?,
        state: col(row, "state_json")?,
        messages: col(row, "messages_json")?,
        messages_omitted: false,
        next_wakeup_at: opt_ts(row, "next_wakeup_ms")?,
        revision: count_col(row, "revision")?,
        updated_at: ts(row, "updated_ms")?,
    })
}

fn model_info_from_row(row: &DbRow) -> StoreResult<ModelInfo> {
    Ok(ModelInfo {
        name: col(row, "name")?,
        version: u64::try_from(col::<i64>(row, "version")?).unwrap_or(0),
        kind: col(row, "kind")?,
        site: opt_id("model.site", col(row, "site_id")?)?,
        metadata: from_json("model.metadata", &col::<String>(row, "metadata_json")?)?,
        active: col(row, "active")?,
        artefact_len: count_col(row, "artefact_len")?,
        created_at: ts(row, "created_ms")?,
    })
}

const MODEL_INFO_COLUMNS: &str = "name, version, kind, site_id, metadata_json, active, created_ms, \
     CAST(LENGTH(artefact) AS BIGINT) AS artefact_len";

fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    // Nearest-rank percentile.
    let rank = (q * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted.get(rank.min(sorted.len()) - 1).copied()
}

/// The lifecycle states a transition statement may move a row out of, as the pattern its
/// `$n LIKE ('%,' || state || ',%')` condition matches (`,queued,delivered,`): one text serves
/// every event on both backends.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FromStates(String);

impl FromStates {
    /// Exactly `state` (the guard of a read-then-write).
    fn one(state: ExecutionState) -> Self {
        Self(format!(",{},", state.as_str()))
    }

    /// Every state `event` applies to, and the state it moves them all to; `None` if the
    /// lifecycle moved them to different states (then the caller reads the row first).
    fn of(event: LifecycleEvent) -> Option<(Self, ExecutionState)> {
        let mut from = String::from(",");
        let mut to = None;
        for state in ExecutionState::ALL {
            let Ok(next) = state.apply(event) else {
                continue;
            };
            if to.is_some_and(|t| t != next) {
                return None;
            }
            to = Some(next);
            from.push_str(state.as_str());
            from.push(',');
        }
        to.map(|to| (Self(from), to))
    }
}

impl This {
    /// Reads a schedule version (inside or outside a transaction).
    async fn fetch_schedule<'e, E>(
        exec: E,
        id: &ScheduleId,
        version: Option<ScheduleVersion>,
    ) -> StoreResult<ScheduleRecord>
    where
        E: sqlx::Executor<'e, Database = Db>,
    {
        let row =
            match version {
                Some(v) => {
                    sql!(
                        "SELECT * FROM schedules WHERE schedule_id = $1 AND version = $2",
                        id.as_str(),
                        version_param(v)?
                    )
                    .fetch_optional(exec)
                    .await?
                }
                None => sql!(
                    "SELECT * FROM schedules WHERE schedule_id = $1 ORDER BY version DESC LIMIT 1",
                    id.as_str()
                )
                .fetch_optional(exec)
                .await?,
            };
        match row {
            Some(row) => schedule_from_row(&row),
            None => Err(StoreError::not_found(
                "schedule",
                match version {
                    Some(v) => format!("{id} {v}"),
                    None => id.to_string(),
                },
            )),
        }
    }

    /// Moves a schedule to `to` if it is still in one of the states `from` names (nobody changed
    /// it meanwhile); the row as moved, or `None`.
    #[allow(clippy::too_many_arguments)]
    async fn transition_schedule<'e, E>(
        exec: E,
        id: &ScheduleId,
        version: i64,
        from: &FromStates,
        to: ExecutionState,
        event: LifecycleEvent,
        at: Timestamp,
        reason: Option<&str>,
    ) -> StoreResult<Option<DbRow>>
    where
        E: sqlx::Executor<'e, Database = Db>,
    {
        let sent = event == LifecycleEvent::Deliver;
        let answered = is_device_answer(event);
        Ok(sql!(
            "UPDATE schedules SET state = $1, reason = COALESCE($2, reason), updated_ms = $3, \
             first_sent_ms = CASE WHEN $4 THEN COALESCE(first_sent_ms, $3) ELSE first_sent_ms END, \
             last_sent_ms = CASE WHEN $4 THEN $3 ELSE last_sent_ms END, \
             attempts = CASE WHEN $4 THEN attempts + 1 ELSE attempts END, \
             answered_ms = CASE WHEN $5 THEN COALESCE(answered_ms, $3) ELSE answered_ms END \
             WHERE schedule_id = $6 AND version = $7 AND $8 LIKE ('%,' || state || ',%') \
             RETURNING *",
            to.as_str(),
            reason,
            ms(at),
            sent,
            answered,
            id.as_str(),
            version,
            from.0.as_str()
        )
        .fetch_optional(exec)
        .await?)
    }

    /// Moves a command to `to` if it is still in one of the states `from` names; the row as
    /// moved, or `None`.
    async fn transition_command<'e, E>(
        exec: E,
        id: &str,
        from: &FromStates,
        to: ExecutionState,
        event: LifecycleEvent,
        at: Timestamp,
        reason: Option<&str>,
    ) -> StoreResult<Option<DbRow>>
    where
        E: sqlx::Executor<'e, Database = Db>,
    {
        let sent = event == LifecycleEvent::Deliver;
        let answered = is_device_answer(event);
        Ok(sql!(
            "UPDATE commands SET state = $1, reason = COALESCE($2, reason), updated_ms = $3, \
             first_sent_ms = CASE WHEN $4 THEN COALESCE(first_sent_ms, $3) ELSE first_sent_ms END, \
             attempts = CASE WHEN $4 THEN attempts + 1 ELSE attempts END, \
             answered_ms = CASE WHEN $5 THEN COALESCE(answered_ms, $3) ELSE answered_ms END \
             WHERE id = $6 AND $7 LIKE ('%,' || state || ',%') RETURNING *",
            to.as_str(),
            reason,
            ms(at),
            sent,
            answered,
            id,
            from.0.as_str()
        )
        .fetch_optional(exec)
        .await?)
    }

    /// One model version's description (inside or outside a transaction).
    async fn model_info<'e, E>(exec: E, name: &str, version: i64) -> StoreResult<ModelInfo>
    where
        E: sqlx::Executor<'e, Database = Db>,
    {
        let row = sql!(
            "SELECT name, version, kind, site_id, metadata_json, active, created_ms, \
             CAST(LENGTH(artefact) AS BIGINT) AS artefact_len FROM models \
             WHERE name = $1 AND version = $2",
            name,
            version
        )
        .fetch_one(exec)
        .await?;
        model_info_from_row(&row)
    }

    /// A device's row; not found when there is none.
    async fn device_row<'e, E>(exec: E, id: &DeviceId) -> StoreResult<DbRow>
    where
        E: sqlx::Executor<'e, Database = Db>,
    {
        sql!("SELECT * FROM devices WHERE id = $1", id.as_str())
            .fetch_optional(exec)
            .await?
            .ok_or_else(|| StoreError::not_found("device", id))
    }

    /// A status report as a row of `update_device_statuses`, or why it is refused.
    fn status_row(status: &StatusReport) -> StoreResult<StatusRow<'_>> {
        for v in [&status.agent_version, &status.firmware_version] {
            check_opt_text("version", v.as_deref(), 100)?;
        }
        let (schedule_id, schedule_version) = match &status.active_schedule {
            Some(s) => (Some(s.id.as_str()), Some(version_param(s.version)?)),
            None => (None, None),
        };
        Ok(StatusRow {
            device: &status.device,
            online: status.online,
            at_ms: ms(status.at),
            agent_version: status.agent_version.as_deref(),
            firmware_version: status.firmware_version.as_deref(),
            capabilities_json: to_json("capabilities", &status.capabilities)?,
            clock_offset_ms: status.clock_offset_ms,
            schedule_id,
            schedule_version,
        })
    }

    /// Applies one status report, checked by [`This::status_row`], on `conn` (see
    /// [`Store::record_status`]).
    async fn apply_status(conn: &mut Conn, status: &StatusRow<'_>) -> StoreResult<bool> {
        let done = if status.online {
            sql_exec!(
                "UPDATE devices SET online = TRUE, status_ms = $1, agent_version = $2, \
                 firmware_version = $3, capabilities_json = $4, clock_offset_ms = $5, \
                 reported_schedule_id = CASE WHEN reported_schedule_ms IS NULL \
                 OR reported_schedule_ms <= $1 THEN $6 ELSE reported_schedule_id END, \
                 reported_schedule_version = CASE WHEN reported_schedule_ms IS NULL \
                 OR reported_schedule_ms <= $1 THEN $7 ELSE reported_schedule_version END, \
                 reported_schedule_ms = CASE WHEN reported_schedule_ms IS NULL \
                 OR reported_schedule_ms <= $1 THEN $1 ELSE reported_schedule_ms END \
                 WHERE id = $8 AND (status_ms IS NULL OR status_ms <= $1)",
                status.at_ms,
                status.agent_version,
                status.firmware_version,
                &status.capabilities_json,
                status.clock_offset_ms,
                status.schedule_id,
                status.schedule_version,
                status.device.as_str()
            )
            .execute(&mut *conn)
            .await?
        } else {
            // An offline report (often the broker's last will) keeps the last known details.
            sql_exec!(
                "UPDATE devices SET online = FALSE, status_ms = $1 \
                 WHERE id = $2 AND (status_ms IS NULL OR status_ms <= $1)",
                status.at_ms,
                status.device.as_str()
            )
            .execute(&mut *conn)
            .await?
        };
        if done.rows_affected() == 1 {
            return Ok(true);
        }
        Self::device_row(&mut *conn, status.device).await?;
        Ok(false)
    }

    /// Succeeds when the device exists and is not decommissioned (new work may be queued for it).
    async fn device_in_service<'e, E>(exec: E, id: &DeviceId) -> StoreResult<()>
    where
        E: sqlx::Executor<'e, Database = Db>,
    {
        let row = sql!(
            "SELECT decommissioned_ms FROM devices WHERE id = $1",
            id.as_str()
        )
        .fetch_optional(exec)
        .await?
        .ok_or_else(|| StoreError::not_found("device", id))?;
        if col::<Option<i64>>(&row, "decommissioned_ms")?.is_some() {
            return Err(StoreError::conflict("device", id, "decommissioned"));
        }
        Ok(())
    }

    /// Inserts a new schedule version (state `queued`); a stored copy of it is a conflict.
    async fn insert_schedule<'e, E>(
        exec: E,
        new: &NewSchedule,
        version: i64,
        parts: &str,
        now: Timestamp,
    ) -> StoreResult<ScheduleRecord>
    where
        E: sqlx::Executor<'e, Database = Db>,
    {
        let schedule = &new.schedule;
        let id = schedule.id();
        let row = sql!(
            "INSERT INTO schedules (schedule_id, version, device_id, parts_json, state, \
             correlation_id, expires_ms, created_ms, updated_ms) \
             VALUES ($1, $2, $3, $4, 'queued', $5, $6, $7, $7) RETURNING *",
            id.as_str(),
            version,
            schedule.device().as_str(),
            parts,
            new.correlation_id.as_deref(),
            ms(schedule.expires_at()),
            ms(now)
        )
        .fetch_one(exec)
        .await
        .map_err(unique("schedule", format!("{id} {}", schedule.version())))?;
        schedule_from_row(&row)
    }

    /// Removes one recorded ack again (its target moved under a concurrent writer).
    async fn delete_ack<'e, E>(exec: E, device: &DeviceId, message_id: &str) -> StoreResult<()>
    where
        E: sqlx::Executor<'e, Database = Db>,
    {
        sql_exec!(
            "DELETE FROM acks WHERE device_id = $1 AND message_id = $2",
            device.as_str(),
            message_id
        )
        .execute(exec)
        .await?;
        Ok(())
    }

    async fn site_exists<'e, E>(exec: E, id: &SiteId) -> StoreResult<()>
    where
        E: sqlx::Executor<'e, Database = Db>,
    {
        sql!("SELECT id FROM sites WHERE id = $1", id.as_str())
            .fetch_optional(exec)
            .await?
            .map(|_| ())
            .ok_or_else(|| StoreError::not_found("site", id))
    }

    /// One attempt at recording an ack; `Ok(None)` when a concurrent writer moved the target
    /// between read and write (the caller retries).
    async fn try_record_ack(&self, ack: &AckRecord) -> StoreResult<Option<AckOutcome>> {
        let mut tx = self.pool.begin_with(BEGIN).await?;
        let outcome = Self::record_ack_in(&mut tx, ack).await?;
        match outcome {
            Some(_) => tx.commit().await?,
            None => tx.rollback().await?,
        }
        Ok(outcome)
    }

    /// Records one ack inside `tx` without committing. `None`: the target changed under us
    /// between the read and the update (another writer); the ack's row is removed again, so a
    /// retry is not mistaken for a duplicate.
    async fn record_ack_in(
        tx: &mut sqlx::Transaction<'static, Db>,
        ack: &AckRecord,
    ) -> StoreResult<Option<AckOutcome>> {
        let (kind, target_id, target_version, current, owner) = match &ack.target {
            AckTarget::Schedule { id, version } => {
                let v = version_param(*version)?;
                let row = sql!(
                    "SELECT state, device_id FROM schedules WHERE schedule_id = $1 AND version = $2",
                    id.as_str(),
                    v
                )
                .fetch_optional(&mut **tx)
                .await?
                .ok_or_else(|| StoreError::not_found("schedule", format!("{id} {version}")))?;
                let owner: String = col(&row, "device_id")?;
                ("schedule", id.as_str(), v, state_col(&row, "state")?, owner)
            }
            AckTarget::Command { id } => {
                let row = sql!(
                    "SELECT state, device_id FROM commands WHERE id = $1",
                    id.as_str()
                )
                .fetch_optional(&mut **tx)
                .await?
                .ok_or_else(|| StoreError::not_found("command", id))?;
                let owner: String = col(&row, "device_id")?;
                ("command", id.as_str(), 0, state_col(&row, "state")?, owner)
            }
        };
        if owner != ack.device.as_str() {
            return Err(StoreError::invalid(
                "device",
                format!("ack from {} for a {kind} of device {owner}", ack.device),
            ));
        }
        let inserted = sql_exec!(
            "INSERT INTO acks (message_id, device_id, target_kind, target_id, target_version, \
             state, reason_code, reason, sent_ms, received_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (device_id, message_id) DO NOTHING",
            &ack.message_id,
            ack.device.as_str(),
            kind,
            target_id,
            target_version,
            ack.state.as_str(),
            ack.reason_code.as_deref(),
            ack.reason.as_deref(),
            ms(ack.sent_at),
            ms(ack.received_at)
        )
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if inserted == 0 || ack.state == current {
            return Ok(Some(AckOutcome::Duplicate { state: current }));
        }
        let Some((event, next)) =
            event_for(ack.state).and_then(|e| current.apply(e).ok().map(|n| (e, n)))
        else {
            return Ok(Some(AckOutcome::Ignored { state: current }));
        };
        let reason = ack.reason.as_deref().or(ack.reason_code.as_deref());
        let from = FromStates::one(current);
        let moved = match &ack.target {
            AckTarget::Schedule { id, .. } => Self::transition_schedule(
                &mut **tx,
                id,
                target_version,
                &from,
                next,
                event,
                ack.received_at,
                reason,
            )
            .await?
            .is_some(),
            AckTarget::Command { id } => {
                Self::transition_command(&mut **tx, id, &from, next, event, ack.received_at, reason)
                    .await?
                    .is_some()
            }
        };
        if !moved {
            Self::delete_ack(&mut **tx, &ack.device, &ack.message_id).await?;
            return Ok(None);
        }
        if matches!(ack.target, AckTarget::Schedule { .. })
            && let Some(row) = in_force_after(
                None,
                ack.device.as_str(),
                (target_id, target_version),
                current,
                next,
                ms(ack.received_at),
            )
        {
            report_schedules_in_force(tx, &[row]).await?;
        }
        Ok(Some(AckOutcome::Applied {
            from: current,
            state: next,
        }))
    }

    /// Saves one device's delivery state through `exec` (see [`Store::outbox_save`]).
    async fn outbox_write<'e, E>(exec: E, write: &OutboxWrite, now: Timestamp) -> StoreResult<u64>
    where
        E: sqlx::Executor<'e, Database = Db>,
    {
        let OutboxWrite {
            device,
            state,
            messages,
            next_wakeup_at,
            expected_revision,
        } = write;
        let wakeup = next_wakeup_at.map(ms);
        let stale = || {
            StoreError::conflict(
                "outbox",
                device,
                "the delivery state changed since it was read",
            )
        };
        match expected_revision {
            None => {
                let done = sql_exec!(
                    "INSERT INTO outbox (device_id, state_json, messages_json, next_wakeup_ms, \
                     revision, updated_ms) VALUES ($1, $2, $3, $4, 1, $5) \
                     ON CONFLICT (device_id) DO NOTHING",
                    device.as_str(),
                    state,
                    messages.as_deref(),
                    wakeup,
                    ms(now)
                )
                .execute(exec)
                .await?;
                if done.rows_affected() == 1 {
                    Ok(1)
                } else {
                    Err(stale())
                }
            }
            Some(revision) => {
                let revision = *revision;
                let rev = i64::try_from(revision)
                    .map_err(|_| StoreError::invalid("revision", "out of range"))?;
                let done = sql_exec!(
                    "UPDATE outbox SET state_json = $1, \
                     messages_json = COALESCE($2, messages_json), next_wakeup_ms = $3, \
                     revision = revision + 1, updated_ms = $4, claimed_by = NULL, \
                     claimed_until_ms = NULL WHERE device_id = $5 AND revision = $6",
                    state,
                    messages.as_deref(),
                    wakeup,
                    ms(now),
                    device.as_str(),
                    rev
                )
                .execute(exec)
                .await?;
                if done.rows_affected() == 1 {
                    Ok(revision + 1)
                } else {
                    Err(stale())
                }
            }
        }
    }

    /// The multi-row path of [`Store::record_acks`] for the devices' answers (`fast` indexes
    /// into `acks`): one read of every target per kind (schedules, commands), one multi-row insert
    /// of the acks, the lifecycles walked in memory in arrival order, and one multi-row update per
    /// kind of the moved targets, guarded by their state as read. A target another writer moved
    /// meanwhile has its acks of this batch removed again and listed in `retry`.
    async fn record_answers_in(
        tx: &mut sqlx::Transaction<'static, Db>,
        acks: &[AckRecord],
        fast: &[usize],
        out: &mut [Option<StoreResult<AckOutcome>>],
        retry: &mut Vec<usize>,
    ) -> StoreResult<()> {
        let key_of = |ack: &AckRecord| target_key(&ack.target);
        let name = |key: &TargetKey| match key.0 {
            "schedule" => format!("{} {}", key.1, key.2),
            _ => key.1.clone(),
        };
        // Each target once, in first-seen order (a set for the lookups: batches hold hundreds).
        let mut keys: Vec<TargetKey> = Vec::new();
        let mut seen: std::collections::HashSet<TargetKey> = Default::default();
        for &i in fast {
            let k = key_of(&acks[i])?;
            if seen.insert(k.clone()) {
                keys.push(k);
            }
        }
        // 1. Every target's state and owner.
        let mut stored: HashMap<TargetKey, (ExecutionState, String)> = HashMap::new();
        let schedule_keys: Vec<(String, i64)> = keys
            .iter()
            .filter(|k| k.0 == "schedule")
            .map(|k| (k.1.clone(), k.2))
            .collect();
        if !schedule_keys.is_empty() {
            for row in schedule_states(tx, &schedule_keys).await? {
                let key: TargetKey = ("schedule", col(&row, "schedule_id")?, col(&row, "version")?);
                stored.insert(key, (state_col(&row, "state")?, col(&row, "device_id")?));
            }
        }
        let command_ids: Vec<&str> = keys
            .iter()
            .filter(|k| k.0 == "command")
            .map(|k| k.1.as_str())
            .collect();
        if !command_ids.is_empty() {
            for row in command_states(tx, &command_ids).await? {
                let key: TargetKey = ("command", col(&row, "id")?, 0);
                stored.insert(key, (state_col(&row, "state")?, col(&row, "device_id")?));
            }
        }
        // 2. Unknown targets and other devices' targets are refused; the rest is inserted.
        let mut candidates = Vec::new();
        for &i in fast {
            let ack = &acks[i];
            let key = key_of(ack)?;
            match stored.get(&key) {
                None => out[i] = Some(Err(StoreError::not_found(key.0, name(&key)))),
                Some((_, owner)) if owner != ack.device.as_str() => {
                    out[i] = Some(Err(StoreError::invalid(
                        "device",
                        format!("ack from {} for a {} of device {owner}", ack.device, key.0),
                    )))
                }
                Some(_) => candidates.push(i),
            }
        }
        let mut inserted: std::collections::HashSet<(String, String)> = Default::default();
        let mut rows = Vec::with_capacity(candidates.len());
        for &i in &candidates {
            let a = &acks[i];
            let (target_kind, target_id, target_version) = match &a.target {
                AckTarget::Schedule { id, version } => {
                    ("schedule", id.as_str(), version_param(*version)?)
                }
                AckTarget::Command { id } => ("command", id.as_str(), 0),
            };
            rows.push(AckRow {
                message_id: &a.message_id,
                device_id: a.device.as_str(),
                target_kind,
                target_id,
                target_version,
                state: a.state.as_str(),
                reason_code: a.reason_code.as_deref(),
                reason: a.reason.as_deref(),
                sent_ms: ms(a.sent_at),
                received_ms: ms(a.received_at),
            });
        }
        for row in insert_acks(tx, &rows).await? {
            inserted.insert((col(&row, "device_id")?, col(&row, "message_id")?));
        }
        // 3. The lifecycles, in arrival order (exactly the one-by-one rules).
        struct Walk {
            original: ExecutionState,
            current: ExecutionState,
            reason: Option<String>,
            updated_ms: i64,
            answered_ms: Option<i64>,
            inserted: Vec<usize>,
            all: Vec<usize>,
        }
        let mut walks: Vec<(TargetKey, Walk)> = Vec::new();
        let mut walk_of: HashMap<TargetKey, usize> = HashMap::new();
        for &i in &candidates {
            let ack = &acks[i];
            let key = key_of(ack)?;
            let pos = match walk_of.get(&key) {
                Some(&p) => p,
                None => {
                    let (state, _) = stored
                        .get(&key)
                        .cloned()
                        .ok_or_else(|| StoreError::not_found(key.0, name(&key)))?;
                    walk_of.insert(key.clone(), walks.len());
                    walks.push((
                        key.clone(),
                        Walk {
                            original: state,
                            current: state,
                            reason: None,
                            updated_ms: 0,
                            answered_ms: None,
                            inserted: Vec::new(),
                            all: Vec::new(),
                        },
                    ));
                    walks.len() - 1
                }
            };
            let w = &mut walks[pos].1;
            w.all.push(i);
            let fresh = inserted.remove(&(ack.device.as_str().to_owned(), ack.message_id.clone()));
            if fresh {
                w.inserted.push(i);
            }
            if !fresh || ack.state == w.current {
                out[i] = Some(Ok(AckOutcome::Duplicate { state: w.current }));
                continue;
            }
            let Some((event, next)) =
                event_for(ack.state).and_then(|e| w.current.apply(e).ok().map(|n| (e, n)))
            else {
                out[i] = Some(Ok(AckOutcome::Ignored { state: w.current }));
                continue;
            };
            out[i] = Some(Ok(AckOutcome::Applied {
                from: w.current,
                state: next,
            }));
            w.current = next;
            if let Some(r) = ack.reason.as_deref().or(ack.reason_code.as_deref()) {
                w.reason = Some(r.to_owned());
            }
            w.updated_ms = ms(ack.received_at);
            if is_device_answer(event) && w.answered_ms.is_none() {
                w.answered_ms = Some(ms(ack.received_at));
            }
        }
        // 4. The moved targets, guarded by the state they were read in.
        let mut moved: Vec<&(TargetKey, Walk)> = walks
            .iter()
            .filter(|(_, w)| w.current != w.original)
            .collect();
        // One lock order for every writer: commands, then schedules, each by key.
        moved.sort_by(|a, b| a.0.cmp(&b.0));
        let mut updated: std::collections::HashSet<TargetKey> = Default::default();
        let moves = |kind: &str| -> Vec<LifecycleMove<'_>> {
            moved
                .iter()
                .filter(|(k, _)| k.0 == kind)
                .map(|&((_, id, version), w)| LifecycleMove {
                    id,
                    version: *version,
                    state: w.current.as_str(),
                    reason: w.reason.as_deref(),
                    updated_ms: w.updated_ms,
                    answered_ms: w.answered_ms,
                    original: w.original.as_str(),
                })
                .collect()
        };
        let rows = moves("command");
        for row in update_lifecycle_states(tx, LifecycleTable::Commands, &rows).await? {
            updated.insert(("command", col(&row, "id")?, 0));
        }
        let rows = moves("schedule");
        for row in update_lifecycle_states(tx, LifecycleTable::Schedules, &rows).await? {
            updated.insert(("schedule", col(&row, "schedule_id")?, col(&row, "version")?));
        }
        // 5. Raced: take this batch's acks of that target back and redo them one by one.
        for (key, w) in moved {
            if updated.contains(key) {
                continue;
            }
            for &i in &w.inserted {
                Self::delete_ack(&mut **tx, &acks[i].device, &acks[i].message_id).await?;
            }
            for &i in &w.all {
                out[i] = None;
                retry.push(i);
            }
        }
        // 6. What the recorded moves say about each device's schedule in force, in arrival
        //    order; devices in key order (the lock order of every writer of device rows).
        let mut said: std::collections::BTreeMap<&str, InForceRow<'_>> = Default::default();
        for &i in &candidates {
            let Some(Ok(AckOutcome::Applied { from, state })) = &out[i] else {
                continue;
            };
            let ack = &acks[i];
            let AckTarget::Schedule { id, version } = &ack.target else {
                continue;
            };
            let device = ack.device.as_str();
            let before = said.get(device).copied();
            let key = (id.as_str(), version_param(*version)?);
            if let Some(row) =
                in_force_after(before, device, key, *from, *state, ms(ack.received_at))
            {
                said.insert(device, row);
            }
        }
        if !said.is_empty() {
            let rows: Vec<InForceRow<'_>> = said.into_values().collect();
            report_schedules_in_force(tx, &rows).await?;
        }
        Ok(())
    }

    /// The body of [`Store::record_acks`] inside `tx`, without committing: each ack's outcome,
    /// and the indices of the acks that raced with another writer (not recorded; retry them).
    #[allow(clippy::type_complexity)]
    async fn record_acks_in(
        tx: &mut sqlx::Transaction<'static, Db>,
        acks: &[AckRecord],
    ) -> StoreResult<(Vec<Option<StoreResult<AckOutcome>>>, Vec<usize>)> {
        let mut out: Vec<Option<StoreResult<AckOutcome>>> = (0..acks.len()).map(|_| None).collect();
        // `delivered` acks (which also count a publication) take the one-by-one path inside the
        // batch's transaction; batches of answers only (the bulk: accepted / executing /
        // completed, of schedules and commands) go through multi-row statements.
        let mut slow_targets: std::collections::HashSet<TargetKey> = Default::default();
        for (i, ack) in acks.iter().enumerate() {
            if let Err(e) = check_ack_text(ack) {
                out[i] = Some(Err(e));
                continue;
            }
            if ack.state == ExecutionState::Delivered {
                slow_targets.insert(target_key(&ack.target)?);
            }
        }
        let mut fast = Vec::new();
        let mut slow = Vec::new();
        for (i, ack) in acks.iter().enumerate() {
            if out[i].is_some() {
                continue;
            }
            if slow_targets.contains(&target_key(&ack.target)?) {
                slow.push(i);
            } else {
                fast.push(i);
            }
        }
        if !slow.is_empty() {
            // Arrival order across targets matters when message ids repeat: a batch with any
            // slow ack is taken one by one as a whole (rare: agents do not send `delivered`).
            slow = (0..acks.len()).filter(|&i| out[i].is_none()).collect();
            fast.clear();
        }
        let mut retry = Vec::new();
        for i in slow {
            match Self::record_ack_in(tx, &acks[i]).await {
                Ok(Some(outcome)) => out[i] = Some(Ok(outcome)),
                // Raced with another writer: retried on its own after the commit.
                Ok(None) => retry.push(i),
                Err(e @ (StoreError::NotFound { .. } | StoreError::Invalid { .. })) => {
                    out[i] = Some(Err(e))
                }
                // A database error aborts the transaction: nothing is recorded.
                Err(e) => return Err(e),
            }
        }
        if !fast.is_empty() {
            Self::record_answers_in(tx, acks, &fast, &mut out, &mut retry).await?;
        }
        Ok((out, retry))
    }

    /// [`Store::record_ack`] inside `tx`: retried while other writers race on the target. A
    /// database error is the outer error (the transaction is lost); a refusal or too many races
    /// are the inner one.
    async fn record_ack_retrying_in(
        tx: &mut sqlx::Transaction<'static, Db>,
        ack: &AckRecord,
    ) -> StoreResult<StoreResult<AckOutcome>> {
        if let Err(e) = check_ack_text(ack) {
            return Ok(Err(e));
        }
        for _ in 0..STATE_RETRIES {
            match Self::record_ack_in(tx, ack).await {
                Ok(Some(outcome)) => return Ok(Ok(outcome)),
                Ok(None) => continue,
                Err(e @ (StoreError::NotFound { .. } | StoreError::Invalid { .. })) => {
                    return Ok(Err(e));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Err(StoreError::conflict(
            "ack",
            &ack.message_id,
            "target changed concurrently too often; retry",
        )))
    }

    /// The body of [`Store::outbox_save_many`] inside `tx`, without committing.
    async fn outbox_save_many_in(
        tx: &mut sqlx::Transaction<'static, Db>,
        writes: &[OutboxWrite],
        now: Timestamp,
    ) -> StoreResult<Vec<StoreResult<u64>>> {
        let now = ms(now);
        let mut out: Vec<Option<StoreResult<u64>>> = (0..writes.len()).map(|_| None).collect();
        let mut updates = Vec::new();
        let mut inserts = Vec::new();
        for (i, w) in writes.iter().enumerate() {
            match w.expected_revision {
                None => inserts.push(i),
                Some(r) => match i64::try_from(r) {
                    Ok(r) => updates.push((i, r)),
                    Err(_) => out[i] = Some(Err(StoreError::invalid("revision", "out of range"))),
                },
            }
        }
        // One lock order for every writer (by device id), so concurrent batches cannot deadlock.
        updates.sort_by(|a, b| writes[a.0].device.as_str().cmp(writes[b.0].device.as_str()));
        inserts.sort_by(|a, b| writes[*a].device.as_str().cmp(writes[*b].device.as_str()));
        // Multi-row statements; a device whose row is missing or at another revision comes back
        // without a RETURNING row: a conflict for that device alone.
        let rows: Vec<OutboxUpdate<'_>> = updates
            .iter()
            .map(|&(i, revision)| OutboxUpdate {
                device_id: writes[i].device.as_str(),
                state_json: &writes[i].state,
                next_wakeup_ms: writes[i].next_wakeup_at.map(ms),
                revision,
                messages_json: writes[i].messages.as_deref(),
            })
            .collect();
        let index: HashMap<&str, usize> = updates
            .iter()
            .map(|(i, _)| (writes[*i].device.as_str(), *i))
            .collect();
        let size = |r: &OutboxUpdate<'_>| r.state_json.len() + r.messages_json.map_or(0, str::len);
        for chunk in byte_chunks(&rows, OUTBOX_STATEMENT_BYTES, size) {
            for row in update_outbox_rows(tx, chunk, now).await? {
                let device: String = col(&row, "device_id")?;
                let revision: i64 = col(&row, "revision")?;
                if let Some(i) = index.get(device.as_str()) {
                    out[*i] = Some(Ok(u64::try_from(revision).unwrap_or_default()));
                }
            }
        }
        let rows: Vec<OutboxInsert<'_>> = inserts
            .iter()
            .map(|&i| OutboxInsert {
                device_id: writes[i].device.as_str(),
                state_json: &writes[i].state,
                messages_json: writes[i].messages.as_deref(),
                next_wakeup_ms: writes[i].next_wakeup_at.map(ms),
            })
            .collect();
        let index: HashMap<&str, usize> = inserts
            .iter()
            .map(|i| (writes[*i].device.as_str(), *i))
            .collect();
        let size = |r: &OutboxInsert<'_>| r.state_json.len() + r.messages_json.map_or(0, str::len);
        for chunk in byte_chunks(&rows, OUTBOX_STATEMENT_BYTES, size) {
            for row in insert_outbox_rows(tx, chunk, now).await? {
                let device: String = col(&row, "device_id")?;
                if let Some(i) = index.get(device.as_str()) {
                    out[*i] = Some(Ok(1));
                }
            }
        }
        Ok(out
            .into_iter()
            .zip(writes)
            .map(|(r, w)| {
                r.unwrap_or_else(|| {
                    Err(StoreError::conflict(
                        "outbox",
                        &w.device,
                        "the delivery state changed since it was read",
                    ))
                })
            })
            .collect())
    }

    /// The rows of `select_in` (a `SELECT … WHERE <device column> IN (` prefix) for the given
    /// device ids, in chunks that stay under both databases' bind limits.
    async fn rows_by_device(
        &self,
        select_in: &'static str,
        ids: &[DeviceId],
    ) -> StoreResult<Vec<DbRow>> {
        let mut rows = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(INSERT_CHUNK) {
            let mut q = QueryBuilder::<Db>::new(select_in);
            let mut list = q.separated(", ");
            for id in chunk {
                list.push_bind(id.as_str().to_owned());
            }
            q.push(")");
            rows.extend(q.build().fetch_all(&self.pool).await?);
        }
        Ok(rows)
    }
}

#[async_trait]
impl Store for This {
    fn backend(&self) -> Backend {
        BACKEND
    }

    async fn ping(&self) -> StoreResult<()> {
        sql!("SELECT 1 AS one").execute(&self.pool).await?;
        Ok(())
    }

    fn pool_stats(&self) -> PoolStats {
        PoolStats {
            size: self.pool.size(),
            idle: u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX),
            max: self.pool.options().get_max_connections(),
        }
    }

    // --- sites, feeders, prices ---------------------------------------------------------------

    async fn upsert_site(&self, site: &SiteRecord, now: Timestamp) -> StoreResult<SiteRecord> {
        check_text("tenant", &site.tenant, 64)?;
        check_opt_text("name", site.name.as_deref(), 200)?;
        check_opt_text("price_series", site.price_series.as_deref(), 64)?;
        let tariff = site
            .tariff
            .as_ref()
            .map(|t| to_json("tariff", t))
            .transpose()?;
        let row = sql!(
            "INSERT INTO sites (id, tenant, name, feeder_id, import_limit_kw, export_limit_kw, \
             demand_charge_per_kw, tariff_json, price_series, created_ms, updated_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10) \
             ON CONFLICT (id) DO UPDATE SET tenant = excluded.tenant, name = excluded.name, \
             feeder_id = excluded.feeder_id, import_limit_kw = excluded.import_limit_kw, \
             export_limit_kw = excluded.export_limit_kw, \
             demand_charge_per_kw = excluded.demand_charge_per_kw, \
             tariff_json = excluded.tariff_json, price_series = excluded.price_series, \
             updated_ms = excluded.updated_ms \
             RETURNING *",
            site.id.as_str(),
            &site.tenant,
            site.name.as_deref(),
            site.feeder.as_ref().map(FeederId::as_str),
            site.grid.import_limit.kw(),
            site.grid.export_limit.kw(),
            site.demand_charge.value(),
            tariff,
            site.price_series.as_deref(),
            ms(now)
        )
        .fetch_one(&self.pool)
        .await?;
        site_from_row(&row)
    }

    async fn get_site(&self, id: &SiteId) -> StoreResult<SiteRecord> {
        let row = sql!("SELECT * FROM sites WHERE id = $1", id.as_str())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::not_found("site", id))?;
        site_from_row(&row)
    }

    async fn list_sites(&self, filter: &SiteFilter) -> StoreResult<Page<SiteRecord>> {
        let limit = check_limit(filter.limit)?;
        let mut q = QueryBuilder::<Db>::new("SELECT * FROM sites WHERE 1 = 1");
        if let Some(t) = &filter.tenant {
            q.push(" AND tenant = ").push_bind(t.clone());
        }
        if let Some(f) = &filter.feeder {
            q.push(" AND feeder_id = ").push_bind(f.as_str().to_owned());
        }
        if let Some(after) = &filter.after {
            q.push(" AND id > ").push_bind(after.clone());
        }
        q.push(" ORDER BY id LIMIT ")
            .push_bind(i64::from(limit) + 1);
        let rows = q.build().fetch_all(&self.pool).await?;
        let items = rows
            .iter()
            .map(site_from_row)
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(page(items, limit, |s| s.id.to_string()))
    }

    async fn delete_site(&self, id: &SiteId) -> StoreResult<()> {
        let mut tx = self.pool.begin_with(BEGIN).await?;
        let devices: i64 = sql_scalar!(
            "SELECT COUNT(*) FROM devices WHERE site_id = $1",
            id.as_str()
        )
        .fetch_one(&mut *tx)
        .await?;
        if devices > 0 {
            return Err(StoreError::conflict(
                "site",
                id,
                format!("{devices} device(s) belong to it"),
            ));
        }
        let done = sql_exec!("DELETE FROM sites WHERE id = $1", id.as_str())
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::not_found("site", id));
        }
        tx.commit().await?;
        Ok(())
    }

    async fn upsert_feeder(
        &self,
        feeder: &FeederRecord,
        now: Timestamp,
    ) -> StoreResult<FeederRecord> {
        check_text("tenant", &feeder.tenant, 64)?;
        check_opt_text("name", feeder.name.as_deref(), 200)?;
        if let Some(env) = &feeder.envelope
            && env.id() != &feeder.id
        {
            return Err(StoreError::invalid(
                "envelope.id",
                format!("{} differs from the feeder id {}", env.id(), feeder.id),
            ));
        }
        let envelope = feeder
            .envelope
            .as_ref()
            .map(|e| to_json("envelope", e))
            .transpose()?;
        let row = sql!(
            "INSERT INTO feeders (id, tenant, name, envelope_json, created_ms, updated_ms) \
             VALUES ($1, $2, $3, $4, $5, $5) \
             ON CONFLICT (id) DO UPDATE SET tenant = excluded.tenant, name = excluded.name, \
             envelope_json = excluded.envelope_json, updated_ms = excluded.updated_ms \
             RETURNING *",
            feeder.id.as_str(),
            &feeder.tenant,
            feeder.name.as_deref(),
            envelope,
            ms(now)
        )
        .fetch_one(&self.pool)
        .await?;
        feeder_from_row(&row)
    }

    async fn get_feeder(&self, id: &FeederId) -> StoreResult<FeederRecord> {
        let row = sql!("SELECT * FROM feeders WHERE id = $1", id.as_str())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::not_found("feeder", id))?;
        feeder_from_row(&row)
    }

    async fn list_feeders(&self, tenant: Option<&str>) -> StoreResult<Vec<FeederRecord>> {
        let rows = sql!(
            "SELECT * FROM feeders WHERE (CAST($1 AS TEXT) IS NULL OR tenant = $1) ORDER BY id",
            tenant
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(feeder_from_row).collect()
    }

    async fn put_prices(&self, series: &str, prices: &PriceSeries) -> StoreResult<u64> {
        check_text("series", series, 64)?;
        let horizon = *prices.horizon();
        let slot_seconds = i32::try_from(u32::from(horizon.slot_length()))
            .map_err(|_| StoreError::invalid("slot_seconds", "too long"))?;
        let import = prices.import.values();
        let export = prices.export.values();
        let rows: Vec<(i64, f64, f64)> = horizon
            .iter()
            .map(|(i, start)| (ms(start), import[i].per_kwh(), export[i].per_kwh()))
            .collect();
        let mut tx = self.pool.begin_with(BEGIN).await?;
        let mut written = 0;
        for chunk in rows.chunks(INSERT_CHUNK) {
            let mut q = QueryBuilder::<Db>::new(
                "INSERT INTO price_points (series, start_ms, slot_seconds, import_price, export_price) ",
            );
            q.push_values(chunk, |mut b, (start, imp, exp)| {
                b.push_bind(series.to_owned())
                    .push_bind(*start)
                    .push_bind(slot_seconds)
                    .push_bind(*imp)
                    .push_bind(*exp);
            });
            q.push(
                " ON CONFLICT (series, start_ms) DO UPDATE SET slot_seconds = excluded.slot_seconds, \
                 import_price = excluded.import_price, export_price = excluded.export_price",
            );
            written += q.build().execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
        Ok(written)
    }

    async fn prices(
        &self,
        series: &str,
        from: Timestamp,
        to: Timestamp,
    ) -> StoreResult<Vec<PricePoint>> {
        let rows = sql!(
            "SELECT * FROM price_points WHERE series = $1 AND start_ms >= $2 AND start_ms < $3 \
             ORDER BY start_ms",
            series,
            ms(from),
            ms(to)
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(PricePoint {
                    start: ts(row, "start_ms")?,
                    slot_seconds: u32::try_from(col::<i32>(row, "slot_seconds")?).unwrap_or(0),
                    import: col(row, "import_price")?,
                    export: col(row, "export_price")?,
                })
            })
            .collect()
    }

    async fn list_price_series(&self) -> StoreResult<Vec<String>> {
        Ok(
            sql_scalar!("SELECT DISTINCT series FROM price_points ORDER BY series")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    // --- devices ------------------------------------------------------------------------------

    async fn register_device(
        &self,
        device: &NewDevice,
        now: Timestamp,
    ) -> StoreResult<DeviceRecord> {
        check_text("tenant", &device.tenant, 64)?;
        check_opt_text("label", device.label.as_deref(), 200)?;
        let spec = to_json("spec", &device.spec)?;
        let mut tx = self.pool.begin_with(BEGIN).await?;
        Self::site_exists(&mut *tx, &device.site).await?;
        let row = sql!(
            "INSERT INTO devices (id, tenant, site_id, label, spec_json, codec, created_ms, \
             updated_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $7) \
             ON CONFLICT (id) DO NOTHING RETURNING *",
            device.id.as_str(),
            &device.tenant,
            device.site.as_str(),
            device.label.as_deref(),
            spec,
            device.codec.as_str(),
            ms(now)
        )
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::conflict("device", &device.id, "already registered"))?;
        let record = device_from_row(&row)?;
        tx.commit().await?;
        Ok(record)
    }

    async fn get_device(&self, id: &DeviceId) -> StoreResult<DeviceRecord> {
        let row = Self::device_row(&self.pool, id).await?;
        device_from_row(&row)
    }

    async fn get_devices(&self, ids: &[DeviceId]) -> StoreResult<Vec<DeviceRecord>> {
        self.rows_by_device("SELECT * FROM devices WHERE id IN (", ids)
            .await?
            .iter()
            .map(device_from_row)
            .collect()
    }

    async fn list_devices(&self, filter: &DeviceFilter) -> StoreResult<Page<DeviceRecord>> {
        let limit = check_limit(filter.limit)?;
        let mut q = QueryBuilder::<Db>::new("SELECT * FROM devices WHERE 1 = 1");
        if let Some(t) = &filter.tenant {
            q.push(" AND tenant = ").push_bind(t.clone());
        }
        if let Some(s) = &filter.site {
            q.push(" AND site_id = ").push_bind(s.as_str().to_owned());
        }
        if let Some(online) = filter.online {
            q.push(" AND online = ").push_bind(online);
        }
        if !filter.include_decommissioned {
            q.push(" AND decommissioned_ms IS NULL");
        }
        if let Some(after) = &filter.after {
            q.push(" AND id > ").push_bind(after.clone());
        }
        q.push(" ORDER BY id LIMIT ")
            .push_bind(i64::from(limit) + 1);
        let rows = q.build().fetch_all(&self.pool).await?;
        let items = rows
            .iter()
            .map(device_from_row)
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(page(items, limit, |d| d.id.to_string()))
    }

    async fn update_device(
        &self,
        id: &DeviceId,
        update: &DeviceUpdate,
        now: Timestamp,
    ) -> StoreResult<DeviceRecord> {
        if let Some(Some(label)) = &update.label {
            check_text("label", label, 200)?;
        }
        let mut tx = self.pool.begin_with(BEGIN).await?;
        let row = Self::device_row(&mut *tx, id).await?;
        let mut device = device_from_row(&row)?;
        if device.decommissioned_at.is_some() {
            return Err(StoreError::conflict("device", id, "decommissioned"));
        }
        if let Some(site) = &update.site {
            Self::site_exists(&mut *tx, site).await?;
            device.site = site.clone();
        }
        if let Some(spec) = &update.spec {
            device.spec = spec.clone();
        }
        if let Some(label) = &update.label {
            device.label = label.clone();
        }
        if let Some(codec) = update.codec {
            device.codec = codec;
        }
        let row = sql!(
            "UPDATE devices SET site_id = $1, spec_json = $2, label = $3, codec = $4, \
             updated_ms = $5 WHERE id = $6 RETURNING *",
            device.site.as_str(),
            to_json("spec", &device.spec)?,
            device.label.as_deref(),
            device.codec.as_str(),
            ms(now),
            id.as_str()
        )
        .fetch_one(&mut *tx)
        .await?;
        let record = device_from_row(&row)?;
        tx.commit().await?;
        Ok(record)
    }

    async fn decommission_device(
        &self,
        id: &DeviceId,
        now: Timestamp,
    ) -> StoreResult<DeviceRecord> {
        let mut tx = self.pool.begin_with(BEGIN).await?;
        let row = sql!(
            "UPDATE devices SET decommissioned_ms = COALESCE(decommissioned_ms, $1), \
             online = FALSE, updated_ms = $1 WHERE id = $2 RETURNING *",
            ms(now),
            id.as_str()
        )
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::not_found("device", id))?;
        let record = device_from_row(&row)?;
        sql_exec!(
            "UPDATE schedules SET state = 'cancelled', reason = 'device decommissioned', \
             updated_ms = $1 WHERE device_id = $2 AND state IN ('queued','delivered','accepted','executing')",
            ms(now),
            id.as_str()
        )
        .execute(&mut *tx)
        .await?;
        sql_exec!(
            "UPDATE commands SET state = 'cancelled', reason = 'device decommissioned', \
             updated_ms = $1 WHERE device_id = $2 AND state IN ('queued','delivered','accepted','executing')",
            ms(now),
            id.as_str()
        )
        .execute(&mut *tx)
        .await?;
        sql_exec!("DELETE FROM outbox WHERE device_id = $1", id.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn record_status(&self, status: &StatusReport) -> StoreResult<bool> {
        let mut conn = self.pool.acquire().await?;
        Self::apply_status(&mut conn, &Self::status_row(status)?).await
    }

    async fn record_statuses(
        &self,
        reports: &[StatusReport],
    ) -> StoreResult<Vec<StoreResult<bool>>> {
        // Rows are locked in device order (a stable sort: one device's reports keep their order),
        // so two batches never wait on each other in a cycle.
        let mut order: Vec<usize> = (0..reports.len()).collect();
        order.sort_by(|&a, &b| reports[a].device.as_str().cmp(reports[b].device.as_str()));
        let mut out: Vec<Option<StoreResult<bool>>> = reports.iter().map(|_| None).collect();
        let mut rows = Vec::with_capacity(reports.len());
        let mut indices = Vec::with_capacity(reports.len());
        for &i in &order {
            match Self::status_row(&reports[i]) {
                Ok(row) => {
                    rows.push(row);
                    indices.push(i);
                }
                Err(e) => out[i] = Some(Err(e)),
            }
        }
        let mut tx = self.pool.begin_with(BEGIN).await?;
        let once = rows.windows(2).all(|w| w[0].device != w[1].device);
        if once {
            // The usual batch (each device once): one multi-row statement; a report not applied
            // is stale, or names an unknown device.
            let mut applied: std::collections::HashSet<String> = Default::default();
            for row in update_device_statuses(&mut tx, &rows).await? {
                applied.insert(col(&row, "id")?);
            }
            for i in indices {
                let device = &reports[i].device;
                out[i] = Some(if applied.contains(device.as_str()) {
                    Ok(true)
                } else {
                    match Self::device_row(&mut *tx, device).await {
                        Ok(_) => Ok(false),
                        Err(StoreError::Backend(e)) => return Err(e.into()),
                        Err(e) => Err(e),
                    }
                });
            }
        } else {
            // A device with several reports: one by one, in their order.
            for (row, &i) in rows.iter().zip(&indices) {
                match Self::apply_status(&mut tx, row).await {
                    // A database error ends the transaction: nothing of the batch is recorded.
                    Err(StoreError::Backend(e)) => return Err(e.into()),
                    result => out[i] = Some(result),
                }
            }
        }
        tx.commit().await?;
        Ok(out
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(StoreError::invalid("status", "not applied"))))
            .collect())
    }

    async fn device_status(&self, id: &DeviceId) -> StoreResult<DeviceStatus> {
        // One round trip on the API's hottest read: the device row, its newest schedule (by the
        // `schedules_device_created` index) and its newest sample (by the telemetry key). The
        // subqueries name the device by the parameter, not by correlation, so each runs once and
        // its result drives a primary-key lookup.
        let row = sql!(
            "SELECT d.*, s.schedule_id AS latest_schedule_id, s.version AS latest_version, \
             s.state AS latest_state, t.at_ms, t.soc, t.power_kw, t.voltage_v, t.current_a, \
             t.temperature_c, t.alarms FROM devices d \
             LEFT JOIN schedules s ON (s.schedule_id, s.version) = \
             (SELECT schedule_id, version FROM schedules WHERE device_id = $1 \
             ORDER BY created_ms DESC, version DESC LIMIT 1) \
             LEFT JOIN telemetry t ON t.device_id = $1 AND t.at_ms = \
             (SELECT MAX(at_ms) FROM telemetry WHERE device_id = $1) \
             WHERE d.id = $1",
            id.as_str()
        )
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::not_found("device", id))?;
        let reported_schedule = match (
            opt_id::<ScheduleId>(
                "device.reported_schedule_id",
                col(&row, "reported_schedule_id")?,
            )?,
            col::<Option<i64>>(&row, "reported_schedule_version")?,
        ) {
            (Some(id), Some(v)) => Some(ScheduleRef {
                id,
                version: ScheduleVersion(u64::try_from(v).unwrap_or(0)),
            }),
            _ => None,
        };
        let latest_schedule = match col::<Option<String>>(&row, "latest_schedule_id")? {
            Some(schedule) => Some(ScheduleStateRef {
                id: parse_id("schedule.id", schedule)?,
                version: version_col(&row, "latest_version")?,
                state: state_col(&row, "latest_state")?,
            }),
            None => None,
        };
        let last_telemetry = match col::<Option<i64>>(&row, "at_ms")? {
            Some(_) => Some(sample_from_row(&row)?),
            None => None,
        };
        Ok(DeviceStatus {
            device: id.clone(),
            online: col(&row, "online")?,
            status_at: opt_ts(&row, "status_ms")?,
            agent_version: col(&row, "agent_version")?,
            firmware_version: col(&row, "firmware_version")?,
            capabilities: col::<Option<String>>(&row, "capabilities_json")?
                .map(|c| from_json("device.capabilities", &c))
                .transpose()?
                .unwrap_or_default(),
            clock_offset_ms: col(&row, "clock_offset_ms")?,
            reported_schedule,
            latest_schedule,
            last_telemetry,
        })
    }

    async fn count_online(&self) -> StoreResult<u64> {
        let n: i64 = sql_scalar!(
            "SELECT COUNT(*) FROM devices WHERE online = TRUE AND decommissioned_ms IS NULL"
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    // --- schedules ----------------------------------------------------------------------------

    async fn create_schedule(
        &self,
        new: &NewSchedule,
        now: Timestamp,
    ) -> StoreResult<ScheduleRecord> {
        check_opt_text("correlation_id", new.correlation_id.as_deref(), 128)?;
        let schedule = &new.schedule;
        let id = schedule.id();
        let version = version_param(schedule.version())?;
        let parts = to_json("schedule", schedule)?;
        // The device's state and the id's newest stored version in one read. READ COMMITTED
        // gives each statement its own snapshot, so reading inside the transaction below would
        // guard nothing more; the primary key still refuses a second copy of a version.
        let check = sql!(
            "SELECT d.decommissioned_ms, s.version AS newest_version, s.device_id AS newest_owner \
             FROM devices d LEFT JOIN schedules s ON s.schedule_id = $2 AND s.version = \
             (SELECT MAX(version) FROM schedules WHERE schedule_id = $2) WHERE d.id = $1",
            schedule.device().as_str(),
            id.as_str()
        )
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::not_found("device", schedule.device()))?;
        if col::<Option<i64>>(&check, "decommissioned_ms")?.is_some() {
            return Err(StoreError::conflict(
                "device",
                schedule.device(),
                "decommissioned",
            ));
        }
        let superseding = match col::<Option<String>>(&check, "newest_owner")? {
            None => false,
            Some(owner) if owner != schedule.device().as_str() => {
                return Err(StoreError::conflict(
                    "schedule",
                    id,
                    format!("the id belongs to device {owner}"),
                ));
            }
            Some(_) => {
                let stored = version_col(&check, "newest_version")?;
                if stored >= schedule.version() {
                    return Err(StoreError::conflict(
                        "schedule",
                        format!("{id} {}", schedule.version()),
                        format!("version must exceed the stored {stored}"),
                    ));
                }
                true
            }
        };
        if !superseding {
            // A new id: nothing to supersede, one statement.
            return Self::insert_schedule(&self.pool, new, version, &parts, now).await;
        }
        let mut tx = self.pool.begin_with(BEGIN).await?;
        sql_exec!(
            "UPDATE schedules SET state = 'superseded', updated_ms = $1 \
             WHERE schedule_id = $2 AND state IN ('queued','delivered','accepted','executing')",
            ms(now),
            id.as_str()
        )
        .execute(&mut *tx)
        .await?;
        let record = Self::insert_schedule(&mut *tx, new, version, &parts, now).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn get_schedule(
        &self,
        id: &ScheduleId,
        version: Option<ScheduleVersion>,
    ) -> StoreResult<ScheduleRecord> {
        Self::fetch_schedule(&self.pool, id, version).await
    }

    async fn list_schedules(&self, filter: &ScheduleFilter) -> StoreResult<Page<ScheduleRecord>> {
        let limit = check_limit(filter.limit)?;
        let mut q = QueryBuilder::<Db>::new("SELECT * FROM schedules WHERE 1 = 1");
        if let Some(d) = &filter.device {
            q.push(" AND device_id = ").push_bind(d.as_str().to_owned());
        }
        if let Some(id) = &filter.id {
            q.push(" AND schedule_id = ")
                .push_bind(id.as_str().to_owned());
        }
        if let Some(s) = filter.state {
            q.push(" AND state = ").push_bind(s.as_str());
        }
        if let Some(t) = &filter.tenant {
            q.push(" AND device_id IN (SELECT id FROM devices WHERE tenant = ")
                .push_bind(t.clone())
                .push(")");
        }
        if let Some(from) = filter.created_from {
            q.push(" AND created_ms >= ").push_bind(ms(from));
        }
        if let Some(to) = filter.created_to {
            q.push(" AND created_ms < ").push_bind(ms(to));
        }
        if let Some(after) = &filter.after {
            let bad = || StoreError::invalid("after", "not a cursor from this list");
            let mut parts = after.splitn(3, ':');
            let created: i64 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
            let version: i64 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
            let sid = parts.next().ok_or_else(bad)?.to_owned();
            q.push(" AND (created_ms < ")
                .push_bind(created)
                .push(" OR (created_ms = ")
                .push_bind(created)
                .push(" AND (schedule_id < ")
                .push_bind(sid.clone())
                .push(" OR (schedule_id = ")
                .push_bind(sid)
                .push(" AND version < ")
                .push_bind(version)
                .push("))))");
        }
        q.push(" ORDER BY created_ms DESC, schedule_id DESC, version DESC LIMIT ")
            .push_bind(i64::from(limit) + 1);
        let rows = q.build().fetch_all(&self.pool).await?;
        let items = rows
            .iter()
            .map(schedule_from_row)
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(page(items, limit, |s| {
            format!(
                "{}:{}:{}",
                ms(s.created_at),
                s.schedule.version().0,
                s.schedule.id()
            )
        }))
    }

    async fn open_schedules(&self, device: &DeviceId) -> StoreResult<Vec<ScheduleRecord>> {
        let rows = sql!(
            "SELECT * FROM schedules WHERE device_id = $1 \
             AND state IN ('queued','delivered','accepted','executing') \
             ORDER BY created_ms, version",
            device.as_str()
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(schedule_from_row).collect()
    }

    async fn apply_schedule_event(
        &self,
        id: &ScheduleId,
        version: ScheduleVersion,
        event: LifecycleEvent,
        at: Timestamp,
        reason: Option<&str>,
    ) -> StoreResult<ScheduleRecord> {
        check_opt_text("reason", reason, 500)?;
        let v = version_param(version)?;
        // One statement when the schedule is in a state the event applies to; otherwise read it
        // to say why not (or that it does not exist).
        if let Some((from, next)) = FromStates::of(event)
            && let Some(row) =
                Self::transition_schedule(&self.pool, id, v, &from, next, event, at, reason).await?
        {
            return schedule_from_row(&row);
        }
        for _ in 0..STATE_RETRIES {
            let current = Self::fetch_schedule(&self.pool, id, Some(version)).await?;
            let next = current.state.apply(event).map_err(|_| {
                StoreError::conflict(
                    "schedule",
                    format!("{id} {version}"),
                    format!("cannot apply {event:?} in state {}", current.state),
                )
            })?;
            let from = FromStates::one(current.state);
            if let Some(row) =
                Self::transition_schedule(&self.pool, id, v, &from, next, event, at, reason).await?
            {
                return schedule_from_row(&row);
            }
        }
        Err(StoreError::conflict(
            "schedule",
            format!("{id} {version}"),
            "changed concurrently too often; retry",
        ))
    }

    async fn record_schedule_sends(
        &self,
        sends: &[(ScheduleId, ScheduleVersion)],
        at: Timestamp,
    ) -> StoreResult<u64> {
        if sends.is_empty() {
            return Ok(0);
        }
        // One lock order for every writer (by schedule id and version).
        let mut sorted: Vec<&(ScheduleId, ScheduleVersion)> = sends.iter().collect();
        sorted.sort_by(|a, b| (a.0.as_str(), a.1.0).cmp(&(b.0.as_str(), b.1.0)));
        let sends: Vec<(ScheduleId, ScheduleVersion)> = sorted.into_iter().cloned().collect();
        let sends = sends.as_slice();
        let mut versions = Vec::with_capacity(sends.len());
        for (_, v) in sends {
            versions.push(version_param(*v)?);
        }
        let at = ms(at);
        let keys: Vec<(&str, i64)> = sends
            .iter()
            .zip(versions)
            .map(|((id, _), v)| (id.as_str(), v))
            .collect();
        // One chunk is one statement, atomic by itself: no transaction (the REST API's path,
        // one schedule at a time).
        let n = if ROWS_PER_STATEMENT.is_none_or(|max| keys.len() <= max) {
            let mut conn = self.pool.acquire().await?;
            mark_schedules_sent(&mut conn, &keys, at).await?
        } else {
            let mut tx = self.pool.begin_with(BEGIN).await?;
            let n = mark_schedules_sent(&mut tx, &keys, at).await?;
            tx.commit().await?;
            n
        };
        Ok(n)
    }

    async fn cancel_schedule(
        &self,
        id: &ScheduleId,
        at: Timestamp,
        reason: Option<&str>,
    ) -> StoreResult<ScheduleRecord> {
        check_opt_text("reason", reason, 500)?;
        for _ in 0..STATE_RETRIES {
            let mut tx = self.pool.begin_with(BEGIN).await?;
            let open = sql!(
                "SELECT version, state FROM schedules WHERE schedule_id = $1 \
                 AND state IN ('queued','delivered','accepted','executing') \
                 ORDER BY version DESC LIMIT 1",
                id.as_str()
            )
            .fetch_optional(&mut *tx)
            .await?;
            let Some(open) = open else {
                let newest = Self::fetch_schedule(&mut *tx, id, None).await?;
                return Err(StoreError::conflict(
                    "schedule",
                    id,
                    format!("already {}", newest.state),
                ));
            };
            let version = version_col(&open, "version")?;
            let state = state_col(&open, "state")?;
            let next = state.apply(LifecycleEvent::Cancel).map_err(|_| {
                StoreError::conflict("schedule", id, format!("cannot cancel in state {state}"))
            })?;
            let v = version_param(version)?;
            if let Some(row) = Self::transition_schedule(
                &mut *tx,
                id,
                v,
                &FromStates::one(state),
                next,
                LifecycleEvent::Cancel,
                at,
                reason,
            )
            .await?
            {
                let record = schedule_from_row(&row)?;
                tx.commit().await?;
                return Ok(record);
            }
            tx.rollback().await?;
        }
        Err(StoreError::conflict(
            "schedule",
            id,
            "changed concurrently too often; retry",
        ))
    }

    // --- commands -----------------------------------------------------------------------------

    async fn create_command(&self, new: &NewCommand, now: Timestamp) -> StoreResult<CommandRecord> {
        check_text("id", &new.id, 128)?;
        check_opt_text("correlation_id", new.correlation_id.as_deref(), 128)?;
        let command = to_json("command", &new.command)?;
        // One statement on the hot path: the row is only inserted for a device in service.
        let row = sql!(
            "INSERT INTO commands (id, device_id, command_json, state, correlation_id, \
             expires_ms, created_ms, updated_ms) SELECT $1, id, $3, 'queued', $4, \
             CAST($5 AS BIGINT), CAST($6 AS BIGINT), CAST($6 AS BIGINT) FROM devices \
             WHERE id = $2 AND decommissioned_ms IS NULL \
             ON CONFLICT (id) DO NOTHING RETURNING *",
            &new.id,
            new.device.as_str(),
            command,
            new.correlation_id.as_deref(),
            ms(new.expires_at),
            ms(now)
        )
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => command_from_row(&row),
            None => {
                // Nothing inserted: an unknown or decommissioned device says so, else the id
                // was taken.
                Self::device_in_service(&self.pool, &new.device).await?;
                Err(StoreError::conflict("command", &new.id, "already exists"))
            }
        }
    }

    async fn get_command(&self, id: &str) -> StoreResult<CommandRecord> {
        let row = sql!("SELECT * FROM commands WHERE id = $1", id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::not_found("command", id))?;
        command_from_row(&row)
    }

    async fn list_commands(&self, filter: &CommandFilter) -> StoreResult<Page<CommandRecord>> {
        let limit = check_limit(filter.limit)?;
        let mut q = QueryBuilder::<Db>::new("SELECT * FROM commands WHERE 1 = 1");
        if let Some(d) = &filter.device {
            q.push(" AND device_id = ").push_bind(d.as_str().to_owned());
        }
        if let Some(s) = filter.state {
            q.push(" AND state = ").push_bind(s.as_str());
        }
        if let Some(after) = &filter.after {
            let bad = || StoreError::invalid("after", "not a cursor from this list");
            let (created, id) = after.split_once(':').ok_or_else(bad)?;
            let created: i64 = created.parse().map_err(|_| bad())?;
            q.push(" AND (created_ms < ")
                .push_bind(created)
                .push(" OR (created_ms = ")
                .push_bind(created)
                .push(" AND id < ")
                .push_bind(id.to_owned())
                .push("))");
        }
        q.push(" ORDER BY created_ms DESC, id DESC LIMIT ")
            .push_bind(i64::from(limit) + 1);
        let rows = q.build().fetch_all(&self.pool).await?;
        let items = rows
            .iter()
            .map(command_from_row)
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(page(items, limit, |c| {
            format!("{}:{}", ms(c.created_at), c.id)
        }))
    }

    async fn apply_command_event(
        &self,
        id: &str,
        event: LifecycleEvent,
        at: Timestamp,
        reason: Option<&str>,
    ) -> StoreResult<CommandRecord> {
        check_opt_text("reason", reason, 500)?;
        // As `apply_schedule_event`: one statement unless the event does not apply.
        if let Some((from, next)) = FromStates::of(event)
            && let Some(row) =
                Self::transition_command(&self.pool, id, &from, next, event, at, reason).await?
        {
            return command_from_row(&row);
        }
        for _ in 0..STATE_RETRIES {
            let current = self.get_command(id).await?;
            let next = current.state.apply(event).map_err(|_| {
                StoreError::conflict(
                    "command",
                    id,
                    format!("cannot apply {event:?} in state {}", current.state),
                )
            })?;
            let from = FromStates::one(current.state);
            if let Some(row) =
                Self::transition_command(&self.pool, id, &from, next, event, at, reason).await?
            {
                return command_from_row(&row);
            }
        }
        Err(StoreError::conflict(
            "command",
            id,
            "changed concurrently too often; retry",
        ))
    }

    // --- acks ---------------------------------------------------------------------------------

    async fn record_ack(&self, ack: &AckRecord) -> StoreResult<AckOutcome> {
        check_ack_text(ack)?;
        for _ in 0..STATE_RETRIES {
            if let Some(outcome) = self.try_record_ack(ack).await? {
                return Ok(outcome);
            }
        }
        Err(StoreError::conflict(
            "ack",
            &ack.message_id,
            "target changed concurrently too often; retry",
        ))
    }

    async fn record_acks(&self, acks: &[AckRecord]) -> StoreResult<Vec<StoreResult<AckOutcome>>> {
        let mut tx = self.pool.begin_with(BEGIN).await?;
        let (mut out, retry) = Self::record_acks_in(&mut tx, acks).await?;
        tx.commit().await?;
        for i in retry {
            out[i] = Some(self.record_ack(&acks[i]).await);
        }
        Ok(finish_acks(out))
    }

    async fn record_acks_and_save(
        &self,
        acks: &[AckRecord],
        devices: &[OutboxRead],
        then: &mut AckStatesFn<'_>,
        now: Timestamp,
    ) -> StoreResult<AckBatchResult> {
        let started = std::time::Instant::now();
        let mut tx = self.pool.begin_with(BEGIN).await?;
        let begun = started.elapsed();
        let (mut out, retry) = Self::record_acks_in(&mut tx, acks).await?;
        // Raced with another writer: retried in this transaction (each statement sees the rows
        // committed since).
        for i in retry {
            out[i] = Some(Self::record_ack_retrying_in(&mut tx, &acks[i]).await?);
        }
        let acks = finish_acks(out);
        let recorded = started.elapsed();
        // The states, locked until the commit. A row another writer holds locked right now is
        // skipped (its device's acks are left to the caller's one-by-one path): this batch never
        // waits for a lock while holding others, so it cannot deadlock (measured: the retry
        // loop's claim, which locks in wakeup order, deadlocked with a batch that waited).
        // SQLite has no row locks and needs none: `BEGIN IMMEDIATE` holds the database.
        // A state the caller holds is compared in the database and its messages (kilobytes
        // each) are not sent back.
        let mut reads: Vec<&OutboxRead> = devices.iter().collect();
        reads.sort_by(|a, b| a.device.as_str().cmp(b.device.as_str()));
        reads.dedup_by(|a, b| a.device == b.device);
        let ids: Vec<&str> = reads.iter().map(|r| r.device.as_str()).collect();
        let known: Vec<Option<&str>> = reads.iter().map(|r| r.known_state.as_deref()).collect();
        let stored = outbox_rows_locked(&mut tx, &ids, &known)
            .await?
            .iter()
            .map(|row| {
                let mut record = outbox_from_row(row)?;
                record.messages_omitted = col(row, "messages_omitted")?;
                Ok(record)
            })
            .collect::<StoreResult<Vec<_>>>()?;
        let read = started.elapsed();
        let writes = then(&acks, &stored);
        let planned = started.elapsed();
        let saved = Self::outbox_save_many_in(&mut tx, &writes, now).await?;
        let written = started.elapsed();
        tx.commit().await?;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        tracing::debug!(
            acks = acks.len(),
            begin_ms = ms(begun),
            record_ms = ms(recorded - begun),
            read_ms = ms(read - recorded),
            plan_ms = ms(planned - read),
            save_ms = ms(written - planned),
            commit_ms = ms(started.elapsed() - written),
            "ack batch transaction"
        );
        Ok(AckBatchResult { acks, saved })
    }

    async fn list_acks(&self, target: &AckTarget) -> StoreResult<Vec<AckRecord>> {
        let (kind, id, version) = match target {
            AckTarget::Schedule { id, version } => {
                ("schedule", id.as_str(), version_param(*version)?)
            }
            AckTarget::Command { id } => ("command", id.as_str(), 0),
        };
        let rows = acks_by_target!(kind, id, version)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(ack_from_row).collect()
    }

    // --- telemetry ----------------------------------------------------------------------------

    async fn insert_telemetry(&self, batch: &[(DeviceId, TelemetrySample)]) -> StoreResult<u64> {
        for (_, s) in batch {
            if !s.voltage_v.is_finite() || !s.current_a.is_finite() {
                return Err(StoreError::invalid(
                    "telemetry.voltage_v",
                    "voltage and current must be finite",
                ));
            }
        }
        let mut written = 0;
        for chunk in batch.chunks(INSERT_CHUNK) {
            let mut q = QueryBuilder::<Db>::new(
                "INSERT INTO telemetry (device_id, at_ms, soc, power_kw, voltage_v, current_a, \
                 temperature_c, alarms) ",
            );
            q.push_values(chunk, |mut b, (device, s)| {
                b.push_bind(device.as_str().to_owned())
                    .push_bind(ms(s.at))
                    .push_bind(f64::from(s.soc))
                    .push_bind(s.power.kw())
                    .push_bind(s.voltage_v)
                    .push_bind(s.current_a)
                    .push_bind(s.temperature.celsius())
                    .push_bind(i64::from(s.alarms.0));
            });
            q.push(" ON CONFLICT (device_id, at_ms) DO NOTHING");
            written += q.build().execute(&self.pool).await?.rows_affected();
        }
        Ok(written)
    }

    async fn telemetry(&self, query: &TelemetryQuery) -> StoreResult<Vec<TelemetrySample>> {
        if query.limit == 0 || query.limit > MAX_TELEMETRY_SAMPLES {
            return Err(StoreError::invalid(
                "limit",
                format!("must be in 1..={MAX_TELEMETRY_SAMPLES}"),
            ));
        }
        let rows = sql!(
            "SELECT * FROM telemetry WHERE device_id = $1 AND at_ms >= $2 AND at_ms < $3 \
             ORDER BY at_ms LIMIT $4",
            query.device.as_str(),
            ms(query.from),
            ms(query.to),
            i64::from(query.limit)
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(sample_from_row).collect()
    }

    async fn telemetry_buckets(&self, query: &BucketQuery) -> StoreResult<Vec<TelemetryBucket>> {
        if query.bucket_seconds == 0 {
            return Err(StoreError::invalid("bucket_seconds", "must be positive"));
        }
        let bucket_ms = i64::from(query.bucket_seconds) * 1000;
        let (from, to) = (ms(query.from), ms(query.to));
        if to <= from {
            return Err(StoreError::invalid("to", "must be after from"));
        }
        if (to - from) / bucket_ms > MAX_BUCKETS {
            return Err(StoreError::invalid(
                "bucket_seconds",
                format!("the range holds more than {MAX_BUCKETS} buckets"),
            ));
        }
        let critical = i64::from(
            (Alarms::OVER_TEMPERATURE)
                .union(Alarms::UNDER_TEMPERATURE)
                .union(Alarms::OVER_VOLTAGE)
                .union(Alarms::UNDER_VOLTAGE)
                .union(Alarms::OVER_CURRENT)
                .union(Alarms::FAULT)
                .0,
        );
        let mut q = QueryBuilder::<Db>::new(
            "SELECT b, CAST(COUNT(*) AS BIGINT) AS devices, CAST(SUM(n) AS BIGINT) AS samples, \
             AVG(soc_mean) AS soc_mean, MIN(soc_min) AS soc_min, MAX(soc_max) AS soc_max, \
             SUM(p) AS power_kw, SUM(pc) AS charge_kw, SUM(pd) AS discharge_kw, \
             MIN(p_min) AS power_min_kw, MAX(p_max) AS power_max_kw, MAX(t_max) AS t_max, \
             CAST(SUM(crit) AS BIGINT) AS crit FROM (SELECT t.device_id, t.at_ms / ",
        );
        q.push_bind(bucket_ms);
        q.push(
            " AS b, COUNT(*) AS n, AVG(t.soc) AS soc_mean, MIN(t.soc) AS soc_min, \
             MAX(t.soc) AS soc_max, AVG(t.power_kw) AS p, \
             AVG(CASE WHEN t.power_kw > 0 THEN t.power_kw ELSE 0.0 END) AS pc, \
             AVG(CASE WHEN t.power_kw < 0 THEN -t.power_kw ELSE 0.0 END) AS pd, \
             MIN(t.power_kw) AS p_min, MAX(t.power_kw) AS p_max, MAX(t.temperature_c) AS t_max, \
             SUM(CASE WHEN (t.alarms & ",
        );
        q.push_bind(critical);
        q.push(") <> 0 THEN 1 ELSE 0 END) AS crit FROM telemetry t");
        match &query.scope {
            TelemetryScope::Device(d) => {
                q.push(" WHERE t.device_id = ")
                    .push_bind(d.as_str().to_owned());
            }
            TelemetryScope::Site(s) => {
                q.push(" JOIN devices d ON d.id = t.device_id WHERE d.site_id = ")
                    .push_bind(s.as_str().to_owned());
            }
            TelemetryScope::Tenant(tenant) => {
                q.push(" JOIN devices d ON d.id = t.device_id WHERE d.tenant = ")
                    .push_bind(tenant.clone());
            }
            TelemetryScope::Fleet => {
                q.push(" WHERE 1 = 1");
            }
        }
        q.push(" AND t.at_ms >= ").push_bind(from);
        q.push(" AND t.at_ms < ").push_bind(to);
        q.push(" GROUP BY t.device_id, b) per_device GROUP BY b ORDER BY b");
        let rows = q.build().fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                Ok(TelemetryBucket {
                    start: from_ms("bucket", col::<i64>(row, "b")? * bucket_ms)?,
                    devices: count_col(row, "devices")?,
                    samples: count_col(row, "samples")?,
                    soc_mean: col(row, "soc_mean")?,
                    soc_min: col(row, "soc_min")?,
                    soc_max: col(row, "soc_max")?,
                    power_kw: col(row, "power_kw")?,
                    charge_kw: col(row, "charge_kw")?,
                    discharge_kw: col(row, "discharge_kw")?,
                    power_min_kw: col(row, "power_min_kw")?,
                    power_max_kw: col(row, "power_max_kw")?,
                    temperature_max_c: col(row, "t_max")?,
                    critical_alarm_samples: count_col(row, "crit")?,
                })
            })
            .collect()
    }

    async fn last_telemetry(&self, device: &DeviceId) -> StoreResult<Option<TelemetrySample>> {
        sql!(
            "SELECT * FROM telemetry WHERE device_id = $1 ORDER BY at_ms DESC LIMIT 1",
            device.as_str()
        )
        .fetch_optional(&self.pool)
        .await?
        .map(|row| sample_from_row(&row))
        .transpose()
    }

    // --- delivery outbox ----------------------------------------------------------------------

    async fn outbox_load(&self, device: &DeviceId) -> StoreResult<Option<OutboxRecord>> {
        sql!("SELECT * FROM outbox WHERE device_id = $1", device.as_str())
            .fetch_optional(&self.pool)
            .await?
            .map(|row| outbox_from_row(&row))
            .transpose()
    }

    async fn outbox_save(&self, write: &OutboxWrite, now: Timestamp) -> StoreResult<u64> {
        Self::outbox_write(&self.pool, write, now).await
    }

    async fn outbox_load_many(&self, devices: &[DeviceId]) -> StoreResult<Vec<OutboxRecord>> {
        let ids: Vec<&str> = devices.iter().map(DeviceId::as_str).collect();
        let mut conn = self.pool.acquire().await?;
        outbox_rows(&mut conn, &ids)
            .await?
            .iter()
            .map(outbox_from_row)
            .collect()
    }

    async fn outbox_save_many(
        &self,
        writes: &[OutboxWrite],
        now: Timestamp,
    ) -> StoreResult<Vec<StoreResult<u64>>> {
        let mut tx = self.pool.begin_with(BEGIN).await?;
        let out = Self::outbox_save_many_in(&mut tx, writes, now).await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn outbox_claim_due(
        &self,
        now: Timestamp,
        owner: &str,
        lease: Duration,
        limit: u32,
    ) -> StoreResult<Vec<OutboxRecord>> {
        check_text("owner", owner, 128)?;
        let limit = check_limit(limit)?;
        let until = ms(now).saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX));
        // The outer condition repeats the claim test so a row another replica claimed between
        // the subquery and the update (PostgreSQL re-checks it after the row lock) is skipped.
        let rows = sql!(
            "UPDATE outbox SET claimed_by = $1, claimed_until_ms = $2 \
             WHERE device_id IN (SELECT device_id FROM outbox WHERE next_wakeup_ms <= $3 \
             AND (claimed_until_ms IS NULL OR claimed_until_ms <= $3) \
             ORDER BY next_wakeup_ms LIMIT $4) \
             AND (claimed_until_ms IS NULL OR claimed_until_ms <= $3) RETURNING *",
            owner,
            until,
            ms(now),
            i64::from(limit)
        )
        .fetch_all(&self.pool)
        .await?;
        let mut records = rows
            .iter()
            .map(outbox_from_row)
            .collect::<StoreResult<Vec<_>>>()?;
        records.sort_by_key(|r| r.next_wakeup_at);
        Ok(records)
    }

    async fn outbox_pending(&self) -> StoreResult<u64> {
        let n: i64 = sql_scalar!("SELECT COUNT(*) FROM outbox WHERE next_wakeup_ms IS NOT NULL")
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn outbox_open_devices(
        &self,
        after: Option<&DeviceId>,
        limit: u32,
    ) -> StoreResult<Vec<DeviceId>> {
        let limit = check_limit(limit)?;
        // Every device id is longer than the empty string.
        let after = after.map_or("", DeviceId::as_str);
        let ids: Vec<String> = sql_scalar!(
            "SELECT device_id FROM outbox WHERE next_wakeup_ms IS NOT NULL AND device_id > $1 \
             ORDER BY device_id LIMIT $2",
            after,
            i64::from(limit)
        )
        .fetch_all(&self.pool)
        .await?;
        ids.into_iter().map(|id| parse_id("device", id)).collect()
    }

    // --- forecast models ----------------------------------------------------------------------

    async fn put_model(&self, new: &NewModel, now: Timestamp) -> StoreResult<ModelInfo> {
        check_text("name", &new.name, 128)?;
        check_text("kind", &new.kind, 64)?;
        let metadata = to_json("metadata", &new.metadata)?;
        let mut tx = self.pool.begin_with(BEGIN).await?;
        let newest: Option<i64> =
            sql_scalar!("SELECT MAX(version) FROM models WHERE name = $1", &new.name)
                .fetch_one(&mut *tx)
                .await?;
        let version = newest.unwrap_or(0) + 1;
        if new.activate {
            sql_exec!(
                "UPDATE models SET active = FALSE WHERE name = $1",
                &new.name
            )
            .execute(&mut *tx)
            .await?;
        }
        sql_exec!(
            "INSERT INTO models (name, version, kind, site_id, metadata_json, artefact, active, \
             created_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &new.name,
            version,
            &new.kind,
            new.site.as_ref().map(SiteId::as_str),
            metadata,
            &new.artefact,
            new.activate,
            ms(now)
        )
        .execute(&mut *tx)
        .await
        .map_err(unique("model", format!("{} v{version}", new.name)))?;
        let info = Self::model_info(&mut *tx, &new.name, version).await?;
        tx.commit().await?;
        Ok(info)
    }

    async fn get_model(&self, name: &str, version: Option<u64>) -> StoreResult<ModelRecord> {
        let row = match version {
            Some(v) => {
                sql!(
                    "SELECT *, CAST(LENGTH(artefact) AS BIGINT) AS artefact_len FROM models WHERE name = $1 AND version = $2",
                    name,
                    i64::try_from(v).unwrap_or(i64::MAX)
                )
                    .fetch_optional(&self.pool)
                    .await?
            }
            None => {
                sql!(
                    "SELECT *, CAST(LENGTH(artefact) AS BIGINT) AS artefact_len FROM models WHERE name = $1 ORDER BY version DESC LIMIT 1",
                    name
                )
                    .fetch_optional(&self.pool)
                    .await?
            }
        }
        .ok_or_else(|| {
            StoreError::not_found(
                "model",
                match version {
                    Some(v) => format!("{name} v{v}"),
                    None => name.to_owned(),
                },
            )
        })?;
        Ok(ModelRecord {
            info: model_info_from_row(&row)?,
            artefact: col(&row, "artefact")?,
        })
    }

    async fn active_model(&self, name: &str) -> StoreResult<Option<ModelRecord>> {
        let row = sql!(
            "SELECT *, CAST(LENGTH(artefact) AS BIGINT) AS artefact_len FROM models \
             WHERE name = $1 AND active = TRUE ORDER BY version DESC LIMIT 1",
            name
        )
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(ModelRecord {
                info: model_info_from_row(&row)?,
                artefact: col(&row, "artefact")?,
            })
        })
        .transpose()
    }

    async fn list_models(&self, filter: &ModelFilter) -> StoreResult<Vec<ModelInfo>> {
        let mut q = QueryBuilder::<Db>::new("SELECT ");
        q.push(MODEL_INFO_COLUMNS).push(" FROM models WHERE 1 = 1");
        if let Some(n) = &filter.name {
            q.push(" AND name = ").push_bind(n.clone());
        }
        if let Some(k) = &filter.kind {
            q.push(" AND kind = ").push_bind(k.clone());
        }
        if let Some(s) = &filter.site {
            q.push(" AND site_id = ").push_bind(s.as_str().to_owned());
        }
        if filter.active_only {
            q.push(" AND active = TRUE");
        }
        q.push(" ORDER BY name, version");
        let rows = q.build().fetch_all(&self.pool).await?;
        rows.iter().map(model_info_from_row).collect()
    }

    async fn activate_model(&self, name: &str, version: u64) -> StoreResult<ModelInfo> {
        let v = i64::try_from(version).unwrap_or(i64::MAX);
        let mut tx = self.pool.begin_with(BEGIN).await?;
        let exists = sql!(
            "SELECT version FROM models WHERE name = $1 AND version = $2",
            name,
            v
        )
        .fetch_optional(&mut *tx)
        .await?;
        if exists.is_none() {
            return Err(StoreError::not_found("model", format!("{name} v{version}")));
        }
        sql_exec!(
            "UPDATE models SET active = (version = $2) WHERE name = $1",
            name,
            v
        )
        .execute(&mut *tx)
        .await?;
        let info = Self::model_info(&mut *tx, name, v).await?;
        tx.commit().await?;
        Ok(info)
    }

    // --- analytics ----------------------------------------------------------------------------

    async fn delivery_stats(&self, query: &DeliveryQuery) -> StoreResult<DeliveryStats> {
        let mut q = QueryBuilder::<Db>::new(
            "SELECT state, first_sent_ms, answered_ms FROM schedules WHERE created_ms >= ",
        );
        q.push_bind(ms(query.from));
        q.push(" AND created_ms < ").push_bind(ms(query.to));
        if let Some(d) = &query.device {
            q.push(" AND device_id = ").push_bind(d.as_str().to_owned());
        }
        if let Some(t) = &query.tenant {
            q.push(" AND device_id IN (SELECT id FROM devices WHERE tenant = ")
                .push_bind(t.clone())
                .push(")");
        }
        let rows = q.build().fetch_all(&self.pool).await?;
        let mut counts = [0u64; ExecutionState::ALL.len()];
        let mut latencies = Vec::new();
        for row in &rows {
            let state = state_col(row, "state")?;
            if let Some(i) = ExecutionState::ALL.iter().position(|s| *s == state) {
                counts[i] += 1;
            }
            if let (Some(sent), Some(answered)) = (
                col::<Option<i64>>(row, "first_sent_ms")?,
                col::<Option<i64>>(row, "answered_ms")?,
            ) {
                latencies.push((answered - sent).max(0) as f64);
            }
        }
        latencies.sort_by(f64::total_cmp);
        let count = |s: ExecutionState| {
            ExecutionState::ALL
                .iter()
                .position(|x| *x == s)
                .map_or(0, |i| counts[i])
        };
        use ExecutionState as S;
        let accepted = count(S::Accepted) + count(S::Executing) + count(S::Completed);
        let total = rows.len() as u64;
        let decided = total - count(S::Queued) - count(S::Delivered);
        Ok(DeliveryStats {
            total,
            by_state: ExecutionState::ALL
                .iter()
                .zip(counts)
                .filter(|(_, n)| *n > 0)
                .map(|(s, n)| (*s, n))
                .collect(),
            accepted,
            success_rate: (decided > 0).then(|| accepted as f64 / decided as f64),
            latency_p50_ms: percentile(&latencies, 0.50),
            latency_p99_ms: percentile(&latencies, 0.99),
            latency_max_ms: latencies.last().copied(),
        })
    }

    // --- measured series and model monitoring (issue #9; appended for an easy merge; the SQL
    // lives in sql_series.rs) ---------------------------------------------------------------

    async fn put_series(
        &self,
        series: &str,
        start: Timestamp,
        slot_seconds: u32,
        values: &[f64],
    ) -> StoreResult<u64> {
        self.put_series_sql(series, start, slot_seconds, values)
            .await
    }

    async fn series_points(
        &self,
        series: &str,
        from: Timestamp,
        to: Timestamp,
    ) -> StoreResult<Vec<SeriesPoint>> {
        self.series_points_sql(series, from, to).await
    }

    async fn list_series(&self) -> StoreResult<Vec<String>> {
        self.list_series_sql().await
    }

    async fn update_model_metadata(
        &self,
        name: &str,
        version: u64,
        metadata: &serde_json::Value,
    ) -> StoreResult<ModelInfo> {
        self.update_model_metadata_sql(name, version, metadata)
            .await
    }
}

#[cfg(test)]
mod sql_tests {
    use super::*;

    #[test]
    fn open_states_match_grid_core() {
        let open: Vec<String> = ExecutionState::ALL
            .into_iter()
            .filter(|s| !s.is_terminal())
            .map(|s| format!("'{}'", s.as_str()))
            .collect();
        assert_eq!(OPEN_STATES, format!("({})", open.join(",")));
    }

    #[test]
    fn byte_chunks_keep_order_and_bound_each_run() {
        let rows = [100, 100, 100, 300, 50, 50];
        let chunks = byte_chunks(&rows, 250, |r| *r);
        assert_eq!(
            chunks,
            [&[100, 100][..], &[100][..], &[300][..], &[50, 50][..]]
        );
        assert!(byte_chunks(&[] as &[usize], 10, |r| *r).is_empty());
        assert_eq!(byte_chunks(&rows, usize::MAX, |r| *r), [&rows[..]]);
    }

    #[test]
    fn from_states_name_every_state_an_event_applies_to() {
        for event in LifecycleEvent::ALL {
            let (from, to) = FromStates::of(event).expect("each event has one target state");
            for state in ExecutionState::ALL {
                let named = from.0.contains(&format!(",{},", state.as_str()));
                assert_eq!(named, state.apply(event).is_ok(), "{state} {event:?}");
                if named {
                    assert_eq!(state.apply(event).ok(), Some(to));
                }
            }
        }
        assert_eq!(FromStates::one(ExecutionState::Queued).0, ",queued,");
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), Some(50.0));
        assert_eq!(percentile(&v, 0.99), Some(99.0));
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(percentile(&[7.0], 0.99), Some(7.0));
    }

    #[test]
    fn every_reported_state_but_queued_is_an_event() {
        for s in ExecutionState::ALL {
            assert_eq!(event_for(s).is_none(), s == ExecutionState::Queued);
        }
    }
}
