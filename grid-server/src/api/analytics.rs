//! Analytics over a date range, for one device, a site, a tenant or the fleet: energy charged and
//! discharged, the battery's energy cost and savings against doing nothing, plan-vs-actual
//! deviation (per device), delivery success rate and latency; as JSON or CSV.
//!
//! Energy is integrated from the downsampled telemetry (bucket mean power × bucket length). The
//! cost is the battery's own contribution at the import price of each bucket (a charging kWh
//! adds one imported kWh, a discharged kWh displaces one): the site's load cancels out against the
//! do-nothing baseline, so `savings = −battery_cost`. With no price series the cost figures are
//! absent.

use super::AppState;
use super::devices::{body_id, list_tenant, load_device};
use super::error::{ApiError, ApiResult, Problem};
use super::extract::{ApiQuery, Caller};
use super::sites::check_range;
use crate::store::{
    BucketQuery, DeliveryQuery, PricePoint, ScheduleFilter, ScheduleRecord, TelemetryBucket,
    TelemetryScope,
};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use grid_core::{DeviceId, ExecutionState, SiteId, Timestamp};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use utoipa::{IntoParams, ToSchema};

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/analytics", get(analytics))
}

/// Export format.
#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// A JSON document with the summary and the per-bucket rows.
    #[default]
    Json,
    /// CSV: one row per bucket.
    Csv,
}

/// What to analyse.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AnalyticsQuery {
    /// Start (inclusive).
    #[param(value_type = String, format = DateTime)]
    pub from: Timestamp,
    /// End (exclusive; at most 366 days after `from`).
    #[param(value_type = String, format = DateTime)]
    pub to: Timestamp,
    /// One device (per-device analytics, with plan-vs-actual).
    pub device: Option<String>,
    /// One site.
    pub site: Option<String>,
    /// One tenant (tenant-bound tokens: always their own).
    pub tenant: Option<String>,
    /// Price series for the cost figures (default: the device's or site's `price_series`).
    pub price_series: Option<String>,
    /// Bucket length in seconds (default 3600; 60..=86400).
    pub bucket_seconds: Option<u32>,
    /// `json` (default) or `csv`.
    pub format: Option<Format>,
}

/// One bucket of the analysis.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AnalyticsRow {
    /// Bucket start.
    #[schema(value_type = String, format = DateTime)]
    pub start: Timestamp,
    /// Energy charged (kWh, ≥ 0).
    pub charged_kwh: f64,
    /// Energy discharged (kWh, ≥ 0).
    pub discharged_kwh: f64,
    /// Import price of the bucket, if known.
    pub price: Option<f64>,
    /// The battery's cost in the bucket (currency; negative = earned / saved).
    pub cost: Option<f64>,
    /// Planned net battery energy (kWh, positive = charging), device scope only.
    pub planned_kwh: Option<f64>,
}

/// Delivery success and latency.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeliveryBody {
    /// Schedules created in the range.
    pub schedules: u64,
    /// Taken by the device (accepted, executing or completed).
    pub accepted: u64,
    /// accepted / answered; absent when nothing was answered.
    pub success_rate: Option<f64>,
    /// Publish → first answer, median (ms).
    pub latency_p50_ms: Option<f64>,
    /// 99th percentile (ms).
    pub latency_p99_ms: Option<f64>,
    /// Worst (ms).
    pub latency_max_ms: Option<f64>,
}

/// The analysis.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AnalyticsBody {
    /// What was analysed: `device:<id>`, `site:<id>`, `tenant:<name>` or `fleet`.
    pub scope: String,
    /// Start.
    #[schema(value_type = String, format = DateTime)]
    pub from: Timestamp,
    /// End.
    #[schema(value_type = String, format = DateTime)]
    pub to: Timestamp,
    /// Bucket length (s).
    pub bucket_seconds: u32,
    /// Total energy charged (kWh).
    pub charged_kwh: f64,
    /// Total energy discharged (kWh).
    pub discharged_kwh: f64,
    /// The battery's energy cost (currency; negative = it saved money).
    pub battery_cost: Option<f64>,
    /// Savings against doing nothing (= −battery_cost).
    pub savings_vs_do_nothing: Option<f64>,
    /// Σ |actual − planned| battery energy over the buckets (kWh), device scope only.
    pub plan_vs_actual_kwh: Option<f64>,
    /// Delivery statistics of the schedules created in the range.
    pub delivery: DeliveryBody,
    /// Per-bucket rows.
    pub rows: Vec<AnalyticsRow>,
}

