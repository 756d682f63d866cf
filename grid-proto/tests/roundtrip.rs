//! Property tests: both codecs round-trip arbitrary valid messages exactly, in any field order,
//! and the decoders return a typed error (never panic) on arbitrary and mutated bytes.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use grid_core::{DeviceId, ExecutionState, ScheduleId, ScheduleVersion, Timestamp};
use grid_proto::v1::*;
use grid_proto::{Codec, signature};
use proptest::prelude::*;

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_][A-Za-z0-9._-]{0,63}"
}

fn instant() -> impl Strategy<Value = Timestamp> {
    // 2000 ..= 2100, with nanoseconds.
    (946_684_800i64..4_102_444_800, 0i32..1_000_000_000)
        .prop_map(|(s, ns)| Timestamp::new(s, ns).unwrap())
}

fn finite() -> impl Strategy<Value = f64> {
    prop_oneof![
        -1.0e6..1.0e6f64,
        any::<f64>().prop_filter("bounded", |x| x.is_finite() && x.abs() <= 1.0e6),
        Just(0.0),
        Just(-0.0),
        Just(f64::MIN_POSITIVE),
    ]
}

fn sref() -> impl Strategy<Value = ScheduleRef> {
    (token(), 1u64..(1 << 53)).prop_map(|(id, v)| ScheduleRef {
        schedule_id: ScheduleId::new(id).unwrap(),
        version: ScheduleVersion(v),
    })
}

fn text(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[^\\p{{Cc}}]{{0,{max}}}"))
        .unwrap()
        .prop_filter("byte length", move |s| s.len() <= max)
}

const SLOTS: [u32; 6] = [60, 300, 900, 1800, 3600, 86_400];

/// A schedule and a `sent_at` before its validity ends.
fn assign() -> impl Strategy<Value = (ScheduleAssign, Timestamp)> {
    (
        sref(),
        prop::sample::select(&SLOTS[..]),
        1u32..60,
        0i64..100_000,
        1u32..=604_800,
    )
        .prop_flat_map(|(r, slot_s, slots, start_slot, rev)| {
            let start = Timestamp::from_second(
                1_780_000_000 / 86_400 * 86_400 + start_slot * i64::from(slot_s),
            )
            .unwrap();
            let len = i64::from(slot_s) * i64::from(slots);
            (
                Just((r, slot_s, slots, start, rev)),
                prop::collection::vec(finite(), slots as usize),
                finite(),
                prop::collection::vec(finite(), slots as usize),
                1..=len,
                0..len,
            )
        })
        .prop_map(
            |((r, slot_s, slots, start, rev), setpoints, initial, expected, valid, sent)| {
                let valid_until = Timestamp::from_second(start.as_second() + valid).unwrap();
                let sent_at =
                    Timestamp::from_second(start.as_second() + sent.min(valid - 1) - 3600).unwrap();
                (
                    ScheduleAssign {
                        schedule_id: r.schedule_id,
                        version: r.version,
                        horizon: WireHorizon {
                            start,
                            slot_s,
                            slots,
                        },
                        setpoints_kw: setpoints,
                        initial_kwh: initial,
                        expected_kwh: expected,
                        valid_until,
                        reversion_timeout_s: rev,
                    },
                    sent_at,
                )
            },
        )
}

fn command_action() -> impl Strategy<Value = CommandAction> {
    prop_oneof![
        (finite(), 1u32..=86_400).prop_map(|(power_kw, duration_s)| CommandAction::SetPower {
            power_kw,
            duration_s
        }),
        Just(CommandAction::Idle),
        token().prop_map(|id| CommandAction::CancelSchedule {
            schedule_id: ScheduleId::new(id).unwrap()
        }),
    ]
}

