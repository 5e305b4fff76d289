//! `runbox sessions ...`: create, list, show, close and remove sessions.
//!
//! With `--json`, `list` prints an array of session objects and `show` one
//! such object, the same fields either way: `sessionId`, `cwd`, `env`,
//! `unsetEnv`, `execCount`, `lastExecutionId`, `createdAt`, `updatedAt`
//! (those of its `SessionState`; `null`, empty or 0 before its first
//! command has completed), `backgroundRunning`, `mode` (`oneshot` or
//! `warm`), `idleTimeoutMs` and `warmExecution` (the first execution of its
//! running warm execution, or `null`).

use std::process::ExitCode;

use clap::Subcommand;
use runbox_dispatcher::{Client, Error, SessionInfo, SessionMode, SessionSettings};

use crate::stdout::{Stdout, note};
use crate::timestamp;

/// Session operations.
#[derive(Subcommand)]
pub enum SessionsCommand {
    /// Create a session (fails if it exists). Its mode is `RUNBOX_SESSION_MODE`'s
    /// (default oneshot) unless `--warm` is given.
    Create {
        /// The session id.
        id: String,
        /// Warm mode: one execution keeps a live bash for the session's
        /// commands (functions, aliases and background processes persist).
        #[arg(long)]
        warm: bool,
        /// Oneshot mode: one execution per command.
        #[arg(long, conflicts_with = "warm")]
        oneshot: bool,
        /// How long a warm execution waits for the next command before it
        /// saves and exits (e.g. `90s`, `5m`; default 5m).
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        idle_timeout: Option<std::time::Duration>,
    },
    /// List sessions.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one session's state.
    Show {
        /// The session id.
        id: String,
        /// Print JSON (the fields of `sessions list --json`).
        #[arg(long)]
        json: bool,
    },
    /// End a session's warm execution and kill its background processes;
    /// its state and files stay.
    Close {
        /// The session id.
        id: String,
    },
    /// Destroy a session: kill its background processes, delete all its objects.
    Rm {
        /// The session id.
        id: String,
    },
}

impl SessionsCommand {
    /// Whether `--json` was given.
    pub fn json(&self) -> bool {
        matches!(
            self,
            SessionsCommand::List { json: true } | SessionsCommand::Show { json: true, .. }
        )
    }
}

