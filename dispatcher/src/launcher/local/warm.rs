//! The dispatcher's side of a local warm execution's channel (the lines
//! are described in [`runbox_core::warm`]): where the socket is, delivering
//! a command, asking whether one runs, closing it.
//!
//! Sockets live in a directory only the dispatcher's user can enter: on
//! the embedded backend under the store's own `.runbox/` directory, which
//! the workspace namespace hides from commands; with the gcp backend in a
//! per-user directory of the temporary directory. The executor accepts
//! connections from its own user only and takes nothing but execution ids
//! on them; it runs an id only if its request object names its session.

use std::path::{Path, PathBuf};
use std::time::Duration;

use runbox_core::config::BackendConfig;
use runbox_core::warm::{WARM_IDLE_MS_ENV, WARM_SESSION_ENV, WARM_SOCKET_ENV, wire};
use runbox_core::{Config, ExecutionId, SessionId};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::launcher::{Ended, LaunchError, WarmLaunch};
use crate::stdin_stream::{self, StdinFeed};

/// The longest socket path Linux accepts is 107 bytes.
const MAX_SOCKET_PATH: usize = 107;

/// How long a warm execution may take to answer `ping` or `close`.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// The directory of the warm sockets for this configuration.
pub(super) fn socket_dir(config: &Config) -> PathBuf {
    match &config.backend {
        BackendConfig::Local(embedded) => embedded.home.join(".runbox/warm"),
        BackendConfig::Gcp(gcp) => std::env::temp_dir()
            .join(format!(
                "runbox-warm-{}",
                rustix::process::geteuid().as_raw()
            ))
            .join(&gcp.bucket),
    }
}

/// The socket of `session`'s warm execution: `{dir}/{session}`, or a
/// hash of the session id where that is too long; `None` when even that
/// is.
pub(super) fn socket_path(dir: &Path, session: &SessionId) -> Option<PathBuf> {
    let plain = dir.join(session.as_str());
    if plain.as_os_str().len() <= MAX_SOCKET_PATH {
        return Some(plain);
    }
    let hashed = dir.join(format!("h{:016x}", fnv1a(session.as_str().as_bytes())));
    (hashed.as_os_str().len() <= MAX_SOCKET_PATH).then_some(hashed)
}

/// The settings that make an executor warm (given in its configuration).
pub(super) fn executor_settings(warm: &WarmLaunch, socket: &Path) -> [(String, String); 3] {
    [
        (
            WARM_SOCKET_ENV.to_owned(),
            socket.to_string_lossy().into_owned(),
        ),
        (WARM_SESSION_ENV.to_owned(), warm.session.to_string()),
        (
            WARM_IDLE_MS_ENV.to_owned(),
            warm.idle.as_millis().to_string(),
        ),
    ]
}

/// A command the running warm execution took.
pub(super) struct Delivered {
    /// The executor's process.
    pub(super) pid: Option<u32>,
    /// Set once the executor is done with the command or gone.
    pub(super) ended: watch::Receiver<Option<Ended>>,
}

