//! Capturing a command's output and turning it into the result's inline
//! text, flags and, where the inline text is not the exact stream, a log
//! object.
//!
//! Each stream reaches the executor through a pipe; a [`Capture`] copies it
//! into a local file while the command runs, keeping at most the log cap
//! (`RUNBOX_LOG_CAP_BYTES`) and counting, then dropping, everything after
//! it. So a command that writes without end (`cat /dev/zero`) fills neither
//! the executor's disk nor the store, and still ends on time: reading on
//! past the cap keeps the writer from blocking on a full pipe, and the
//! count says how much it produced.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use runbox_core::ExecutionId;
use runbox_core::layout::{self, Stream};
use runbox_core::store::{PutOptions, Store, StoreError};
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::task::JoinHandle;

pub mod follow;
pub mod live;

pub use follow::{Follow, FollowError};
pub use live::{Live, LiveSender};

/// Size of one read from a capture pipe (the default capacity of a Linux
/// pipe, so one read usually empties it).
const READ_BYTES: usize = 64 * 1024;

/// One stream being captured: a task reading its pipe into a file.
pub struct Capture {
    stream: Stream,
    counts: Arc<Counts>,
    task: JoinHandle<Option<std::io::Error>>,
}

/// What a capture saw, shared between its task and [`Capture::finish`] so
/// the counts survive a capture that had to be abandoned.
#[derive(Default)]
struct Counts {
    total: AtomicU64,
    kept: AtomicU64,
}

/// How a stream's capture went.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Produced {
    /// Every byte the command wrote to the stream.
    pub total: u64,
    /// The bytes kept in the capture file: the first `min(total, cap)`,
    /// unless writing the file failed.
    pub kept: u64,
    /// Why the capture is incomplete beyond the cap (the file could not be
    /// written, the pipe failed, or it stayed open after the command's
    /// processes were gone); `None` when it is complete.
    pub problem: Option<String>,
}

impl Produced {
    /// Whether bytes were dropped: fewer kept than produced.
    pub fn dropped(&self) -> bool {
        self.total > self.kept
    }
}

impl Capture {
    /// A capture of `stream` into `file` (created or emptied), keeping at
    /// most `cap` bytes. Returns it and the pipe's writing end, to hand to
    /// the command as its stdout or stderr. Call within a Tokio runtime.
    pub fn start(stream: Stream, file: &Path, cap: u64) -> Result<(Self, Stdio), CaptureError> {
        Self::start_live(stream, file, cap, None)
    }

    /// [`Capture::start`], also handing every kept piece to `live` as it
    /// is read (the live output of a command run with `streamOutput`).
    pub fn start_live(
        stream: Stream,
        file: &Path,
        cap: u64,
        live: Option<LiveSender>,
    ) -> Result<(Self, Stdio), CaptureError> {
        let fail = |source| CaptureError { stream, source };
        let file = std::fs::File::create(file).map_err(fail)?;
        // Close-on-exec: the command gets the writing end through its
        // stdout/stderr only, and no other child of the executor inherits
        // either end (which would keep the pipe from ever ending).
        let (reader, writer) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| fail(e.into()))?;
        let reader = pipe::Receiver::from_owned_fd(reader).map_err(fail)?;
        let counts = Arc::new(Counts::default());
        let task = tokio::spawn(pump(
            reader,
            file,
            cap,
            Arc::clone(&counts),
            live.map(|tx| (stream, tx)),
        ));
        Ok((
            Self {
                stream,
                counts,
                task,
            },
            Stdio::from(writer),
        ))
    }

    /// Waits until every writer has closed the pipe, at most `bound`, and
    /// says what was produced. Call once the command and everything it
    /// started are gone (the group kill and the subreaper sweep), so the
    /// pipe ends at once; the bound only covers a descriptor passed to a
    /// process outside the command's tree, and then the capture is
    /// abandoned rather than waited for.
    pub async fn finish(mut self, bound: Duration) -> Produced {
        let problem = match tokio::time::timeout(bound, &mut self.task).await {
            Ok(Ok(None)) => None,
            Ok(Ok(Some(e))) => Some(format!("capture of {} failed: {e}", self.stream.as_str())),
            Ok(Err(e)) => Some(format!("capture of {} failed: {e}", self.stream.as_str())),
            Err(_) => {
                // Dropping the reading end makes further writes fail with
                // EPIPE; whatever holds it learns that the output is gone.
                self.task.abort();
                Some(format!(
                    "{} was still open {:?} after the command's processes ended; output after that was not captured",
                    self.stream.as_str(),
                    bound
                ))
            }
        };
        Produced {
            total: self.counts.total.load(Ordering::Acquire),
            kept: self.counts.kept.load(Ordering::Acquire),
            problem,
        }
    }
}