fn ack() -> impl Strategy<Value = Ack> {
    let states = prop::sample::select(
        ExecutionState::ALL
            .into_iter()
            .filter(|s| !matches!(s, ExecutionState::Queued | ExecutionState::Delivered))
            .collect::<Vec<_>>(),
    );
    let reasons = prop::sample::select(vec![
        ReasonCode::InvalidSchedule,
        ReasonCode::Expired,
        ReasonCode::Superseded,
        ReasonCode::BadSignature,
        ReasonCode::WrongDevice,
        ReasonCode::Malformed,
        ReasonCode::UnsupportedVersion,
        ReasonCode::TooLarge,
        ReasonCode::SafetyLimit,
        ReasonCode::Cancelled,
        ReasonCode::Capacity,
        ReasonCode::Internal,
    ]);
    (
        prop::option::of(token()),
        prop::option::of(sref()),
        states,
        reasons,
        prop::option::of(text(256)),
    )
        .prop_filter("refers to something", |(m, s, ..)| {
            m.is_some() || s.is_some()
        })
        .prop_map(|(m, s, state, reason, detail)| Ack {
            ref_id: m.map(|m| MessageId::new(m).unwrap()),
            schedule: s,
            state,
            reason: Some(reason),
            detail: detail.filter(|d| !d.is_empty()),
        })
}

fn sample() -> impl Strategy<Value = Sample> {
    (
        instant(),
        0.0..=1.0f64,
        finite(),
        finite(),
        finite(),
        -273.15..200.0f64,
        any::<u32>(),
    )
        .prop_map(
            |(at, soc, power_kw, voltage_v, current_a, temperature_c, alarms)| Sample {
                at,
                soc,
                power_kw,
                voltage_v,
                current_a,
                temperature_c,
                alarms,
            },
        )
}

fn telemetry() -> impl Strategy<Value = Telemetry> {
    (
        prop::collection::vec(sample(), 0..40),
        prop::collection::vec(
            (sref(), 0u32..2880, finite(), finite(), finite()).prop_map(
                |(schedule, slot, planned_kw, delivered_kwh, deviation_kwh)| SlotReport {
                    schedule,
                    slot,
                    planned_kw,
                    delivered_kwh,
                    deviation_kwh,
                },
            ),
            0..10,
        ),
        any::<u64>(),
    )
        .prop_map(|(samples, plan, dropped_samples)| Telemetry {
            samples,
            plan,
            dropped_samples,
        })
}

fn caps() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(token(), 0..8)
}

fn body_and_sent() -> impl Strategy<Value = (Body, Timestamp)> {
    prop_oneof![
        assign().prop_map(|(a, t)| (Body::ScheduleAssign(a), t)),
        (instant(), 1i64..86_400, command_action()).prop_map(|(t, d, action)| {
            let valid_until = Timestamp::from_second(t.as_second() + d).unwrap();
            (
                Body::Command(Command {
                    valid_until,
                    action,
                }),
                t,
            )
        }),
        (ack(), instant()).prop_map(|(a, t)| (Body::Ack(a), t)),
        (telemetry(), instant()).prop_map(|(b, t)| (Body::Telemetry(b), t)),
        (
            any::<bool>(),
            text(64),
            prop::option::of(text(64)),
            prop::option::of(sref()),
            caps(),
            prop::option::of(any::<i64>()),
            instant()
        )
            .prop_map(
                |(
                    online,
                    agent_version,
                    firmware_version,
                    active,
                    capabilities,
                    clock_offset_ms,
                    t,
                )| {
                    (
                        Body::Status(Status {
                            online,
                            agent_version,
                            firmware_version,
                            active,
                            capabilities,
                            clock_offset_ms,
                        }),
                        t,
                    )
                }
            ),
        (
            text(64),
            prop::collection::vec(sref(), 0..16),
            prop::collection::vec(token(), 0..32),
            caps(),
            any::<bool>(),
            instant()
        )
            .prop_map(|(agent_version, schedules, ids, capabilities, cbor, t)| {
                let hello = Hello {
                    agent_version,
                    schedules,
                    last_message_ids: ids
                        .into_iter()
                        .map(|i| MessageId::new(i).unwrap())
                        .collect(),
                    capabilities,
                    codec: if cbor { Codec::Cbor } else { Codec::Json },
                };
                (Body::Hello(hello), t)
            }),
    ]
}

