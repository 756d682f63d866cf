//! Decoder robustness: limits, truncation, non-finite numbers, inconsistent messages, unknown
//! fields and versions, topics and signatures, each with the typed error it must produce.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use ciborium::Value;
use common::*;
use grid_proto::topic::{Topic, TopicKind, agent_subscription, server_subscriptions};
use grid_proto::v1::*;
use grid_proto::{Codec, Error, limits, signature};

fn assign_env() -> Envelope {
    golden()
        .into_iter()
        .find(|(n, _)| *n == "schedule_assign")
        .unwrap()
        .1
}

fn to_cbor_value(msg: &Envelope) -> Value {
    ciborium::de::from_reader(&Codec::Cbor.encode(msg).unwrap()[..]).unwrap()
}

fn cbor_bytes(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(v, &mut out).unwrap();
    out
}

fn map_get<'a>(v: &'a mut Value, key: &str) -> &'a mut Value {
    let Value::Map(entries) = v else {
        panic!("not a map")
    };
    &mut entries
        .iter_mut()
        .find(|(k, _)| k.as_text() == Some(key))
        .unwrap()
        .1
}

fn json_value(msg: &Envelope) -> serde_json::Value {
    serde_json::from_slice(&Codec::Json.encode(msg).unwrap()).unwrap()
}

#[test]
fn oversized_payloads_are_rejected_before_parsing() {
    let big = vec![b' '; limits::MAX_PAYLOAD_BYTES + 1];
    for codec in [Codec::Json, Codec::Cbor] {
        assert!(matches!(
            codec.decode(&big),
            Err(Error::TooLarge {
                field: "payload",
                ..
            })
        ));
    }
    // An encoder refuses to produce one: 2880 slots of long JSON numbers do not fit.
    let mut msg = assign_env();
    let Body::ScheduleAssign(a) = &mut msg.body else {
        unreachable!()
    };
    a.horizon.slots = 2880;
    a.horizon.slot_s = 60;
    a.valid_until = ts("2026-11-28T12:00:00Z");
    a.setpoints_kw = vec![-1.234_567_890_123_4; 2880];
    a.expected_kwh = vec![9.876_543_210_987_6; 2880];
    assert!(matches!(
        Codec::Json.encode(&msg),
        Err(Error::TooLarge {
            field: "payload",
            ..
        })
    ));
    let Body::ScheduleAssign(a) = &mut msg.body else {
        unreachable!()
    };
    a.horizon.slots = 2881;
    assert!(matches!(
        Codec::Cbor.encode(&msg),
        Err(Error::TooLarge {
            field: "body.horizon.slots",
            ..
        })
    ));
}

#[test]
fn every_truncation_of_every_golden_message_is_a_typed_error() {
    for (name, msg) in golden() {
        for codec in [Codec::Json, Codec::Cbor] {
            let bytes = codec.encode(&msg).unwrap();
            for cut in 0..bytes.len() {
                let err = codec.decode(&bytes[..cut]).unwrap_err();
                assert!(
                    matches!(err, Error::Malformed { .. }),
                    "{name} {codec} cut {cut}: {err}"
                );
            }
            // Trailing garbage too.
            let mut long = bytes.clone();
            long.push(0);
            assert!(
                codec.decode(&long).is_err(),
                "{name} {codec} with a trailing byte"
            );
        }
    }
}

#[test]
fn unknown_fields_are_ignored_in_both_codecs() {
    let msg = assign_env();
    let mut j = json_value(&msg);
    j["future_field"] = serde_json::json!({"nested": [1, 2, 3]});
    j["body"]["priority"] = serde_json::json!("high");
    j["body"]["horizon"]["tz"] = serde_json::json!("Europe/Berlin");
    assert_eq!(
        Codec::Json
            .decode(&serde_json::to_vec(&j).unwrap())
            .unwrap(),
        msg
    );
    let mut c = to_cbor_value(&msg);
    let Value::Map(entries) = &mut c else {
        unreachable!()
    };
    entries.insert(
        0,
        (Value::Text("x-extra".into()), Value::Bytes(vec![1, 2, 3])),
    );
    assert_eq!(Codec::Cbor.decode(&cbor_bytes(&c)).unwrap(), msg);
    // Field order does not matter either.
    let Value::Map(entries) = &mut c else {
        unreachable!()
    };
    entries.reverse();
    assert_eq!(Codec::Cbor.decode(&cbor_bytes(&c)).unwrap(), msg);
    // And the signature still verifies: unknown fields are not signed.
    signature::verify(&msg, &key().verifying_key()).unwrap();
}

