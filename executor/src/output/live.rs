//! Live output: while a command with `streamOutput` runs, what its captures
//! keep is uploaded as numbered chunk objects,
//! `results/{execution}.chunk.stdout.000001`, `.000002`, … (and the same for
//! stderr), whose finalize events tell the caller that more output is there.
//!
//! - The captures hand over each piece they keep ([`LiveSender`]), so the
//!   chunks never hold more than `RUNBOX_LOG_CAP_BYTES` per stream, and no
//!   file or store is polled: a piece arriving wakes the uploader.
//! - The first piece after a quiet spell is uploaded at once (the first line
//!   shows as soon as it is written); while output keeps flowing, pieces are
//!   gathered for [`MIN_INTERVAL`] after the previous upload, or until
//!   [`CHUNK_BYTES`] wait, so a chatty command costs a few objects a second,
//!   not one per write.
//! - Chunk `n + 1` of a stream is written only after chunk `n` was (each
//!   create-only, so a retried write that had landed is not written twice):
//!   a reader that sees chunk `k` may read every chunk below `k` by name.
//!   An upload that keeps failing ends the live output; the result, which
//!   stays the record, is unaffected.
//! - [`Live::finish`] uploads the rest before the result is written, so
//!   once the result exists every chunk does.
//!
//! Nothing here depends on one command per process: a process running many
//! commands makes one [`Live`] per execution id.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::{Bytes, BytesMut};
use runbox_core::ExecutionId;
use runbox_core::layout::{self, Stream};
use runbox_core::store::{PutOptions, Store, StoreError};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Duration, Instant};

/// Shortest time between two uploads while output keeps flowing.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// Bytes waiting in one stream that are uploaded without waiting for
/// [`MIN_INTERVAL`].
pub const CHUNK_BYTES: usize = 64 * 1024;

/// Largest single chunk object: a burst is cut into chunks of at most this.
pub const MAX_CHUNK_BYTES: usize = 1024 * 1024;

/// Attempts per chunk before the live output gives up.
const ATTEMPTS: u32 = 3;

/// Most bytes handed over and not yet uploaded. A command that writes
/// faster than chunks can be stored would otherwise grow the executor's
/// memory with its output: past this the live output stops (what was
/// delivered stays a gapless prefix of each stream) and the result, which
/// holds everything, tells the rest.
pub const MAX_BACKLOG_BYTES: usize = 8 * 1024 * 1024;

/// Bytes between the captures and the store, shared by the senders and
/// the uploader.
#[derive(Debug, Default)]
struct Backlog {
    bytes: AtomicUsize,
    overflowed: AtomicBool,
}

/// The end a capture hands its kept bytes to.
#[derive(Clone, Debug)]
pub struct LiveSender {
    tx: mpsc::UnboundedSender<(Stream, Bytes)>,
    backlog: Arc<Backlog>,
}

impl LiveSender {
    /// Passes on `bytes` of `stream`; a no-op once the uploader is gone or
    /// has fallen [`MAX_BACKLOG_BYTES`] behind (for good: a later piece
    /// would leave a gap).
    pub(crate) fn send(&self, stream: Stream, bytes: &[u8]) {
        if self.backlog.overflowed.load(Ordering::Relaxed) {
            return;
        }
        let waiting = self.backlog.bytes.fetch_add(bytes.len(), Ordering::Relaxed) + bytes.len();
        if waiting > MAX_BACKLOG_BYTES {
            self.backlog.overflowed.store(true, Ordering::Relaxed);
            self.backlog.bytes.fetch_sub(bytes.len(), Ordering::Relaxed);
            return;
        }
        let _ = self.tx.send((stream, Bytes::copy_from_slice(bytes)));
    }
}

/// The live output of one execution: its pieces, its chunk numbers and how
/// its uploads went.
pub struct Live {
    id: ExecutionId,
    tx: Option<mpsc::UnboundedSender<(Stream, Bytes)>>,
    rx: mpsc::UnboundedReceiver<(Stream, Bytes)>,
    backlog: Arc<Backlog>,
    /// Bytes received and not uploaded yet: stdout, stderr.
    pending: [BytesMut; 2],
    /// The number of each stream's next chunk.
    next: [u64; 2],
    last_upload: Option<Instant>,
    /// Why the live output stopped, once it did.
    broken: Option<String>,
}

