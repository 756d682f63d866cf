//! The agent's `sunspec-modbus` driver end to end, against an in-process Modbus TCP server that
//! emulates a SunSpec storage inverter (simulated hardware): common model 1, inverter model 103,
//! storage model 124 and a grid meter (model 203) in one model chain, with a battery behind the
//! registers that follows the written rates, a house load behind the meter, and the inverter's own
//! reversion timer (`InOutWRte_RvrtTms`). Needs `--features modbus`.
#![cfg(feature = "modbus")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use grid_agent::config::{Config, FallbackMode};
use grid_agent::hardware::Hardware;
use grid_agent::shell::SystemClock;
use grid_core::{Power, Timestamp};
use grid_hal::SafetyEvent;
use grid_hal::sunspec::{meter, storage};
use grid_proto::v1::BodyKind;
use std::future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_modbus::server::tcp::{Server, accept_tcp_connection};
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

const BASE: u16 = 40000;
/// WChaMax of the emulated inverter, W.
const W_CHA_MAX: f64 = 5000.0;
/// The rates' scale factor: 0.01 % steps, so 100 % is 10000.
const RATE_SF: i16 = -2;

/// The emulated inverter's state.
struct Emu {
    regs: Vec<u16>,
    inverter_at: usize,
    storage_at: usize,
    meter_at: usize,
    capacity_kwh: f64,
    energy_kwh: f64,
    /// The battery's power now, kW (positive = charging).
    battery_kw: f64,
    load_kw: f64,
    pv_kw: f64,
    last_write: Instant,
    /// How often the inverter reverted by itself (RvrtTms expired).
    reverts: u32,
    /// Writes refused because a rate was beyond ±100 % of WChaMax.
    rejected_writes: u32,
    /// Every rate pair written (OutWRte, InWRte), raw.
    written: Vec<(i16, i16)>,
    /// The Modbus unit ids answered (with the same registers); others get a gateway exception.
    units: Vec<u8>,
}

impl Emu {
    fn st(&self, offset: usize) -> u16 {
        self.regs[self.storage_at + offset]
    }

    /// The battery power the registers ask for (kW, positive = charging), within the SoC range.
    fn commanded_kw(&self) -> f64 {
        let ctl = self.st(storage::STOR_CTL_MOD);
        let pct = |raw: u16| f64::from(raw as i16) * 10f64.powi(i32::from(RATE_SF));
        let (out_pct, in_pct) = (
            pct(self.st(storage::OUT_W_RTE)),
            pct(self.st(storage::IN_W_RTE)),
        );
        let mut kw = 0.0;
        if ctl & 0b01 != 0 && in_pct > 0.0 {
            kw = in_pct / 100.0 * W_CHA_MAX / 1000.0;
        } else if ctl & 0b10 != 0 && out_pct > 0.0 {
            kw = -out_pct / 100.0 * W_CHA_MAX / 1000.0;
        }
        if (kw > 0.0 && self.energy_kwh >= self.capacity_kwh)
            || (kw < 0.0 && self.energy_kwh <= 0.0)
        {
            kw = 0.0;
        }
        kw
    }

    /// Advances the emulation by `dt`: the reversion timer, the battery, the measurements.
    fn step(&mut self, dt: Duration) {
        let ctl = self.storage_at + storage::STOR_CTL_MOD;
        let rvrt = u64::from(self.st(storage::RVRT_TMS));
        if self.regs[ctl] != 0 && rvrt > 0 && self.last_write.elapsed() > Duration::from_secs(rvrt)
        {
            // The inverter's own fallback: control released, rates back to 0.
            self.regs[ctl] = 0;
            self.regs[self.storage_at + storage::OUT_W_RTE] = 0;
            self.regs[self.storage_at + storage::IN_W_RTE] = 0;
            self.reverts += 1;
        }
        self.battery_kw = self.commanded_kw();
        self.energy_kwh = (self.energy_kwh + self.battery_kw * dt.as_secs_f64() / 3600.0)
            .clamp(0.0, self.capacity_kwh);
        let soc_raw = (self.energy_kwh / self.capacity_kwh * 10_000.0).round() as u16;
        self.regs[self.storage_at + storage::CHA_STATE] = soc_raw;
        // AC power: delivered to the house/grid positive, i.e. the battery discharging.
        self.regs[self.inverter_at + 12] = ((-self.battery_kw * 1000.0).round() as i16) as u16;
        // The grid meter: import positive, W_SF 0.
        let import_w = (self.load_kw - self.pv_kw + self.battery_kw) * 1000.0;
        self.regs[self.meter_at + meter::W] = (import_w.round() as i16) as u16;
    }