/// Reads the pipe to its end: the first `cap` bytes go to `file`, the rest
/// is only counted. Returns the first error that stopped the keeping (or
/// the reading).
async fn pump(
    mut reader: pipe::Receiver,
    mut file: std::fs::File,
    cap: u64,
    counts: Arc<Counts>,
    live: Option<(Stream, LiveSender)>,
) -> Option<std::io::Error> {
    let mut buf = vec![0u8; READ_BYTES];
    let mut kept = 0u64;
    let mut failed = None;
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Some(e),
        };
        counts.total.fetch_add(n as u64, Ordering::AcqRel);
        let keep = usize::try_from(cap.saturating_sub(kept))
            .unwrap_or(usize::MAX)
            .min(n);
        if keep == 0 || failed.is_some() {
            continue;
        }
        // Written in place rather than on a blocking thread: a local file
        // takes at most the cap this way, into the page cache, and its size
        // is then exactly what was kept, which the background streamer
        // reads as "ready to upload".
        match file.write_all(&buf[..keep]) {
            Ok(()) => {
                kept += keep as u64;
                counts.kept.store(kept, Ordering::Release);
                // Only what is kept goes live, so the chunks respect the
                // log cap exactly as the record does.
                if let Some((stream, tx)) = &live {
                    tx.send(*stream, &buf[..keep]);
                }
            }
            // Keep reading: the command must not block on a full pipe
            // because the executor's disk is.
            Err(e) => failed = Some(e),
        }
    }
    failed
}