/// Runs one `sessions` subcommand.
pub async fn run(client: &Client, command: SessionsCommand) -> Result<ExitCode, Error> {
    let mut out = Stdout::new();
    match command {
        SessionsCommand::Create {
            id,
            warm,
            oneshot,
            idle_timeout,
        } => {
            let mode = match (warm, oneshot) {
                (true, _) => SessionMode::Warm,
                (_, true) => SessionMode::Oneshot,
                _ => client.config().limits.session_mode,
            };
            let mut settings = SessionSettings::new(mode);
            if let Some(idle) = idle_timeout {
                settings = settings
                    .with_idle_timeout(idle)
                    .map_err(Error::InvalidSessionSettings)?;
            }
            let info = client.create_session_with(&id, settings).await?;
            note!(
                "created session {} ({})",
                info.id,
                describe_mode(&info.settings)
            );
        }
        SessionsCommand::List { json } => {
            let sessions = client.list_sessions().await?;
            if json {
                let list: Vec<_> = sessions.iter().map(session_json).collect();
                out.line(format_args!("{}", serde_json::Value::Array(list)))?;
            } else if sessions.is_empty() {
                note!("no sessions in {}", client.store().describe());
            } else {
                out.line(format_args!(
                    "{:<24} {:>8} {:>6} {:>4}  {:<24} CWD",
                    "SESSION", "COMMANDS", "ENV", "BG", "LAST USED"
                ))?;
                for s in &sessions {
                    let (count, env, used, cwd) = match &s.state {
                        Some(st) => (
                            st.exec_count.to_string(),
                            st.env.len().to_string(),
                            format_time(st.updated_at),
                            st.cwd.clone(),
                        ),
                        None => ("0".into(), "0".into(), "-".into(), "-".into()),
                    };
                    out.line(format_args!(
                        "{:<24} {count:>8} {env:>6} {:>4}  {used:<24} {cwd}",
                        s.id, s.background_running
                    ))?;
                }
            }
        }
        SessionsCommand::Show { id, json } => {
            let info = client.session_info(&id).await?;
            match (&info.state, json) {
                (_, true) => out.line(format_args!("{}", session_json(&info)))?,
                (None, false) => {
                    out.line(format_args!("session {id}: no command has completed yet"))?;
                    out.line(format_args!("mode:      {}", describe_mode(&info.settings)))?;
                    out.line(format_args!("warm:      {}", describe_warm(&info)))?;
                }
                (Some(st), false) => {
                    out.line(format_args!("session:   {id}"))?;
                    out.line(format_args!("mode:      {}", describe_mode(&info.settings)))?;
                    out.line(format_args!("warm:      {}", describe_warm(&info)))?;
                    out.line(format_args!("cwd:       {}", st.cwd))?;
                    out.line(format_args!("commands:  {}", st.exec_count))?;
                    out.line(format_args!("last:      {}", st.last_execution_id))?;
                    out.line(format_args!("created:   {}", format_time(st.created_at)))?;
                    out.line(format_args!("last used: {}", format_time(st.updated_at)))?;
                    out.line(format_args!(
                        "background: {} running",
                        info.background_running
                    ))?;
                    out.line(format_args!("env:       {} exported", st.env.len()))?;
                    for (k, v) in &st.env {
                        out.line(format_args!("  {k}={v}"))?;
                    }
                    if !st.unset_env.is_empty() {
                        out.line(format_args!("unset:     {}", st.unset_env.join(" ")))?;
                    }
                }
            }
        }
        SessionsCommand::Close { id } => {
            // Closing is idempotent in the library; a name with nothing
            // behind it is more likely a typo, as for `show` and `rm`.
            client.session_info(&id).await?;
            let killed = client.close_session(&id).await?;
            note!(
                "closed session {id} ({} background process(es) killed)",
                killed.len()
            );
        }
        SessionsCommand::Rm { id } => {
            let n = client.delete_session(&id).await?;
            note!("removed session {id} ({n} objects)");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One session as `list --json` and `show --json` print it.
fn session_json(info: &SessionInfo) -> serde_json::Value {
    let state = info.state.as_ref();
    let text = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    serde_json::json!({
        "sessionId": info.id.as_str(),
        "cwd": state.and_then(|s| text(&s.cwd)),
        "env": state.map(|s| s.env.clone()).unwrap_or_default(),
        "unsetEnv": state.map(|s| s.unset_env.clone()).unwrap_or_default(),
        "execCount": state.map_or(0, |s| s.exec_count),
        "lastExecutionId": state.and_then(|s| text(&s.last_execution_id)),
        "createdAt": state.and_then(|s| timestamp::format_proto(s.created_at)),
        "updatedAt": state.and_then(|s| timestamp::format_proto(s.updated_at)),
        "backgroundRunning": info.background_running,
        "mode": info.settings.mode.as_str(),
        "idleTimeoutMs": info.settings.idle_timeout_ms,
        "warmExecution": info.warm_execution,
    })
}

/// `warm (idle timeout 5m)` or `oneshot`.
fn describe_mode(settings: &SessionSettings) -> String {
    match settings.mode {
        SessionMode::Warm => format!(
            "warm (idle timeout {})",
            humantime::format_duration(settings.idle_timeout())
        ),
        SessionMode::Oneshot => "oneshot".to_owned(),
    }
}

/// Whether a warm execution runs now.
fn describe_warm(info: &SessionInfo) -> String {
    match (&info.warm_execution, info.settings.mode) {
        (Some(first), _) => format!("running (started by execution {first})"),
        (None, SessionMode::Warm) => "not running".to_owned(),
        (None, SessionMode::Oneshot) => "-".to_owned(),
    }
}

fn format_time(ts: Option<runbox_proto::Timestamp>) -> String {
    timestamp::format_proto(ts).unwrap_or_else(|| "-".to_owned())
}
