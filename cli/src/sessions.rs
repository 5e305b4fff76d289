//! `runbox sessions ...`: list, show, close and remove sessions.
//!
//! With `--json`, `list` prints an array of session objects and `show` one
//! such object, the same fields either way: `sessionId`, `cwd`, `env`,
//! `unsetEnv`, `execCount`, `lastExecutionId`, `createdAt`, `updatedAt`
//! (those of its `SessionState`; `null`, empty or 0 before its first
//! command has completed) and `backgroundRunning`.

use std::process::ExitCode;

use clap::Subcommand;
use runbox_dispatcher::{Client, Error, SessionInfo};

use crate::stdout::{Stdout, note};
use crate::timestamp;

/// Session operations.
#[derive(Subcommand)]
pub enum SessionsCommand {
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
    /// Kill a session's background processes; its state and files stay.
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
                }
                (Some(st), false) => {
                    out.line(format_args!("session:   {id}"))?;
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
    })
}

fn format_time(ts: Option<runbox_proto::Timestamp>) -> String {
    timestamp::format_proto(ts).unwrap_or_else(|| "-".to_owned())
}
