//! The battery behind the agent: any driver behind one object-safe trait ([`Battery`]), always
//! wrapped in grid-hal's [`SafeBattery`] (envelope, ramp, temperature derating, watchdog).
//!
//! Time is an input here too: [`Hardware::tick`] takes the agent clock's `now`, advances a
//! simulated battery by the time since the previous tick (so an accelerated clock accelerates
//! the physics) and feeds the safety layer a monotonic offset.
//!
//! A [`GridMeter`] beside the battery (optional) feeds the self-consumption fallback: grid-hal's
//! simulated site ([`SimSiteMeter`]) or the SunSpec inverter's meter model
//! (`sunspec::SunSpecGridMeter`, feature `modbus`).
//!
//! **Sign convention:** a positive power (kW) charges the battery, negative discharges it; a
//! positive grid-meter reading is an import from the grid.

use crate::config::{Config, Driver, MeterSource};
use crate::error::{Error, Result};
use grid_core::{BatterySpec, Power, Soc, TelemetrySample, Timestamp};
use grid_hal::{
    BatteryController, BatteryMonitor, BatteryState, ErrorKind, ErrorType, HalError, SafeBattery,
    SafetyConfig, SimBattery, SimConfig, SimSite, TickReport,
};
use std::time::Duration;

/// A grid meter: the power at the site's connection to the grid (kW, positive = importing).
pub trait GridMeter: Send + std::fmt::Debug {
    /// Reads the meter at `now`. `battery` is the battery's reading of the same tick, if there is
    /// one (a simulated site derives the import from it; a real meter ignores it).
    fn read(
        &mut self,
        now: Timestamp,
        battery: Option<&BatteryState>,
    ) -> std::result::Result<Power, ErrorKind>;
}

/// The meter of grid-hal's simulated site around the battery: `load − pv + battery` (kW,
/// positive = importing), from the battery's measured power. Without a battery reading there is
/// no meter reading either.
#[derive(Debug, Clone)]
pub struct SimSiteMeter(pub SimSite);

impl GridMeter for SimSiteMeter {
    fn read(
        &mut self,
        now: Timestamp,
        battery: Option<&BatteryState>,
    ) -> std::result::Result<Power, ErrorKind> {
        let battery = battery.ok_or(ErrorKind::Sensor)?;
        Ok(self.0.grid_import(now, battery.power))
    }
}

/// A battery driver, object-safe so the agent can hold any of them.
pub trait Battery: Send {
    /// Reads the battery's state.
    fn read_state(&mut self) -> std::result::Result<BatteryState, ErrorKind>;
    /// Commands a setpoint (kW, positive = charging).
    fn set_power(&mut self, power: Power) -> std::result::Result<(), ErrorKind>;
    /// Advances a simulated battery by `dt` (real hardware ignores it).
    fn advance(&mut self, _dt: Duration) {}
    /// The simulator, if this is one (for fault injection and tests).
    fn as_sim_mut(&mut self) -> Option<&mut SimBattery> {
        None
    }
}

impl Battery for SimBattery {
    fn read_state(&mut self) -> std::result::Result<BatteryState, ErrorKind> {
        BatteryMonitor::read_state(self).map_err(|e| e.kind())
    }

    fn set_power(&mut self, power: Power) -> std::result::Result<(), ErrorKind> {
        BatteryController::set_power(self, power).map_err(|e| e.kind())
    }

    fn advance(&mut self, dt: Duration) {
        self.step(dt);
    }

    fn as_sim_mut(&mut self) -> Option<&mut SimBattery> {
        Some(self)
    }
}

/// Any grid-hal [`BatteryController`] as a [`Battery`].
#[derive(Debug)]
pub struct Controller<B>(pub B);

impl<B: BatteryController + Send> Battery for Controller<B> {
    fn read_state(&mut self) -> std::result::Result<BatteryState, ErrorKind> {
        self.0.read_state().map_err(|e| e.kind())
    }

    fn set_power(&mut self, power: Power) -> std::result::Result<(), ErrorKind> {
        self.0.set_power(power).map_err(|e| e.kind())
    }
}

/// A read-only battery (a BMS such as a Smart Battery): telemetry works, and only a zero
/// setpoint is accepted (the power itself is set by a separate inverter or charger).
#[derive(Debug)]
pub struct MonitorOnly<M>(pub M);

