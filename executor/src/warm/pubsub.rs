//! A warm execution's commands over Pub/Sub (the Cloud Run launcher): a
//! streaming pull of the subscription the dispatcher created for it on the
//! commands topic (see [`runbox_core::warm`] for the whole exchange).
//!
//! Each message is checked before anything is read for it: it must be a
//! `kind=run` message of this session naming this warm execution (its first
//! execution id) and a valid execution id. Anything else is acked and
//! dropped: the subscription is this execution's own, so acking removes a
//! message from nobody else, and the Pub/Sub emulator, which does not apply
//! the session filter, hands it every session's messages. Nothing but
//! `run` and `stdin` is taken from the topic: a dispatcher ends a warm
//! execution with CancelExecution, which the topic's publishers cannot call.
//!
//! A `stdin` message goes to the command whose stdin route is set
//! ([`Commands::stdin`], before the command is marked taken, so before
//! its dispatcher publishes any), and only with the token whose SHA-256
//! the command's request holds; the route's bounded channel then holds up
//! the pull while the command does not read. Before any route is set (the
//! first command: its stdin may be pulled before the serving loop has
//! read its request) up to [`EARLY_MAX`] of them wait; once a route is
//! set, one naming another execution is acked and dropped.
//!
//! A command is taken by writing `results/{execution}.taken` create-only
//! before the message is acked: the finalize event of that object tells the
//! dispatcher waiting for it, and a second copy of the message (Pub/Sub
//! delivers at least once) finds the object there and is dropped. A message
//! that is never taken (the execution ends first) is not acked: it goes
//! with the subscription, and its dispatcher, which sees the execution end
//! before the taken mark, starts a new execution with it.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use gcloud_gax::conn::{ConnectionOptions, Environment};
use gcloud_gax::grpc::Status;
use gcloud_pubsub::client::{Client, ClientConfig};
use gcloud_pubsub::subscriber::ReceivedMessage;
use gcloud_pubsub::subscription::Subscription;
use runbox_core::config::BackendConfig;
use runbox_core::layout;
use runbox_core::store::{self, Precondition, PutOptions, Store};
use runbox_core::warm::{WarmMarker, commands};
use runbox_core::{ExecutionId, SessionId};
use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Delivery, Warm};
use crate::Settings;

