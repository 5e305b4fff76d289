//! The Pub/Sub event source against Google's Pub/Sub emulator and
//! fake-gcs-server's real object notifications. What it must give the
//! notifier, like every event source (a restart of the emulator included),
//! is checked by the EventSource conformance suite
//! (`event_source_pubsub.rs`).

use std::time::Duration;

use bytes::Bytes;
use gcloud_googleapis::pubsub::v1::PubsubMessage;
use runbox_core::{InstanceId, PutOptions, Store, layout};
use runbox_notifier::{EventSource, ObjectEvent, PubSubEventSource, SourceItem};
use runbox_tests::harness::Emulators;
use tokio::time::timeout;

/// Generous: the machine has two cores and several JVMs may be starting.
const T: Duration = Duration::from_secs(60);

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

async fn emulators() -> Emulators {
    timeout(T, Emulators::start())
        .await
        .expect("emulator start timed out")
        .expect("emulators")
}

async fn next_item(source: &mut PubSubEventSource) -> SourceItem {
    timeout(T, source.next())
        .await
        .expect("no item from the source in time")
        .expect("source stopped")
}

/// The next item, which must be an event; returns it with its acker.
async fn next_event(source: &mut PubSubEventSource) -> (ObjectEvent, runbox_notifier::Acker) {
    match next_item(source).await {
        SourceItem::Event(event, ack) => (event, ack),
        other => panic!("expected an event, got {other:?}"),
    }
}

async fn expect_resubscribed(source: &mut PubSubEventSource) {
    match next_item(source).await {
        SourceItem::Resubscribed => {}
        other => panic!("expected Resubscribed, got {other:?}"),
    }
}

/// A notification as GCS publishes it, for `name` in the harness bucket.
fn notification(emu: &Emulators, event_type: &str, name: &str, data: &str) -> PubsubMessage {
    let attributes = [
        ("eventType", event_type),
        ("objectId", name),
        ("objectGeneration", "42"),
        ("bucketId", emu.bucket.as_str()),
        ("payloadFormat", "JSON_API_V1"),
    ];
    PubsubMessage {
        data: data.as_bytes().to_vec(),
        attributes: attributes
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..PubsubMessage::default()
    }
}

async fn publish(emu: &Emulators, message: PubsubMessage) {
    timeout(T, emu.publish(message))
        .await
        .expect("publish timed out")
        .expect("publish");
}