impl<M: BatteryMonitor + Send> Battery for MonitorOnly<M> {
    fn read_state(&mut self) -> std::result::Result<BatteryState, ErrorKind> {
        self.0.read_state().map_err(|e| e.kind())
    }

    fn set_power(&mut self, power: Power) -> std::result::Result<(), ErrorKind> {
        if power == Power::ZERO {
            Ok(())
        } else {
            Err(ErrorKind::Unsupported)
        }
    }
}

/// A boxed [`Battery`] in grid-hal's trait shape, so [`SafeBattery`] can wrap it.
pub struct BoxedBattery(Box<dyn Battery>);

impl std::fmt::Debug for BoxedBattery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BoxedBattery")
    }
}

impl ErrorType for BoxedBattery {
    type Error = ErrorKind;
}

impl BatteryMonitor for BoxedBattery {
    fn read_state(&mut self) -> std::result::Result<BatteryState, ErrorKind> {
        self.0.read_state()
    }
}

impl BatteryController for BoxedBattery {
    fn set_power(&mut self, power: Power) -> std::result::Result<(), ErrorKind> {
        self.0.set_power(power)
    }
}

/// The agent's battery: a driver inside the safety layer, driven by the agent's clock, and the
/// site's grid meter if there is one.
#[derive(Debug)]
pub struct Hardware {
    safe: SafeBattery<BoxedBattery>,
    meter: Option<Box<dyn GridMeter>>,
    origin: Option<Timestamp>,
    last: Option<Timestamp>,
}

impl Hardware {
    /// Wraps `battery` in the safety layer for `spec`; the watchdog reverts to idle after
    /// `reversion_timeout` without a new setpoint.
    pub fn new(
        battery: Box<dyn Battery>,
        spec: &BatterySpec,
        reversion_timeout: Duration,
    ) -> Result<Self> {
        let config = SafetyConfig {
            watchdog_timeout: reversion_timeout,
            ..SafetyConfig::for_spec(spec)
        };
        Ok(Self {
            safe: SafeBattery::new(BoxedBattery(battery), spec, config)?,
            meter: None,
            origin: None,
            last: None,
        })
    }

    /// The same hardware with a grid meter (for the self-consumption fallback).
    pub fn with_meter(mut self, meter: Box<dyn GridMeter>) -> Self {
        self.meter = Some(meter);
        self
    }

    /// Whether a grid meter is attached.
    pub fn has_meter(&self) -> bool {
        self.meter.is_some()
    }

    /// Reads the grid meter at `now` (kW, positive = importing) given the tick's `report`;
    /// `None` without a meter.
    pub fn read_meter(
        &mut self,
        now: Timestamp,
        report: &TickReport,
    ) -> Option<std::result::Result<Power, ErrorKind>> {
        let battery = report.state.filter(BatteryState::is_finite);
        self.meter.as_mut().map(|m| m.read(now, battery.as_ref()))
    }

    /// A simulated battery of `spec` (seeded), inside the safety layer.
    pub fn sim(
        spec: &BatterySpec,
        seed: u64,
        initial_soc: f64,
        reversion_timeout: Duration,
    ) -> Result<Self> {
        let sim = SimBattery::new(
            spec.clone(),
            SimConfig {
                seed,
                initial_soc: Soc::from_fraction(initial_soc).map_err(grid_hal::Error::from)?,
                ..SimConfig::default()
            },
        )?;
        Self::new(Box::new(sim), spec, reversion_timeout)
    }

    /// The battery selected by `config.hardware`, with the grid meter of `config.meter`. Drivers
    /// that need a feature this build lacks are refused by [`Config::validate`] already. The
    /// `sunspec-modbus` driver spawns its polling task: call from within a tokio runtime.
    pub fn from_config(config: &Config) -> Result<Self> {
        let (hardware, driver_meter) = Self::driver_from_config(config)?;
        let m = &config.meter;
        let meter: Option<Box<dyn GridMeter>> = match m.source {
            MeterSource::None => None,
            MeterSource::Sim => Some(Box::new(SimSiteMeter(SimSite::new(m.site_config())?))),
            MeterSource::Sunspec => Some(driver_meter.ok_or_else(|| Error::Config {
                key: "meter.source".into(),
                reason: "\"sunspec\" needs hardware.driver = \"sunspec-modbus\"".into(),
            })?),
        };
        Ok(match meter {
            Some(meter) => hardware.with_meter(meter),
            None => hardware,
        })
    }