#[test]
fn an_unknown_major_version_is_a_typed_error_whatever_the_rest_holds() {
    let j = br#"{"v":2,"msg":"a completely different layout"}"#;
    assert_eq!(
        Codec::Json.decode(j),
        Err(Error::UnsupportedVersion { version: 2 })
    );
    let mut c = to_cbor_value(&assign_env());
    *map_get(&mut c, "v") = Value::Integer(7.into());
    assert_eq!(
        Codec::Cbor.decode(&cbor_bytes(&c)),
        Err(Error::UnsupportedVersion { version: 7 })
    );
    assert_eq!(
        Error::UnsupportedVersion { version: 7 }.reason_code(),
        ReasonCode::UnsupportedVersion
    );
    let unknown_kind = br#"{"v":1,"kind":"reboot","id":"x","device":"bat-0042","sent_at":"2026-11-27T00:00:00Z","body":{}}"#;
    assert!(matches!(
        Codec::Json.decode(unknown_kind),
        Err(Error::UnknownKind { .. })
    ));
}

#[test]
fn non_finite_numbers_are_rejected_naming_the_field() {
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let mut c = to_cbor_value(&assign_env());
        let Value::Array(setpoints) = map_get(map_get(&mut c, "body"), "setpoints_kw") else {
            unreachable!()
        };
        setpoints[2] = Value::Float(bad);
        assert_eq!(
            Codec::Cbor.decode(&cbor_bytes(&c)),
            Err(Error::NotFinite {
                field: "body.setpoints_kw[2]".into()
            })
        );
    }
    // JSON cannot even spell them.
    let text = String::from_utf8(Codec::Json.encode(&assign_env()).unwrap()).unwrap();
    let nan = text.replace("\"initial_kwh\":6.0", "\"initial_kwh\":NaN");
    assert!(matches!(
        Codec::Json.decode(nan.as_bytes()),
        Err(Error::Malformed { .. })
    ));
    let huge = text.replace("\"initial_kwh\":6.0", "\"initial_kwh\":1e400");
    assert!(Codec::Json.decode(huge.as_bytes()).is_err());
}