/// A stream's capture could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("capture {}", stream.as_str())]
pub struct CaptureError {
    /// Which stream.
    pub stream: Stream,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

/// One stream as the result reports it.
#[derive(Debug, Default)]
pub struct Captured {
    /// Inline text (at most the cap, lossy where not UTF-8).
    pub text: String,
    /// The inline text is not the whole stream (longer than the inline
    /// cap, or bytes were dropped at the log cap).
    pub truncated: bool,
    /// The inline part was not valid UTF-8.
    pub lossy: bool,
    /// The log object holding the kept bytes, when one was written.
    pub log: String,
    /// Total bytes produced, kept or not.
    pub bytes: u64,
}

/// Reads up to `cap` bytes of the captured file for the inline text and,
/// when more was kept than that or it is not valid UTF-8 and `upload_log`
/// says so, uploads the file whole to `logs/{execution}/{stream}`.
/// `produced` is what the capture counted.
pub async fn collect(
    store: &dyn Store,
    id: &ExecutionId,
    stream: Stream,
    file: &Path,
    cap: u64,
    produced: &Produced,
    upload_log: bool,
) -> Result<Captured, CollectError> {
    use std::io::Read;
    let mut head = Vec::with_capacity(cap.min(produced.kept) as usize);
    std::fs::File::open(file)
        .and_then(|f| f.take(cap).read_to_end(&mut head))
        .map_err(|source| CollectError::Read { stream, source })?;
    let inline = head.len() as u64;
    let truncated = produced.total > inline;
    let (text, lossy) = to_text(&head, truncated);
    let mut captured = Captured {
        text,
        truncated,
        lossy,
        log: String::new(),
        bytes: produced.total,
    };
    if upload_log && (produced.kept > inline || lossy) {
        let name = layout::log(id, stream);
        let reader = tokio::fs::File::open(file)
            .await
            .map_err(|source| CollectError::Read { stream, source })?;
        store
            .put_stream(&name, Box::pin(reader), PutOptions::default())
            .await
            .map_err(|source| CollectError::Upload { stream, source })?;
        captured.log = name;
    }
    Ok(captured)
}

/// Decodes the inline bytes. A multi-byte character cut by the cap is not
/// invalid data, so it is dropped rather than flagged.
fn to_text(head: &[u8], cut: bool) -> (String, bool) {
    match std::str::from_utf8(head) {
        Ok(s) => (s.to_owned(), false),
        Err(e) if cut && e.error_len().is_none() => {
            let valid = &head[..e.valid_up_to()];
            (String::from_utf8_lossy(valid).into_owned(), false)
        }
        Err(_) => (String::from_utf8_lossy(head).into_owned(), true),
    }
}

/// A stream could not be collected.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// The local capture file could not be read.
    #[error("read captured {}", stream.as_str())]
    Read {
        /// Which stream.
        stream: Stream,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The log object could not be written.
    #[error("upload {} log", stream.as_str())]
    Upload {
        /// Which stream.
        stream: Stream,
        /// The cause.
        #[source]
        source: StoreError,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_decoding_flags_only_real_damage() {
        assert_eq!(to_text(b"abc", false), ("abc".into(), false));
        // "é" is C3 A9; cut after C3 by the cap: dropped, not lossy.
        assert_eq!(to_text(b"ab\xC3", true), ("ab".into(), false));
        // The same bytes at the real end of the stream are damage.
        assert_eq!(to_text(b"ab\xC3", false), ("ab\u{FFFD}".into(), true));
        assert!(to_text(b"\xFF\x00", false).1);
    }

    /// A child writing far past the cap: the file holds exactly the cap,
    /// the count holds everything, and the capture ends with the writer.
    #[tokio::test]
    async fn keeps_the_cap_and_counts_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let (capture, stdio) = Capture::start(Stream::Stdout, &path, 10_000).unwrap();
        let status = tokio::process::Command::new("head")
            .args(["-c", "1000000", "/dev/zero"])
            .stdout(stdio)
            .status()
            .await
            .unwrap();
        assert!(status.success());
        let produced = tokio::time::timeout(
            Duration::from_secs(30),
            capture.finish(Duration::from_secs(20)),
        )
        .await
        .unwrap();
        assert_eq!(
            produced,
            Produced {
                total: 1_000_000,
                kept: 10_000,
                problem: None
            }
        );
        assert!(produced.dropped());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 10_000);
    }

    /// A writer that keeps the pipe open past the bound is abandoned, not
    /// waited for, and the counts so far are still reported.
    #[tokio::test]
    async fn a_pipe_held_open_is_abandoned_after_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let (capture, stdio) = Capture::start(Stream::Stderr, &path, 1024).unwrap();
        let mut child = tokio::process::Command::new("sh")
            .args(["-c", "echo hi; exec sleep 60"])
            .stdout(stdio)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let produced = tokio::time::timeout(
            Duration::from_secs(30),
            capture.finish(Duration::from_millis(200)),
        )
        .await
        .unwrap();
        child.kill().await.unwrap();
        assert!(
            produced
                .problem
                .as_deref()
                .is_some_and(|p| p.contains("still open")),
            "{produced:?}"
        );
        // "hi\n" is there unless the bound passed before the shell wrote
        // it; either way what was kept was counted.
        assert!(produced.kept <= 3 && produced.total == produced.kept);
    }
}
