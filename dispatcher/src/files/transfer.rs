//! Moving whole files as byte streams: uploads under a size cap, and
//! downloads that are never held in memory.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use runbox_core::store::{ByteStream, PutOptions};
use tokio::io::{AsyncRead, ReadBuf};

use super::{Download, FileError, FileInfo, UploadOptions, Workspace, info};

impl Workspace {
    pub(crate) async fn upload(
        &self,
        input: &str,
        data: ByteStream,
        opts: UploadOptions,
    ) -> Result<FileInfo, FileError> {
        let path = self.resolve(input, true).await?;
        let too_large = || FileError::UploadTooLarge {
            path: path.to_string(),
            limit: opts.max_bytes,
        };
        if opts.size_hint.is_some_and(|n| n > opts.max_bytes) {
            return Err(too_large());
        }
        self.check_writable(&path).await?;
        let exceeded = Arc::new(AtomicBool::new(false));
        let capped = Capped {
            inner: data,
            remaining: opts.max_bytes,
            exceeded: exceeded.clone(),
        };
        // The store writes nothing visible until the stream ends cleanly, so
        // the error Capped raises past the cap aborts the whole upload.
        match self
            .store
            .put_stream(&self.object(&path), Box::pin(capped), PutOptions::default())
            .await
        {
            Ok(meta) => Ok(info(&path, &meta)),
            Err(_) if exceeded.load(Ordering::SeqCst) => Err(too_large()),
            Err(e) => Err(FileError::store(format!("upload {path}"), e)),
        }
    }

    pub(crate) async fn download(&self, input: &str) -> Result<Download, FileError> {
        let path = self.resolve(input, true).await?;
        let (meta, stream) = self.open(&path).await?;
        Ok(Download {
            info: info(&path, &meta),
            stream,
        })
    }
}

/// An upload stream that fails once more than `remaining` bytes pass, and
/// records that it did, so the failure can be told from others.
struct Capped {
    inner: ByteStream,
    remaining: u64,
    exceeded: Arc<AtomicBool>,
}

impl AsyncRead for Capped {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match self.inner.as_mut().poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let n = (buf.filled().len() - before) as u64;
                if n > self.remaining {
                    self.exceeded.store(true, Ordering::SeqCst);
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::FileTooLarge,
                        "upload larger than its limit",
                    )));
                }
                self.remaining -= n;
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}
