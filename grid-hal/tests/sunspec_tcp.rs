//! The SunSpec client against a real Modbus TCP server (tokio-modbus) on 127.0.0.1 holding a
//! SunSpec register map: common model 1, inverter model 103, storage model 124.
#![cfg(feature = "modbus")]
// Helpers outside #[test] fns: a poisoned lock or a failed bind is a test failure.
#![allow(clippy::unwrap_used)]

use core::time::Duration;
use grid_core::{Alarms, Power};
use grid_hal::sunspec::{Error, SunSpecClient, SunSpecConfig, storage};
use grid_hal::{ErrorKind, HalError, SafetyConfig, SafetyGuard};
use std::future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio_modbus::server::tcp::{Server, accept_tcp_connection};
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

const BASE: u16 = 40000;

/// A register map: holding registers `BASE..BASE + len`, shared with the test.
#[derive(Clone)]
struct Map(Arc<Mutex<Vec<u16>>>);

impl Map {
    fn get(&self, addr: u16) -> u16 {
        self.0.lock().unwrap()[usize::from(addr - BASE)]
    }
    fn range(&self, addr: u16, n: u16) -> Option<std::ops::Range<usize>> {
        let len = self.0.lock().unwrap().len();
        let start = usize::from(addr.checked_sub(BASE)?);
        (start + usize::from(n) <= len).then_some(start..start + usize::from(n))
    }
}

impl tokio_modbus::server::Service for Map {
    type Request = Request<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Request<'static>) -> Self::Future {
        let res = match req {
            Request::ReadHoldingRegisters(addr, n) => match self.range(addr, n) {
                Some(r) => Ok(Response::ReadHoldingRegisters(
                    self.0.lock().unwrap()[r].to_vec(),
                )),
                None => Err(ExceptionCode::IllegalDataAddress),
            },
            Request::WriteMultipleRegisters(addr, words) => {
                match self.range(addr, words.len() as u16) {
                    Some(r) => {
                        self.0.lock().unwrap()[r].copy_from_slice(&words);
                        Ok(Response::WriteMultipleRegisters(addr, words.len() as u16))
                    }
                    None => Err(ExceptionCode::IllegalDataAddress),
                }
            }
            _ => Err(ExceptionCode::IllegalFunction),
        };
        future::ready(res)
    }
}

fn string(dst: &mut [u16], s: &str) {
    for (i, pair) in s.as_bytes().chunks(2).enumerate() {
        dst[i] = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
    }
}

/// SunS, model 1 (L = 66), model 103 (L = 50), model 124 (L = 24), end.
fn sunspec_map() -> (Vec<u16>, u16, u16) {
    let mut m = vec![0x5375, 0x6E53];
    let mut common = vec![0u16; 66];
    string(&mut common[0..16], "grid-test");
    string(&mut common[16..32], "SimStorage 5k");
    string(&mut common[40..48], "1.2.3");
    string(&mut common[48..64], "SN-0001");
    common[64] = 1;
    m.extend([1, 66]);
    m.extend(common);

    let mut inv = vec![0u16; 50];
    inv[12] = (-1500i16) as u16; // W: importing 1.5 kW = charging
    inv[13] = 0; // W_SF
    inv[27] = 0xFFFF; // DCV not implemented
    inv[28] = 0;
    inv[31] = 253; // TmpCab 25.3 °C
    inv[35] = (-1i16) as u16; // Tmp_SF
    inv[36] = 4; // MPPT / running
    m.extend([103, 50]);
    let inverter_at = BASE + m.len() as u16;
    m.extend(inv);

    let mut st = vec![0u16; 24];
    st[storage::W_CHA_MAX] = 5000;
    st[storage::W_CHA_MAX_SF] = 0;
    st[storage::CHA_STATE] = 6543;
    st[storage::CHA_STATE_SF] = (-2i16) as u16;
    st[storage::IN_BAT_V] = 512;
    st[storage::IN_BAT_V_SF] = (-1i16) as u16;
    st[storage::CHA_ST] = 4; // charging
    st[storage::IN_OUT_W_RTE_SF] = (-2i16) as u16;
    m.extend([124, 24]);
    let storage_at = BASE + m.len() as u16;
    m.extend(st);
    m.extend([0xFFFF, 0]);
    (m, inverter_at, storage_at)
}

/// Several units behind one address (a gateway, or an inverter that serves its meter at a unit
/// of its own): each request goes to the map of its unit id.
#[derive(Clone)]
struct Units(Vec<(u8, Map)>);

impl tokio_modbus::server::Service for Units {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: SlaveRequest<'static>) -> Self::Future {
        match self.0.iter().find(|(unit, _)| *unit == req.slave) {
            Some((_, map)) => tokio_modbus::server::Service::call(map, req.request),
            None => future::ready(Err(ExceptionCode::GatewayTargetDevice)),
        }
    }
}

