//! Warm executions on Cloud Run: the first command of a warm session is
//! one RunJob whose execution stays up; later commands reach it over
//! Pub/Sub (the exchange is described in [`runbox_core::warm`]).
//!
//! - **Start**: a subscription of its own on the commands topic
//!   (`runbox-warm-{first execution}`, filtered on the session, expiring
//!   after a day unused) is created BEFORE the RunJob, so no command
//!   published once the marker is visible can miss it; then the RunJob
//!   with the warm overrides; then the marker `sessions/{S}/warm.json`.
//! - **Delivery**: with a marker whose deadline leaves room for the
//!   command's timeout, the dispatcher watches `results/{E}.taken` (before
//!   publishing, as a waiter is registered before a launch), publishes
//!   `kind=run`, and waits for whichever comes first: the taken event, or
//!   the warm execution's RunJob operation done. Ended first and no taken
//!   mark: the command was not taken (the execution idled out, handed
//!   over, crashed or never started), so the stale marker and subscription
//!   are removed and a new warm execution starts with the command as its
//!   first: nothing is lost. Taken: the command's end follows that
//!   execution's end, so one that dies mid-command settles LOST.
//! - **Stdin**: a command whose stdin streams gets its pieces published
//!   as `kind=stdin` messages, numbered and carrying the command's token,
//!   from a task of their own once it is taken (or launched, for a first
//!   command); see [`runbox_core::warm`].
//! - **Close**: CancelExecution (the executor gets SIGTERM, cancels the
//!   command it runs and exits), then a wait on its operation.
//!
//! Commands of a session are serialised by its lease, so at most one
//! dispatcher starts or feeds a session's warm execution at a time.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use gcloud_gax::grpc::Code;
use gcloud_googleapis::pubsub::v1::{ExpirationPolicy, PubsubMessage};
use gcloud_pubsub::client::Client;
use gcloud_pubsub::publisher::Publisher;
use gcloud_pubsub::subscription::SubscriptionConfig;
use googleapis_tonic_google_cloud_run_v2::google::cloud::run::v2::CancelExecutionRequest;
use runbox_core::store::{self, JsonObjectError, Precondition, PutOptions};
use runbox_core::warm::{
    WARM_IDLE_MS_ENV, WARM_LIFETIME_MS_ENV, WARM_SESSION_ENV, WARM_SUBSCRIPTION_ENV, WarmMarker,
    commands,
};
use runbox_core::{ExecutionId, SessionId, Store, layout};
use runbox_notifier::{PubSubConfig, Waiters};

use super::CloudRunLauncher;
use super::status::terminal;
use super::transport::route;
use crate::StdinFeed;
use crate::launcher::{LaunchError, LaunchSpec, WarmLaunch};

/// Where warm executions get their commands: the commands topic.
#[derive(Clone, Debug)]
pub struct WarmCommands {
    /// Google Cloud project of the topic and the subscriptions.
    pub project: String,
    /// The commands topic's id (`RUNBOX_COMMANDS_TOPIC`).
    pub topic: String,
    /// A Pub/Sub emulator (`host:port`) instead of Pub/Sub.
    pub emulator_host: Option<String>,
    /// The task timeout of a warm execution (`RUNBOX_WARM_TASK_TIMEOUT_SECS`).
    pub task_timeout: Duration,
}

/// What a warm execution's RunJob adds to a oneshot one.
pub(super) struct Overrides {
    /// The warm variables (merged into the template's env).
    pub(super) env: Vec<(String, String)>,
    /// Its task timeout.
    pub(super) task_timeout: Duration,
}

/// How long closing may take: the command it runs is killed first.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(30);

/// Ack deadline of a warm execution's subscription: a message waits
/// unacked while the command before it finishes; redelivered copies are
/// dropped by the taken mark.
const ACK_DEADLINE_SECS: i32 = 60;

