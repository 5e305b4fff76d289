//! Per-execution completion futures (DESIGN §6). STUB: signatures only.

use std::sync::Arc;

use runbox_core::ExecutionId;

use crate::ObjectEvent;

/// Why a waiter resolved without an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WaitError {
    /// The notifier stopped (source ended or client shut down).
    #[error("completion notifier stopped: {0}")]
    NotifierStopped(String),
    /// The same execution id is already being awaited in this process.
    #[error("execution {0} is already being awaited")]
    AlreadyRegistered(ExecutionId),
}

/// What routing one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routed {
    /// A waiting future was resolved.
    Delivered,
    /// The same name and generation was delivered before.
    Duplicate,
    /// Nobody in this process waits for it.
    Unknown,
}

/// The table of pending executions.
pub struct Waiters {}

impl Waiters {
    /// An empty table.
    pub fn new() -> Arc<Self> {
        todo!()
    }

    /// Registers a waiter; call BEFORE launching the execution.
    pub fn register(self: &Arc<Self>, _id: ExecutionId) -> Result<Waiter, WaitError> {
        todo!()
    }

    /// Routes a finalize event of `results/{id}.json` to its waiter.
    pub fn complete(&self, _id: &ExecutionId, _event: ObjectEvent) -> Routed {
        todo!()
    }

    /// Fails every pending waiter and all later registrations.
    pub fn close(&self, _reason: String) {
        todo!()
    }

    /// Ids currently awaited.
    pub fn pending(&self) -> Vec<ExecutionId> {
        todo!()
    }

    /// How many are pending.
    pub fn len(&self) -> usize {
        todo!()
    }

    /// Whether none is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A future resolving with the execution's result event.
pub struct Waiter {}

impl Waiter {
    /// The execution awaited.
    pub fn id(&self) -> &ExecutionId {
        todo!()
    }
}

impl std::future::Future for Waiter {
    type Output = Result<Arc<ObjectEvent>, WaitError>;
    fn poll(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        todo!()
    }
}