/// Energy, cost, plan-vs-actual and delivery analytics; `format=csv` exports the rows.
#[utoipa::path(get, path = "/api/v1/analytics", tag = "analytics", params(AnalyticsQuery),
    responses((status = 200, body = AnalyticsBody),
        (status = 200, description = "CSV export (format=csv)", content_type = "text/csv", body = String),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn analytics(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AnalyticsQuery>,
) -> ApiResult<Response> {
    check_range(q.from, q.to, 366)?;
    let bucket_seconds = q.bucket_seconds.unwrap_or(3600);
    if !(60..=86_400).contains(&bucket_seconds) {
        return Err(ApiError::invalid("bucket_seconds", "must be in 60..=86400"));
    }
    let mut series = q.price_series.clone();
    let mut device_id: Option<DeviceId> = None;
    let mut tenant_filter = None;
    let (scope, label) = match (&q.device, &q.site) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid("site", "give either device or site"));
        }
        (Some(d), None) => {
            let device = load_device(&state, &caller, d).await?;
            if series.is_none() {
                series = state.store.get_site(&device.site).await?.price_series;
            }
            device_id = Some(device.id.clone());
            let label = format!("device:{}", device.id);
            (TelemetryScope::Device(device.id), label)
        }
        (None, Some(s)) => {
            let id: SiteId = body_id("site", s)?;
            let site = state.store.get_site(&id).await?;
            caller.check_tenant(Some(&site.tenant))?;
            if series.is_none() {
                series = site.price_series;
            }
            tenant_filter = Some(site.tenant);
            (TelemetryScope::Site(id.clone()), format!("site:{id}"))
        }
        (None, None) => match list_tenant(&caller, q.tenant.clone())? {
            Some(t) => {
                tenant_filter = Some(t.clone());
                (TelemetryScope::Tenant(t.clone()), format!("tenant:{t}"))
            }
            None => (TelemetryScope::Fleet, "fleet".to_owned()),
        },
    };
    if let Some(s) = &series
        && s.parse::<SiteId>().is_err()
    {
        return Err(ApiError::invalid("price_series", "invalid series name"));
    }
    let buckets = state
        .store
        .telemetry_buckets(&BucketQuery {
            scope,
            from: q.from,
            to: q.to,
            bucket_seconds,
        })
        .await?;
    let prices = match &series {
        Some(s) => state.store.prices(s, q.from, q.to).await?,
        None => Vec::new(),
    };
    let plans = match &device_id {
        Some(d) => {
            state
                .store
                .list_schedules(&ScheduleFilter {
                    device: Some(d.clone()),
                    limit: 200,
                    ..Default::default()
                })
                .await?
                .items
        }
        None => Vec::new(),
    };
    let stats = state
        .store
        .delivery_stats(&DeliveryQuery {
            device: device_id.clone(),
            tenant: tenant_filter,
            from: q.from,
            to: q.to,
        })
        .await?;
    let body = analyse(
        label,
        q.from,
        q.to,
        bucket_seconds,
        &buckets,
        &prices,
        device_id.is_some().then_some(plans.as_slice()),
        stats,
    );
    Ok(match q.format.unwrap_or_default() {
        Format::Json => Json(body).into_response(),
        Format::Csv => (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"grid-analytics.csv\"",
                ),
            ],
            to_csv(&body),
        )
            .into_response(),
    })
}

/// The import price in force at `t` (the newest stored slot starting at or before it that still
/// covers it).
fn price_at(prices: &[PricePoint], t: Timestamp) -> Option<f64> {
    let i = prices.partition_point(|p| p.start <= t);
    let p = prices.get(i.checked_sub(1)?)?;
    (t.as_second() < p.start.as_second() + i64::from(p.slot_seconds)).then_some(p.import)
}

/// The newest live version's planned mean power over `[start, start + len)` (kW), sampling each
/// minute.
fn planned_kw(plans: &[ScheduleRecord], start: Timestamp, len_s: u32) -> Option<f64> {
    let usable = |r: &&ScheduleRecord| {
        !matches!(
            r.state,
            ExecutionState::Superseded | ExecutionState::Cancelled | ExecutionState::Rejected
        )
    };
    let steps = (len_s / 60).max(1);
    let mut sum = 0.0;
    let mut any = false;
    for k in 0..steps {
        let t = start
            .checked_add(jiff::SignedDuration::from_secs(i64::from(k) * 60 + 30))
            .ok()?;
        let p = plans
            .iter()
            .filter(usable)
            .filter(|r| r.schedule.horizon().contains(t))
            .max_by_key(|r| (r.schedule.created_at(), r.schedule.version()))
            .and_then(|r| r.schedule.setpoint_at(t));
        if let Some(p) = p {
            sum += p.kw();
            any = true;
        }
    }
    any.then(|| sum / f64::from(steps))
}