/// The warm side of the Cloud Run launcher.
pub(super) struct WarmDelivery {
    commands: WarmCommands,
    attached: OnceLock<(Arc<dyn Store>, Arc<Waiters>)>,
    pubsub: tokio::sync::OnceCell<(Client, Publisher)>,
}

/// How a published command ended up.
enum Handed {
    /// The warm execution took it.
    Taken,
    /// The warm execution ended without taking it.
    NotTaken,
}

impl WarmDelivery {
    pub(super) fn new(commands: WarmCommands) -> Self {
        Self {
            commands,
            attached: OnceLock::new(),
            pubsub: tokio::sync::OnceCell::new(),
        }
    }

    pub(super) fn attach(&self, store: Arc<dyn Store>, waiters: Arc<Waiters>) {
        let _ = self.attached.set((store, waiters));
    }

    /// Whether it has the store and waiters it delivers with.
    pub(super) fn is_attached(&self) -> bool {
        self.attached.get().is_some()
    }

    /// Runs the command of a warm session (see the module docs); `stdin`
    /// is published to it once it is taken or launched.
    pub(super) async fn launch(
        &self,
        launcher: &CloudRunLauncher,
        spec: LaunchSpec,
        warm: &WarmLaunch,
        stdin: Option<StdinFeed>,
    ) -> Result<(), LaunchError> {
        let Some((store, waiters)) = self.attached.get() else {
            return launcher.launch_with(spec, None).await.map(drop);
        };
        if let Some((marker, generation)) = read_marker(&**store, &warm.session).await {
            let fits = now_ms().saturating_add(millis(spec.timeout)) <= marker.deadline_ms;
            if fits {
                match self
                    .hand(launcher, &**store, waiters, &marker, &spec, &warm.session)
                    .await?
                {
                    Handed::Taken => {
                        launcher.track_delivered(
                            &spec.execution_id,
                            &marker.execution,
                            &marker.operation,
                        );
                        if let Some(feed) = stdin {
                            self.pump(&warm.session, &spec.execution_id, &marker.first, feed)
                                .await;
                        }
                        return Ok(());
                    }
                    Handed::NotTaken => {
                        self.forget(&**store, &warm.session, &marker, generation)
                            .await;
                    }
                }
            }
            // Past its deadline it hands over by itself: the new
            // execution's marker replaces its own.
        }
        self.start(launcher, &**store, spec, warm, stdin).await
    }

    /// Starts a warm execution with `spec` as its first command.
    async fn start(
        &self,
        launcher: &CloudRunLauncher,
        store: &dyn Store,
        spec: LaunchSpec,
        warm: &WarmLaunch,
        stdin: Option<StdinFeed>,
    ) -> Result<(), LaunchError> {
        let id = spec.execution_id.clone();
        let subscription = match self.subscribe(&warm.session, &id).await {
            Ok(name) => name,
            Err(e) => {
                // Without a subscription only the first command could
                // reach it: run this one like any oneshot command (a
                // streamed stdin has no way there: its writer is told).
                tracing::warn!(session = %warm.session, error = %e, "cannot create the warm subscription; running the command oneshot");
                if let Some(feed) = stdin {
                    feed.end();
                }
                return launcher.launch_with(spec, None).await.map(drop);
            }
        };
        let margin = launcher.settings.task_timeout_margin;
        let task_timeout = self
            .commands
            .task_timeout
            .max(spec.timeout.saturating_add(margin));
        // Commands it takes must end before the task timeout, with room to
        // write their result.
        let lifetime = task_timeout.saturating_sub(margin);
        let overrides = Overrides {
            env: vec![
                (WARM_SESSION_ENV.to_owned(), warm.session.to_string()),
                (WARM_IDLE_MS_ENV.to_owned(), millis(warm.idle).to_string()),
                (WARM_SUBSCRIPTION_ENV.to_owned(), subscription.clone()),
                (
                    WARM_LIFETIME_MS_ENV.to_owned(),
                    millis(lifetime).to_string(),
                ),
            ],
            task_timeout,
        };
        // The dispatcher's clock before the RunJob: the executor, which
        // counts from its own later start, stops no earlier than this.
        let deadline_ms = now_ms().saturating_add(millis(lifetime));
        let (execution, operation) = match launcher.launch_with(spec, Some(&overrides)).await {
            Ok(launched) => launched,
            Err(e) => {
                self.delete_subscription(&subscription).await;
                return Err(e);
            }
        };
        let marker = WarmMarker {
            execution,
            operation,
            first: id.to_string(),
            subscription,
            deadline_ms,
        };
        if let Err(e) = store::put_json(
            store,
            &layout::warm_marker(&warm.session),
            &marker,
            PutOptions::default(),
        )
        .await
        {
            // The first command runs all the same; later ones start
            // executions of their own until a marker is written.
            tracing::warn!(session = %warm.session, "write the warm marker: {}", crate::error_chain(&e));
        }
        tracing::debug!(execution = %id, cloud_run = %marker.execution, "warm execution started");
        // Published after the RunJob: the subscription made before it
        // keeps the messages until the executor pulls.
        if let Some(feed) = stdin {
            self.pump(&warm.session, &id, &marker.first, feed).await;
        }
        Ok(())
    }

