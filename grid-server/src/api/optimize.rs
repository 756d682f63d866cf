//! Fleet optimisation: build a `grid_optimize::FleetProblem` for a group of sites (or a feeder)
//! over a horizon from stored prices, the sites' grid limits and the devices' specs and last
//! state of charge; solve it with `DefaultSolver`; return the preview, or store and publish one
//! schedule per device in the same call.
//!
//! A site's load and PV are the P50 forecasts of its active `load` and `pv` models (issue #9;
//! `POST /api/v1/models` with `site`), each UTC day forecast from the data stored before it; a
//! site without such a model has zero load or PV, and the optimiser then plans price arbitrage
//! within the grid and feeder limits.

use super::devices::body_id;
use super::error::{ApiError, ApiResult, Problem};
use super::extract::{ApiJson, Caller, RequestId};
use super::schedules::store_schedule;
use super::types::ScheduleBody;
use super::{AppState, now};
use crate::auth::Role;
use crate::store::{
    DeviceFilter, DeviceRecord, ModelFilter, ModelInfo, PricePoint, SiteRecord, StoreError,
};
use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use grid_core::{FeederId, Horizon, ScheduleId, ScheduleVersion, SiteId, SlotLength, Timestamp};
use grid_optimize::{BatteryParams, FeederLimit, FleetProblem, SiteProblem, SolveStatus, Solver};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/optimize", post(optimize))
}

/// The most sites one optimisation may cover.
pub const MAX_SITES: usize = 5_000;
/// The most slots one horizon may have (a week of 5-minute slots).
pub const MAX_SLOTS: usize = 2_016;

/// An optimisation request: which sites, which horizon, preview or publish.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OptimizeRequest {
    /// The sites to optimise together (one battery each: the first active device).
    #[serde(default)]
    pub sites: Vec<String>,
    /// Or every site of this feeder, under its envelope.
    #[serde(default)]
    pub feeder: Option<String>,
    /// First slot start (UTC).
    #[schema(value_type = String, format = DateTime)]
    pub start: Timestamp,
    /// Slot length (s).
    pub slot_seconds: u32,
    /// Number of slots (1..=2016).
    pub slots: usize,
    /// The stored price series to use (default: the first site's `price_series`).
    #[serde(default)]
    pub price_series: Option<String>,
    /// Store and publish the schedules (operator); default false = preview only.
    #[serde(default)]
    pub publish: bool,
    /// Schedule ids are `<prefix>-<device>` (default `opt`); versions continue from the stored ones.
    #[serde(default)]
    pub schedule_prefix: Option<String>,
}

/// One device's planned schedule.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlannedDevice {
    /// Site.
    pub site: String,
    /// Device.
    pub device: String,
    /// Battery power per slot (kW, positive = charging).
    pub setpoints_kw: Vec<f64>,
    /// Stored energy at the end of each slot (kWh).
    pub energy_kwh: Vec<f64>,
    /// Net grid import per slot (kW, positive = import).
    pub grid_kw: Vec<f64>,
    /// The initial energy used (kWh) and where it came from (`telemetry` or `assumed`).
    pub initial_energy_kwh: f64,
    /// `telemetry` or `assumed` (mid-window when the device sent no telemetry).
    pub initial_energy_source: &'static str,
    /// The load forecast used (`<model> v<version>`), absent when the load was taken as zero.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_forecast: Option<String>,
    /// The PV forecast used (`<model> v<version>`), absent when the PV was taken as zero.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pv_forecast: Option<String>,
    /// The stored schedule, when published.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleBody>,
}

/// The optimisation result.
#[derive(Debug, Serialize, ToSchema)]
pub struct OptimizeResponse {
    /// `optimal` or `iteration_limit` (infeasible problems are a 422).
    pub status: String,
    /// The objective: energy cost plus wear (currency).
    pub objective: f64,
    /// The method the solver used.
    pub method: String,
    /// Solve time (s).
    pub solve_seconds: f64,
    /// The price series used.
    pub price_series: String,
    /// Whether the schedules were stored and published.
    pub published: bool,
    /// Per device.
    pub devices: Vec<PlannedDevice>,
}

