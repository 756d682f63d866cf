//! Schedules: per-slot power setpoints for one battery over a horizon, their expected SoC
//! trajectory, validation against a [`BatterySpec`] and energy-conserving resampling.

use crate::battery::BatterySpec;
use crate::error::{Error, Result};
use crate::ids::{DeviceId, ScheduleId, ScheduleVersion};
use crate::time::{Horizon, SlotLength, Timestamp};
use crate::units::{Energy, Power};
use std::fmt;

/// Slack allowed when checking limits, in kW or kWh: solver output that violates a limit by less
/// than this is accepted (the optimiser guarantees 1e-6).
pub const TOLERANCE: f64 = 1e-6;

/// The stored energy at the end of each slot of a horizon, starting from an initial energy.
///
/// Within a slot the power is constant, so the energy moves linearly between the points: the
/// trajectory is exact at any instant ([`SocTrajectory::at`]).
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SocTrajectory {
    /// Stored energy at the start of the first slot.
    pub initial: Energy,
    /// Stored energy at the end of each slot.
    pub end_of_slot: Vec<Energy>,
}

impl SocTrajectory {
    /// Simulates `setpoints` (one per slot of `slot` length) from `initial` with the
    /// specification's efficiencies, without checking any limit.
    pub fn simulate(
        spec: &BatterySpec,
        initial: Energy,
        setpoints: &[Power],
        slot: SlotLength,
    ) -> Self {
        let hours = slot.hours();
        let mut e = initial;
        let end_of_slot = setpoints
            .iter()
            .map(|&p| {
                e = spec.energy_after(e, p, hours);
                e
            })
            .collect();
        Self {
            initial,
            end_of_slot,
        }
    }

    /// The stored energy at the end of the last slot.
    pub fn final_energy(&self) -> Energy {
        self.end_of_slot.last().copied().unwrap_or(self.initial)
    }

    /// The stored energy at the start of slot `index` (the end of the previous one).
    pub fn start_of_slot(&self, index: usize) -> Energy {
        match index {
            0 => self.initial,
            i => self
                .end_of_slot
                .get(i - 1)
                .copied()
                .unwrap_or(self.final_energy()),
        }
    }

    /// The stored energy at `instant` on `horizon`, interpolated inside the slot; `None` outside.
    pub fn at(&self, horizon: &Horizon, instant: Timestamp) -> Option<Energy> {
        if instant == horizon.end() {
            return Some(self.final_energy());
        }
        let i = horizon.slot_at(instant)?;
        let start = horizon.slot_start(i)?;
        let frac = (instant.as_millisecond() - start.as_millisecond()) as f64
            / (f64::from(horizon.slot_length().seconds()) * 1000.0);
        let a = self.start_of_slot(i).kwh();
        let b = self.end_of_slot.get(i)?.kwh();
        Energy::from_kwh(a + (b - a) * frac).ok()
    }
}

/// Which limit a schedule breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum ViolationKind {
    /// A setpoint charges faster than `max_charge`.
    ChargePower,
    /// A setpoint discharges faster than `max_discharge`.
    DischargePower,
    /// The stored energy rises above the window's top.
    MaxEnergy,
    /// The stored energy falls below the window's bottom.
    MinEnergy,
    /// The power changes between slots faster than the ramp limit allows within one slot.
    Ramp,
    /// The initial energy is outside the window.
    InitialEnergy,
}

/// One broken limit: where, which, and by how much.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Violation {
    /// The slot where the limit is broken.
    pub slot: usize,
    /// Which limit.
    pub kind: ViolationKind,
    /// The limit (kW for power and ramp, kWh for energy).
    pub limit: f64,
    /// The value the schedule reaches.
    pub actual: f64,
}

impl Violation {
    /// How far past the limit the value is (always > 0).
    pub fn excess(&self) -> f64 {
        (self.actual - self.limit).abs()
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (what, unit) = match self.kind {
            ViolationKind::ChargePower => ("charge power", "kW"),
            ViolationKind::DischargePower => ("discharge power", "kW"),
            ViolationKind::MaxEnergy => ("stored energy above the maximum", "kWh"),
            ViolationKind::MinEnergy => ("stored energy below the minimum", "kWh"),
            ViolationKind::Ramp => ("power step beyond the ramp limit", "kW"),
            ViolationKind::InitialEnergy => ("initial energy outside the window", "kWh"),
        };
        write!(
            f,
            "slot {}: {what}: {:.6} {unit} against a limit of {:.6} {unit} (by {:.6})",
            self.slot,
            self.actual,
            self.limit,
            self.excess()
        )
    }
}