    fn write(&mut self, addr: u16, words: &[u16]) -> Result<(), ExceptionCode> {
        let start = usize::from(
            addr.checked_sub(BASE)
                .ok_or(ExceptionCode::IllegalDataAddress)?,
        );
        let end = start + words.len();
        if end > self.regs.len() {
            return Err(ExceptionCode::IllegalDataAddress);
        }
        let rates = [
            self.storage_at + storage::OUT_W_RTE,
            self.storage_at + storage::IN_W_RTE,
        ];
        let max = 100.0 / 10f64.powi(i32::from(RATE_SF));
        for (i, w) in words.iter().enumerate() {
            if rates.contains(&(start + i)) && f64::from(*w as i16).abs() > max {
                self.rejected_writes += 1;
                return Err(ExceptionCode::IllegalDataValue);
            }
        }
        self.regs[start..end].copy_from_slice(words);
        if start < self.storage_at + storage::LENGTH && end > self.storage_at {
            self.last_write = Instant::now();
        }
        if (start..end).contains(&(self.storage_at + storage::OUT_W_RTE)) {
            self.written.push((
                self.st(storage::OUT_W_RTE) as i16,
                self.st(storage::IN_W_RTE) as i16,
            ));
        }
        Ok(())
    }
}

/// A handle on the emulated inverter.
#[derive(Clone)]
struct Inverter(Arc<Mutex<Emu>>);

impl Inverter {
    fn with<T>(&self, f: impl FnOnce(&mut Emu) -> T) -> T {
        f(&mut self.0.lock().unwrap())
    }

    /// (OutWRte, InWRte, RvrtTms, StorCtl_Mod), the rates raw (0.01 %).
    fn rates(&self) -> (i16, i16, u16, u16) {
        self.with(|e| {
            (
                e.st(storage::OUT_W_RTE) as i16,
                e.st(storage::IN_W_RTE) as i16,
                e.st(storage::RVRT_TMS),
                e.st(storage::STOR_CTL_MOD),
            )
        })
    }
}

impl tokio_modbus::server::Service for Inverter {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: SlaveRequest<'static>) -> Self::Future {
        let res = self.with(|e| match req.request {
            _ if !e.units.contains(&req.slave) => Err(ExceptionCode::GatewayTargetDevice),
            Request::ReadHoldingRegisters(addr, n) => {
                let start = usize::from(addr.wrapping_sub(BASE));
                let end = start + usize::from(n);
                if addr < BASE || end > e.regs.len() {
                    Err(ExceptionCode::IllegalDataAddress)
                } else {
                    Ok(Response::ReadHoldingRegisters(e.regs[start..end].to_vec()))
                }
            }
            Request::WriteMultipleRegisters(addr, words) => e
                .write(addr, &words)
                .map(|()| Response::WriteMultipleRegisters(addr, words.len() as u16)),
            Request::WriteSingleRegister(addr, word) => e
                .write(addr, &[word])
                .map(|()| Response::WriteSingleRegister(addr, word)),
            _ => Err(ExceptionCode::IllegalFunction),
        });
        future::ready(res)
    }
}

fn string(dst: &mut [u16], s: &str) {
    for (i, pair) in s.as_bytes().chunks(2).enumerate() {
        dst[i] = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
    }
}