/// Hands `id` to the session's running warm execution. `None` when none
/// took it (none runs, or it ended before starting the command): the
/// caller starts a new one. A streamed `stdin` is taken once the command
/// has started, and goes to it on this connection.
pub(super) async fn deliver(
    socket: &Path,
    id: &ExecutionId,
    stop: &CancellationToken,
    stdin: &mut Option<StdinFeed>,
) -> Result<Option<Delivered>, LaunchError> {
    let Ok(mut conn) = UnixStream::connect(socket).await else {
        return Ok(None);
    };
    let pid = conn
        .peer_cred()
        .ok()
        .and_then(|c| c.pid())
        .and_then(|p| u32::try_from(p).ok());
    if conn
        .write_all(format!("{} {id}\n", wire::RUN).as_bytes())
        .await
        .is_err()
    {
        return Ok(None);
    }
    let (read, _write) = conn.into_split();
    let mut lines = BufReader::new(read.take(4 * wire::MAX_LINE as u64)).lines();
    // The answer comes when the command starts, which waits for the one
    // the execution runs now (another process's, at most).
    let answer = tokio::select! {
        line = lines.next_line() => line.ok().flatten(),
        () = stop.cancelled() => return Err(LaunchError::Closed),
    };
    match answer.as_deref() {
        Some(wire::OK) => {}
        Some(other) if other.starts_with(wire::NO) => {
            return Err(LaunchError::Spawn {
                id: id.clone(),
                retryable: false,
                source: format!("the warm execution refused it: {other}").into(),
            });
        }
        // It ended before taking the command.
        _ => return Ok(None),
    }
    let (tx, ended) = watch::channel(None);
    let id = id.clone();
    // The frames go on the write side while the executor's last line is
    // awaited on the read side.
    let (stdin_ended, _keep) = match stdin.take() {
        Some(feed) => {
            let ended = feed.ended();
            tokio::spawn(stdin_stream::pump(feed, _write));
            (Some(ended), None)
        }
        None => (None, Some(_write)),
    };
    tokio::spawn(async move {
        let _keep = _keep;
        let last = lines.next_line().await.ok().flatten();
        if let Some(stdin_ended) = stdin_ended {
            stdin_ended.cancel();
        }
        let ended = match last.as_deref() {
            Some(wire::DONE) => Ended {
                succeeded: true,
                message: format!("the warm execution finished execution {id}"),
            },
            _ => Ended {
                succeeded: false,
                message: format!("the warm execution ended while running execution {id}"),
            },
        };
        let _ = tx.send(Some(ended));
    });
    Ok(Some(Delivered { pid, ended }))
}

/// The first execution of the warm execution listening on `socket`.
pub(super) async fn ping(socket: &Path) -> Option<String> {
    let answer = ask(socket, wire::PING).await?;
    answer
        .strip_prefix(wire::WARM)
        .map(|rest| rest.trim().to_owned())
}

/// How long closing may take: the command it runs is killed first.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(30);

/// Asks the warm execution on `socket` to end and waits until it has
/// (its connection closes then); whether it took the request.
pub(super) async fn close(socket: &Path) -> bool {
    let exchange = async {
        let mut conn = UnixStream::connect(socket).await.ok()?;
        conn.write_all(format!("{}\n", wire::CLOSE).as_bytes())
            .await
            .ok()?;
        let mut lines = BufReader::new(conn.take(wire::MAX_LINE as u64)).lines();
        let answer = lines.next_line().await.ok().flatten()?;
        // Then end of stream, once everything has ended.
        while let Ok(Some(_)) = lines.next_line().await {}
        Some(answer == wire::OK)
    };
    tokio::time::timeout(CLOSE_TIMEOUT, exchange)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// Sends one line and reads the one-line answer.
async fn ask(socket: &Path, line: &str) -> Option<String> {
    let exchange = async {
        let mut conn = UnixStream::connect(socket).await.ok()?;
        conn.write_all(format!("{line}\n").as_bytes()).await.ok()?;
        let mut lines = BufReader::new(conn.take(wire::MAX_LINE as u64)).lines();
        lines.next_line().await.ok().flatten()
    };
    tokio::time::timeout(ANSWER_TIMEOUT, exchange)
        .await
        .ok()
        .flatten()
}

/// FNV-1a, 64 bits: a stable short name for a long session id.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_paths_fit_the_kernel_limit() {
        let session = SessionId::new("s".repeat(64)).unwrap();
        let short = socket_path(Path::new("/h/.runbox/warm"), &session).unwrap();
        assert_eq!(short, Path::new("/h/.runbox/warm").join("s".repeat(64)));
        let long_dir = PathBuf::from(format!("/{}", "d".repeat(60)));
        let hashed = socket_path(&long_dir, &session).unwrap();
        assert!(hashed.as_os_str().len() <= MAX_SOCKET_PATH, "{hashed:?}");
        assert_ne!(
            hashed,
            socket_path(&long_dir, &SessionId::new("t".repeat(64)).unwrap()).unwrap()
        );
        assert_eq!(
            socket_path(Path::new(&format!("/{}", "d".repeat(100))), &session),
            None
        );
    }
}