impl Live {
    /// The live output of execution `id`.
    pub fn new(id: &ExecutionId) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            id: id.clone(),
            tx: Some(tx),
            rx,
            backlog: Arc::default(),
            pending: [BytesMut::new(), BytesMut::new()],
            next: [1, 1],
            last_upload: None,
            broken: None,
        }
    }

    /// An end for a capture (see [`crate::output::Capture::start_live`]).
    pub fn sender(&self) -> Option<LiveSender> {
        self.tx.clone().map(|tx| LiveSender {
            tx,
            backlog: Arc::clone(&self.backlog),
        })
    }

    /// Runs `command` to its end while uploading chunks; returns what
    /// `command` returned. Both are polled in this task, so an upload in
    /// flight never delays the command's timeout or cancellation.
    pub async fn run_while<F: Future>(&mut self, store: &dyn Store, command: F) -> F::Output {
        let (stop, mut stopped) = oneshot::channel::<()>();
        let command = async move {
            let out = command.await;
            let _ = stop.send(());
            out
        };
        let stream = async {
            while self.broken.is_none() {
                tokio::select! {
                    biased;
                    _ = &mut stopped => return,
                    piece = self.rx.recv() => match piece {
                        Some(piece) => self.absorb(piece),
                        None => return,
                    },
                }
                // Gather what follows closely, unless a chunk's worth waits.
                if let Some(last) = self.last_upload {
                    let until = last + MIN_INTERVAL;
                    while !self.full() {
                        tokio::select! {
                            biased;
                            _ = &mut stopped => return,
                            () = tokio::time::sleep_until(until) => break,
                            piece = self.rx.recv() => match piece {
                                Some(piece) => self.absorb(piece),
                                None => break,
                            },
                        }
                    }
                }
                while let Ok(piece) = self.rx.try_recv() {
                    self.absorb(piece);
                }
                self.upload(store).await;
            }
        };
        let ((), out) = tokio::join!(stream, command);
        out
    }

    /// Uploads everything still waiting; call once every capture has
    /// finished (their senders are gone then), before the result is
    /// written. A failure is logged: the result holds the output anyway.
    pub async fn finish(mut self, store: &dyn Store) {
        self.tx = None;
        while let Some(piece) = self.rx.recv().await {
            self.absorb(piece);
        }
        self.upload(store).await;
        if let Some(reason) = &self.broken {
            tracing::warn!(execution = %self.id, %reason, "live output stopped early");
        } else if self.backlog.overflowed.load(Ordering::Relaxed) {
            tracing::debug!(execution = %self.id, "output outran its live upload; the result holds the rest");
        }
    }

    fn absorb(&mut self, (stream, bytes): (Stream, Bytes)) {
        if self.broken.is_none() {
            self.pending[index(stream)].extend_from_slice(&bytes);
        }
    }

    fn full(&self) -> bool {
        self.pending.iter().any(|p| p.len() >= CHUNK_BYTES)
    }

    /// Uploads each stream's waiting bytes as its next chunks, in order.
    async fn upload(&mut self, store: &dyn Store) {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let i = index(stream);
            while !self.pending[i].is_empty() && self.broken.is_none() {
                let n = self.pending[i].len().min(MAX_CHUNK_BYTES);
                let data = self.pending[i].split_to(n).freeze();
                let name = layout::output_chunk(&self.id, stream, self.next[i]);
                self.last_upload = Some(Instant::now());
                match put_chunk(store, &name, data).await {
                    Ok(()) => {
                        self.next[i] += 1;
                        self.backlog.bytes.fetch_sub(n, Ordering::Relaxed);
                    }
                    Err(e) => {
                        self.broken =
                            Some(format!("writing {name}: {}", runbox_core::error_chain(&e)));
                        self.pending = [BytesMut::new(), BytesMut::new()];
                    }
                }
            }
        }
    }
}

/// Writes one chunk, create-only, retrying a failure that may pass; a
/// conflict means an earlier attempt landed.
async fn put_chunk(store: &dyn Store, name: &str, data: Bytes) -> Result<(), StoreError> {
    let mut attempt = 1;
    loop {
        match store
            .put(name, data.clone(), PutOptions::create().volatile())
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if e.is_conflict() && attempt > 1 => return Ok(()),
            Err(e) if e.is_retryable() && attempt < ATTEMPTS => {
                tokio::time::sleep(MIN_INTERVAL * attempt).await;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

fn index(stream: Stream) -> usize {
    match stream {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    }
}

#[cfg(test)]
mod tests {
    use runbox_core::store::LocalStore;

    use super::*;

    async fn read_stream(store: &dyn Store, id: &ExecutionId, stream: Stream) -> (Vec<u8>, u64) {
        let mut out = Vec::new();
        let mut chunks = 0;
        while let Ok(obj) = store
            .get(&layout::output_chunk(id, stream, chunks + 1))
            .await
        {
            out.extend_from_slice(&obj.data);
            chunks += 1;
        }
        (out, chunks)
    }

    /// Pieces sent while the command runs and after it become chunks with
    /// numbers of their own per stream, bytes in order; a burst larger than
    /// a chunk is cut.
    #[tokio::test]
    async fn pieces_become_ordered_chunks_per_stream() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let id = ExecutionId::new("inst-0001").unwrap();
        let mut live = Live::new(&id);
        let tx = live.sender().unwrap();
        let big = vec![b'x'; MAX_CHUNK_BYTES + 10];
        let command = async {
            tx.send(Stream::Stdout, b"one\n");
            tx.send(Stream::Stderr, b"err\n");
            tokio::task::yield_now().await;
            tx.send(Stream::Stdout, b"two\n");
            7
        };
        assert_eq!(live.run_while(&store, command).await, 7);
        tx.send(Stream::Stdout, &big);
        drop(tx);
        tokio::time::timeout(Duration::from_secs(30), live.finish(&store))
            .await
            .unwrap();
        let (out, chunks) = read_stream(&store, &id, Stream::Stdout).await;
        assert_eq!(&out[..8], b"one\ntwo\n");
        assert_eq!(&out[8..], &big[..]);
        assert!(chunks >= 2, "a burst over the chunk size is cut: {chunks}");
        let (err, _) = read_stream(&store, &id, Stream::Stderr).await;
        assert_eq!(err, b"err\n");
    }
}