/// Starts the emulator on an ephemeral port: a `capacity_kwh` battery at `soc` (fraction).
async fn start_inverter(capacity_kwh: f64, soc: f64) -> (SocketAddr, Inverter) {
    let mut m = vec![0x5375, 0x6E53];
    let mut common = vec![0u16; 66];
    string(&mut common[0..16], "grid-emulator");
    string(&mut common[16..32], "Hybrid 5k");
    string(&mut common[48..64], "EMU-1");
    common[64] = 1;
    m.extend([1, 66]);
    m.extend(common);

    let mut inv = vec![0u16; 50];
    inv[27] = 0xFFFF; // DCV not implemented
    inv[31] = 281; // TmpCab 28.1 °C
    inv[35] = (-1i16) as u16;
    inv[36] = 4; // running
    m.extend([103, 50]);
    let inverter_at = m.len();
    m.extend(inv);

    let mut st = vec![0u16; storage::LENGTH];
    st[storage::W_CHA_MAX] = W_CHA_MAX as u16;
    st[storage::CHA_STATE_SF] = (-2i16) as u16;
    st[storage::IN_BAT_V] = 512;
    st[storage::IN_BAT_V_SF] = (-1i16) as u16;
    st[storage::CHA_ST] = 6; // holding
    st[storage::IN_OUT_W_RTE_SF] = RATE_SF as u16;
    m.extend([124, storage::LENGTH as u16]);
    let storage_at = m.len();
    m.extend(st);

    let mut mt = vec![0u16; meter::LENGTH];
    mt[meter::W_SF] = 0;
    m.extend([203, meter::LENGTH as u16]);
    let meter_at = m.len();
    m.extend(mt);
    m.extend([0xFFFF, 0]);

    let emu = Inverter(Arc::new(Mutex::new(Emu {
        regs: m,
        inverter_at,
        storage_at,
        meter_at,
        capacity_kwh,
        energy_kwh: capacity_kwh * soc,
        battery_kw: 0.0,
        load_kw: 0.0,
        pv_kw: 0.0,
        last_write: Instant::now(),
        reverts: 0,
        rejected_writes: 0,
        written: Vec::new(),
        units: vec![1],
    })));
    emu.with(|e| e.step(Duration::ZERO));
    let physics = emu.clone();
    tokio::spawn(async move {
        let mut last = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let dt = last.elapsed();
            last = Instant::now();
            physics.with(|e| e.step(dt));
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = emu.clone();
    tokio::spawn(async move {
        let server = Server::new(listener);
        let on_connected = move |stream, socket_addr| {
            let service = service.clone();
            async move { accept_tcp_connection(stream, socket_addr, move |_| Ok(Some(service.clone()))) }
        };
        let _ = server.serve(&on_connected, |_err| {}).await;
    });
    (addr, emu)
}

/// A configuration for the emulator at `addr`, with `extra` TOML lines appended to the sections.
fn config(addr: SocketAddr, battery: &str, meter: &str, agent: &str) -> Config {
    let text = format!(
        "device_id = \"bat-emu\"\n\
         [hardware]\ndriver = \"sunspec-modbus\"\nmodbus_address = \"{addr}\"\nmodbus_unit_id = 1\n\
         [battery]\n{battery}\n[meter]\n{meter}\n\
         [agent]\ntick_interval_ms = 100\nreversion_timeout_s = 2\n{agent}\n"
    );
    Config::load(Some(&text), std::iter::empty::<(String, String)>()).unwrap()
}

async fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn kw(p: f64) -> Power {
    Power::from_kw(p).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_hardware_drives_a_sunspec_inverter_within_limits() {
    let (addr, inverter) = start_inverter(13.5, 0.6543).await;
    inverter.with(|e| e.load_kw = 1.2);
    // The battery spec allows 8 kW, more than the inverter's 5 kW WChaMax: two clamps to see.
    let c = config(
        addr,
        "max_charge_kw = 8.0\nmax_discharge_kw = 8.0",
        "source = \"sunspec\"",
        "",
    );
    let mut hw = Hardware::from_config(&c).unwrap();
    assert!(hw.has_meter());
    let now = || Timestamp::now();

    // Reads SoC and power through the poller and the safety layer.
    let start = Instant::now();
    let state = loop {
        let r = hw.tick(now());
        if let Some(s) = r.state {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no reading: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!((state.soc.fraction() - 0.6543).abs() < 1e-3, "{state:?}");
    assert_eq!(state.power.kw(), 0.0);
    assert!((state.voltage_v - 51.2).abs() < 1e-9);
    assert!((state.temperature.celsius() - 28.1).abs() < 1e-9);

    // A setpoint within the limits: 3 kW = 60.00 % of WChaMax, with RvrtTms = the agent's 2 s.
    let r = hw.command(now(), kw(3.0));
    assert_eq!(r.applied, kw(3.0));
    wait_until("60 % charge written", Duration::from_secs(3), || {
        inverter.rates() == (-6000, 6000, 2, 3)
    })
    .await;
    wait_until("3 kW read back", Duration::from_secs(3), || {
        hw.tick(now())
            .state
            .is_some_and(|s| (s.power.kw() - 3.0).abs() < 1e-9)
    })
    .await;
    // The grid meter of the chain: 1.2 kW load + 3 kW charging = 4.2 kW import.
    wait_until("meter reading", Duration::from_secs(3), || {
        let r = hw.tick(now());
        hw.read_meter(now(), &r)
            .is_some_and(|m| m.is_ok_and(|p| (p.kw() - 4.2).abs() < 1e-9))
    })
    .await;

    // Beyond the spec: the safety layer clamps 9 kW to 8 kW, the driver clamps 8 kW to the
    // inverter's 5 kW (100 %); nothing out of range reaches the registers.
    let r = hw.command(now(), kw(9.0));
    assert_eq!(r.applied, kw(8.0));
    assert!(
        r.events
            .iter()
            .any(|e| matches!(e, SafetyEvent::Limited { .. })),
        "{r:?}"
    );
    wait_until("100 % charge", Duration::from_secs(3), || {
        inverter.rates() == (-10000, 10000, 2, 3)
    })
    .await;
    let r = hw.command(now(), kw(-12.0));
    assert_eq!(r.applied, kw(-8.0));
    wait_until("100 % discharge", Duration::from_secs(3), || {
        inverter.rates() == (10000, -10000, 2, 3)
    })
    .await;
    let r = hw.command(now(), kw(-1.25));
    assert_eq!(r.applied, kw(-1.25));
    wait_until("25 % discharge", Duration::from_secs(3), || {
        inverter.rates() == (2500, -2500, 2, 3)
    })
    .await;
    inverter.with(|e| {
        assert_eq!(e.rejected_writes, 0);
        assert!(
            e.written
                .iter()
                .all(|(o, i)| o.abs() <= 10000 && i.abs() <= 10000),
            "{:?}",
            e.written
        );
    });

    // Alive: the setpoint is rewritten every poll, so the inverter's 2 s timer never expires.
    let alive = Instant::now();
    while alive.elapsed() < Duration::from_secs(3) {
        hw.command(now(), kw(-1.25)); // the engine re-sends well within the timeout
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(inverter.with(|e| e.reverts), 0);
    assert_eq!(inverter.rates(), (2500, -2500, 2, 3));

    // Without new setpoints the agent's own watchdog (2 s) goes idle and writes it.
    let quiet = Instant::now();
    wait_until("watchdog idle written", Duration::from_secs(5), || {
        hw.tick(now());
        inverter.rates().0 == 0 && inverter.rates().1 == 0
    })
    .await;
    assert!(quiet.elapsed() >= Duration::from_millis(1500));

    // The agent dies with a setpoint in force: the inverter reverts by itself after RvrtTms.
    hw.command(now(), kw(2.0));
    wait_until("2 kW written", Duration::from_secs(3), || {
        inverter.rates() == (-4000, 4000, 2, 3)
    })
    .await;
    drop(hw);
    let died = Instant::now();
    wait_until(
        "the inverter's own reversion",
        Duration::from_secs(5),
        || inverter.with(|e| e.reverts) == 1,
    )
    .await;
    let after = died.elapsed();
    assert!(after <= Duration::from_millis(3200), "{after:?}");
    assert_eq!(inverter.rates(), (0, 0, 2, 0));
    assert_eq!(inverter.with(|e| e.battery_kw), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meter_that_reports_export_positive_is_turned_round() {
    let (addr, inverter) = start_inverter(10.0, 0.5).await;
    inverter.with(|e| {
        e.load_kw = 0.5;
        e.pv_kw = 2.0;
    });
    let c = config(
        addr,
        "",
        "source = \"sunspec\"\nsunspec_export_positive = true",
        "",
    );
    let mut hw = Hardware::from_config(&c).unwrap();
    // The emulated meter says -1.5 kW (export, import positive); read as export positive that
    // is an import of 1.5 kW.
    wait_until("meter reading", Duration::from_secs(5), || {
        let r = hw.tick(Timestamp::now());
        hw.read_meter(Timestamp::now(), &r)
            .is_some_and(|m| m.is_ok_and(|p| (p.kw() - 1.5).abs() < 1e-9))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meter_at_its_own_unit_id_is_read_there_and_nowhere_else() {
    let (addr, inverter) = start_inverter(10.0, 0.5).await;
    inverter.with(|e| {
        e.load_kw = 2.5;
        e.units.push(240);
    });
    let meter_kw = |unit: u8| {
        let c = config(
            addr,
            "",
            &format!("source = \"sunspec\"\nsunspec_unit_id = {unit}"),
            "",
        );
        Hardware::from_config(&c).unwrap()
    };
    // Unit 240 answers: its meter is read (2.5 kW import).
    let mut hw = meter_kw(240);
    wait_until("meter reading at unit 240", Duration::from_secs(5), || {
        let r = hw.tick(Timestamp::now());
        hw.read_meter(Timestamp::now(), &r)
            .is_some_and(|m| m.is_ok_and(|p| (p.kw() - 2.5).abs() < 1e-9))
    })
    .await;
    drop(hw);
    // Nobody answers at unit 7: no meter reading (the inverter's own meter model is not used in
    // its place), while the battery is read as usual.
    let mut hw = meter_kw(7);
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut battery_read = false;
    while Instant::now() < deadline {
        let r = hw.tick(Timestamp::now());
        battery_read |= r.state.is_some();
        let m = hw.read_meter(Timestamp::now(), &r);
        assert!(m.is_some_and(|m| m.is_err()), "{m:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(battery_read, "the inverter was read at its own unit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_consumption_through_a_sunspec_inverter_and_its_meter() {
    let (addr, inverter) = start_inverter(10.0, 0.5).await;
    inverter.with(|e| e.load_kw = 1.5);
    let c = config(
        addr,
        "capacity_kwh = 10.0\nmin_energy_kwh = 1.0\nmax_energy_kwh = 9.0",
        "source = \"sunspec\"",
        "fallback = \"self-consumption\"",
    );
    let broker = broker(BrokerKind::Embedded);
    let device = device_id("sunspec");
    let mut server = TestServer::connect(broker, &device).await;
    let mut setup = AgentSetup::new(device.clone(), broker, Arc::new(SystemClock));
    setup.fallback = FallbackMode::SelfConsumption;
    setup.reversion_timeout = Duration::from_secs(2);
    setup.meter_max_age = Duration::from_secs(3);
    setup.hardware = Some(Hardware::from_config(&c).unwrap());
    let agent = setup.start().await;
    server
        .next_of(BodyKind::Hello, Duration::from_secs(10))
        .await
        .expect("hello");

    // No schedule, a 1.5 kW house: the battery discharges 1.5 kW, the meter reads ~0.
    let meter_w = |inv: &Inverter| inv.with(|e| e.regs[e.meter_at + meter::W] as i16);
    wait_until(
        "grid import driven to zero",
        Duration::from_secs(10),
        || inverter.with(|e| (e.battery_kw + 1.5).abs() < 0.01) && meter_w(&inverter).abs() <= 10,
    )
    .await;
    // Midday: 0.5 kW load, 2.5 kW PV: the 2 kW surplus charges the battery, nothing exported.
    inverter.with(|e| {
        e.load_kw = 0.5;
        e.pv_kw = 2.5;
    });
    wait_until("surplus stored", Duration::from_secs(10), || {
        inverter.with(|e| (e.battery_kw - 2.0).abs() < 0.01) && meter_w(&inverter).abs() <= 10
    })
    .await;
    // The agent's own view (its metrics lag the inverter by a tick).
    wait_until(
        "the agent sees the meter at zero",
        Duration::from_secs(5),
        || {
            let m = agent.metrics().engine;
            m.grid_import_kw.is_some_and(|g| g.abs() < 0.05)
        },
    )
    .await;
    let m = agent.metrics();
    assert!(m.engine.fallback_active && !m.engine.meter_missing, "{m:?}");
    assert!((m.engine.setpoint_kw - 2.0).abs() < 0.05, "{m:?}");
    // The inverter never had to revert: the agent kept writing within RvrtTms.
    assert_eq!(inverter.with(|e| e.reverts), 0);
    agent.stop().await;
}
