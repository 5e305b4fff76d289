//! The Pub/Sub event source: a streaming pull of the Cloud Storage
//! notifications that the bucket publishes on the notifications topic.
//!
//! Each dispatcher instance owns one subscription, `runbox-{instance}`,
//! created when the source connects, filtered on the instance's execution-id
//! prefix (`results/{instance}-`) and on `sessions/` (announced session
//! leases, see [`crate::PubSubAnnouncer`]) and given an expiration policy so a crashed
//! instance's subscription goes away by itself. The filter only saves traffic:
//! the emulator ignores filters, and nothing here relies on it.
//!
//! What a message becomes:
//! - `eventType=OBJECT_FINALIZE` with `bucketId`, `objectId` and a numeric
//!   `objectGeneration`, and a `JSON_API_V1` payload that is a JSON object
//!   (the object resource): [`SourceItem::Event`], whose metadata is the
//!   payload's `metadata` map (custom metadata such as `traceparent`). With
//!   `payloadFormat=NONE` the payload is not read and the metadata is empty.
//! - any other event type (`OBJECT_DELETE`, `OBJECT_ARCHIVE`,
//!   `OBJECT_METADATA_UPDATE`): [`SourceItem::Malformed`] with a reason
//!   saying so. They are not completion signals; reporting them as malformed
//!   makes the notifier ack and count them like any other unusable message.
//! - missing or invalid attributes, or a payload that is not a JSON object:
//!   [`SourceItem::Malformed`].
//!
//! Every item carries an [`Acker`] that acknowledges that one message.
//! Objects outside `results/` are reported as events too: routing them (and
//! ignoring them) is the notifier's job.
//!
//! One background task runs the stream. It reconnects with exponential
//! backoff (with jitter) when the connection breaks, recreates the
//! subscription when it has disappeared (the Pub/Sub emulator forgets
//! everything when it restarts) and waits, backing off, while the topic is
//! missing: the topic is infrastructure and is never created here. After the
//! first subscribe and after every reconnect or re-subscribe it emits
//! [`SourceItem::Resubscribed`], so the notifier reads the results it may
//! have missed. It stops for good (an `Err` from [`EventSource::next`]) only
//! on errors that retrying cannot fix (invalid argument, permission denied,
//! failed precondition such as a detached subscription, unimplemented), when
//! the subscription is deleted ([`EventSource::close`], which
//! [`crate::Notifier::shutdown`] calls, or [`PubSubSubscription::delete`]),
//! or when the source is dropped.
//!
//! Leases are not extended: the notifier acks as soon as it has routed an
//! item, well within the ack deadline. A message that sits in the buffer past
//! the deadline is delivered again, which the notifier's dedupe absorbs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::FutureExt;
use gcloud_gax::conn::{ConnectionOptions, Environment};
use gcloud_gax::grpc::{Code, Status};
use gcloud_gax::retry::RetrySetting;
use gcloud_googleapis::pubsub::v1::{ExpirationPolicy, PubsubMessage, StreamingPullRequest};
use gcloud_pubsub::client::{Client, ClientConfig};
use gcloud_pubsub::subscription::{Subscription, SubscriptionConfig};
use runbox_core::backoff::{Backoff, BackoffPolicy, Jitter};
use runbox_core::config::{Env, Lookup};
use tokio::sync::{mpsc, watch};

use crate::{Acker, EventSource, ObjectEvent, SourceError, SourceItem};
use runbox_core::trace_context;

/// The variable that points Google's Pub/Sub clients at an emulator (`host:port`).
pub const PUBSUB_EMULATOR_HOST: &str = "PUBSUB_EMULATOR_HOST";

/// The one event type that is a completion signal.
const FINALIZE: &str = "OBJECT_FINALIZE";

/// A stream that stayed open this long before breaking counts as healthy.
const STABLE_STREAM: Duration = Duration::from_secs(10);