async fn serve(regs: Vec<u16>) -> (SocketAddr, Map) {
    let (addr, mut maps) = serve_units(vec![(1, regs)]).await;
    (addr, maps.remove(0))
}

async fn serve_units(units: Vec<(u8, Vec<u16>)>) -> (SocketAddr, Vec<Map>) {
    let units = Units(
        units
            .into_iter()
            .map(|(unit, regs)| (unit, Map(Arc::new(Mutex::new(regs)))))
            .collect(),
    );
    let maps = units.0.iter().map(|(_, m)| m.clone()).collect();
    let service = units;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let server = Server::new(listener);
        let on_connected = move |stream, socket_addr| {
            let service = service.clone();
            async move { accept_tcp_connection(stream, socket_addr, move |_| Ok(Some(service.clone()))) }
        };
        let _ = server.serve(&on_connected, |_err| {}).await;
    });
    (addr, maps)
}

/// A grid meter's own chain: SunS, model 1, float meter model 213 (L = 124) with W = `w`, end.
fn float_meter_map(w: f32) -> (Vec<u16>, u16) {
    let mut m = vec![0x5375, 0x6E53, 1, 66];
    m.extend(vec![0u16; 66]);
    m.extend([213, 124]);
    let meter_at = BASE + m.len() as u16;
    let mut meter = vec![0u16; 124];
    let bits = w.to_bits();
    (meter[26], meter[27]) = ((bits >> 16) as u16, bits as u16);
    m.extend(meter);
    m.extend([0xFFFF, 0]);
    (m, meter_at)
}

fn config() -> SunSpecConfig {
    SunSpecConfig {
        unit_id: 1,
        timeout: Duration::from_secs(2),
    }
}

#[tokio::test]
async fn discovers_models_and_reads_the_state() {
    let (regs, _, _) = sunspec_map();
    let (addr, _map) = serve(regs).await;
    let mut c = SunSpecClient::connect(addr, config()).await.unwrap();
    assert_eq!(c.base_address(), 40000);
    assert_eq!(
        c.models().iter().map(|m| m.id).collect::<Vec<_>>(),
        [1, 103, 124]
    );
    let common = c.common();
    assert_eq!(common.manufacturer, "grid-test");
    assert_eq!(common.model, "SimStorage 5k");
    assert_eq!(common.version, "1.2.3");
    assert_eq!(common.serial_number, "SN-0001");

    let s = c.read_storage().await.unwrap();
    assert_eq!(s.w_cha_max, Some(5000.0));
    assert!((s.charge_state_pct.unwrap() - 65.43).abs() < 1e-9);

    let state = c.read_state().await.unwrap();
    assert!((state.soc.percent() - 65.43).abs() < 1e-9);
    assert!((state.voltage_v - 51.2).abs() < 1e-9);
    assert!(
        (state.power.kw() - 1.5).abs() < 1e-12,
        "AC import is battery charging"
    );
    assert!((state.current_a - 1500.0 / 51.2).abs() < 1e-9);
    assert!((state.temperature.celsius() - 25.3).abs() < 1e-9);
    assert_eq!(state.alarms, Alarms::NONE);
    // No meter model in this chain.
    assert_eq!(c.read_meter().await.unwrap(), None);
}

