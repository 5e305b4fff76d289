//! The EventSource conformance suite against the Pub/Sub source: results
//! written to fake-gcs-server, whose real object notifications reach the
//! source through Google's Pub/Sub emulator. One test per property, each on
//! emulators of its own, so no property sees another's notifications.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use gcloud_googleapis::pubsub::v1::PubsubMessage;
use runbox_core::{ExecutionId, InstanceId, ObjectMeta, Store};
use runbox_notifier::{EventSource, PubSubSubscription};
use runbox_tests::event_source_conformance::{self as suite, Backend, LosesSubscription};
use runbox_tests::harness::Emulators;
use tokio::time::timeout;

/// Generous: the machine has two cores and several JVMs may be starting.
const T: Duration = Duration::from_secs(90);

/// Both emulators, and the dispatcher instance whose subscription the
/// source uses.
struct PubSub {
    emu: Emulators,
    store: Arc<dyn Store>,
    instance: InstanceId,
    /// The subscription of the last source, to end it.
    subscription: Mutex<Option<PubSubSubscription>>,
}

impl PubSub {
    async fn start() -> Self {
        let emu = timeout(T, Emulators::start())
            .await
            .expect("emulator start timed out")
            .expect("emulators");
        Self {
            store: Arc::new(emu.store()),
            emu,
            instance: InstanceId::random(),
            subscription: Mutex::new(None),
        }
    }
}

impl Backend for PubSub {
    fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.store)
    }

    fn execution_id(&self) -> ExecutionId {
        self.instance.next_execution_id()
    }

    async fn source(&self) -> Box<dyn EventSource> {
        let source = self
            .emu
            .event_source(&self.instance)
            .await
            .unwrap_or_else(|e| panic!("connect: {e}\n{}", self.emu.logs()));
        *self.subscription.lock().expect("lock") = Some(source.subscription());
        Box::new(source)
    }

    /// Publishes the object's finalize notification again, as GCS may.
    async fn notify_again(&self, meta: &ObjectMeta) {
        let generation = meta.generation.to_string();
        let payload = serde_json::json!({
            "name": meta.name,
            "bucket": self.emu.bucket,
            "generation": generation,
            "metadata": meta.metadata,
        });
        let attributes = [
            ("eventType", "OBJECT_FINALIZE"),
            ("objectId", meta.name.as_str()),
            ("objectGeneration", generation.as_str()),
            ("bucketId", self.emu.bucket.as_str()),
            ("payloadFormat", "JSON_API_V1"),
        ];
        let message = PubsubMessage {
            data: payload.to_string().into_bytes(),
            attributes: attributes
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..PubsubMessage::default()
        };
        self.emu.publish(message).await.expect("publish");
    }

    /// Deletes the subscription, as a graceful shutdown does.
    async fn end_source(&self) {
        let subscription = self
            .subscription
            .lock()
            .expect("lock")
            .clone()
            .expect("a source was connected");
        subscription
            .delete()
            .await
            .expect("delete the subscription");
    }
}

impl LosesSubscription for PubSub {
    /// Stops the Pub/Sub emulator: the subscription dies with it.
    async fn lose_subscription(&mut self) {
        self.emu.pubsub_stop().expect("stop the Pub/Sub emulator");
    }

    /// Starts it again, empty, with the topic (infrastructure) created again;
    /// the source has to create its subscription itself.
    async fn restore_subscription(&mut self) {
        self.emu
            .pubsub_start_again()
            .await
            .expect("start the Pub/Sub emulator again");
    }
}

/// One `#[tokio::test]` per property of the suite.
macro_rules! properties {
    ($($property:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $property() {
            suite::$property(&PubSub::start().await).await;
        }
    )*};
}

properties!(
    a_result_resolves_its_waiter,
    duplicates_deliver_once,
    unknown_executions_are_acked_and_counted,
    results_written_before_the_watch_are_resynced,
    stop_fails_every_waiter,
    a_source_that_ends_fails_every_waiter,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubscribe_resyncs_what_was_missed() {
    suite::resubscribe_resyncs_what_was_missed(&mut PubSub::start().await).await;
}
