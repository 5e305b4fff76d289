//! The embedded backend's workspace directory, seen through the real
//! filesystem: where a path leads once symlinks are followed, and the
//! entries commands leave that are not objects (empty directories, links).
//!
//! The local store never follows a symlink itself, so nothing here is needed
//! to keep it inside its root; this gives callers what a shell would give
//! them (links inside the workspace work) and a clear error where a link
//! leads out.

use std::io;
use std::path::{Path, PathBuf};

use runbox_core::workspace_path::WorkspacePath;

use super::{FileError, Found};

/// Resolves `path` on disk below the workspace directory `host`: the
/// deepest existing ancestor is canonicalised (following every symlink) and
/// must stay inside the workspace; the segments that do not exist yet are
/// kept as they are.
pub(super) fn confine(
    host: &Path,
    root: &str,
    input: &str,
    path: WorkspacePath,
    follow_last: bool,
) -> Result<WorkspacePath, FileError> {
    let Ok(canonical_root) = std::fs::canonicalize(host) else {
        // No workspace directory yet: nothing in it can be a symlink.
        return Ok(path);
    };
    let (walk, last) = if follow_last {
        (path.clone(), None)
    } else {
        match (path.parent(), path.file_name()) {
            (Some(parent), Some(name)) => (parent, Some(name.to_owned())),
            _ => (path.clone(), None),
        }
    };
    let segments: Vec<&str> = walk.segments().collect();
    let mut existing = segments.len();
    let resolved = loop {
        let candidate = segments[..existing]
            .iter()
            .fold(canonical_root.clone(), |p, s| p.join(s));
        match std::fs::canonicalize(&candidate) {
            Ok(resolved) => break resolved,
            Err(_) if existing > 0 => {
                // A dangling symlink on the way can still point outside; the
                // store would not follow it, but say so rather than fail
                // obscurely later.
                if existing < segments.len()
                    && let Ok(target) = std::fs::read_link(&candidate)
                {
                    let parent = candidate.parent().unwrap_or(&candidate);
                    let base = std::fs::canonicalize(parent).unwrap_or_else(|_| parent.to_owned());
                    let target = lexical(&base.join(target));
                    if !target.starts_with(&canonical_root) {
                        return Err(FileError::SymlinkEscape {
                            path: input.to_owned(),
                            target,
                            root: root.to_owned(),
                        });
                    }
                }
                existing -= 1;
            }
            Err(_) => break canonical_root.clone(),
        }
    };
    let Ok(inside) = resolved.strip_prefix(&canonical_root) else {
        return Err(FileError::SymlinkEscape {
            path: input.to_owned(),
            target: resolved,
            root: root.to_owned(),
        });
    };
    let mut rel: Vec<String> = Vec::new();
    for c in inside.components() {
        match c.as_os_str().to_str() {
            Some(s) => rel.push(s.to_owned()),
            None => {
                return Err(FileError::io(
                    format!("resolve {input}"),
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a symlink leads to a name that is not UTF-8",
                    ),
                ));
            }
        }
    }
    rel.extend(segments[existing..].iter().map(|s| (*s).to_owned()));
    rel.extend(last);
    if rel.is_empty() {
        return Ok(WorkspacePath::root());
    }
    Ok(WorkspacePath::parse(root, &rel.join("/"))?)
}

/// `path` with `.` and `..` applied without touching the disk.
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

/// Whether `path` is itself a symlink.
pub(super) fn is_symlink(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|md| md.file_type().is_symlink())
}

/// Entries of an embedded workspace directory that are not objects:
/// directories (possibly empty) and symlinks.
pub(super) fn list_host_extras(dir: &Path) -> Result<Vec<(String, Found)>, FileError> {
    let reader = match std::fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        // A file where the directory was asked for: the caller reports it.
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => return Ok(Vec::new()),
        Err(e) => return Err(FileError::io(format!("list {}", dir.display()), e)),
    };
    let mut out = Vec::new();
    for item in reader.flatten() {
        let Ok(name) = item.file_name().into_string() else {
            continue;
        };
        if name.chars().any(char::is_control) {
            continue;
        }
        // DirEntry::metadata does not follow symlinks.
        match item.metadata() {
            Ok(md) if md.is_dir() => out.push((name, Found::Dir)),
            Ok(md) if md.file_type().is_symlink() => out.push((name, Found::Symlink(md.len()))),
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_paths_apply_dot_dot() {
        assert_eq!(lexical(Path::new("/a/b/../c/./d")), PathBuf::from("/a/c/d"));
        assert_eq!(lexical(Path::new("/a/../../etc")), PathBuf::from("/etc"));
    }

    #[test]
    fn links_inside_are_followed_and_links_outside_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("ws");
        std::fs::create_dir_all(ws.join("sub")).unwrap();
        std::os::unix::fs::symlink("sub", ws.join("inner")).unwrap();
        std::os::unix::fs::symlink(dir.path(), ws.join("up")).unwrap();
        std::os::unix::fs::symlink("../../nowhere", ws.join("sub/dangling")).unwrap();
        let root = ws.to_str().unwrap();
        let path = |p: &str| WorkspacePath::parse(root, p).unwrap();
        let confined = |p: &str, follow| confine(&ws, root, p, path(p), follow);

        assert_eq!(
            confined("inner/new/file", true).unwrap(),
            path("sub/new/file")
        );
        assert_eq!(confined("inner", true).unwrap(), path("sub"));
        // Not following the last segment keeps the link itself.
        assert_eq!(confined("inner", false).unwrap(), path("inner"));
        assert_eq!(confined("up", false).unwrap(), path("up"));
        // What counts is where a path ends up: out and back in is inside.
        assert_eq!(confined("up/ws/sub/f", true).unwrap(), path("sub/f"));
        for escaping in ["up", "up/other/x", "sub/dangling/x", "inner/dangling/x"] {
            assert!(
                matches!(
                    confined(escaping, true),
                    Err(FileError::SymlinkEscape { .. })
                ),
                "{escaping}"
            );
        }
        // No workspace directory yet: the path is taken as it is.
        let fresh = dir.path().join("fresh");
        let p = WorkspacePath::parse(fresh.to_str().unwrap(), "a/b").unwrap();
        assert_eq!(confine(&fresh, "/x", "a/b", p.clone(), true).unwrap(), p);
    }
}