#[tokio::test]
async fn writes_setpoints_with_the_reversion_timeout() {
    let (regs, _, st) = sunspec_map();
    let (addr, map) = serve(regs).await;
    let mut c = SunSpecClient::connect(addr, config()).await.unwrap();
    let rates = |map: &Map| {
        (
            map.get(st + storage::OUT_W_RTE as u16) as i16,
            map.get(st + storage::IN_W_RTE as u16) as i16,
            map.get(st + storage::RVRT_TMS as u16),
            map.get(st + storage::STOR_CTL_MOD as u16),
        )
    };

    c.set_power(Power::from_kw(3.0).unwrap(), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        rates(&map),
        (-6000, 6000, 60, 3),
        "charge 3 kW = 60.00 % of 5 kW"
    );
    c.set_power(Power::from_kw(-1.25).unwrap(), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(rates(&map), (2500, -2500, 30, 3));
    c.idle(Duration::from_secs(30)).await.unwrap();
    assert_eq!(rates(&map), (0, 0, 30, 3));

    let err = c
        .set_power(Power::from_kw(6.0).unwrap(), Duration::from_secs(30))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert_eq!(
        rates(&map),
        (0, 0, 30, 3),
        "a rejected setpoint writes nothing"
    );

    // The clamping variant writes WChaMax instead of refusing.
    let written = c
        .set_power_clamped(Power::from_kw(-6.0).unwrap(), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(written, Power::from_kw(-5.0).unwrap());
    assert_eq!(rates(&map), (10000, -10000, 30, 3));

    c.release_control().await.unwrap();
    assert_eq!(rates(&map).3, 0);
}

#[tokio::test]
async fn the_safety_guard_drives_the_inverter() {
    let (regs, _, st) = sunspec_map();
    let (addr, map) = serve(regs).await;
    let mut c = SunSpecClient::connect(addr, config()).await.unwrap();
    let spec = grid_core::BatterySpec::new(grid_core::BatteryParams::with_soc_window(
        10.0, 0.1, 0.9, 5.0,
    ))
    .unwrap();
    let mut guard = SafetyGuard::new(
        &spec,
        SafetyConfig {
            ramp_kw_per_s: None,
            ..SafetyConfig::for_spec(&spec)
        },
    )
    .unwrap();
    guard.request(Duration::from_secs(1), Power::from_kw(4.0).unwrap());
    let reading = c.read_state().await;
    let d = guard.decide(
        Duration::from_secs(1),
        reading.as_ref().map_err(|e| e.kind()),
    );
    assert_eq!(d.power.kw(), 4.0);
    c.set_power(d.power, Duration::from_secs(30)).await.unwrap();
    assert_eq!(map.get(st + storage::IN_W_RTE as u16) as i16, 8000);
    // The watchdog: nothing new for 61 s, so idle goes to the inverter.
    let reading = c.read_state().await;
    let d = guard.decide(
        Duration::from_secs(62),
        reading.as_ref().map_err(|e| e.kind()),
    );
    c.set_power(d.power, Duration::from_secs(30)).await.unwrap();
    assert_eq!(map.get(st + storage::IN_W_RTE as u16), 0);
}

#[tokio::test]
async fn a_device_without_sunspec_is_refused() {
    let (addr, _map) = serve(vec![0; 200]).await;
    let err = SunSpecClient::connect(addr, config()).await.unwrap_err();
    assert!(matches!(err, Error::NotSunSpec), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::Unsupported);

    let (mut regs, _, _) = sunspec_map();
    let n = regs.len();
    regs[n - 28] = 0xFFFF; // the chain ends before model 124
    let (addr, _map) = serve(regs).await;
    let err = SunSpecClient::connect(addr, config()).await.unwrap_err();
    assert!(matches!(err, Error::MissingModel(124)), "{err:?}");
}

#[tokio::test]
async fn a_silent_device_times_out() {
    // Accepts TCP connections and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let cfg = SunSpecConfig {
        timeout: Duration::from_millis(200),
        ..config()
    };
    let err = SunSpecClient::connect(addr, cfg).await.unwrap_err();
    assert!(matches!(err, Error::Timeout), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::Timeout);
}

#[tokio::test]
async fn reads_a_float_meter_served_at_another_unit() {
    let (inverter, _, _) = sunspec_map();
    let (meter, meter_at) = float_meter_map(-2345.5);
    let (addr, maps) = serve_units(vec![(1, inverter.clone()), (2, inverter), (240, meter)]).await;
    let mut c = SunSpecClient::connect(addr, config()).await.unwrap();
    assert_eq!(c.read_meter().await.unwrap(), None);

    // A unit nobody answers for, and a unit whose chain has no meter, are refused, and the
    // client keeps reading the inverter (and no meter).
    assert!(matches!(c.use_meter_at(7).await, Err(Error::NotSunSpec)));
    assert!(matches!(
        c.use_meter_at(2).await,
        Err(Error::MissingModel(203))
    ));
    assert_eq!(c.read_meter().await.unwrap(), None);
    assert!((c.read_state().await.unwrap().soc.percent() - 65.43).abs() < 1e-9);

    c.use_meter_at(240).await.unwrap();
    assert_eq!(
        c.meter_model().map(|(unit, m)| (unit, m.id)),
        Some((240, 213))
    );
    assert_eq!(c.read_meter().await.unwrap().unwrap().w, Some(-2345.5));
    // Every other read still goes to the inverter's unit.
    let state = c.read_state().await.unwrap();
    assert!((state.soc.percent() - 65.43).abs() < 1e-9);
    assert!((state.power.kw() - 1.5).abs() < 1e-12);
    // Live values, and NaN (not implemented) reads as no value.
    let w = usize::from(meter_at - BASE) + 26;
    let set = |v: f32| {
        let bits = v.to_bits();
        let mut regs = maps[2].0.lock().unwrap();
        (regs[w], regs[w + 1]) = ((bits >> 16) as u16, bits as u16);
    };
    set(812.25);
    assert_eq!(c.read_meter().await.unwrap().unwrap().w, Some(812.25));
    set(f32::NAN);
    assert_eq!(c.read_meter().await.unwrap().unwrap().w, None);
}
