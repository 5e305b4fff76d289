//! Submitting an execution: the request object is written first, the
//! completion waiter registered before the launch (so the completion cannot
//! come earlier than someone listens), then the launcher starts it.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use runbox_core::layout;
use runbox_core::store::{self, PutOptions};
use runbox_core::trace_context;
use runbox_core::{ExecutionId, SessionId};
use runbox_notifier::{WaitError, Waiter};
use runbox_proto::{ExecRequest, ExecResult};

use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::Engine;
use crate::error::{Error, Result};
use crate::launcher::{LaunchError, LaunchSpec};
use crate::session_lock::SessionGuard;

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

    /// Starts an execution whose request object is written.
    pub(crate) async fn launch(&self, id: &ExecutionId, timeout: Duration) -> Result<()> {
        self.launcher
            .launch(launch_spec(id, timeout))
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
        lock: Option<&SessionGuard>,
    ) -> Result<()> {
        let Some(lock) = lock else {
            return self.launch(id, timeout).await;
        };
        let hold = lock.share().map_err(|source| {
            Error::Launch(LaunchError::Spawn {
                id: id.clone(),
                retryable: true,
                source: Box::new(source),
            })
        })?;
        self.launcher
            .launch_holding(launch_spec(id, timeout), hold)
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
        let id = self.instance.next_execution_id();
        let request = submission.request(&id, session, SystemTime::now(), false);
        self.write_stdin(&id, submission.stdin.as_ref()).await?;
        self.write_request(&request, &id).await?;
        tracing::debug!(execution = %id, us = t0.elapsed().as_micros() as u64, "request written");
        if cancel.is_cancelled() {
            // The request exists, so the execution gets its stored result.
            return self.cancelled_before_launch(&id, session).await;
        }
        tracing::Span::current().record("execution", id.as_str());
        let waiter = self.register(&id)?;
        let launched = self
            .launch_foreground(&id, submission.timeout, lock)
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
        let outcome = self
            .wait_foreground(&id, session, waiter, deadline, cancel)
            .instrument(tracing::info_span!("wait for completion"))
            .await;
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

/// What to launch; called inside the `launch` span, whose context the
/// executor continues.
fn launch_spec(id: &ExecutionId, timeout: Duration) -> LaunchSpec {
    LaunchSpec {
        execution_id: id.clone(),
        timeout,
        traceparent: trace_context::current().map(|tp| tp.to_string()),
    }
}
