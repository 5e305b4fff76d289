//! Standard input that streams into a running warm command (the request
//! says `stdinStream`; the frames are described in [`runbox_core::warm`]).
//!
//! The command's stdin is a FIFO in its command directory, made and held
//! through the directory's handle like its other files. The shell opens it
//! by name for the command; the executor never does: it reopens the FIFO
//! it made through its own path-only handle, so a name swapped by
//! something the session left running can make the command read elsewhere
//! (which [`super::CommandFiles::swapped`] then reports) but never makes
//! the executor write anywhere but into that FIFO.
//!
//! A frame is read from the connection only once the one before is in
//! the FIFO: a command that does not read its stdin fills the FIFO, then
//! the connection's buffers, then its writer waits. Nothing grows.
//!
//! Over Pub/Sub (Cloud Run) the frames are `stdin` messages, which may
//! come out of order or twice: they are put back in `seq` order, copies
//! (a `seq` already written or waiting) are acked and dropped, and at most
//! [`WINDOW`] frames ahead of the next one wait here; one further ahead is
//! left unacked, so Pub/Sub delivers it again after the ack deadline. A
//! command that does not read fills the FIFO, then this window and the
//! route's channel; the rest stays in the subscription (whose flow control
//! stops the pull at 50 outstanding messages) and the writer's publishes
//! go on: Pub/Sub is the buffer. A frame that never comes holds the input
//! open until the command ends or its timeout ends it.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};

use runbox_core::warm::wire;
use rustix::fs::{FileType, Mode, OFlags};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use super::pubsub::StdinMessage;
use crate::{Loaded, Rejection};

/// How many frames past the next one wait to be put in order.
const WINDOW: u64 = 16;

/// Where a streamed stdin's frames come from.
pub(super) enum Source<'a> {
    /// The delivery connection (the local launcher).
    Socket(&'a mut UnixStream),
    /// `stdin` messages of the commands topic (the Cloud Run launcher).
    Messages(mpsc::Receiver<StdinMessage>),
}

/// Whether the command's request asks for a streamed stdin.
pub(super) fn wants(loaded: &Result<Loaded, Rejection>) -> bool {
    matches!(loaded, Ok(loaded) if loaded.request.stdin_stream)
}

/// The `stdin` messages of command `id` when it streams its stdin over
/// Pub/Sub: routed from here on to the returned receiver.
pub(super) fn route(
    commands: Option<&super::pubsub::Commands>,
    id: &runbox_core::ExecutionId,
    loaded: &Result<Loaded, Rejection>,
    conn: Option<&super::Delivery>,
) -> Option<mpsc::Receiver<StdinMessage>> {
    let commands = commands?;
    let Ok(loaded) = loaded else {
        return None;
    };
    (loaded.request.stdin_stream && !matches!(conn, Some(super::Delivery::Socket(_))))
        .then(|| commands.stdin(id, &loaded.request.stdin_token_sha256))
}

/// The channel of a new warm execution's first command: the executor's
/// standard output, when the launcher made it a socket of this user (see
/// [`runbox_core::warm`]). Standard output then becomes `/dev/null`, so
/// the socket's only holder here is the returned stream, and its end is
/// the command's end of input.
pub(super) fn first_channel() -> Option<UnixStream> {
    let stdout = std::io::stdout();
    let fd = stdout.as_fd();
    let stat = rustix::fs::fstat(fd).ok()?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::Socket {
        return None;
    }
    let owned = fd.try_clone_to_owned().ok()?;
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = rustix::stdio::dup2_stdout(&null);
    }
    let stream = std::os::unix::net::UnixStream::from(owned);
    stream.set_nonblocking(true).ok()?;
    let stream = UnixStream::from_std(stream).ok()?;
    let me = rustix::process::geteuid().as_raw();
    (stream.peer_cred().ok()?.uid() == me).then_some(stream)
}

