//! The local side: what a workspace directory holds, walked without
//! following symlinks.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{Result, io_err};

/// What a scan found.
#[derive(Default)]
pub(super) struct Scan {
    pub(super) entries: BTreeMap<String, Local>,
    pub(super) unsupported: Vec<Unsupported>,
}

/// An entry that cannot be recorded.
pub(super) struct Unsupported {
    pub(super) abs: PathBuf,
    pub(super) reason: &'static str,
}

/// One local entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Local {
    File(LocalFile),
    Dir { mode: u32 },
    Symlink { target: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct LocalFile {
    pub(super) size: u64,
    pub(super) mode: u32,
    pub(super) mtime_ns: i64,
}

/// Walks `dir` without following symlinks. Paths longer than `max_path`
/// bytes (their object name would be too long) are unsupported.
pub(super) fn scan(dir: &Path, max_path: usize) -> Result<Scan> {
    let mut out = Scan::default();
    match fs::symlink_metadata(dir) {
        // A command may remove its own workspace: then it is empty.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err("stat workspace", dir)(e)),
        Ok(md) if !md.is_dir() => {
            return Err(io_err("scan workspace", dir)(io::Error::new(
                io::ErrorKind::NotADirectory,
                "not a directory",
            )));
        }
        Ok(_) => {}
    }
    walk(dir, "", max_path, &mut out)?;
    Ok(out)
}

fn walk(abs: &Path, rel: &str, max_path: usize, out: &mut Scan) -> Result<()> {
    let reader = match fs::read_dir(abs) {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("read directory", abs)(e)),
    };
    for entry in reader {
        let entry = entry.map_err(io_err("read directory", abs))?;
        let child = entry.path();
        // Does not follow symlinks (lstat semantics on Unix).
        let md = match entry.metadata() {
            Ok(md) => md,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err("stat", &child)(e)),
        };
        let unsupported = |out: &mut Scan, reason| {
            out.unsupported.push(Unsupported {
                abs: child.clone(),
                reason,
            });
        };
        let Some(name) = entry
            .file_name()
            .to_str()
            .filter(|n| !n.chars().any(char::is_control))
            .map(str::to_owned)
        else {
            unsupported(out, "name is not UTF-8 or holds a control character");
            continue;
        };
        let path = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        if path.len() > max_path {
            unsupported(out, "path too long for an object name");
            continue;
        }
        let ft = md.file_type();
        let mode = md.mode() & 0o7777;
        if ft.is_dir() {
            out.entries.insert(path.clone(), Local::Dir { mode });
            walk(&child, &path, max_path, out)?;
        } else if ft.is_file() {
            out.entries.insert(
                path,
                Local::File(LocalFile {
                    size: md.len(),
                    mode,
                    mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
                }),
            );
        } else if ft.is_symlink() {
            let target = fs::read_link(&child).map_err(io_err("read symlink", &child))?;
            match target.into_os_string().into_string() {
                Ok(target) => {
                    out.entries.insert(path, Local::Symlink { target });
                }
                Err(_) => unsupported(out, "symlink target is not UTF-8"),
            }
        } else {
            unsupported(out, "not a regular file, directory or symlink");
        }
    }
    Ok(())
}