fn envelope() -> impl Strategy<Value = Envelope> {
    (
        token(),
        token(),
        body_and_sent(),
        prop::option::of("[!-~]{1,128}"),
        any::<bool>(),
    )
        .prop_map(|(id, device, (body, sent_at), correlation_id, sign)| {
            let mut e = Envelope::new(
                MessageId::new(id).unwrap(),
                DeviceId::new(device).unwrap(),
                sent_at,
                body,
            );
            e.correlation_id = correlation_id;
            if sign && e.kind().is_signable() {
                signature::sign(&mut e, &signature::SigningKey::from_bytes(&[3; 32])).unwrap();
            }
            e
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn both_codecs_round_trip_valid_messages(msg in envelope()) {
        for codec in [Codec::Json, Codec::Cbor] {
            let bytes = codec.encode(&msg).unwrap();
            prop_assert_eq!(Codec::detect(&bytes), Some(codec));
            let back = codec.decode(&bytes).unwrap();
            prop_assert_eq!(&back, &msg);
            // Deterministic: re-encoding gives the same bytes.
            prop_assert_eq!(codec.encode(&back).unwrap(), bytes);
            if back.signature.is_some() {
                signature::verify(&back, &signature::SigningKey::from_bytes(&[3; 32]).verifying_key()).unwrap();
            }
        }
    }

    #[test]
    fn any_field_order_decodes_alike_and_a_repeated_field_is_an_error(
        msg in envelope(),
        order in any::<prop::sample::Index>(),
        repeat in any::<prop::sample::Index>(),
    ) {
        // The decoders read the encoder's order (`v`, `kind` before `body`) in one pass and any
        // other order field by field: both must give the same message.
        let json: serde_json::Value = serde_json::from_slice(&Codec::Json.encode(&msg).unwrap()).unwrap();
        let mut pairs: Vec<(String, serde_json::Value)> =
            json.as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let n = pairs.len();
        pairs.rotate_left(order.index(n));
        let text = |pairs: &[(String, serde_json::Value)]| {
            let fields: Vec<String> = pairs
                .iter()
                .map(|(k, v)| format!("{}:{}", serde_json::to_string(k).unwrap(), v))
                .collect();
            format!("{{{}}}", fields.join(","))
        };
        prop_assert_eq!(&Codec::Json.decode(text(&pairs).as_bytes()).unwrap(), &msg);
        let again = pairs[repeat.index(n)].clone();
        pairs.push(again);
        prop_assert!(Codec::Json.decode(text(&pairs).as_bytes()).is_err());

        let mut cbor: ciborium::Value = ciborium::de::from_reader(&Codec::Cbor.encode(&msg).unwrap()[..]).unwrap();
        let ciborium::Value::Map(entries) = &mut cbor else { panic!("not a map") };
        let k = order.index(entries.len());
        entries.rotate_left(k);
        let mut bytes = Vec::new();
        ciborium::ser::into_writer(&cbor, &mut bytes).unwrap();
        prop_assert_eq!(&Codec::Cbor.decode(&bytes).unwrap(), &msg);
    }

    #[test]
    fn decoders_never_panic_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Codec::Json.decode(&bytes);
        let _ = Codec::Cbor.decode(&bytes);
        let _ = grid_proto::decode(&bytes);
    }

    #[test]
    fn decoders_never_panic_on_mutated_messages(msg in envelope(), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        for codec in [Codec::Json, Codec::Cbor] {
            let mut bytes = codec.encode(&msg).unwrap();
            for (i, b) in &flips {
                let i = i.index(bytes.len());
                bytes[i] = *b;
            }
            if let Ok(decoded) = codec.decode(&bytes) {
                // Whatever decodes is valid, and re-encodes.
                prop_assert!(decoded.validate().is_ok());
                prop_assert!(codec.encode(&decoded).is_ok());
            }
        }
    }
}
