//! Paths inside a session's workspace, as callers of the file API give them.
//!
//! A caller names a file the way a command in the session would: relative to
//! the workspace (`src/app.py`, `./notes.txt`) or absolute, as `pwd` shows it
//! inside the session (`/tmp/runbox/sessions/s/workspace/src/app.py`).
//! [`WorkspacePath::parse`] turns either into one normal form: a relative path
//! inside the workspace with no empty, `.` or `..` segments, or the workspace
//! root itself. Everything that could reach outside the workspace is refused
//! before any I/O, with an error that names the path and says what is allowed.
//!
//! This is purely lexical. A symlink inside the workspace that points out of
//! it can only be seen on a real filesystem: the embedded backend's file API
//! checks that separately.

use std::fmt;

/// Longest workspace-relative path accepted, in bytes (the object-name limit
/// of Cloud Storage, which the object name must also fit in).
pub const MAX_PATH_BYTES: usize = 1024;

/// How much of a rejected path an error repeats: enough to recognise it,
/// without echoing megabytes back.
const SHOWN_BYTES: usize = 200;

/// A normalised path inside a session's workspace: `""` for the root,
/// otherwise segments joined by `/`, none of them empty, `.` or `..`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkspacePath(String);

/// Why a path was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path is the empty string.
    #[error("empty path: name a file relative to the workspace, or `.` for the workspace itself")]
    Empty,
    /// The path contains a NUL byte, which no file name can hold.
    #[error("path {path:?} contains a NUL byte")]
    Nul {
        /// The path given (shortened).
        path: String,
    },
    /// The path contains a control character other than NUL.
    #[error("path {path:?} contains a control character; file names here are printable")]
    ControlCharacter {
        /// The path given (shortened).
        path: String,
    },
    /// The normalised path is longer than [`MAX_PATH_BYTES`].
    #[error("path {path:?} is {bytes} bytes long; at most {max} bytes are allowed")]
    TooLong {
        /// The path given (shortened).
        path: String,
        /// Its normalised length.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// A relative path whose `..` segments climb above the workspace root.
    #[error(
        "path {path:?} leaves the workspace: `..` may not climb above the workspace root {root}"
    )]
    Escapes {
        /// The path given (shortened).
        path: String,
        /// The workspace root.
        root: String,
    },
    /// An absolute path that is not the workspace root or below it.
    #[error(
        "path {path:?} is outside the workspace: absolute paths must be {root} or below it; relative paths are taken from there"
    )]
    OutsideWorkspace {
        /// The path given (shortened).
        path: String,
        /// The workspace root.
        root: String,
    },
    /// The workspace root given to [`WorkspacePath::parse`] is not absolute.
    #[error("workspace root {root:?} is not an absolute path")]
    InvalidRoot {
        /// The root given.
        root: String,
    },
}

impl WorkspacePath {
    /// Normalises `input` against `session_workspace_root`, the absolute path
    /// commands in the session see as their workspace (the embedded
    /// backend's directory, or the directory the executor restores the
    /// workspace into).
    ///
    /// - Relative paths are taken from the workspace root; absolute ones must
    ///   be the root or below it.
    /// - Empty and `.` segments are dropped (`a//b` → `a/b`, `./a` → `a`,
    ///   `a/` → `a`); `..` removes the segment before it and may not climb
    ///   above the root (`a/../b` → `b`, `../x` → error).
    /// - NUL and other control characters, and normalised paths longer than
    ///   [`MAX_PATH_BYTES`], are refused.
    pub fn parse(session_workspace_root: &str, input: &str) -> Result<Self, PathError> {
        let root = normalise_root(session_workspace_root)?;
        if input.is_empty() {
            return Err(PathError::Empty);
        }
        if input.contains('\0') {
            return Err(PathError::Nul { path: shown(input) });
        }
        if input.chars().any(char::is_control) {
            return Err(PathError::ControlCharacter { path: shown(input) });
        }
        let segments = if input.starts_with('/') {
            // Resolve the whole absolute path first (`..` at `/` stays at
            // `/`, as the kernel does), then require it under the root, so
            // `{root}/../other` is outside and `{root}/a/../b` is inside.
            let absolute = lexical_absolute(input);
            let outside = || PathError::OutsideWorkspace {
                path: shown(input),
                root: display_root(&root),
            };
            if absolute.len() < root.len() || absolute[..root.len()] != root[..] {
                return Err(outside());
            }
            absolute[root.len()..].to_vec()
        } else {
            let mut out: Vec<&str> = Vec::new();
            for segment in input.split('/') {
                match segment {
                    "" | "." => {}
                    ".." => {
                        if out.pop().is_none() {
                            return Err(PathError::Escapes {
                                path: shown(input),
                                root: display_root(&root),
                            });
                        }
                    }
                    s => out.push(s),
                }
            }
            out
        };
        let path = segments.join("/");
        if path.len() > MAX_PATH_BYTES {
            return Err(PathError::TooLong {
                path: shown(input),
                bytes: path.len(),
                max: MAX_PATH_BYTES,
            });
        }
        Ok(Self(path))
    }