/// Runs the fleet optimiser for a group of sites over a horizon (operator); with `publish` the
/// schedules are validated, stored and sent in the same call.
#[utoipa::path(post, path = "/api/v1/optimize", tag = "optimisation",
    request_body = OptimizeRequest,
    responses((status = 200, body = OptimizeResponse), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn optimize(
    State(state): State<AppState>,
    caller: Caller,
    RequestId(rid): RequestId,
    ApiJson(req): ApiJson<OptimizeRequest>,
) -> ApiResult<Json<OptimizeResponse>> {
    caller.require(Role::Operator)?;
    if req.slots == 0 || req.slots > MAX_SLOTS {
        return Err(ApiError::invalid(
            "slots",
            format!("must be in 1..={MAX_SLOTS}"),
        ));
    }
    let slot = SlotLength::from_seconds(req.slot_seconds)
        .map_err(|e| ApiError::invalid("slot_seconds", e.to_string()))?;
    let horizon = Horizon::new(req.start, slot, req.slots)
        .map_err(|e| ApiError::invalid("start", e.to_string()))?;
    let prefix = req.schedule_prefix.as_deref().unwrap_or("opt");
    if ScheduleId::new(format!("{prefix}-x")).is_err() || prefix.len() > 20 {
        return Err(ApiError::invalid(
            "schedule_prefix",
            "invalid prefix (at most 20 id characters)",
        ));
    }

    // Sites: given, or the feeder's.
    let mut feeder_limit = None;
    let site_ids: Vec<SiteId> = match (&req.feeder, req.sites.is_empty()) {
        (Some(_), false) => {
            return Err(ApiError::invalid("feeder", "give either sites or feeder"));
        }
        (Some(f), true) => {
            let id: FeederId = body_id("feeder", f)?;
            let feeder = state.store.get_feeder(&id).await?;
            caller.check_tenant(Some(&feeder.tenant))?;
            let envelope = feeder.envelope.ok_or_else(|| {
                ApiError::invalid(
                    "feeder",
                    "the feeder has no envelope: PUT /feeders/{id}/envelope",
                )
            })?;
            feeder_limit = Some(envelope_on(&envelope, &horizon)?);
            envelope.sites().to_vec()
        }
        (None, false) => req
            .sites
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.parse::<SiteId>()
                    .map_err(|e| ApiError::invalid(format!("sites[{i}]"), e.to_string()))
            })
            .collect::<ApiResult<_>>()?,
        (None, true) => return Err(ApiError::invalid("sites", "name at least one site")),
    };
    if site_ids.len() > MAX_SITES {
        return Err(ApiError::invalid(
            "sites",
            format!("at most {MAX_SITES} sites"),
        ));
    }

    let mut sites: Vec<(SiteRecord, DeviceRecord)> = Vec::with_capacity(site_ids.len());
    for (i, id) in site_ids.iter().enumerate() {
        let site = state.store.get_site(id).await.map_err(|e| match e {
            StoreError::NotFound { .. } => {
                ApiError::invalid(format!("sites[{i}]"), format!("unknown site {id}"))
            }
            e => e.into(),
        })?;
        caller.check_tenant(Some(&site.tenant))?;
        let devices = state
            .store
            .list_devices(&DeviceFilter {
                site: Some(id.clone()),
                limit: 1,
                ..Default::default()
            })
            .await?;
        let device = devices.items.into_iter().next().ok_or_else(|| {
            ApiError::invalid(
                format!("sites[{i}]"),
                format!("site {id} has no active device"),
            )
        })?;
        sites.push((site, device));
    }

    let series = match &req.price_series {
        Some(s) => s.clone(),
        None => sites
            .iter()
            .find_map(|(s, _)| s.price_series.clone())
            .ok_or_else(|| {
                ApiError::invalid(
                    "price_series",
                    "no price series given and the sites name none",
                )
            })?,
    };
    if series.parse::<SiteId>().is_err() {
        return Err(ApiError::invalid("price_series", "invalid series name"));
    }
    // Price slots may be longer than the horizon's (hourly prices, 15-minute slots): take the
    // slot in force at each start, looking back a day for the one covering the first slot.
    let lookback = horizon
        .start()
        .checked_sub(jiff::SignedDuration::from_hours(24))
        .map_err(|e| ApiError::invalid("start", e.to_string()))?;
    let points = state.store.prices(&series, lookback, horizon.end()).await?;
    let mut import_price = Vec::with_capacity(req.slots);
    let mut export_price = Vec::with_capacity(req.slots);
    for (i, t) in horizon.iter() {
        let p = price_at(&points, t).ok_or_else(|| {
            ApiError::invalid(
                "price_series",
                format!("series {series} has no price for slot {i} ({t})"),
            )
        })?;
        import_price.push(p.import);
        export_price.push(p.export);
    }

    // The active load and PV forecasts of the sites, if any.
    let mut forecasts: Vec<SiteForecasts> = Vec::with_capacity(sites.len());
    {
        let active = |kind: &str| ModelFilter {
            kind: Some(kind.to_owned()),
            active_only: true,
            ..Default::default()
        };
        let load_models = state.store.list_models(&active("load")).await?;
        let pv_models = state.store.list_models(&active("pv")).await?;
        for (site, _) in &sites {
            let one = |models: &[ModelInfo]| {
                models
                    .iter()
                    .find(|m| m.site.as_ref() == Some(&site.id))
                    .cloned()
            };
            let (lm, pm) = (one(&load_models), one(&pv_models));
            let (load, load_src) =
                site_forecast(&state, lm, &horizon, req.slot_seconds, req.slots).await?;
            let (pv, pv_src) =
                site_forecast(&state, pm, &horizon, req.slot_seconds, req.slots).await?;
            let pv = pv.into_iter().map(|v| v.max(0.0)).collect();
            forecasts.push(SiteForecasts {
                load,
                load_src,
                pv,
                pv_src,
            });
        }
    }

    let mut initial = Vec::with_capacity(sites.len());
    let mut problems = Vec::with_capacity(sites.len());
    for ((site, device), SiteForecasts { load, pv, .. }) in sites.iter().zip(&forecasts) {
        let spec = &device.spec;
        let (e0, source) = match state.store.last_telemetry(&device.id).await? {
            Some(s) => (s.soc.energy(spec.capacity()).kwh(), "telemetry"),
            None => (
                (spec.min_energy().kwh() + spec.max_energy().kwh()) / 2.0,
                "assumed",
            ),
        };
        let e0 = e0.clamp(spec.min_energy().kwh(), spec.max_energy().kwh());
        initial.push((e0, source));
        problems.push(SiteProblem {
            id: site.id.to_string(),
            load: load.clone(),
            pv: pv.clone(),
            grid_import_max: site.grid.import_limit.kw(),
            grid_export_max: site.grid.export_limit.kw(),
            demand_charge: f64::from(site.demand_charge),
            battery: BatteryParams {
                e_min: spec.min_energy().kwh(),
                e_max: spec.max_energy().kwh(),
                e0,
                e_final_min: None,
                p_ch_max: spec.max_charge().kw(),
                p_dis_max: spec.max_discharge().kw(),
                eta_ch: f64::from(spec.charge_efficiency()),
                eta_dis: f64::from(spec.discharge_efficiency()),
                deg_cost: f64::from(spec.degradation_cost()),
            },
            power_bounds: None,
            wear_quadratic: 0.0,
        });
    }
    let problem = FleetProblem {
        name: format!("api-{}", rid),
        dt: slot.hours(),
        import_price,
        export_price,
        sites: problems,
        feeder: feeder_limit,
        tracking: None,
    };
    problem
        .validate()
        .map_err(|e| ApiError::invalid("sites", e.to_string()))?;
    let solution = tokio::task::spawn_blocking(move || {
        grid_optimize::solver::DefaultSolver::default().solve(&problem)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("solver task: {e}")))?
    .map_err(|e| ApiError::invalid("sites", e.to_string()))?;
    if let SolveStatus::Infeasible { reason } = &solution.status {
        return Err(ApiError::Invalid {
            code: "infeasible",
            field: None,
            detail: format!("no schedule satisfies every limit: {reason}"),
        });
    }

    let mut devices = Vec::with_capacity(sites.len());
    for ((((site, device), sol), (e0, source)), f) in sites
        .iter()
        .zip(&solution.sites)
        .zip(initial)
        .zip(forecasts)
    {
        let (max_c, max_d) = (
            device.spec.max_charge().kw(),
            device.spec.max_discharge().kw(),
        );
        // Clamp solver round-off at the power limits so validation sees the intended plan.
        let setpoints: Vec<f64> = sol
            .charge
            .iter()
            .zip(&sol.discharge)
            .map(|(c, d)| (c - d).clamp(-max_d, max_c))
            .collect();
        let grid_kw = sol
            .grid_import
            .iter()
            .zip(&sol.grid_export)
            .map(|(i, e)| i - e)
            .collect();
        let schedule = if req.publish {
            let id = ScheduleId::new(format!("{prefix}-{}", device.id))
                .map_err(|e| ApiError::invalid("schedule_prefix", e.to_string()))?;
            let version = match state.store.get_schedule(&id, None).await {
                Ok(r) => r.schedule.version().next(),
                Err(StoreError::NotFound { .. }) => ScheduleVersion(1),
                Err(e) => return Err(e.into()),
            };
            let record = store_schedule(
                &state,
                device,
                id,
                version,
                horizon.start(),
                req.slot_seconds,
                &setpoints,
                Some(e0),
                true,
                &rid,
            )
            .await?;
            Some(ScheduleBody::from_record(&record, false))
        } else {
            None
        };
        devices.push(PlannedDevice {
            site: site.id.to_string(),
            device: device.id.to_string(),
            setpoints_kw: setpoints,
            energy_kwh: sol.soc_end.clone(),
            grid_kw,
            initial_energy_kwh: e0,
            initial_energy_source: source,
            load_forecast: f.load_src,
            pv_forecast: f.pv_src,
            schedule,
        });
    }
    let _ = now();
    Ok(Json(OptimizeResponse {
        status: solution.status.as_str().to_owned(),
        objective: solution.objective,
        method: solution.diagnostics.method.clone(),
        solve_seconds: solution.diagnostics.solve_seconds,
        price_series: series,
        published: req.publish,
        devices,
    }))
}

