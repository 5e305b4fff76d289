//! Background executions (`ExecRequest.background`): while the command runs,
//! its output is streamed to numbered log objects so a caller can follow it
//! long before the result exists.
//!
//! The command's stdout and stderr are captured into local files, exactly
//! as a foreground command's are ([`crate::output::Capture`]: at most
//! `RUNBOX_LOG_CAP_BYTES` per stream are kept, the rest counted and
//! dropped, so the chunks never hold more than that either). A [`Streamer`]
//! tails both files and uploads what is new as
//! `logs/{execution}/stdout.000001`, `.000002`, … (and the same for stderr):
//!
//! - a chunk is uploaded as soon as [`CHUNK_BYTES`] (64 KiB) are waiting, or
//!   when bytes are waiting and [`FLUSH_INTERVAL`] (2 s) passed since the
//!   last upload, so a quiet process's last line still shows within ~2 s;
//! - the files are checked every [`CHECK_INTERVAL`]. They are local files on
//!   the executor's own disk, so checking their size is a cheap `stat`, not
//!   a poll of the store;
//! - chunk `n + 1` is only written after chunk `n` was: a failed upload is
//!   retried at the next check with the same number, so a reader that reads
//!   chunks in order from an offset never skips a gap;
//! - the last chunks are uploaded by [`Streamer::finish`], which the executor
//!   calls before it writes the result: once `results/{id}.json` exists, every
//!   chunk exists too, and a follower can stop after one more read.
//!
//! The result of a background execution is an ordinary result (inline output
//! capped as usual, the total produced counted), except that the chunks are
//! its only log: no `logs/{execution}/stdout` copy of the same bytes is
//! written (unless chunks could not be uploaded, as a fallback). It never
//! saves the session's cwd or env (nor, where the workspace is
//! a copy, its files): a background process runs beside foreground
//! commands, and saving its (usually stale) state when it ends would
//! overwrite what they did meanwhile.

use std::future::Future;
use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use runbox_core::ExecutionId;
use runbox_core::layout::{self, Stream};
use runbox_core::store::{PutOptions, Store};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::oneshot;
use tokio::time::{Instant, MissedTickBehavior};

/// Bytes waiting in a stream that trigger an upload at once.
pub const CHUNK_BYTES: u64 = 64 * 1024;

/// Longest time bytes wait for an upload once the previous upload is this old.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(2);

/// How often the output files are checked for new bytes. Small against
/// [`FLUSH_INTERVAL`], so the 2 s promise holds within a quarter second, and
/// large enough that an idle process costs nothing noticeable.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// Largest single chunk: a burst of output is cut into chunks of at most
/// this, so the executor never holds more than this in memory per upload.
pub const MAX_CHUNK_BYTES: u64 = 4 * 1024 * 1024;

/// How often [`Streamer::finish`] tries an upload that keeps failing before
/// giving up (the bytes stay in the full log and the inline result).
const FINAL_ATTEMPTS: u32 = 3;

/// Tails a background command's stdout and stderr files into chunk objects.
pub struct Streamer {
    tails: [Tail; 2],
    /// Upload problems, reported in the result's message.
    notes: Vec<String>,
}

impl Streamer {
    /// A streamer for execution `id` whose command writes to these files.
    pub fn new(id: &ExecutionId, stdout: &Path, stderr: &Path) -> Self {
        Self {
            tails: [
                Tail::new(id, Stream::Stdout, stdout),
                Tail::new(id, Stream::Stderr, stderr),
            ],
            notes: Vec::new(),
        }
    }

    /// Runs `command` to its end while streaming its output; returns what
    /// `command` returned. Both run in this task, polled together, so an
    /// upload in flight never delays the command's timeout or cancellation.
    pub async fn run_while<F: Future>(&mut self, store: &dyn Store, command: F) -> F::Output {
        let (stop, stopped) = oneshot::channel::<()>();
        let command = async move {
            let out = command.await;
            // Dropping `stop` would do the same; sending says it on purpose.
            let _ = stop.send(());
            out
        };
        let ((), out) = tokio::join!(self.stream_until(store, stopped), command);
        out
    }

