//! `runbox files ...`: the workspace file API from the command line.
//!
//! Paths are relative to the session's workspace (or absolute under it, as
//! `pwd` shows it in the session). Output goes to stdout; errors are printed
//! by `main` as `runbox: <error>` with the exit status of their kind (2 bad
//! input, 66 not found, 125 runbox failed; see `failure`). `exists` answers
//! with its exit status (0 yes, 1 no), `grep` exits 1 when no line matched,
//! as grep does.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use runbox_dispatcher::files::{
    DeleteOptions, EntryKind, MAX_EDIT_BYTES, ReadOptions, ReplaceOptions, UploadOptions,
    WriteOptions,
};
use runbox_dispatcher::{Client, Error, FileError};
use tokio::io::AsyncReadExt;

use crate::stdout::{Stdout, io_error, note};

/// Workspace file operations.
#[derive(Subcommand)]
pub enum FilesCommand {
    /// Write a file from standard input (replacing it, or appending).
    Write {
        /// The session (default: `default`, as for `runbox exec`).
        #[arg(short, long, default_value = "default")]
        session: String,
        /// The file; parent directories are created as needed.
        path: String,
        /// Append to the file instead of replacing it.
        #[arg(long)]
        append: bool,
    },
    /// Print a text file (invalid UTF-8 is replaced; `get` gives exact bytes).
    Read {
        /// The session (default: `default`, as for `runbox exec`).
        #[arg(short, long, default_value = "default")]
        session: String,
        /// The file.
        path: String,
        /// Only lines A to B, 1-based and inclusive (`A:` or `:B` leave a side open).
        #[arg(long, value_name = "A:B", value_parser = parse_lines)]
        lines: Option<LineRange>,
    },
    /// List a directory: kind, size and name of each entry.
    Ls {
        /// The session (default: `default`, as for `runbox exec`).
        #[arg(short, long, default_value = "default")]
        session: String,
        /// The directory (default: the workspace root).
        #[arg(default_value = ".")]
        path: String,
    },
    /// Delete a file, or a directory with -r.
    Rm {
        /// The session (default: `default`, as for `runbox exec`).
        #[arg(short, long, default_value = "default")]
        session: String,
        /// The file or directory.
        path: String,
        /// Delete a directory and everything in it.
        #[arg(short, long)]
        recursive: bool,
    },
    /// Print the files matching a glob (`*`, `**`, `?`, `[...]`), one per line.
    Find {
        /// The session (default: `default`, as for `runbox exec`).
        #[arg(short, long, default_value = "default")]
        session: String,
        /// The glob, relative to the directory searched (`**/*.py`).
        glob: String,
        /// The directory to search (default: the workspace root).
        #[arg(long = "in", value_name = "DIR", default_value = ".")]
        dir: String,
    },
    /// Print the lines of a file matching a regular expression, as `N:line`.
    Grep {
        /// The session (default: `default`, as for `runbox exec`).
        #[arg(short, long, default_value = "default")]
        session: String,
        /// The regular expression (Rust `regex` syntax).
        regex: String,
        /// The file.
        path: String,
    },
    /// Replace text in a file (the first occurrence, or all with --all) and
    /// print how many occurrences were replaced.
    Replace {
        /// The session (default: `default`, as for `runbox exec`).
        #[arg(short, long, default_value = "default")]
        session: String,
        /// The file.
        path: String,
        /// The text to replace.
        old: String,
        /// The replacement.
        new: String,
        /// Replace every occurrence.
        #[arg(long)]
        all: bool,
    },
    /// Upload a local file into the workspace.
    Put {
        /// The session (default: `default`, as for `runbox exec`).
        #[arg(short, long, default_value = "default")]
        session: String,
        /// The local file.
        local: PathBuf,
        /// The workspace path.
        remote: String,
    },
    /// Download a workspace file to a local file, or to stdout (`-` or nothing).
    Get {
        /// The session (default: `default`, as for `runbox exec`).
        #[arg(short, long, default_value = "default")]
        session: String,
        /// The workspace path.
        remote: String,
        /// The local file; `-` or nothing for stdout.
        local: Option<PathBuf>,
    },
    /// Exit 0 when the path exists (file or directory), 1 when it does not.
    Exists {
        /// The session (default: `default`, as for `runbox exec`).
        #[arg(short, long, default_value = "default")]
        session: String,
        /// The path.
        path: String,
    },
}

/// `--lines A:B`: 1-based, inclusive, either side optional.
#[derive(Clone, Copy, Debug)]
pub struct LineRange {
    start: Option<u64>,
    end: Option<u64>,
}

fn parse_lines(s: &str) -> Result<LineRange, String> {
    let bad = || format!("expected A:B, A: or :B with line numbers from 1, got {s:?}");
    let (a, b) = s.split_once(':').ok_or_else(bad)?;
    let num = |x: &str| -> Result<Option<u64>, String> {
        if x.is_empty() {
            return Ok(None);
        }
        match x.parse::<u64>() {
            Ok(n) if n >= 1 => Ok(Some(n)),
            _ => Err(bad()),
        }
    };
    let range = LineRange {
        start: num(a)?,
        end: num(b)?,
    };
    if let (Some(a), Some(b)) = (range.start, range.end)
        && b < a
    {
        return Err(bad());
    }
    Ok(range)
}