/// Settings of a [`PubSubEventSource`].
#[derive(Clone, Debug)]
pub struct PubSubConfig {
    /// Google Cloud project of the topic and the subscription.
    pub project: String,
    /// Topic id (not the full name) receiving the bucket's notifications.
    pub topic: String,
    /// The bucket whose notifications count (`RUNBOX_BUCKET`); events whose
    /// `bucketId` differs are foreign ([`EventSource::bucket`]). `None`
    /// checks nothing.
    pub bucket: Option<String>,
    /// The dispatcher instance's id: names the subscription
    /// (`runbox-{instance}`) and its filter (`results/{instance}-`).
    pub instance: String,
    /// The Pub/Sub emulator (`host:port`); `None` for Google Cloud with
    /// Application Default Credentials.
    pub emulator_host: Option<String>,
    /// Ack deadline of the subscription and the stream, 10 s to 600 s.
    /// Default: 30 s.
    pub ack_deadline: Duration,
    /// The subscription is deleted by Pub/Sub after this long without a
    /// subscriber (at least one day). Default: one day.
    pub expiration: Duration,
    /// First reconnect delay; doubles on each failure. Default: 100 ms.
    pub backoff_initial: Duration,
    /// Largest reconnect delay. Default: 10 s.
    pub backoff_max: Duration,
    /// Items buffered between the stream and [`EventSource::next`]. Default: 256.
    pub buffer: usize,
}

impl PubSubConfig {
    /// Settings with the defaults above.
    pub fn new(
        project: impl Into<String>,
        topic: impl Into<String>,
        instance: impl Into<String>,
    ) -> Self {
        Self {
            project: project.into(),
            topic: topic.into(),
            bucket: None,
            instance: instance.into(),
            emulator_host: None,
            ack_deadline: Duration::from_secs(30),
            expiration: Duration::from_secs(24 * 3600),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            buffer: 256,
        }
    }

    /// Counts only `bucket`'s events ([`PubSubConfig::bucket`]).
    #[must_use]
    pub fn with_bucket(mut self, bucket: impl Into<String>) -> Self {
        self.bucket = Some(bucket.into());
        self
    }

    /// Uses the emulator at `host` (`host:port`, an `http://` prefix is accepted).
    #[must_use]
    pub fn with_emulator(mut self, host: impl Into<String>) -> Self {
        self.emulator_host = Some(host.into());
        self
    }

    /// Reads `PUBSUB_EMULATOR_HOST` through `env`; unset means Google Cloud.
    #[must_use]
    pub fn with_emulator_from(mut self, env: &dyn Lookup) -> Self {
        self.emulator_host = env.get(PUBSUB_EMULATOR_HOST);
        self
    }

    /// Sets the ack deadline (clamped to Pub/Sub's 10–600 s).
    #[must_use]
    pub fn with_ack_deadline(mut self, deadline: Duration) -> Self {
        self.ack_deadline = deadline;
        self
    }

    /// Sets the reconnect backoff.
    #[must_use]
    pub fn with_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff_initial = initial;
        self.backoff_max = max;
        self
    }

    /// The subscription id: `runbox-{instance}`.
    pub fn subscription_id(&self) -> String {
        format!("runbox-{}", self.instance)
    }

    /// The subscription filter: this instance's results (and the live
    /// output chunks written beside them, which share the prefix), the
    /// results of request-topic executions (any instance may have to finish
    /// awaiting one whose launcher died, see [`runbox_core::request_id`]),
    /// and the
    /// session objects dispatchers announce to each other (session leases).
    pub fn filter(&self) -> String {
        format!(
            "hasPrefix(attributes.objectId, \"{results}{}-\") OR hasPrefix(attributes.objectId, \"{results}{}\") OR hasPrefix(attributes.objectId, \"{}\")",
            self.instance,
            runbox_core::request_id::TOPIC_EXECUTION_PREFIX,
            runbox_core::layout::SESSIONS_PREFIX,
            results = runbox_core::layout::RESULTS_PREFIX,
        )
    }

    fn ack_deadline_secs(&self) -> i32 {
        self.ack_deadline.as_secs().clamp(10, 600) as i32
    }
}

