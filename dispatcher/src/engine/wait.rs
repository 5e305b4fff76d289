//! The one wait every caller uses: the result's completion event, the
//! executor's end as the launcher (or an exit watch) reports it, and a time
//! limit, whichever comes first.
//!
//! An end reported by the launcher means the executor has exited, so its
//! result write, if it made one, is complete; the event normally follows
//! within milliseconds, so it is given the completion grace
//! (`RUNBOX_COMPLETION_GRACE_MS`) before the store is read directly and, if
//! there is no result, one is written on the executor's behalf. An event
//! becomes the result through [`Engine::result_of`].

use std::time::Duration;

use runbox_core::{ExecutionId, SessionId};
use runbox_notifier::Waiter;
use runbox_proto::ExecResult;

use super::Engine;
use crate::error::{Error, Result};
use crate::launcher::{ExecutionState, ForeignExecution, Launcher, Observed};

/// How the end of an execution can be seen, besides its result's
/// completion event.
pub(crate) enum EndWatch {
    /// This engine's launcher launched it and reports its end; holds the
    /// launcher's account when it has ended already.
    Launcher(Option<String>),
    /// Another process launched it; the launcher found it running here.
    Foreign(Box<dyn ForeignExecution>),
    /// It has no result and nothing runs it: it ended without one (or
    /// never started).
    Gone,
    /// Nothing here can see it end (another instance's Cloud Run execution).
    Unobservable,
}

/// What happens when the time limit of a wait passes first.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Limit {
    /// The execution's deadline (timeout + grace): reconcile with the
    /// platform and settle, so the wait always ends with a result.
    Deadline(Duration),
    /// The caller's own patience: give up and report `None`; the
    /// execution goes on.
    Timeout(Duration),
}

impl EndWatch {
    /// The account of an end that has already happened.
    pub(crate) fn ended_already(&self) -> Option<String> {
        match self {
            EndWatch::Launcher(Some(message)) => Some(message.clone()),
            EndWatch::Gone => Some(GONE.to_owned()),
            _ => None,
        }
    }

    /// Resolves with an account of the end once the executor has ended;
    /// never, when that cannot be seen.
    pub(crate) async fn ended(&mut self, launcher: &dyn Launcher, id: &ExecutionId) -> String {
        match self {
            EndWatch::Launcher(Some(message)) => message.clone(),
            EndWatch::Launcher(None) => launcher.ended(id).await.message,
            EndWatch::Foreign(execution) => execution.exited().await,
            EndWatch::Gone => GONE.to_owned(),
            EndWatch::Unobservable => std::future::pending().await,
        }
    }
}

const GONE: &str = "no executor process runs it";

impl Engine {
    /// How this engine can see the execution end, besides its completion
    /// event: through its own launcher if it launched it, else through
    /// whatever the launcher can observe of another process's execution.
    pub(crate) async fn end_watch(&self, id: &ExecutionId) -> Result<EndWatch> {
        match self.launcher.state(id).await? {
            ExecutionState::Running => return Ok(EndWatch::Launcher(None)),
            ExecutionState::Ended(ended) => return Ok(EndWatch::Launcher(Some(ended.message))),
            ExecutionState::Unknown => {}
        }
        Ok(match self.launcher.observe(id).await {
            Observed::Running(execution) => EndWatch::Foreign(execution),
            Observed::Gone => EndWatch::Gone,
            Observed::Unobservable => EndWatch::Unobservable,
        })
    }

    /// Waits for the execution's end and settles it. With a
    /// [`Limit::Deadline`] the result is always `Some`; with a
    /// [`Limit::Timeout`], `None` means the time ran out first.
    pub(crate) async fn wait_end(
        &self,
        id: &ExecutionId,
        session: &SessionId,
        waiter: Option<Waiter>,
        watch: &mut EndWatch,
        limit: Limit,
    ) -> Result<Option<ExecResult>> {
        let has_waiter = waiter.is_some();
        let event = async {
            match waiter {
                Some(w) => w.await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(event);
        let (Limit::Deadline(after) | Limit::Timeout(after)) = limit;
        tokio::select! {
            completion = &mut event => match completion {
                Ok(event) => self.result_of(id, &event).await.map(Some),
                Err(source) => Err(Error::Wait { id: id.clone(), source }),
            },
            account = watch.ended(&*self.launcher, id) => {
                if has_waiter {
                    match tokio::time::timeout(self.config.limits.completion_grace, &mut event).await {
                        Ok(Ok(event)) => return self.result_of(id, &event).await.map(Some),
                        Ok(Err(source)) => return Err(Error::Wait { id: id.clone(), source }),
                        Err(_) => {}
                    }
                }
                self.settle(id, session, account).await.map(Some)
            }
            () = tokio::time::sleep(after) => match limit {
                Limit::Deadline(deadline) => self.reconcile(id, session, deadline).await.map(Some),
                Limit::Timeout(_) => Ok(None),
            },
        }
    }
}