/// Runs `run` (the command in the shell) with `feed`'s frames going into
/// the command's stdin beside it, and returns what `run` gives. The
/// feeding stops when `run` ends: the command is gone, and what it did
/// not read no longer matters.
pub(super) async fn beside<T>(
    run: impl std::future::Future<Output = T>,
    feed: Option<(&File, Source<'_>)>,
) -> T {
    let Some((fifo, conn)) = feed else {
        return run.await;
    };
    let feeding = feed_fifo(fifo, conn);
    tokio::pin!(run, feeding);
    let mut fed = false;
    loop {
        tokio::select! {
            out = &mut run => return out,
            () = &mut feeding, if !fed => fed = true,
        }
    }
}

/// Why feeding stopped, for the log.
enum Stop {
    /// `eof`, or the connection ended: the command's stdin is closed.
    End,
    /// A line that is not a frame: stdin is closed, nothing more is read.
    BadFrame(String),
    /// The FIFO could not be opened or written (the command closed its
    /// stdin, or ended).
    Fifo(std::io::Error),
}

/// Copies frames from `source` into the FIFO `fifo` until the input ends;
/// dropping the writer then is what gives the command end of file.
async fn feed_fifo(fifo: &File, source: Source<'_>) {
    let copied = match source {
        Source::Socket(conn) => copy_frames(fifo, conn).await,
        Source::Messages(rx) => copy_messages(fifo, rx).await,
    };
    let stop = match copied {
        Ok(()) => Stop::End,
        Err(stop) => stop,
    };
    match stop {
        Stop::End => tracing::debug!("streamed standard input ended"),
        Stop::BadFrame(line) => {
            tracing::warn!(%line, "streamed standard input closed on a line that is not a frame");
        }
        Stop::Fifo(e) => {
            tracing::debug!(error = %e, "the command no longer takes its standard input")
        }
    }
}

async fn copy_frames(fifo: &File, conn: &mut UnixStream) -> Result<(), Stop> {
    let writer = open_writer(fifo).await.map_err(Stop::Fifo)?;
    let mut writer = tokio::net::unix::pipe::Sender::from_owned_fd(writer).map_err(Stop::Fifo)?;
    let mut reader = BufReader::new(conn);
    let mut line = Vec::new();
    let mut data = Vec::new();
    loop {
        line.clear();
        let limit = wire::MAX_LINE as u64 + 1;
        match (&mut reader).take(limit).read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return Ok(()),
            Ok(_) => {}
        }
        let Some(text) = line
            .strip_suffix(b"\n")
            .and_then(|l| std::str::from_utf8(l).ok())
        else {
            return Err(Stop::BadFrame(String::from_utf8_lossy(&line).into_owned()));
        };
        let len = match frame(text) {
            Some(Frame::Data(len)) => len,
            Some(Frame::Eof) => return Ok(()),
            None => return Err(Stop::BadFrame(text.to_owned())),
        };
        data.resize(len, 0);
        if reader.read_exact(&mut data).await.is_err() {
            return Ok(());
        }
        writer.write_all(&data).await.map_err(Stop::Fifo)?;
    }
}

/// Copies `stdin` messages into the FIFO in `seq` order from 0 until
/// the one that says `end` (see the module docs).
async fn copy_messages(fifo: &File, mut rx: mpsc::Receiver<StdinMessage>) -> Result<(), Stop> {
    let writer = open_writer(fifo).await.map_err(Stop::Fifo)?;
    let mut writer = tokio::net::unix::pipe::Sender::from_owned_fd(writer).map_err(Stop::Fifo)?;
    let mut order: Reorder<StdinMessage> = Reorder::default();
    loop {
        while let Some(frame) = order.pop() {
            writer.write_all(frame.data()).await.map_err(Stop::Fifo)?;
            if frame.end {
                return Ok(());
            }
        }
        let Some(frame) = rx.recv().await else {
            return Ok(());
        };
        match order.offer(frame.seq) {
            Offer::Take => {
                frame.ack().await;
                order.insert(frame);
            }
            Offer::Copy => frame.ack().await,
            // Unacked: delivered again later.
            Offer::TooFar => drop(frame),
        }
    }
}