/// GCS object-finalize notifications from a Pub/Sub subscription of this
/// instance's own.
pub struct PubSubEventSource {
    items: mpsc::Receiver<Result<SourceItem, SourceError>>,
    handle: PubSubSubscription,
    describe: String,
    bucket: Option<String>,
}

/// A handle on the source's subscription that outlives handing the source to
/// the notifier. [`crate::Notifier::shutdown`] already deletes the
/// subscription (through [`EventSource::close`]); deleting it again here is
/// harmless.
#[derive(Clone)]
pub struct PubSubSubscription {
    subscription: Subscription,
    stop: Arc<watch::Sender<bool>>,
    worker_done: watch::Receiver<()>,
    /// Set once a delete succeeded, so later ones make no call.
    deleted: Arc<AtomicBool>,
}

impl PubSubEventSource {
    /// Connects, creates (or reuses) the subscription and starts streaming;
    /// must be called inside a tokio runtime. Fails when the instance id is
    /// invalid, Pub/Sub cannot be reached, the credentials cannot be loaded,
    /// or the topic does not exist: at start these are configuration errors,
    /// not outages to wait out (the caller may retry).
    pub async fn connect(config: PubSubConfig) -> Result<Self, SourceError> {
        let sub_id = config.subscription_id();
        let describe = format!("pubsub:projects/{}/subscriptions/{sub_id}", config.project);
        let fail = |reason: String| SourceError {
            source_name: describe.clone(),
            reason,
        };

        // The id goes into the subscription name and a filter expression.
        runbox_core::InstanceId::new(&config.instance).map_err(|e| fail(e.to_string()))?;
        let client = Client::new(client_config(&config).await.map_err(&fail)?)
            .await
            .map_err(|e| fail(format!("cannot connect to Pub/Sub: {e}")))?;
        let subscription = client.subscription(&sub_id);
        let topic = client.fully_qualified_topic_name(&config.topic);
        let settings = subscription_config(&config);

        create_subscription(&subscription, &topic, &settings)
            .await
            .map_err(|status| {
                if status.code() == Code::NotFound {
                    fail(format!("topic {topic} does not exist"))
                } else {
                    fail(format!("cannot create the subscription: {status}"))
                }
            })?;

        let (tx, rx) = mpsc::channel(config.buffer.max(1));
        let (stop_tx, stop_rx) = watch::channel(false);
        let (done_tx, done_rx) = watch::channel(());
        let worker = Worker {
            subscription: subscription.clone(),
            topic,
            settings,
            backoff: Backoff::new(backoff_policy(&config)),
            ack_deadline: config.ack_deadline_secs(),
            client_id: format!("runbox-{}-{:x}", config.instance, fastrand::u64(..)),
            tx,
            stop: stop_rx,
            describe: describe.clone(),
            _done: done_tx,
        };
        tokio::spawn(worker.run());
        Ok(Self {
            bucket: config.bucket.clone(),
            items: rx,
            handle: PubSubSubscription {
                subscription,
                stop: Arc::new(stop_tx),
                worker_done: done_rx,
                deleted: Arc::new(AtomicBool::new(false)),
            },
            describe,
        })
    }

    /// Connects with `PUBSUB_EMULATOR_HOST` read from the process
    /// environment (unset: Google Cloud).
    pub async fn from_env(
        project: impl Into<String>,
        topic: impl Into<String>,
        instance: impl Into<String>,
    ) -> Result<Self, SourceError> {
        Self::connect(PubSubConfig::new(project, topic, instance).with_emulator_from(&Env)).await
    }

    /// The fully qualified subscription name.
    pub fn subscription_name(&self) -> &str {
        self.handle.name()
    }

    /// A handle for deleting the subscription later.
    pub fn subscription(&self) -> PubSubSubscription {
        self.handle.clone()
    }