#[test]
fn inconsistent_schedules_are_rejected_naming_the_field() {
    let base = assign_env();
    type Mutation = fn(&mut ScheduleAssign);
    let cases: Vec<(Mutation, &str)> = vec![
        (
            |a| a.setpoints_kw.pop().map(drop).unwrap_or(()),
            "body.setpoints_kw",
        ),
        (|a| a.expected_kwh.push(1.0), "body.expected_kwh"),
        (
            |a| a.valid_until = ts("2026-11-27T11:00:00Z"),
            "body.valid_until",
        ),
        (
            |a| a.valid_until = ts("2026-11-27T14:00:00Z"),
            "body.valid_until",
        ),
        (
            |a| a.version = grid_core::ScheduleVersion(0),
            "body.version",
        ),
        (
            |a| a.reversion_timeout_s = u32::MAX,
            "body.reversion_timeout_s",
        ),
        (|a| a.setpoints_kw[0] = 2e6, "body.setpoints_kw[0]"),
    ];
    for (mutate, field) in cases {
        let mut msg = base.clone();
        let Body::ScheduleAssign(a) = &mut msg.body else {
            unreachable!()
        };
        mutate(a);
        for codec in [Codec::Json, Codec::Cbor] {
            let bytes = codec.encode_unchecked(&msg).unwrap();
            match codec.decode(&bytes) {
                Err(Error::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }
    // A misaligned horizon is refused by grid-core, which names the field.
    let mut msg = base.clone();
    let Body::ScheduleAssign(a) = &mut msg.body else {
        unreachable!()
    };
    a.horizon.start = ts("2026-11-27T12:07:00Z");
    let err = Codec::Json
        .decode(&Codec::Json.encode_unchecked(&msg).unwrap())
        .unwrap_err();
    assert!(err.to_string().starts_with("horizon.start"), "{err}");
    // A command valid until before it was sent.
    let mut cmd = golden()
        .into_iter()
        .find(|(n, _)| *n == "command_idle")
        .unwrap()
        .1;
    cmd.sent_at = ts("2026-11-27T13:00:00Z");
    assert!(
        matches!(Codec::Cbor.decode(&Codec::Cbor.encode_unchecked(&cmd).unwrap()),
        Err(Error::Invalid { field, .. }) if field == "body.valid_until")
    );
}

#[test]
fn hostile_cbor_does_not_allocate_or_recurse_without_bound() {
    // A map announcing 2^32 entries, an array announcing 2^60 setpoints, 10,000 nested arrays.
    let cases: Vec<Vec<u8>> = vec![
        vec![0xba, 0xff, 0xff, 0xff, 0xff],
        {
            let mut c = to_cbor_value(&assign_env());
            *map_get(map_get(&mut c, "body"), "setpoints_kw") = Value::Null;
            let mut b = cbor_bytes(&c);
            // Replace the null (0xf6) with an array header of 2^60 items.
            let pos = b.iter().position(|&x| x == 0xf6).unwrap();
            b.splice(pos..pos + 1, [0x9b, 0x10, 0, 0, 0, 0, 0, 0, 0]);
            b
        },
        std::iter::repeat_n(0x81, 10_000).collect(),
        {
            let mut v = vec![0xa1, 0x61, b'v'];
            v.extend(std::iter::repeat_n(0x81, 10_000));
            v
        },
    ];
    for bytes in cases {
        let err = grid_proto::decode(&bytes).unwrap_err();
        assert!(
            matches!(err, Error::Malformed { .. } | Error::TooLarge { .. }),
            "{err:?}"
        );
    }
}

#[test]
fn topics_build_parse_and_reject() {
    let d = device();
    for kind in TopicKind::ALL {
        let t = Topic::new(d.clone(), kind);
        assert_eq!(Topic::parse(&t.to_string()).unwrap(), t);
        assert_eq!(kind.retained(), kind == TopicKind::Status);
    }
    assert_eq!(
        Topic::new(d.clone(), TopicKind::Schedule).to_string(),
        "grid/v1/bat-0042/down/schedule"
    );
    for bad in [
        "",
        "grid/v1/bat-0042/up",
        "grid/v1/bat-0042/up/ack/extra",
        "grid/v2/bat-0042/up/ack",
        "grid/v1/+/up/ack",
        "grid/v1/#",
        "grid/v1/bat-0042/down/ack",
        "grid/v1/bat-0042/up/schedule",
        "grid/v1//up/ack",
        "$share/g/grid/v1/bat-0042/up/ack",
    ] {
        assert!(
            matches!(Topic::parse(bad), Err(Error::InvalidTopic { .. })),
            "{bad}"
        );
    }
    assert_eq!(agent_subscription(&d), "grid/v1/bat-0042/down/+");
    assert_eq!(
        server_subscriptions(Some("g"))[0],
        "$share/g/grid/v1/+/up/hello"
    );
    assert_eq!(server_subscriptions(None).len(), 4);
}

#[test]
fn a_message_for_another_device_or_on_the_wrong_topic_is_refused() {
    let msg = assign_env();
    let payload = Codec::Json.encode(&msg).unwrap();
    let err =
        grid_proto::topic::decode_on_topic("grid/v1/bat-9/down/schedule", &payload).unwrap_err();
    assert_eq!(
        err,
        Error::WrongDevice {
            topic: "bat-9".into(),
            envelope: "bat-0042".into()
        }
    );
    assert_eq!(err.reason_code(), ReasonCode::WrongDevice);
    let err =
        grid_proto::topic::decode_on_topic("grid/v1/bat-0042/down/command", &payload).unwrap_err();
    assert!(matches!(
        err,
        Error::WrongTopic {
            kind: "schedule_assign",
            ..
        }
    ));
    assert!(grid_proto::topic::decode_on_topic("grid/v1/bat-0042/down/schedule", &payload).is_ok());
}

#[test]
fn signatures_bind_body_device_and_message_id() {
    let public = key().verifying_key();
    let msg = assign_env();
    signature::verify(&msg, &public).unwrap();
    let mut tampered = msg.clone();
    let Body::ScheduleAssign(a) = &mut tampered.body else {
        unreachable!()
    };
    a.setpoints_kw[0] = 2.5000000000000004;
    assert_eq!(
        signature::verify(&tampered, &public),
        Err(Error::BadSignature)
    );
    let mut other_id = msg.clone();
    other_id.id = mid("01JDQ8Z5K2M3N4P5Q6R7S8T9V1");
    assert_eq!(
        signature::verify(&other_id, &public),
        Err(Error::BadSignature)
    );
    let mut unsigned = msg.clone();
    unsigned.signature = None;
    assert_eq!(
        signature::verify(&unsigned, &public),
        Err(Error::MissingSignature)
    );
    let other_key = signature::SigningKey::from_bytes(&[9; 32]).verifying_key();
    assert_eq!(
        signature::verify(&msg, &other_key),
        Err(Error::BadSignature)
    );
    // Only schedules and commands are signable.
    let mut ack = golden()
        .into_iter()
        .find(|(n, _)| *n == "ack_accepted")
        .unwrap()
        .1;
    assert!(matches!(
        signature::sign(&mut ack, &key()),
        Err(Error::NotSignable { .. })
    ));
    assert!(signature::verifying_key_from_hex("zz").is_err());
}

#[test]
fn cbor_halves_a_full_precision_day_schedule() {
    let mut msg = assign_env();
    let Body::ScheduleAssign(a) = &mut msg.body else {
        unreachable!()
    };
    a.horizon.start = ts("2026-11-28T00:00:00Z");
    a.horizon.slots = 96;
    a.valid_until = ts("2026-11-29T00:00:00Z");
    // Optimiser output: full-precision doubles.
    a.setpoints_kw = (0..96).map(|i| (f64::from(i) * 0.37).sin() * 4.2).collect();
    a.expected_kwh = (0..96)
        .map(|i| 6.0 + (f64::from(i) * 0.11).cos() * 3.3)
        .collect();
    let json = Codec::Json.encode(&msg).unwrap().len();
    let cbor = Codec::Cbor.encode(&msg).unwrap().len();
    println!("96-slot schedule: JSON {json} bytes, CBOR {cbor} bytes");
    assert!(
        (cbor as f64) < 0.6 * json as f64,
        "JSON {json}, CBOR {cbor}"
    );
}
