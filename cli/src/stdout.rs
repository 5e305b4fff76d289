//! Standard output of the subcommands. A reader that stops early
//! (`runbox sessions list | head -1`) is ordinary for a Unix tool: the first
//! write that meets the closed pipe ends the printing, and the command
//! finishes with the exit status it would have had, where `println!` would
//! panic (Rust ignores SIGPIPE, so the write fails with EPIPE instead of
//! killing the process). Standard error is written through [`note!`] for the
//! same reason: `runbox ... 2>&1 | head -1` closes it too.

use std::fmt;
use std::io::{self, ErrorKind, Write};

use runbox_dispatcher::{Error, FileError};

/// Standard output, written one piece at a time; once its reader has gone
/// away nothing more is written.
#[derive(Debug, Default)]
pub struct Stdout {
    gone: bool,
}

impl Stdout {
    /// Standard output with its reader presumed present.
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes one line (`format_args!` without the newline).
    pub fn line(&mut self, args: fmt::Arguments<'_>) -> Result<(), Error> {
        self.write_with(|out| writeln!(out, "{args}"))
    }

    /// Writes bytes as they are.
    pub fn bytes(&mut self, data: &[u8]) -> Result<(), Error> {
        self.write_with(|out| out.write_all(data))
    }

    /// Writes whatever `write` writes (a serializer, say) and flushes it.
    /// A broken pipe is `Ok`: the reader has gone and later writes are
    /// skipped; any other failure is an error of runbox's.
    pub fn write_with(
        &mut self,
        write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> Result<(), Error> {
        if self.gone {
            return Ok(());
        }
        // Locked per write, not across the caller's awaits.
        let mut out = io::stdout().lock();
        match write(&mut out).and_then(|()| out.flush()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::BrokenPipe => {
                self.gone = true;
                Ok(())
            }
            Err(e) => Err(io_error("write standard output", e)),
        }
    }

    /// Whether the reader has gone away, so there is no point producing
    /// more output.
    pub fn gone(&self) -> bool {
        self.gone
    }
}

/// Writes one line on standard error, ignoring a closed or failing stderr
/// (where `eprintln!` would panic): a message nobody can read is not worth
/// failing the command over.
pub fn write_note(args: fmt::Arguments<'_>) {
    write_note_at(&tracing::Level::INFO, args);
}

/// [`write_note`] with a severity, which JSON log lines carry: with
/// `RUNBOX_LOG_FORMAT=json` (or on Cloud Run) a note is one JSON line like
/// the log's, so stderr stays parseable line by line.
pub fn write_note_at(level: &tracing::Level, args: fmt::Arguments<'_>) {
    match runbox_core::logging::active_format() {
        Some(runbox_core::logging::LogFormat::Json) => {
            let line = runbox_core::logging::json::plain_line(level, &args.to_string());
            let _ = io::stderr().lock().write_all(line.as_bytes());
        }
        _ => {
            let _ = writeln!(io::stderr().lock(), "{args}");
        }
    }
}

/// An I/O failure of the CLI's own, reported like the file API's.
pub fn io_error(op: impl Into<String>, source: io::Error) -> Error {
    Error::File(FileError::Io {
        op: op.into(),
        source,
    })
}

/// `eprintln!` that survives a closed standard error; see [`write_note`].
macro_rules! note {
    ($($arg:tt)*) => {
        $crate::stdout::write_note(format_args!($($arg)*))
    };
}
pub(crate) use note;
