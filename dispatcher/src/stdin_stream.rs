//! Standard input written while the command runs:
//! [`crate::Exec::stdin_stream`] gives a [`StdinWriter`] beside the exec.
//!
//! In a warm session on the local launcher the bytes reach the running
//! command as they are written: the launcher sends them as frames on the
//! connection it holds to the warm executor for this command (see
//! [`runbox_core::warm`]), and the executor writes them into the
//! command's stdin. Every stage is bounded: the writer's channel holds a
//! few frames, then the connection's buffers, then the command's pipe; a
//! command that does not read makes [`StdinWriter::write`] wait, and
//! nothing grows.
//!
//! On the Cloud Run launcher the bytes travel as messages on the commands
//! topic ([`runbox_core::warm::commands`]), numbered and carrying a token
//! drawn for the command, whose digest is in its request; the launcher
//! publishes each once the previous one is accepted by Pub/Sub. Pub/Sub
//! is then the buffer: the executor holds a bounded window of frames and
//! leaves the rest unacknowledged until the command reads.
//!
//! Anywhere else (oneshot sessions, per-execution credentials, a local
//! session whose socket path would be too long) the command starts, as
//! before, with its whole stdin: what is written until
//! [`StdinWriter::close`] is collected first (at most
//! `RUNBOX_STDIN_CAP_BYTES`), then the command runs. A caller that waits
//! for output before closing would wait forever there, so such callers
//! check [`crate::SessionInfo`]'s mode first.

use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use runbox_core::warm::wire;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How many frames (of at most [`wire::MAX_FRAME`] bytes) wait between a
/// [`StdinWriter`] and the connection to the command.
pub const CHANNEL_FRAMES: usize = 4;

/// Writing to a command's streamed stdin failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StdinError {
    /// The command has ended (or its exec was dropped, or never took a
    /// streamed stdin): it reads nothing more.
    #[error("the command has ended; its standard input takes no more")]
    Ended,
}

/// Writes to the standard input of a running command (see the module
/// docs). Dropping it closes the command's stdin, as [`StdinWriter::close`]
/// does.
#[derive(Debug)]
pub struct StdinWriter {
    tx: mpsc::Sender<Bytes>,
    ended: CancellationToken,
}

impl StdinWriter {
    /// Sends `data` to the command's stdin; returns once it is on its way
    /// (in the bounded channel), which waits while the command does not
    /// read. Fails with [`StdinError::Ended`] once the command has ended;
    /// a write that is waiting then fails too, rather than wait forever.
    pub async fn write(&self, data: impl Into<Bytes>) -> Result<(), StdinError> {
        let mut data: Bytes = data.into();
        while !data.is_empty() {
            let frame = data.split_to(data.len().min(wire::MAX_FRAME));
            if self.ended.is_cancelled() {
                return Err(StdinError::Ended);
            }
            tokio::select! {
                biased;
                () = self.ended.cancelled() => return Err(StdinError::Ended),
                sent = self.tx.send(frame) => sent.map_err(|_| StdinError::Ended)?,
            }
        }
        Ok(())
    }

    /// Closes the command's stdin (it reads end of file after what was
    /// written). Fails with [`StdinError::Ended`] when the command had
    /// already ended; the input is closed either way.
    pub async fn close(self) -> Result<(), StdinError> {
        if self.ended.is_cancelled() || self.tx.is_closed() {
            return Err(StdinError::Ended);
        }
        Ok(())
    }

    /// Whether the command has ended, so writes fail.
    pub fn is_ended(&self) -> bool {
        self.ended.is_cancelled() || self.tx.is_closed()
    }
}

/// The receiving side of a [`StdinWriter`], handed to the launcher that
/// carries it to the command ([`crate::Launcher::launch_warm_stdin`]).
#[derive(Debug)]
pub struct StdinFeed {
    rx: mpsc::Receiver<Bytes>,
    ended: CancellationToken,
    token: Option<String>,
}

impl StdinFeed {
    /// The next piece of input (at most [`wire::MAX_FRAME`] bytes); `None`
    /// once the writer closed it.
    pub async fn next(&mut self) -> Option<Bytes> {
        self.rx.recv().await
    }

    /// Makes the writer's writes fail: the command no longer reads.
    pub fn end(&self) {
        self.ended.cancel();
    }

    /// A token cancelled once the command has ended.
    pub fn ended(&self) -> CancellationToken {
        self.ended.clone()
    }

    /// The command's stdin token (see [`runbox_core::warm::commands`]),
    /// once [`StdinFeed::seal`] has drawn it.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Draws the command's stdin token; its digest, for the request.
    pub(crate) fn seal(&mut self) -> std::io::Result<String> {
        let token = runbox_core::warm::new_stdin_token()?;
        let digest = runbox_core::warm::stdin_token_digest(&token);
        self.token = Some(token);
        Ok(digest)
    }
}

/// A new writer and the feed it writes to.
pub(crate) fn channel() -> (StdinWriter, StdinFeed) {
    let (tx, rx) = mpsc::channel(CHANNEL_FRAMES);
    let ended = CancellationToken::new();
    (
        StdinWriter {
            tx,
            ended: ended.clone(),
        },
        StdinFeed {
            rx,
            ended,
            token: None,
        },
    )
}

/// A feed waiting in a submission (which is cloned) until its one run
/// takes it.
#[derive(Clone, Debug)]
pub(crate) struct FeedSlot(Arc<Mutex<Option<StdinFeed>>>);

impl FeedSlot {
    pub(crate) fn new(feed: StdinFeed) -> Self {
        Self(Arc::new(Mutex::new(Some(feed))))
    }

