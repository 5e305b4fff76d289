//! Sessions: the [`Session`] handle (commands, background processes and,
//! in [`crate::files`], the workspace file API) and the session lifecycle
//! (create, ensure, info, list, close, destroy) that [`crate::Client`]
//! exposes.

use runbox_core::SessionId;
use runbox_core::layout;
use runbox_core::store::{self, JsonObjectError, ListOptions, PutOptions};
use runbox_proto::{ExecResult, SessionState};

use crate::background::{self, BackgroundEntry, BackgroundHandle, BackgroundState, Spawn};
use crate::engine::{Engine, Handle, WorkspacePlacement};
use crate::error::{Error, Result};
use crate::exec::Exec;

/// A stateful shell session. Commands on one session run one at a time, in
/// the order their futures were created; sessions run in parallel.
#[derive(Clone)]
pub struct Session {
    pub(crate) handle: Handle,
    pub(crate) id: SessionId,
}

/// A session and its state, as listed.
#[derive(Clone, Debug)]
pub struct SessionInfo {
    /// The session.
    pub id: SessionId,
    /// Its state; `None` when no command has completed in it yet.
    pub state: Option<SessionState>,
    /// Background processes still running.
    pub background_running: usize,
    /// How its commands run, and a warm execution's idle timeout.
    pub settings: runbox_core::warm::SessionSettings,
    /// The first execution of its running warm execution, if one runs
    /// (warm sessions only).
    pub warm_execution: Option<String>,
}

impl Session {
    pub(crate) fn new(handle: Handle, id: SessionId) -> Self {
        Self { handle, id }
    }

    /// The session id.
    pub fn id(&self) -> &SessionId {
        &self.id
    }

    pub(crate) fn engine(&self) -> &Engine {
        self.handle.engine()
    }

    /// Prepares a command; `.await` it (optionally after setting options) to
    /// run it. Its place in the session's queue is taken when it is awaited.
    pub fn exec(&self, command: impl Into<String>) -> Exec {
        Exec::new(self.handle.clone(), self.id.clone(), command.into())
    }

    /// Prepares a background process; `.await` it to start it and get its
    /// handle. Bad input fails exactly as [`Session::exec`] does, before
    /// anything is written.
    pub fn spawn(&self, command: impl Into<String>) -> Spawn {
        Spawn::new(self.handle.clone(), self.id.clone(), command.into())
    }

    /// The background process with this handle (its execution id); fails
    /// with [`crate::BackgroundError::UnknownHandle`] when the session has none.
    pub async fn background(&self, handle: &str) -> Result<BackgroundHandle> {
        background::control::find(self.engine(), &self.id, handle).await
    }

    /// The session's background processes, oldest first, running or not.
    pub async fn list_background(&self) -> Result<Vec<BackgroundEntry>> {
        background::control::list(self.engine(), &self.id).await
    }

    /// Kills the background process with this handle; see
    /// [`crate::Client::kill_background`].
    pub async fn kill_background(&self, handle: &str) -> Result<ExecResult> {
        let handle = self.background(handle).await?;
        background::control::kill(self.engine(), &handle).await
    }

    /// Kills every running background process of the session, all at once;
    /// returns their results (or the first error, after every kill was tried).
    pub async fn kill_all_background(&self) -> Result<Vec<ExecResult>> {
        background::control::kill_where(self.engine(), &self.id, |_| true).await
    }

    /// Kills the running background processes whose command contains
    /// `pattern` (a plain substring, case-sensitive: no regex, so a pattern
    /// taken from a command line means what it says); returns their results
    /// as [`Session::kill_all_background`] does.
    pub async fn kill_background_matching(&self, pattern: &str) -> Result<Vec<ExecResult>> {
        background::control::kill_where(self.engine(), &self.id, |command| {
            command.contains(pattern)
        })
        .await
    }
}

/// Every session that has objects, with its state where it has one.
pub(crate) async fn list(engine: &Engine) -> Result<Vec<SessionInfo>> {
    let store = &*engine.store;
    let mut opts = ListOptions {
        prefix: layout::SESSIONS_PREFIX.to_owned(),
        delimiter: Some('/'),
        ..ListOptions::default()
    };
    let mut ids = Vec::new();
    loop {
        let page = store
            .list(&opts)
            .await
            .map_err(|e| Error::store("list sessions", e))?;
        ids.extend(page.prefixes.iter().filter_map(|p| {
            let id = p.strip_prefix(layout::SESSIONS_PREFIX)?.strip_suffix('/')?;
            SessionId::new(id).ok()
        }));
        match page.next_page_token {
            Some(t) => opts.page_token = Some(t),
            None => break,
        }
    }
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        out.push(info_of(engine, &id).await?);
    }
    Ok(out)
}

/// One session's state. A corrupt state object is an error naming the session.
pub(crate) async fn info(engine: &Engine, id: &SessionId) -> Result<SessionInfo> {
    let info = info_of(engine, id).await?;
    if info.state.is_none() {
        let any = store::list_all(&*engine.store, &layout::session_prefix(id))
            .await
            .map_err(|e| Error::store(format!("list session {id}"), e))?;
        if any.is_empty() {
            return Err(Error::NoSuchSession(id.to_string()));
        }
    }
    Ok(info)
}