async fn upload_result(emu: &Emulators, name: &str) -> runbox_core::ObjectMeta {
    let opts = PutOptions::create().with_metadata("traceparent", TRACEPARENT);
    timeout(T, emu.store().put(name, Bytes::from_static(b"{}"), opts))
        .await
        .expect("upload timed out")
        .expect("upload")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_upload_becomes_an_event_with_its_metadata() {
    let emu = emulators().await;
    let instance = InstanceId::random();

    // The topic is infrastructure: a missing one is a configuration error.
    let mut missing = emu.source_config(&instance);
    missing.topic = "no-such-topic".to_owned();
    let err = match timeout(T, PubSubEventSource::connect(missing))
        .await
        .unwrap()
    {
        Ok(_) => panic!("connect to a missing topic succeeded"),
        Err(err) => err,
    };
    assert!(err.reason.contains("does not exist"), "{err}");

    let mut source = timeout(T, emu.event_source(&instance))
        .await
        .unwrap()
        .expect("connect");
    let sub_id = format!("runbox-{instance}");
    assert!(source.subscription_name().ends_with(&sub_id));
    assert!(source.describe().contains(&sub_id), "{}", source.describe());
    expect_resubscribed(&mut source).await;

    // The subscription carries the instance filter (and lets the results
    // of request-topic executions and the session leases that dispatchers
    // announce through) and an expiration policy.
    let client = emu.pubsub_client().await.unwrap();
    let (topic, config) = timeout(T, client.subscription(&sub_id).config(None))
        .await
        .unwrap()
        .expect("subscription config");
    assert!(topic.ends_with(&emu.topic), "{topic}");
    assert_eq!(
        config.filter,
        format!(
            "hasPrefix(attributes.objectId, \"results/{instance}-\") OR hasPrefix(attributes.objectId, \"results/rq-\") OR hasPrefix(attributes.objectId, \"sessions/\")"
        )
    );
    let ttl = config.expiration_policy.and_then(|p| p.ttl).expect("ttl");
    assert_eq!(ttl.seconds, 24 * 3600);

    let name = layout::result(&instance.next_execution_id());
    let meta = upload_result(&emu, &name).await;
    let (event, ack) = next_event(&mut source).await;
    assert_eq!(event.name, name);
    assert_eq!(event.generation, meta.generation);
    assert_eq!(event.bucket, emu.bucket);
    assert_eq!(
        event.metadata.get("traceparent").map(String::as_str),
        Some(TRACEPARENT)
    );
    ack.ack().await;

    // Objects outside results/ are not published by the bucket, so the next
    // event is the next result.
    let store = emu.store();
    timeout(
        T,
        store.put(
            "requests/x.json",
            Bytes::from_static(b"{}"),
            PutOptions::default(),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    let second = layout::result(&instance.next_execution_id());
    upload_result(&emu, &second).await;
    let (event, ack) = next_event(&mut source).await;
    assert_eq!(event.name, second);
    ack.ack().await;

    // Graceful shutdown deletes the subscription and ends the source.
    let handle = source.subscription();
    timeout(T, handle.delete()).await.unwrap().expect("delete");
    let end = timeout(T, source.next()).await.expect("source did not end");
    assert!(end.is_err(), "{end:?}");
    let exists = timeout(T, client.subscription(&sub_id).exists(None))
        .await
        .unwrap()
        .unwrap();
    assert!(!exists, "subscription still exists after delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_messages_are_malformed_and_acked() {
    let emu = emulators().await;
    let instance = InstanceId::random();
    // The shortest deadline Pub/Sub allows, so redelivery shows quickly.
    let ack_deadline = Duration::from_secs(10);
    let config = emu.source_config(&instance).with_ack_deadline(ack_deadline);
    let mut source = timeout(T, PubSubEventSource::connect(config))
        .await
        .unwrap()
        .expect("connect");
    expect_resubscribed(&mut source).await;
    let result = |tag: &str| format!("results/{instance}-{tag}.json");

    // Each message is published after the previous item arrived: Pub/Sub
    // does not keep publication order without ordering keys.
    publish(
        &emu,
        notification(&emu, "OBJECT_FINALIZE", &result("a"), "not json"),
    )
    .await;
    match next_item(&mut source).await {
        SourceItem::Malformed { reason, ack } => {
            assert!(reason.contains("not JSON"), "{reason}");
            ack.ack().await;
        }
        other => panic!("expected Malformed, got {other:?}"),
    }

    publish(
        &emu,
        notification(&emu, "OBJECT_DELETE", &result("b"), "{}"),
    )
    .await;
    match next_item(&mut source).await {
        SourceItem::Malformed { reason, ack } => {
            assert!(reason.contains("OBJECT_DELETE"), "{reason}");
            ack.ack().await;
        }
        other => panic!("expected Malformed, got {other:?}"),
    }

    let mut bare = notification(&emu, "OBJECT_FINALIZE", &result("c"), "{}");
    bare.attributes.remove("objectGeneration");
    publish(&emu, bare).await;
    match next_item(&mut source).await {
        SourceItem::Malformed { reason, ack } => {
            assert!(reason.contains("objectGeneration"), "{reason}");
            ack.ack().await;
        }
        other => panic!("expected Malformed, got {other:?}"),
    }

    // A finalize outside results/ is a valid event: the source does not
    // filter names (the emulator ignores subscription filters anyway); the
    // notifier counts it as ignored.
    publish(
        &emu,
        notification(&emu, "OBJECT_FINALIZE", "logs/x/stdout", "{}"),
    )
    .await;
    let (event, ack) = next_event(&mut source).await;
    assert_eq!(event.name, "logs/x/stdout");
    assert_eq!(event.generation, 42);
    ack.ack().await;

    // The control is received and deliberately not acked: it must come back
    // after the ack deadline. Every message above was received earlier, so
    // had any ack been lost it would come back first. Waiting for the
    // control's redelivery shows that the acks reached the emulator.
    let control = result("control");
    publish(
        &emu,
        notification(
            &emu,
            "OBJECT_FINALIZE",
            &control,
            r#"{"metadata":{"k":"v"}}"#,
        ),
    )
    .await;
    let (event, unacked) = next_event(&mut source).await;
    assert_eq!(event.name, control);
    assert_eq!(event.metadata.get("k").map(String::as_str), Some("v"));
    drop(unacked);

    let redelivered = timeout(ack_deadline * 3, source.next())
        .await
        .expect("the unacked control was not redelivered")
        .expect("source stopped");
    match redelivered {
        SourceItem::Event(event, ack) => {
            assert_eq!(event.name, control, "an acked message came back");
            ack.ack().await;
        }
        other => panic!("expected the control again, got {other:?}"),
    }
}

/// A notification whose `bucketId` is not the configured bucket is another
/// bucket's object, even under our result's name: counted as foreign,
/// acked, and never resolves the waiter; the same name from our bucket does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_another_bucket_are_foreign_and_ignored() {
    use std::sync::Arc;

    use runbox_notifier::{Notifier, Waiters};

    let emu = emulators().await;
    let instance = InstanceId::random();
    let source = timeout(
        T,
        PubSubEventSource::connect(emu.source_config(&instance).with_bucket(&emu.bucket)),
    )
    .await
    .expect("connect timed out")
    .expect("source");
    assert_eq!(source.bucket(), Some(emu.bucket.as_str()));
    let waiters = Waiters::new();
    let store: Arc<dyn Store> = Arc::new(emu.store());
    let notifier = Notifier::spawn(Box::new(source), waiters.clone(), store);
    let id = instance.next_execution_id();
    let waiter = waiters.register(id.clone()).expect("register");
    let name = layout::result(&id);

    let mut foreign = notification(&emu, "OBJECT_FINALIZE", &name, "{}");
    foreign
        .attributes
        .insert("bucketId".to_owned(), "someone-elses-bucket".to_owned());
    publish(&emu, foreign).await;
    let mut changed = notifier.stats_changed();
    timeout(T, async {
        while notifier.stats().foreign < 1 {
            changed.changed().await.expect("the notifier runs");
        }
    })
    .await
    .expect("the foreign event was not counted");
    let stats = notifier.stats();
    assert_eq!((stats.delivered, stats.unknown), (0, 0), "{stats:?}");
    assert_eq!(
        waiters.pending(),
        vec![id.clone()],
        "the waiter still waits"
    );

    publish(&emu, notification(&emu, "OBJECT_FINALIZE", &name, "{}")).await;
    let event = timeout(T, waiter)
        .await
        .expect("our bucket's event resolves the waiter")
        .expect("completion");
    assert_eq!(event.bucket, emu.bucket);
    assert_eq!(notifier.stats().foreign, 1);
    timeout(T, notifier.shutdown()).await.expect("shutdown");
}
