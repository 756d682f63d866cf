//! The `Store` conformance suite: every query of the trait, run against SQLite (a temporary file)
//! always, and against PostgreSQL (a fresh schema of `DATABASE_URL`) in the ignored live test that
//! `.ci/run` runs.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches may unwrap

#[path = "common/store_support.rs"]
mod support;

use grid_core::*;
use grid_server::store::*;
use std::sync::Arc;
use std::time::Duration;
use support::*;

type S = Arc<dyn Store>;

mod suite {
    use super::*;

    pub async fn sites_and_feeders(store: S) {
        let now = t("2026-11-27T00:00:00Z");
        let later = t("2026-11-27T01:00:00Z");
        let mut site = site_record("site-a", "acme");
        site.tariff = Some(Tariff::Flat {
            import: PricePerKwh::from_per_kwh(0.30).unwrap(),
            export: PricePerKwh::from_per_kwh(0.08).unwrap(),
        });
        site.price_series = Some("nl-day-ahead".into());
        let stored = store.upsert_site(&site, now).await.unwrap();
        assert_eq!(stored.created_at, now);
        assert_eq!(stored.tariff, site.tariff);
        assert_eq!(store.get_site(&site.id).await.unwrap(), stored);

        // Replacing keeps the creation time.
        site.name = Some("renamed".into());
        site.feeder = Some(FeederId::new("feeder-1").unwrap());
        let updated = store.upsert_site(&site, later).await.unwrap();
        assert_eq!(
            (updated.created_at, updated.updated_at),
            (now, later),
            "upsert keeps created_at"
        );
        assert_eq!(updated.name.as_deref(), Some("renamed"));

        for i in 0..5 {
            store
                .upsert_site(&site_record(&format!("site-b{i}"), "other"), now)
                .await
                .unwrap();
        }
        let mut filter = SiteFilter {
            tenant: Some("other".into()),
            limit: 2,
            ..Default::default()
        };
        let mut seen = Vec::new();
        loop {
            let page = store.list_sites(&filter).await.unwrap();
            assert!(page.items.len() <= 2);
            seen.extend(page.items.iter().map(|s| s.id.to_string()));
            match page.next_cursor {
                Some(c) => filter.after = Some(c),
                None => break,
            }
        }
        assert_eq!(
            seen,
            ["site-b0", "site-b1", "site-b2", "site-b3", "site-b4"]
        );
        let on_feeder = store
            .list_sites(&SiteFilter {
                feeder: Some(FeederId::new("feeder-1").unwrap()),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(on_feeder.items.len(), 1);
        assert!(matches!(
            store
                .list_sites(&SiteFilter {
                    limit: 0,
                    ..Default::default()
                })
                .await,
            Err(StoreError::Invalid { field: "limit", .. })
        ));
        assert!(matches!(
            store.get_site(&SiteId::new("nope").unwrap()).await,
            Err(StoreError::NotFound { entity: "site", .. })
        ));

        // Feeders with an envelope.
        let horizon = Horizon::new(now, SlotLength::HOUR, 2).unwrap();
        let limit = FeederLimit {
            import: Power::from_kw(40.0).unwrap(),
            export: Power::from_kw(20.0).unwrap(),
        };
        let envelope = FeederEnvelope::new(
            FeederId::new("feeder-1").unwrap(),
            vec![site.id.clone()],
            horizon,
            vec![limit; 2],
        )
        .unwrap();
        let feeder = FeederRecord {
            id: FeederId::new("feeder-1").unwrap(),
            tenant: "acme".into(),
            name: None,
            envelope: Some(envelope.clone()),
            created_at: now,
            updated_at: now,
        };
        let stored = store.upsert_feeder(&feeder, now).await.unwrap();
        assert_eq!(stored.envelope.as_ref(), Some(&envelope));
        assert_eq!(store.get_feeder(&feeder.id).await.unwrap(), stored);
        assert_eq!(store.list_feeders(Some("acme")).await.unwrap().len(), 1);
        assert!(store.list_feeders(Some("other")).await.unwrap().is_empty());
        assert_eq!(store.list_feeders(None).await.unwrap().len(), 1);
        let mut wrong = feeder.clone();
        wrong.id = FeederId::new("feeder-2").unwrap();
        assert!(matches!(
            store.upsert_feeder(&wrong, now).await,
            Err(StoreError::Invalid {
                field: "envelope.id",
                ..
            })
        ));

        // A site with devices cannot be deleted; an empty one can.
        store
            .register_device(&new_device("dev-1", "site-a"), now)
            .await
            .unwrap();
        assert!(matches!(
            store.delete_site(&site.id).await,
            Err(StoreError::Conflict { .. })
        ));
        store
            .delete_site(&SiteId::new("site-b4").unwrap())
            .await
            .unwrap();
        assert!(matches!(
            store.delete_site(&SiteId::new("site-b4").unwrap()).await,
            Err(StoreError::NotFound { .. })
        ));
    }

    pub async fn prices(store: S) {
        let start = t("2026-11-27T00:00:00Z");
        let horizon = Horizon::new(start, SlotLength::QUARTER_HOUR, 8).unwrap();
        let import: Vec<f64> = (0..8).map(|i| 0.1 + 0.01 * f64::from(i)).collect();
        let export = vec![-0.02; 8];
        let series = PriceSeries::new(horizon, &import, &export).unwrap();
        assert_eq!(store.put_prices("nl", &series).await.unwrap(), 8);
        let points = store
            .prices("nl", start, t("2026-11-27T01:00:00Z"))
            .await
            .unwrap();
        assert_eq!(points.len(), 4, "[from, to) holds four quarter hours");
        assert_eq!(points[1].start, t("2026-11-27T00:15:00Z"));
        assert_eq!(points[1].slot_seconds, 900);
        assert!((points[3].import - 0.13).abs() < 1e-12);
        assert_eq!(points[0].export, -0.02);

        // Overwriting a slot replaces it.
        let h2 = Horizon::new(t("2026-11-27T00:15:00Z"), SlotLength::QUARTER_HOUR, 1).unwrap();
        store
            .put_prices("nl", &PriceSeries::new(h2, &[9.0], &[1.0]).unwrap())
            .await
            .unwrap();
        let points = store
            .prices("nl", start, t("2026-11-28T00:00:00Z"))
            .await
            .unwrap();
        assert_eq!(points.len(), 8);
        assert_eq!((points[1].import, points[1].export), (9.0, 1.0));
        store
            .put_prices("de", &PriceSeries::new(h2, &[1.0], &[1.0]).unwrap())
            .await
            .unwrap();
        assert_eq!(store.list_price_series().await.unwrap(), ["de", "nl"]);
        assert!(store.prices("fr", start, start).await.unwrap().is_empty());
    }

    pub async fn devices(store: S) {
        let now = t("2026-11-27T00:00:00Z");
        let later = t("2026-11-27T02:00:00Z");
        store
            .upsert_site(&site_record("s1", DEFAULT_TENANT), now)
            .await
            .unwrap();
        store
            .upsert_site(&site_record("s2", "acme"), now)
            .await
            .unwrap();
        let mut d = new_device("bat-1", "s1");
        d.label = Some("garage".into());
        let rec = store.register_device(&d, now).await.unwrap();
        assert_eq!(
            (&rec.id, &rec.site, &rec.spec, rec.label.as_deref()),
            (&d.id, &d.site, &d.spec, Some("garage"))
        );
        assert_eq!(rec.decommissioned_at, None);
        assert!(matches!(
            store.register_device(&d, now).await,
            Err(StoreError::Conflict {
                entity: "device",
                ..
            })
        ));
        assert!(matches!(
            store
                .register_device(&new_device("bat-x", "no-site"), now)
                .await,
            Err(StoreError::NotFound { entity: "site", .. })
        ));
        let mut bad = new_device("bat-y", "s1");
        bad.tenant = String::new();
        assert!(matches!(
            store.register_device(&bad, now).await,
            Err(StoreError::Invalid {
                field: "tenant",
                ..
            })
        ));
        for i in 2..=6 {
            let mut d = new_device(&format!("bat-{i}"), if i % 2 == 0 { "s2" } else { "s1" });
            if i % 2 == 0 {
                d.tenant = "acme".into();
            }
            store.register_device(&d, now).await.unwrap();
        }
        assert_eq!(store.get_device(&d.id).await.unwrap(), rec);

        // Cursor pagination visits every device once, in id order.
        let mut filter = DeviceFilter {
            limit: 4,
            ..Default::default()
        };
        let mut seen = Vec::new();
        loop {
            let page = store.list_devices(&filter).await.unwrap();
            seen.extend(page.items.iter().map(|d| d.id.to_string()));
            match page.next_cursor {
                Some(c) => filter.after = Some(c),
                None => break,
            }
        }
        assert_eq!(seen, ["bat-1", "bat-2", "bat-3", "bat-4", "bat-5", "bat-6"]);
        let acme = store
            .list_devices(&DeviceFilter {
                tenant: Some("acme".into()),
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(acme.items.len(), 3);
        assert!(acme.items.iter().all(|d| d.site.as_str() == "s2"));
        let at_s1 = store
            .list_devices(&DeviceFilter {
                site: Some(SiteId::new("s1").unwrap()),
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(at_s1.items.len(), 3);

        // Updates.
        let upd = store
            .update_device(
                &d.id,
                &DeviceUpdate {
                    site: Some(SiteId::new("s2").unwrap()),
                    label: Some(None),
                    codec: Some(PayloadCodec::Cbor),
                    ..Default::default()
                },
                later,
            )
            .await
            .unwrap();
        assert_eq!(upd.site.as_str(), "s2");
        assert_eq!(upd.label, None);
        assert_eq!(upd.codec, PayloadCodec::Cbor);
        assert_eq!((upd.created_at, upd.updated_at), (now, later));
        assert!(matches!(
            store
                .update_device(
                    &d.id,
                    &DeviceUpdate {
                        site: Some(SiteId::new("gone").unwrap()),
                        ..Default::default()
                    },
                    later
                )
                .await,
            Err(StoreError::NotFound { entity: "site", .. })
        ));
        assert!(matches!(
            store
                .update_device(
                    &DeviceId::new("nobody").unwrap(),
                    &DeviceUpdate::default(),
                    later
                )
                .await,
            Err(StoreError::NotFound {
                entity: "device",
                ..
            })
        ));

        // Decommissioning: idempotent, hides the device, cancels its open schedules.
        store
            .create_schedule(&new_schedule("sch", &d.id, 1, "2026-11-27T00:00:00Z"), now)
            .await
            .unwrap();
        let gone = store.decommission_device(&d.id, later).await.unwrap();
        assert_eq!(gone.decommissioned_at, Some(later));
        let again = store
            .decommission_device(&d.id, t("2026-11-28T00:00:00Z"))
            .await
            .unwrap();
        assert_eq!(again.decommissioned_at, Some(later));
        assert_eq!(
            store
                .get_schedule(&ScheduleId::new("sch").unwrap(), None)
                .await
                .unwrap()
                .state,
            ExecutionState::Cancelled
        );
        assert!(matches!(
            store
                .update_device(&d.id, &DeviceUpdate::default(), later)
                .await,
            Err(StoreError::Conflict { .. })
        ));
        assert!(matches!(
            store
                .create_schedule(&new_schedule("sch2", &d.id, 1, "2026-11-27T00:00:00Z"), now)
                .await,
            Err(StoreError::Conflict { .. })
        ));
        let visible = store
            .list_devices(&DeviceFilter {
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(visible.items.len(), 5);
        let all = store
            .list_devices(&DeviceFilter {
                limit: 100,
                include_decommissioned: true,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(all.items.len(), 6);
    }

    pub async fn status(store: S) {
        let ids = fleet(&*store, "s", "bat", 3).await;
        let t0 = t("2026-11-27T00:00:00Z");
        let report = StatusReport {
            device: ids[0].clone(),
            online: true,
            at: t("2026-11-27T00:01:00Z"),
            agent_version: Some("0.1.0".into()),
            firmware_version: Some("fw-7".into()),
            active_schedule: Some(ScheduleRef {
                id: ScheduleId::new("day").unwrap(),
                version: ScheduleVersion(3),
            }),
            capabilities: vec!["cbor".into(), "signed".into()],
            clock_offset_ms: Some(-12),
        };
        assert!(store.record_status(&report).await.unwrap());
        let mut old = report.clone();
        old.at = t0;
        old.agent_version = Some("old".into());
        assert!(
            !store.record_status(&old).await.unwrap(),
            "older reports are ignored"
        );
        let st = store.device_status(&ids[0]).await.unwrap();
        assert!(st.online);
        assert_eq!(st.agent_version.as_deref(), Some("0.1.0"));
        assert_eq!(st.capabilities, ["cbor", "signed"]);
        assert_eq!(st.clock_offset_ms, Some(-12));
        assert_eq!(st.reported_schedule, report.active_schedule);
        assert_eq!(st.latest_schedule, None);
        assert_eq!(st.last_telemetry, None);
        assert_eq!(store.count_online().await.unwrap(), 1);

        // Offline (e.g. the last will) keeps the last known details.
        let offline = StatusReport {
            device: ids[0].clone(),
            online: false,
            at: t("2026-11-27T00:02:00Z"),
            agent_version: None,
            firmware_version: None,
            active_schedule: None,
            capabilities: vec![],
            clock_offset_ms: None,
        };
        assert!(store.record_status(&offline).await.unwrap());
        let st = store.device_status(&ids[0]).await.unwrap();
        assert!(!st.online);
        assert_eq!(st.status_at, Some(t("2026-11-27T00:02:00Z")));
        assert_eq!(st.agent_version.as_deref(), Some("0.1.0"));
        assert_eq!(store.count_online().await.unwrap(), 0);
        let online_filter = DeviceFilter {
            online: Some(false),
            limit: 10,
            ..Default::default()
        };
        assert_eq!(
            store
                .list_devices(&online_filter)
                .await
                .unwrap()
                .items
                .len(),
            3
        );

        // Live status shows the newest schedule and the last sample.
        store
            .create_schedule(&new_schedule("day", &ids[0], 4, "2026-11-27T00:00:00Z"), t0)
            .await
            .unwrap();
        store
            .insert_telemetry(&[
                (ids[0].clone(), sample("2026-11-27T00:00:10Z", 0.5, 1.0)),
                (ids[0].clone(), sample("2026-11-27T00:00:20Z", 0.51, 1.5)),
            ])
            .await
            .unwrap();
        let st = store.device_status(&ids[0]).await.unwrap();
        assert_eq!(
            st.latest_schedule,
            Some(ScheduleStateRef {
                id: ScheduleId::new("day").unwrap(),
                version: ScheduleVersion(4),
                state: ExecutionState::Queued
            })
        );
        assert_eq!(st.last_telemetry.unwrap().power.kw(), 1.5);
        let ghost = StatusReport {
            device: DeviceId::new("ghost").unwrap(),
            ..offline
        };
        assert!(matches!(
            store.record_status(&ghost).await,
            Err(StoreError::NotFound { .. })
        ));
        assert!(matches!(
            store.device_status(&DeviceId::new("ghost").unwrap()).await,
            Err(StoreError::NotFound { .. })
        ));
    }

    /// A batch of status reports is what the same reports one by one give, in order; an unknown
    /// device fails alone.
    pub async fn status_batches(store: S) {
        let ids = fleet(&*store, "s", "bat", 3).await;
        let report = |i: usize, at: &str, online: bool, version: &str| StatusReport {
            device: ids[i].clone(),
            online,
            at: t(at),
            agent_version: Some(version.into()),
            firmware_version: None,
            active_schedule: None,
            capabilities: vec![],
            clock_offset_ms: None,
        };
        let ghost = StatusReport {
            device: DeviceId::new("ghost").unwrap(),
            ..report(0, "2026-11-27T00:00:00Z", true, "x")
        };
        let batch = [
            report(2, "2026-11-27T00:01:00Z", true, "2.1"),
            report(0, "2026-11-27T00:01:00Z", true, "0.1"),
            ghost,
            // Newer, then older for the same device: the older is ignored.
            report(1, "2026-11-27T00:03:00Z", false, "1.3"),
            report(1, "2026-11-27T00:02:00Z", true, "1.2"),
            report(0, "2026-11-27T00:02:00Z", true, "0.2"),
        ];
        let results = store.record_statuses(&batch).await.unwrap();
        assert_eq!(results.len(), batch.len());
        let applied: Vec<Option<bool>> = results.iter().map(|r| r.as_ref().ok().copied()).collect();
        assert_eq!(
            applied,
            [
                Some(true),
                Some(true),
                None,
                Some(true),
                Some(false),
                Some(true)
            ]
        );
        assert!(matches!(results[2], Err(StoreError::NotFound { .. })));
        let st = |i: usize| {
            let store = store.clone();
            let id = ids[i].clone();
            async move { store.device_status(&id).await.unwrap() }
        };
        assert_eq!(st(0).await.agent_version.as_deref(), Some("0.2"));
        assert_eq!(st(0).await.status_at, Some(t("2026-11-27T00:02:00Z")));
        let one = st(1).await;
        assert!(!one.online, "the newest report (offline) stands");
        assert_eq!(one.status_at, Some(t("2026-11-27T00:03:00Z")));
        assert!(st(2).await.online);
        assert_eq!(store.count_online().await.unwrap(), 2);
        assert!(store.record_statuses(&[]).await.unwrap().is_empty());

        // Each device once (the stores' multi-row path): a stale report is not applied, an
        // unknown device and an invalid report fail alone, the rest is applied in full.
        let detailed = StatusReport {
            firmware_version: Some("fw-9".into()),
            active_schedule: Some(ScheduleRef {
                id: ScheduleId::new("day").unwrap(),
                version: ScheduleVersion(7),
            }),
            capabilities: vec!["cbor".into()],
            clock_offset_ms: Some(-42),
            ..report(2, "2026-11-27T00:04:00Z", true, "2.4")
        };
        let batch = [
            report(0, "2026-11-27T00:01:30Z", true, "0.stale"),
            detailed,
            StatusReport {
                device: DeviceId::new("ghost").unwrap(),
                ..report(0, "2026-11-27T00:04:00Z", true, "x")
            },
            report(1, "2026-11-27T00:04:00Z", true, &"v".repeat(101)),
        ];
        let results = store.record_statuses(&batch).await.unwrap();
        assert!(matches!(results[0], Ok(false)), "{:?}", results[0]);
        assert!(matches!(results[1], Ok(true)), "{:?}", results[1]);
        assert!(matches!(results[2], Err(StoreError::NotFound { .. })));
        assert!(matches!(results[3], Err(StoreError::Invalid { .. })));
        assert_eq!(st(0).await.agent_version.as_deref(), Some("0.2"));
        let two = st(2).await;
        assert_eq!(two.firmware_version.as_deref(), Some("fw-9"));
        assert_eq!(two.capabilities, ["cbor"]);
        assert_eq!(two.clock_offset_ms, Some(-42));
        assert_eq!(
            two.reported_schedule
                .map(|r| (r.id.as_str().to_owned(), r.version)),
            Some(("day".to_owned(), ScheduleVersion(7)))
        );
        assert!(!st(1).await.online, "the invalid report changed nothing");
        // An offline report keeps the last known details; an online one replaces them.
        let results = store
            .record_statuses(&[
                report(2, "2026-11-27T00:05:00Z", false, "ignored"),
                report(1, "2026-11-27T00:05:00Z", true, "1.5"),
            ])
            .await
            .unwrap();
        assert!(results.iter().all(|r| matches!(r, Ok(true))), "{results:?}");
        let two = st(2).await;
        assert!(!two.online);
        assert_eq!(two.status_at, Some(t("2026-11-27T00:05:00Z")));
        assert_eq!(two.agent_version.as_deref(), Some("2.4"));
        assert_eq!(two.firmware_version.as_deref(), Some("fw-9"));
        assert_eq!(two.clock_offset_ms, Some(-42));
        let one = st(1).await;
        assert!(one.online);
        assert_eq!(one.agent_version.as_deref(), Some("1.5"));
        assert_eq!(store.count_online().await.unwrap(), 2);
    }

    pub async fn schedules(store: S) {
        let ids = fleet(&*store, "s", "bat", 2).await;
        let t0 = t("2026-11-27T00:00:00Z");
        let id = ScheduleId::new("day-1").unwrap();
        let v1 = store
            .create_schedule(
                &new_schedule("day-1", &ids[0], 1, "2026-11-27T00:00:00Z"),
                t0,
            )
            .await
            .unwrap();
        assert_eq!(v1.state, ExecutionState::Queued);
        assert_eq!(v1.attempts, 0);
        assert_eq!(v1.correlation_id.as_deref(), Some("req-day-1-1"));
        assert_eq!(
            v1.schedule,
            schedule("day-1", &ids[0], 1, "2026-11-27T00:00:00Z")
        );
        assert_eq!(store.get_schedule(&id, None).await.unwrap(), v1);

        // Versions only grow; an id stays with its device.
        for v in [1, 0] {
            assert!(matches!(
                store
                    .create_schedule(
                        &new_schedule("day-1", &ids[0], v, "2026-11-27T00:00:00Z"),
                        t0
                    )
                    .await,
                Err(StoreError::Conflict { .. })
            ));
        }
        assert!(matches!(
            store
                .create_schedule(
                    &new_schedule("day-1", &ids[1], 9, "2026-11-27T00:00:00Z"),
                    t0
                )
                .await,
            Err(StoreError::Conflict { .. })
        ));
        assert!(matches!(
            store
                .create_schedule(
                    &new_schedule(
                        "x",
                        &DeviceId::new("nobody").unwrap(),
                        1,
                        "2026-11-27T00:00:00Z"
                    ),
                    t0
                )
                .await,
            Err(StoreError::NotFound {
                entity: "device",
                ..
            })
        ));

        // Lifecycle: deliver twice (counts attempts), accept (answer time), refuse bad events.
        let t1 = t("2026-11-27T00:00:01Z");
        let t2 = t("2026-11-27T00:00:03Z");
        let r = store
            .apply_schedule_event(&id, ScheduleVersion(1), LifecycleEvent::Deliver, t1, None)
            .await
            .unwrap();
        assert_eq!(
            (r.state, r.attempts, r.first_sent_at),
            (ExecutionState::Delivered, 1, Some(t1))
        );
        let r = store
            .apply_schedule_event(&id, ScheduleVersion(1), LifecycleEvent::Deliver, t2, None)
            .await
            .unwrap();
        assert_eq!(
            (r.attempts, r.first_sent_at, r.last_sent_at),
            (2, Some(t1), Some(t2))
        );
        let r = store
            .apply_schedule_event(&id, ScheduleVersion(1), LifecycleEvent::Accept, t2, None)
            .await
            .unwrap();
        assert_eq!(
            (r.state, r.answered_at),
            (ExecutionState::Accepted, Some(t2))
        );
        assert!(matches!(
            store
                .apply_schedule_event(&id, ScheduleVersion(1), LifecycleEvent::Reject, t2, None)
                .await,
            Err(StoreError::Conflict { .. })
        ));
        assert!(matches!(
            store
                .apply_schedule_event(&id, ScheduleVersion(7), LifecycleEvent::Accept, t2, None)
                .await,
            Err(StoreError::NotFound { .. })
        ));

        // A new version supersedes the open older one.
        let t3 = t("2026-11-27T00:10:00Z");
        let v2 = store
            .create_schedule(
                &new_schedule("day-1", &ids[0], 2, "2026-11-27T00:00:00Z"),
                t3,
            )
            .await
            .unwrap();
        assert_eq!(v2.schedule.version(), ScheduleVersion(2));
        assert_eq!(
            store
                .get_schedule(&id, Some(ScheduleVersion(1)))
                .await
                .unwrap()
                .state,
            ExecutionState::Superseded
        );
        assert_eq!(store.get_schedule(&id, None).await.unwrap(), v2);
        let open = store.open_schedules(&ids[0]).await.unwrap();
        assert_eq!(open, std::slice::from_ref(&v2));

        // Cancel the newest open version; then there is nothing left to cancel.
        let c = store
            .cancel_schedule(&id, t3, Some("operator"))
            .await
            .unwrap();
        assert_eq!(
            (c.state, c.reason.as_deref(), c.schedule.version()),
            (
                ExecutionState::Cancelled,
                Some("operator"),
                ScheduleVersion(2)
            )
        );
        assert!(matches!(
            store.cancel_schedule(&id, t3, None).await,
            Err(StoreError::Conflict { .. })
        ));
        assert!(matches!(
            store
                .cancel_schedule(&ScheduleId::new("none").unwrap(), t3, None)
                .await,
            Err(StoreError::NotFound { .. })
        ));
        assert!(store.open_schedules(&ids[0]).await.unwrap().is_empty());

        // Listing: newest first, filters, cursor pages without gaps or repeats.
        for i in 0..7u32 {
            let created = t0
                .checked_add(jiff::SignedDuration::from_secs(i64::from(i / 2) * 60))
                .unwrap();
            store
                .create_schedule(
                    &new_schedule(&format!("bulk-{i}"), &ids[1], 1, "2026-11-27T00:00:00Z"),
                    created,
                )
                .await
                .unwrap();
        }
        let mut filter = ScheduleFilter {
            device: Some(ids[1].clone()),
            limit: 3,
            ..Default::default()
        };
        let mut seen = Vec::new();
        loop {
            let page = store.list_schedules(&filter).await.unwrap();
            seen.extend(page.items.iter().map(|r| r.schedule.id().to_string()));
            match page.next_cursor {
                Some(c) => filter.after = Some(c),
                None => break,
            }
        }
        assert_eq!(
            seen,
            [
                "bulk-6", "bulk-5", "bulk-4", "bulk-3", "bulk-2", "bulk-1", "bulk-0"
            ]
        );
        let by_id = store
            .list_schedules(&ScheduleFilter {
                id: Some(id.clone()),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(by_id.items.len(), 2);
        let cancelled = store
            .list_schedules(&ScheduleFilter {
                state: Some(ExecutionState::Cancelled),
                tenant: Some(DEFAULT_TENANT.into()),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(cancelled.items.len(), 1);
        let window = store
            .list_schedules(&ScheduleFilter {
                created_from: Some(t("2026-11-27T00:01:00Z")),
                created_to: Some(t("2026-11-27T00:03:00Z")),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(window.items.len(), 4, "bulk-2..=bulk-5");
        assert!(matches!(
            store
                .list_schedules(&ScheduleFilter {
                    after: Some("garbage".into()),
                    limit: 10,
                    ..Default::default()
                })
                .await,
            Err(StoreError::Invalid { field: "after", .. })
        ));
    }

    pub async fn commands(store: S) {
        let ids = fleet(&*store, "s", "bat", 1).await;
        let t0 = t("2026-11-27T00:00:00Z");
        let new = |id: &str| NewCommand {
            id: id.into(),
            device: ids[0].clone(),
            command: Command::set_power(Power::from_kw(-2.0).unwrap(), Duration::from_secs(600))
                .unwrap(),
            correlation_id: Some("req-1".into()),
            expires_at: t("2026-11-27T00:05:00Z"),
        };
        let c = store.create_command(&new("cmd-1"), t0).await.unwrap();
        assert_eq!(c.state, ExecutionState::Queued);
        assert_eq!(c.command, new("cmd-1").command);
        assert!(matches!(
            store.create_command(&new("cmd-1"), t0).await,
            Err(StoreError::Conflict { .. })
        ));
        let mut ghost = new("cmd-g");
        ghost.device = DeviceId::new("ghost").unwrap();
        assert!(matches!(
            store.create_command(&ghost, t0).await,
            Err(StoreError::NotFound { .. })
        ));
        let r = store
            .apply_command_event("cmd-1", LifecycleEvent::Deliver, t0, None)
            .await
            .unwrap();
        assert_eq!((r.state, r.attempts), (ExecutionState::Delivered, 1));
        let r = store
            .apply_command_event(
                "cmd-1",
                LifecycleEvent::Start,
                t("2026-11-27T00:00:01Z"),
                None,
            )
            .await
            .unwrap();
        assert_eq!(r.state, ExecutionState::Executing);
        assert_eq!(r.answered_at, Some(t("2026-11-27T00:00:01Z")));
        assert!(matches!(
            store
                .apply_command_event("cmd-1", LifecycleEvent::Accept, t0, None)
                .await,
            Err(StoreError::Conflict { .. })
        ));
        for i in 2..=5 {
            store
                .create_command(&new(&format!("cmd-{i}")), t0)
                .await
                .unwrap();
        }
        let mut filter = CommandFilter {
            device: Some(ids[0].clone()),
            limit: 2,
            ..Default::default()
        };
        let mut seen = Vec::new();
        loop {
            let page = store.list_commands(&filter).await.unwrap();
            seen.extend(page.items.iter().map(|c| c.id.clone()));
            match page.next_cursor {
                Some(c) => filter.after = Some(c),
                None => break,
            }
        }
        assert_eq!(seen, ["cmd-5", "cmd-4", "cmd-3", "cmd-2", "cmd-1"]);
        let executing = store
            .list_commands(&CommandFilter {
                state: Some(ExecutionState::Executing),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(executing.items.len(), 1);
        assert_eq!(store.get_command("cmd-1").await.unwrap(), r);
        assert!(matches!(
            store.get_command("none").await,
            Err(StoreError::NotFound { .. })
        ));
        assert!(matches!(
            store
                .apply_command_event("cmd-none", LifecycleEvent::Deliver, t0, None)
                .await,
            Err(StoreError::NotFound { .. })
        ));
        // A terminal state takes no event, not even those that apply to every other state.
        let r = store
            .apply_command_event("cmd-1", LifecycleEvent::Complete, t0, Some("done"))
            .await
            .unwrap();
        assert_eq!(
            (r.state, r.reason.as_deref()),
            (ExecutionState::Completed, Some("done"))
        );
        for event in [
            LifecycleEvent::Supersede,
            LifecycleEvent::Cancel,
            LifecycleEvent::Fail,
        ] {
            assert!(matches!(
                store.apply_command_event("cmd-1", event, t0, None).await,
                Err(StoreError::Conflict { .. })
            ));
        }
    }

    /// Marks version 1 of schedule `id` delivered (sent) at `at`.
    async fn deliver_v1(store: &dyn Store, id: &ScheduleId, at: Timestamp) {
        store
            .apply_schedule_event(id, ScheduleVersion(1), LifecycleEvent::Deliver, at, None)
            .await
            .unwrap();
    }

    fn ack(
        id: &str,
        device: &DeviceId,
        target: AckTarget,
        state: ExecutionState,
        at: &str,
    ) -> AckRecord {
        AckRecord {
            message_id: id.into(),
            device: device.clone(),
            target,
            state,
            reason_code: None,
            reason: None,
            sent_at: t(at),
            received_at: t(at),
        }
    }

    /// A device's schedule in force follows its `executing` acks and the terminal ack that ends
    /// that schedule, one by one and in batches, and whichever of a status and an ack is newer
    /// wins (statuses and acks are handled apart, possibly out of order).
    pub async fn schedule_in_force_from_acks(store: S) {
        use ExecutionState as S;
        let ids = fleet(&*store, "s", "bat", 2).await;
        let t0 = t("2026-11-27T00:00:00Z");
        let target = |name: &str| AckTarget::Schedule {
            id: ScheduleId::new(name).unwrap(),
            version: ScheduleVersion(1),
        };
        let sref = |name: &str| ScheduleRef {
            id: ScheduleId::new(name).unwrap(),
            version: ScheduleVersion(1),
        };
        for (n, d) in ids.iter().enumerate() {
            for name in ["a", "b", "c"] {
                let id = format!("{name}{n}");
                store
                    .create_schedule(&new_schedule(&id, d, 1, "2026-11-27T00:00:00Z"), t0)
                    .await
                    .unwrap();
                deliver_v1(&*store, &ScheduleId::new(&id).unwrap(), t0).await;
            }
        }
        let status =
            |d: &DeviceId, at: &str, active: Option<ScheduleRef>, version: &str| StatusReport {
                device: d.clone(),
                online: true,
                at: t(at),
                agent_version: Some(version.into()),
                firmware_version: None,
                active_schedule: active,
                capabilities: vec![],
                clock_offset_ms: None,
            };
        let in_force = |d: DeviceId| {
            let store = store.clone();
            async move { store.device_status(&d).await.unwrap().reported_schedule }
        };

        // One by one.
        let d = &ids[0];
        assert!(
            store
                .record_status(&status(d, "2026-11-27T00:00:30Z", None, "v1"))
                .await
                .unwrap()
        );
        let started = ack("x-1", d, target("a0"), S::Executing, "2026-11-27T00:01:00Z");
        store.record_ack(&started).await.unwrap();
        assert_eq!(
            in_force(d.clone()).await,
            Some(sref("a0")),
            "executing names it"
        );
        // A status sent before that ack but handled after it: its other details apply, its
        // schedule in force does not.
        assert!(
            store
                .record_status(&status(d, "2026-11-27T00:00:45Z", None, "v2"))
                .await
                .unwrap()
        );
        let st = store.device_status(d).await.unwrap();
        assert_eq!(
            (st.reported_schedule, st.agent_version.as_deref()),
            (Some(sref("a0")), Some("v2"))
        );
        let b_started = ack("x-2", d, target("b0"), S::Executing, "2026-11-27T00:02:00Z");
        let a_ended = ack(
            "x-3",
            d,
            target("a0"),
            S::Superseded,
            "2026-11-27T00:02:00Z",
        );
        store.record_ack(&b_started).await.unwrap();
        store.record_ack(&a_ended).await.unwrap();
        assert_eq!(
            in_force(d.clone()).await,
            Some(sref("b0")),
            "another schedule's end leaves it"
        );
        store
            .record_ack(&ack(
                "x-4",
                d,
                target("b0"),
                S::Completed,
                "2026-11-27T00:03:00Z",
            ))
            .await
            .unwrap();
        assert_eq!(in_force(d.clone()).await, None, "its own end clears it");
        assert!(
            store
                .record_status(&status(d, "2026-11-27T00:04:00Z", Some(sref("b0")), "v2"))
                .await
                .unwrap()
        );
        assert_eq!(
            in_force(d.clone()).await,
            Some(sref("b0")),
            "a newer status wins"
        );

        // In batches, in arrival order within the batch.
        let d = &ids[1];
        let batch = [
            ack("y-1", d, target("a1"), S::Executing, "2026-11-27T00:01:00Z"),
            ack("y-2", d, target("b1"), S::Executing, "2026-11-27T00:02:00Z"),
            ack(
                "y-3",
                d,
                target("a1"),
                S::Superseded,
                "2026-11-27T00:02:00Z",
            ),
        ];
        for r in store.record_acks(&batch).await.unwrap() {
            assert!(matches!(r, Ok(AckOutcome::Applied { .. })), "{r:?}");
        }
        assert_eq!(in_force(d.clone()).await, Some(sref("b1")));
        store
            .record_acks(&[ack(
                "y-4",
                d,
                target("b1"),
                S::Completed,
                "2026-11-27T00:03:00Z",
            )])
            .await
            .unwrap();
        assert_eq!(in_force(d.clone()).await, None);
        // An older ack than the recorded report changes nothing.
        assert!(
            store
                .record_status(&status(d, "2026-11-27T00:05:00Z", Some(sref("a1")), "v1"))
                .await
                .unwrap()
        );
        store
            .record_acks(&[ack(
                "y-5",
                d,
                target("c1"),
                S::Executing,
                "2026-11-27T00:04:00Z",
            )])
            .await
            .unwrap();
        assert_eq!(in_force(d.clone()).await, Some(sref("a1")));
    }

    pub async fn acks(store: S) {
        let ids = fleet(&*store, "s", "bat", 2).await;
        let t0 = t("2026-11-27T00:00:00Z");
        store
            .create_schedule(&new_schedule("day", &ids[0], 1, "2026-11-27T00:00:00Z"), t0)
            .await
            .unwrap();
        let id = ScheduleId::new("day").unwrap();
        deliver_v1(&*store, &id, t0).await;
        let target = AckTarget::Schedule {
            id: id.clone(),
            version: ScheduleVersion(1),
        };
        use ExecutionState as S;
        let a1 = ack(
            "a-1",
            &ids[0],
            target.clone(),
            S::Accepted,
            "2026-11-27T00:00:02Z",
        );
        assert_eq!(
            store.record_ack(&a1).await.unwrap(),
            AckOutcome::Applied {
                from: S::Delivered,
                state: S::Accepted
            }
        );
        // The same message again, and another message with the same state: duplicates.
        assert_eq!(
            store.record_ack(&a1).await.unwrap(),
            AckOutcome::Duplicate { state: S::Accepted }
        );
        let a1b = ack(
            "a-1b",
            &ids[0],
            target.clone(),
            S::Accepted,
            "2026-11-27T00:00:03Z",
        );
        assert_eq!(
            store.record_ack(&a1b).await.unwrap(),
            AckOutcome::Duplicate { state: S::Accepted }
        );
        let rec = store.get_schedule(&id, None).await.unwrap();
        assert_eq!(
            rec.answered_at,
            Some(t("2026-11-27T00:00:02Z")),
            "first answer kept"
        );
        let a2 = ack(
            "a-2",
            &ids[0],
            target.clone(),
            S::Executing,
            "2026-11-27T00:00:04Z",
        );
        assert!(matches!(
            store.record_ack(&a2).await.unwrap(),
            AckOutcome::Applied {
                state: S::Executing,
                ..
            }
        ));
        // A late "accepted" after "executing" is kept but changes nothing.
        let late = ack(
            "a-0",
            &ids[0],
            target.clone(),
            S::Accepted,
            "2026-11-27T00:00:01Z",
        );
        assert_eq!(
            store.record_ack(&late).await.unwrap(),
            AckOutcome::Ignored {
                state: S::Executing
            }
        );
        // Another device's ack, and an ack for nothing.
        let wrong = ack(
            "a-9",
            &ids[1],
            target.clone(),
            S::Completed,
            "2026-11-27T00:00:05Z",
        );
        assert!(matches!(
            store.record_ack(&wrong).await,
            Err(StoreError::Invalid {
                field: "device",
                ..
            })
        ));
        let nothing = ack(
            "a-10",
            &ids[0],
            AckTarget::Schedule {
                id: id.clone(),
                version: ScheduleVersion(5),
            },
            S::Accepted,
            "2026-11-27T00:00:05Z",
        );
        assert!(matches!(
            store.record_ack(&nothing).await,
            Err(StoreError::NotFound { .. })
        ));
        let mut failed = ack(
            "a-3",
            &ids[0],
            target.clone(),
            S::Failed,
            "2026-11-27T00:00:06Z",
        );
        failed.reason_code = Some("safety_limit".into());
        failed.reason = Some("over temperature".into());
        assert!(matches!(
            store.record_ack(&failed).await.unwrap(),
            AckOutcome::Applied {
                state: S::Failed,
                ..
            }
        ));
        let rec = store.get_schedule(&id, None).await.unwrap();
        assert_eq!(
            (rec.state, rec.reason.as_deref()),
            (S::Failed, Some("over temperature"))
        );
        let listed = store.list_acks(&target).await.unwrap();
        let order: Vec<&str> = listed.iter().map(|a| a.message_id.as_str()).collect();
        assert_eq!(order, ["a-1", "a-1b", "a-2", "a-0", "a-3"], "arrival order");
        assert_eq!(listed[4].reason_code.as_deref(), Some("safety_limit"));
        assert_eq!(listed[0], a1);

        // Command acks.
        store
            .create_command(
                &NewCommand {
                    id: "cmd".into(),
                    device: ids[0].clone(),
                    command: Command::Idle,
                    correlation_id: None,
                    expires_at: t("2026-11-27T01:00:00Z"),
                },
                t0,
            )
            .await
            .unwrap();
        let ct = AckTarget::Command { id: "cmd".into() };
        let c1 = ack(
            "c-1",
            &ids[0],
            ct.clone(),
            S::Completed,
            "2026-11-27T00:00:02Z",
        );
        assert!(
            matches!(
                store.record_ack(&c1).await,
                Ok(AckOutcome::Ignored { state: S::Queued })
            ),
            "completed needs a delivery first"
        );
        store
            .apply_command_event("cmd", LifecycleEvent::Deliver, t0, None)
            .await
            .unwrap();
        let c2 = ack(
            "c-2",
            &ids[0],
            ct.clone(),
            S::Completed,
            "2026-11-27T00:00:03Z",
        );
        assert!(matches!(
            store.record_ack(&c2).await.unwrap(),
            AckOutcome::Applied {
                state: S::Completed,
                ..
            }
        ));
        assert_eq!(store.get_command("cmd").await.unwrap().state, S::Completed);
        assert_eq!(store.list_acks(&ct).await.unwrap().len(), 2);
    }

    /// Many concurrent acks for one schedule (as from several server replicas): every state
    /// change is applied exactly once and none is lost.
    pub async fn concurrent_acks(store: S) {
        let ids = fleet(&*store, "s", "bat", 1).await;
        let t0 = t("2026-11-27T00:00:00Z");
        let mut handles = Vec::new();
        for n in 0..10 {
            store
                .create_schedule(
                    &new_schedule(&format!("c{n}"), &ids[0], 1, "2026-11-27T00:00:00Z"),
                    t0,
                )
                .await
                .unwrap();
        }
        for n in 0..10 {
            for (k, state) in [ExecutionState::Accepted, ExecutionState::Executing]
                .into_iter()
                .cycle()
                .take(6)
                .enumerate()
            {
                let store = store.clone();
                let device = ids[0].clone();
                handles.push(tokio::spawn(async move {
                    let target = AckTarget::Schedule {
                        id: ScheduleId::new(format!("c{n}")).unwrap(),
                        version: ScheduleVersion(1),
                    };
                    let a = ack(
                        &format!("m-{n}-{k}"),
                        &device,
                        target,
                        state,
                        "2026-11-27T00:00:01Z",
                    );
                    store.record_ack(&a).await.unwrap()
                }));
            }
        }
        let mut applied = 0;
        for h in handles {
            if matches!(h.await.unwrap(), AckOutcome::Applied { .. }) {
                applied += 1;
            }
        }
        for n in 0..10 {
            let r = store
                .get_schedule(&ScheduleId::new(format!("c{n}")).unwrap(), None)
                .await
                .unwrap();
            assert_eq!(r.state, ExecutionState::Executing, "c{n}");
            let acks = store
                .list_acks(&AckTarget::Schedule {
                    id: ScheduleId::new(format!("c{n}")).unwrap(),
                    version: ScheduleVersion(1),
                })
                .await
                .unwrap();
            assert_eq!(acks.len(), 6, "every ack recorded once");
        }
        // Per schedule: queued→executing directly, or queued→accepted→executing.
        assert!((10..=20).contains(&applied), "{applied}");
    }

    pub async fn telemetry(store: S) {
        let ids = fleet(&*store, "s", "bat", 2).await;
        let other = fleet(&*store, "s-other", "far", 1).await;
        let mut batch = Vec::new();
        // Device 0: one sample a minute for 30 min, charging 2 kW then discharging 4 kW.
        for m in 0..30 {
            let p = if m < 15 { 2.0 } else { -4.0 };
            batch.push((
                ids[0].clone(),
                sample(
                    &format!("2026-11-27T10:{m:02}:00Z"),
                    0.5 + f64::from(m) * 0.001,
                    p,
                ),
            ));
        }
        // Device 1: 1 kW throughout; device `far` on another site.
        for m in 0..30 {
            batch.push((
                ids[1].clone(),
                sample(&format!("2026-11-27T10:{m:02}:30Z"), 0.2, 1.0),
            ));
            batch.push((
                other[0].clone(),
                sample(&format!("2026-11-27T10:{m:02}:30Z"), 0.9, -1.0),
            ));
        }
        let mut alarm = sample("2026-11-27T10:29:59Z", 0.6, 0.0);
        alarm.alarms = Alarms::OVER_TEMPERATURE.union(Alarms::FULLY_CHARGED);
        alarm.temperature = Temperature::from_celsius(61.0).unwrap();
        batch.push((ids[0].clone(), alarm));
        assert_eq!(store.insert_telemetry(&batch).await.unwrap(), 91);
        assert_eq!(
            store.insert_telemetry(&batch[..5]).await.unwrap(),
            0,
            "duplicates are skipped"
        );
        assert_eq!(store.insert_telemetry(&[]).await.unwrap(), 0);

        let q = TelemetryQuery {
            device: ids[0].clone(),
            from: t("2026-11-27T10:10:00Z"),
            to: t("2026-11-27T10:20:00Z"),
            limit: 1000,
        };
        let raw = store.telemetry(&q).await.unwrap();
        assert_eq!(raw.len(), 10);
        assert_eq!(raw[0], batch[10].1, "samples round-trip");
        assert!(raw.windows(2).all(|w| w[0].at < w[1].at));
        let limited = store
            .telemetry(&TelemetryQuery {
                limit: 3,
                ..q.clone()
            })
            .await
            .unwrap();
        assert_eq!(limited.len(), 3);
        assert!(matches!(
            store.telemetry(&TelemetryQuery { limit: 0, ..q }).await,
            Err(StoreError::Invalid { .. })
        ));
        assert_eq!(store.last_telemetry(&ids[0]).await.unwrap(), Some(alarm));

        // 10-minute buckets for device 0.
        let bq = BucketQuery {
            scope: TelemetryScope::Device(ids[0].clone()),
            from: t("2026-11-27T10:00:00Z"),
            to: t("2026-11-27T11:00:00Z"),
            bucket_seconds: 600,
        };
        let b = store.telemetry_buckets(&bq).await.unwrap();
        assert_eq!(b.len(), 3);
        assert_eq!(b[0].start, t("2026-11-27T10:00:00Z"));
        assert_eq!((b[0].devices, b[0].samples), (1, 10));
        assert!((b[0].power_kw - 2.0).abs() < 1e-9);
        assert!((b[0].charge_kw - 2.0).abs() < 1e-9 && b[0].discharge_kw.abs() < 1e-9);
        // 10:10–10:20 holds 5 minutes at +2 and 5 at -4.
        assert!((b[1].power_kw - (-1.0)).abs() < 1e-9, "{}", b[1].power_kw);
        assert!((b[1].charge_kw - 1.0).abs() < 1e-9);
        assert!((b[1].discharge_kw - 2.0).abs() < 1e-9);
        assert_eq!((b[1].power_min_kw, b[1].power_max_kw), (-4.0, 2.0));
        assert!((b[1].soc_min - 0.51).abs() < 1e-9 && (b[1].soc_max - 0.519).abs() < 1e-9);
        assert_eq!(b[2].samples, 11);
        assert_eq!(b[2].critical_alarm_samples, 1);
        assert_eq!(b[2].temperature_max_c, 61.0);
        assert_eq!(b[0].critical_alarm_samples, 0);

        // Site scope adds the devices' mean powers; fleet adds the other site too.
        let site = store
            .telemetry_buckets(&BucketQuery {
                scope: TelemetryScope::Site(SiteId::new("s").unwrap()),
                ..bq.clone()
            })
            .await
            .unwrap();
        assert_eq!(site[0].devices, 2);
        assert!((site[0].power_kw - 3.0).abs() < 1e-9);
        assert!((site[0].soc_mean - (0.5045 + 0.2) / 2.0).abs() < 1e-9);
        let fleet = store
            .telemetry_buckets(&BucketQuery {
                scope: TelemetryScope::Fleet,
                bucket_seconds: 3600,
                ..bq.clone()
            })
            .await
            .unwrap();
        assert_eq!(fleet.len(), 1);
        assert_eq!((fleet[0].devices, fleet[0].samples), (3, 91));
        let tenant = store
            .telemetry_buckets(&BucketQuery {
                scope: TelemetryScope::Tenant("nobody".into()),
                ..bq.clone()
            })
            .await
            .unwrap();
        assert!(tenant.is_empty());
        for bad in [
            BucketQuery {
                bucket_seconds: 0,
                ..bq.clone()
            },
            BucketQuery {
                bucket_seconds: 1,
                to: t("2027-11-27T10:00:00Z"),
                ..bq.clone()
            },
            BucketQuery {
                to: bq.from,
                ..bq.clone()
            },
        ] {
            assert!(matches!(
                store.telemetry_buckets(&bad).await,
                Err(StoreError::Invalid { .. })
            ));
        }

        // A large batch goes through in chunks.
        let big: Vec<_> = (0..2500)
            .map(|i| {
                let at = t("2026-11-28T00:00:00Z")
                    .checked_add(jiff::SignedDuration::from_secs(i))
                    .unwrap();
                let mut s = sample("2026-11-28T00:00:00Z", 0.5, 0.5);
                s.at = at;
                (ids[1].clone(), s)
            })
            .collect();
        assert_eq!(store.insert_telemetry(&big).await.unwrap(), 2500);
    }

    /// A delivery state without messages of its own (saved whole).
    fn whole(
        device: &DeviceId,
        state: &str,
        next_wakeup_at: Option<Timestamp>,
        expected_revision: Option<u64>,
    ) -> OutboxWrite {
        OutboxWrite {
            device: device.clone(),
            state: state.to_owned(),
            messages: None,
            next_wakeup_at,
            expected_revision,
        }
    }

    pub async fn outbox(store: S) {
        let ids = fleet(&*store, "s", "bat", 3).await;
        let t0 = t("2026-11-27T00:00:00Z");
        let due = t("2026-11-27T00:00:05Z");
        assert_eq!(store.outbox_load(&ids[0]).await.unwrap(), None);
        assert_eq!(
            store
                .outbox_save(&whole(&ids[0], "{\"a\":1}", Some(due), None), t0)
                .await
                .unwrap(),
            1
        );
        assert!(matches!(
            store
                .outbox_save(&whole(&ids[0], "{}", None, None), t0)
                .await,
            Err(StoreError::Conflict { .. })
        ));
        let rec = store.outbox_load(&ids[0]).await.unwrap().unwrap();
        assert_eq!(
            (rec.state.as_str(), rec.next_wakeup_at, rec.revision),
            ("{\"a\":1}", Some(due), 1)
        );
        assert_eq!(
            store
                .outbox_save(&whole(&ids[0], "{\"a\":2}", Some(due), Some(1)), t0)
                .await
                .unwrap(),
            2
        );
        assert!(
            matches!(
                store
                    .outbox_save(&whole(&ids[0], "{\"a\":3}", None, Some(1)), t0)
                    .await,
                Err(StoreError::Conflict { .. })
            ),
            "a stale revision loses"
        );
        store
            .outbox_save(
                &whole(&ids[1], "{\"b\":1}", Some(t("2026-11-27T00:00:02Z")), None),
                t0,
            )
            .await
            .unwrap();
        store
            .outbox_save(&whole(&ids[2], "{\"idle\":1}", None, None), t0)
            .await
            .unwrap();
        assert_eq!(store.outbox_pending().await.unwrap(), 2);
        // The pages a resync walks: devices with a wakeup, in id order, after a cursor.
        let open = |after: Option<usize>, limit: u32| {
            let store = store.clone();
            let after = after.map(|i| ids[i].clone());
            async move {
                store
                    .outbox_open_devices(after.as_ref(), limit)
                    .await
                    .map(|v| v.iter().map(ToString::to_string).collect::<Vec<_>>())
            }
        };
        let (first, second) = (ids[0].to_string(), ids[1].to_string());
        let mut both = vec![first.clone(), second.clone()];
        both.sort();
        assert_eq!(open(None, 10).await.unwrap(), both);
        assert_eq!(open(None, 1).await.unwrap(), both[..1]);
        let after_first = if first < second { 0 } else { 1 };
        assert_eq!(open(Some(after_first), 10).await.unwrap(), both[1..]);
        assert!(open(Some(1 - after_first), 10).await.unwrap().is_empty());
        assert!(matches!(
            open(None, 0).await,
            Err(StoreError::Invalid { field: "limit", .. })
        ));

        // Claims: nothing due yet; then both, earliest first; a second replica gets none.
        let lease = Duration::from_secs(30);
        assert!(
            store
                .outbox_claim_due(t0, "r1", lease, 10)
                .await
                .unwrap()
                .is_empty()
        );
        let got = store.outbox_claim_due(due, "r1", lease, 10).await.unwrap();
        let order: Vec<_> = got.iter().map(|r| r.device.to_string()).collect();
        assert_eq!(order, ["bat-1", "bat-0"]);
        assert!(
            store
                .outbox_claim_due(due, "r2", lease, 10)
                .await
                .unwrap()
                .is_empty()
        );
        // After the lease runs out another replica may take over.
        let after = t("2026-11-27T00:01:00Z");
        assert_eq!(
            store
                .outbox_claim_due(after, "r2", lease, 1)
                .await
                .unwrap()
                .len(),
            1
        );
        // Saving clears the claim.
        store
            .outbox_save(&whole(&ids[0], "{\"a\":4}", Some(due), Some(2)), after)
            .await
            .unwrap();
        let again = store
            .outbox_claim_due(after, "r3", lease, 10)
            .await
            .unwrap();
        assert!(again.iter().any(|r| r.device == ids[0] && r.revision == 3));

        // Messages saved apart: replaced when given, kept when not.
        let with = |state: &str, messages: Option<&str>, revision| OutboxWrite {
            messages: messages.map(str::to_owned),
            ..whole(&ids[0], state, Some(due), Some(revision))
        };
        assert_eq!(
            store
                .outbox_save(&with("{\"a\":5}", Some("[\"m1\"]"), 3), after)
                .await
                .unwrap(),
            4
        );
        store
            .outbox_save(&with("{\"a\":6}", None, 4), after)
            .await
            .unwrap();
        let rec = store.outbox_load(&ids[0]).await.unwrap().unwrap();
        assert_eq!(
            (rec.state.as_str(), rec.messages.as_deref(), rec.revision),
            ("{\"a\":6}", Some("[\"m1\"]"), 5)
        );
        store
            .outbox_save(&with("{\"a\":7}", Some("[]"), 5), after)
            .await
            .unwrap();
        let rec = store.outbox_load(&ids[0]).await.unwrap().unwrap();
        assert_eq!(rec.messages.as_deref(), Some("[]"));
        assert_eq!(
            store.outbox_load(&ids[2]).await.unwrap().unwrap().messages,
            None
        );

        // A restarted store sees the same state; decommissioning drops it.
        store.decommission_device(&ids[0], after).await.unwrap();
        assert_eq!(store.outbox_load(&ids[0]).await.unwrap(), None);
    }

    /// Three devices, each with a delivered schedule `day-<i>` version 1 (stored at `t0`), and the
    /// ack targets of those schedules.
    async fn three_delivered(store: &S, t0: Timestamp) -> (Vec<DeviceId>, Vec<AckTarget>) {
        let ids = fleet(&**store, "s", "bat", 3).await;
        let mut targets = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let name = format!("day-{i}");
            store
                .create_schedule(&new_schedule(&name, id, 1, "2026-11-27T00:00:00Z"), t0)
                .await
                .unwrap();
            let sid = ScheduleId::new(&name).unwrap();
            deliver_v1(&**store, &sid, t0).await;
            targets.push(AckTarget::Schedule {
                id: sid,
                version: ScheduleVersion(1),
            });
        }
        (ids, targets)
    }

    /// The batch methods behave exactly like their one-at-a-time counterparts.
    pub async fn batches(store: S) {
        use ExecutionState as St;
        let t0 = t("2026-11-27T00:00:00Z");
        let (ids, targets) = three_delivered(&store, t0).await;
        let at = "2026-11-27T00:00:02Z";
        let batch = vec![
            ack("b-0", &ids[0], targets[0].clone(), St::Accepted, at),
            // Two answers of one device in one batch: applied in order.
            ack("b-1", &ids[1], targets[1].clone(), St::Accepted, at),
            ack("b-2", &ids[1], targets[1].clone(), St::Executing, at),
            // The same message twice in one batch: the second is a duplicate.
            ack("b-0", &ids[0], targets[0].clone(), St::Accepted, at),
            // Another device's schedule: refused, and the rest of the batch still counts.
            ack("b-3", &ids[2], targets[0].clone(), St::Accepted, at),
            // An unknown target: not found.
            ack(
                "b-4",
                &ids[2],
                AckTarget::Command { id: "none".into() },
                St::Accepted,
                at,
            ),
        ];
        let out = store.record_acks(&batch).await.unwrap();
        assert_eq!(out.len(), batch.len());
        assert!(matches!(
            out[0],
            Ok(AckOutcome::Applied {
                state: St::Accepted,
                ..
            })
        ));
        assert!(matches!(
            out[1],
            Ok(AckOutcome::Applied {
                state: St::Accepted,
                ..
            })
        ));
        assert!(matches!(
            out[2],
            Ok(AckOutcome::Applied {
                from: St::Accepted,
                state: St::Executing
            })
        ));
        assert!(matches!(
            out[3],
            Ok(AckOutcome::Duplicate {
                state: St::Accepted
            })
        ));
        assert!(
            matches!(out[4], Err(StoreError::Invalid { .. })),
            "{:?}",
            out[4]
        );
        assert!(
            matches!(out[5], Err(StoreError::NotFound { .. })),
            "{:?}",
            out[5]
        );
        let s0 = store
            .get_schedule(&ScheduleId::new("day-0").unwrap(), None)
            .await
            .unwrap();
        let s1 = store
            .get_schedule(&ScheduleId::new("day-1").unwrap(), None)
            .await
            .unwrap();
        let s2 = store
            .get_schedule(&ScheduleId::new("day-2").unwrap(), None)
            .await
            .unwrap();
        assert_eq!(
            (s0.state, s1.state, s2.state),
            (St::Accepted, St::Executing, St::Delivered)
        );
        assert_eq!(store.list_acks(&targets[0]).await.unwrap().len(), 1);
        assert_eq!(store.list_acks(&targets[1]).await.unwrap().len(), 2);
        assert!(store.record_acks(&[]).await.unwrap().is_empty());

        // Delivery states: several loaded and saved at once, a stale revision losing alone.
        assert!(store.outbox_load_many(&ids).await.unwrap().is_empty());
        let writes: Vec<OutboxWrite> = ids
            .iter()
            .map(|d| OutboxWrite {
                device: d.clone(),
                state: format!("{{\"d\":\"{d}\"}}"),
                messages: Some(format!("[\"{d}\"]")),
                next_wakeup_at: None,
                expected_revision: None,
            })
            .collect();
        let saved = store.outbox_save_many(&writes, t0).await.unwrap();
        assert!(saved.iter().all(|r| matches!(r, Ok(1))), "{saved:?}");
        let mut loaded = store.outbox_load_many(&ids).await.unwrap();
        loaded.sort_by(|a, b| a.device.as_str().cmp(b.device.as_str()));
        assert_eq!(loaded.len(), 3);
        for (rec, d) in loaded.iter().zip(&ids) {
            assert_eq!(rec, &store.outbox_load(d).await.unwrap().unwrap());
        }
        let again = vec![
            OutboxWrite {
                expected_revision: Some(1),
                state: "{\"v\":2}".into(),
                messages: None,
                ..writes[0].clone()
            },
            OutboxWrite {
                expected_revision: Some(7),
                ..writes[1].clone()
            },
            OutboxWrite {
                expected_revision: None,
                ..writes[2].clone()
            },
        ];
        let saved = store.outbox_save_many(&again, t0).await.unwrap();
        assert!(matches!(saved[0], Ok(2)), "{saved:?}");
        assert!(
            matches!(saved[1], Err(StoreError::Conflict { .. })),
            "{saved:?}"
        );
        assert!(
            matches!(saved[2], Err(StoreError::Conflict { .. })),
            "{saved:?}"
        );
        let first = store.outbox_load(&ids[0]).await.unwrap().unwrap();
        assert_eq!((first.state.as_str(), first.revision), ("{\"v\":2}", 2));
        // Messages not given are kept; given ones replace them.
        assert_eq!(first.messages.as_deref(), Some("[\"bat-0\"]"));
        let third = vec![OutboxWrite {
            expected_revision: Some(2),
            messages: Some("[]".into()),
            ..writes[0].clone()
        }];
        assert!(matches!(
            store.outbox_save_many(&third, t0).await.unwrap()[..],
            [Ok(3)]
        ));
        let first = store.outbox_load(&ids[0]).await.unwrap().unwrap();
        assert_eq!(first.messages.as_deref(), Some("[]"));
        assert_eq!(
            store.outbox_load(&ids[1]).await.unwrap().unwrap().revision,
            1
        );
    }

    /// `record_acks_and_save` records like `record_acks`, hands `then` every outcome and the
    /// states of the devices asked for, and saves what `then` returns (a stale revision losing
    /// alone); a refused ack leaves the rest of the batch standing. A state that is exactly the
    /// one the caller names as known comes without its messages (and keeps them when saved);
    /// any other comes whole.
    pub async fn acks_and_states_in_one_transaction(store: S) {
        use ExecutionState as St;
        let t0 = t("2026-11-27T00:00:00Z");
        let (ids, targets) = three_delivered(&store, t0).await;
        for id in &ids[..2] {
            let write = OutboxWrite {
                device: id.clone(),
                state: format!("{{\"d\":\"{id}\"}}"),
                messages: Some("[\"m\"]".into()),
                next_wakeup_at: Some(t0),
                expected_revision: None,
            };
            store.outbox_save(&write, t0).await.unwrap();
        }
        let at = "2026-11-27T00:00:02Z";
        let batch = vec![
            ack("c-0", &ids[0], targets[0].clone(), St::Accepted, at),
            ack("c-1", &ids[1], targets[1].clone(), St::Accepted, at),
            // Another device's schedule: refused.
            ack("c-2", &ids[2], targets[0].clone(), St::Accepted, at),
        ];
        let mut seen = Vec::new();
        let mut then = |outcomes: &[StoreResult<AckOutcome>], states: &[OutboxRecord]| {
            assert_eq!(outcomes.len(), 3);
            let mut states: Vec<OutboxRecord> = states.to_vec();
            states.sort_by(|a, b| a.device.as_str().cmp(b.device.as_str()));
            seen = states.clone();
            states
                .iter()
                .map(|r| OutboxWrite {
                    device: r.device.clone(),
                    state: "{\"acked\":1}".into(),
                    messages: None,
                    next_wakeup_at: None,
                    // The second device's save loses (a stale revision).
                    expected_revision: Some(if r.device == ids[1] { 9 } else { r.revision }),
                })
                .collect()
        };
        // The first device's state as saved, the second's as it no longer is, the third's none;
        // the first device named twice.
        let reads: Vec<OutboxRead> = [
            (&ids[1], Some("{\"d\":\"stale\"}".to_owned())),
            (&ids[0], Some(format!("{{\"d\":\"{}\"}}", ids[0]))),
            (&ids[2], None),
            (&ids[0], Some(format!("{{\"d\":\"{}\"}}", ids[0]))),
        ]
        .into_iter()
        .map(|(device, known_state)| OutboxRead {
            device: device.clone(),
            known_state,
        })
        .collect();
        let done = store
            .record_acks_and_save(&batch, &reads, &mut then, t0)
            .await
            .unwrap();
        // Only the devices with a saved state were read (the third has none), each once.
        assert_eq!(
            seen.iter().map(|r| r.device.clone()).collect::<Vec<_>>(),
            ids[..2].to_vec()
        );
        assert_eq!(
            (seen[0].messages.as_deref(), seen[0].messages_omitted),
            (None, true),
            "the known state comes without its messages"
        );
        assert!(seen[0].messages_apart());
        assert_eq!(
            (seen[1].messages.as_deref(), seen[1].messages_omitted),
            (Some("[\"m\"]"), false),
            "a changed state comes whole"
        );
        assert!(matches!(
            done.acks[..],
            [
                Ok(AckOutcome::Applied {
                    state: St::Accepted,
                    ..
                }),
                Ok(AckOutcome::Applied {
                    state: St::Accepted,
                    ..
                }),
                Err(StoreError::Invalid { .. })
            ]
        ));
        assert!(
            matches!(done.saved[..], [Ok(2), Err(StoreError::Conflict { .. })]),
            "{:?}",
            done.saved
        );
        let first = store.outbox_load(&ids[0]).await.unwrap().unwrap();
        assert_eq!(
            (
                first.state.as_str(),
                first.messages.as_deref(),
                first.next_wakeup_at
            ),
            ("{\"acked\":1}", Some("[\"m\"]"), None)
        );
        let second = store.outbox_load(&ids[1]).await.unwrap().unwrap();
        assert_eq!(second.revision, 1);
        for (target, state) in [(&targets[0], St::Accepted), (&targets[1], St::Accepted)] {
            let AckTarget::Schedule { id, .. } = target else {
                unreachable!()
            };
            assert_eq!(store.get_schedule(id, None).await.unwrap().state, state);
        }
        assert_eq!(
            store
                .get_schedule(&ScheduleId::new("day-2").unwrap(), None)
                .await
                .unwrap()
                .state,
            St::Delivered
        );
    }

    /// `record_acks` in batches of any size gives exactly what `record_ack` one by one gives:
    /// the same outcome per ack and the same schedule rows and ack rows, on a generated stream
    /// with duplicates, reordering, other devices' and unknown targets, and `delivered` acks.
    pub async fn batched_acks_equal_one_by_one(store: S) {
        use ExecutionState as St;
        // Answers only (to schedules and commands): the multi-row path.
        acks_equal_run(
            &store,
            ["a", "b"],
            &[
                St::Accepted,
                St::Executing,
                St::Completed,
                St::Rejected,
                St::Failed,
                St::Accepted,
            ],
        )
        .await;
        // With `delivered` acks: the one-by-one path inside the batch's transaction.
        acks_equal_run(
            &store,
            ["c", "d"],
            &[
                St::Accepted,
                St::Executing,
                St::Completed,
                St::Rejected,
                St::Failed,
                St::Delivered,
            ],
        )
        .await;
    }

    async fn acks_equal_run(store: &S, names: [&str; 2], states: &[ExecutionState]) {
        use ExecutionState as St;
        // Targets 0..SCHEDULES are schedules, the rest commands.
        const SCHEDULES: usize = 6;
        const COMMANDS: usize = 3;
        let t0 = t("2026-11-27T00:00:00Z");
        // Two identical worlds: "a" answered one by one, "b" in batches.
        let mut worlds = Vec::new();
        for w in names {
            let ids = fleet(&**store, &format!("s{w}"), &format!("bat{w}"), 3).await;
            let mut targets = Vec::new();
            for k in 0..SCHEDULES {
                let name = format!("eq-{w}-{k}");
                store
                    .create_schedule(
                        &new_schedule(&name, &ids[k % 3], 1, "2026-11-27T00:00:00Z"),
                        t0,
                    )
                    .await
                    .unwrap();
                let sid = ScheduleId::new(&name).unwrap();
                if k % 2 == 0 {
                    deliver_v1(&**store, &sid, t0).await;
                }
                targets.push(sid);
            }
            let mut commands = Vec::new();
            for k in 0..COMMANDS {
                let id = format!("eq-{w}-cmd-{k}");
                let new = NewCommand {
                    id: id.clone(),
                    device: ids[k % 3].clone(),
                    command: Command::Idle,
                    correlation_id: None,
                    expires_at: t("2026-11-28T00:00:00Z"),
                };
                store.create_command(&new, t0).await.unwrap();
                if k % 2 == 0 {
                    store
                        .apply_command_event(&id, LifecycleEvent::Deliver, t0, None)
                        .await
                        .unwrap();
                }
                commands.push(id);
            }
            worlds.push((ids, targets, commands));
        }
        // A deterministic stream (a small LCG), the same for both worlds.
        let mut x: u64 = 0x5eed;
        let mut next = |m: u64| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) % m
        };
        let mut stream = Vec::new();
        for n in 0..160 {
            let k = next((SCHEDULES + COMMANDS) as u64) as usize;
            let state: St = states[next(states.len() as u64) as usize];
            // Every so often reuse an earlier message id (a redelivery), speak for another
            // device, or name an unknown schedule.
            let msg = if n > 5 && next(6) == 0 {
                format!("m{}", next(n))
            } else {
                format!("m{n}")
            };
            let wrong_device = next(15) == 0;
            let unknown = next(20) == 0;
            let reason = (next(4) == 0).then(|| format!("r{n}"));
            stream.push((k, state, msg, wrong_device, unknown, reason, n));
        }
        let ack_in = |w: usize, item: &(usize, St, String, bool, bool, Option<String>, u64)| {
            let (k, state, msg, wrong, unknown, reason, n) = item;
            let (ids, targets, commands) = &worlds[w];
            let owner = if *k < SCHEDULES { *k } else { *k - SCHEDULES };
            let device = if *wrong {
                &ids[(owner + 1) % 3]
            } else {
                &ids[owner % 3]
            };
            let target = match (*k < SCHEDULES, *unknown) {
                (true, true) => AckTarget::Schedule {
                    id: ScheduleId::new(format!("nope-{k}")).unwrap(),
                    version: ScheduleVersion(1),
                },
                (true, false) => AckTarget::Schedule {
                    id: targets[*k].clone(),
                    version: ScheduleVersion(1),
                },
                (false, true) => AckTarget::Command {
                    id: format!("nope-{k}"),
                },
                (false, false) => AckTarget::Command {
                    id: commands[owner].clone(),
                },
            };
            AckRecord {
                message_id: msg.clone(),
                device: device.clone(),
                target,
                state: *state,
                reason_code: None,
                reason: reason.clone(),
                sent_at: t0,
                received_at: Timestamp::from_second(t0.as_second() + 10 + *n as i64).unwrap(),
            }
        };
        let describe = |r: &StoreResult<AckOutcome>| match r {
            Ok(o) => format!("{o:?}"),
            Err(StoreError::NotFound { .. }) => "not found".into(),
            Err(StoreError::Invalid { .. }) => "invalid".into(),
            Err(e) => format!("other: {e}"),
        };
        let mut one_by_one = Vec::new();
        for item in &stream {
            one_by_one.push(describe(&store.record_ack(&ack_in(0, item)).await));
        }
        let mut batched = Vec::new();
        let mut rest = &stream[..];
        while !rest.is_empty() {
            let size = (1 + next(25) as usize).min(rest.len());
            let batch: Vec<AckRecord> = rest[..size].iter().map(|i| ack_in(1, i)).collect();

            for r in store.record_acks(&batch).await.unwrap() {
                batched.push(describe(&r));
            }
            rest = &rest[size..];
        }
        assert_eq!(one_by_one, batched);
        for k in 0..SCHEDULES {
            let a = store.get_schedule(&worlds[0].1[k], None).await.unwrap();
            let b = store.get_schedule(&worlds[1].1[k], None).await.unwrap();
            assert_eq!(
                (
                    a.state,
                    &a.reason,
                    a.answered_at,
                    a.updated_at,
                    a.attempts,
                    a.first_sent_at
                ),
                (
                    b.state,
                    &b.reason,
                    b.answered_at,
                    b.updated_at,
                    b.attempts,
                    b.first_sent_at
                ),
                "schedule {k}"
            );
            let target = |w: usize| AckTarget::Schedule {
                id: worlds[w].1[k].clone(),
                version: ScheduleVersion(1),
            };
            assert_same_acks(store, &target(0), &target(1)).await;
        }
        for k in 0..COMMANDS {
            let a = store.get_command(&worlds[0].2[k]).await.unwrap();
            let b = store.get_command(&worlds[1].2[k]).await.unwrap();
            assert_eq!(
                (a.state, &a.reason, a.answered_at, a.updated_at, a.attempts),
                (b.state, &b.reason, b.answered_at, b.updated_at, b.attempts),
                "command {k}"
            );
            let target = |w: usize| AckTarget::Command {
                id: worlds[w].2[k].clone(),
            };
            assert_same_acks(store, &target(0), &target(1)).await;
        }
    }

    /// Both targets hold the same acks (message, state, reason, arrival), in the same order.
    async fn assert_same_acks(store: &S, a: &AckTarget, b: &AckTarget) {
        let strip = |v: Vec<AckRecord>| {
            v.into_iter()
                .map(|r| (r.message_id, r.state, r.reason, r.received_at))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            strip(store.list_acks(a).await.unwrap()),
            strip(store.list_acks(b).await.unwrap()),
            "acks of {a:?} and {b:?}"
        );
    }

    /// Measured series (issue #9): gaps are not written, a slot stored again is replaced, ranges
    /// are half-open and oldest first; model metadata can be replaced.
    pub async fn series(store: S) {
        let t0 = t("2026-11-27T00:00:00Z");
        assert!(store.list_series().await.unwrap().is_empty());
        let n = store
            .put_series("load/site-1", t0, 900, &[1.0, f64::NAN, 3.0, 4.0])
            .await
            .unwrap();
        assert_eq!(n, 3, "the gap is not written");
        // The third slot again, with a new value: replaced.
        let n = store
            .put_series("load/site-1", t("2026-11-27T00:30:00Z"), 900, &[30.0])
            .await
            .unwrap();
        assert_eq!(n, 1);
        store
            .put_series("pv/site-1", t0, 3600, &[0.5])
            .await
            .unwrap();
        let mut names = store.list_series().await.unwrap();
        names.sort();
        assert_eq!(names, ["load/site-1", "pv/site-1"]);
        let points = store
            .series_points("load/site-1", t0, t("2026-11-27T00:45:00Z"))
            .await
            .unwrap();
        let got: Vec<(Timestamp, u32, f64)> = points
            .iter()
            .map(|p| (p.start, p.slot_seconds, p.value))
            .collect();
        assert_eq!(
            got,
            [(t0, 900, 1.0), (t("2026-11-27T00:30:00Z"), 900, 30.0)],
            "half-open range, the gap absent, the replaced value"
        );
        assert!(
            store
                .series_points("none", t0, t("2026-11-28T00:00:00Z"))
                .await
                .unwrap()
                .is_empty()
        );
        let info = store
            .put_model(
                &NewModel {
                    name: "load/site-1".into(),
                    kind: "ridge".into(),
                    site: None,
                    metadata: serde_json::json!({"days": 0}),
                    artefact: b"m".to_vec(),
                    activate: true,
                },
                t0,
            )
            .await
            .unwrap();
        let updated = store
            .update_model_metadata("load/site-1", info.version, &serde_json::json!({"days": 3}))
            .await
            .unwrap();
        assert_eq!(updated.metadata["days"], 3);
        assert_eq!(
            store
                .get_model("load/site-1", Some(info.version))
                .await
                .unwrap()
                .info
                .metadata["days"],
            3
        );
        assert!(
            store
                .update_model_metadata("load/site-1", 99, &serde_json::json!({}))
                .await
                .is_err()
        );
    }

    pub async fn models(store: S) {
        let t0 = t("2026-11-27T00:00:00Z");
        let new = |activate: bool, bytes: &[u8]| NewModel {
            name: "load/site-1".into(),
            kind: "ridge".into(),
            site: Some(SiteId::new("site-1").unwrap()),
            metadata: serde_json::json!({"mae_kw": 0.42, "features": ["hour", "dow"]}),
            artefact: bytes.to_vec(),
            activate,
        };
        let v1 = store
            .put_model(&new(true, b"\x00\x01model-1"), t0)
            .await
            .unwrap();
        assert_eq!((v1.version, v1.active, v1.artefact_len), (1, true, 9));
        let v2 = store.put_model(&new(false, b"model-2"), t0).await.unwrap();
        assert_eq!((v2.version, v2.active), (2, false));
        let active = store.active_model("load/site-1").await.unwrap().unwrap();
        assert_eq!(
            (active.info.version, active.artefact.as_slice()),
            (1, &b"\x00\x01model-1"[..])
        );
        assert_eq!(active.info.metadata["mae_kw"], 0.42);
        let newest = store.get_model("load/site-1", None).await.unwrap();
        assert_eq!(newest.info.version, 2);
        assert_eq!(newest.artefact, b"model-2");
        let act = store.activate_model("load/site-1", 2).await.unwrap();
        assert!(act.active);
        assert_eq!(
            store
                .active_model("load/site-1")
                .await
                .unwrap()
                .unwrap()
                .info
                .version,
            2
        );
        let listed = store.list_models(&ModelFilter::default()).await.unwrap();
        assert_eq!(
            listed
                .iter()
                .map(|m| (m.version, m.active))
                .collect::<Vec<_>>(),
            [(1, false), (2, true)]
        );
        assert_eq!(
            store
                .list_models(&ModelFilter {
                    active_only: true,
                    kind: Some("ridge".into()),
                    site: Some(SiteId::new("site-1").unwrap()),
                    ..Default::default()
                })
                .await
                .unwrap()
                .len(),
            1
        );
        let v3 = store.put_model(&new(true, b""), t0).await.unwrap();
        assert_eq!(v3.version, 3);
        assert_eq!(
            store
                .list_models(&ModelFilter {
                    active_only: true,
                    ..Default::default()
                })
                .await
                .unwrap()
                .len(),
            1,
            "activating a new version deactivates the others"
        );
        assert!(store.active_model("other").await.unwrap().is_none());
        assert!(matches!(
            store.get_model("load/site-1", Some(9)).await,
            Err(StoreError::NotFound { .. })
        ));
        assert!(matches!(
            store.activate_model("load/site-1", 9).await,
            Err(StoreError::NotFound { .. })
        ));
    }

    pub async fn delivery_stats(store: S) {
        let ids = fleet(&*store, "s", "bat", 2).await;
        let t0 = t("2026-11-27T00:00:00Z");
        use ExecutionState as S;
        // Four schedules: accepted after 100 ms and 300 ms, rejected after 200 ms, one never sent.
        for (n, (device, answer)) in [
            (0, Some((S::Accepted, 100))),
            (1, Some((S::Rejected, 200))),
            (0, Some((S::Executing, 300))),
            (1, None),
        ]
        .into_iter()
        .enumerate()
        {
            let id = format!("d{n}");
            store
                .create_schedule(
                    &new_schedule(&id, &ids[device], 1, "2026-11-27T00:00:00Z"),
                    t0,
                )
                .await
                .unwrap();
            let Some((state, after_ms)) = answer else {
                continue;
            };
            let sid = ScheduleId::new(&id).unwrap();
            deliver_v1(&*store, &sid, t0).await;
            let at = t0
                .checked_add(jiff::SignedDuration::from_millis(after_ms))
                .unwrap();
            let mut a = AckRecord {
                message_id: format!("a{n}"),
                device: ids[device].clone(),
                target: AckTarget::Schedule {
                    id: sid,
                    version: ScheduleVersion(1),
                },
                state,
                reason_code: None,
                reason: None,
                sent_at: at,
                received_at: at,
            };
            if state == S::Rejected {
                a.reason_code = Some("invalid_schedule".into());
            }
            store.record_ack(&a).await.unwrap();
        }
        let q = DeliveryQuery {
            device: None,
            tenant: None,
            from: t0,
            to: t("2026-11-28T00:00:00Z"),
        };
        let s = store.delivery_stats(&q).await.unwrap();
        assert_eq!(s.total, 4);
        assert_eq!(s.accepted, 2);
        assert_eq!(
            s.by_state,
            [
                (S::Queued, 1),
                (S::Accepted, 1),
                (S::Rejected, 1),
                (S::Executing, 1)
            ]
        );
        assert_eq!(s.success_rate, Some(2.0 / 3.0));
        assert_eq!(s.latency_p50_ms, Some(200.0));
        assert_eq!(s.latency_max_ms, Some(300.0));
        let one = store
            .delivery_stats(&DeliveryQuery {
                device: Some(ids[1].clone()),
                ..q.clone()
            })
            .await
            .unwrap();
        assert_eq!(
            (one.total, one.accepted, one.success_rate),
            (2, 0, Some(0.0))
        );
        let none = store
            .delivery_stats(&DeliveryQuery {
                tenant: Some("nobody".into()),
                ..q
            })
            .await
            .unwrap();
        assert_eq!(
            (none.total, none.latency_p50_ms, none.success_rate),
            (0, None, None)
        );
    }

    pub async fn health(store: S) {
        store.ping().await.unwrap();
        let stats = store.pool_stats();
        assert!(stats.max >= 1 && stats.size <= stats.max);
    }
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = TempSqlite::new().await;
                    assert_eq!(db.store.backend(), Backend::Sqlite);
                    suite::$name(db.store.clone()).await;
                }
            )*
        }

        /// The whole suite against PostgreSQL, one fresh schema per test.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[ignore = "live: needs DATABASE_URL (run by .ci/run)"]
        async fn postgres_conformance() {
            let url = live_database_url();
            $(
                let db = PgSchema::new(&url).await;
                assert_eq!(db.store.backend(), Backend::Postgres);
                suite::$name(db.store.clone()).await;
                db.drop_schema().await;
            )*
        }
    };
}

conformance!(
    sites_and_feeders,
    prices,
    devices,
    status,
    status_batches,
    schedule_in_force_from_acks,
    schedules,
    commands,
    acks,
    concurrent_acks,
    telemetry,
    outbox,
    batches,
    acks_and_states_in_one_transaction,
    batched_acks_equal_one_by_one,
    series,
    models,
    delivery_stats,
    health,
);

#[tokio::test]
async fn connect_picks_the_backend_from_the_url() {
    let dir = std::env::temp_dir().join(unique("grid-connect"));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}/sub.db", dir.display());
    let store = connect(&url, 2).await.unwrap();
    assert_eq!(store.backend(), Backend::Sqlite);
    assert!(dir.join("sub.db").exists(), "created if missing");
    // Reopening applies no migration twice and keeps the data.
    store
        .upsert_site(
            &site_record("kept", DEFAULT_TENANT),
            t("2026-11-27T00:00:00Z"),
        )
        .await
        .unwrap();
    drop(store);
    let again = <dyn Store>::connect(&url, 2).await.unwrap();
    again.get_site(&SiteId::new("kept").unwrap()).await.unwrap();
    assert!(matches!(
        connect("mysql://x", 1).await,
        Err(StoreError::UnsupportedUrl(_))
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The store's sessions cost random page reads as cached ones, unless the URL's options say
/// otherwise.
#[tokio::test]
#[ignore = "live: needs DATABASE_URL (run by .ci/run)"]
async fn postgres_sessions_plan_for_cached_tables() {
    let url = live_database_url();
    let setting = |store: PostgresStore| async move {
        let v: String = sqlx::query_scalar("SHOW random_page_cost")
            .fetch_one(store.pool())
            .await
            .unwrap();
        store.pool().close().await;
        v
    };
    let store = PostgresStore::connect(&url, 1).await.unwrap();
    assert_eq!(
        setting(store).await,
        grid_server::store::postgres::RANDOM_PAGE_COST
    );
    let sep = if url.contains('?') { '&' } else { '?' };
    let own = format!("{url}{sep}options=-c%20random_page_cost%3D3");
    let store = PostgresStore::connect(&own, 1).await.unwrap();
    assert_eq!(setting(store).await, "3", "the URL's own setting wins");
}