    /// The feed, the first time.
    pub(crate) fn take(&self) -> Option<StdinFeed> {
        // A poisoned lock only means a panic elsewhere held it.
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// What a feed held when closed, for a command that starts with its whole
/// stdin: at most `cap` bytes, else `None` (too large). Ends early, with
/// `None` too, when `stop` is cancelled.
pub(crate) async fn collect(
    feed: &mut StdinFeed,
    cap: u64,
    stop: &CancellationToken,
) -> Result<Bytes, Collect> {
    let mut all = BytesMut::new();
    loop {
        let next = tokio::select! {
            next = feed.next() => next,
            () = stop.cancelled() => return Err(Collect::Cancelled),
        };
        let Some(piece) = next else {
            return Ok(all.freeze());
        };
        if (all.len() + piece.len()) as u64 > cap {
            feed.end();
            return Err(Collect::TooLarge);
        }
        all.extend_from_slice(&piece);
    }
}

/// Why [`collect`] gave up.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Collect {
    /// More than the cap was written.
    TooLarge,
    /// The command was cancelled first.
    Cancelled,
}

/// Sends `feed` as frames on `conn` until the writer closes it (then
/// `eof`), the command ends, or the connection fails (the command is
/// gone: its writer is told).
pub async fn pump(mut feed: StdinFeed, mut conn: impl AsyncWrite + Unpin) {
    let ended = feed.ended();
    loop {
        let next = tokio::select! {
            biased;
            () = ended.cancelled() => return,
            next = feed.next() => next,
        };
        let sent = match next {
            // A frame the executor does not take (the command ended and
            // the connection stays open until its result is written) is
            // abandoned at the end.
            Some(data) => tokio::select! {
                biased;
                () = ended.cancelled() => return,
                sent = send_frame(&mut conn, &data) => sent,
            },
            None => {
                let _ = conn.write_all(format!("{}\n", wire::EOF).as_bytes()).await;
                return;
            }
        };
        if sent.is_err() {
            feed.end();
            return;
        }
    }
}

async fn send_frame(conn: &mut (impl AsyncWrite + Unpin), data: &[u8]) -> std::io::Result<()> {
    conn.write_all(format!("{} {}\n", wire::DATA, data.len()).as_bytes())
        .await?;
    conn.write_all(data).await?;
    conn.flush().await
}

/// Follows the executor's lines for one command on a channel that carries
/// its streamed stdin: once `ok` comes, `write` pumps the feed; at the
/// next line (`done`) or the channel's end the command is over, and the
/// feed's writer is told.
pub async fn follow(
    mut lines: impl AsyncBufRead + Unpin,
    write: impl AsyncWrite + Unpin + Send + 'static,
    feed: StdinFeed,
) {
    let ended = feed.ended();
    let mut line = String::new();
    let started =
        matches!(lines.read_line(&mut line).await, Ok(n) if n > 0) && line.trim_end() == wire::OK;
    if started {
        tokio::spawn(pump(feed, write));
        line.clear();
        let _ = lines.read_line(&mut line).await;
    }
    ended.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn writes_become_bounded_frames_then_eof() {
        let (writer, feed) = channel();
        let (ours, mut theirs) = tokio::io::duplex(1 << 20);
        let pumping = tokio::spawn(pump(feed, ours));
        let big = vec![b'x'; wire::MAX_FRAME + 10];
        writer.write(b"hi".to_vec()).await.unwrap();
        writer.write(big).await.unwrap();
        writer.close().await.unwrap();
        pumping.await.unwrap();
        let mut got = Vec::new();
        theirs.read_to_end(&mut got).await.unwrap();
        let mut want = b"data 2\nhi".to_vec();
        want.extend_from_slice(format!("data {}\n", wire::MAX_FRAME).as_bytes());
        want.extend(std::iter::repeat_n(b'x', wire::MAX_FRAME));
        want.extend_from_slice(b"data 10\nxxxxxxxxxxeof\n");
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn a_writer_waits_while_nothing_reads_and_fails_once_ended() {
        let (writer, feed) = channel();
        let ended = feed.ended();
        // Nothing takes from the feed: the channel fills, then writes wait.
        for _ in 0..CHANNEL_FRAMES {
            writer.write(vec![0u8; wire::MAX_FRAME]).await.unwrap();
        }
        {
            let waiting = writer.write(vec![0u8; 1]);
            tokio::pin!(waiting);
            assert!(futures::poll!(&mut waiting).is_pending());
            ended.cancel();
            assert_eq!(waiting.await, Err(StdinError::Ended));
        }
        assert_eq!(writer.write(b"x".to_vec()).await, Err(StdinError::Ended));
        assert_eq!(writer.close().await, Err(StdinError::Ended));
        drop(feed);
    }

    #[tokio::test]
    async fn collecting_keeps_to_the_cap() {
        let (writer, mut feed) = channel();
        let stop = CancellationToken::new();
        let collecting = tokio::spawn(async move { collect(&mut feed, 4, &stop).await });
        writer.write(b"abc".to_vec()).await.unwrap();
        writer.close().await.unwrap();
        assert_eq!(collecting.await.unwrap(), Ok(Bytes::from_static(b"abc")));

        let (writer, mut feed) = channel();
        let stop = CancellationToken::new();
        let collecting = tokio::spawn(async move { collect(&mut feed, 4, &stop).await });
        writer.write(b"abcde".to_vec()).await.unwrap();
        assert_eq!(collecting.await.unwrap(), Err(Collect::TooLarge));
        assert_eq!(writer.write(b"x".to_vec()).await, Err(StdinError::Ended));
    }
}