    /// Stops streaming and deletes the subscription (graceful shutdown).
    pub async fn shutdown(self) -> Result<(), SourceError> {
        self.handle.delete().await
    }
}

impl PubSubSubscription {
    /// The fully qualified subscription name.
    pub fn name(&self) -> &str {
        self.subscription.fully_qualified_name()
    }

    /// Stops the source's stream for good and deletes the subscription. The
    /// source then reports that it stopped. Deleting a subscription that is
    /// already gone (deleted before through any handle or the source, or
    /// expired) succeeds quietly.
    pub async fn delete(&self) -> Result<(), SourceError> {
        self.stop.send_replace(true);
        // Wait for the worker to end first, or it could recreate the
        // subscription right after it is deleted.
        let mut done = self.worker_done.clone();
        while done.changed().await.is_ok() {}
        if self.deleted.load(Ordering::Acquire) {
            return Ok(());
        }
        let deleted = match self.subscription.delete(None).await {
            Ok(()) => Ok(()),
            Err(status) if status.code() == Code::NotFound => Ok(()),
            Err(status) => Err(SourceError {
                source_name: format!("pubsub:{}", self.name()),
                reason: format!("cannot delete the subscription: {status}"),
            }),
        };
        if deleted.is_ok() {
            self.deleted.store(true, Ordering::Release);
        }
        deleted
    }
}

#[async_trait]
impl EventSource for PubSubEventSource {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn bucket(&self) -> Option<&str> {
        self.bucket.as_deref()
    }

    async fn next(&mut self) -> Result<SourceItem, SourceError> {
        // Receiving from an mpsc channel is cancel-safe, which makes this so.
        match self.items.recv().await {
            Some(item) => item,
            None => Err(SourceError {
                source_name: self.describe.clone(),
                reason: if *self.handle.stop.borrow() {
                    "the subscription was deleted".to_owned()
                } else {
                    "the subscriber task ended".to_owned()
                },
            }),
        }
    }

    /// Stops the stream and deletes the subscription, as
    /// [`PubSubSubscription::delete`] does.
    async fn close(&mut self) -> Result<(), SourceError> {
        self.handle.delete().await
    }
}

/// Turns one Pub/Sub message into the item the notifier gets; `ack`
/// acknowledges it.
pub(crate) fn parse_notification(message: &PubsubMessage, ack: Acker) -> SourceItem {
    match parse_event(message) {
        Ok(event) => SourceItem::Event(event, ack),
        Err(reason) => SourceItem::Malformed {
            reason: format!("message {}: {reason}", message.message_id),
            ack,
        },
    }
}

fn parse_event(message: &PubsubMessage) -> Result<ObjectEvent, String> {
    let attr = |key: &str| {
        message
            .attributes
            .get(key)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("attribute {key} is missing"))
    };
    let event_type = attr("eventType")?;
    if event_type != FINALIZE {
        return Err(format!("event type {event_type} is not {FINALIZE}"));
    }
    let name = attr("objectId")?.clone();
    let bucket = attr("bucketId")?.clone();
    let generation = attr("objectGeneration")?;
    let generation = generation
        .parse::<i64>()
        .map_err(|_| format!("objectGeneration {generation:?} is not a number"))?;
    let metadata = match message.attributes.get("payloadFormat").map(String::as_str) {
        // An announcement carries its publisher's trace as an attribute
        // (there is no object resource to carry it).
        Some("NONE") => message
            .attributes
            .get(trace_context::ATTRIBUTE)
            .map(|tp| BTreeMap::from([(trace_context::ATTRIBUTE.to_owned(), tp.clone())]))
            .unwrap_or_default(),
        _ => payload_metadata(&message.data)?,
    };
    Ok(ObjectEvent {
        bucket,
        name,
        generation,
        metadata,
    })
}