async fn info_of(engine: &Engine, id: &SessionId) -> Result<SessionInfo> {
    let state = match store::get_json::<SessionState>(
        &*engine.store,
        &layout::session_state(id),
        "SessionState",
    )
    .await
    {
        Ok(v) => Some(v.value),
        Err(JsonObjectError::Store(e)) if e.is_not_found() => None,
        Err(JsonObjectError::Store(e)) => {
            return Err(Error::store(format!("read session {id} state"), e));
        }
        Err(e @ JsonObjectError::Invalid { .. }) => {
            return Err(Error::store(
                format!("read session {id} state"),
                runbox_core::StoreError::Corrupt {
                    name: layout::session_state(id),
                    detail: crate::error_chain(&e),
                },
            ));
        }
    };
    let background_running = background::control::list(engine, id)
        .await?
        .iter()
        .filter(|e| e.state == BackgroundState::Running)
        .count();
    // Stored relative to the workspace; callers see the path commands see.
    let state = state.map(|mut s| {
        if !s.cwd.is_empty() {
            s.cwd = runbox_core::session_cwd::display(
                &s.cwd,
                std::path::Path::new(&engine.workspace_path),
                id.as_str(),
            );
        }
        s
    });
    let settings = engine.read_session_settings(id).await?.unwrap_or_else(|| {
        runbox_core::warm::SessionSettings::new(engine.config.limits.session_mode)
    });
    let warm_execution = match settings.mode {
        runbox_core::warm::SessionMode::Warm => engine.launcher.warm_execution(id).await,
        runbox_core::warm::SessionMode::Oneshot => None,
    };
    Ok(SessionInfo {
        id: id.clone(),
        state,
        background_running,
        settings,
        warm_execution,
    })
}

/// Creates a session unless it has a state: `Some(info)` when created,
/// `None` when it existed. `settings`: `None` for the configured default.
pub(crate) async fn create(
    engine: &Engine,
    id: &SessionId,
    settings: Option<runbox_core::warm::SessionSettings>,
) -> Result<Option<SessionInfo>> {
    let settings = settings.unwrap_or_else(|| {
        runbox_core::warm::SessionSettings::new(engine.config.limits.session_mode)
    });
    // The cwd is left empty: the executor starts an empty cwd in the
    // session's workspace, wherever the backend puts it.
    let now = Some(runbox_proto::now());
    let state = SessionState {
        session_id: id.to_string(),
        created_at: now,
        updated_at: now,
        ..Default::default()
    };
    match store::put_json(
        &*engine.store,
        &layout::session_state(id),
        &state,
        PutOptions::create(),
    )
    .await
    {
        Ok(_) => {
            engine.write_session_settings(id, &settings, false).await?;
            Ok(Some(SessionInfo {
                id: id.clone(),
                state: Some(state),
                background_running: 0,
                settings,
                warm_execution: None,
            }))
        }
        Err(e) if e.is_conflict() => Ok(None),
        Err(e) => Err(Error::store(format!("create session {id}"), e)),
    }
}

/// Creates the session if it does not exist yet; its info either way.
pub(crate) async fn ensure(engine: &Engine, id: &SessionId) -> Result<SessionInfo> {
    match create(engine, id, None).await? {
        Some(info) => Ok(info),
        None => info_of(engine, id).await,
    }
}

/// Destroys a session; see [`crate::Client::delete_session`].
pub(crate) async fn delete(engine: &Engine, id: &SessionId) -> Result<usize> {
    // Destroy means nothing of the session keeps running or stays behind:
    // its background processes are killed first, and their execution
    // objects (request, result, logs) go with the session.
    background::control::kill_where(engine, id, |_| true).await?;
    engine.launcher.close_warm(id).await;
    engine.forget_session_settings(id);
    let store = &*engine.store;
    let executions: Vec<_> = background::control::list(engine, id)
        .await?
        .into_iter()
        .map(|entry| entry.handle.execution_id)
        .collect();
    // The session's objects (markers among them) go first, then each
    // execution's request before its result: a background watch that
    // settles meanwhile then either still finds the result, or finds
    // neither marker nor request and writes nothing.
    let mut n = store::delete_prefix(store, &layout::session_prefix(id))
        .await
        .map_err(|e| Error::store(format!("delete session {id}"), e))?;
    for exec in &executions {
        for prefix in [
            layout::request(exec),
            layout::result(exec),
            layout::logs_prefix(exec),
        ] {
            n += store::delete_prefix(store, &prefix)
                .await
                .map_err(|e| Error::store(format!("delete session {id}"), e))?;
        }
    }
    if let WorkspacePlacement::Host(home) = &engine.placement {
        // Empty directories (a fresh workspace, `mkdir` in a command) are
        // not objects, so deleting the objects leaves them behind.
        let dir = home.join(layout::session_prefix(id));
        let existed = dir.exists();
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(Error::store(
                format!("delete session {id}"),
                runbox_core::StoreError::Io {
                    op: "remove directory",
                    name: layout::session_prefix(id),
                    source: e,
                },
            ));
        }
        if n == 0 && existed {
            return Ok(0);
        }
    }
    if n == 0 {
        return Err(Error::NoSuchSession(id.to_string()));
    }
    Ok(n)
}
