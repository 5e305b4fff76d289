//! Submitting an execution: the request object is written first, the
//! completion waiter registered before the launch (so the completion cannot
//! come earlier than someone listens), then the launcher starts it.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use runbox_core::credentials::StoreToken;
use runbox_core::layout;
use runbox_core::store::{self, PutOptions};
use runbox_core::trace_context;
use runbox_core::{ExecutionId, SessionId};
use runbox_notifier::{WaitError, Waiter};
use runbox_proto::{ExecRequest, ExecResult};

use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::{Engine, Limit};
use crate::error::{Error, Result};
use crate::launcher::{LaunchError, LaunchSpec, WarmLaunch};
use crate::live_output::{Follower, LiveTx};
use crate::session_lock::SessionGuard;
use crate::stdin_stream::{self, Collect, FeedSlot};
use runbox_core::warm::SessionMode;

/// A validated command, ready to become an execution.
#[derive(Clone, Debug)]
pub(crate) struct Submission {
    pub(crate) command: String,
    pub(crate) env: BTreeMap<String, String>,
    pub(crate) timeout: Duration,
    /// Inline output per stream; 0 = the configured default.
    pub(crate) output_cap: u64,
    pub(crate) request_id: String,
    /// Standard input, non-empty when set; written as its own object.
    pub(crate) stdin: Option<Bytes>,
    /// Standard input written while the command runs (see
    /// [`crate::stdin_stream`]); taken by the run.
    pub(crate) stdin_stream: Option<FeedSlot>,
    /// Where live output chunks go, when the caller follows them.
    pub(crate) live: Option<LiveTx>,
    /// A fixed execution id: run at most once under it (see
    /// [`crate::Exec::execution_id`]); `None` draws a fresh one.
    pub(crate) execution_id: Option<ExecutionId>,
    /// The command's `exec` span (none for a background spawn).
    pub(crate) span: tracing::Span,
}

impl Submission {
    /// The request object of this submission as execution `id`.
    pub(crate) fn request(
        &self,
        id: &ExecutionId,
        session: &SessionId,
        created_at: SystemTime,
        background: bool,
    ) -> ExecRequest {
        ExecRequest {
            execution_id: id.to_string(),
            session_id: session.to_string(),
            command: self.command.clone(),
            env: self.env.clone(),
            timeout_ms: u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX),
            output_cap_bytes: self.output_cap,
            created_at: Some(runbox_proto::timestamp(created_at)),
            // The executor falls back to it for the result's metadata when it
            // exports nothing itself.
            traceparent: trace_context::current()
                .map(|tp| tp.to_string())
                .unwrap_or_default(),
            request_id: self.request_id.clone(),
            background,
            stdin_bytes: self.stdin.as_ref().map_or(0, |data| data.len() as u64),
            stream_output: self.live.is_some() && !background,
            stdin_stream: false,
            stdin_token_sha256: String::new(),
        }
    }
}

impl Engine {
    /// Writes the request object (create-only: an execution runs once).
    ///
    /// Volatile: a request is read once, by its executor, right after this
    /// write. Where a store can lose a write at all (the embedded store, in
    /// a power loss or kernel crash) the executor runs on the same machine
    /// and dies with it, so a lost request can only belong to an execution
    /// that is LOST anyway: settling never needs it when a result or a
    /// background marker exists, and a foreground waiter dies with its
    /// process. Not waiting for the disk here takes a durable write off
    /// every command's path. Results and session state stay durable.
    pub(crate) async fn write_request(
        &self,
        request: &ExecRequest,
        id: &ExecutionId,
    ) -> Result<()> {
        store::put_json(
            &*self.store,
            &layout::request(id),
            request,
            PutOptions::create().volatile(),
        )
        .await
        .map(drop)
        .map_err(|e| Error::store(format!("write request of execution {id}"), e))
    }

    /// Writes the standard input object, when there is one, before the
    /// request that names it (create-only and volatile, like the request).
    pub(crate) async fn write_stdin(&self, id: &ExecutionId, stdin: Option<&Bytes>) -> Result<()> {
        let Some(data) = stdin else {
            return Ok(());
        };
        self.store
            .put(
                &layout::request_stdin(id),
                data.clone(),
                PutOptions::create().volatile(),
            )
            .await
            .map(drop)
            .map_err(|e| Error::store(format!("write standard input of execution {id}"), e))
    }

    /// The store token of execution `id` in `session`, when executors get
    /// downscoped credentials; minted before anything of the execution is
    /// written, so a failure leaves nothing behind.
    pub(crate) async fn mint(
        &self,
        session: &SessionId,
        id: &ExecutionId,
        timeout: Duration,
    ) -> Result<Option<StoreToken>> {
        let Some(credentials) = &self.credentials else {
            return Ok(None);
        };
        let needed_for = timeout + self.config.limits.deadline_grace;
        Ok(Some(credentials.mint(session, id, needed_for).await?))
    }

    /// Starts an execution whose request object is written.
    pub(crate) async fn launch(
        &self,
        id: &ExecutionId,
        timeout: Duration,
        store_token: Option<StoreToken>,
    ) -> Result<()> {
        self.launcher
            .launch(launch_spec(id, timeout, store_token))
            .await
            .map_err(Error::from)
    }

