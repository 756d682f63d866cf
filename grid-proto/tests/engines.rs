//! Scenario tests of the delivery engines: retries and backoff, expiry, superseding, hello
//! answers, idempotent acks, persistence, and the inbox's checks and answers.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use common::*;
use grid_core::{ExecutionState as S, ScheduleId, ScheduleVersion};
use grid_proto::inbox::{DetachedInboxState, Inbox, InboxAction, InboxConfig, InboxState};
use grid_proto::topic::Topic;
use grid_proto::tracker::{
    Action, DeliveryKey, DeliveryTracker, DetachedState, TrackerConfig, TrackerState,
};
use grid_proto::v1::*;
use grid_proto::{Codec, signature};
use jiff::SignedDuration;

fn assign_msg(id: &str, sid: &str, v: u64) -> Envelope {
    let mut a = schedule_assign();
    a.schedule_id = ScheduleId::new(sid).unwrap();
    a.version = ScheduleVersion(v);
    let mut e = Envelope::new(
        mid(id),
        device(),
        ts("2026-11-27T11:50:00Z"),
        Body::ScheduleAssign(a),
    );
    signature::sign(&mut e, &key()).unwrap();
    e
}

fn command_msg(id: &str, action: CommandAction) -> Envelope {
    let mut e = Envelope::new(
        mid(id),
        device(),
        ts("2026-11-27T11:50:00Z"),
        Body::Command(Command {
            valid_until: ts("2026-11-27T11:55:00Z"),
            action,
        }),
    );
    signature::sign(&mut e, &key()).unwrap();
    e
}

fn ack_msg(ack: Ack) -> Envelope {
    Envelope::new(
        mid("u1"),
        device(),
        ts("2026-11-27T11:50:00Z"),
        Body::Ack(ack),
    )
}

fn sends(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(m) => Some(m.id.to_string()),
            Action::StateChanged { .. } => None,
        })
        .collect()
}

fn changes(actions: &[Action]) -> Vec<(S, S)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::StateChanged { from, to, .. } => Some((*from, *to)),
            Action::Send(_) => None,
        })
        .collect()
}

fn tracker() -> DeliveryTracker {
    DeliveryTracker::new(device(), TrackerConfig::default(), 7)
}

#[test]
fn unacknowledged_messages_are_resent_with_growing_bounded_jittered_backoff_until_valid_until() {
    let mut t = tracker();
    let t0 = ts("2026-11-27T11:50:00Z");
    let first = t
        .command(t0, command_msg("c1", CommandAction::Idle))
        .unwrap();
    assert_eq!(sends(&first), ["c1"]);
    assert_eq!(changes(&first), [(S::Queued, S::Delivered)]);
    let mut now = t0;
    let mut gaps = Vec::new();
    while let Some(next) = t.next_wakeup() {
        assert!(next >= now);
        let actions = t.poll(next);
        if !sends(&actions).is_empty() {
            // The same message, same id, every time.
            assert_eq!(sends(&actions), ["c1"]);
            gaps.push(next.duration_since(now).as_millis() as i64);
            assert!(
                next < ts("2026-11-27T11:55:00Z"),
                "sent at or after valid_until"
            );
        }
        now = next;
    }
    assert!(gaps.len() >= 5, "{gaps:?}");
    // Equal jitter under a doubling cap: attempt n waits between half of and all of
    // min(5 min, 5 s * 2^(n-1)).
    for (n, gap) in gaps.iter().enumerate() {
        let cap = (5_000i64 << n.min(10)).min(300_000);
        assert!((cap / 2..=cap).contains(gap), "gap {n}: {gap} ms");
    }
    assert_eq!(
        t.state_of(&DeliveryKey::Command { id: mid("c1") }),
        Some(S::Expired)
    );
    // Another seed, other gaps: the jitter is real.
    let mut other = DeliveryTracker::new(device(), TrackerConfig::default(), 8);
    other
        .command(t0, command_msg("c1", CommandAction::Idle))
        .unwrap();
    let n1 = other.next_wakeup().unwrap();
    let mut same = tracker();
    same.command(t0, command_msg("c1", CommandAction::Idle))
        .unwrap();
    assert_ne!(n1, same.next_wakeup().unwrap());
}