    /// Uploads everything not uploaded yet, whatever its size; call after
    /// the command and everything it started are gone, before the result is
    /// written. Returns notes for the result's message (empty when all went
    /// well).
    pub async fn finish(mut self, store: &dyn Store) -> Vec<String> {
        for tail in &mut self.tails {
            let mut attempt = 0;
            loop {
                match tail.pump(store, Flush::All).await {
                    Ok(()) => break,
                    Err(e) => {
                        attempt += 1;
                        if attempt >= FINAL_ATTEMPTS {
                            self.notes.push(format!(
                                "{} chunk {} could not be uploaded ({e}); the stream is complete in the result and its log only",
                                tail.stream.as_str(),
                                tail.next
                            ));
                            break;
                        }
                    }
                }
            }
        }
        self.notes
    }

    async fn stream_until(&mut self, store: &dyn Store, mut stopped: oneshot::Receiver<()>) {
        let mut check = tokio::time::interval(CHECK_INTERVAL);
        // After a slow upload, check once and carry on; a burst of catch-up
        // ticks would only re-check the same files.
        check.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                // Stop first: once the command ended, `finish` takes over.
                biased;
                _ = &mut stopped => return,
                _ = check.tick() => {
                    for tail in &mut self.tails {
                        if let Err(e) = tail.pump(store, Flush::Due).await {
                            // Retried at the next check with the same chunk
                            // number; the stream keeps its order.
                            tracing::debug!(
                                stream = tail.stream.as_str(),
                                chunk = tail.next,
                                error = %e,
                                "chunk upload failed; will retry"
                            );
                        }
                    }
                }
            }
        }
    }
}

/// Which waiting bytes to upload.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flush {
    /// Only when due: [`CHUNK_BYTES`] waiting, or [`FLUSH_INTERVAL`] passed.
    Due,
    /// Everything (the command has ended).
    All,
}

/// One stream's file and how much of it is uploaded.
struct Tail {
    id: ExecutionId,
    stream: Stream,
    file: PathBuf,
    /// Bytes of the file already in chunk objects.
    sent: u64,
    /// Number of the next chunk to write (from 1).
    next: u64,
    /// When the last chunk was written (or streaming began).
    last_upload: Instant,
}

impl Tail {
    fn new(id: &ExecutionId, stream: Stream, file: &Path) -> Self {
        Self {
            id: id.clone(),
            stream,
            file: file.to_owned(),
            sent: 0,
            next: 1,
            last_upload: Instant::now(),
        }
    }

    /// Uploads waiting bytes as chunks, as `flush` allows.
    async fn pump(&mut self, store: &dyn Store, flush: Flush) -> Result<(), String> {
        let size = tokio::fs::metadata(&self.file)
            .await
            .map_err(|e| format!("read {} size: {e}", self.stream.as_str()))?
            .len();
        while size > self.sent {
            let waiting = size - self.sent;
            let due = flush == Flush::All
                || waiting >= CHUNK_BYTES
                || self.last_upload.elapsed() >= FLUSH_INTERVAL;
            if !due {
                break;
            }
            let data = self.read(waiting.min(MAX_CHUNK_BYTES)).await?;
            let name = layout::log_chunk(&self.id, self.stream, self.next);
            // No precondition: this executor is the chunk's only writer, and
            // a retried upload of the same bytes must simply succeed.
            store
                .put(&name, data, PutOptions::default())
                .await
                .map_err(|e| format!("upload {name}: {}", crate::error_chain(&e)))?;
            self.sent += waiting.min(MAX_CHUNK_BYTES);
            self.next += 1;
            self.last_upload = Instant::now();
        }
        Ok(())
    }

