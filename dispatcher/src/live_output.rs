//! A foreground command's output while it runs: [`crate::Exec::streaming`]
//! gives an [`OutputStream`] of [`OutputChunk`]s beside the result future.
//!
//! The request says `streamOutput`, so the executor writes what it captures
//! as chunk objects beside the result
//! ([`runbox_core::layout::output_chunk`]); their finalize events reach
//! this process through the notifier's [`OutputWatch`] (inotify on the
//! embedded backend, the bucket's notifications on gcp), and the follower
//! here reads each chunk once, by name. Nothing polls.
//!
//! What the stream promises, within what it delivers: per stream, chunks
//! come in order, each once, without gaps (numbers below an announced one
//! are read by name; duplicates and late events are dropped). Before the
//! result future resolves, every chunk written has been delivered (the
//! executor writes them all before the result, and the follower reads on
//! until one is missing), so the stream then ends. It is a preview: the
//! result's `stdout`/`stderr` (and logs) stay the record, and a chunk that
//! could not be written or read ends the preview early, not the command.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use runbox_core::layout::{self, Stream};
use runbox_core::{ExecutionId, Store};
use runbox_notifier::{OutputSignal, OutputWatch};
use tokio::sync::{mpsc, oneshot};

/// A piece of a running command's output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputChunk {
    /// Which stream it was written to.
    pub stream: Stream,
    /// Its number within its stream, from 1, without gaps.
    pub seq: u64,
    /// The bytes, exactly as written (not necessarily whole lines or
    /// whole UTF-8 characters).
    pub data: Bytes,
}

/// The chunks of one command's output as it runs; ends once the command
/// has ended and every chunk was delivered (or the preview stopped). A
/// [`futures::Stream`]; [`OutputStream::next`] reads it without one.
#[derive(Debug)]
pub struct OutputStream {
    rx: mpsc::UnboundedReceiver<OutputChunk>,
    waiting: Arc<AtomicUsize>,
}

impl OutputStream {
    /// The next chunk; `None` once the stream has ended.
    pub async fn next(&mut self) -> Option<OutputChunk> {
        let chunk = self.rx.recv().await;
        self.taken(chunk.as_ref());
        chunk
    }

    fn taken(&self, chunk: Option<&OutputChunk>) {
        if let Some(chunk) = chunk {
            self.waiting.fetch_sub(chunk.data.len(), Ordering::Relaxed);
        }
    }
}

impl futures::Stream for OutputStream {
    type Item = OutputChunk;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<OutputChunk>> {
        let polled = self.rx.poll_recv(cx);
        if let Poll::Ready(chunk) = &polled {
            self.taken(chunk.as_ref());
        }
        polled
    }
}

/// Most bytes delivered to an [`OutputStream`] and not taken by its reader
/// yet. The channel is unbounded so that a reader that awaits the result
/// first cannot hold up the command's completion; a reader slower than
/// the command's output would then hold all of it in memory, so past this
/// the preview stops (a gapless prefix of each stream stays delivered) and
/// the result tells the rest.
pub const MAX_UNREAD_BYTES: usize = 8 * 1024 * 1024;

/// Where a submission's chunks go (see [`MAX_UNREAD_BYTES`]).
#[derive(Clone, Debug)]
pub(crate) struct LiveTx {
    tx: mpsc::UnboundedSender<OutputChunk>,
    waiting: Arc<AtomicUsize>,
}

impl LiveTx {
    /// Hands `chunk` to the reader; `false` when the reader is gone or too
    /// far behind, which ends the preview.
    fn send(&self, chunk: OutputChunk) -> bool {
        let len = chunk.data.len();
        if self.waiting.fetch_add(len, Ordering::Relaxed) + len > MAX_UNREAD_BYTES {
            self.waiting.fetch_sub(len, Ordering::Relaxed);
            return false;
        }
        self.tx.send(chunk).is_ok()
    }
}

/// A new stream and the sender that feeds it.
pub(crate) fn channel() -> (LiveTx, OutputStream) {
    let (tx, rx) = mpsc::unbounded_channel();
    let waiting = Arc::new(AtomicUsize::new(0));
    (
        LiveTx {
            tx,
            waiting: Arc::clone(&waiting),
        },
        OutputStream { rx, waiting },
    )
}

/// Reads the chunks of one execution as their events arrive.
pub(crate) struct Follower {
    store: Arc<dyn Store>,
    id: ExecutionId,
    tx: LiveTx,
    /// The next number expected per stream: stdout, stderr.
    next: [u64; 2],
    /// The preview stopped (a chunk could not be read); the command goes on.
    stopped: bool,
}

impl Follower {
    pub(crate) fn new(store: Arc<dyn Store>, id: ExecutionId, tx: LiveTx) -> Self {
        Self {
            store,
            id,
            tx,
            next: [1, 1],
            stopped: false,
        }
    }

    /// Follows `watch` until `ended` resolves (the command's wait is over),
    /// then reads on to the last chunk. Also ends when the notifier stops:
    /// the wait reports that.
    pub(crate) async fn run(mut self, mut watch: OutputWatch, mut ended: oneshot::Receiver<()>) {
        loop {
            tokio::select! {
                biased;
                _ = &mut ended => break,
                signal = watch.next() => match signal {
                    Ok(OutputSignal::Chunk { stream, n }) => self.read_to(stream, Some(n)).await,
                    Ok(OutputSignal::Resync) => self.read_all().await,
                    Err(_) => break,
                },
            }
        }
        self.read_all().await;
    }

    /// Reads on in both streams until a chunk is missing.
    async fn read_all(&mut self) {
        self.read_to(Stream::Stdout, None).await;
        self.read_to(Stream::Stderr, None).await;
    }

    /// Delivers the chunks of `stream` from the next expected one up to
    /// `last` (all that exist when `None`). Chunk `k` existing means every
    /// chunk below it does, so a gap here is a lost object, which ends the
    /// preview rather than skipping bytes.
    async fn read_to(&mut self, stream: Stream, last: Option<u64>) {
        let i = match stream {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        };
        while !self.stopped && last.is_none_or(|last| self.next[i] <= last) {
            if self.tx.tx.is_closed() {
                // Nobody reads the stream any more: spare the reads.
                self.stopped = true;
                return;
            }
            let name = layout::output_chunk(&self.id, stream, self.next[i]);
            match self.store.get(&name).await {
                Ok(object) => {
                    let delivered = self.tx.send(OutputChunk {
                        stream,
                        seq: self.next[i],
                        data: object.data,
                    });
                    if !delivered {
                        tracing::debug!(execution = %self.id, "the output stream's reader is gone or far behind; the preview stops here");
                        self.stopped = true;
                        return;
                    }
                    self.next[i] += 1;
                }
                Err(e) if e.is_not_found() && last.is_none() => return,
                Err(e) => {
                    tracing::warn!(execution = %self.id, %name, error = %e, "live output chunk unreadable; the preview stops here");
                    self.stopped = true;
                }
            }
        }
    }
}