    /// Publishes `feed`'s pieces to the warm execution `first` as `stdin`
    /// messages, one after another, from a task of its own (see
    /// [`runbox_core::warm`]).
    async fn pump(&self, session: &SessionId, id: &ExecutionId, first: &str, feed: StdinFeed) {
        let (publisher, token) = match (self.pubsub().await, feed.token()) {
            (Ok((_, publisher)), Some(token)) => (publisher.clone(), token.to_owned()),
            (Err(e), _) => {
                tracing::warn!(execution = %id, error = %e, "streamed stdin cannot be published; the command reads none");
                feed.end();
                return;
            }
            (_, None) => {
                tracing::warn!(execution = %id, "streamed stdin has no token; the command reads none");
                feed.end();
                return;
            }
        };
        let base = HashMap::from([
            (commands::SESSION.to_owned(), session.to_string()),
            (commands::KIND.to_owned(), commands::STDIN.to_owned()),
            (commands::EXECUTION.to_owned(), id.to_string()),
            (commands::WARM.to_owned(), first.to_owned()),
            (commands::TOKEN.to_owned(), token),
        ]);
        tokio::spawn(publish_stdin(publisher, base, feed));
    }

    /// Publishes `spec`'s command to the warm execution of `marker` and
    /// waits until it is taken or that execution has ended.
    async fn hand(
        &self,
        launcher: &CloudRunLauncher,
        store: &dyn Store,
        waiters: &Arc<Waiters>,
        marker: &WarmMarker,
        spec: &LaunchSpec,
        session: &SessionId,
    ) -> Result<Handed, LaunchError> {
        let id = &spec.execution_id;
        let taken = layout::warm_taken(id);
        // Before publishing: the taken event cannot come earlier.
        let mut watch = waiters.watch_object(&taken);
        let publisher = match self.pubsub().await {
            Ok((_, publisher)) => publisher,
            Err(e) => {
                return Err(LaunchError::Spawn {
                    id: id.clone(),
                    retryable: true,
                    source: e.into(),
                });
            }
        };
        let message = PubsubMessage {
            data: id.as_str().as_bytes().to_vec(),
            attributes: HashMap::from([
                (commands::SESSION.to_owned(), session.to_string()),
                (commands::KIND.to_owned(), commands::RUN.to_owned()),
                (commands::EXECUTION.to_owned(), id.to_string()),
                (commands::WARM.to_owned(), marker.first.clone()),
            ]),
            ..Default::default()
        };
        if let Err(status) = publisher.publish_immediately(vec![message], None).await {
            return Err(LaunchError::Spawn {
                id: id.clone(),
                retryable: true,
                source: format!("publish the command on the commands topic: {status}").into(),
            });
        }
        let ended = launcher.operation_done(id, &marker.execution, &marker.operation);
        tokio::pin!(ended);
        loop {
            tokio::select! {
                changed = watch.changed() => {
                    if changed.is_err() {
                        return Err(LaunchError::Closed);
                    }
                    // A wake may also mean "events may have been lost".
                    if exists(store, &taken).await {
                        return Ok(Handed::Taken);
                    }
                }
                ended = &mut ended => {
                    // It cannot take anything any more: what is there now
                    // is final.
                    tracing::debug!(execution = %id, account = %ended.message, "the warm execution ended before its taken event");
                    return Ok(if exists(store, &taken).await {
                        Handed::Taken
                    } else {
                        Handed::NotTaken
                    });
                }
            }
        }
    }

