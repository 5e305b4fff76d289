//! Object events and the trait every event backend implements.

use std::collections::BTreeMap;

use async_trait::async_trait;
use futures::future::BoxFuture;

/// An object-finalize event: a generation of an object has been completely
/// written. Mirrors the attributes of a GCS Pub/Sub notification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectEvent {
    /// The bucket (GCS) or store directory (embedded) the object lives in.
    pub bucket: String,
    /// The full object name, e.g. `results/abc.json`.
    pub name: String,
    /// The generation that was finalized.
    pub generation: i64,
    /// The object's custom metadata (e.g. `traceparent`), when the event carries it.
    pub metadata: BTreeMap<String, String>,
}

/// Acknowledges one delivery to its source. Sources that need no
/// acknowledgement (filesystem events) use [`Acker::none`].
pub struct Acker(Option<Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>>);

impl Acker {
    /// An acknowledgement that does nothing.
    pub fn none() -> Self {
        Acker(None)
    }

    /// An acknowledgement that runs `ack` once.
    pub fn new(ack: impl FnOnce() -> BoxFuture<'static, ()> + Send + 'static) -> Self {
        Acker(Some(Box::new(ack)))
    }

    /// Acknowledges the delivery; call only after it has been routed.
    pub async fn ack(self) {
        if let Some(ack) = self.0 {
            ack().await;
        }
    }
}

impl std::fmt::Debug for Acker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Acker"
        } else {
            "Acker(none)"
        })
    }
}

/// One thing a source hands the notifier.
#[derive(Debug)]
pub enum SourceItem {
    /// A finalize event, to be acked after routing.
    Event(ObjectEvent, Acker),
    /// A message that is not a usable event (bad payload, wrong event type);
    /// acked and counted, never redelivered forever.
    Malformed {
        /// Why it could not be used.
        reason: String,
        /// Acknowledges the message.
        ack: Acker,
    },
    /// The source has (re)established its subscription. Events from before
    /// may have been lost, so the notifier reads the results of every pending
    /// execution once (list-then-watch).
    Resubscribed,
}

/// The source has stopped for good; every waiter gets a typed error.
#[derive(Debug, Clone, thiserror::Error)]
#[error("event source {source_name} stopped: {reason}")]
pub struct SourceError {
    /// Which source.
    pub source_name: String,
    /// Why.
    pub reason: String,
}

/// A stream of object events. Implementations reconnect by themselves when
/// they can; returning `Err` means they cannot and will not.
#[async_trait]
pub trait EventSource: Send + 'static {
    /// A short description, e.g. `inotify:/path/results` or `pubsub:projects/p/subscriptions/s`.
    fn describe(&self) -> String;

    /// The next item. Cancel-safe: dropping the future loses nothing.
    async fn next(&mut self) -> Result<SourceItem, SourceError>;

    /// The bucket every event of this source must come from, when the
    /// source is told it: the notifier counts events of any other bucket as
    /// foreign and ignores them (a topic may receive several buckets'
    /// notifications). `None` (the default) checks nothing.
    fn bucket(&self) -> Option<&str> {
        None
    }

    /// Releases what the source holds outside this process (the Pub/Sub
    /// source deletes its subscription) at a graceful shutdown; `next` is
    /// not called afterwards. [`crate::Notifier::shutdown`] calls it once
    /// the routing has stopped. Closing again, or closing what someone else
    /// already released, succeeds. Sources that hold nothing outside the
    /// process (filesystem events) keep this default, which does nothing;
    /// a source dropped without `close` leaves outside resources to expire
    /// by themselves.
    async fn close(&mut self) -> Result<(), SourceError> {
        Ok(())
    }
}