/// Runs one `files` subcommand.
pub async fn run(client: &Client, command: FilesCommand) -> Result<ExitCode, Error> {
    let mut out = Stdout::new();
    match command {
        FilesCommand::Write {
            session,
            path,
            append,
        } => {
            let session = client.session(&session)?;
            if append {
                // An append rewrites the whole file from memory (see
                // `MAX_EDIT_BYTES`): read no more than could be appended.
                let mut content = Vec::new();
                std::io::stdin()
                    .lock()
                    .take(MAX_EDIT_BYTES + 1)
                    .read_to_end(&mut content)
                    .map_err(|e| io_error("read standard input", e))?;
                if content.len() as u64 > MAX_EDIT_BYTES {
                    return Err(FileError::TooLargeToEdit {
                        path,
                        size: content.len() as u64,
                        limit: MAX_EDIT_BYTES,
                        op: "append",
                    }
                    .into());
                }
                session
                    .write_file(&path, content, WriteOptions::append())
                    .await?;
            } else {
                // Streamed into the store, so memory stays flat whatever
                // the size; past the upload cap nothing is written.
                session
                    .upload(&path, tokio::io::stdin(), UploadOptions::default())
                    .await?;
            }
        }
        FilesCommand::Read {
            session,
            path,
            lines,
        } => {
            let session = client.session(&session)?;
            let opts = ReadOptions::default()
                .lines(lines.and_then(|l| l.start), lines.and_then(|l| l.end));
            // Streamed a piece at a time: a file of any size prints in
            // constant memory.
            let mut text = session.read_file_stream(&path, opts).await?;
            while let Some(chunk) = text.next_chunk().await? {
                out.bytes(chunk.as_bytes())?;
                if out.gone() {
                    break;
                }
            }
            if text.lossy() {
                note!(
                    "runbox: warning: {path} is not valid UTF-8; invalid bytes were replaced (`runbox files get` gives the exact bytes)"
                );
            }
        }
        FilesCommand::Ls { session, path } => {
            let session = client.session(&session)?;
            let mut listing = String::new();
            for e in session.list_dir(&path).await? {
                let (size, suffix) = match e.kind {
                    EntryKind::File => (e.size.to_string(), ""),
                    EntryKind::Dir => ("-".to_owned(), "/"),
                    EntryKind::Symlink => (e.size.to_string(), "@"),
                };
                listing.push_str(&format!("{:<7} {size:>12}  {}{suffix}\n", e.kind, e.name));
            }
            out.bytes(listing.as_bytes())?;
        }
        FilesCommand::Rm {
            session,
            path,
            recursive,
        } => {
            let session = client.session(&session)?;
            session
                .delete_file(&path, DeleteOptions { recursive })
                .await?;
        }
        FilesCommand::Find { session, glob, dir } => {
            let session = client.session(&session)?;
            let mut found = String::new();
            for path in session.find_files(&dir, &glob).await? {
                found.push_str(&path);
                found.push('\n');
            }
            out.bytes(found.as_bytes())?;
        }
        FilesCommand::Grep {
            session,
            regex,
            path,
        } => {
            let session = client.session(&session)?;
            let matches = session.search_file(&path, &regex).await?;
            let mut lines = String::new();
            for m in &matches {
                lines.push_str(&format!("{}:{}\n", m.line_number, m.line));
            }
            out.bytes(lines.as_bytes())?;
            if matches.is_empty() {
                return Ok(ExitCode::from(1));
            }
        }
        FilesCommand::Replace {
            session,
            path,
            old,
            new,
            all,
        } => {
            let session = client.session(&session)?;
            let opts = if all {
                ReplaceOptions::all()
            } else {
                ReplaceOptions::first(1)
            };
            let n = session.replace_in_file(&path, &old, &new, opts).await?;
            out.line(format_args!("{n}"))?;
        }
        FilesCommand::Put {
            session,
            local,
            remote,
        } => {
            let session = client.session(&session)?;
            let file = tokio::fs::File::open(&local)
                .await
                .map_err(|e| io_error(format!("open {}", local.display()), e))?;
            let mut opts = UploadOptions::default();
            if let Ok(md) = file.metadata().await {
                opts = opts.size_hint(md.len());
            }
            session.upload(&remote, file, opts).await?;
        }
        FilesCommand::Get {
            session,
            remote,
            local,
        } => {
            let session = client.session(&session)?;
            // Opened first: a missing file creates no local file.
            let mut download = session.download(&remote).await?;
            match local.filter(|p| p.as_os_str() != "-") {
                None => {
                    let mut chunk = vec![0u8; 64 * 1024];
                    loop {
                        let n = download
                            .read(&mut chunk)
                            .await
                            .map_err(|e| io_error(format!("read {remote}"), e))?;
                        if n == 0 {
                            break;
                        }
                        out.bytes(&chunk[..n])?;
                        if out.gone() {
                            break;
                        }
                    }
                }
                Some(path) => {
                    let mut file = tokio::fs::File::create(&path)
                        .await
                        .map_err(|e| io_error(format!("create {}", path.display()), e))?;
                    tokio::io::copy(&mut download, &mut file)
                        .await
                        .map_err(|e| io_error(format!("write {}", path.display()), e))?;
                    file.sync_all()
                        .await
                        .map_err(|e| io_error(format!("write {}", path.display()), e))?;
                }
            }
        }
        FilesCommand::Exists { session, path } => {
            let session = client.session(&session)?;
            if !session.file_exists(&path).await? {
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