    /// The first execution of the session's warm execution, when one runs.
    pub(super) async fn running(
        &self,
        launcher: &CloudRunLauncher,
        session: &SessionId,
    ) -> Option<String> {
        let (store, _) = self.attached.get()?;
        let (marker, _) = read_marker(&**store, session).await?;
        let execution = launcher.get_execution(&marker.execution).await.ok()?;
        terminal(&execution).is_none().then_some(marker.first)
    }

    /// Ends the session's warm execution (CancelExecution) and waits until
    /// it has; whether one was asked to end.
    pub(super) async fn close(&self, launcher: &CloudRunLauncher, session: &SessionId) -> bool {
        let Some((store, _)) = self.attached.get() else {
            return false;
        };
        let Some((marker, generation)) = read_marker(&**store, session).await else {
            return false;
        };
        let mut call = tonic::Request::new(CancelExecutionRequest {
            name: marker.execution.clone(),
            ..Default::default()
        });
        route(&mut call, &[("name", &marker.execution)]);
        let cancelled = launcher
            .unary(
                call,
                |mut c, r| async move { c.cancel_execution(r).await },
                launcher.executions.clone(),
            )
            .await;
        let asked = match cancelled {
            Ok(_) => true,
            // Ended already.
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::NotFound | tonic::Code::FailedPrecondition
                ) =>
            {
                false
            }
            Err(status) => {
                tracing::warn!(session = %session, %status, "CancelExecution of the warm execution failed");
                return false;
            }
        };
        if let Ok(first) = ExecutionId::new(&marker.first) {
            let done = launcher.operation_done(&first, &marker.execution, &marker.operation);
            if tokio::time::timeout(CLOSE_TIMEOUT, done).await.is_err() {
                tracing::warn!(session = %session, "the warm execution did not end within {CLOSE_TIMEOUT:?}");
            }
        }
        // It removes both itself; not when it was killed.
        self.forget(&**store, session, &marker, generation).await;
        asked
    }

    /// Removes an ended warm execution's marker (unless replaced) and its
    /// subscription.
    async fn forget(
        &self,
        store: &dyn Store,
        session: &SessionId,
        marker: &WarmMarker,
        generation: i64,
    ) {
        let name = layout::warm_marker(session);
        if let Err(e) = store
            .delete(&name, Precondition::GenerationMatch(generation))
            .await
            && !e.is_not_found()
            && !e.is_conflict()
        {
            tracing::warn!(%name, "delete the warm marker: {}", crate::error_chain(&e));
        }
        self.delete_subscription(&marker.subscription).await;
    }

    /// Creates the subscription of a warm execution whose first command is
    /// `first`; its full name.
    async fn subscribe(&self, session: &SessionId, first: &ExecutionId) -> Result<String, String> {
        let (client, _) = self.pubsub().await?;
        let subscription = client.subscription(&format!("runbox-warm-{first}"));
        let config = SubscriptionConfig {
            ack_deadline_seconds: ACK_DEADLINE_SECS,
            // Values are session ids, `[A-Za-z0-9_-]`: nothing to escape.
            filter: format!("attributes.{} = \"{session}\"", commands::SESSION),
            expiration_policy: Some(ExpirationPolicy {
                ttl: Some(prost_types::Duration {
                    seconds: 24 * 3600,
                    nanos: 0,
                }),
            }),
            ..SubscriptionConfig::default()
        };
        subscription
            .create(
                &client.fully_qualified_topic_name(&self.commands.topic),
                config,
                None,
            )
            .await
            .map_err(|status| {
                format!(
                    "create subscription {} on topic {}: {status}",
                    subscription.fully_qualified_name(),
                    self.commands.topic
                )
            })?;
        Ok(subscription.fully_qualified_name().to_owned())
    }

    async fn delete_subscription(&self, name: &str) {
        let Ok((client, _)) = self.pubsub().await else {
            return;
        };
        match client.subscription(name).delete(None).await {
            Ok(()) => {}
            Err(status) if status.code() == Code::NotFound => {}
            Err(status) => {
                tracing::warn!(subscription = name, %status, "delete a warm subscription");
            }
        }
    }

    /// The Pub/Sub client and the commands topic's publisher, connected on
    /// first use.
    async fn pubsub(&self) -> Result<&(Client, Publisher), String> {
        self.pubsub
            .get_or_try_init(|| async {
                let mut config = PubSubConfig::new(
                    self.commands.project.clone(),
                    self.commands.topic.clone(),
                    "",
                );
                config.emulator_host = self.commands.emulator_host.clone();
                let client = Client::new(runbox_notifier::client_config(&config).await?)
                    .await
                    .map_err(|e| format!("cannot connect to Pub/Sub: {e}"))?;
                let publisher = client.topic(&self.commands.topic).new_publisher(None);
                Ok((client, publisher))
            })
            .await
    }
}

