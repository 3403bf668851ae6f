//! The event store contract, against a real PostgreSQL database per test.
//!
//! Several `PgEventStore` instances on one database stand in for several server processes:
//! each has its own group-commit writer, and they only meet in the database.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use universal_backend::store::{
    AppendError, Direction, EventStore, ExpectedVersion, Filter, NewEvent, PgEventStore,
    PgStoreConfig, Subscription,
};
use uuid::Uuid;

fn event(kind: &str, n: i64) -> NewEvent {
    NewEvent {
        event_id: Uuid::new_v4(),
        event_type: kind.to_owned(),
        schema_version: 1,
        data: json!({ "n": n }),
        metadata: json!({}),
    }
}

/// Appends one event of `kind` to a stream of its own.
async fn append_new(store: &PgEventStore, kind: &str, n: i64) {
    let stream = format!("{}-{}", kind.to_lowercase(), Uuid::new_v4());
    store
        .append(&stream, ExpectedVersion::NoStream, vec![event(kind, n)])
        .await
        .unwrap();
}

async fn stores(n: usize) -> Vec<Arc<PgEventStore>> {
    let (pool, _) = common::fresh_pool().await;
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(
            PgEventStore::start(pool.clone(), PgStoreConfig::default())
                .await
                .unwrap(),
        );
    }
    out
}

