//! Shared fixtures for grid-proto's integration tests: the golden example messages.
#![allow(clippy::unwrap_used, dead_code)] // test helpers outside #[test] functions

use grid_core::{DeviceId, ExecutionState, ScheduleId, ScheduleVersion, Timestamp};
use grid_proto::Codec;
use grid_proto::signature::{self, SigningKey};
use grid_proto::v1::*;

/// The secret key of RFC 8032's first Ed25519 test vector.
pub const TEST_SECRET_HEX: &str =
    "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
/// Its public key.
pub const TEST_PUBLIC_HEX: &str =
    "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

pub fn key() -> SigningKey {
    signature::signing_key_from_hex(TEST_SECRET_HEX).unwrap()
}

pub fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

pub fn device() -> DeviceId {
    DeviceId::new("bat-0042").unwrap()
}

pub fn mid(s: &str) -> MessageId {
    MessageId::new(s).unwrap()
}

pub fn sref(id: &str, v: u64) -> ScheduleRef {
    ScheduleRef {
        schedule_id: ScheduleId::new(id).unwrap(),
        version: ScheduleVersion(v),
    }
}

fn env(id: &str, at: &str, body: Body) -> Envelope {
    Envelope::new(mid(id), device(), ts(at), body)
}

pub fn schedule_assign() -> ScheduleAssign {
    ScheduleAssign {
        schedule_id: ScheduleId::new("plan-2026-11-27").unwrap(),
        version: ScheduleVersion(3),
        horizon: WireHorizon {
            start: ts("2026-11-27T12:00:00Z"),
            slot_s: 900,
            slots: 4,
        },
        setpoints_kw: vec![2.5, 2.5, 0.0, -3.25],
        initial_kwh: 6.0,
        expected_kwh: vec![6.59375, 7.1875, 7.1875, 6.33],
        valid_until: ts("2026-11-27T13:00:00Z"),
        reversion_timeout_s: 900,
    }
}

/// Every golden message, by file stem.
pub fn golden() -> Vec<(&'static str, Envelope)> {
    let mut assign = env(
        "01JDQ8Z5K2M3N4P5Q6R7S8T9V0",
        "2026-11-27T11:50:00Z",
        Body::ScheduleAssign(schedule_assign()),
    )
    .with_correlation_id("req-7f3a9c");
    signature::sign(&mut assign, &key()).unwrap();

    let mut set_power = env(
        "01JDQ90000000000000000000A",
        "2026-11-27T12:10:00Z",
        Body::Command(Command {
            valid_until: ts("2026-11-27T12:15:00Z"),
            action: CommandAction::SetPower {
                power_kw: -1.5,
                duration_s: 600,
            },
        }),
    );
    signature::sign(&mut set_power, &key()).unwrap();

    let idle = env(
        "01JDQ90000000000000000000B",
        "2026-11-27T12:11:00Z",
        Body::Command(Command {
            valid_until: ts("2026-11-27T12:16:00Z"),
            action: CommandAction::Idle,
        }),
    );
    let cancel = env(
        "01JDQ90000000000000000000C",
        "2026-11-27T12:12:00Z",
        Body::Command(Command {
            valid_until: ts("2026-11-27T12:17:00Z"),
            action: CommandAction::CancelSchedule {
                schedule_id: ScheduleId::new("plan-2026-11-27").unwrap(),
            },
        }),
    )
    .with_correlation_id("req-cancel-1");

    let accepted = env(
        "u17",
        "2026-11-27T11:50:01.250Z",
        Body::Ack(Ack::for_schedule(
            sref("plan-2026-11-27", 3),
            Some(mid("01JDQ8Z5K2M3N4P5Q6R7S8T9V0")),
            ExecutionState::Accepted,
        )),
    );
    let rejected = env(
        "u18",
        "2026-11-27T12:10:00.500Z",
        Body::Ack(
            Ack::for_message(mid("01JDQ90000000000000000000A"), ExecutionState::Rejected)
                .with_reason(
                    ReasonCode::BadSignature,
                    "sig: the signature does not verify",
                ),
        ),
    );

    let telemetry = env(
        "u19",
        "2026-11-27T12:15:05Z",
        Body::Telemetry(Telemetry {
            samples: vec![
                Sample {
                    at: ts("2026-11-27T12:14:50Z"),
                    soc: 0.488,
                    power_kw: 2.5,
                    voltage_v: 51.2,
                    current_a: 48.8,
                    temperature_c: 21.5,
                    alarms: 0,
                },
                Sample {
                    at: ts("2026-11-27T12:15:00Z"),
                    soc: 0.4884,
                    power_kw: 2.5,
                    voltage_v: 51.25,
                    current_a: 48.75,
                    temperature_c: 21.5,
                    alarms: 32,
                },
            ],
            plan: vec![SlotReport {
                schedule: sref("plan-2026-11-27", 3),
                slot: 0,
                planned_kw: 2.5,
                delivered_kwh: 0.61,
                deviation_kwh: -0.015,
            }],
            dropped_samples: 0,
        }),
    );

    let status = env(
        "u1",
        "2026-11-27T11:00:00Z",
        Body::Status(Status {
            online: true,
            agent_version: "0.1.0".into(),
            firmware_version: Some("sbs-2.4.1".into()),
            active: Some(sref("plan-2026-11-27", 2)),
            capabilities: vec!["signed".into(), "cbor".into(), "plan_report".into()],
            clock_offset_ms: Some(-12),
        }),
    );
    let will = env(
        "u0",
        "2026-11-27T11:00:00Z",
        Body::Status(Status {
            online: false,
            agent_version: "0.1.0".into(),
            firmware_version: None,
            active: None,
            capabilities: vec![],
            clock_offset_ms: None,
        }),
    );

    let hello = env(
        "u2",
        "2026-11-27T11:00:00Z",
        Body::Hello(Hello {
            agent_version: "0.1.0".into(),
            schedules: vec![sref("plan-2026-11-27", 2)],
            last_message_ids: vec![
                mid("01JDQ7000000000000000000AA"),
                mid("01JDQ7000000000000000000AB"),
            ],
            capabilities: vec!["signed".into(), "cbor".into()],
            codec: Codec::Cbor,
        }),
    );

    vec![
        ("schedule_assign", assign),
        ("command_set_power", set_power),
        ("command_idle", idle),
        ("command_cancel_schedule", cancel),
        ("ack_accepted", accepted),
        ("ack_rejected", rejected),
        ("telemetry", telemetry),
        ("status", status),
        ("status_last_will", will),
        ("hello", hello),
    ]
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