    /// The driver of `config.hardware`, and the grid meter it brings (`meter.source = "sunspec"`).
    fn driver_from_config(config: &Config) -> Result<(Self, Option<Box<dyn GridMeter>>)> {
        let spec = config.battery_spec()?;
        let timeout = config.reversion_timeout();
        let h = &config.hardware;
        match h.driver {
            Driver::Sim => Ok((
                Self::sim(&spec, h.sim_seed, h.sim_initial_soc, timeout)?,
                None,
            )),
            #[cfg(feature = "rpi")]
            Driver::SbsI2c => {
                let bus = grid_hal::rpi::RpiI2c::open(h.i2c_bus).map_err(|e| Error::Config {
                    key: "hardware.i2c_bus".into(),
                    reason: format!("cannot open /dev/i2c-{}: {e:?}", h.i2c_bus),
                })?;
                let sbs = grid_hal::sbs::SmartBattery::with_config(
                    bus,
                    grid_hal::sbs::SbsConfig {
                        address: h.i2c_address,
                        ..Default::default()
                    },
                );
                Ok((Self::new(Box::new(MonitorOnly(sbs)), &spec, timeout)?, None))
            }
            #[cfg(feature = "modbus")]
            Driver::SunspecModbus => {
                let addr = h.modbus_address.parse().map_err(|_| Error::Config {
                    key: "hardware.modbus_address".into(),
                    reason: format!("{:?} is not host:port", h.modbus_address),
                })?;
                let read_meter = config.meter.source == MeterSource::Sunspec;
                let inverter = sunspec::SunSpecBattery::spawn(sunspec::SunSpecOptions {
                    addr,
                    unit_id: h.modbus_unit_id,
                    poll: Duration::from_millis(config.agent.tick_interval_ms),
                    revert: timeout,
                    read_meter,
                    meter_unit_id: match config.meter.sunspec_unit_id {
                        0 => None,
                        unit => Some(unit),
                    },
                });
                let meter = read_meter.then(|| {
                    Box::new(inverter.grid_meter(config.meter.sunspec_export_positive))
                        as Box<dyn GridMeter>
                });
                Ok((Self::new(Box::new(inverter), &spec, timeout)?, meter))
            }
            other => Err(Error::Config {
                key: "hardware.driver".into(),
                reason: format!(
                    "driver {:?} is not wired into this grid-agent build (use \"sim\"{})",
                    other.as_str(),
                    if cfg!(feature = "rpi") {
                        " or \"sbs-i2c\""
                    } else {
                        ""
                    }
                ),
            }),
        }
    }

    fn mono(&mut self, now: Timestamp) -> Duration {
        let origin = *self.origin.get_or_insert(now);
        Duration::try_from(now.duration_since(origin)).unwrap_or(Duration::ZERO)
    }

    fn advance(&mut self, now: Timestamp) {
        if let Some(last) = self.last
            && let Ok(dt) = Duration::try_from(now.duration_since(last))
        {
            // A clock jump (NTP sync after boot) must not simulate hours in one step.
            self.safe
                .inner_mut()
                .0
                .advance(dt.min(Duration::from_secs(3600)));
        }
        self.last = Some(self.last.map_or(now, |l| l.max(now)));
    }

    /// Requests `power` (kW, positive = charging) at `now` and applies it through the safety
    /// layer.
    pub fn command(&mut self, now: Timestamp, power: Power) -> TickReport {
        self.advance(now);
        let t = self.mono(now);
        self.safe.command(t, power)
    }

    /// Reads the battery and re-applies the last request (or the watchdog's fallback).
    pub fn tick(&mut self, now: Timestamp) -> TickReport {
        self.advance(now);
        let t = self.mono(now);
        self.safe.tick(t)
    }

    /// The telemetry sample of a tick report taken at `now`.
    pub fn sample(report: &TickReport, now: Timestamp) -> Option<TelemetrySample> {
        report
            .state
            .filter(BatteryState::is_finite)
            .map(|s| s.at(now))
    }