#[test]
fn a_new_version_supersedes_the_old_and_stale_versions_are_refused() {
    let mut t = tracker();
    let now = ts("2026-11-27T11:50:00Z");
    t.assign(now, assign_msg("m1", "day", 1)).unwrap();
    let actions = t.assign(now, assign_msg("m2", "day", 2)).unwrap();
    assert_eq!(
        changes(&actions),
        [(S::Delivered, S::Superseded), (S::Queued, S::Delivered)]
    );
    assert_eq!(sends(&actions), ["m2"]);
    let err = t.assign(now, assign_msg("m3", "day", 2)).unwrap_err();
    assert!(matches!(
        err,
        grid_proto::Error::StaleVersion {
            version: 2,
            latest: 2,
            ..
        }
    ));
    // The superseded one is never resent.
    let later = t.poll(ts("2026-11-27T11:59:00Z"));
    assert!(sends(&later).iter().all(|id| id == "m2"));
}

#[test]
fn acks_are_idempotent_and_may_arrive_out_of_order() {
    let mut t = tracker();
    let now = ts("2026-11-27T11:50:00Z");
    t.assign(now, assign_msg("m1", "day", 1)).unwrap();
    let r = sref("day", 1);
    let executing = ack_msg(Ack::for_schedule(r.clone(), Some(mid("m1")), S::Executing));
    assert_eq!(
        changes(&t.on_ack(now, &executing)),
        [(S::Delivered, S::Executing)]
    );
    assert!(
        t.on_ack(now, &executing).is_empty(),
        "a duplicate changes nothing"
    );
    let late_accept = ack_msg(Ack::for_schedule(r.clone(), Some(mid("m1")), S::Accepted));
    assert!(
        t.on_ack(now, &late_accept).is_empty(),
        "a late earlier stage changes nothing"
    );
    let done = ack_msg(Ack::for_schedule(r.clone(), Some(mid("m1")), S::Completed));
    assert_eq!(
        changes(&t.on_ack(now, &done)),
        [(S::Executing, S::Completed)]
    );
    let failed = ack_msg(
        Ack::for_schedule(r.clone(), None, S::Failed).with_reason(ReasonCode::SafetyLimit, "hot"),
    );
    assert!(
        t.on_ack(now, &failed).is_empty(),
        "terminal states never change"
    );
    let unknown = ack_msg(Ack::for_schedule(sref("other", 1), None, S::Accepted));
    assert!(t.on_ack(now, &unknown).is_empty());
}

#[test]
fn a_hello_gets_exactly_what_the_device_is_missing() {
    let mut t = tracker();
    let now = ts("2026-11-27T11:50:00Z");
    t.assign(now, assign_msg("m1", "a", 1)).unwrap();
    t.assign(now, assign_msg("m2", "b", 4)).unwrap();
    t.assign(now, assign_msg("m3", "c", 2)).unwrap();
    t.command(now, command_msg("c1", CommandAction::Idle))
        .unwrap();
    t.command(now, command_msg("c2", CommandAction::Idle))
        .unwrap();
    let hello = Envelope::new(
        mid("u9"),
        device(),
        now,
        Body::Hello(Hello {
            agent_version: "x".into(),
            // Holds a@1, a newer b than the server tracks, and an older c.
            schedules: vec![sref("a", 1), sref("b", 5), sref("c", 1)],
            last_message_ids: vec![mid("c1")],
            capabilities: vec![],
            codec: Codec::Cbor,
        }),
    );
    let actions = t.on_hello(ts("2026-11-27T11:50:01Z"), &hello);
    let mut sent = sends(&actions);
    sent.sort();
    assert_eq!(sent, ["c2", "m3"]);
    assert_eq!(t.codec(), Codec::Cbor);
    assert_eq!(
        t.state_of(&DeliveryKey::Schedule(sref("a", 1))),
        Some(S::Accepted)
    );
    assert_eq!(
        t.state_of(&DeliveryKey::Schedule(sref("b", 4))),
        Some(S::Superseded)
    );
    assert_eq!(
        t.state_of(&DeliveryKey::Command { id: mid("c1") }),
        Some(S::Accepted)
    );
}