    /// Reads `len` bytes of the file from the first byte not yet sent.
    async fn read(&self, len: u64) -> Result<Bytes, String> {
        let fail = |e: std::io::Error| format!("read captured {}: {e}", self.stream.as_str());
        let mut file = tokio::fs::File::open(&self.file).await.map_err(fail)?;
        file.seek(SeekFrom::Start(self.sent)).await.map_err(fail)?;
        let mut buf = vec![0; usize::try_from(len).unwrap_or(usize::MAX)];
        file.read_exact(&mut buf).await.map_err(fail)?;
        Ok(Bytes::from(buf))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Arc;

    use runbox_core::store::{
        ByteStream, ListOptions, ListPage, LocalStore, Object, ObjectMeta, Precondition,
        Result as StoreResult,
    };
    use std::pin::Pin;
    use tokio::sync::mpsc;

    use super::*;

    /// A local store that reports every object written, so a test can wait
    /// for an upload instead of sleeping. (Written out by hand: this crate
    /// does not depend on `async-trait`.)
    struct Reporting {
        inner: LocalStore,
        written: mpsc::UnboundedSender<String>,
    }

    type Fut<'a, T> = Pin<Box<dyn Future<Output = StoreResult<T>> + Send + 'a>>;

    impl Store for Reporting {
        fn describe(&self) -> String {
            self.inner.describe()
        }
        fn head<'a, 'b, 'c>(&'a self, name: &'b str) -> Fut<'c, ObjectMeta>
        where
            'a: 'c,
            'b: 'c,
        {
            self.inner.head(name)
        }
        fn get<'a, 'b, 'c>(&'a self, name: &'b str) -> Fut<'c, Object>
        where
            'a: 'c,
            'b: 'c,
        {
            self.inner.get(name)
        }
        fn get_stream<'a, 'b, 'c>(&'a self, name: &'b str) -> Fut<'c, (ObjectMeta, ByteStream)>
        where
            'a: 'c,
            'b: 'c,
        {
            self.inner.get_stream(name)
        }
        fn put<'a, 'b, 'c>(
            &'a self,
            name: &'b str,
            data: Bytes,
            opts: PutOptions,
        ) -> Fut<'c, ObjectMeta>
        where
            'a: 'c,
            'b: 'c,
        {
            Box::pin(async move {
                let meta = self.inner.put(name, data, opts).await?;
                let _ = self.written.send(name.to_owned());
                Ok(meta)
            })
        }
        fn put_stream<'a, 'b, 'c>(
            &'a self,
            name: &'b str,
            data: ByteStream,
            opts: PutOptions,
        ) -> Fut<'c, ObjectMeta>
        where
            'a: 'c,
            'b: 'c,
        {
            self.inner.put_stream(name, data, opts)
        }
        fn delete<'a, 'b, 'c>(&'a self, name: &'b str, precondition: Precondition) -> Fut<'c, ()>
        where
            'a: 'c,
            'b: 'c,
        {
            self.inner.delete(name, precondition)
        }
        fn list<'a, 'b, 'c>(&'a self, opts: &'b ListOptions) -> Fut<'c, ListPage>
        where
            'a: 'c,
            'b: 'c,
        {
            self.inner.list(opts)
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Arc<Reporting>,
        written: mpsc::UnboundedReceiver<String>,
        id: ExecutionId,
        stdout: std::fs::File,
        stderr: std::fs::File,
        streamer: Streamer,
    }

    fn fixture(id: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let (tx, written) = mpsc::unbounded_channel();
        let store = Arc::new(Reporting {
            inner: LocalStore::open(dir.path().join("store")).unwrap(),
            written: tx,
        });
        let id = ExecutionId::new(id).unwrap();
        let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
        let stdout = std::fs::File::create(&out).unwrap();
        let stderr = std::fs::File::create(&err).unwrap();
        let streamer = Streamer::new(&id, &out, &err);
        Fixture {
            _dir: dir,
            store,
            written,
            id,
            stdout,
            stderr,
            streamer,
        }
    }