/// The limits a schedule breaks (never empty).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("schedule violates {} limit(s); first: {}", .0.len(), .0.first().map(ToString::to_string).unwrap_or_default())]
pub struct Violations(pub Vec<Violation>);

/// The plain parts of a [`Schedule`]; [`Schedule::new`] checks them.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ScheduleParts {
    /// Identity shared by all versions.
    pub id: ScheduleId,
    /// The device that executes it.
    pub device: DeviceId,
    /// Revision number; a device only ever moves to higher versions.
    pub version: ScheduleVersion,
    /// The slots the setpoints are defined on.
    pub horizon: Horizon,
    /// Battery power per slot (kW, positive = charging).
    pub setpoints: Vec<Power>,
    /// The stored energy the planner expects.
    pub expected: SocTrajectory,
    /// When the schedule was made.
    pub created_at: Timestamp,
    /// After this instant the schedule must not be applied (at most the horizon's end).
    pub expires_at: Timestamp,
}

/// A plan for one battery: a power setpoint per slot, the expected SoC trajectory, and its
/// identity, version and validity.
///
/// Invariants: one setpoint and one expected energy per slot; `created_at < expires_at ≤
/// horizon.end()`.
///
/// ```
/// use grid_core::*;
/// let spec = BatterySpec::new(BatteryParams::with_soc_window(10.0, 0.1, 0.9, 5.0))?;
/// let horizon = Horizon::new("2026-11-27T00:00:00Z".parse()?, SlotLength::HOUR, 3)?;
/// let setpoints = [4.0, 0.0, -4.0].map(|kw| Power::from_kw(kw).unwrap()).to_vec();
/// let initial = Energy::from_kwh(5.0)?;
/// let schedule = Schedule::planned(
///     ScheduleId::new("s-1")?, DeviceId::new("bat-1")?, ScheduleVersion(1),
///     horizon, setpoints, &spec, initial, horizon.start(),
/// )?;
/// let trajectory = schedule.validate(&spec, initial)?;
/// assert!((trajectory.final_energy().kwh() - (5.0 + 4.0 * 0.95 - 4.0 / 0.95)).abs() < 1e-9);
///
/// // Too much power in slot 0, and the battery would overflow in slot 1:
/// let greedy = [5.5, 5.0, 0.0].map(|kw| Power::from_kw(kw).unwrap()).to_vec();
/// let bad = Schedule::planned(ScheduleId::new("s-2")?, DeviceId::new("bat-1")?,
///     ScheduleVersion(1), horizon, greedy, &spec, initial, horizon.start())?;
/// let violations = bad.validate(&spec, initial).unwrap_err();
/// assert_eq!(violations.0[0].kind, ViolationKind::ChargePower);
/// assert_eq!(violations.0[1].kind, ViolationKind::MaxEnergy);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(
    feature = "serde",
    serde(try_from = "ScheduleParts", into = "ScheduleParts")
)]
pub struct Schedule {
    parts: ScheduleParts,
}

impl Schedule {
    /// Checks the parts and builds the schedule.
    pub fn new(parts: ScheduleParts) -> Result<Self> {
        let n = parts.horizon.len();
        if parts.setpoints.len() != n {
            return Err(Error::LengthMismatch {
                field: "schedule.setpoints",
                expected: n,
                actual: parts.setpoints.len(),
            });
        }
        if parts.expected.end_of_slot.len() != n {
            return Err(Error::LengthMismatch {
                field: "schedule.expected_soc",
                expected: n,
                actual: parts.expected.end_of_slot.len(),
            });
        }
        if parts.expires_at <= parts.created_at {
            return Err(Error::Inconsistent {
                field: "schedule.expires_at",
                reason: format!(
                    "expires at {} but was created at {}",
                    parts.expires_at, parts.created_at
                ),
            });
        }
        if parts.expires_at > parts.horizon.end() {
            return Err(Error::Inconsistent {
                field: "schedule.expires_at",
                reason: format!(
                    "expires at {} after the horizon ends at {}",
                    parts.expires_at,
                    parts.horizon.end()
                ),
            });
        }
        Ok(Self { parts })
    }