/// The custom metadata of a `JSON_API_V1` payload (the object resource).
fn payload_metadata(data: &[u8]) -> Result<BTreeMap<String, String>, String> {
    let value: serde_json::Value =
        serde_json::from_slice(data).map_err(|e| format!("payload is not JSON: {e}"))?;
    let object = value.as_object().ok_or("payload is not a JSON object")?;
    let Some(metadata) = object.get("metadata") else {
        return Ok(BTreeMap::new());
    };
    let metadata = metadata
        .as_object()
        .ok_or("payload field metadata is not an object")?;
    metadata
        .iter()
        .map(|(k, v)| match v.as_str() {
            Some(v) => Ok((k.clone(), v.to_owned())),
            None => Err(format!("payload metadata {k:?} is not a string")),
        })
        .collect()
}

/// The streaming-pull task: runs until the source is dropped, the
/// subscription is deleted, or a permanent error.
struct Worker {
    subscription: Subscription,
    topic: String,
    settings: SubscriptionConfig,
    backoff: Backoff,
    ack_deadline: i32,
    client_id: String,
    tx: mpsc::Sender<Result<SourceItem, SourceError>>,
    stop: watch::Receiver<bool>,
    describe: String,
    /// Dropped when the task ends, which [`PubSubSubscription::delete`] waits for.
    _done: watch::Sender<()>,
}

/// How one streaming pull ended.
enum StreamEnd {
    /// Nobody listens any more.
    Closed,
    /// The server ended the stream without an error.
    Eof,
    /// The stream (or opening it) failed.
    Failed(Status),
}

/// What to do after a stream ended.
enum Next {
    /// Open a new stream on the same subscription.
    Reconnect,
    /// The subscription is gone: create it again.
    Resubscribe,
    /// Retrying cannot help: report this and end.
    Stop(SourceError),
}

impl Worker {
    async fn run(mut self) {
        // `connect` has just created the subscription.
        if !self.emit(Ok(SourceItem::Resubscribed)).await {
            return;
        }
        let mut announced = true;
        loop {
            let end = {
                let mut stop = self.stop.clone();
                let tx = self.tx.clone();
                tokio::select! {
                    _ = stop.wait_for(|stopped| *stopped) => return,
                    _ = tx.closed() => return,
                    end = self.stream(&mut announced) => end,
                }
            };
            let next = match end {
                StreamEnd::Closed => return,
                StreamEnd::Eof => match self.subscription.exists(Some(no_retry())).await {
                    Ok(true) => Next::Reconnect,
                    Ok(false) => Next::Resubscribe,
                    Err(status) => self.classify(status),
                },
                StreamEnd::Failed(status) => self.classify(status),
            };
            if self.tx.is_closed() {
                return;
            }
            match next {
                Next::Reconnect => {
                    announced = false;
                    if !self.pause().await {
                        return;
                    }
                }
                Next::Resubscribe => {
                    if !self.resubscribe().await {
                        return;
                    }
                    announced = true;
                }
                Next::Stop(err) => {
                    self.emit(Err(err)).await;
                    return;
                }
            }
        }
    }