/// The subscription could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PubSubError {
    /// Commands over Pub/Sub need the gcp backend (its project, its emulator).
    #[error("a warm execution on Pub/Sub needs the gcp backend")]
    NotGcp,
    /// No client could be made (credentials, endpoint).
    #[error("connect to Pub/Sub")]
    Connect(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The streaming pull could not start.
    #[error("open the streaming pull")]
    Subscribe(#[source] Status),
}

/// The running source of commands: one task pulling the subscription.
pub(super) struct Commands {
    subscription: Subscription,
    session: SessionId,
    first: ExecutionId,
    stop: CancellationToken,
    task: JoinHandle<()>,
    routes: watch::Sender<Option<Arc<StdinRoute>>>,
}

/// How many `stdin` messages wait for their command's route before the
/// first one is set.
const EARLY_MAX: usize = 16;

/// How many in-order `stdin` messages wait between the pull and the
/// command's FIFO.
const STDIN_CHANNEL: usize = 4;

/// Where one command's `stdin` messages go.
struct StdinRoute {
    execution: String,
    digest: String,
    tx: mpsc::Sender<StdinMessage>,
}

/// A `stdin` message that passed the checks, not yet acked.
pub(super) struct StdinMessage {
    /// Its place in the command's input.
    pub(super) seq: u64,
    /// Whether the input ends after it.
    pub(super) end: bool,
    message: ReceivedMessage,
}

impl StdinMessage {
    /// Its bytes.
    pub(super) fn data(&self) -> &[u8] {
        &self.message.message.data
    }

    /// Acks it: it is not delivered again.
    pub(super) async fn ack(&self) {
        let _ = self.message.ack().await;
    }
}

impl Commands {
    /// Starts pulling `subscription`; commands for this execution go to
    /// `tx`; the end of the stream (the subscription was deleted) cancels
    /// `closed`.
    pub(super) async fn start(
        settings: &Settings,
        warm: &Warm,
        subscription: &str,
        first: &ExecutionId,
        tx: mpsc::Sender<(ExecutionId, Delivery)>,
        closed: &CancellationToken,
    ) -> Result<Self, PubSubError> {
        let BackendConfig::Gcp(gcp) = &settings.config.backend else {
            return Err(PubSubError::NotGcp);
        };
        let client =
            Client::new(client_config(&gcp.project, gcp.pubsub_emulator_host.as_deref()).await?)
                .await
                .map_err(|e| PubSubError::Connect(Box::new(e)))?;
        let subscription = client.subscription(subscription);
        let stream = subscription
            .subscribe(None)
            .await
            .map_err(PubSubError::Subscribe)?;
        let stop = CancellationToken::new();
        let (routes, routed) = watch::channel(None);
        let task = tokio::spawn(pull(
            stream,
            Filter {
                session: warm.session.to_string(),
                first: first.to_string(),
            },
            Pulled {
                tx,
                routed,
                early: VecDeque::new(),
            },
            closed.clone(),
            stop.clone(),
        ));
        Ok(Self {
            subscription,
            session: warm.session.clone(),
            first: first.clone(),
            stop,
            task,
            routes,
        })
    }

    /// Routes the `stdin` messages of `id` that carry the token whose
    /// SHA-256 is `digest` to the returned receiver, in the order they are
    /// pulled (not yet their `seq` order), until the next route is set or
    /// the receiver is dropped.
    pub(super) fn stdin(&self, id: &ExecutionId, digest: &str) -> mpsc::Receiver<StdinMessage> {
        let (tx, rx) = mpsc::channel(STDIN_CHANNEL);
        self.routes.send_replace(Some(Arc::new(StdinRoute {
            execution: id.to_string(),
            digest: digest.to_owned(),
            tx,
        })));
        rx
    }

    /// Stops pulling (what is buffered is nacked), deletes the
    /// subscription and, when it still names this execution, the session's
    /// warm marker: nothing is delivered here any more.
    pub(super) async fn finish(self, store: &dyn Store) {
        self.stop.cancel();
        let _ = self.task.await;
        if let Err(e) = self.subscription.delete(None).await {
            // Its expiration policy removes it, and the dispatcher that next
            // finds this execution ended deletes it too.
            tracing::warn!(subscription = %self.subscription.fully_qualified_name(), "delete the commands subscription: {e}");
        }
        remove_marker(store, &self.session, &self.first).await;
    }
}

/// What a message must name to be a command of this execution.
struct Filter {
    session: String,
    first: String,
}

/// Where pulled messages go.
struct Pulled {
    /// Commands, to the serving loop.
    tx: mpsc::Sender<(ExecutionId, Delivery)>,
    /// The current stdin route.
    routed: watch::Receiver<Option<Arc<StdinRoute>>>,
    /// `stdin` messages pulled before any route was set.
    early: VecDeque<ReceivedMessage>,
}

/// Pulls until `stop`, handing commands to the serving loop one at a time.
async fn pull(
    mut stream: gcloud_pubsub::subscription::MessageStream,
    filter: Filter,
    mut pulled: Pulled,
    closed: CancellationToken,
    stop: CancellationToken,
) {
    let tx = pulled.tx.clone();
    loop {
        let message = tokio::select! {
            m = stream.next() => m,
            changed = pulled.routed.changed() => {
                // Its sender goes with `Commands`: nothing is served then.
                if changed.is_err() {
                    break;
                }
                for early in std::mem::take(&mut pulled.early) {
                    stdin_message(early, &mut pulled, &stop).await;
                }
                continue;
            }
            () = stop.cancelled() => break,
        };
        let Some(message) = message else {
            tracing::warn!("the commands subscription's stream ended; closing");
            closed.cancel();
            break;
        };
        let attrs = &message.message.attributes;
        let ours = attrs.get(commands::SESSION) == Some(&filter.session)
            && attrs.get(commands::WARM) == Some(&filter.first);
        if !ours {
            // Another session's or another warm execution's copy.
            let _ = message.ack().await;
            continue;
        }
        match attrs.get(commands::KIND).map(String::as_str) {
            Some(commands::RUN) => match command_id(&message) {
                Ok(id) => {
                    let delivered = Delivery::PubSub(Delivered { message });
                    let sent = tokio::select! {
                        sent = tx.send((id, delivered)) => sent.is_ok(),
                        () = stop.cancelled() => false,
                    };
                    if !sent {
                        break;
                    }
                }
                Err(reason) => {
                    tracing::warn!(%reason, "a command message without a usable execution id; dropped");
                    let _ = message.ack().await;
                }
            },
            Some(commands::STDIN) => stdin_message(message, &mut pulled, &stop).await,
            other => {
                tracing::debug!(kind = ?other, "a message of a kind this execution does not take; dropped");
                let _ = message.ack().await;
            }
        }
    }
    for early in pulled.early {
        let _ = early.ack().await;
    }
    stream.dispose().await;
}

/// Routes one `stdin` message of this session and execution (see the
/// module docs): to its command's channel, waiting while that is full;
/// kept while no route is set yet; else acked and dropped.
async fn stdin_message(message: ReceivedMessage, pulled: &mut Pulled, stop: &CancellationToken) {
    let parsed = match parse_stdin(&message) {
        Ok(parsed) => parsed,
        Err(reason) => {
            tracing::warn!(%reason, "a stdin message that is not well formed; dropped");
            let _ = message.ack().await;
            return;
        }
    };
    let route = pulled.routed.borrow().clone();
    let Some(route) = route else {
        pulled.early.push_back(message);
        if pulled.early.len() > EARLY_MAX
            && let Some(oldest) = pulled.early.pop_front()
        {
            let _ = oldest.ack().await;
        }
        return;
    };
    if route.execution != parsed.execution {
        tracing::debug!(execution = %parsed.execution, "a stdin message for a command not running here; dropped");
        let _ = message.ack().await;
        return;
    }
    if runbox_core::warm::stdin_token_digest(&parsed.token) != route.digest {
        tracing::warn!(execution = %parsed.execution, "a stdin message without the command's token; dropped");
        let _ = message.ack().await;
        return;
    }
    let frame = StdinMessage {
        seq: parsed.seq,
        end: parsed.end,
        message,
    };
    tokio::select! {
        sent = route.tx.send(frame) => {
            if let Err(mpsc::error::SendError(frame)) = sent {
                // The command has ended: what it did not read is dropped.
                frame.ack().await;
            }
        }
        // Left unacked: it goes with the subscription.
        () = stop.cancelled() => {}
    }
}

/// The attributes of a `stdin` message.
struct StdinAttributes {
    execution: String,
    seq: u64,
    end: bool,
    token: String,
}

fn parse_stdin(message: &ReceivedMessage) -> Result<StdinAttributes, String> {
    let attrs = &message.message.attributes;
    let get = |name: &str| {
        attrs
            .get(name)
            .ok_or_else(|| format!("no `{name}` attribute"))
    };
    let execution = get(commands::EXECUTION)?.clone();
    let seq = get(commands::SEQ)?;
    if !seq.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("`{}` is not a number", commands::SEQ));
    }
    let seq = seq
        .parse()
        .map_err(|e| format!("`{}`: {e}", commands::SEQ))?;
    let end = match attrs.get(commands::END).map(String::as_str) {
        None => false,
        Some("1") => true,
        Some(other) => return Err(format!("`{}` is {other:?}, not 1", commands::END)),
    };
    if message.message.data.len() > runbox_core::warm::wire::MAX_FRAME {
        return Err(format!(
            "{} bytes of data, more than {}",
            message.message.data.len(),
            runbox_core::warm::wire::MAX_FRAME
        ));
    }
    Ok(StdinAttributes {
        execution,
        seq,
        end,
        token: get(commands::TOKEN)?.clone(),
    })
}