    /// Starts a foreground execution whose request object is written; with
    /// the session's lock held, the executor holds it too (see
    /// [`crate::Launcher::launch_holding`]).
    async fn launch_foreground(
        &self,
        id: &ExecutionId,
        timeout: Duration,
        store_token: Option<StoreToken>,
        lock: Option<&SessionGuard>,
    ) -> Result<()> {
        let Some(lock) = lock else {
            return self.launch(id, timeout, store_token).await;
        };
        let hold = lock.share().map_err(|source| {
            Error::Launch(LaunchError::Spawn {
                id: id.clone(),
                retryable: true,
                source: Box::new(source),
            })
        })?;
        self.launcher
            .launch_holding(launch_spec(id, timeout, store_token), hold)
            .await
            .map_err(Error::from)
    }

    /// Registers a completion waiter for `id`.
    pub(crate) fn register(&self, id: &ExecutionId) -> Result<Waiter> {
        self.waiters
            .register(id.clone())
            .map_err(|source| Error::Wait {
                id: id.clone(),
                source,
            })
    }

    /// Registers a completion waiter; `None` when another caller in this
    /// process already waits for the same execution (one waiter per id).
    pub(crate) fn register_shared(&self, id: &ExecutionId) -> Result<Option<Waiter>> {
        match self.waiters.register(id.clone()) {
            Ok(w) => Ok(Some(w)),
            Err(WaitError::AlreadyRegistered(_)) => Ok(None),
            Err(source) => Err(Error::Wait {
                id: id.clone(),
                source,
            }),
        }
    }

    /// Runs one foreground command to its settled result: request, waiter,
    /// launch, then the one wait with the execution's deadline, which
    /// `cancel` turns into stopping it and waiting for it to settle. `lock`
    /// is the session's lock, when this process holds one.
    pub(crate) async fn run_foreground(
        &self,
        session: &SessionId,
        submission: &Submission,
        lock: Option<&SessionGuard>,
        cancel: &CancellationToken,
    ) -> Result<ExecResult> {
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let t0 = std::time::Instant::now();
        // Stored only once the command is accepted (its stdin may be too
        // large): a refused command leaves nothing behind.
        let (settings, stored) = self.peek_session_settings(session).await?;
        let id = match &submission.execution_id {
            Some(id) => id.clone(),
            None => self.instance.next_execution_id(),
        };
        let store_token = self.mint(session, &id, submission.timeout).await?;
        // A downscoped token names one execution's request and result, so
        // an execution holding one cannot serve a session's later
        // commands: with per-execution credentials every command is
        // launched on its own.
        let warm = settings.mode == SessionMode::Warm && store_token.is_none();
        let mut feed = submission.stdin_stream.as_ref().and_then(FeedSlot::take);
        // Whatever way this run ends, the writer's writes fail after it.
        let _stdin_ended = feed.as_ref().map(|f| f.ended().drop_guard());
        let mut stdin = submission.stdin.clone();
        if let Some(whole) = feed
            .as_mut()
            .filter(|_| !(warm && self.launcher.streams_stdin(session)))
        {
            // Where it cannot stream, the command starts as before, with
            // its whole stdin.
            match stdin_stream::collect(whole, self.config.limits.stdin_cap, cancel).await {
                Ok(data) => stdin = Some(data).filter(|d| !d.is_empty()),
                Err(Collect::TooLarge) => {
                    return Err(Error::StdinTooLarge {
                        max: self.config.limits.stdin_cap,
                    });
                }
                Err(Collect::Cancelled) => return Err(Error::Cancelled),
            }
            feed = None;
        }
        if !stored {
            self.store_session_settings(session, settings).await?;
        }
        let mut request = submission.request(&id, session, SystemTime::now(), false);
        request.stdin_bytes = stdin.as_ref().map_or(0, |data| data.len() as u64);
        request.stdin_stream = feed.is_some();
        if let Some(feed) = feed.as_mut() {
            request.stdin_token_sha256 = feed.seal().map_err(|e| LaunchError::Spawn {
                id: id.clone(),
                retryable: true,
                source: format!("draw a stdin token: {e}").into(),
            })?;
        }
        self.write_stdin(&id, stdin.as_ref()).await?;
        match self.write_request(&request, &id).await {
            Ok(()) => {}
            // Submitted before (a redelivered topic request): never run twice.
            Err(Error::Store { source, .. })
                if source.is_conflict() && submission.execution_id.is_some() =>
            {
                return self.resume(&id, session, &request).await;
            }
            Err(e) => return Err(e),
        }
        tracing::debug!(execution = %id, us = t0.elapsed().as_micros() as u64, "request written");
        if cancel.is_cancelled() {
            // The request exists, so the execution gets its stored result.
            return self.cancelled_before_launch(&id, session).await;
        }
        tracing::Span::current().record("execution", id.as_str());
        let waiter = self.register(&id)?;
        // Watched before the launch, like the waiter: no chunk slips by.
        let live = submission
            .live
            .as_ref()
            .map(|tx| (self.waiters.watch_output(&id), tx.clone()));
        let launched = async {
            if warm {
                let warm = WarmLaunch {
                    session: session.clone(),
                    idle: settings.idle_timeout(),
                };
                // The session's lock stays with this process: the warm
                // execution outlives the command, and holding a share of
                // the lock would keep the session's next command waiting
                // until it exits.
                let spec = launch_spec(&id, submission.timeout, None);
                match feed {
                    Some(feed) => self.launcher.launch_warm_stdin(spec, &warm, feed).await,
                    None => self.launcher.launch_warm(spec, &warm).await,
                }
                .map_err(Error::from)
            } else {
                self.launch_foreground(&id, submission.timeout, store_token, lock)
                    .await
            }
        }
        .instrument(tracing::info_span!("launch", execution = %id))
        .await;
        if let Err(e) = launched {
            // At shutdown the launcher closes just after the notifier: the
            // notifier's error is the one that says why.
            if self.waiters.is_closed()
                && let Err(source) = waiter.await
            {
                return Err(Error::Wait { id, source });
            }
            return Err(e);
        }
        tracing::debug!(execution = %id, us = t0.elapsed().as_micros() as u64, "launched");
        let deadline = submission.timeout + self.config.limits.deadline_grace;
        let wait = self
            .wait_foreground(&id, session, waiter, deadline, cancel)
            .instrument(tracing::info_span!("wait for completion"));
        let outcome = match live {
            None => wait.await,
            Some((watch, tx)) => {
                let follower = Follower::new(self.store.clone(), id.clone(), tx);
                let (ended, end) = tokio::sync::oneshot::channel();
                let wait = async {
                    let outcome = wait.await;
                    let _ = ended.send(());
                    outcome
                };
                // The follower reads the last chunks after the wait, so the
                // stream has everything before the result is handed over.
                let ((), outcome) = tokio::join!(follower.run(watch, end), wait);
                outcome
            }
        };
        self.launcher.release(&id);
        self.forget_cancel(&id);
        tracing::debug!(execution = %id, us = t0.elapsed().as_micros() as u64, "settled");
        let result = outcome?.ok_or(Error::Closed)?;
        if result.state_conflict {
            return Err(Error::StateConflict {
                session: session.to_string(),
                result: Box::new(result),
            });
        }
        Ok(result)
    }
}