/// What to do with a frame of a given `seq`.
#[derive(Debug, PartialEq, Eq)]
enum Offer {
    /// Within the window and new: it waits for its turn.
    Take,
    /// Written or waiting already.
    Copy,
    /// More than [`WINDOW`] past the next one.
    TooFar,
}

/// The frames waiting to be written in `seq` order.
struct Reorder<T> {
    next: u64,
    waiting: BTreeMap<u64, T>,
}

impl<T> Default for Reorder<T> {
    fn default() -> Self {
        Self {
            next: 0,
            waiting: BTreeMap::new(),
        }
    }
}

impl<T> Reorder<T> {
    fn offer(&self, seq: u64) -> Offer {
        if seq < self.next || self.waiting.contains_key(&seq) {
            Offer::Copy
        } else if seq - self.next >= WINDOW {
            Offer::TooFar
        } else {
            Offer::Take
        }
    }

    /// Keeps a frame [`Reorder::offer`] said to take.
    fn insert_at(&mut self, seq: u64, frame: T) {
        self.waiting.insert(seq, frame);
    }

    /// The next frame in order, when it is here.
    fn pop(&mut self) -> Option<T> {
        let frame = self.waiting.remove(&self.next)?;
        self.next += 1;
        Some(frame)
    }
}

impl Reorder<StdinMessage> {
    fn insert(&mut self, frame: StdinMessage) {
        let seq = frame.seq;
        self.insert_at(seq, frame);
    }
}

/// One frame header.
#[derive(Debug, PartialEq, Eq)]
enum Frame {
    /// `data N`: N bytes follow.
    Data(usize),
    /// `eof`.
    Eof,
}

/// Parses a frame header; `None` for anything else, including a size of
/// 0 or above [`wire::MAX_FRAME`].
fn frame(line: &str) -> Option<Frame> {
    if line == wire::EOF {
        return Some(Frame::Eof);
    }
    let (verb, len) = line.split_once(' ')?;
    if verb != wire::DATA || !len.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let len: usize = len.parse().ok()?;
    (1..=wire::MAX_FRAME)
        .contains(&len)
        .then_some(Frame::Data(len))
}

/// Opens the FIFO `fifo` (a path-only handle) for writing, which waits
/// until the shell has opened it for reading: only then does the
/// command's end of file depend on this writer alone. The open runs on a
/// blocking thread; when this future is dropped before it returns (the
/// command ended without opening its stdin), a reader opened here ends
/// the wait, so no thread is left behind.
async fn open_writer(fifo: &File) -> std::io::Result<OwnedFd> {
    // The thread's own handle, so the descriptor it opens through cannot
    // be closed and reused under it.
    let held = fifo.try_clone()?;
    let (keep_tx, keep_rx) = std::sync::mpsc::channel::<OwnedFd>();
    let unblock = Unblock {
        fifo: fifo.try_clone()?,
        keep: keep_tx,
    };
    let opened = tokio::task::spawn_blocking(move || {
        let opened = rustix::fs::open(
            crate::scratch::held_path(&held),
            OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::empty(),
        );
        drop(keep_rx);
        opened
    })
    .await
    .map_err(std::io::Error::other)?;
    drop(unblock);
    Ok(opened?)
}

/// Ends a writer's open that is still waiting for a reader: opens one
/// (which never waits) and hands it to the waiting thread, which closes it
/// once its open has returned.
struct Unblock {
    fifo: File,
    keep: std::sync::mpsc::Sender<OwnedFd>,
}