    /// The setpoint the safety layer last applied (kW, positive = charging).
    pub fn applied(&self) -> Power {
        self.safe.guard().last_applied()
    }

    /// The simulator inside, if the driver is one (fault injection, true state in tests).
    pub fn sim_mut(&mut self) -> Option<&mut SimBattery> {
        self.safe.inner_mut().0.as_sim_mut()
    }
}

/// The SunSpec Modbus TCP inverter (feature `modbus`) as a [`Battery`], and its meter model as a
/// [`GridMeter`].
///
/// grid-hal's SunSpec client is async; the agent's battery interface is not (the safety layer is
/// a blocking shell). A background task owns the client: it polls the inverter every tick (and
/// the meter model, when asked), writes the latest setpoint (with the reversion timeout as the
/// inverter's own `RvrtTms`, so the inverter reverts by itself if the agent dies; a setpoint
/// beyond the inverter's WChaMax is clamped to it), and reconnects with a delay after errors.
/// [`Battery::read_state`] and [`GridMeter::read`] return the last reading, or a timeout error
/// when it is stale.
#[cfg(feature = "modbus")]
pub mod sunspec {
    use super::{Battery, GridMeter};
    use grid_core::{Power, Timestamp};
    use grid_hal::sunspec::{SunSpecClient, SunSpecConfig};
    use grid_hal::{BatteryState, ErrorKind, HalError};
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};
    use tokio::sync::watch;

    type Reading<T> = Option<(Instant, Result<T, ErrorKind>)>;

    /// The latest readings, shared between the polling task and the agent.
    #[derive(Debug, Default)]
    struct Latest {
        battery: Reading<BatteryState>,
        /// The meter model's W in kW, as the meter reports it.
        meter_kw: Reading<f64>,
    }

    /// How to reach and drive the inverter.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct SunSpecOptions {
        /// `host:port` of the inverter.
        pub addr: SocketAddr,
        /// Its Modbus unit id.
        pub unit_id: u8,
        /// How often it is polled (the agent's tick).
        pub poll: Duration,
        /// The reversion time written with every setpoint (`InOutWRte_RvrtTms`, 1 to 65535 s).
        pub revert: Duration,
        /// Whether to read a meter model (201–204 or 211–214) on every poll.
        pub read_meter: bool,
        /// The unit id that serves the meter, when it is not the inverter's own chain.
        pub meter_unit_id: Option<u8>,
    }

    /// See the [module docs](self).
    #[derive(Debug)]
    pub struct SunSpecBattery {
        latest: Arc<Mutex<Latest>>,
        setpoint: watch::Sender<Power>,
        stale_after: Duration,
        task: tokio::task::JoinHandle<()>,
    }

    impl SunSpecBattery {
        /// Spawns the polling task on the current tokio runtime (call from within it).
        pub fn spawn(options: SunSpecOptions) -> Self {
            let latest: Arc<Mutex<Latest>> = Arc::default();
            let (setpoint, rx) = watch::channel(Power::ZERO);
            let task = tokio::spawn(poll_loop(options, latest.clone(), rx));
            Self {
                latest,
                setpoint,
                stale_after: options.poll * 5 + Duration::from_secs(3),
                task,
            }
        }

        /// The inverter's meter model as a grid meter (needs `read_meter` in the options).
        /// `export_positive`: the meter reports export as positive power.
        pub fn grid_meter(&self, export_positive: bool) -> SunSpecGridMeter {
            SunSpecGridMeter {
                latest: self.latest.clone(),
                stale_after: self.stale_after,
                export_positive,
            }
        }
    }

    async fn poll_loop(
        options: SunSpecOptions,
        shared: Arc<Mutex<Latest>>,
        mut rx: watch::Receiver<Power>,
    ) {
        let SunSpecOptions {
            addr,
            unit_id,
            poll,
            revert,
            read_meter,
            meter_unit_id,
        } = options;
        let config = SunSpecConfig {
            unit_id,
            ..SunSpecConfig::default()
        };
        let mut last_warning = String::new();
        let mut warn_once = |what: &str, error: &dyn std::fmt::Display| {
            let text = format!("{what}: {error}");
            if text != last_warning {
                tracing::warn!(%addr, "{text}");
                last_warning = text;
            }
        };
        loop {
            let mut client = match SunSpecClient::connect(addr, config).await {
                Ok(c) => c,
                Err(e) => {
                    warn_once("SunSpec inverter unreachable", &e);
                    store(&shared, |l| {
                        l.battery = Some((Instant::now(), Err(e.kind())))
                    });
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    continue;
                }
            };
            loop {
                let reading = client.read_state().await.map_err(|e| e.kind());
                let mut failed = reading.as_ref().is_err_and(|k| k.is_transient());
                store(&shared, |l| l.battery = Some((Instant::now(), reading)));
                if read_meter {
                    // A meter at a unit of its own is looked up on the first poll of a connection
                    // and on every poll until it is found; until then there is no meter reading.
                    let lookup = match meter_unit_id {
                        Some(unit) if client.meter_model().map(|(u, _)| u) != Some(unit) => {
                            client.use_meter_at(unit).await.map_err(|e| {
                                warn_once(&format!("no SunSpec meter at unit {unit}"), &e);
                                e.kind()
                            })
                        }
                        _ => Ok(()),
                    };
                    let meter = match lookup {
                        // Never the inverter's own meter in place of the configured one.
                        Err(kind) => Err(kind),
                        Ok(()) => match client.read_meter().await {
                            Ok(Some(m)) => m.w.map(|w| w / 1000.0).ok_or(ErrorKind::Unsupported),
                            Ok(None) => Err(ErrorKind::Unsupported),
                            Err(e) => Err(e.kind()),
                        },
                    };
                    if let Err(kind) = meter {
                        warn_once("SunSpec meter model not readable", &kind);
                        failed |= kind.is_transient();
                    }
                    store(&shared, |l| l.meter_kw = Some((Instant::now(), meter)));
                }
                let p = *rx.borrow_and_update();
                match client.set_power_clamped(p, revert).await {
                    Ok(written) if written != p => warn_once(
                        "setpoint beyond the inverter's WChaMax, clamped",
                        &format!("{:.3} kW -> {:.3} kW", p.kw(), written.kw()),
                    ),
                    Ok(_) => {}
                    Err(e) => {
                        warn_once("SunSpec setpoint write failed", &e);
                        failed |= e.kind().is_transient();
                    }
                }
                if failed {
                    break;
                }
                // Wake at the next tick, or at once when the setpoint changes.
                let _ = tokio::time::timeout(poll, rx.changed()).await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    fn store(shared: &Mutex<Latest>, f: impl FnOnce(&mut Latest)) {
        if let Ok(mut g) = shared.lock() {
            f(&mut g);
        }
    }

    fn fresh<T: Copy>(reading: Reading<T>, stale_after: Duration) -> Result<T, ErrorKind> {
        match reading {
            Some((at, r)) if at.elapsed() <= stale_after => r,
            Some(_) | None => Err(ErrorKind::Timeout),
        }
    }

    impl Drop for SunSpecBattery {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl Battery for SunSpecBattery {
        fn read_state(&mut self) -> Result<BatteryState, ErrorKind> {
            let reading = self.latest.lock().ok().and_then(|g| g.battery);
            fresh(reading, self.stale_after)
        }

        fn set_power(&mut self, power: Power) -> Result<(), ErrorKind> {
            self.setpoint.send_replace(power);
            Ok(())
        }
    }

    /// The inverter's meter model (201–204) as a [`GridMeter`] (see [`SunSpecBattery::grid_meter`]).
    #[derive(Debug, Clone)]
    pub struct SunSpecGridMeter {
        latest: Arc<Mutex<Latest>>,
        stale_after: Duration,
        export_positive: bool,
    }

    impl GridMeter for SunSpecGridMeter {
        fn read(
            &mut self,
            _now: Timestamp,
            _battery: Option<&BatteryState>,
        ) -> Result<Power, ErrorKind> {
            let reading = self.latest.lock().ok().and_then(|g| g.meter_kw);
            let kw = fresh(reading, self.stale_after)?;
            let import_kw = if self.export_positive { -kw } else { kw };
            Power::from_kw(import_kw).map_err(|_| ErrorKind::Sensor)
        }
    }
}