/// Publishes each piece of `feed` (numbered from 0, the last one `end=1`)
/// until the writer closes it or the command ends; a failed publish ends
/// the writer's writes.
async fn publish_stdin(publisher: Publisher, base: HashMap<String, String>, mut feed: StdinFeed) {
    let ended = feed.ended();
    let mut seq: u64 = 0;
    loop {
        let next = tokio::select! {
            biased;
            () = ended.cancelled() => return,
            next = feed.next() => next,
        };
        let end = next.is_none();
        let mut attributes = base.clone();
        attributes.insert(commands::SEQ.to_owned(), seq.to_string());
        if end {
            attributes.insert(commands::END.to_owned(), "1".to_owned());
        }
        let message = PubsubMessage {
            data: next.map(|data| data.to_vec()).unwrap_or_default(),
            attributes,
            ..Default::default()
        };
        let sent = tokio::select! {
            biased;
            () = ended.cancelled() => return,
            sent = publisher.publish_immediately(vec![message], None) => sent,
        };
        if let Err(status) = sent {
            tracing::warn!(%status, "publish a piece of streamed stdin; the command reads no more");
            feed.end();
            return;
        }
        if end {
            return;
        }
        seq += 1;
    }
}

/// The session's warm marker and its generation; `None` when there is
/// none, or it cannot be read (then the next command starts a new one).
async fn read_marker(store: &dyn Store, session: &SessionId) -> Option<(WarmMarker, i64)> {
    let name = layout::warm_marker(session);
    match store::get_json::<WarmMarker>(store, &name, "WarmMarker").await {
        Ok(v) => Some((v.value, v.generation)),
        Err(JsonObjectError::Store(e)) if e.is_not_found() => None,
        Err(e) => {
            tracing::warn!(%name, "read the warm marker: {}", crate::error_chain(&e));
            None
        }
    }
}

async fn exists(store: &dyn Store, name: &str) -> bool {
    store.head(name).await.is_ok()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, millis)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
