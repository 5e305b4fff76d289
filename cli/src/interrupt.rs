//! Ctrl-C (SIGINT) and SIGTERM while `runbox exec` waits: the first cancels
//! the command and keeps waiting until it has settled (its process group
//! killed, a CANCELLED result stored), so the session's next command cannot
//! overlap it; a second stops waiting at once. The executor holds the
//! session's lock until it exits, so even then the next command waits for
//! it.

use std::future::{Future, IntoFuture};

use runbox_dispatcher::{CancelHandle, Error, Exec, ExecResult};
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::stdout::note;

/// Runs `exec`, cancelling it on the first SIGINT or SIGTERM; `None` when a
/// second signal came before it settled.
pub async fn run(exec: Exec) -> Option<Result<ExecResult, Error>> {
    // Handlers first: once the future exists the command may launch, and a
    // signal with its default action would end this process without
    // stopping the command.
    let interrupts = Interrupts::install();
    let cancel = exec.cancel_handle();
    run_future(interrupts, cancel, exec.into_future()).await
}

/// [`run`] for a result future and its cancel handle (a command whose
/// output streams while it runs). `interrupts` must be installed before
/// `running` is created.
pub async fn run_future(
    mut interrupts: Interrupts,
    cancel: CancelHandle,
    running: impl Future<Output = Result<ExecResult, Error>>,
) -> Option<Result<ExecResult, Error>> {
    tokio::pin!(running);
    tokio::select! {
        outcome = &mut running => return Some(outcome),
        () = interrupts.next() => {}
    }
    cancel.cancel();
    note!("runbox: cancelling the command (interrupt again to stop waiting for it)");
    tokio::select! {
        outcome = &mut running => Some(outcome),
        () = interrupts.next() => {
            note!("runbox: not waiting for the cancelled command to settle");
            None
        }
    }
}

/// SIGINT and SIGTERM, as one stream.
pub struct Interrupts {
    int: Option<Signal>,
    term: Option<Signal>,
}

impl Interrupts {
    /// Installs both handlers; one that cannot be installed keeps its
    /// default action (the process ends, the command runs on).
    pub fn install() -> Self {
        let install = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(s) => Some(s),
            Err(e) => {
                note!(
                    "runbox: warning: cannot handle {name} ({e}); it will not cancel the command"
                );
                None
            }
        };
        Self {
            int: install(SignalKind::interrupt(), "SIGINT"),
            term: install(SignalKind::terminate(), "SIGTERM"),
        }
    }

    /// Resolves at the next signal of either kind.
    async fn next(&mut self) {
        async fn recv(s: &mut Option<Signal>) {
            let delivered = match s {
                Some(s) => s.recv().await.is_some(),
                None => false,
            };
            if !delivered {
                std::future::pending::<()>().await;
            }
        }
        tokio::select! {
            () = recv(&mut self.int) => {}
            () = recv(&mut self.term) => {}
        }
    }
}
