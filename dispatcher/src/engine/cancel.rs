//! Cancelling a foreground execution at its caller's request: the launcher
//! stops it (the executor kills the command's process group and writes a
//! CANCELLED result), and the caller's wait goes on until the execution has
//! settled, so the session's next command never overlaps the cancelled one.

use std::time::Duration;

use runbox_core::{ExecutionId, SessionId};
use runbox_notifier::Waiter;
use runbox_proto::{ExecResult, ExecStatus};
use tokio_util::sync::CancellationToken;

use super::settle::CANCELLED_EXIT_CODE;
use super::{EndWatch, Engine, Limit};
use crate::error::Result;

/// Cancels one command (see [`crate::Exec`] for what that does); cheap to clone,
/// usable from any task, and idempotent.
#[derive(Clone, Debug, Default)]
pub struct CancelHandle {
    token: CancellationToken,
}

impl CancelHandle {
    /// Asks for the command to be stopped and returns at once; await the
    /// command's own future for its result.
    pub fn cancel(&self) {
        self.token.cancel();
    }

    /// Whether [`CancelHandle::cancel`] has been called.
    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    pub(crate) fn token(&self) -> &CancellationToken {
        &self.token
    }
}

impl Engine {
    /// The wait of a launched foreground execution ([`Engine::wait_end`]
    /// up to its deadline), until `cancel` fires: then the execution is
    /// stopped and the wait goes on until it has settled. If no end is seen
    /// within the kill grace plus the deadline grace of the cancel, the
    /// execution is settled as it stands (CANCELLED when nothing wrote a
    /// result), so a cancelled wait never outlives those graces.
    pub(crate) async fn wait_foreground(
        &self,
        id: &ExecutionId,
        session: &SessionId,
        waiter: Waiter,
        deadline: Duration,
        cancel: &CancellationToken,
    ) -> Result<Option<ExecResult>> {
        let mut watch = EndWatch::Launcher(None);
        let wait = self.wait_end(
            id,
            session,
            Some(waiter),
            &mut watch,
            Limit::Deadline(deadline),
        );
        tokio::pin!(wait);
        tokio::select! {
            // A result already in wins over a cancel asked for meanwhile.
            biased;
            outcome = &mut wait => return outcome,
            () = cancel.cancelled() => {}
        }
        self.stop_execution(id).await;
        let within = self.config.limits.kill_grace + self.config.limits.deadline_grace;
        match tokio::time::timeout(within, &mut wait).await {
            Ok(outcome) => outcome,
            Err(_) => {
                tracing::warn!(execution = %id, ?within, "no end seen after the cancel; settling it");
                let account = format!("no end seen {within:?} after the cancel");
                self.settle(id, session, account).await.map(Some)
            }
        }
    }

    /// Asks the launcher to stop a foreground execution, remembering that
    /// its caller cancelled it: if it then ends without a result, it is
    /// settled as CANCELLED, not LOST.
    async fn stop_execution(&self, id: &ExecutionId) {
        self.cancelled.insert(id.clone());
        if let Err(e) = self.launcher.cancel(id).await {
            // The wait goes on regardless and is bounded: at worst the
            // execution is settled when the graces have passed.
            tracing::warn!(execution = %id, error = %crate::error_chain(&e), "cancel failed");
        }
    }

    /// Whether this execution's caller cancelled it.
    pub(crate) fn cancel_requested(&self, id: &ExecutionId) -> bool {
        self.cancelled.contains(id)
    }

    /// Forgets the cancel of a settled execution.
    pub(crate) fn forget_cancel(&self, id: &ExecutionId) {
        self.cancelled.remove(id);
    }

    /// The result of an execution whose request is written but which was
    /// cancelled before it was launched: CANCELLED, without running.
    pub(crate) async fn cancelled_before_launch(
        &self,
        id: &ExecutionId,
        session: &SessionId,
    ) -> Result<ExecResult> {
        self.write_final_result(
            id,
            session,
            ExecStatus::Cancelled,
            CANCELLED_EXIT_CODE,
            "cancelled before it was launched; the command did not run".to_owned(),
        )
        .await
    }
}