/// Positions and stream versions of the whole log, in log order.
async fn log_of(pool: &sqlx::PgPool) -> Vec<(i64, String, i64)> {
    sqlx::query_as(
        "SELECT global_position, stream_id, version FROM events ORDER BY global_position",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn two_processes_taking_turns_on_one_stream_never_lose_a_version_or_leave_a_gap() {
    // A writer that wrote last knows the head and the stream and writes in one statement;
    // the other finds the head moved, and must notice.
    let stores = stores(2).await;
    let stream = format!("turns-{}", Uuid::new_v4());
    for n in 0..60i64 {
        let store = &stores[(n as usize / 3) % 2];
        let done = store
            .append(&stream, ExpectedVersion::Exact(n), vec![event("Turn", n)])
            .await
            .unwrap();
        assert_eq!(done.version, n + 1);
        assert_eq!(done.position, n + 1);
        // A stale expectation is refused by either, whoever wrote last.
        for other in &stores {
            let stale = other
                .append(&stream, ExpectedVersion::Exact(n), vec![event("Stale", n)])
                .await;
            assert!(
                matches!(stale, Err(AppendError::WrongVersion { .. })),
                "{stale:?}"
            );
        }
    }
    let log = log_of(stores[0].pool()).await;
    let expected: Vec<(i64, String, i64)> = (1..=60).map(|v| (v, stream.clone(), v)).collect();
    assert_eq!(log, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_of_two_processes_on_known_streams_keep_every_version_and_position() {
    let stores = stores(2).await;
    let streams: Vec<String> = (0..4)
        .map(|_| format!("shared-{}", Uuid::new_v4()))
        .collect();
    // Both writers learn every stream first.
    for store in &stores {
        for s in &streams {
            store
                .append(s, ExpectedVersion::Any, vec![event("Warm", 0)])
                .await
                .unwrap();
        }
    }
    let mut tasks = Vec::new();
    for w in 0..8 {
        let store = stores[w % 2].clone();
        let stream = streams[w % 4].clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..40 {
                store
                    .append(&stream, ExpectedVersion::Any, vec![event("Busy", n)])
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let log = log_of(stores[0].pool()).await;
    let total = 8 + 8 * 40;
    assert_eq!(
        log.iter().map(|e| e.0).collect::<Vec<_>>(),
        (1..=total as i64).collect::<Vec<_>>(),
        "positions without a gap"
    );
    for s in &streams {
        let versions: Vec<i64> = log.iter().filter(|e| &e.1 == s).map(|e| e.2).collect();
        assert_eq!(versions, (1..=versions.len() as i64).collect::<Vec<_>>());
        assert_eq!(versions.len(), 2 + 2 * 40);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_appends_of_the_same_version_have_exactly_one_winner() {
    let stores = stores(2).await;
    let stream = format!("race-{}", Uuid::new_v4());
    for version in 0..15i64 {
        let mut tasks = Vec::new();
        for t in 0..12 {
            let store = stores[t % 2].clone();
            let stream = stream.clone();
            tasks.push(tokio::spawn(async move {
                store
                    .append(
                        &stream,
                        ExpectedVersion::Exact(version),
                        vec![event("Raced", version)],
                    )
                    .await
            }));
        }
        let mut winners = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(r) => {
                    assert_eq!(r.version, version + 1);
                    winners += 1;
                }
                Err(AppendError::WrongVersion { actual, .. }) => assert_eq!(actual, version + 1),
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
        assert_eq!(winners, 1, "version {version} must have exactly one writer");
    }
    let events = stores[0]
        .read_stream(&stream, 1, Direction::Forward, 100)
        .await
        .unwrap();
    assert_eq!(events.len(), 15);
    assert!(events
        .iter()
        .enumerate()
        .all(|(i, e)| e.version == i as i64 + 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscriber_sees_every_event_of_concurrent_writers_once_in_order_without_gaps() {
    let stores = stores(3).await;
    const WRITERS: usize = 8;
    const STREAMS: usize = 200;
    const PER_STREAM: i64 = 6;
    let total = (STREAMS as i64) * PER_STREAM;

    // The subscriber uses a store instance of its own: it is woken only by NOTIFY.
    let follower = stores[2].clone();
    let reader = tokio::spawn(async move {
        let mut sub = Subscription::new(follower, 0, Filter::all())
            .with_poll_interval(Duration::from_millis(200));
        let mut seen = Vec::with_capacity(total as usize);
        while (seen.len() as i64) < total {
            seen.push(sub.next().await.unwrap());
        }
        seen
    });

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = stores[w % 2].clone();
        writers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            let streams: Vec<String> = (0..STREAMS / WRITERS)
                .map(|_| format!("load-{}", Uuid::new_v4()))
                .collect();
            for n in 0..PER_STREAM {
                for s in &streams {
                    let e = event("Loaded", n);
                    ids.push(e.event_id);
                    let expected = if n == 0 {
                        ExpectedVersion::NoStream
                    } else {
                        ExpectedVersion::Exact(n)
                    };
                    store.append(s, expected, vec![e]).await.unwrap();
                }
            }
            ids
        }));
    }
    let mut written = HashSet::new();
    for w in writers {
        written.extend(w.await.unwrap());
    }
    let seen = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("the subscriber keeps up")
        .unwrap();

    let positions: Vec<i64> = seen.iter().map(|e| e.position).collect();
    let expected: Vec<i64> = (1..=total).collect();
    assert_eq!(positions, expected, "positions are gapless and in order");
    let seen_ids: HashSet<Uuid> = seen.iter().map(|e| e.event_id).collect();
    assert_eq!(seen_ids.len(), seen.len(), "no event is delivered twice");
    assert_eq!(seen_ids, written, "every written event is delivered");
}

#[tokio::test]
async fn appending_the_same_event_ids_again_writes_nothing() {
    let stores = stores(1).await;
    let store = &stores[0];
    let stream = format!("dup-{}", Uuid::new_v4());
    let events = vec![event("A", 1), event("B", 2)];
    let first = store
        .append(&stream, ExpectedVersion::NoStream, events.clone())
        .await
        .unwrap();
    assert!(first.written);
    let head = store.head_position().await.unwrap();

    // A retry with whatever expectation returns the original result and writes nothing.
    let again = store
        .append(&stream, ExpectedVersion::NoStream, events.clone())
        .await
        .unwrap();
    assert!(!again.written);
    assert_eq!(
        (again.version, again.position),
        (first.version, first.position)
    );
    assert_eq!(store.head_position().await.unwrap(), head);

    // Reusing one of the ids with a new event, or in another stream, is refused.
    let mixed = vec![events[0].clone(), event("C", 3)];
    assert!(matches!(
        store.append(&stream, ExpectedVersion::Any, mixed).await,
        Err(AppendError::DuplicateEvent(_))
    ));
    assert!(matches!(
        store
            .append("dup-other", ExpectedVersion::Any, vec![events[1].clone()])
            .await,
        Err(AppendError::DuplicateEvent(_))
    ));
    assert_eq!(store.head_position().await.unwrap(), head);
    let stored = store
        .read_stream(&stream, 1, Direction::Forward, 10)
        .await
        .unwrap();
    assert_eq!(stored.len(), 2);
}

#[tokio::test]
async fn expected_versions_any_no_stream_exists_and_exact_are_enforced() {
    let stores = stores(1).await;
    let store = &stores[0];
    let s = format!("exp-{}", Uuid::new_v4());
    let wrong = |r: Result<_, AppendError>, want: i64| match r {
        Err(AppendError::WrongVersion { actual, .. }) => assert_eq!(actual, want),
        other => panic!("expected a version conflict, got {other:?}"),
    };
    wrong(
        store
            .append(&s, ExpectedVersion::Exists, vec![event("X", 0)])
            .await,
        0,
    );
    wrong(
        store
            .append(&s, ExpectedVersion::Exact(3), vec![event("X", 0)])
            .await,
        0,
    );
    store
        .append(&s, ExpectedVersion::NoStream, vec![event("X", 1)])
        .await
        .unwrap();
    wrong(
        store
            .append(&s, ExpectedVersion::NoStream, vec![event("X", 0)])
            .await,
        1,
    );
    store
        .append(&s, ExpectedVersion::Exists, vec![event("X", 2)])
        .await
        .unwrap();
    let r = store
        .append(&s, ExpectedVersion::Any, vec![event("X", 3), event("X", 4)])
        .await
        .unwrap();
    assert_eq!(r.version, 4);
    let r = store
        .append(&s, ExpectedVersion::Exact(4), vec![event("X", 5)])
        .await
        .unwrap();
    assert_eq!(r.version, 5);
    assert!(matches!(
        store.append(&s, ExpectedVersion::Any, vec![]).await,
        Err(AppendError::Invalid(_))
    ));
}

#[tokio::test]
async fn streams_read_both_ways_and_the_log_filters_by_category_and_type() {
    let stores = stores(1).await;
    let store = &stores[0];
    let a = format!("alpha-{}", Uuid::new_v4());
    let b = format!("beta-{}", Uuid::new_v4());
    for n in 0..5 {
        store
            .append(&a, ExpectedVersion::Any, vec![event("Ping", n)])
            .await
            .unwrap();
        store
            .append(&b, ExpectedVersion::Any, vec![event("Pong", n)])
            .await
            .unwrap();
    }
    let fwd = store
        .read_stream(&a, 2, Direction::Forward, 2)
        .await
        .unwrap();
    assert_eq!(
        fwd.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![2, 3]
    );
    let back = store
        .read_stream(&a, 5, Direction::Backward, 3)
        .await
        .unwrap();
    assert_eq!(
        back.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![5, 4, 3]
    );
    assert!(back.iter().all(|e| e.category == "alpha"));

    let betas = Filter {
        categories: Some(vec!["beta".into()]),
        ..Filter::default()
    };
    let log = store.read_all(0, None, &betas, 100).await.unwrap();
    assert_eq!(log.len(), 5);
    assert!(log.iter().all(|e| e.stream_id == b));
    assert!(log.windows(2).all(|w| w[0].position < w[1].position));

    let pings = Filter {
        event_types: Some(vec!["Ping".into()]),
        ..Filter::default()
    };
    let after_third = store
        .read_all(log[2].position, None, &pings, 100)
        .await
        .unwrap();
    assert!(after_third
        .iter()
        .all(|e| e.event_type == "Ping" && e.position > log[2].position));
    assert_eq!(store.head_position().await.unwrap(), 10);
}

#[tokio::test]
async fn the_raw_read_of_the_log_selects_what_the_read_selects_with_the_payload_text() {
    // Two processes: a raw read through the first serves its own recent commits from memory,
    // and reads a stretch that holds the other's commits from the database.
    let stores = stores(2).await;
    let store = &stores[0];
    let a = format!("alpha-{}", Uuid::new_v4());
    let b = format!("beta-{}", Uuid::new_v4());
    for n in 0..12 {
        let (stream, kind) = if n % 2 == 0 {
            (&a, "Ping")
        } else {
            (&b, "Pong")
        };
        let mut e = event(kind, n);
        e.data =
            json!({ "n": n, "x": 0.1 + n as f64 * 1e-7, "nested": { "z": [1, "é"], "a": null } });
        stores[usize::from((6..9).contains(&n))]
            .append(stream, ExpectedVersion::Any, vec![e])
            .await
            .unwrap();
    }
    let mut from_memory = 0;
    let filters = [
        Filter::default(),
        Filter {
            categories: Some(vec!["beta".into()]),
            ..Filter::default()
        },
        Filter {
            event_types: Some(vec!["Ping".into()]),
            ..Filter::default()
        },
        Filter {
            stream: Some(a.clone()),
            ..Filter::default()
        },
    ];
    for filter in &filters {
        for (after, up_to, limit) in [
            (0, None, 100),
            (1, Some(5), 100),
            (0, None, 2),
            (0, Some(6), 100),
            (0, Some(12), 100),
            (4, Some(12), 3),
            (9, Some(12), 100),
        ] {
            let read = store.read_all(after, up_to, filter, limit).await.unwrap();
            let raw = store
                .read_all_raw(after, up_to, filter, limit)
                .await
                .unwrap();
            assert_eq!(
                read.len(),
                raw.len(),
                "{filter:?} {after} {up_to:?} {limit}"
            );
            assert!(!raw.is_empty());
            for (e, r) in read.iter().zip(&raw) {
                assert_eq!(
                    (e.position, &e.stream_id, &e.category, e.version),
                    (r.position, &r.stream_id, &r.category, r.version)
                );
                assert_eq!(
                    (e.event_id, &e.event_type, e.schema_version),
                    (r.event_id, &r.event_type, r.schema_version)
                );
                let data: serde_json::Value = serde_json::from_str(&r.data).unwrap();
                assert_eq!(data, e.data);
            }
            let served = store.events_read_from_memory();
            if up_to.is_some_and(|to| to <= 6 || after >= 9) {
                assert_eq!(
                    served,
                    from_memory + raw.len() as u64,
                    "{filter:?} {after} {up_to:?}"
                );
            } else if up_to.is_some_and(|to| to > 6 && after < 9 && limit > 6 - after) {
                assert_eq!(
                    served, from_memory,
                    "a stretch with a gap is read from the database"
                );
            }
            from_memory = served;
        }
    }
    assert!(from_memory > 0);
}

#[tokio::test]
async fn a_subscription_from_now_only_sees_new_events_and_stops_at_the_filter() {
    let stores = stores(1).await;
    let store: Arc<dyn EventStore> = stores[0].clone();
    let s = format!("gamma-{}", Uuid::new_v4());
    store
        .append(&s, ExpectedVersion::Any, vec![event("Old", 0)])
        .await
        .unwrap();
    let head = store.head_position().await.unwrap();
    let filter = Filter {
        event_types: Some(vec!["New".into()]),
        ..Filter::default()
    };
    let mut sub = Subscription::new(store.clone(), head, filter);
    store
        .append(
            &s,
            ExpectedVersion::Any,
            vec![event("Skipped", 1), event("New", 2)],
        )
        .await
        .unwrap();
    let e = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.event_type, "New");
    assert_eq!(e.position, head + 2);
    assert!(sub.is_caught_up());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_live_feed_subscriber_sees_every_event_once_in_order_through_catch_up_and_live() {
    let stores = stores(2).await;
    let store: Arc<dyn EventStore> = stores[1].clone();
    let feed = universal_backend::store::LiveFeed::start(store.clone());
    // Some history first, so the subscriber starts in catch-up.
    for n in 0..50 {
        stores[0]
            .append(
                &format!("early-{}", Uuid::new_v4()),
                ExpectedVersion::NoStream,
                vec![event("Early", n)],
            )
            .await
            .unwrap();
    }
    let total = 50 + 4 * 100;
    let reader = tokio::spawn(async move {
        let mut sub = Subscription::new(store, 0, Filter::all()).with_live_feed(feed);
        let mut seen = Vec::new();
        while seen.len() < total {
            match sub.try_next().await.unwrap() {
                Some(e) => seen.push(e.position),
                None => sub.wait().await,
            }
        }
        seen
    });
    let mut writers = Vec::new();
    for w in 0..4 {
        let store = stores[w % 2].clone();
        writers.push(tokio::spawn(async move {
            for n in 0..100 {
                append_new(&store, "Late", n).await;
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let seen = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("the subscriber keeps up")
        .unwrap();
    assert_eq!(seen, (1..=total as i64).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_live_feed_reads_only_the_types_its_subscribers_want_and_a_late_subscriber_misses_nothing(
) {
    let stores = stores(2).await;
    let store: Arc<dyn EventStore> = stores[1].clone();
    let feed = universal_backend::store::LiveFeed::start(store.clone());
    let typed = Filter {
        event_types: Some(vec!["Wanted".into()]),
        ..Filter::default()
    };
    let reader = {
        let (store, feed) = (store.clone(), feed.clone());
        let mut sub =
            Subscription::new(store, *stores[1].head_watch().borrow(), typed).with_live_feed(feed);
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while seen.len() < 20 {
                match sub.try_next().await.unwrap() {
                    Some(e) => seen.push(e.data["n"].as_i64().unwrap()),
                    None => sub.wait().await,
                }
            }
            seen
        })
    };
    // Mostly events nobody live wants, from both processes, with the wanted ones among them.
    let start = *stores[1].head_watch().borrow();
    for n in 0..20 {
        for i in 0..15 {
            stores[(n + i) as usize % 2]
                .append(
                    &format!("noise-{}", Uuid::new_v4()),
                    ExpectedVersion::NoStream,
                    vec![event("Noise", n * 15 + i)],
                )
                .await
                .unwrap();
        }
        stores[n as usize % 2]
            .append("wanted", ExpectedVersion::Any, vec![event("Wanted", n)])
            .await
            .unwrap();
    }
    let seen = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("the typed subscriber keeps up")
        .unwrap();
    assert_eq!(seen, (0..20).collect::<Vec<_>>());
    assert_eq!(
        feed.events_read(),
        20,
        "the feed read the wanted events and none of the 300 others"
    );

    // A subscriber of everything that joins now reads the skipped stretch from the store,
    // then follows the feed live without a hole.
    let mut all = Subscription::new(store.clone(), start, Filter::all()).with_live_feed(feed);
    let mut positions = Vec::new();
    let total = 320 + 30;
    let writer = {
        let store = stores[0].clone();
        tokio::spawn(async move {
            for n in 0..30 {
                append_new(&store, "Late", n).await;
            }
        })
    };
    tokio::time::timeout(Duration::from_secs(60), async {
        while positions.len() < total {
            match all.try_next().await.unwrap() {
                Some(e) => positions.push(e.position),
                None => all.wait().await,
            }
        }
    })
    .await
    .expect("the late subscriber keeps up");
    writer.await.unwrap();
    assert_eq!(
        positions,
        (start + 1..=start + total as i64).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_gated_subscription_skips_what_its_gate_turns_away_through_catch_up_and_live() {
    let stores = stores(1).await;
    let store: Arc<dyn EventStore> = stores[0].clone();
    let feed = universal_backend::store::LiveFeed::start(store.clone());
    let a = format!("room-{}", Uuid::new_v4());
    let b = format!("room-{}", Uuid::new_v4());
    // More than a page of events the gate turns away, then one it lets through.
    for n in 0..12 {
        let noise = (0..100).map(|i| event("Noise", n * 100 + i)).collect();
        store.append(&b, ExpectedVersion::Any, noise).await.unwrap();
    }
    store
        .append(&a, ExpectedVersion::Any, vec![event("Wanted", 0)])
        .await
        .unwrap();
    let open = Arc::new(std::sync::RwLock::new(HashSet::from([a.clone()])));
    let seen_by_gate = open.clone();
    let mut sub = Subscription::new(store.clone(), 0, Filter::all())
        .with_live_feed(feed)
        .with_gate(Arc::new(move |e| {
            seen_by_gate.read().unwrap().contains(&e.stream_id)
        }));
    let first = sub.try_next().await.unwrap();
    assert_eq!(
        first.map(|e| (e.stream_id, e.event_type)),
        Some((a.clone(), "Wanted".to_owned())),
        "found at once, past a whole page the gate turned away"
    );
    assert!(sub.try_next().await.unwrap().is_none());
    assert!(sub.is_caught_up());

    // Live: `b` stays out until it is let in.
    store
        .append(&b, ExpectedVersion::Any, vec![event("TurnedAway", 1)])
        .await
        .unwrap();
    store
        .append(&a, ExpectedVersion::Any, vec![event("Wanted", 1)])
        .await
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (next.stream_id.as_str(), next.event_type.as_str()),
        (a.as_str(), "Wanted")
    );
    open.write().unwrap().insert(b.clone());
    store
        .append(&b, ExpectedVersion::Any, vec![event("LetIn", 2)])
        .await
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (next.stream_id.as_str(), next.event_type.as_str()),
        (b.as_str(), "LetIn")
    );
}

/// Whether `store` knows, without reading the log, that `(from, to]` holds none of `types`.
fn none_of(store: &dyn EventStore, from: i64, to: i64, types: &[String]) -> bool {
    store.holds_any(from, to, types) == Some(false)
}

/// Waits (bounded) until `store`'s head watch reaches `position`.
async fn head_reaches(store: &PgEventStore, position: i64) {
    let mut head = store.head_watch();
    tokio::time::timeout(Duration::from_secs(10), head.wait_for(|h| *h >= position))
        .await
        .expect("the head arrives within 10 s")
        .expect("the store is running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_process_knows_which_types_recent_commits_held_and_a_gap_is_unknown() {
    let stores = stores(2).await;
    let (a, b) = (&stores[0], &stores[1]);
    let wanted = |t: &str| vec![t.to_owned()];

    // Each listener starts on its own: commits before it listened stay unknown to it (a gap,
    // as after a reconnect). Wait until each store hears the other's commits.
    let mut base = 0;
    for (writer, reader) in [(b, a), (a, b)] {
        let mut heard = false;
        for _ in 0..200 {
            let p = writer
                .append("warm-up", ExpectedVersion::Any, vec![event("Warm", 0)])
                .await
                .unwrap()
                .position;
            head_reaches(reader, p).await;
            if none_of(reader.as_ref(), p - 1, p, &wanted("Other")) {
                (heard, base) = (true, p);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(heard, "the listeners never heard each other");
    }

    // A commit of the other process is described to this one through the database.
    let first = b
        .append("kind-1", ExpectedVersion::Any, vec![event("Counted", 1)])
        .await
        .unwrap()
        .position;
    let second = b
        .append("kind-2", ExpectedVersion::Any, vec![event("Renamed", 2)])
        .await
        .unwrap()
        .position;
    head_reaches(a, second).await;
    for store in [a, b] {
        assert!(none_of(store.as_ref(), base, second, &wanted("Other")));
        assert!(!none_of(store.as_ref(), base, second, &wanted("Renamed")));
        assert!(none_of(store.as_ref(), base, first, &wanted("Renamed")));
        assert!(
            !none_of(store.as_ref(), base, second + 1, &wanted("Other")),
            "past the head is unknown"
        );
    }

    // A write that bypasses the writers (as an import does) is announced by its head only:
    // what it holds stays unknown, and so does every range across it.
    let pool = b.pool();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SELECT last_position FROM event_head WHERE id = 1 FOR UPDATE")
        .execute(&mut *tx)
        .await
        .unwrap();
    let imported = second + 1;
    sqlx::query(
        "INSERT INTO events (global_position, stream_id, stream_category, version, event_id, \
         event_type, schema_version, data) VALUES ($1, 'kind-3', 'kind', 1, $2, 'Imported', 1, '{}')",
    )
    .bind(imported)
    .bind(Uuid::new_v4())
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query("UPDATE event_head SET last_position = $1 WHERE id = 1")
        .bind(imported)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("SELECT pg_notify('ub_events', $1)")
        .bind(imported.to_string())
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    head_reaches(a, imported).await;
    let after = a
        .append("kind-4", ExpectedVersion::Any, vec![event("Counted", 4)])
        .await
        .unwrap()
        .position;
    head_reaches(b, after).await;
    for store in [a, b] {
        assert!(
            !none_of(store.as_ref(), base, after, &wanted("Other")),
            "the import is a gap"
        );
        assert!(none_of(store.as_ref(), imported, after, &wanted("Other")));
        assert!(!none_of(
            store.as_ref(),
            imported,
            after,
            &wanted("Counted")
        ));
    }
}

#[tokio::test]
async fn snapshots_saved_together_keep_the_newest_and_a_refused_one_fails_alone() {
    use universal_backend::store::Snapshot;
    let stores = stores(2).await;
    let snapshot = |version: i64, state: serde_json::Value| Snapshot {
        version,
        schema_version: 1,
        state,
    };
    // Many saves at once: several versions of one stream, one state PostgreSQL refuses
    // (`jsonb` holds no NUL), and streams of their own, from two processes.
    let mut saves = Vec::new();
    for version in [3_i64, 9, 5, 7] {
        for store in &stores {
            let store = store.clone();
            let s = snapshot(version, json!({ "v": version }));
            saves.push(tokio::spawn(async move {
                store.save_snapshot("thing-shared", s).await
            }));
        }
    }
    for i in 0..40 {
        let store = stores[i % 2].clone();
        let state = if i == 13 {
            json!({ "name": "nul\u{0}here" })
        } else {
            json!({ "i": i })
        };
        saves.push(tokio::spawn(async move {
            store
                .save_snapshot(&format!("thing-{i}"), snapshot(i as i64 + 1, state))
                .await
        }));
    }
    let outcomes: Vec<_> = futures_util::future::join_all(saves)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let refused = outcomes.iter().filter(|r| r.is_err()).count();
    assert_eq!(
        refused, 1,
        "only the state with a NUL is refused: {outcomes:?}"
    );

    let shared = stores[1]
        .load_snapshot("thing-shared")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((shared.version, shared.state), (9, json!({ "v": 9 })));
    for i in 0..40 {
        let loaded = stores[0]
            .load_snapshot(&format!("thing-{i}"))
            .await
            .unwrap();
        if i == 13 {
            assert!(loaded.is_none());
        } else {
            let loaded = loaded.unwrap();
            assert_eq!(
                (loaded.version, loaded.state),
                (i as i64 + 1, json!({ "i": i }))
            );
        }
    }
    // A slower, older save does not replace a newer one.
    stores[0]
        .save_snapshot("thing-shared", snapshot(4, json!({ "v": 4 })))
        .await
        .unwrap();
    let shared = stores[0]
        .load_snapshot("thing-shared")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(shared.version, 9);
}