    /// Runs one streaming pull until it ends. On a stream opened after a
    /// reconnect (`announced` false), checks that the subscription still
    /// exists and then emits `Resubscribed`.
    async fn stream(&mut self, announced: &mut bool) -> StreamEnd {
        let request = StreamingPullRequest {
            subscription: self.subscription.fully_qualified_name().to_owned(),
            stream_ack_deadline_seconds: self.ack_deadline,
            client_id: self.client_id.clone(),
            max_outstanding_messages: 1000,
            ..StreamingPullRequest::default()
        };
        let client = self.subscription.get_client();
        let response = match client
            .streaming_pull(request, Duration::from_secs(10), Some(no_retry()))
            .await
        {
            Ok(response) => response,
            Err(status) => return StreamEnd::Failed(status),
        };
        if !*announced {
            // Opening a stream does not prove the subscription is there (an
            // error can come with the first message instead); announcing it
            // while it is missing would let the notifier resync too early.
            match self.subscription.exists(Some(no_retry())).await {
                Ok(true) => {}
                Ok(false) => return StreamEnd::Failed(Status::not_found("subscription is gone")),
                Err(status) => return StreamEnd::Failed(status),
            }
            if !self.emit(Ok(SourceItem::Resubscribed)).await {
                return StreamEnd::Closed;
            }
            *announced = true;
        }
        let opened = Instant::now();
        let mut stream = response.into_inner();
        loop {
            let batch = match stream.message().await {
                Ok(Some(batch)) => batch,
                end => {
                    // A stream that lived a while was healthy: start the
                    // backoff over. One that fails at once keeps growing it.
                    if opened.elapsed() >= STABLE_STREAM {
                        self.backoff.reset();
                    }
                    return match end {
                        Err(status) => StreamEnd::Failed(status),
                        _ => StreamEnd::Eof,
                    };
                }
            };
            self.backoff.reset();
            for received in batch.received_messages {
                let Some(message) = received.message else {
                    continue;
                };
                let ack = acker(self.subscription.clone(), received.ack_id);
                if !self.emit(Ok(parse_notification(&message, ack))).await {
                    return StreamEnd::Closed;
                }
            }
        }
    }

    /// Decides how to go on after `status`.
    fn classify(&self, status: Status) -> Next {
        match status.code() {
            Code::NotFound => {
                tracing::info!(source = %self.describe, "subscription is gone; creating it again");
                Next::Resubscribe
            }
            code if is_permanent(code) => {
                tracing::error!(source = %self.describe, %status, "Pub/Sub refused the subscriber; giving up");
                Next::Stop(SourceError {
                    source_name: self.describe.clone(),
                    reason: format!("Pub/Sub refused the subscriber: {status}"),
                })
            }
            _ => {
                tracing::warn!(source = %self.describe, %status, "Pub/Sub stream broke; reconnecting");
                Next::Reconnect
            }
        }
    }

    /// Creates the subscription again, backing off while Pub/Sub or the
    /// topic is missing, then emits `Resubscribed`. False when the task
    /// should end.
    async fn resubscribe(&mut self) -> bool {
        loop {
            let created = {
                let mut stop = self.stop.clone();
                tokio::select! {
                    _ = stop.wait_for(|stopped| *stopped) => return false,
                    created = create_subscription(&self.subscription, &self.topic, &self.settings) => created,
                }
            };
            match created {
                Ok(()) => break,
                Err(status) if status.code() == Code::NotFound => {
                    tracing::warn!(source = %self.describe, topic = %self.topic, "topic is missing; waiting for it");
                }
                Err(status) if is_permanent(status.code()) => {
                    if let Next::Stop(err) = self.classify(status) {
                        self.emit(Err(err)).await;
                    }
                    return false;
                }
                Err(status) => {
                    tracing::warn!(source = %self.describe, %status, "cannot create the subscription; retrying");
                }
            }
            if !self.pause().await {
                return false;
            }
        }
        tracing::info!(source = %self.describe, "subscribed again");
        self.emit(Ok(SourceItem::Resubscribed)).await
    }

    /// Waits out the next backoff delay. False when the task should end.
    async fn pause(&mut self) -> bool {
        // The policy limits neither attempts nor time, so there always is
        // a next delay.
        let delay = self
            .backoff
            .next_delay()
            .unwrap_or(self.backoff.policy().max_delay);
        let mut stop = self.stop.clone();
        tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => false,
            _ = self.tx.closed() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }

    /// Hands an item to the consumer, waiting while the buffer is full.
    /// False when nobody listens or the subscription is being deleted (a
    /// consumer that stopped reading must not keep `delete` waiting).
    async fn emit(&self, item: Result<SourceItem, SourceError>) -> bool {
        let mut stop = self.stop.clone();
        tokio::select! {
            sent = self.tx.send(item) => sent.is_ok(),
            _ = stop.wait_for(|stopped| *stopped) => false,
        }
    }
}

