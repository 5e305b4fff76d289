//! One queue per session: its foreground commands run one at a time, in the
//! order they were submitted; sessions run in parallel. On the embedded
//! backend a per-session file lock extends that order to other processes;
//! on the gcp backend a session lease object extends it to other processes
//! and machines.

use std::sync::Arc;

use runbox_core::{SessionId, layout};
use runbox_proto::{ExecResult, ExecStatus};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::{CancelHandle, Engine, Submission};
use crate::error::{Error, Result};
use crate::session_lease::{LeaseError, SessionLease};

/// The sending end of a session's queue.
pub(crate) type Sender = mpsc::UnboundedSender<Job>;

/// A queued foreground command and where its result goes.
pub(crate) struct Job {
    submission: Submission,
    reply: oneshot::Sender<Result<ExecResult>>,
    cancel: CancelHandle,
    /// Ends when the job has its turn and the session's lock or lease.
    queue_wait: tracing::Span,
}

impl Engine {
    /// Queues a foreground command on its session; the returned receiver
    /// gets its result. Fails at once when the engine is shutting down.
    pub(crate) fn enqueue(
        self: &Arc<Self>,
        session: &SessionId,
        submission: Submission,
        cancel: CancelHandle,
    ) -> Result<oneshot::Receiver<Result<ExecResult>>> {
        if self.is_stopping() {
            return Err(Error::Closed);
        }
        let (reply, rx) = oneshot::channel();
        let tx = self
            .queues
            .entry(session.clone())
            .or_insert_with(|| self.spawn_worker(session.clone()))
            .clone();
        let queue_wait = tracing::info_span!(parent: &submission.span, "queue wait");
        tx.send(Job {
            submission,
            reply,
            cancel,
            queue_wait,
        })
        .map_err(|_| Error::Closed)?;
        Ok(rx)
    }

    fn spawn_worker(self: &Arc<Self>, session: SessionId) -> Sender {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        // Weak between jobs, so an idle worker does not keep the engine
        // alive; a job holds it strongly while it runs.
        let engine = Arc::downgrade(self);
        let stop = self.stop.clone();
        self.tasks.spawn(async move {
            loop {
                // Jobs already queued come first: after a shutdown each ends
                // at once with a typed error, rather than with none.
                let job = tokio::select! {
                    biased;
                    job = rx.recv() => job,
                    () = stop.cancelled() => None,
                };
                let Some(job) = job else { break };
                if job.reply.is_closed() {
                    // The caller dropped its future before its turn: skip it.
                    continue;
                }
                if job.cancel.is_cancelled() {
                    let _ = job.reply.send(Err(Error::Cancelled));
                    continue;
                }
                let Some(engine) = engine.upgrade() else {
                    let _ = job.reply.send(Err(Error::Closed));
                    continue;
                };
                // A running job is not cut short at shutdown: the notifier
                // has stopped by then, so it ends at once with a typed
                // error of its own (or its result, if that is already in).
                let span = job.submission.span.clone();
                let result = engine
                    .run_queued(
                        &session,
                        &job.submission,
                        job.cancel.token(),
                        job.queue_wait,
                    )
                    .instrument(span)
                    .await;
                let _ = job.reply.send(result);
            }
        });
        tx
    }

    async fn run_queued(
        &self,
        session: &SessionId,
        submission: &Submission,
        cancel: &CancellationToken,
        queue_wait: tracing::Span,
    ) -> Result<ExecResult> {
        let guard = match &self.session_locks {
            // Another process may hold the lock for a long command: waiting
            // for it must not hold up shutdown. Without it the command goes
            // on, and fails at once on the stopped notifier with the same
            // typed error as every other waiting future.
            Some(locks) => tokio::select! {
                guard = locks.lock(session) => Some(guard.map_err(|source| {
                    Error::store(
                        format!("lock session {session}"),
                        runbox_core::StoreError::Io {
                            op: "lock",
                            name: layout::session_prefix(session),
                            source,
                        },
                    )
                })?),
                () = self.stop.cancelled() => None,
                // Still waiting for its turn: it never runs.
                () = cancel.cancelled() => return Err(Error::Cancelled),
            },
            None => None,
        };
        let lease = match &self.session_leases {
            // As with the lock: shutdown does not wait for another holder.
            Some(leases) => tokio::select! {
                lease = leases.acquire(session) => Some(lease?),
                () = self.stop.cancelled() => None,
                () = cancel.cancelled() => return Err(Error::Cancelled),
            },
            None => None,
        };
        drop(queue_wait);
        let started = std::time::Instant::now();
        let result = self
            .run_foreground(session, submission, guard.as_ref(), cancel)
            .await;
        self.exec_finished(&submission.span, started.elapsed(), &result);
        match lease {
            Some(lease) => leased_result(lease, result).await,
            None => result,
        }
    }
}

impl Engine {
    /// Records how a foreground command ended on its span (an error status
    /// unless it SUCCEEDED) and in the duration histogram.
    fn exec_finished(
        &self,
        span: &tracing::Span,
        elapsed: std::time::Duration,
        result: &Result<ExecResult>,
    ) {
        let status = match result {
            Ok(r) => r.exec_status().name(),
            Err(_) => "ERROR",
        };
        span.record("status", status);
        if status != ExecStatus::Succeeded.name() {
            runbox_core::trace_context::mark_error(span);
        }
        crate::metrics::get().exec_finished(elapsed, status, self.config.launcher.kind().as_str());
    }
}

/// Gives the lease back; a lease lost while the command ran turns its
/// result into [`LeaseError::Lost`], since another command may have run
/// meanwhile.
async fn leased_result(lease: SessionLease, result: Result<ExecResult>) -> Result<ExecResult> {
    let session = lease.session().to_string();
    match lease.release().await {
        Ok(()) => result,
        Err(LeaseError::Lost { ttl, .. }) => {
            let execution = match &result {
                Ok(r) => r.execution_id.clone(),
                Err(Error::StateConflict { result, .. }) => result.execution_id.clone(),
                Err(_) => String::new(),
            };
            Err(LeaseError::Lost {
                session,
                execution,
                ttl,
            }
            .into())
        }
        Err(e) => {
            // The lease expires by itself; the command's outcome stands.
            tracing::warn!(%session, error = %e, "could not release the session lease");
            result
        }
    }
}
