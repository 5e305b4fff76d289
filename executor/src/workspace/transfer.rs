//! Moving file content between the workspace directory and the store, and
//! checksumming it on the way.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use runbox_core::store::{ByteStream, ObjectMeta, Precondition, PutOptions, Store};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWriteExt, BufReader, BufWriter, ReadBuf};

use super::mtime::{ns_system_time, system_time_ns};
use super::tasks::blocking;
use super::{FileEntry, RESTORE_MODE_MASK, Result, WorkspaceError, io_err};

/// I/O buffer of transfers and checksums: large, because tokio's file
/// handles cost a blocking-pool round trip per read or write.
const IO_BUFFER: usize = 1 << 20;

/// Smallest I/O buffer: small files need no more.
const MIN_IO_BUFFER: usize = 8 << 10;

/// `O_NOFOLLOW`, for `OpenOptions::custom_flags`.
const NOFOLLOW: i32 = rustix::fs::OFlags::NOFOLLOW.bits() as i32;

/// Uploads one file; returns the object's metadata, the checksum and size
/// of the bytes actually sent.
pub(super) async fn upload_file(
    store: &dyn Store,
    name: &str,
    abs: &Path,
    size_hint: u64,
    precondition: Precondition,
) -> Result<(ObjectMeta, String, u64)> {
    let file = fs::OpenOptions::new()
        .read(true)
        // The scan saw a regular file; never read through a symlink put in
        // its place.
        .custom_flags(NOFOLLOW)
        .open(abs)
        .map_err(io_err("open", abs))?;
    let (reader, digest) = Hashing::new(BufReader::with_capacity(
        buffer_for(size_hint),
        tokio::fs::File::from_std(file),
    ));
    let stream: ByteStream = Box::pin(reader);
    let meta = match store
        .put_stream(name, stream, PutOptions::when(precondition))
        .await
    {
        Ok(meta) => meta,
        Err(source) if source.is_conflict() => {
            return Err(WorkspaceError::Conflict {
                name: name.to_owned(),
                source,
            });
        }
        Err(source) => {
            return Err(WorkspaceError::Store {
                op: "upload workspace file",
                name: name.to_owned(),
                source,
            });
        }
    };
    let (sha, size) = digest.finish();
    Ok((meta, sha, size))
}

/// Downloads one object into `tmp`, sets its mode and mtime, verifies it and
/// renames it to `dest`. `None` when the object no longer exists.
pub(super) async fn download_file(
    store: &dyn Store,
    name: &str,
    tmp: &Path,
    dest: &Path,
    entry: &FileEntry,
) -> Result<Option<FileEntry>> {
    let (meta, stream) = match store.get_stream(name).await {
        Ok(got) => got,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(source) => {
            return Err(WorkspaceError::Store {
                op: "download workspace file",
                name: name.to_owned(),
                source,
            });
        }
    };
    let file = tokio::fs::File::create(tmp)
        .await
        .map_err(io_err("create", tmp))?;
    let (mut reader, digest) = Hashing::new(stream);
    let mut writer = BufWriter::with_capacity(buffer_for(meta.size), file);
    let copied = tokio::io::copy(&mut reader, &mut writer).await;
    if let Err(source) = copied {
        // Reading the store's stream or writing the disk: say which.
        return Err(WorkspaceError::Io {
            op: "download",
            path: dest.to_owned(),
            source,
        });
    }
    writer.flush().await.map_err(io_err("write", tmp))?;
    let file = writer.into_inner().into_std().await;
    let (sha, size) = digest.finish();
    if meta.generation == entry.generation && !entry.sha256.is_empty() && entry.sha256 != sha {
        return Err(WorkspaceError::Corrupt {
            name: name.to_owned(),
            expected: entry.sha256.clone(),
            actual: sha,
        });
    }
    // The same generation keeps its recorded mtime; a newer one (the file
    // API wrote it) takes the object's write time.
    let mtime_ns = if meta.generation == entry.generation {
        entry.mtime_ns
    } else {
        meta.updated.map_or(entry.mtime_ns, system_time_ns)
    };
    let mode = entry.mode;
    let (tmp, dest) = (tmp.to_owned(), dest.to_owned());
    blocking(move || {
        file.set_permissions(fs::Permissions::from_mode(mode & RESTORE_MODE_MASK))
            .map_err(io_err("set mode of", &tmp))?;
        file.set_modified(ns_system_time(mtime_ns))
            .map_err(io_err("set mtime of", &tmp))?;
        drop(file);
        fs::rename(&tmp, &dest).map_err(io_err("move into place", &dest))
    })
    .await?;
    Ok(Some(FileEntry {
        size,
        mode,
        mtime_ns,
        sha256: sha,
        generation: meta.generation,
    }))
}

/// SHA-256 (hex) and size of a file, read without following a symlink.
pub(super) fn hash_file(abs: &Path) -> Result<(String, u64)> {
    let mut file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(NOFOLLOW)
        .open(abs)
        .map_err(io_err("open", abs))?;
    let size = file.metadata().map_err(io_err("stat", abs))?.len();
    let mut hasher = Sha256::new();
    // One more than the size: the read that returns 0 needs no second pass.
    let mut buf = vec![0; buffer_for(size.saturating_add(1))];
    let mut total = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err("read", abs)(e)),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hex(&hasher.finalize()), total))
}

/// A reader that hashes what passes through it, so an upload or download
/// reads the bytes once and the checksum is of exactly the bytes moved.
struct Hashing<R> {
    inner: R,
    digest: Arc<Mutex<Running>>,
}

#[derive(Default)]
struct Running {
    hasher: Sha256,
    bytes: u64,
}

/// The other end of a [`Hashing`] reader: the result once it is drained.
struct DigestHandle(Arc<Mutex<Running>>);

impl<R> Hashing<R> {
    fn new(inner: R) -> (Self, DigestHandle) {
        let digest = Arc::new(Mutex::new(Running::default()));
        (
            Self {
                inner,
                digest: Arc::clone(&digest),
            },
            DigestHandle(digest),
        )
    }
}

impl DigestHandle {
    fn finish(self) -> (String, u64) {
        let running = std::mem::take(&mut *self.0.lock().expect("digest lock"));
        (hex(&running.hasher.finalize()), running.bytes)
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Hashing<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let start = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let new = &buf.filled()[start..];
        let mut running = self.digest.lock().expect("digest lock");
        running.hasher.update(new);
        running.bytes += new.len() as u64;
        Poll::Ready(Ok(()))
    }
}

/// An I/O buffer for a file of `size` bytes.
fn buffer_for(size: u64) -> usize {
    usize::try_from(size)
        .unwrap_or(IO_BUFFER)
        .clamp(MIN_IO_BUFFER, IO_BUFFER)
}

/// Lowercase hex, as the manifest stores checksums.
pub(super) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
