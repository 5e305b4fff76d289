//! Starting a background process: validated like a foreground command, then
//! request, marker and launch, and a tracked task that settles it when its
//! executor ends, so nothing waits for a result that will never come.

use std::collections::BTreeMap;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use runbox_core::background_marker::BackgroundMarker;
use runbox_core::store::{Precondition, PutOptions};
use runbox_core::{ExecutionId, SessionId, layout};

use super::BackgroundHandle;
use crate::engine::{EndWatch, Engine, Handle, Limit, Submission, marker};
use crate::error::{Error, Result};
use crate::exec::Options;

/// A background process about to start: set options, then `.await` it.
#[must_use = "a Spawn does nothing until awaited"]
pub struct Spawn {
    handle: Handle,
    session: SessionId,
    command: String,
    timeout: Option<Duration>,
    env: BTreeMap<String, String>,
}

impl Spawn {
    pub(crate) fn new(handle: Handle, session: SessionId, command: String) -> Self {
        Self {
            handle,
            session,
            command,
            timeout: None,
            env: BTreeMap::new(),
        }
    }

    /// How long it may run before it is killed (TIMED_OUT); default and
    /// upper bound `RUNBOX_MAX_TIMEOUT_SECS` (24 h).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// An extra environment variable for this process only.
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(name.into(), value.into());
        self
    }
}

impl IntoFuture for Spawn {
    type Output = Result<BackgroundHandle>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<BackgroundHandle>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        // The same checks as a foreground command, done here, synchronously,
        // so bad input fails before any side effect.
        let engine = self.handle.engine();
        let options = Options {
            timeout: Some(self.timeout.unwrap_or(engine.config.limits.max_timeout)),
            env: self.env,
            output_cap: None,
            request_id: String::new(),
            ..Options::default()
        };
        let submission = match options.validate(&engine.config, self.command) {
            Ok(s) => s,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        let handle = self.handle;
        let session = self.session;
        Box::pin(async move { start(handle.engine(), session, submission).await })
    }
}

/// Writes the request and the marker, launches, and returns without waiting
/// for the process; a watcher task settles the launch when it ends.
async fn start(
    engine: &Arc<Engine>,
    session: SessionId,
    submission: Submission,
) -> Result<BackgroundHandle> {
    let id = engine.instance.next_execution_id();
    // Milliseconds, as the marker stores it, so the handle returned here
    // equals the one read back from the marker.
    let started_at = SystemTime::UNIX_EPOCH
        + Duration::from_millis(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        );
    let mut submission = submission;
    submission.output_cap = 0;
    let store_token = engine.mint(&session, &id, submission.timeout).await?;
    let request = submission.request(&id, &session, started_at, true);
    engine.write_request(&request, &id).await?;
    // The marker before the launch: whatever runs is listed, so it can be
    // found and killed.
    let record = BackgroundMarker {
        execution_id: id.clone(),
        session: session.clone(),
        command: submission.command.clone(),
        started_at,
        kill_requested: false,
        locator: None,
    };
    marker::write(&*engine.store, &record, PutOptions::create()).await?;
    if let Err(e) = engine.launch(&id, submission.timeout, store_token).await {
        // Nothing runs: a marker left behind would list it as running forever.
        let name = layout::background_marker(&session, &id);
        if let Err(d) = engine.store.delete(&name, Precondition::None).await {
            tracing::warn!(execution = %id, error = %d, "could not remove the marker of a failed launch");
        }
        return Err(e);
    }
    tracing::debug!(execution = %id, session = %session, "background process launched");
    record_locator(engine, &session, &id).await;
    watch_launch(
        engine,
        id.clone(),
        session.clone(),
        submission.timeout + engine.config.limits.deadline_grace,
    );
    Ok(BackgroundHandle {
        execution_id: id,
        session,
        command: submission.command,
        started_at,
    })
}

/// Stores in the marker where the launcher runs the process, so a later
/// dispatcher process can kill it. A failure is logged, not returned: the
/// process runs, and a marker without a locator is still found (more
/// slowly, by searching the platform).
async fn record_locator(engine: &Engine, session: &SessionId, id: &ExecutionId) {
    let Some(locator) = engine.launcher.locator(id) else {
        return;
    };
    let stored = marker::update(&*engine.store, session, id, |m| {
        m.locator = Some(locator.clone());
    })
    .await;
    if let Err(e) = stored {
        tracing::warn!(execution = %id, error = %crate::error_chain(&e), "could not record where the background process runs");
    }
}

/// Observes a background launch to its end so nothing leaks: releases the
/// launcher's record of it and, when the executor ended without a result
/// (or the deadline passed with none), settles it. Ends early, unsettled,
/// when the engine stops.
fn watch_launch(engine: &Arc<Engine>, id: ExecutionId, session: SessionId, deadline: Duration) {
    let task_engine = Arc::clone(engine);
    engine.spawn_task(move |stop| async move {
        let engine = task_engine;
        let mut watch = EndWatch::Launcher(None);
        let settled = tokio::select! {
            settled = engine.wait_end(
                &id,
                &session,
                None,
                &mut watch,
                Limit::Deadline(deadline),
            ) => settled,
            () = stop.cancelled() => return,
        };
        match settled {
            Ok(Some(r)) => {
                tracing::debug!(execution = %id, status = %r.exec_status(), "background process ended")
            }
            Ok(None) => {}
            Err(Error::Store { source, .. }) if source.is_not_found() => {
                tracing::debug!(execution = %id, "background process deleted with its session")
            }
            Err(e) => {
                tracing::warn!(execution = %id, error = %crate::error_chain(&e), "could not settle a background process")
            }
        }
        engine.launcher.release(&id);
    });
}
