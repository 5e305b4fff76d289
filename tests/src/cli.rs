//! Running the `runbox` binary in tests, each harness with its own
//! `RUNBOX_HOME`, isolated from the caller's runbox settings.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Output, Stdio};

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::embedded::{binary, within};

/// A `runbox` command line on the embedded backend in a fresh directory.
pub struct Cli {
    /// The `RUNBOX_HOME` every command of this harness uses.
    pub home: tempfile::TempDir,
}

impl Default for Cli {
    fn default() -> Self {
        Self::new()
    }
}

impl Cli {
    /// A harness with a new temporary home.
    pub fn new() -> Self {
        Self {
            home: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// The command, not yet started: the embedded backend, this home, a
    /// short kill grace; no runbox variable of the caller's leaks in.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(binary("runbox"));
        cmd.args(args)
            .env_remove("RUNBOX_BACKEND")
            .env_remove("RUNBOX_EXECUTOR")
            .env_remove("RUNBOX_LAUNCHER")
            .env("RUNBOX_HOME", self.home.path())
            .env("RUNBOX_KILL_GRACE_MS", "300")
            // Commands write to the tests' named pipes.
            .env(
                runbox_core::confinement::LANDLOCK_WRITABLE_ENV,
                crate::pipes::shared_dir(),
            )
            .kill_on_drop(true);
        cmd
    }

    /// Runs to completion (at most two minutes) and returns its output.
    pub async fn run(&self, args: &[&str]) -> Output {
        within(120, self.command(args).output())
            .await
            .expect("run runbox")
    }

    /// Runs with `input` on standard input.
    pub async fn run_with(&self, args: &[&str], input: &[u8]) -> Output {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn runbox");
        let mut stdin = child.stdin.take().expect("stdin");
        within(30, stdin.write_all(input))
            .await
            .expect("write stdin");
        drop(stdin);
        within(120, child.wait_with_output())
            .await
            .expect("wait for runbox")
    }

    /// Runs with standard output into a pipe of one page whose reader takes
    /// the first line and closes it, as `runbox ... | head -1` does. Returns
    /// that line and the output (standard error only) once runbox has
    /// exited. Anything runbox prints beyond the first line and one page
    /// meets the closed pipe.
    pub async fn run_into_closed_pipe(&self, args: &[&str]) -> (String, Output) {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills both descriptors on success; each is then
        // owned exactly once.
        let (mut reader, writer) = unsafe {
            assert_eq!(
                libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC),
                0,
                "pipe: {}",
                std::io::Error::last_os_error()
            );
            (
                std::fs::File::from(OwnedFd::from_raw_fd(fds[0])),
                OwnedFd::from_raw_fd(fds[1]),
            )
        };
        // The smallest pipe the kernel allows (one page), so little output
        // is enough to fill it.
        // SAFETY: F_SETPIPE_SZ on a pipe descriptor this function owns.
        let size = unsafe { libc::fcntl(writer.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
        assert!(
            size > 0,
            "shrink the pipe: {}",
            std::io::Error::last_os_error()
        );
        let mut cmd = self.command(args);
        cmd.stdout(writer).stderr(Stdio::piped());
        let child = cmd.spawn().expect("spawn runbox");
        // Only the child may hold the writing end, or closing the reader
        // would not break the pipe.
        drop(cmd);
        let first_line = within(
            120,
            tokio::task::spawn_blocking(move || {
                // Byte by byte, so nothing past the first line is consumed.
                let mut line = Vec::new();
                let mut byte = [0u8];
                while reader.read(&mut byte).expect("read runbox's stdout") == 1 {
                    line.push(byte[0]);
                    if byte[0] == b'\n' {
                        break;
                    }
                }
                text(&line)
            }),
        )
        .await
        .expect("reader task");
        let out = within(120, child.wait_with_output())
            .await
            .expect("wait for runbox");
        (first_line, out)
    }

    /// `runbox exec -s SESSION -- SCRIPT`.
    pub async fn exec(&self, session: &str, script: &str) -> Output {
        self.run(&["exec", "-s", session, "--", script]).await
    }
}

/// Output bytes as text, for assertions and messages.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