/// Errors that no retry fixes: the request or the setup is wrong.
fn is_permanent(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::PermissionDenied
            | Code::FailedPrecondition
            | Code::Unimplemented
    )
}

fn acker(subscription: Subscription, ack_id: String) -> Acker {
    Acker::new(move || {
        async move {
            if let Err(status) = subscription.ack(vec![ack_id]).await {
                // Not fatal: the message comes again after its deadline and
                // the notifier drops the duplicate.
                tracing::warn!(subscription = subscription.fully_qualified_name(), %status, "ack failed");
            }
        }
        .boxed()
    })
}

/// Creates the subscription; one that already exists is reused as it is.
async fn create_subscription(
    subscription: &Subscription,
    topic: &str,
    settings: &SubscriptionConfig,
) -> Result<(), Status> {
    match subscription
        .create(topic, settings.clone(), Some(no_retry()))
        .await
    {
        Err(status) if status.code() == Code::AlreadyExists => Ok(()),
        other => other,
    }
}

fn subscription_config(config: &PubSubConfig) -> SubscriptionConfig {
    SubscriptionConfig {
        ack_deadline_seconds: config.ack_deadline_secs(),
        filter: config.filter(),
        expiration_policy: Some(ExpirationPolicy {
            ttl: Some(prost_types::Duration {
                seconds: config.expiration.as_secs().max(24 * 3600) as i64,
                nanos: 0,
            }),
        }),
        ..SubscriptionConfig::default()
    }
}

/// The Pub/Sub client settings for `config`'s project and endpoint (the
/// emulator, or Google Cloud with Application Default Credentials).
pub async fn client_config(config: &PubSubConfig) -> Result<ClientConfig, String> {
    let environment = match &config.emulator_host {
        Some(host) => {
            let host = host
                .trim()
                .trim_start_matches("http://")
                .trim_end_matches('/');
            Environment::Emulator(host.to_owned())
        }
        None => {
            use gcloud_pubsub::apiv1::conn_pool::{AUDIENCE, SCOPES};
            let credentials =
                runbox_core::credentials::DefaultCredentials::from_env(&SCOPES, Some(AUDIENCE))
                    .await
                    .map_err(|e| {
                        format!(
                            "cannot load Application Default Credentials: {}",
                            runbox_core::error_chain(&e)
                        )
                    })?;
            Environment::GoogleCloud(Box::new(credentials))
        }
    };
    Ok(ClientConfig {
        // One connection carries the stream and the acks.
        pool_size: 1,
        project_id: Some(config.project.clone()),
        environment,
        endpoint: gcloud_pubsub::apiv1::conn_pool::PUBSUB.to_owned(),
        connection_option: ConnectionOptions {
            timeout: None,
            connect_timeout: Some(Duration::from_secs(10)),
            // Notice a peer that vanished without closing the connection.
            http2_keep_alive_interval: Some(Duration::from_secs(30)),
            keep_alive_timeout: Some(Duration::from_secs(10)),
            keep_alive_while_idle: Some(true),
        },
    })
}

/// No retries inside the client: the worker's own backoff decides.
fn no_retry() -> RetrySetting {
    RetrySetting {
        take: 0,
        codes: Vec::new(),
        ..RetrySetting::default()
    }
}