/// A site's load and PV over the horizon (kW) and the model versions they came from.
struct SiteForecasts {
    load: Vec<f64>,
    load_src: Option<String>,
    pv: Vec<f64>,
    pv_src: Option<String>,
}

/// The P50 of a site's active model over the horizon, with `<name> v<version>`; zero without one.
async fn site_forecast(
    state: &AppState,
    model: Option<ModelInfo>,
    horizon: &Horizon,
    slot_seconds: u32,
    slots: usize,
) -> ApiResult<(Vec<f64>, Option<String>)> {
    let Some(m) = model else {
        return Ok((vec![0.0; slots], None));
    };
    let record = state.store.get_model(&m.name, Some(m.version)).await?;
    let values = crate::forecasting::horizon_p50(
        state.store.as_ref(),
        &record,
        horizon.start(),
        slot_seconds,
        slots,
    )
    .await?;
    Ok((values, Some(format!("{} v{}", m.name, m.version))))
}

fn price_at(points: &[PricePoint], t: Timestamp) -> Option<PricePoint> {
    let i = points.partition_point(|p| p.start <= t);
    let p = *points.get(i.checked_sub(1)?)?;
    (t.as_second() < p.start.as_second() + i64::from(p.slot_seconds)).then_some(p)
}

/// The feeder's limits on each slot of `horizon` (the envelope slot in force at each start).
fn envelope_on(envelope: &grid_core::FeederEnvelope, horizon: &Horizon) -> ApiResult<FeederLimit> {
    let mut import_limit = Vec::with_capacity(horizon.len());
    let mut export_limit = Vec::with_capacity(horizon.len());
    for (i, t) in horizon.iter() {
        let k = envelope.horizon().slot_at(t).ok_or_else(|| {
            ApiError::invalid(
                "feeder",
                format!("the feeder envelope does not cover slot {i} ({t})"),
            )
        })?;
        let l = envelope.limits()[k];
        import_limit.push(l.import.kw());
        export_limit.push(l.export.kw());
    }
    Ok(FeederLimit {
        import_limit,
        export_limit,
    })
}
