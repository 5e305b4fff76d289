//! `runbox sessions ...`: list, show, close and remove sessions.

use std::process::ExitCode;

use clap::Subcommand;
use runbox_dispatcher::{Client, Error};

use crate::stdout::Stdout;

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
        /// Print the SessionState as JSON.
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

/// Runs one `sessions` subcommand.
pub async fn run(client: &Client, command: SessionsCommand) -> Result<ExitCode, Error> {
    let mut out = Stdout::new();
    match command {
        SessionsCommand::List { json } => {
            let sessions = client.list_sessions().await?;
            if json {
                let list: Vec<_> = sessions
                    .iter()
                    .map(|s| {
                        serde_json::json!({
                            "sessionId": s.id.as_str(),
                            "state": s.state,
                            "backgroundRunning": s.background_running,
                        })
                    })
                    .collect();
                out.line(format_args!("{}", serde_json::Value::Array(list)))?;
            } else if sessions.is_empty() {
                eprintln!("no sessions in {}", client.store().describe());
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
                (Some(state), true) => {
                    out.line(format_args!(
                        "{}",
                        serde_json::to_string_pretty(state).unwrap_or_default()
                    ))?;
                }
                (None, true) => out.line(format_args!("null"))?,
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
            let killed = client.close_session(&id).await?;
            eprintln!(
                "closed session {id} ({} background process(es) killed)",
                killed.len()
            );
        }
        SessionsCommand::Rm { id } => {
            let n = client.delete_session(&id).await?;
            eprintln!("removed session {id} ({n} objects)");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn format_time(ts: Option<runbox_proto::Timestamp>) -> String {
    ts.and_then(|t| std::time::SystemTime::try_from(t).ok())
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_else(|| "-".to_owned())
}