    /// The workspace root itself.
    pub fn root() -> Self {
        Self(String::new())
    }

    /// Whether this is the workspace root.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The relative path: `""` for the root, else `a/b`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The segments, outermost first; none for the root.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/').filter(|s| !s.is_empty())
    }

    /// The last segment; `None` for the root.
    pub fn file_name(&self) -> Option<&str> {
        self.segments().last()
    }

    /// The directory holding this path; `None` for the root.
    pub fn parent(&self) -> Option<Self> {
        if self.is_root() {
            return None;
        }
        Some(match self.0.rfind('/') {
            Some(i) => Self(self.0[..i].to_owned()),
            None => Self::root(),
        })
    }

    /// Every directory above this path, the root excluded, outermost first:
    /// `a/b/c` → `a`, `a/b`.
    pub fn ancestors(&self) -> Vec<Self> {
        self.0
            .match_indices('/')
            .map(|(i, _)| Self(self.0[..i].to_owned()))
            .collect()
    }

    /// Whether `self` is `other` or below it.
    pub fn starts_with(&self, other: &WorkspacePath) -> bool {
        other.is_root()
            || self.0 == other.0
            || (self.0.starts_with(&other.0) && self.0.as_bytes().get(other.0.len()) == Some(&b'/'))
    }

    /// This path joined with a relative `child` that is already normal
    /// (segments from a listing); no checks are made.
    pub fn join_normal(&self, child: &str) -> Self {
        if self.is_root() {
            Self(child.to_owned())
        } else {
            Self(format!("{}/{child}", self.0))
        }
    }

    /// The path below `prefix` (a workspace prefix such as
    /// `sessions/s/workspace/`) that an object name stands for; `None` when
    /// the name is not below the prefix.
    pub fn from_object_name(prefix: &str, name: &str) -> Option<Self> {
        let rest = name.strip_prefix(prefix)?;
        if rest.is_empty()
            || rest
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == "..")
        {
            return None;
        }
        Some(Self(rest.to_owned()))
    }
}

impl fmt::Display for WorkspacePath {
    /// The relative path, or `.` for the root.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_root() {
            f.write_str(".")
        } else {
            f.write_str(&self.0)
        }
    }
}

/// The root's segments; refuses a relative root.
fn normalise_root(root: &str) -> Result<Vec<&str>, PathError> {
    if !root.starts_with('/') || root.contains('\0') {
        return Err(PathError::InvalidRoot { root: shown(root) });
    }
    Ok(lexical_absolute(root))
}

/// The segments of an absolute path after dropping empty and `.` segments
/// and applying `..` (which stops at `/`).
fn lexical_absolute(path: &str) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    out
}

fn display_root(segments: &[&str]) -> String {
    format!("/{}", segments.join("/"))
}