#[test]
fn executions_without_a_final_report_are_closed_after_the_grace_period() {
    let mut t = tracker();
    let now = ts("2026-11-27T11:50:00Z");
    t.assign(now, assign_msg("m1", "day", 1)).unwrap();
    let r = sref("day", 1);
    t.on_ack(
        now,
        &ack_msg(Ack::for_schedule(r.clone(), None, S::Executing)),
    );
    // valid_until 13:00, grace 10 min: then the device is asked once (the same message) and
    // the execution closed when the confirmation window (30 s) passes without an answer.
    assert!(t.poll(ts("2026-11-27T13:09:59Z")).is_empty());
    let asked = t.poll(ts("2026-11-27T13:10:00Z"));
    assert_eq!(sends(&asked), ["m1"]);
    assert!(changes(&asked).is_empty());
    assert_eq!(t.next_wakeup(), Some(ts("2026-11-27T13:10:30Z")));
    assert!(t.poll(ts("2026-11-27T13:10:29Z")).is_empty(), "asked once");
    let closed = t.poll(ts("2026-11-27T13:10:30Z"));
    assert_eq!(changes(&closed), [(S::Executing, S::Completed)]);
    assert!(
        matches!(&closed[0], Action::StateChanged { detail: Some(d), .. } if d.starts_with("assumed"))
    );
}

