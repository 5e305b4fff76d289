//! Announcing an object change on the notifications topic ourselves.
//!
//! The bucket notifies only `results/` (fake-gcs-server sends one prefix,
//! and a second notification config on `sessions/` would publish every
//! workspace write). The few other changes a dispatcher must wake on — a
//! session lease given up — are published by the process that made them,
//! shaped exactly like a GCS finalize notification (`payloadFormat=NONE`),
//! so every dispatcher's subscription receives and routes them like any
//! other event.

use async_trait::async_trait;
use gcloud_googleapis::pubsub::v1::PubsubMessage;
use gcloud_pubsub::client::Client;
use gcloud_pubsub::publisher::Publisher;

use runbox_core::trace_context;

use crate::pubsub_source::client_config;
use crate::{ObjectEvent, PubSubConfig, SourceError};

/// Publishes an object's finalize event to every dispatcher.
#[async_trait]
pub trait EventAnnouncer: Send + Sync + 'static {
    /// Where announcements go, for messages.
    fn describe(&self) -> String;

    /// Publishes `event`; returns once the topic has accepted it.
    async fn announce(&self, event: &ObjectEvent) -> Result<(), SourceError>;
}

/// An [`EventAnnouncer`] on the Pub/Sub notifications topic. It connects
/// on its first announcement: most clients never release a lease, and
/// creating one must not need the network.
pub struct PubSubAnnouncer {
    config: PubSubConfig,
    publisher: tokio::sync::OnceCell<Publisher>,
    describe: String,
}

impl PubSubAnnouncer {
    /// Announces on the topic of `config` (its project, topic and emulator;
    /// the instance is not used).
    pub fn new(config: PubSubConfig) -> Self {
        let describe = format!("pubsub:projects/{}/topics/{}", config.project, config.topic);
        Self {
            config,
            publisher: tokio::sync::OnceCell::new(),
            describe,
        }
    }

    async fn publisher(&self) -> Result<&Publisher, SourceError> {
        let fail = |reason: String| SourceError {
            source_name: self.describe.clone(),
            reason,
        };
        self.publisher
            .get_or_try_init(|| async {
                let client = Client::new(client_config(&self.config).await.map_err(fail)?)
                    .await
                    .map_err(|e| fail(format!("cannot connect to Pub/Sub: {e}")))?;
                Ok(client.topic(&self.config.topic).new_publisher(None))
            })
            .await
    }
}

#[async_trait]
impl EventAnnouncer for PubSubAnnouncer {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    async fn announce(&self, event: &ObjectEvent) -> Result<(), SourceError> {
        let message = finalize_message(event);
        self.publisher()
            .await?
            .publish_immediately(vec![message], None)
            .await
            .map(drop)
            .map_err(|status| SourceError {
                source_name: self.describe.clone(),
                reason: format!("cannot announce {}: {status}", event.name),
            })
    }
}

/// The message GCS itself would publish for `event`, without a payload.
fn finalize_message(event: &ObjectEvent) -> PubsubMessage {
    let attributes = [
        ("eventType", "OBJECT_FINALIZE".to_owned()),
        ("objectId", event.name.clone()),
        ("objectGeneration", event.generation.to_string()),
        ("bucketId", event.bucket.clone()),
        ("payloadFormat", "NONE".to_owned()),
    ];
    let mut attributes: std::collections::HashMap<String, String> = attributes
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    trace_context::inject(&mut attributes);
    PubsubMessage {
        attributes,
        ..PubsubMessage::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Acker;

    #[test]
    fn an_announcement_parses_as_the_event_it_announces() {
        let event = ObjectEvent {
            bucket: "b".to_owned(),
            name: "sessions/s/lease".to_owned(),
            generation: 42,
            metadata: Default::default(),
        };
        let mut message = finalize_message(&event);
        message.message_id = "m".to_owned();
        match crate::pubsub_source::parse_notification(&message, Acker::none()) {
            crate::SourceItem::Event(parsed, _) => assert_eq!(parsed, event),
            other => panic!("not an event: {other:?}"),
        }
    }
}