    async fn chunks(store: &dyn Store, id: &ExecutionId, stream: Stream) -> Vec<Bytes> {
        let mut out = Vec::new();
        for n in 1.. {
            match store.get(&layout::log_chunk(id, stream, n)).await {
                Ok(o) => out.push(o.data),
                Err(e) if e.is_not_found() => break,
                Err(e) => panic!("{e}"),
            }
        }
        out
    }

    #[tokio::test]
    async fn chunks_follow_size_and_time_and_end_complete() {
        let mut f = fixture("bgtest-1");
        let store = &*f.store;
        let tail = &mut f.streamer.tails[0];

        // A few bytes right after an upload: not due yet.
        f.stdout.write_all(b"hello\n").unwrap();
        tail.pump(store, Flush::Due).await.unwrap();
        assert!(chunks(store, &f.id, Stream::Stdout).await.is_empty());
        // Once the last upload is FLUSH_INTERVAL old, they are.
        tail.last_upload = Instant::now()
            .checked_sub(FLUSH_INTERVAL)
            .expect("clock past 2 s");
        tail.pump(store, Flush::Due).await.unwrap();
        assert_eq!(chunks(store, &f.id, Stream::Stdout).await, vec!["hello\n"]);

        // 64 KiB waiting: due at once, although an upload just happened.
        f.stdout
            .write_all(&vec![b'x'; CHUNK_BYTES as usize])
            .unwrap();
        tail.pump(store, Flush::Due).await.unwrap();
        let got = chunks(store, &f.id, Stream::Stdout).await;
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].len(), CHUNK_BYTES as usize);

        // The rest goes out at the end whatever its size; stderr had nothing.
        f.stdout.write_all(b"bye\n").unwrap();
        assert!(f.streamer.finish(store).await.is_empty());
        let got = chunks(store, &f.id, Stream::Stdout).await;
        assert_eq!(got.len(), 3);
        assert_eq!(got[2], "bye\n");
        assert!(chunks(store, &f.id, Stream::Stderr).await.is_empty());
    }

    #[tokio::test]
    async fn bursts_are_cut_into_bounded_chunks_in_order() {
        let mut f = fixture("bgtest-2");
        let total = 2 * MAX_CHUNK_BYTES + 10;
        let data: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
        f.stderr.write_all(&data).unwrap();
        assert!(f.streamer.finish(&*f.store).await.is_empty());
        let got = chunks(&*f.store, &f.id, Stream::Stderr).await;
        let sizes: Vec<usize> = got.iter().map(Bytes::len).collect();
        let max = MAX_CHUNK_BYTES as usize;
        assert_eq!(sizes, vec![max, max, 10]);
        assert_eq!(got.concat(), data);
    }

    #[tokio::test]
    async fn output_streams_while_the_command_runs() {
        let mut f = fixture("bgtest-3");
        let first = layout::log_chunk(&f.id, Stream::Stdout, 1);
        let store = Arc::clone(&f.store);
        let mut stdout = f.stdout;
        let mut written = f.written;
        // The "command" writes 64 KiB and only ends once its first chunk is
        // in the store: it would never end if streaming waited for it.
        let command = async move {
            stdout.write_all(&vec![b'o'; CHUNK_BYTES as usize]).unwrap();
            while let Some(name) = written.recv().await {
                if name == first {
                    return 42;
                }
            }
            panic!("store dropped");
        };
        let out = tokio::time::timeout(
            Duration::from_secs(20),
            f.streamer.run_while(&*store, command),
        )
        .await
        .expect("the first chunk was uploaded while the command ran");
        assert_eq!(out, 42);
        assert!(f.streamer.finish(&*store).await.is_empty());
        assert_eq!(chunks(&*store, &f.id, Stream::Stdout).await.len(), 1);
    }
}