/// The execution id a `run` message names: its attribute, which its data
/// (when there is any) must repeat.
fn command_id(message: &ReceivedMessage) -> Result<ExecutionId, String> {
    let attr = message
        .message
        .attributes
        .get(commands::EXECUTION)
        .ok_or_else(|| format!("no `{}` attribute", commands::EXECUTION))?;
    let data = &message.message.data;
    if !data.is_empty() && data.as_slice() != attr.as_bytes() {
        return Err("the data and the execution attribute disagree".to_owned());
    }
    ExecutionId::new(attr).map_err(|e| e.to_string())
}

/// A command message handed to the serving loop.
pub(super) struct Delivered {
    message: ReceivedMessage,
}

impl Delivered {
    /// Not run: acked, so it is not delivered again.
    pub(super) async fn refuse(&mut self, id: &ExecutionId, reason: &str) {
        tracing::warn!(execution = %id, %reason, "a delivered command was refused");
        let _ = self.message.ack().await;
    }

    /// Marks the command taken (create-only), then acks it; `false` when it
    /// was taken before (a second copy of the message).
    pub(super) async fn take(&mut self, store: &dyn Store, id: &ExecutionId) -> bool {
        let taken = store
            .put(
                &layout::warm_taken(id),
                Bytes::new(),
                PutOptions::create().volatile(),
            )
            .await;
        match taken {
            Ok(_) => {
                let _ = self.message.ack().await;
                true
            }
            Err(e) if e.is_conflict() => {
                tracing::debug!(execution = %id, "taken before; this copy is dropped");
                let _ = self.message.ack().await;
                false
            }
            Err(e) => {
                // Untaken: its dispatcher starts it elsewhere once this
                // execution has ended, so it must not run here.
                tracing::warn!(execution = %id, "mark the command taken: {}", crate::error_chain(&e));
                let _ = self.message.nack().await;
                false
            }
        }
    }
}

