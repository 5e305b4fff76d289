//! The request topic: exec requests pulled from a Pub/Sub subscription
//! shared by every `serve` instance, each answered with an `ExecCompleted`
//! on the completions topic. A thin adapter over [`Client`]: a message
//! becomes one `Session::exec` with an execution id derived from its
//! `requestId`.
//!
//! At-least-once, end to end:
//! - A request message is acked only after its completion is published.
//!   While the command runs, its lease is extended; if this instance dies,
//!   Pub/Sub delivers the message again (to any instance) after the ack
//!   deadline, and that instance publishes the completion. This is the
//!   relay: the message itself is the durable record of a completion still
//!   owed, so no second subscription is needed and nothing can be lost
//!   between two of them.
//! - A redelivered request never runs twice: its execution id is derived
//!   from the request id and the request object is written create-only, so
//!   the second delivery finds it and awaits that execution (its result,
//!   the end of its executor, or its deadline, read from the request
//!   object, after which it is settled LOST).
//! - A completion may be published twice (an instance dies between publish
//!   and ack); consumers dedupe by `requestId`.
//!
//! Order: messages are pulled by one loop in delivery order (ordering key
//! = session id) and queued on their session in that order; the session
//! queue runs them one at a time, sessions in parallel.
//!
//! Bad messages are acked at once and answered REJECTED when a request id
//! can be read, else logged and counted. Failures that retrying may fix
//! (a store or launch outage) nack the message; the subscription's
//! dead-letter policy bounds how often (see the README).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use gcloud_googleapis::pubsub::v1::PubsubMessage;
use gcloud_pubsub::client::Client as PubSubClient;
use gcloud_pubsub::publisher::Publisher;
use gcloud_pubsub::subscriber::ReceivedMessage;
use gcloud_pubsub::subscription::Subscription;
use runbox_core::trace_context;
use runbox_dispatcher::{Client, Error, ExecResult};
use runbox_notifier::PubSubConfig;
use tokio::sync::Semaphore;
use tracing::Instrument;

use super::Shutdown;
use crate::stdout::note;

pub mod completion;
pub mod message;

/// The subscription to pull requests from (id, or
/// `projects/P/subscriptions/S`); unset: no topic consumer.
pub const REQUESTS_SUBSCRIPTION_VAR: &str = "RUNBOX_REQUESTS_SUBSCRIPTION";
/// The topic completions go to (id, or `projects/P/topics/T`).
pub const COMPLETIONS_TOPIC_VAR: &str = "RUNBOX_COMPLETIONS_TOPIC";
/// Seconds a request message stays leased to this instance without an
/// extension (10–600, default 60): how soon another instance takes over
/// the requests of one that died.
pub const ACK_DEADLINE_VAR: &str = "RUNBOX_REQUESTS_ACK_DEADLINE_SECS";

/// Requests in flight per instance (received and not yet answered).
const MAX_IN_FLIGHT: usize = 1000;
/// Most requests one pull asks for.
const MAX_PULL: usize = 100;

/// Where the topic consumer pulls from and publishes to.
#[derive(Clone, Debug)]
pub struct TopicSettings {
    /// Google Cloud project of both.
    pub project: String,
    /// The requests subscription.
    pub subscription: String,
    /// The completions topic.
    pub completions: String,
    /// The lease of a request message, renewed at a third of it.
    pub ack_deadline: Duration,
    /// `PUBSUB_EMULATOR_HOST`.
    pub emulator_host: Option<String>,
}

/// Settings that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TopicSettingsError {
    /// The subscription is set but the topic is not.
    #[error("{REQUESTS_SUBSCRIPTION_VAR} is set, so {COMPLETIONS_TOPIC_VAR} must be too")]
    NoCompletionsTopic,
    /// Short names and no project.
    #[error(
        "{0} is a short name and RUNBOX_PROJECT is not set: set it, or give the full name projects/P/…"
    )]
    NoProject(&'static str),
    /// Not a number in range.
    #[error("{ACK_DEADLINE_VAR}={0:?} is not a number of seconds from 10 to 600")]
    BadAckDeadline(String),
}

