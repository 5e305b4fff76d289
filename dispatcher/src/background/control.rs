//! Listing, waiting for and killing a session's background processes.

use std::time::Duration;

use futures::StreamExt;
use runbox_core::background_marker::BackgroundMarker;
use runbox_core::store;
use runbox_core::{ExecutionId, SessionId, layout};
use runbox_notifier::{WaitError, Waiter};
use runbox_proto::ExecResult;

use super::{BackgroundEntry, BackgroundHandle, BackgroundState, KILL_SLACK, LIST_CONCURRENCY};
use crate::engine::{EndWatch, Engine, Limit, marker};
use crate::error::{BackgroundError, Error, Result};

/// The background process with this handle (its execution id); fails with
/// [`BackgroundError::UnknownHandle`] when the session has none.
pub(crate) async fn find(
    engine: &Engine,
    session: &SessionId,
    handle: &str,
) -> Result<BackgroundHandle> {
    let unknown = || {
        Error::Background(BackgroundError::UnknownHandle {
            session: session.to_string(),
            handle: handle.to_owned(),
        })
    };
    let id = ExecutionId::new(handle).map_err(|_| unknown())?;
    match marker::read(&*engine.store, session, &id).await {
        Ok(marker) => Ok(handle_of(marker)),
        Err(Error::Store { source, .. }) if source.is_not_found() => Err(unknown()),
        Err(e) => Err(e),
    }
}

fn handle_of(marker: BackgroundMarker) -> BackgroundHandle {
    BackgroundHandle {
        execution_id: marker.execution_id,
        session: marker.session,
        command: marker.command,
        started_at: marker.started_at,
    }
}

/// The session's background processes, oldest first, running or not.
pub(crate) async fn list(engine: &Engine, session: &SessionId) -> Result<Vec<BackgroundEntry>> {
    let store = &*engine.store;
    let prefix = layout::background_prefix(session);
    let markers = store::list_all(store, &prefix)
        .await
        .map_err(|e| Error::store(format!("list background processes of {session}"), e))?;
    let ids: Vec<ExecutionId> = markers
        .iter()
        .filter_map(|m| {
            let id = m.name.strip_prefix(&prefix)?.strip_suffix(".json")?;
            ExecutionId::new(id).ok()
        })
        .collect();
    let found: Vec<Option<BackgroundEntry>> = futures::stream::iter(ids)
        .map(|id| entry(engine, session, id))
        .buffered(LIST_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    let mut entries: Vec<BackgroundEntry> = found.into_iter().flatten().collect();
    entries.sort_by(|a, b| {
        (a.handle.started_at, &a.handle.execution_id)
            .cmp(&(b.handle.started_at, &b.handle.execution_id))
    });
    Ok(entries)
}

/// One listing entry; `None` when the marker vanished meanwhile (the
/// session was deleted).
async fn entry(
    engine: &Engine,
    session: &SessionId,
    id: ExecutionId,
) -> Result<Option<BackgroundEntry>> {
    let marker = match marker::read(&*engine.store, session, &id).await {
        Ok(marker) => marker,
        Err(Error::Store { source, .. }) if source.is_not_found() => return Ok(None),
        Err(e) => return Err(e),
    };
    let state = match engine.existing_result(&id).await? {
        Some(r) => BackgroundState::Exited {
            status: r.exec_status(),
            exit_code: r.exit_code,
        },
        None => BackgroundState::Running,
    };
    Ok(Some(BackgroundEntry {
        handle: handle_of(marker),
        state,
    }))
}

/// Kills the running background processes of `session` whose command
/// `matches`, all at once; their results, or the first error after every
/// kill was tried.
pub(crate) async fn kill_where(
    engine: &Engine,
    session: &SessionId,
    matches: impl Fn(&str) -> bool,
) -> Result<Vec<ExecResult>> {
    let targets: Vec<BackgroundHandle> = list(engine, session)
        .await?
        .into_iter()
        .filter(|e| e.state == BackgroundState::Running && matches(&e.handle.command))
        .map(|e| e.handle)
        .collect();
    futures::future::join_all(targets.iter().map(|h| kill(engine, h)))
        .await
        .into_iter()
        .collect()
}

/// Waits until the process ends and returns its result, or fails with
/// [`BackgroundError::WaitTimedOut`] after `timeout` (the process keeps
/// running). The completion waiter is registered first, then the result
/// is read once.
pub(crate) async fn wait(
    engine: &Engine,
    handle: &BackgroundHandle,
    timeout: Duration,
) -> Result<ExecResult> {
    let id = &handle.execution_id;
    let (waiter, mut watch, _adoption) = match watch_end(engine, handle).await? {
        Watch::Ended(result) => return Ok(*result),
        Watch::Running(waiter, watch, adoption) => (waiter, watch, adoption),
    };
    if waiter.is_none() && matches!(watch, EndWatch::Unobservable) {
        // Nothing could tell us of the end before the timeout.
        return Err(Error::Wait {
            id: id.clone(),
            source: WaitError::AlreadyRegistered(id.clone()),
        });
    }
    engine
        .wait_end(
            id,
            &handle.session,
            waiter,
            &mut watch,
            Limit::Timeout(timeout),
        )
        .await?
        .ok_or_else(|| {
            Error::Background(BackgroundError::WaitTimedOut {
                handle: handle.to_string(),
                timeout,
            })
        })
}

/// Stops a background process: the executor gets SIGTERM, kills the
/// process group and writes a CANCELLED result, which is returned. A
/// process that had already ended is left alone and its result returned.
pub(crate) async fn kill(engine: &Engine, handle: &BackgroundHandle) -> Result<ExecResult> {
    let id = &handle.execution_id;
    // Registered BEFORE the cancel, so the CANCELLED result's event cannot
    // come before anyone listens.
    let (waiter, mut watch, _adoption) = match watch_end(engine, handle).await? {
        Watch::Ended(result) => return Ok(*result),
        Watch::Running(waiter, watch, adoption) => (waiter, watch, adoption),
    };
    if matches!(watch, EndWatch::Unobservable) {
        return Err(Error::Background(BackgroundError::Unreachable {
            handle: handle.to_string(),
            launcher: engine.launcher.describe(),
        }));
    }
    mark_kill_requested(engine, handle).await?;
    match &watch {
        EndWatch::Launcher(_) => engine.launcher.cancel(id).await?,
        EndWatch::Foreign(execution) => execution.terminate(),
        EndWatch::Gone | EndWatch::Unobservable => {}
    }
    let timeout = engine.config.limits.kill_grace + KILL_SLACK;
    engine
        .wait_end(
            id,
            &handle.session,
            waiter,
            &mut watch,
            Limit::Timeout(timeout),
        )
        .await?
        .ok_or_else(|| {
            Error::Background(BackgroundError::KillTimedOut {
                handle: handle.to_string(),
                timeout,
            })
        })
}

/// Where a process stands once its end is watched.
enum Watch<'a> {
    /// It has ended; its (settled) result.
    Ended(Box<ExecResult>),
    /// It runs: its completion waiter (`None` when another caller in this
    /// process holds it) and how its end can be seen.
    Running(Option<Waiter>, EndWatch, Adoption<'a>),
}

/// An execution of another dispatcher process that the launcher took in for
/// this call; released when the call is done, however it ends.
struct Adoption<'a> {
    engine: &'a Engine,
    id: Option<ExecutionId>,
}

