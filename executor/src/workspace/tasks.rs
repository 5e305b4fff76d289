//! Running the work of a restore or save: several transfers at once, and
//! file system calls off the async threads.

use std::future::Future;
use std::io;
use std::path::PathBuf;

use futures::stream::{self, StreamExt};

use super::{Result, WorkspaceError};

/// Runs `f` on each item, at most `limit` at once; stops at the first error
/// (dropping the others, which cancels their transfers).
pub(super) async fn bounded<T, R, F, Fut>(items: Vec<T>, limit: usize, f: F) -> Result<Vec<R>>
where
    F: FnMut(T) -> Fut,
    Fut: Future<Output = Result<R>>,
{
    let mut out = Vec::with_capacity(items.len());
    let mut running = stream::iter(items).map(f).buffer_unordered(limit.max(1));
    while let Some(r) = running.next().await {
        out.push(r?);
    }
    Ok(out)
}

/// Runs file system work on the blocking pool.
pub(super) async fn blocking<T, F>(f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(WorkspaceError::Io {
            op: "run file system task",
            path: PathBuf::new(),
            source: io::Error::other(e),
        }),
    }
}