impl TopicSettings {
    /// The settings from `env`; `None` when no requests subscription is set.
    pub fn resolve(
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, TopicSettingsError> {
        let get = |name: &str| env(name).filter(|v| !v.is_empty());
        let Some(subscription) = get(REQUESTS_SUBSCRIPTION_VAR) else {
            return Ok(None);
        };
        let completions =
            get(COMPLETIONS_TOPIC_VAR).ok_or(TopicSettingsError::NoCompletionsTopic)?;
        let project = match project_of(&subscription) {
            Some(p) => p.to_owned(),
            None => get("RUNBOX_PROJECT")
                .ok_or(TopicSettingsError::NoProject(REQUESTS_SUBSCRIPTION_VAR))?,
        };
        let ack_deadline = match get(ACK_DEADLINE_VAR) {
            None => Duration::from_secs(60),
            Some(v) => match v.parse::<u64>() {
                Ok(s) if (10..=600).contains(&s) => Duration::from_secs(s),
                _ => return Err(TopicSettingsError::BadAckDeadline(v)),
            },
        };
        Ok(Some(Self {
            project,
            subscription,
            completions,
            ack_deadline,
            emulator_host: get(runbox_notifier::PUBSUB_EMULATOR_HOST),
        }))
    }
}

fn project_of(name: &str) -> Option<&str> {
    match name.split('/').collect::<Vec<_>>()[..] {
        ["projects", p, _, _] if !p.is_empty() => Some(p),
        _ => None,
    }
}

/// The topic consumer could not start.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    /// Pub/Sub could not be reached or the credentials not loaded.
    #[error("connect to Pub/Sub: {0}")]
    Connect(String),
    /// The subscription or topic is missing or unreachable.
    #[error("{what} {name}: {reason}")]
    Missing {
        /// "subscription" or "topic".
        what: &'static str,
        /// Its full name.
        name: String,
        /// What Pub/Sub said.
        reason: String,
    },
}

/// What the consumer has done, for the log line at the end and for tests.
#[derive(Debug, Default)]
pub struct TopicStats {
    received: AtomicU64,
    completed: AtomicU64,
    rejected: AtomicU64,
    unanswerable: AtomicU64,
    handed_back: AtomicU64,
}

impl TopicStats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A one-line summary.
    pub fn summary(&self) -> String {
        format!(
            "{} request(s) received, {} completion(s) published ({} REJECTED), {} unanswerable message(s) dropped, {} handed back",
            self.received.load(Ordering::Relaxed),
            self.completed.load(Ordering::Relaxed),
            self.rejected.load(Ordering::Relaxed),
            self.unanswerable.load(Ordering::Relaxed),
            self.handed_back.load(Ordering::Relaxed),
        )
    }
}

/// A running topic consumer.
pub struct Topic {
    /// Its counters.
    pub stats: Arc<TopicStats>,
}

/// Connects, checks that the subscription and the topic exist, and starts
/// pulling on `shutdown`'s tracker; it stops pulling when draining starts.
pub async fn start(
    client: Client,
    settings: TopicSettings,
    shutdown: Shutdown,
) -> Result<Topic, TopicError> {
    let mut pubsub = PubSubConfig::new(&settings.project, &settings.completions, "serve");
    pubsub.emulator_host = settings.emulator_host.clone();
    let config = runbox_notifier::client_config(&pubsub)
        .await
        .map_err(TopicError::Connect)?;
    let pubsub = PubSubClient::new(config)
        .await
        .map_err(|e| TopicError::Connect(e.to_string()))?;
    let subscription = pubsub.subscription(&settings.subscription);
    let topic = pubsub.topic(&settings.completions);
    let missing = |what, name: &str, reason: String| TopicError::Missing {
        what,
        name: name.to_owned(),
        reason,
    };
    match subscription.exists(None).await {
        Ok(true) => {}
        Ok(false) => {
            return Err(missing(
                "subscription",
                subscription.fully_qualified_name(),
                "does not exist".into(),
            ));
        }
        Err(e) => {
            return Err(missing(
                "subscription",
                subscription.fully_qualified_name(),
                e.to_string(),
            ));
        }
    }
    match topic.exists(None).await {
        Ok(true) => {}
        Ok(false) => {
            return Err(missing(
                "topic",
                topic.fully_qualified_name(),
                "does not exist".into(),
            ));
        }
        Err(e) => {
            return Err(missing(
                "topic",
                topic.fully_qualified_name(),
                e.to_string(),
            ));
        }
    }
    let consumer = Arc::new(Consumer {
        client,
        publisher: topic.new_publisher(None),
        stats: Arc::new(TopicStats::default()),
        lease: settings.ack_deadline,
        in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        shutdown: shutdown.clone(),
    });
    let stats = consumer.stats.clone();
    note!(
        "runbox serve: pulling requests from {}, answering on {}",
        subscription.fully_qualified_name(),
        topic.fully_qualified_name()
    );
    shutdown.tasks.spawn(consumer.pull(subscription));
    Ok(Topic { stats })
}