impl Drop for Adoption<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.engine.launcher.release(&id);
        }
    }
}

/// Lets the launcher reach a process that another dispatcher process
/// launched (a CLI call that has exited), from the locator in its marker.
async fn adopt<'a>(engine: &'a Engine, handle: &BackgroundHandle) -> Result<Adoption<'a>> {
    let id = &handle.execution_id;
    let marker = marker::read(&*engine.store, &handle.session, id).await?;
    let adopted = engine
        .launcher
        .adopt(id, marker.locator.as_deref(), marker.started_at)
        .await?;
    Ok(Adoption {
        engine,
        id: adopted.then(|| id.clone()),
    })
}

/// Starts watching for the end of a process, list-then-watch: the waiter is
/// registered first, then the result read once, then the executor looked
/// for; an executor already gone without a result is settled here.
async fn watch_end<'a>(engine: &'a Engine, handle: &BackgroundHandle) -> Result<Watch<'a>> {
    let id = &handle.execution_id;
    let waiter = engine.register_shared(id)?;
    if let Some(result) = engine.existing_result(id).await? {
        return Ok(Watch::Ended(Box::new(result)));
    }
    let adoption = adopt(engine, handle).await?;
    let watch = engine.end_watch(id).await?;
    if let Some(account) = watch.ended_already() {
        let result = engine.settle(id, &handle.session, account).await?;
        return Ok(Watch::Ended(Box::new(result)));
    }
    Ok(Watch::Running(waiter, watch, adoption))
}

/// Records in the marker that a kill was asked for, before the signal goes
/// out: if the executor then ends without a result (the signal came before
/// it could handle it), whoever settles it writes CANCELLED, not LOST.
async fn mark_kill_requested(engine: &Engine, handle: &BackgroundHandle) -> Result<()> {
    marker::update(&*engine.store, &handle.session, &handle.execution_id, |m| {
        m.kill_requested = true
    })
    .await
    .map(drop)
}