/// At most [`SHOWN_BYTES`] of `s`, cut on a character boundary.
fn shown(s: &str) -> String {
    if s.len() <= SHOWN_BYTES {
        return s.to_owned();
    }
    let mut end = SHOWN_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &str = "/srv/runbox/sessions/s/workspace";

    fn ok(input: &str) -> String {
        WorkspacePath::parse(ROOT, input)
            .unwrap_or_else(|e| panic!("{input:?} refused: {e}"))
            .as_str()
            .to_owned()
    }

    fn err(input: &str) -> PathError {
        match WorkspacePath::parse(ROOT, input) {
            Ok(p) => panic!("{input:?} accepted as {p:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn relative_paths_are_normalised() {
        assert_eq!(ok("a.txt"), "a.txt");
        assert_eq!(ok("a//b"), "a/b");
        assert_eq!(ok("./a"), "a");
        assert_eq!(ok("a/./b/"), "a/b");
        assert_eq!(ok("a/../b"), "b");
        assert_eq!(ok("a/b/../../c"), "c");
        assert_eq!(ok("."), "");
        assert_eq!(ok("./"), "");
        assert_eq!(ok("a/.."), "");
        assert_eq!(
            ok("dir with spaces/ünïcødé.txt"),
            "dir with spaces/ünïcødé.txt"
        );
        // Dots inside names are names, not navigation.
        assert_eq!(ok("..."), "...");
        assert_eq!(ok("..a/b.."), "..a/b..");
    }

    #[test]
    fn absolute_paths_under_the_root_are_accepted() {
        assert_eq!(ok(ROOT), "");
        assert_eq!(ok(&format!("{ROOT}/")), "");
        assert_eq!(ok(&format!("{ROOT}/src/app.py")), "src/app.py");
        assert_eq!(ok(&format!("{ROOT}//src/./x/../app.py")), "src/app.py");
        // The root may be given with a trailing slash or redundant segments.
        let p = WorkspacePath::parse(
            "/srv//runbox/./sessions/s/workspace/",
            "/srv/runbox/sessions/s/workspace/a",
        )
        .unwrap();
        assert_eq!(p.as_str(), "a");
    }

    #[test]
    fn dot_dot_that_escapes_is_refused() {
        for input in ["..", "../x", "../../etc/passwd", "a/../../b", "./.."] {
            let e = err(input);
            assert!(matches!(e, PathError::Escapes { .. }), "{input:?}: {e:?}");
            let msg = e.to_string();
            assert!(msg.contains(input), "{msg}");
            assert!(msg.contains(ROOT), "{msg}");
        }
    }

    #[test]
    fn absolute_paths_outside_the_root_are_refused() {
        for input in [
            "/etc/passwd",
            "/",
            "/srv/runbox/sessions/s",
            // A sibling whose name merely starts with the root's.
            "/srv/runbox/sessions/s/workspace2/x",
            // Inside lexically only before `..` is applied.
            "/srv/runbox/sessions/s/workspace/../other/x",
            "/srv/runbox/sessions/s/workspace/../../t/workspace/x",
        ] {
            let e = err(input);
            assert!(
                matches!(e, PathError::OutsideWorkspace { .. }),
                "{input:?}: {e:?}"
            );
            assert!(e.to_string().contains(ROOT), "{e}");
        }
    }

    #[test]
    fn nul_control_empty_and_long_paths_are_refused() {
        assert_eq!(err(""), PathError::Empty);
        assert!(matches!(err("a\0b"), PathError::Nul { .. }));
        assert!(matches!(err("a\nb"), PathError::ControlCharacter { .. }));
        assert!(matches!(err("a\u{7f}"), PathError::ControlCharacter { .. }));
        let long = "x".repeat(MAX_PATH_BYTES + 1);
        match err(&long) {
            PathError::TooLong { bytes, max, path } => {
                assert_eq!((bytes, max), (MAX_PATH_BYTES + 1, MAX_PATH_BYTES));
                // The message repeats the start of the path, not all of it.
                assert!(path.len() < 300, "{}", path.len());
            }
            e => panic!("{e:?}"),
        }
        // The limit is on the normal form: redundant segments do not count.
        let exact = format!("./{}", "y".repeat(MAX_PATH_BYTES));
        assert_eq!(ok(&exact).len(), MAX_PATH_BYTES);
    }

    #[test]
    fn a_relative_root_is_refused() {
        assert!(matches!(
            WorkspacePath::parse("workspace", "a"),
            Err(PathError::InvalidRoot { .. })
        ));
    }

    #[test]
    fn helpers_follow_the_normal_form() {
        let p = WorkspacePath::parse(ROOT, "a/b/c.txt").unwrap();
        assert_eq!(p.file_name(), Some("c.txt"));
        assert_eq!(p.parent().unwrap().as_str(), "a/b");
        assert_eq!(
            p.ancestors()
                .iter()
                .map(WorkspacePath::as_str)
                .collect::<Vec<_>>(),
            ["a", "a/b"]
        );
        assert!(p.starts_with(&WorkspacePath::parse(ROOT, "a/b").unwrap()));
        assert!(p.starts_with(&WorkspacePath::root()));
        assert!(!p.starts_with(&WorkspacePath::parse(ROOT, "a/b/c").unwrap()));
        assert!(
            !WorkspacePath::parse(ROOT, "ab")
                .unwrap()
                .starts_with(&WorkspacePath::parse(ROOT, "a").unwrap())
        );
        assert_eq!(WorkspacePath::root().parent(), None);
        assert_eq!(WorkspacePath::root().to_string(), ".");
        assert_eq!(p.to_string(), "a/b/c.txt");
        assert_eq!(
            WorkspacePath::from_object_name("sessions/s/workspace/", "sessions/s/workspace/a/b"),
            Some(WorkspacePath::parse(ROOT, "a/b").unwrap())
        );
        assert_eq!(
            WorkspacePath::from_object_name("sessions/s/workspace/", "sessions/t/workspace/a"),
            None
        );
        assert_eq!(WorkspacePath::root().join_normal("x").as_str(), "x");
        assert_eq!(p.join_normal("d").as_str(), "a/b/c.txt/d");
    }
}