struct Consumer {
    client: Client,
    publisher: Publisher,
    stats: Arc<TopicStats>,
    lease: Duration,
    in_flight: Arc<Semaphore>,
    shutdown: Shutdown,
}

/// What becomes of a message once its request is settled.
enum Outcome {
    /// Publish this completion, then ack.
    Answer(PubsubMessage),
    /// Give the message back to Pub/Sub for another try (or instance).
    HandBack(String),
}

impl Consumer {
    /// Pulls until draining starts.
    ///
    /// Unary long-polling pulls, not a streaming pull: with a stream,
    /// Pub/Sub keeps delivering to an instance that died until it notices
    /// the stream is broken (the emulator never does), so the survivors may
    /// not see a dead instance's requests again before the dead-letter
    /// policy takes them. A pull delivers only what a live instance asked
    /// for, sized by the room it has; a dead instance takes at most the
    /// answer to the one pull it had open.
    async fn pull(self: Arc<Self>, subscription: Subscription) {
        let draining = self.shutdown.draining.clone();
        let mut pause = Duration::from_millis(100);
        loop {
            // Room for at least one more request before asking for any.
            let first = tokio::select! {
                p = self.in_flight.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
                () = draining.cancelled() => break,
            };
            let room = 1 + self.in_flight.available_permits().min(MAX_PULL - 1);
            let pulled = tokio::select! {
                biased;
                () = draining.cancelled() => break,
                r = subscription.pull(room as i32, None) => r,
            };
            let messages = match pulled {
                Ok(m) => m,
                // A long poll that found nothing.
                Err(e) if e.code() == gcloud_gax::grpc::Code::DeadlineExceeded => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot pull requests; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = draining.cancelled() => break,
                    }
                    pause = (pause * 2).min(Duration::from_secs(10));
                    continue;
                }
            };
            pause = Duration::from_millis(100);
            let mut first = Some(first);
            for received in messages {
                // Only this loop takes permits, so the room counted above
                // is still there.
                let permit = match first.take() {
                    Some(p) => p,
                    None => match self.in_flight.clone().acquire_owned().await {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                };
                let this = self.clone();
                // Queued on its session here, in delivery order; awaited
                // in its own task.
                let work = this.accept(&received);
                self.shutdown.tasks.spawn(async move {
                    this.finish(received, work).await;
                    drop(permit);
                });
            }
        }
    }

    /// Checks a message and, when it can run, queues its command on its
    /// session (synchronously, so session order is delivery order).
    fn accept(&self, received: &ReceivedMessage) -> Work {
        TopicStats::bump(&self.stats.received);
        tracing::debug!(
            id = %received.message.message_id,
            attempt = received.delivery_attempt().unwrap_or(0),
            key = %received.message.ordering_key,
            "request received"
        );
        let req = match message::parse(&received.message.data) {
            Ok(r) => r,
            Err(rejection) => return Work::Rejected(rejection),
        };
        let id = req.request_id.execution_id();
        let session = match self.client.session(req.session.as_str()) {
            Ok(s) => s,
            Err(e) => {
                return Work::Rejected(message::Rejection {
                    request_id: Some(req.request_id.to_string()),
                    session_id: Some(req.session.to_string()),
                    reason: runbox_dispatcher::error_chain(&e),
                });
            }
        };
        let r = req.request;
        // One span from the request's receipt to its completion's publish,
        // continuing the publisher's trace when the message carries one;
        // the command's own spans are its children.
        let span = tracing::info_span!(
            "topic request",
            request = %req.request_id,
            execution = %id,
            otel.status_code = tracing::field::Empty,
        );
        if let Some(parent) = trace_context::from_attributes(&received.message.attributes) {
            trace_context::set_parent(&span, &parent);
        }
        let mut exec = session
            .exec(r.command)
            .execution_id(id.clone())
            .request_id(req.request_id.as_str());
        if let Some(here) = trace_context::traceparent(&span) {
            exec = exec.parent(here);
        }
        if r.timeout_ms > 0 {
            exec = exec.timeout(Duration::from_millis(r.timeout_ms));
        }
        if r.output_cap_bytes > 0 {
            exec = exec.output_cap(r.output_cap_bytes);
        }
        for (name, value) in r.env {
            exec = exec.env(name, value);
        }
        Work::Running {
            request_id: req.request_id.to_string(),
            session: req.session.to_string(),
            execution: id,
            future: std::future::IntoFuture::into_future(exec),
            span,
        }
    }

    /// Awaits the work (extending the message's lease meanwhile), publishes
    /// its completion, then acks; or hands the message back.
    async fn finish(&self, received: ReceivedMessage, work: Work) {
        let mut span = tracing::Span::none();
        let outcome = match work {
            Work::Rejected(rejection) => {
                tracing::warn!(
                    message = %received.message.message_id,
                    request = rejection.request_id.as_deref().unwrap_or("-"),
                    reason = %rejection.reason,
                    "bad request message"
                );
                match &rejection.request_id {
                    Some(rid) => Outcome::Answer(completion::rejected(
                        rid,
                        rejection.session_id.as_deref(),
                        None,
                        rejection.reason,
                    )),
                    None => {
                        TopicStats::bump(&self.stats.unanswerable);
                        ack(&received).await;
                        return;
                    }
                }
            }
            Work::Running {
                request_id,
                session,
                execution,
                future,
                span: request_span,
            } => {
                span = request_span;
                let result = self
                    .keep_leased(&received, future)
                    .instrument(span.clone())
                    .await;
                classify(&request_id, &session, &execution, result)
            }
        };
        match outcome {
            Outcome::Answer(mut message) => {
                if message.attributes.get("status").map(String::as_str) != Some("SUCCEEDED") {
                    trace_context::mark_error(&span);
                }
                // The completion carries the request's trace on to its
                // consumers; the span lasts until it is published.
                span.in_scope(|| trace_context::inject(&mut message.attributes));
                let rejected =
                    message.attributes.get("status").map(String::as_str) == Some("REJECTED");
                match self.publisher.publish(message).await.get().await {
                    Ok(_) => {
                        TopicStats::bump(&self.stats.completed);
                        if rejected {
                            TopicStats::bump(&self.stats.rejected);
                        }
                        ack(&received).await;
                    }
                    Err(e) => {
                        // Not acked: the request comes back and its
                        // completion is published then (the command does
                        // not run again).
                        tracing::warn!(message = %received.message.message_id, error = %e, "cannot publish a completion; handing the request back");
                        TopicStats::bump(&self.stats.handed_back);
                        nack(&received).await;
                    }
                }
            }
            Outcome::HandBack(why) => {
                tracing::warn!(message = %received.message.message_id, reason = %why, "handing a request back to Pub/Sub");
                TopicStats::bump(&self.stats.handed_back);
                nack(&received).await;
            }
        }
    }

    /// Awaits `future`, renewing the message's lease every third of it.
    async fn keep_leased(
        &self,
        received: &ReceivedMessage,
        future: ExecFuture,
    ) -> runbox_dispatcher::Result<ExecResult> {
        let secs = self.lease.as_secs() as i32;
        // The first tick is at once: a pulled message starts with the
        // subscription's ack deadline, and the lease is this instance's.
        let mut renew = tokio::time::interval(self.lease / 3);
        tokio::pin!(future);
        loop {
            tokio::select! {
                result = &mut future => return result,
                _ = renew.tick() => {
                    if let Err(e) = received.modify_ack_deadline(secs).await {
                        tracing::warn!(message = %received.message.message_id, error = %e, "cannot extend a request's lease");
                    }
                }
            }
        }
    }
}