    /// Builds a schedule whose expected trajectory is simulated from `initial` with `spec`, valid
    /// until the horizon's end. Limits are not checked: call [`Schedule::validate`].
    #[allow(clippy::too_many_arguments)]
    pub fn planned(
        id: ScheduleId,
        device: DeviceId,
        version: ScheduleVersion,
        horizon: Horizon,
        setpoints: Vec<Power>,
        spec: &BatterySpec,
        initial: Energy,
        created_at: Timestamp,
    ) -> Result<Self> {
        let expected = SocTrajectory::simulate(spec, initial, &setpoints, horizon.slot_length());
        Self::new(ScheduleParts {
            id,
            device,
            version,
            horizon,
            setpoints,
            expected,
            created_at,
            expires_at: horizon.end(),
        })
    }

    /// Identity shared by all versions.
    pub fn id(&self) -> &ScheduleId {
        &self.parts.id
    }

    /// The executing device.
    pub fn device(&self) -> &DeviceId {
        &self.parts.device
    }

    /// The version.
    pub fn version(&self) -> ScheduleVersion {
        self.parts.version
    }

    /// The horizon.
    pub fn horizon(&self) -> &Horizon {
        &self.parts.horizon
    }

    /// Setpoints per slot (kW, positive = charging).
    pub fn setpoints(&self) -> &[Power] {
        &self.parts.setpoints
    }

    /// The planner's expected trajectory.
    pub fn expected(&self) -> &SocTrajectory {
        &self.parts.expected
    }

    /// Creation instant.
    pub fn created_at(&self) -> Timestamp {
        self.parts.created_at
    }

    /// Expiry instant.
    pub fn expires_at(&self) -> Timestamp {
        self.parts.expires_at
    }

    /// The parts the schedule was built from.
    pub fn parts(&self) -> &ScheduleParts {
        &self.parts
    }

    /// The setpoint in force at `instant`, or `None` outside the horizon or after expiry.
    pub fn setpoint_at(&self, instant: Timestamp) -> Option<Power> {
        if instant >= self.parts.expires_at {
            return None;
        }
        self.parts
            .horizon
            .slot_at(instant)
            .map(|i| self.parts.setpoints[i])
    }

    /// Whether the schedule may still be applied at `now`.
    pub fn is_live(&self, now: Timestamp) -> bool {
        now < self.parts.expires_at
    }

    /// Simulates the setpoints from `initial` with `spec`'s efficiencies and checks every limit:
    /// power, the energy window and the ramp limit. Returns the trajectory, or every violation
    /// found (slot, limit, value), each past [`TOLERANCE`].
    pub fn validate(
        &self,
        spec: &BatterySpec,
        initial: Energy,
    ) -> std::result::Result<SocTrajectory, Violations> {
        let mut violations = Vec::new();
        let (lo, hi) = (spec.min_energy().kwh(), spec.max_energy().kwh());
        if initial.kwh() < lo - TOLERANCE || initial.kwh() > hi + TOLERANCE {
            violations.push(Violation {
                slot: 0,
                kind: ViolationKind::InitialEnergy,
                limit: if initial.kwh() < lo { lo } else { hi },
                actual: initial.kwh(),
            });
        }
        let slot = self.parts.horizon.slot_length();
        let ramp_step = spec.ramp_limit_kw_per_min().map(|r| r * slot.minutes());
        let trajectory = SocTrajectory::simulate(spec, initial, &self.parts.setpoints, slot);
        let mut previous: Option<Power> = None;
        for (i, (&p, &e)) in self
            .parts
            .setpoints
            .iter()
            .zip(&trajectory.end_of_slot)
            .enumerate()
        {
            if p.kw() > spec.max_charge().kw() + TOLERANCE {
                violations.push(Violation {
                    slot: i,
                    kind: ViolationKind::ChargePower,
                    limit: spec.max_charge().kw(),
                    actual: p.kw(),
                });
            }
            if -p.kw() > spec.max_discharge().kw() + TOLERANCE {
                violations.push(Violation {
                    slot: i,
                    kind: ViolationKind::DischargePower,
                    limit: spec.max_discharge().kw(),
                    actual: -p.kw(),
                });
            }
            if e.kwh() > hi + TOLERANCE {
                violations.push(Violation {
                    slot: i,
                    kind: ViolationKind::MaxEnergy,
                    limit: hi,
                    actual: e.kwh(),
                });
            }
            if e.kwh() < lo - TOLERANCE {
                violations.push(Violation {
                    slot: i,
                    kind: ViolationKind::MinEnergy,
                    limit: lo,
                    actual: e.kwh(),
                });
            }
            if let (Some(step), Some(prev)) = (ramp_step, previous) {
                let delta = (p - prev).abs().kw();
                if delta > step + TOLERANCE {
                    violations.push(Violation {
                        slot: i,
                        kind: ViolationKind::Ramp,
                        limit: step,
                        actual: delta,
                    });
                }
            }
            previous = Some(p);
        }
        if violations.is_empty() {
            Ok(trajectory)
        } else {
            Err(Violations(violations))
        }
    }