#[allow(clippy::too_many_arguments)]
fn analyse(
    scope: String,
    from: Timestamp,
    to: Timestamp,
    bucket_seconds: u32,
    buckets: &[TelemetryBucket],
    prices: &[PricePoint],
    plans: Option<&[ScheduleRecord]>,
    stats: crate::store::DeliveryStats,
) -> AnalyticsBody {
    let hours = f64::from(bucket_seconds) / 3600.0;
    let mut rows = Vec::with_capacity(buckets.len());
    let (mut charged, mut discharged, mut cost, mut priced) = (0.0, 0.0, 0.0, false);
    let mut deviation: Option<f64> = None;
    for b in buckets {
        let c = b.charge_kw.max(0.0) * hours;
        let d = b.discharge_kw.abs() * hours;
        charged += c;
        discharged += d;
        let price = price_at(prices, b.start);
        let bucket_cost = price.map(|p| (c - d) * p);
        if let Some(bc) = bucket_cost {
            cost += bc;
            priced = true;
        }
        let planned = plans.and_then(|p| planned_kw(p, b.start, bucket_seconds));
        if let Some(pk) = planned {
            *deviation.get_or_insert(0.0) += (b.power_kw - pk).abs() * hours;
        }
        rows.push(AnalyticsRow {
            start: b.start,
            charged_kwh: c,
            discharged_kwh: d,
            price,
            cost: bucket_cost,
            planned_kwh: planned.map(|p| p * hours),
        });
    }
    let plan_vs_actual_kwh = plans.map(|_| deviation.unwrap_or(0.0));
    AnalyticsBody {
        scope,
        from,
        to,
        bucket_seconds,
        charged_kwh: charged,
        discharged_kwh: discharged,
        battery_cost: priced.then_some(cost),
        savings_vs_do_nothing: priced.then_some(-cost),
        plan_vs_actual_kwh,
        delivery: DeliveryBody {
            schedules: stats.total,
            accepted: stats.accepted,
            success_rate: stats.success_rate,
            latency_p50_ms: stats.latency_p50_ms,
            latency_p99_ms: stats.latency_p99_ms,
            latency_max_ms: stats.latency_max_ms,
        },
        rows,
    }
}

fn to_csv(body: &AnalyticsBody) -> String {
    let mut out = String::with_capacity(64 * (body.rows.len() + 1));
    out.push_str("start,charged_kwh,discharged_kwh,price,cost,planned_kwh\n");
    let opt = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
    for r in &body.rows {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{}",
            r.start,
            r.charged_kwh,
            r.discharged_kwh,
            opt(r.price),
            opt(r.cost),
            opt(r.planned_kwh)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn bucket(start: &str, power: f64) -> TelemetryBucket {
        TelemetryBucket {
            start: ts(start),
            devices: 1,
            samples: 4,
            soc_mean: 0.5,
            soc_min: 0.5,
            soc_max: 0.5,
            power_kw: power,
            charge_kw: power.max(0.0),
            discharge_kw: (-power).max(0.0),
            power_min_kw: power,
            power_max_kw: power,
            temperature_max_c: 25.0,
            critical_alarm_samples: 0,
        }
    }

    #[test]
    fn charging_cheap_and_discharging_dear_saves_money() {
        let buckets = [
            bucket("2026-11-27T00:00:00Z", 2.0),
            bucket("2026-11-27T01:00:00Z", -2.0),
        ];
        let prices = [
            PricePoint {
                start: ts("2026-11-27T00:00:00Z"),
                slot_seconds: 3600,
                import: 0.10,
                export: 0.0,
            },
            PricePoint {
                start: ts("2026-11-27T01:00:00Z"),
                slot_seconds: 3600,
                import: 0.40,
                export: 0.0,
            },
        ];
        let stats = crate::store::DeliveryStats {
            total: 0,
            by_state: vec![],
            accepted: 0,
            success_rate: None,
            latency_p50_ms: None,
            latency_p99_ms: None,
            latency_max_ms: None,
        };
        let a = analyse(
            "fleet".into(),
            ts("2026-11-27T00:00:00Z"),
            ts("2026-11-27T02:00:00Z"),
            3600,
            &buckets,
            &prices,
            None,
            stats,
        );
        assert!((a.charged_kwh - 2.0).abs() < 1e-12);
        assert!((a.discharged_kwh - 2.0).abs() < 1e-12);
        assert!((a.battery_cost.unwrap() - (0.2 - 0.8)).abs() < 1e-12);
        assert!((a.savings_vs_do_nothing.unwrap() - 0.6).abs() < 1e-12);
        assert_eq!(a.plan_vs_actual_kwh, None);
        let csv = to_csv(&a);
        assert_eq!(csv.lines().count(), 3);
        assert!(csv.starts_with("start,charged_kwh"));
    }
}