/// The reconnect backoff: from `backoff_initial` doubling up to
/// `backoff_max`, each delay between half and all of its step (equal
/// jitter), so many instances that lost the same server do not come back in
/// lockstep; no limit on attempts or time, since the stream must come back.
fn backoff_policy(config: &PubSubConfig) -> BackoffPolicy {
    // A zero first delay would spin; a cap below it would shrink the steps.
    let initial = config.backoff_initial.max(Duration::from_millis(1));
    BackoffPolicy::new(initial, config.backoff_max.max(initial)).with_jitter(Jitter::Equal)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(attrs: &[(&str, &str)], data: &str) -> PubsubMessage {
        PubsubMessage {
            data: data.as_bytes().to_vec(),
            attributes: attrs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            message_id: "m1".to_owned(),
            ..PubsubMessage::default()
        }
    }

    const FINAL: [(&str, &str); 5] = [
        ("eventType", "OBJECT_FINALIZE"),
        ("objectId", "results/abc-1.json"),
        ("objectGeneration", "1712"),
        ("bucketId", "b"),
        ("payloadFormat", "JSON_API_V1"),
    ];

    #[test]
    fn a_finalize_notification_is_an_event_with_its_metadata() {
        let msg = message(
            &FINAL,
            r#"{"name":"results/abc-1.json","metadata":{"traceparent":"00-ab-cd-01"}}"#,
        );
        let event = parse_event(&msg).unwrap();
        assert_eq!(event.name, "results/abc-1.json");
        assert_eq!(event.bucket, "b");
        assert_eq!(event.generation, 1712);
        assert_eq!(event.metadata["traceparent"], "00-ab-cd-01");
        // No custom metadata is fine.
        assert!(
            parse_event(&message(&FINAL, "{}"))
                .unwrap()
                .metadata
                .is_empty()
        );
    }

    #[test]
    fn an_announcement_carries_its_trace_attribute_as_metadata() {
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let mut attrs = FINAL.to_vec();
        attrs[4].1 = "NONE";
        attrs.push(("traceparent", tp));
        // The payload of an announcement is never read.
        let event = parse_event(&message(&attrs, "not json")).unwrap();
        assert_eq!(event.metadata.len(), 1);
        assert_eq!(event.metadata["traceparent"], tp);
    }

    #[test]
    fn unusable_messages_say_why() {
        let mut attrs = FINAL.to_vec();
        attrs[0].1 = "OBJECT_DELETE";
        let err = parse_event(&message(&attrs, "{}")).unwrap_err();
        assert!(err.contains("OBJECT_DELETE"), "{err}");

        let mut attrs = FINAL.to_vec();
        attrs.remove(2);
        let err = parse_event(&message(&attrs, "{}")).unwrap_err();
        assert!(err.contains("objectGeneration"), "{err}");

        let mut attrs = FINAL.to_vec();
        attrs[2].1 = "12x";
        assert!(parse_event(&message(&attrs, "{}")).is_err());

        let err = parse_event(&message(&FINAL, "not json")).unwrap_err();
        assert!(err.contains("not JSON"), "{err}");
        assert!(parse_event(&message(&FINAL, "[1]")).is_err());
        assert!(parse_event(&message(&FINAL, r#"{"metadata":{"a":1}}"#)).is_err());

        let mut attrs = FINAL.to_vec();
        attrs[4].1 = "NONE";
        assert!(parse_event(&message(&attrs, "not json")).is_ok());
    }

    #[test]
    fn subscription_is_named_and_filtered_by_instance() {
        let cfg = PubSubConfig::new("p", "t", "ab12cd");
        assert_eq!(cfg.subscription_id(), "runbox-ab12cd");
        assert_eq!(
            cfg.filter(),
            r#"hasPrefix(attributes.objectId, "results/ab12cd-") OR hasPrefix(attributes.objectId, "results/rq-") OR hasPrefix(attributes.objectId, "sessions/")"#
        );
        assert_eq!(
            cfg.with_ack_deadline(Duration::from_secs(1))
                .ack_deadline_secs(),
            10
        );
    }

    #[test]
    fn backoff_grows_to_its_cap_and_resets() {
        let config = PubSubConfig::new("p", "t", "i")
            .with_backoff(Duration::from_millis(100), Duration::from_millis(400));
        let mut b = Backoff::new(backoff_policy(&config));
        let delays: Vec<_> = (0..5).map(|_| b.next_delay().unwrap()).collect();
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(100));
        assert!(delays[4] >= Duration::from_millis(200) && delays[4] <= Duration::from_millis(400));
        b.reset();
        assert!(b.next_delay().unwrap() <= Duration::from_millis(100));
    }
}