    /// The same plan on slots of another length, conserving the energy exchanged with the
    /// battery: each new setpoint is the time-weighted mean power over its slot. The horizon's
    /// start and end must be multiples of the new slot length. The expected trajectory is sampled
    /// exactly at the new slot ends (it is linear inside each original slot).
    pub fn resample(&self, slot: SlotLength) -> Result<Schedule> {
        let old = self.parts.horizon;
        let total = old.duration().as_secs();
        let new_secs = i64::from(slot.seconds());
        if total % new_secs != 0 || !crate::time::is_aligned(old.start(), slot) {
            return Err(Error::Inconsistent {
                field: "schedule.resample",
                reason: format!(
                    "a horizon of {total} s starting at {} cannot be cut into {new_secs} s slots",
                    old.start()
                ),
            });
        }
        let len = usize::try_from(total / new_secs).map_err(|_| Error::TimeOutOfRange {
            field: "schedule.resample",
        })?;
        let horizon = Horizon::new(old.start(), slot, len)?;
        let old_secs = i64::from(old.slot_length().seconds());
        let mut setpoints = Vec::with_capacity(len);
        let mut end_of_slot = Vec::with_capacity(len);
        for j in 0..len {
            let (a, b) = (j as i64 * new_secs, (j as i64 + 1) * new_secs);
            let mut kws = 0.0;
            let first = usize::try_from(a / old_secs).unwrap_or(0);
            let mut i = first;
            while (i as i64) * old_secs < b && i < old.len() {
                let (oa, ob) = (i as i64 * old_secs, (i as i64 + 1) * old_secs);
                let overlap = (b.min(ob) - a.max(oa)) as f64;
                kws += self.parts.setpoints[i].kw() * overlap;
                i += 1;
            }
            setpoints.push(Power::named("schedule.setpoints", kws / new_secs as f64)?);
            let end = horizon
                .slot_start(j)
                .and_then(|s| s.checked_add(slot.duration()).ok());
            let energy = end
                .and_then(|t| self.parts.expected.at(&old, t))
                .unwrap_or(self.parts.expected.final_energy());
            end_of_slot.push(energy);
        }
        Schedule::new(ScheduleParts {
            horizon,
            setpoints,
            expected: SocTrajectory {
                initial: self.parts.expected.initial,
                end_of_slot,
            },
            ..self.parts.clone()
        })
    }

    /// The energy exchanged with the battery over the whole horizon (Σ p·Δt, signed).
    pub fn net_energy(&self) -> Energy {
        let h = self.parts.horizon.slot_length().hours();
        self.parts.setpoints.iter().map(|p| p.over_hours(h)).sum()
    }
}

impl TryFrom<ScheduleParts> for Schedule {
    type Error = Error;
    fn try_from(parts: ScheduleParts) -> Result<Self> {
        Schedule::new(parts)
    }
}

impl From<Schedule> for ScheduleParts {
    fn from(s: Schedule) -> Self {
        s.parts
    }
}