/// A warm execution whose subscription cannot be pulled (deleted, or not
/// allowed): its first command runs as a oneshot execution's would rather
/// than be lost, and nothing else is taken. The marker and the
/// subscription are removed first, so the session's next command starts a
/// new warm execution instead of publishing here (one that read the marker
/// before sees this execution end untaken and does the same).
pub(super) async fn oneshot_instead(
    store: Arc<dyn Store>,
    settings: &Settings,
    warm: &Warm,
    subscription: &str,
    error: PubSubError,
    cancel: impl std::future::Future<Output = ()>,
) -> Result<super::WarmEnd, super::WarmError> {
    tracing::warn!(
        subscription,
        error = %crate::error_chain(&error),
        "cannot pull the commands subscription; running the first command on its own"
    );
    remove_marker(&*store, &warm.session, &settings.execution_id).await;
    if let BackendConfig::Gcp(gcp) = &settings.config.backend
        && let Ok(config) = client_config(&gcp.project, gcp.pubsub_emulator_host.as_deref()).await
        && let Ok(client) = Client::new(config).await
        && let Err(e) = client.subscription(subscription).delete(None).await
        && e.code() != gcloud_gax::grpc::Code::NotFound
    {
        tracing::warn!(subscription, "delete the commands subscription: {e}");
    }
    match crate::execute(store, settings, cancel).await {
        Ok(_) => Ok(super::WarmEnd::Unsubscribed),
        Err(source) => Err(super::WarmError::Result { source }),
    }
}

/// Deletes `sessions/{session}/warm.json` if it names this execution.
async fn remove_marker(store: &dyn Store, session: &SessionId, first: &ExecutionId) {
    let name = layout::warm_marker(session);
    match store::get_json::<WarmMarker>(store, &name, "WarmMarker").await {
        Ok(marker) if marker.value.first == first.as_str() => {
            let precondition = Precondition::GenerationMatch(marker.generation);
            if let Err(e) = store.delete(&name, precondition).await
                && !e.is_not_found()
                && !e.is_conflict()
            {
                tracing::warn!(%name, "delete the warm marker: {}", crate::error_chain(&e));
            }
        }
        // Another execution's (a successor), or none.
        Ok(_) => {}
        Err(store::JsonObjectError::Store(e)) if e.is_not_found() => {}
        Err(e) => tracing::warn!(%name, "read the warm marker: {}", crate::error_chain(&e)),
    }
}

/// A client of the gcp backend's project: the emulator when one is set,
/// else Pub/Sub with Application Default Credentials.
async fn client_config(project: &str, emulator: Option<&str>) -> Result<ClientConfig, PubSubError> {
    let environment = match emulator {
        Some(host) => Environment::Emulator(
            host.trim()
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_owned(),
        ),
        None => {
            use gcloud_pubsub::apiv1::conn_pool::{AUDIENCE, SCOPES};
            // The same choice of credentials as every other Google client
            // runbox builds (impersonated service accounts included).
            let credentials =
                runbox_core::credentials::DefaultCredentials::from_env(&SCOPES, Some(AUDIENCE))
                    .await
                    .map_err(|e| PubSubError::Connect(Box::new(e)))?;
            Environment::GoogleCloud(Box::new(credentials))
        }
    };
    Ok(ClientConfig {
        pool_size: 1,
        project_id: Some(project.to_owned()),
        environment,
        endpoint: gcloud_pubsub::apiv1::conn_pool::PUBSUB.to_owned(),
        connection_option: ConnectionOptions {
            timeout: None,
            connect_timeout: Some(Duration::from_secs(10)),
            http2_keep_alive_interval: Some(Duration::from_secs(30)),
            keep_alive_timeout: Some(Duration::from_secs(10)),
            keep_alive_while_idle: Some(true),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::super::Warm;

    #[test]
    fn a_subscription_makes_an_executor_warm_without_a_socket() {
        let warm = Warm::from_lookup(&[
            ("RUNBOX_WARM_SESSION", "s"),
            (
                "RUNBOX_WARM_SUBSCRIPTION",
                "projects/p/subscriptions/runbox-warm-x",
            ),
            ("RUNBOX_WARM_IDLE_MS", "1000"),
            ("RUNBOX_WARM_LIFETIME_MS", "5000"),
        ])
        .unwrap()
        .expect("warm");
        assert_eq!(warm.socket, None);
        assert_eq!(
            warm.subscription.as_deref(),
            Some("projects/p/subscriptions/runbox-warm-x")
        );
        assert_eq!(warm.lifetime, Some(std::time::Duration::from_secs(5)));
        // Neither a socket nor a subscription: oneshot.
        assert!(
            Warm::from_lookup(&[("RUNBOX_WARM_SESSION", "s")])
                .unwrap()
                .is_none()
        );
        let err = Warm::from_lookup(&[
            ("RUNBOX_WARM_SESSION", "s"),
            ("RUNBOX_WARM_SUBSCRIPTION", "x"),
            ("RUNBOX_WARM_LIFETIME_MS", "soon"),
        ])
        .unwrap_err();
        assert!(err.contains("RUNBOX_WARM_LIFETIME_MS"), "{err}");
    }
}
