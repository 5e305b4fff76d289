//! Settling an execution: its result if the executor wrote one, else a
//! final result written on its behalf. Every such write is create-only
//! (if-generation-match=0), so a late executor's result and ours cannot both
//! land, concurrent settlers agree, and the normal finalize event of the
//! written result completes every waiter, here or in another process.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use runbox_core::store::{self, JsonObjectError, PutOptions};
use runbox_core::{ExecutionId, SessionId};
use runbox_core::{contract, layout};
use runbox_proto::{ExecResult, ExecStatus};

use super::{Engine, marker};
use crate::error::{Error, Result};
use crate::launcher::ExecutionState;

/// Exit code of a command that was killed with SIGTERM.
pub(crate) const CANCELLED_EXIT_CODE: i32 = 128 + libc::SIGTERM;

impl Engine {
    /// The execution's result object, decoded.
    pub(crate) async fn read_result(&self, id: &ExecutionId) -> Result<ExecResult> {
        match store::get_json::<ExecResult>(&*self.store, &layout::result(id), "ExecResult").await {
            Ok(v) => Ok(v.value),
            Err(JsonObjectError::Store(e)) => {
                Err(Error::store(format!("read result of execution {id}"), e))
            }
            Err(e) => Err(Error::InvalidResult {
                id: id.clone(),
                detail: crate::error_chain(&e),
            }),
        }
    }

    /// The result if it exists already.
    pub(crate) async fn existing_result(&self, id: &ExecutionId) -> Result<Option<ExecResult>> {
        match self.read_result(id).await {
            Ok(r) => Ok(Some(r)),
            Err(Error::Store { source, .. }) if source.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Settles an execution whose executor has ended (`account`: how, as
    /// the launcher or an exit watch saw it): its result if it wrote one;
    /// else CANCELLED when a kill had been asked for (in its background
    /// marker, or by this engine's caller: the executor died of the signal
    /// before it could handle it), else LOST.
    ///
    /// An executor that died without a result did not kill its command
    /// either: the launcher sweeps what is left of it first, so a kill that
    /// returns leaves nothing running.
    pub(crate) async fn settle(
        &self,
        id: &ExecutionId,
        session: &SessionId,
        account: String,
    ) -> Result<ExecResult> {
        // Several waits of this process may see the same end at once (the
        // background watch and a caller's wait): one settles, the others
        // then find its result. Otherwise a settler whose sweep found
        // nothing left (another had just killed it) could write its LOST
        // first, without saying what was killed.
        let lock = Arc::clone(&self.settling.entry(id.clone()).or_default());
        let outcome = {
            let _turn = lock.lock().await;
            self.settle_once(id, session, account).await
        };
        drop(lock);
        self.settling
            .remove_if(id, |_, l| Arc::strong_count(l) == 1);
        outcome
    }

    async fn settle_once(
        &self,
        id: &ExecutionId,
        session: &SessionId,
        account: String,
    ) -> Result<ExecResult> {
        if let Some(result) = self.existing_result(id).await? {
            return Ok(result);
        }
        let marker = marker::read(&*self.store, session, id).await;
        if let Err(Error::Store { source, .. }) = &marker
            && source.is_not_found()
        {
            // Neither marker nor request: the execution was deleted with
            // its session (which kills it first), and a result written now
            // would outlive it. (A foreground command has no marker, but
            // its request stays.)
            let request = layout::request(id);
            if let Err(e) = self.store.head(&request).await {
                return Err(Error::store(format!("settle execution {id}"), e));
            }
        }
        // No readable marker (a foreground command has none): nothing says a
        // kill was asked for.
        let kill_requested = marker.is_ok_and(|m| m.kill_requested) || self.cancel_requested(id);
        let mut account = account;
        let swept = self.launcher.sweep(id).await;
        if swept > 0 {
            account.push_str(&format!(
                "; {swept} process(es) it left running were killed"
            ));
        }
        if !kill_requested {
            // No second read: the write is create-only, and a result the
            // executor wrote meanwhile wins and is returned.
            let message = format!("execution ended without a result: {account}");
            return self
                .write_final_result(id, session, ExecStatus::Lost, -1, message)
                .await;
        }
        self.write_final_result(
            id,
            session,
            ExecStatus::Cancelled,
            CANCELLED_EXIT_CODE,
            format!(
                "killed before its executor could handle the signal, so it wrote no result ({account})"
            ),
        )
        .await
    }

    /// The deadline passed with no completion: ask the platform, stop the
    /// execution if it still runs, then settle the result.
    pub(crate) async fn reconcile(
        &self,
        id: &ExecutionId,
        session: &SessionId,
        deadline: Duration,
    ) -> Result<ExecResult> {
        let message = match self.launcher.state(id).await {
            Ok(ExecutionState::Running) => {
                if let Err(e) = self.launcher.cancel(id).await {
                    tracing::warn!(execution = %id, error = %e, "cancel after deadline failed");
                }
                format!("no result {deadline:?} after launch; the execution was stopped")
            }
            Ok(ExecutionState::Ended(e)) => {
                format!("execution ended without a result: {}", e.message)
            }
            Ok(ExecutionState::Unknown) => {
                format!(
                    "no result {deadline:?} after launch and the platform does not know the execution"
                )
            }
            Err(e) => format!(
                "no result {deadline:?} after launch; status lookup failed: {}",
                crate::error_chain(&e)
            ),
        };
        self.result_or_lost(id, session, message).await
    }

    /// Reads the result once; if there is none, writes a LOST result (or
    /// CANCELLED, when its caller cancelled it) and returns whichever
    /// result stands.
    pub(crate) async fn result_or_lost(
        &self,
        id: &ExecutionId,
        session: &SessionId,
        message: String,
    ) -> Result<ExecResult> {
        if let Some(result) = self.existing_result(id).await? {
            return Ok(result);
        }
        if self.cancel_requested(id) {
            let message = format!("cancelled; {message}");
            return self
                .write_final_result(
                    id,
                    session,
                    ExecStatus::Cancelled,
                    CANCELLED_EXIT_CODE,
                    message,
                )
                .await;
        }
        self.write_final_result(id, session, ExecStatus::Lost, -1, message)
            .await
    }

    /// Writes a result on behalf of an executor that wrote none (LOST, or
    /// CANCELLED for a kill it could not handle), create-only so it can
    /// never replace one the executor did write; returns whichever result
    /// stands.
    pub(crate) async fn write_final_result(
        &self,
        id: &ExecutionId,
        session: &SessionId,
        status: ExecStatus,
        exit_code: i32,
        message: String,
    ) -> Result<ExecResult> {
        let mut result = ExecResult {
            execution_id: id.to_string(),
            session_id: session.to_string(),
            exit_code,
            message,
            completed_at: Some(runbox_proto::timestamp(SystemTime::now())),
            ..Default::default()
        };
        result.set_exec_status(status);
        let mut options = PutOptions::create();
        // The completion event of this result joins the caller's trace.
        if let Some(tp) = runbox_core::trace_context::current() {
            options = options.with_metadata(contract::RESULT_TRACEPARENT_KEY, tp.to_string());
        }
        match store::put_json(&*self.store, &layout::result(id), &result, options).await {
            Ok(_) => {
                if status == ExecStatus::Lost {
                    crate::metrics::get().lost();
                }
                Ok(result)
            }
            Err(e) if e.is_conflict() => self.read_result(id).await,
            Err(e) => Err(Error::store(
                format!("write {status} result of execution {id}"),
                e,
            )),
        }
    }
}
