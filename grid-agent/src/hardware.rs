//! The battery behind the agent: any driver behind one object-safe trait ([`Battery`]), always
//! wrapped in grid-hal's [`SafeBattery`] (envelope, ramp, temperature derating, watchdog).
//!
//! Time is an input here too: [`Hardware::tick`] takes the agent clock's `now`, advances a
//! simulated battery by the time since the previous tick (so an accelerated clock accelerates
//! the physics) and feeds the safety layer a monotonic offset.
//!
//! **Sign convention:** a positive power (kW) charges the battery, negative discharges it.

use crate::config::{Config, Driver};
use crate::error::{Error, Result};
use grid_core::{BatterySpec, Power, Soc, TelemetrySample, Timestamp};
use grid_hal::{
    BatteryController, BatteryMonitor, BatteryState, ErrorKind, ErrorType, HalError, SafeBattery,
    SafetyConfig, SimBattery, SimConfig, TickReport,
};
use std::time::Duration;

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

/// The agent's battery: a driver inside the safety layer, driven by the agent's clock.
#[derive(Debug)]
pub struct Hardware {
    safe: SafeBattery<BoxedBattery>,
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
            origin: None,
            last: None,
        })
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

    /// The battery selected by `config.hardware`. Drivers that need a feature this build lacks
    /// are refused by [`Config::validate`] already.
    pub fn from_config(config: &Config) -> Result<Self> {
        let spec = config.battery_spec()?;
        let timeout = config.reversion_timeout();
        let h = &config.hardware;
        match h.driver {
            Driver::Sim => Self::sim(&spec, h.sim_seed, h.sim_initial_soc, timeout),
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
                Self::new(Box::new(MonitorOnly(sbs)), &spec, timeout)
            }
            #[cfg(feature = "modbus")]
            Driver::SunspecModbus => {
                let addr = h.modbus_address.parse().map_err(|_| Error::Config {
                    key: "hardware.modbus_address".into(),
                    reason: format!("{:?} is not host:port", h.modbus_address),
                })?;
                let inverter = sunspec::SunSpecBattery::spawn(
                    addr,
                    h.modbus_unit_id,
                    Duration::from_millis(config.agent.tick_interval_ms),
                    timeout,
                );
                Self::new(Box::new(inverter), &spec, timeout)
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

/// The SunSpec Modbus TCP inverter (feature `modbus`) as a [`Battery`].
///
/// grid-hal's SunSpec client is async; the agent's battery interface is not (the safety layer is
/// a blocking shell). A background task owns the client: it polls the inverter every tick,
/// writes the latest setpoint (with the reversion timeout as the inverter's own `RvrtTms`, so
/// the inverter reverts by itself if the agent dies), and reconnects with a delay after errors.
/// [`Battery::read_state`] returns the last reading, or a timeout error when it is stale.
#[cfg(feature = "modbus")]
pub mod sunspec {
    use super::Battery;
    use grid_core::Power;
    use grid_hal::sunspec::{SunSpecClient, SunSpecConfig};
    use grid_hal::{BatteryState, ErrorKind, HalError};
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};
    use tokio::sync::watch;

    type Reading = Option<(Instant, Result<BatteryState, ErrorKind>)>;

    /// See the [module docs](self).
    #[derive(Debug)]
    pub struct SunSpecBattery {
        latest: Arc<Mutex<Reading>>,
        setpoint: watch::Sender<Power>,
        stale_after: Duration,
        task: tokio::task::JoinHandle<()>,
    }

    impl SunSpecBattery {
        /// Spawns the polling task on the current tokio runtime (call from within it).
        pub fn spawn(addr: SocketAddr, unit_id: u8, poll: Duration, revert: Duration) -> Self {
            let latest: Arc<Mutex<Reading>> = Arc::default();
            let (setpoint, mut rx) = watch::channel(Power::ZERO);
            let shared = latest.clone();
            let config = SunSpecConfig {
                unit_id,
                ..SunSpecConfig::default()
            };
            let task = tokio::spawn(async move {
                loop {
                    let mut client = match SunSpecClient::connect(addr, config).await {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::warn!(%addr, error = %e, "SunSpec inverter unreachable");
                            store(&shared, Err(e.kind()));
                            tokio::time::sleep(Duration::from_secs(5)).await;
                            continue;
                        }
                    };
                    loop {
                        let reading = client.read_state().await.map_err(|e| e.kind());
                        let failed = reading.as_ref().is_err_and(|k| k.is_transient());
                        store(&shared, reading);
                        let p = *rx.borrow_and_update();
                        if let Err(e) = client.set_power(p, revert).await {
                            tracing::warn!(error = %e, "SunSpec setpoint write failed");
                            if e.kind().is_transient() {
                                break;
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
            });
            Self {
                latest,
                setpoint,
                stale_after: poll * 5 + Duration::from_secs(3),
                task,
            }
        }
    }

    fn store(shared: &Mutex<Reading>, reading: Result<BatteryState, ErrorKind>) {
        if let Ok(mut g) = shared.lock() {
            *g = Some((Instant::now(), reading));
        }
    }

    impl Drop for SunSpecBattery {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl Battery for SunSpecBattery {
        fn read_state(&mut self) -> Result<BatteryState, ErrorKind> {
            match self.latest.lock().ok().and_then(|g| *g) {
                Some((at, r)) if at.elapsed() <= self.stale_after => r,
                Some(_) | None => Err(ErrorKind::Timeout),
            }
        }

        fn set_power(&mut self, power: Power) -> Result<(), ErrorKind> {
            self.setpoint.send_replace(power);
            Ok(())
        }
    }
}
