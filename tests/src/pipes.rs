//! Named pipes through which a test and the shell commands it runs
//! synchronise: a command announces that it has reached a point by writing
//! a line into an [`Announcements`] pipe, and waits to be let go by reading
//! a line from a [`Gate`] pipe. Nothing is left to timing, so no test guesses
//! with sleeps; this needs the commands to run on this machine.
//!
//! The test opens its end of each pipe read-write before any command runs,
//! so neither side's `open` blocks, a command that comes late still finds
//! what was written, and no end sees end-of-file while the test holds its
//! end.

use std::path::{Path, PathBuf};

use runbox_core::InstanceId;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::unix::pipe;

/// Where every test's named pipes go: beside the test binaries, which
/// commands see at the same path (they run with a `/tmp` of their
/// session's own, and the store hidden). Commands may write there because
/// the harnesses name it in `RUNBOX_LANDLOCK_WRITABLE`.
pub fn shared_dir() -> PathBuf {
    crate::embedded::bin_dir().join("test-pipes")
}

/// A fresh named pipe, its name starting with `name`, in this test
/// process's directory under [`shared_dir`] (whatever `_dir` says: a pipe
/// elsewhere is one a command could not write).
pub fn fifo(_dir: &Path, name: &str) -> PathBuf {
    let dir = shared_dir().join(std::process::id().to_string());
    std::fs::create_dir_all(&dir).expect("create the pipe directory");
    let path = dir.join(format!("{name}-{}", InstanceId::random().as_str()));
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("pipe path");
    // SAFETY: mkfifo on a NUL-terminated path we own.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(
        rc,
        0,
        "mkfifo {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    path
}

/// The test's end of a pipe commands write lines into
/// (`echo running > PATH`).
pub struct Announcements {
    path: PathBuf,
    lines: Lines<BufReader<pipe::Receiver>>,
}

impl Announcements {
    /// A new pipe in `dir`.
    pub fn new(dir: &Path, name: &str) -> Self {
        let path = fifo(dir, name);
        let rx = pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(&path)
            .expect("open the pipe for reading");
        Self {
            path,
            lines: BufReader::new(rx).lines(),
        }
    }

    /// The pipe's path, quoted for a shell command.
    pub fn shell_path(&self) -> String {
        quote(&self.path)
    }

    /// The pipe's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next line a command wrote. Waits as long as it takes: callers put
    /// a timeout around it.
    pub async fn next(&mut self) -> String {
        self.lines
            .next_line()
            .await
            .expect("read the pipe")
            .expect("the test holds the pipe open, so it never ends")
    }
}

/// The test's end of a pipe commands wait on (`read -r _ < PATH`): each
/// line written lets exactly one waiting command go, since bash reads a
/// pipe one byte at a time and so consumes no more than its line.
pub struct Gate {
    path: PathBuf,
    tx: pipe::Sender,
}

impl Gate {
    /// A new pipe in `dir`.
    pub fn new(dir: &Path, name: &str) -> Self {
        let path = fifo(dir, name);
        let tx = pipe::OpenOptions::new()
            .read_write(true)
            .open_sender(&path)
            .expect("open the pipe for writing");
        Self { path, tx }
    }

    /// The pipe's path, quoted for a shell command.
    pub fn shell_path(&self) -> String {
        quote(&self.path)
    }

    /// Lets `n` commands go (those waiting now, or the next to arrive).
    pub async fn release(&mut self, n: usize) {
        self.tx
            .write_all("go\n".repeat(n).as_bytes())
            .await
            .expect("write to the gate");
    }
}

/// `path` quoted for a POSIX shell.
pub fn quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}