type ExecFuture = <runbox_dispatcher::Exec as std::future::IntoFuture>::IntoFuture;

/// A message taken from the stream.
enum Work {
    /// It cannot run.
    Rejected(message::Rejection),
    /// Its command is queued on its session.
    Running {
        request_id: String,
        session: String,
        execution: runbox_core::ExecutionId,
        future: ExecFuture,
        /// From receipt to the completion's publish.
        span: tracing::Span,
    },
}

/// What an exec's outcome means for its message.
fn classify(
    request_id: &str,
    session: &str,
    execution: &runbox_core::ExecutionId,
    result: runbox_dispatcher::Result<ExecResult>,
) -> Outcome {
    match result {
        Ok(result) => Outcome::Answer(completion::of_result(request_id, result, String::new())),
        Err(Error::StateConflict { result, session }) => {
            let error = format!(
                "session {session}: state changed by another writer while the command ran; its cwd and env were not saved"
            );
            Outcome::Answer(completion::of_result(request_id, *result, error))
        }
        // Shutting down (the drain time ran out while it ran), or an
        // outage: another delivery (here or on another instance) finishes
        // it, and never runs it twice. Publishing anything now would claim
        // an end that has not happened.
        Err(
            e @ (Error::Closed
            | Error::Wait { .. }
            | Error::Events(_)
            | Error::Launch(runbox_dispatcher::LaunchError::Closed)),
        ) => Outcome::HandBack(runbox_dispatcher::error_chain(&e)),
        Err(e) if e.is_retryable() => Outcome::HandBack(runbox_dispatcher::error_chain(&e)),
        Err(e) => Outcome::Answer(completion::rejected(
            request_id,
            Some(session),
            Some(execution),
            runbox_dispatcher::error_chain(&e),
        )),
    }
}