impl Engine {
    /// Awaits an execution whose request object another submission wrote
    /// (here or in another process, which may have died since): its result
    /// if there is one, else its end as far as it can be seen, else its
    /// deadline (the stored creation time, timeout and grace), after which
    /// it is settled LOST like any other.
    async fn resume(
        &self,
        id: &ExecutionId,
        session: &SessionId,
        ours: &ExecRequest,
    ) -> Result<ExecResult> {
        let stored: ExecRequest =
            match store::get_json(&*self.store, &layout::request(id), "ExecRequest").await {
                Ok(v) => v.value,
                Err(store::JsonObjectError::Store(e)) => {
                    return Err(Error::store(format!("read request of execution {id}"), e));
                }
                // Not a request we could have written: not ours to touch.
                Err(_) => return Err(Error::ExecutionIdInUse { id: id.clone() }),
            };
        if stored.session_id != ours.session_id
            || stored.command != ours.command
            || stored.request_id != ours.request_id
            || stored.background
        {
            return Err(Error::ExecutionIdInUse { id: id.clone() });
        }
        tracing::debug!(execution = %id, "request already written; awaiting that execution");
        // Register first, then read once: a result finalized in between
        // still reaches the waiter.
        let waiter = self.register_shared(id)?;
        if let Some(result) = self.existing_result(id).await? {
            return conflict_checked(session, result);
        }
        let mut watch = self.end_watch(id).await?;
        if let Some(account) = watch.ended_already() {
            let result = self.settle(id, session, account).await?;
            return conflict_checked(session, result);
        }
        let deadline = Duration::from_millis(stored.timeout_ms) + self.config.limits.deadline_grace;
        let elapsed = stored
            .created_at
            .and_then(|t| SystemTime::try_from(t).ok())
            .and_then(|t| t.elapsed().ok())
            .unwrap_or_default();
        let remaining = deadline.saturating_sub(elapsed);
        let result = self
            .wait_end(id, session, waiter, &mut watch, Limit::Deadline(remaining))
            .await?
            .ok_or(Error::Closed)?;
        conflict_checked(session, result)
    }
}

fn conflict_checked(session: &SessionId, result: ExecResult) -> Result<ExecResult> {
    if result.state_conflict {
        return Err(Error::StateConflict {
            session: session.to_string(),
            result: Box::new(result),
        });
    }
    Ok(result)
}

/// What to launch; called inside the `launch` span, whose context the
/// executor continues.
fn launch_spec(id: &ExecutionId, timeout: Duration, store_token: Option<StoreToken>) -> LaunchSpec {
    LaunchSpec {
        execution_id: id.clone(),
        timeout,
        traceparent: trace_context::current().map(|tp| tp.to_string()),
        store_token,
    }
}