/// The acks among an inbox's actions, as the tracker receives them.
fn answers(out: &[InboxAction]) -> Vec<Envelope> {
    out.iter()
        .filter_map(|a| match a {
            InboxAction::Send(
                e @ Envelope {
                    body: Body::Ack(_), ..
                },
            ) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

/// A tracker and an inbox after `day`@1 (12:00–13:00, message `m1`) was sent at 11:50 and the
/// device's acceptance arrived.
fn accepted_day() -> (DeliveryTracker, Inbox) {
    let mut t = tracker();
    let mut i = inbox();
    let sent = t
        .assign(ts("2026-11-27T11:50:00Z"), assign_msg("m1", "day", 1))
        .unwrap();
    assert_eq!(sends(&sent), ["m1"]);
    let out = deliver(
        &mut i,
        "2026-11-27T11:50:00Z",
        &assign_msg("m1", "day", 1),
        Codec::Json,
    );
    for ack in answers(&out) {
        t.on_ack(ts("2026-11-27T11:50:01Z"), &ack);
    }
    assert_eq!(
        t.state_of(&DeliveryKey::Schedule(sref("day", 1))),
        Some(S::Accepted)
    );
    (t, i)
}

#[test]
fn a_resync_recovers_lifecycle_acks_that_were_lost_on_the_way() {
    let (mut t, mut i) = accepted_day();
    let key = DeliveryKey::Schedule(sref("day", 1));
    // Nothing to ask while nothing is overdue: the horizon starts at 12:00.
    assert!(t.resync(ts("2026-11-27T11:59:59Z")).is_empty());
    assert!(!t.needs_resync(ts("2026-11-27T11:59:59Z")));
    // Overdue once the start is more than the confirmation window (30 s) ago.
    assert!(!t.needs_resync(ts("2026-11-27T12:00:29Z")));
    assert!(t.needs_resync(ts("2026-11-27T12:00:30Z")));
    // The device starts and finishes; both acks are lost (no subscriber at the time).
    assert_eq!(
        acks(&i.poll(ts("2026-11-27T12:00:00Z"))),
        [(S::Executing, None)]
    );
    assert_eq!(
        acks(&i.poll(ts("2026-11-27T13:00:00Z"))),
        [(S::Completed, None)]
    );
    // Enough other messages that the device's dedup memory (4 ids) forgot "m1": the schedule
    // version itself is still answered from its history.
    for n in 0..5 {
        deliver(
            &mut i,
            "2026-11-27T13:00:01Z",
            &command_msg(&format!("x{n}"), CommandAction::Idle),
            Codec::Json,
        );
    }
    let asked = t.resync(ts("2026-11-27T13:00:02Z"));
    assert_eq!(sends(&asked), ["m1"], "the stored message, same id");
    assert!(changes(&asked).is_empty(), "a resync changes no state");
    let Action::Send(again) = &asked[0] else {
        unreachable!()
    };
    let out = deliver(&mut i, "2026-11-27T13:00:03Z", again, Codec::Json);
    assert_eq!(acks(&out), [(S::Completed, None)]);
    for ack in answers(&out) {
        t.on_ack(ts("2026-11-27T13:00:04Z"), &ack);
    }
    assert_eq!(t.state_of(&key), Some(S::Completed));
    assert!(!t.needs_resync(ts("2026-11-27T13:00:05Z")));
    assert!(sends(&t.resync(ts("2026-11-27T13:00:05Z"))).is_empty());
}

#[test]
fn an_accepted_schedule_is_asked_about_before_it_expires_and_the_answer_wins() {
    let (mut t, mut i) = accepted_day();
    let key = DeliveryKey::Schedule(sref("day", 1));
    // The device runs the day; its `executing` and `completed` acks are lost.
    i.poll(ts("2026-11-27T12:00:00Z"));
    i.poll(ts("2026-11-27T13:00:00Z"));
    // At valid_until the tracker asks instead of expiring it.
    let asked = t.poll(ts("2026-11-27T13:00:00Z"));
    assert_eq!(sends(&asked), ["m1"]);
    assert_eq!(t.state_of(&key), Some(S::Accepted));
    let Action::Send(again) = &asked[0] else {
        unreachable!()
    };
    let out = deliver(&mut i, "2026-11-27T13:00:05Z", again, Codec::Json);
    for ack in answers(&out) {
        t.on_ack(ts("2026-11-27T13:00:06Z"), &ack);
    }
    assert_eq!(t.state_of(&key), Some(S::Completed));
    // Unanswered, it expires after the window, with the reason saying so.
    let (mut t, _) = accepted_day();
    assert_eq!(sends(&t.poll(ts("2026-11-27T13:00:00Z"))), ["m1"]);
    let expired = t.poll(ts("2026-11-27T13:00:30Z"));
    assert_eq!(changes(&expired), [(S::Accepted, S::Expired)]);
    assert!(
        matches!(&expired[0], Action::StateChanged { detail: Some(d), .. } if d.contains("did not answer"))
    );
    // A state saved while asking resumes with the question pending (no second question).
    let (mut t, _) = accepted_day();
    t.poll(ts("2026-11-27T13:00:00Z"));
    let saved = serde_json::to_string(&t.state().detached()).unwrap();
    let detached: DetachedState = serde_json::from_str(&saved).unwrap();
    let mut t = DeliveryTracker::restore(
        TrackerConfig::default(),
        TrackerState::attach(detached, t.state().messages()).unwrap(),
    );
    assert!(t.poll(ts("2026-11-27T13:00:10Z")).is_empty());
    assert_eq!(
        changes(&t.poll(ts("2026-11-27T13:00:30Z"))),
        [(S::Accepted, S::Expired)]
    );
}

#[test]
fn the_tracker_state_survives_a_json_round_trip_and_resumes() {
    let mut t = tracker();
    let now = ts("2026-11-27T11:50:00Z");
    t.assign(now, assign_msg("m1", "day", 1)).unwrap();
    t.command(now, command_msg("c1", CommandAction::Idle))
        .unwrap();
    let saved = serde_json::to_string(t.state()).unwrap();
    let mut restored = DeliveryTracker::restore(
        TrackerConfig::default(),
        serde_json::from_str(&saved).unwrap(),
    );
    assert_eq!(restored, t);
    let at = t.next_wakeup().unwrap();
    assert_eq!(restored.poll(at), t.poll(at));
    // The stored message keeps its signature.
    assert!(
        restored.deliveries()[0]
            .message()
            .is_some_and(|m| m.signature.is_some())
    );
}

#[test]
fn a_detached_state_and_its_messages_make_the_same_tracker_again() {
    let mut t = tracker();
    let now = ts("2026-11-27T11:50:00Z");
    t.assign(now, assign_msg("m1", "day", 1)).unwrap();
    t.command(now, command_msg("c1", CommandAction::Idle))
        .unwrap();
    let detached = serde_json::to_string(&t.state().detached()).unwrap();
    let messages = serde_json::to_string(&t.state().messages()).unwrap();
    let whole = serde_json::to_string(t.state()).unwrap();
    // The part an ack rewrites holds no message.
    assert!(messages.contains("setpoints_kw"), "{messages}");
    assert!(!detached.contains("setpoints_kw"), "{detached}");
    assert!(detached.len() < whole.len());
    let detached: DetachedState = serde_json::from_str(&detached).unwrap();
    assert!(detached.message_ids().eq(t.state().message_ids()));
    let state =
        TrackerState::attach(detached.clone(), serde_json::from_str(&messages).unwrap()).unwrap();
    let mut restored = DeliveryTracker::restore(TrackerConfig::default(), state);
    assert_eq!(restored, t);
    let at = t.next_wakeup().unwrap();
    assert_eq!(restored.poll(at), t.poll(at));
    assert!(
        restored.deliveries()[0]
            .message()
            .is_some_and(|m| m.signature.is_some())
    );

    // An ack changes the detached part only: the messages stay valid for the new state.
    let ack = ack_msg(Ack::for_schedule(
        sref("day", 1),
        Some(mid("m1")),
        S::Accepted,
    ));
    assert_eq!(changes(&t.on_ack(at, &ack)), [(S::Delivered, S::Accepted)]);
    assert_ne!(t.state().detached(), detached);
    assert!(
        t.state()
            .detached()
            .message_ids()
            .eq(detached.message_ids())
    );

    // Messages that do not belong to the state are refused.
    let mut other = tracker();
    other.assign(now, assign_msg("m2", "day", 1)).unwrap();
    let wrong = TrackerState::attach(t.state().detached(), other.state().messages());
    assert!(matches!(wrong, Err(grid_proto::Error::Engine(_))));

    // A finished delivery drops its message (never sent again): the saved messages shrink, and
    // a list saved before (still holding it) is taken too.
    let old_list = t.state().messages();
    let done = ack_msg(Ack::for_schedule(
        sref("day", 1),
        Some(mid("m1")),
        S::Completed,
    ));
    t.on_ack(
        at,
        &ack_msg(Ack::for_schedule(
            sref("day", 1),
            Some(mid("m1")),
            S::Executing,
        )),
    );
    assert_eq!(
        changes(&t.on_ack(at, &done)),
        [(S::Executing, S::Completed)]
    );
    assert!(t.deliveries()[0].message().is_none());
    assert_eq!(t.state().messages().len(), old_list.len() - 1);
    assert!(t.state().message_ids().all(|id| id.as_str() == "c1"));
    let detached = t.state().detached();
    assert!(detached.message_ids().eq(t.state().message_ids()));
    let state = TrackerState::attach(detached.clone(), t.state().messages()).unwrap();
    assert_eq!(&state, t.state());
    // As the code before saved it: the finished delivery still names its message, which the
    // list holds.
    let mut before = serde_json::to_value(&detached).unwrap();
    before["deliveries"][0]["message_id"] = "m1".into();
    let before: DetachedState = serde_json::from_value(before).unwrap();
    // Its ids differ from the state's now, so a save rewrites the messages.
    assert_eq!(before.message_ids().count(), 2);
    assert!(!before.message_ids().eq(detached.message_ids()));
    let state = TrackerState::attach(before, old_list).unwrap();
    assert_eq!(&state, t.state());
    // An unfinished delivery's message missing is refused.
    let missing = TrackerState::attach(detached, other.state().messages());
    assert!(matches!(missing, Err(grid_proto::Error::Engine(_))));
    // A late ack for the finished delivery changes nothing.
    assert!(t.on_ack(at, &done).is_empty());
}

fn inbox() -> Inbox {
    Inbox::new(
        device(),
        InboxConfig {
            verifying_key: Some(key().verifying_key()),
            dedup_capacity: 4,
            ..InboxConfig::default()
        },
    )
}

fn deliver(inbox: &mut Inbox, at: &str, msg: &Envelope, codec: Codec) -> Vec<InboxAction> {
    let topic = Topic::for_envelope(msg).to_string();
    inbox.on_message(ts(at), &topic, &codec.encode(msg).unwrap())
}

fn acks(actions: &[InboxAction]) -> Vec<(S, Option<ReasonCode>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            InboxAction::Send(Envelope {
                body: Body::Ack(ack),
                ..
            }) => Some((ack.state, ack.reason)),
            _ => None,
        })
        .collect()
}

#[test]
fn the_inbox_rejects_bad_signatures_and_foreign_messages_by_id() {
    let mut i = inbox();
    let mut forged = assign_msg("m1", "day", 1);
    let Body::ScheduleAssign(a) = &mut forged.body else {
        unreachable!()
    };
    a.setpoints_kw[0] = 5.0;
    let out = deliver(&mut i, "2026-11-27T11:50:00Z", &forged, Codec::Json);
    assert_eq!(acks(&out), [(S::Rejected, Some(ReasonCode::BadSignature))]);
    let mut unsigned = assign_msg("m2", "day", 1);
    unsigned.signature = None;
    let out = deliver(&mut i, "2026-11-27T11:50:00Z", &unsigned, Codec::Cbor);
    assert_eq!(acks(&out), [(S::Rejected, Some(ReasonCode::BadSignature))]);
    // A genuine message for bat-0042 published on another device's topic.
    let genuine = assign_msg("m3", "day", 1);
    let out = i.on_message(
        ts("2026-11-27T11:50:00Z"),
        "grid/v1/bat-0042/down/command",
        &Codec::Json.encode(&genuine).unwrap(),
    );
    assert_eq!(acks(&out), [(S::Rejected, Some(ReasonCode::Malformed))]);
    let out = i.on_message(
        ts("2026-11-27T11:50:00Z"),
        "grid/v1/bat-0042/down/schedule",
        b"\x00garbage",
    );
    assert!(matches!(out[..], [InboxAction::Discarded(_)]));
    // None of that was accepted: the genuine one still is.
    let out = deliver(&mut i, "2026-11-27T11:50:00Z", &genuine, Codec::Json);
    assert_eq!(acks(&out), [(S::Accepted, None)]);
}

#[test]
fn the_inbox_keeps_only_newer_versions_and_rejects_expired_ones() {
    let mut i = inbox();
    let at = "2026-11-27T11:50:00Z";
    assert_eq!(
        acks(&deliver(
            &mut i,
            at,
            &assign_msg("m2", "day", 2),
            Codec::Json
        )),
        [(S::Accepted, None)]
    );
    assert_eq!(
        acks(&deliver(
            &mut i,
            at,
            &assign_msg("m1", "day", 1),
            Codec::Json
        )),
        [(S::Superseded, Some(ReasonCode::Superseded))]
    );
    // The same version under a new id: its current state, not a second acceptance.
    let out = deliver(&mut i, at, &assign_msg("m2b", "day", 2), Codec::Json);
    assert_eq!(acks(&out), [(S::Accepted, None)]);
    assert!(!out.iter().any(|a| matches!(a, InboxAction::Store(_))));
    // Version 3 replaces version 2 (which is superseded).
    let out = deliver(&mut i, at, &assign_msg("m3", "day", 3), Codec::Json);
    assert_eq!(
        acks(&out),
        [
            (S::Superseded, Some(ReasonCode::Superseded)),
            (S::Accepted, None)
        ]
    );
    // Expired on arrival.
    let out = deliver(
        &mut i,
        "2026-11-27T13:00:00Z",
        &assign_msg("m4", "other", 1),
        Codec::Json,
    );
    assert!(acks(&out).contains(&(S::Expired, Some(ReasonCode::Expired))));
}

#[test]
fn a_detached_inbox_state_and_the_stored_bodies_make_the_same_inbox_again() {
    let mut i = inbox();
    let day = assign_msg("m1", "day", 1);
    deliver(&mut i, "2026-11-27T11:50:00Z", &day, Codec::Json);
    let night = assign_msg("m2", "night", 3);
    deliver(&mut i, "2026-11-27T11:51:00Z", &night, Codec::Json);
    i.poll(ts("2026-11-27T12:00:00Z"));
    let body = |m: &Envelope| match &m.body {
        Body::ScheduleAssign(a) => a.clone(),
        _ => unreachable!(),
    };
    let bodies = [body(&day), body(&night)];
    let whole = serde_json::to_string(i.state()).unwrap();
    let detached = serde_json::to_string(&i.state().detached()).unwrap();
    // The part saved on every message holds no schedule body.
    assert!(whole.contains("setpoints_kw"), "{whole}");
    assert!(!detached.contains("setpoints_kw"), "{detached}");
    let detached: DetachedInboxState = serde_json::from_str(&detached).unwrap();
    // Night took over from day (superseded, no longer held).
    assert_eq!(
        detached.held().cloned().collect::<Vec<_>>(),
        i.held().map(|(r, _)| r).collect::<Vec<_>>()
    );
    assert_eq!(detached.held().count(), 1);
    let find = |r: &ScheduleRef| bodies.iter().find(|a| &a.schedule_ref() == r).cloned();
    let state = InboxState::attach(detached.clone(), find).unwrap();
    assert_eq!(&state, i.state());
    // A body missing, or one of another version, is a typed error.
    let missing = InboxState::attach(detached.clone(), |r| {
        find(r).filter(|a| a.schedule_id.as_str() == "day")
    });
    assert!(
        matches!(missing, Err(grid_proto::Error::Engine(ref m)) if m.contains("night v3")),
        "{missing:?}"
    );
    let other = InboxState::attach(detached, |r| {
        find(r).map(|mut a| {
            a.version = ScheduleVersion(a.version.0 + 1);
            a
        })
    });
    assert!(matches!(other, Err(grid_proto::Error::Engine(_))));
}

#[test]
fn the_inbox_starts_once_completes_at_valid_until_and_reverts_without_contact() {
    let mut i = inbox();
    deliver(
        &mut i,
        "2026-11-27T11:50:00Z",
        &assign_msg("m1", "day", 1),
        Codec::Json,
    );
    assert!(
        i.active(ts("2026-11-27T11:59:59Z")).is_none(),
        "not before the horizon starts"
    );
    let out = i.poll(ts("2026-11-27T12:00:00Z"));
    assert!(matches!(out[0], InboxAction::Start(_)));
    assert_eq!(acks(&out), [(S::Executing, None)]);
    assert!(
        i.poll(ts("2026-11-27T12:01:00Z")).is_empty(),
        "started once"
    );
    // Duplicate delivery: re-acked with the current state, not restarted.
    let out = deliver(
        &mut i,
        "2026-11-27T12:02:00Z",
        &assign_msg("m1", "day", 1),
        Codec::Json,
    );
    assert_eq!(acks(&out), [(S::Executing, None)]);
    assert_eq!(
        i.active(ts("2026-11-27T12:10:00Z"))
            .unwrap()
            .setpoint_at(ts("2026-11-27T12:20:00Z")),
        Some(2.5)
    );
    // reversion_timeout_s is 900: 15 minutes after the last contact (12:02) the device idles.
    assert!(i.active(ts("2026-11-27T12:16:59Z")).is_some());
    assert!(i.active(ts("2026-11-27T12:17:00Z")).is_none());
    i.touch(ts("2026-11-27T12:30:00Z"));
    assert!(i.active(ts("2026-11-27T12:31:00Z")).is_some());
    let out = i.poll(ts("2026-11-27T13:00:00Z"));
    assert_eq!(acks(&out), [(S::Completed, None)]);
    assert_eq!(i.held().count(), 0);
}

#[test]
fn a_schedule_that_starts_on_arrival_is_answered_executing_alone() {
    // The horizon starts at 12:00: delivered at 12:05, it is stored, started and acked once.
    let mut i = inbox();
    let out = deliver(
        &mut i,
        "2026-11-27T12:05:00Z",
        &assign_msg("m1", "day", 1),
        Codec::Json,
    );
    assert!(matches!(out[0], InboxAction::Store(_)));
    assert!(out.iter().any(|a| matches!(a, InboxAction::Start(_))));
    assert_eq!(acks(&out), [(S::Executing, None)]);
    assert!(
        i.poll(ts("2026-11-27T12:06:00Z")).is_empty(),
        "started once"
    );
    // Sent again: answered with that state, not `accepted`.
    let again = deliver(
        &mut i,
        "2026-11-27T12:07:00Z",
        &assign_msg("m1", "day", 1),
        Codec::Json,
    );
    assert_eq!(acks(&again), [(S::Executing, None)]);
    // A newer version delivered after its start supersedes the old one and starts at once.
    let out = deliver(
        &mut i,
        "2026-11-27T12:08:00Z",
        &assign_msg("m2", "day", 2),
        Codec::Json,
    );
    assert_eq!(
        acks(&out),
        [
            (S::Superseded, Some(ReasonCode::Superseded)),
            (S::Executing, None)
        ]
    );
    // The server's tracker takes `executing` from `delivered` as the acceptance.
    let mut t = tracker();
    let sent = ts("2026-11-27T12:05:00Z");
    t.assign(sent, assign_msg("m3", "day", 3)).unwrap();
    let mut j = inbox();
    let out = deliver(
        &mut j,
        "2026-11-27T12:05:00Z",
        &assign_msg("m3", "day", 3),
        Codec::Json,
    );
    let ack = answers(&out).pop().unwrap();
    assert_eq!(
        changes(&t.on_ack(sent, &ack)),
        [(S::Delivered, S::Executing)]
    );
}

#[test]
fn the_inbox_runs_commands_and_cancels_schedules() {
    let mut i = inbox();
    let at = "2026-11-27T11:50:00Z";
    deliver(&mut i, at, &assign_msg("m1", "day", 1), Codec::Json);
    let out = deliver(
        &mut i,
        at,
        &command_msg(
            "c1",
            CommandAction::SetPower {
                power_kw: -1.5,
                duration_s: 120,
            },
        ),
        Codec::Cbor,
    );
    assert!(matches!(&out[0], InboxAction::Run(id, _) if id.as_str() == "c1"));
    assert_eq!(acks(&out), [(S::Executing, None)]);
    assert_eq!(i.running_command(ts(at)).map(MessageId::as_str), Some("c1"));
    // A newer command supersedes it.
    let out = deliver(
        &mut i,
        at,
        &command_msg("c2", CommandAction::Idle),
        Codec::Json,
    );
    assert_eq!(
        acks(&out),
        [
            (S::Superseded, Some(ReasonCode::Superseded)),
            (S::Completed, None)
        ]
    );
    let out = deliver(
        &mut i,
        at,
        &command_msg(
            "c3",
            CommandAction::CancelSchedule {
                schedule_id: ScheduleId::new("day").unwrap(),
            },
        ),
        Codec::Json,
    );
    assert_eq!(
        acks(&out),
        [
            (S::Cancelled, Some(ReasonCode::Cancelled)),
            (S::Completed, None)
        ]
    );
    assert_eq!(i.held().count(), 0);
    // Version 1 of "day" is never accepted again.
    let out = deliver(&mut i, at, &assign_msg("m1x", "day", 1), Codec::Json);
    assert_eq!(acks(&out), [(S::Cancelled, Some(ReasonCode::Cancelled))]);
}

#[test]
fn the_inbox_dedup_memory_is_bounded_and_hello_lists_what_it_holds() {
    let mut i = inbox();
    for n in 0..20 {
        deliver(
            &mut i,
            "2026-11-27T11:50:00Z",
            &command_msg(&format!("c{n}"), CommandAction::Idle),
            Codec::Json,
        );
    }
    let state = serde_json::to_value(i.state()).unwrap();
    assert_eq!(state["seen"].as_array().unwrap().len(), 4);
    deliver(
        &mut i,
        "2026-11-27T11:50:00Z",
        &assign_msg("m1", "day", 7),
        Codec::Json,
    );
    let out = i.on_connect(ts("2026-11-27T11:51:00Z") + SignedDuration::ZERO);
    let InboxAction::Send(Envelope {
        body: Body::Hello(h),
        ..
    }) = &out[0]
    else {
        panic!("{out:?}")
    };
    assert_eq!(h.schedules, [sref("day", 7)]);
    assert_eq!(h.last_message_ids.last().map(MessageId::as_str), Some("m1"));
    assert_eq!(
        acks(&out),
        [(S::Accepted, None)],
        "held schedules are re-acked on connect"
    );
}

#[test]
fn a_schedule_too_large_for_json_but_fine_in_cbor_survives_the_saved_state() {
    let mut a = schedule_assign();
    a.horizon.start = ts("2026-11-28T00:00:00Z");
    a.horizon.slot_s = 60;
    a.horizon.slots = 2880;
    a.valid_until = ts("2026-11-30T00:00:00Z");
    a.setpoints_kw = (0..2880)
        .map(|i| (f64::from(i) * 0.37).sin() * 4.2)
        .collect();
    a.expected_kwh = (0..2880)
        .map(|i| 6.0 + (f64::from(i) * 0.11).cos() * 3.3)
        .collect();
    let msg = Envelope::new(
        mid("big"),
        device(),
        ts("2026-11-27T11:50:00Z"),
        Body::ScheduleAssign(a),
    );
    assert!(matches!(
        Codec::Json.encode(&msg),
        Err(grid_proto::Error::TooLarge { .. })
    ));
    assert!(Codec::Cbor.encode(&msg).is_ok());
    let mut t = tracker();
    t.assign(ts("2026-11-27T11:50:00Z"), msg.clone()).unwrap();
    let saved = serde_json::to_string(t.state()).unwrap();
    let restored = DeliveryTracker::restore(
        TrackerConfig::default(),
        serde_json::from_str(&saved).unwrap(),
    );
    assert_eq!(restored.deliveries()[0].message(), Some(&msg));
}

#[test]
fn a_rejection_that_names_only_the_message_id_reaches_the_schedule_delivery() {
    let mut t = tracker();
    let now = ts("2026-11-27T11:50:00Z");
    let mut msg = assign_msg("m1", "day", 1);
    let Body::ScheduleAssign(a) = &mut msg.body else {
        unreachable!()
    };
    a.setpoints_kw[0] = 4.0; // the signature no longer matches
    let sent = t.assign(now, msg).unwrap();
    let Action::Send(out) = &sent[0] else {
        panic!("{sent:?}")
    };
    let mut i = inbox();
    let answer = deliver(&mut i, "2026-11-27T11:50:00Z", out, Codec::Json);
    let InboxAction::Send(ack) = &answer[0] else {
        panic!("{answer:?}")
    };
    let changes = changes(&t.on_ack(now, ack));
    assert_eq!(changes, [(S::Delivered, S::Rejected)]);
}
