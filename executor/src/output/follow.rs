//! Live output of a command whose streams go to files rather than pipes:
//! a warm execution's commands, whose standard streams the persistent shell
//! redirects to files of their own (a pipe would be held open by any
//! background job the command leaves running, so its end could not mark
//! the command's end).
//!
//! A [`Follow`] watches both files (inotify) and hands each new piece,
//! up to the log cap, to a [`LiveSender`], exactly as a
//! [`super::Capture`] does with what it reads from a pipe. The writes
//! themselves wake it; nothing is polled. [`Follow::finish`] reads what
//! the last events did not cover, up to what the result keeps, so the
//! chunks hold the same bytes as the record.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use runbox_core::layout::Stream;
use std::sync::Arc;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;

use super::LiveSender;

/// Size of one read from a followed file.
const READ_BYTES: usize = 64 * 1024;

/// Following a command's stdout and stderr files while it runs.
pub struct Follow {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Tails>,
}

/// Both files, each with how far it was passed on.
struct Tails {
    tails: [Tail; 2],
    live: LiveSender,
}

struct Tail {
    stream: Stream,
    file: std::fs::File,
    /// Bytes passed on so far.
    sent: u64,
}

impl Tail {
    /// Passes on the bytes from `sent` up to `limit` (or the file's end).
    fn send_up_to(&mut self, limit: u64, live: &LiveSender) {
        if self.sent >= limit || self.file.seek(SeekFrom::Start(self.sent)).is_err() {
            return;
        }
        let mut buf = vec![0u8; READ_BYTES];
        while self.sent < limit {
            let want = usize::try_from(limit - self.sent)
                .unwrap_or(usize::MAX)
                .min(READ_BYTES);
            match self.file.read(&mut buf[..want]) {
                Ok(0) => return,
                Ok(n) => {
                    live.send(self.stream, &buf[..n]);
                    self.sent += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // The record holds the output anyway; the chunks stop here.
                Err(_) => return,
            }
        }
    }
}

impl Follow {
    /// Follows `files` (stdout, stderr; they must exist, empty) up to `cap`
    /// bytes each. Call before the command starts, within a Tokio runtime.
    pub fn start(files: [&Path; 2], cap: u64, live: LiveSender) -> Result<Self, FollowError> {
        let written = Arc::new(Notify::new());
        let wake = Arc::clone(&written);
        // Every event only says "look again": a stored permit coalesces a
        // burst of writes into one read.
        let mut watcher =
            notify::recommended_watcher(move |_event| wake.notify_one()).map_err(|source| {
                FollowError {
                    path: files[0].to_owned(),
                    source,
                }
            })?;
        let mut tails = Vec::with_capacity(2);
        for (stream, path) in [Stream::Stdout, Stream::Stderr].into_iter().zip(files) {
            // The watch before the first read: a write in between still
            // wakes the follower.
            watcher
                .watch(path, RecursiveMode::NonRecursive)
                .map_err(|source| FollowError {
                    path: path.to_owned(),
                    source,
                })?;
            let file = std::fs::File::open(path).map_err(|e| FollowError {
                path: path.to_owned(),
                source: e.into(),
            })?;
            tails.push(Tail {
                stream,
                file,
                sent: 0,
            });
        }
        let tails: [Tail; 2] = tails.try_into().map_err(|_| FollowError {
            path: files[0].to_owned(),
            source: notify::Error::generic("two streams expected"),
        })?;
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(follow(
            watcher,
            written,
            Tails { tails, live },
            cap,
            stopped,
        ));
        Ok(Self { stop, task })
    }

    /// Stops following and passes on what is left of each stream up to
    /// `kept` bytes (what the result keeps of it), then lets go of the
    /// sender. Call once the command has ended, before [`super::Live::finish`].
    pub async fn finish(self, kept: [u64; 2]) {
        let _ = self.stop.send(());
        let Ok(mut rest) = self.task.await else {
            return;
        };
        for (tail, limit) in rest.tails.iter_mut().zip(kept) {
            tail.send_up_to(limit, &rest.live);
        }
    }
}

/// Passes on each file's new bytes whenever a write is reported, until
/// `stopped`; the watcher lives as long as this does.
async fn follow(
    _watcher: RecommendedWatcher,
    written: Arc<Notify>,
    mut state: Tails,
    cap: u64,
    mut stopped: oneshot::Receiver<()>,
) -> Tails {
    loop {
        for tail in &mut state.tails {
            tail.send_up_to(cap, &state.live);
        }
        tokio::select! {
            biased;
            _ = &mut stopped => return state,
            () = written.notified() => {}
        }
    }
}

/// A stream's file could not be followed; the command runs anyway, with
/// its output in the result only.
#[derive(Debug, thiserror::Error)]
#[error("follow {}", path.display())]
pub struct FollowError {
    /// The file.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: notify::Error,
}

#[cfg(test)]
mod tests {
    use runbox_core::ExecutionId;
    use runbox_core::layout;
    use runbox_core::store::{LocalStore, Store};
    use std::io::Write;
    use std::time::Duration;

    use super::*;
    use crate::output::Live;

    /// Writes to the files become chunks of their stream, in order, cut
    /// at the cap; `finish` passes on what the events did not. (That a
    /// chunk arrives while the command runs is the integration tests'.)
    #[tokio::test]
    async fn writes_become_chunks_as_they_happen() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path().join("store")).unwrap();
        let out = dir.path().join("stdout");
        let err = dir.path().join("stderr");
        std::fs::write(&out, b"").unwrap();
        std::fs::write(&err, b"").unwrap();
        let id = ExecutionId::new("inst-0002").unwrap();
        let mut live = Live::new(&id);
        let follow = Follow::start([&out, &err], 8, live.sender().unwrap()).unwrap();
        let command = async {
            let mut f = std::fs::OpenOptions::new().append(true).open(&out).unwrap();
            f.write_all(b"one\n").unwrap();
            f.write_all(b"two\nthree\n").unwrap();
            std::fs::OpenOptions::new()
                .append(true)
                .open(&err)
                .unwrap()
                .write_all(b"e\n")
                .unwrap();
        };
        live.run_while(&store, command).await;
        follow.finish([8, 2]).await;
        tokio::time::timeout(Duration::from_secs(20), live.finish(&store))
            .await
            .unwrap();
        let mut all = Vec::new();
        let mut n = 1;
        while let Ok(obj) = store
            .get(&layout::output_chunk(&id, Stream::Stdout, n))
            .await
        {
            all.extend_from_slice(&obj.data);
            n += 1;
        }
        assert_eq!(all, b"one\ntwo\n", "cut at the cap");
        let err_chunk = store
            .get(&layout::output_chunk(&id, Stream::Stderr, 1))
            .await
            .unwrap();
        assert_eq!(&err_chunk.data[..], b"e\n");
    }
}