async fn ack(received: &ReceivedMessage) {
    if let Err(e) = received.ack().await {
        // It comes back and is answered again: a duplicate, not a loss.
        tracing::warn!(message = %received.message.message_id, error = %e, "cannot ack a request");
    }
}

async fn nack(received: &ReceivedMessage) {
    if let Err(e) = received.nack().await {
        tracing::warn!(message = %received.message.message_id, error = %e, "cannot nack a request; it returns after its ack deadline");
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn resolve(env: &[(&str, &str)]) -> Result<Option<TopicSettings>, TopicSettingsError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        TopicSettings::resolve(|k| env.get(k).cloned())
    }

    #[test]
    fn the_topic_is_off_without_a_subscription() {
        assert!(resolve(&[(COMPLETIONS_TOPIC_VAR, "c")]).unwrap().is_none());
    }

    #[test]
    fn settings_need_a_topic_and_a_project() {
        assert!(matches!(
            resolve(&[(REQUESTS_SUBSCRIPTION_VAR, "r")]),
            Err(TopicSettingsError::NoCompletionsTopic)
        ));
        assert!(matches!(
            resolve(&[
                (REQUESTS_SUBSCRIPTION_VAR, "r"),
                (COMPLETIONS_TOPIC_VAR, "c")
            ]),
            Err(TopicSettingsError::NoProject(_))
        ));
        let s = resolve(&[
            (REQUESTS_SUBSCRIPTION_VAR, "projects/p1/subscriptions/r"),
            (COMPLETIONS_TOPIC_VAR, "projects/p1/topics/c"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(s.project, "p1");
        assert_eq!(s.ack_deadline, Duration::from_secs(60));
        let s = resolve(&[
            (REQUESTS_SUBSCRIPTION_VAR, "r"),
            (COMPLETIONS_TOPIC_VAR, "c"),
            ("RUNBOX_PROJECT", "p2"),
            (ACK_DEADLINE_VAR, "10"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(s.project, "p2");
        assert_eq!(s.ack_deadline, Duration::from_secs(10));
        for bad in ["9", "601", "x"] {
            assert!(matches!(
                resolve(&[
                    (REQUESTS_SUBSCRIPTION_VAR, "r"),
                    (COMPLETIONS_TOPIC_VAR, "c"),
                    ("RUNBOX_PROJECT", "p"),
                    (ACK_DEADLINE_VAR, bad),
                ]),
                Err(TopicSettingsError::BadAckDeadline(_))
            ));
        }
    }

    #[test]
    fn outcomes_answer_or_hand_back() {
        let id = runbox_core::RequestId::new("r").unwrap().execution_id();
        assert!(matches!(
            classify("r", "s", &id, Err(Error::Closed)),
            Outcome::HandBack(_)
        ));
        match classify(
            "r",
            "s",
            &id,
            Err(Error::ExecutionIdInUse { id: id.clone() }),
        ) {
            Outcome::Answer(m) => {
                assert_eq!(m.attributes["status"], "REJECTED");
                assert_eq!(m.attributes["requestId"], "r");
            }
            Outcome::HandBack(w) => panic!("handed back: {w}"),
        }
    }
}