impl Drop for Unblock {
    fn drop(&mut self) {
        if let Ok(reader) = rustix::fs::open(
            crate::scratch::held_path(&self.fifo),
            OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            // Refused once the thread has returned: the reader is closed
            // at once then.
            let _ = self.keep.send(reader);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_headers_are_strict() {
        assert_eq!(frame("eof"), Some(Frame::Eof));
        assert_eq!(frame("data 1"), Some(Frame::Data(1)));
        assert_eq!(
            frame(&format!("data {}", wire::MAX_FRAME)),
            Some(Frame::Data(wire::MAX_FRAME))
        );
        for bad in [
            "data 0",
            "data",
            "data ",
            "data +5",
            "data -1",
            "data 1 2",
            "DATA 5",
            "eof ",
            "run x",
            &format!("data {}", wire::MAX_FRAME + 1),
            "data 99999999999999999999999",
        ] {
            assert_eq!(frame(bad), None, "{bad:?}");
        }
    }

    /// A scratch directory with the command's `stdin` FIFO in it, made
    /// the way the executor makes it.
    fn scratch_fifo() -> (tempfile::TempDir, File) {
        let dir = tempfile::tempdir().unwrap();
        let handle = directory(&dir);
        let fifo = crate::scratch::create_fifo(&handle, "stdin").unwrap();
        (dir, fifo)
    }

    /// A handle on `dir`, as scratch directories are held.
    fn directory(dir: &tempfile::TempDir) -> OwnedFd {
        rustix::fs::open(
            dir.path(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn frames_reach_the_fifo_and_eof_closes_it() {
        let (dir, fifo) = scratch_fifo();
        let (mut ours, mut theirs) = UnixStream::pair().unwrap();
        let path = dir.path().join("stdin");
        let reader = tokio::task::spawn_blocking(move || std::fs::read(path).unwrap());
        ours.write_all(b"data 3\nabcdata 2\nde").await.unwrap();
        ours.write_all(b"eof\n").await.unwrap();
        feed_fifo(&fifo, Source::Socket(&mut theirs)).await;
        assert_eq!(reader.await.unwrap(), b"abcde");
    }

    #[tokio::test]
    async fn a_bad_frame_closes_stdin_without_writing_it() {
        let (dir, fifo) = scratch_fifo();
        let (mut ours, mut theirs) = UnixStream::pair().unwrap();
        let path = dir.path().join("stdin");
        let reader = tokio::task::spawn_blocking(move || std::fs::read(path).unwrap());
        ours.write_all(b"data 2\nokdata 999999999\nxx")
            .await
            .unwrap();
        feed_fifo(&fifo, Source::Socket(&mut theirs)).await;
        assert_eq!(reader.await.unwrap(), b"ok");
    }

    #[tokio::test]
    async fn a_fifo_nobody_opens_does_not_hold_the_feed_once_dropped() {
        let (_dir, fifo) = scratch_fifo();
        let (_ours, mut theirs) = UnixStream::pair().unwrap();
        let run = async { 7 };
        // The run ends first; the writer's open, still waiting for a
        // reader, is ended by the drop rather than left blocked.
        let out = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            beside(run, Some((&fifo, Source::Socket(&mut theirs)))),
        )
        .await
        .unwrap();
        assert_eq!(out, 7);
        drop(fifo);
    }

    #[test]
    fn frames_come_out_in_order_once_each() {
        let mut order = Reorder::default();
        let mut out = Vec::new();
        // Out of order, twice, and one too far ahead.
        for seq in [2, 0, 2, 0, WINDOW + 1, 1, 3, 1] {
            match order.offer(seq) {
                Offer::Take => order.insert_at(seq, seq),
                Offer::Copy => assert!(seq < 4, "{seq} dropped as a copy"),
                Offer::TooFar => assert_eq!(seq, WINDOW + 1),
            }
            while let Some(frame) = order.pop() {
                out.push(frame);
            }
        }
        assert_eq!(out, [0, 1, 2, 3]);
        assert_eq!(order.offer(2), Offer::Copy);
        assert_eq!(order.offer(4), Offer::Take);
        assert_eq!(order.offer(4 + WINDOW), Offer::TooFar);
    }

    #[test]
    fn a_name_taken_already_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let handle = directory(&dir);
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("stdin")).unwrap();
        assert!(crate::scratch::create_fifo(&handle, "stdin").is_err());
        std::fs::write(dir.path().join("other"), b"").unwrap();
        assert!(crate::scratch::create_fifo(&handle, "other").is_err());
    }
}
