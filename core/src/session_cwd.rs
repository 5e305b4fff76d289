//! The one path commands see their workspace at (`/workspace` unless
//! `RUNBOX_WORKSPACE_PATH` says otherwise), and the session's cwd as it is
//! stored: relative to the workspace when it lies inside it, so a state
//! written on one backend means the same on every other.
//!
//! Stored forms:
//! - `.` — the workspace itself; `sub/dir` — a directory inside it;
//! - `/usr/src` — an absolute directory outside the workspace, kept as is;
//! - older states hold absolute paths inside the old per-backend workspace
//!   directory (`RUNBOX_HOME/sessions/{s}/workspace/sub`,
//!   `/tmp/runbox/sessions/{s}/workspace/sub`): [`resolve`] maps them onto
//!   the workspace path, whatever base directory they were written under.

use std::path::{Component, Path, PathBuf};

/// Overrides [`DEFAULT_WORKSPACE_PATH`]: an absolute, normal path other
/// than `/` (`/home/user`). Read by the executor and the dispatcher; the
/// local launcher forwards it from its own environment.
pub const WORKSPACE_PATH_ENV: &str = "RUNBOX_WORKSPACE_PATH";

/// `off` keeps commands out of a workspace namespace: they see the real
/// workspace directory and the host's `/tmp` (as where the platform allows
/// none); unset or `auto`, the executor uses one where it can.
pub const WORKSPACE_NAMESPACE_ENV: &str = "RUNBOX_WORKSPACE_NAMESPACE";

/// Whether a [`WORKSPACE_NAMESPACE_ENV`] value allows the namespace.
pub fn namespace_wanted(value: Option<&str>) -> Result<bool, WorkspacePathSettingError> {
    match value {
        None | Some("" | "auto") => Ok(true),
        Some("off") => Ok(false),
        Some(other) => Err(WorkspacePathSettingError {
            value: other.to_owned(),
            reason: "RUNBOX_WORKSPACE_NAMESPACE is `auto` or `off`",
        }),
    }
}

/// Where commands of every session see their workspace by default.
pub const DEFAULT_WORKSPACE_PATH: &str = "/workspace";

/// The stored form of the workspace root itself.
const ROOT: &str = ".";

/// Why a workspace path setting is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{WORKSPACE_PATH_ENV}={value:?}: {reason} (an absolute path such as /workspace, not /, without `.`, `..` or empty segments)"
)]
pub struct WorkspacePathSettingError {
    /// The value given.
    pub value: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// The workspace path from the setting's value (`None` or empty: the
/// default), checked: absolute, not `/`, no `.`/`..`/empty segments, no
/// control characters.
pub fn workspace_path(value: Option<&str>) -> Result<PathBuf, WorkspacePathSettingError> {
    let value = match value {
        None | Some("") => return Ok(PathBuf::from(DEFAULT_WORKSPACE_PATH)),
        Some(v) => v,
    };
    let bad = |reason| {
        Err(WorkspacePathSettingError {
            value: value.to_owned(),
            reason,
        })
    };
    if !value.starts_with('/') {
        return bad("not an absolute path");
    }
    if value.chars().any(char::is_control) {
        return bad("contains a control character");
    }
    let trimmed = value.trim_end_matches('/');
    if trimmed.is_empty() {
        return bad("the root directory cannot be a workspace");
    }
    if trimmed[1..]
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return bad("not a normal path");
    }
    Ok(PathBuf::from(trimmed))
}

/// The stored form of `cwd` (an absolute path as a command saw it) for a
/// session whose workspace commands see at `workspace`.
pub fn to_stored(cwd: &str, workspace: &Path) -> String {
    match Path::new(cwd).strip_prefix(workspace) {
        Ok(rel) if rel.as_os_str().is_empty() => ROOT.to_owned(),
        Ok(rel) => rel.to_string_lossy().into_owned(),
        Err(_) => cwd.to_owned(),
    }
}

/// The absolute cwd a command of session `session` starts in, from its
/// stored form; `None` for an empty one (a new session: the workspace).
/// A relative form is taken from `workspace`; an absolute one inside an
/// old per-backend workspace directory (`…/sessions/{session}/workspace`)
/// is mapped onto `workspace`; any other absolute path stays as it is.
/// A relative form that climbs out (`../x`, hand-edited) is refused as
/// `None` rather than followed.
pub fn resolve(stored: &str, workspace: &Path, session: &str) -> Option<PathBuf> {
    if stored.is_empty() {
        return None;
    }
    if !stored.starts_with('/') {
        let rel = Path::new(stored);
        if rel
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return None;
        }
        let joined: PathBuf = workspace
            .components()
            .chain(rel.components().filter(|c| *c != Component::CurDir))
            .collect();
        return Some(joined);
    }
    let marker = format!("/sessions/{session}/workspace");
    // The last occurrence: a base directory may itself contain the marker.
    if let Some(at) = stored.rfind(&marker) {
        let rest = &stored[at + marker.len()..];
        if rest.is_empty() {
            return Some(workspace.to_owned());
        }
        if let Some(rest) = rest.strip_prefix('/') {
            return resolve(
                if rest.is_empty() { ROOT } else { rest },
                workspace,
                session,
            );
        }
    }
    Some(PathBuf::from(stored))
}

/// The cwd as callers see it (`sessions show`, the HTTP API): the stored
/// form resolved against `workspace`, or the stored text itself when it
/// cannot be resolved.
pub fn display(stored: &str, workspace: &Path, session: &str) -> String {
    resolve(stored, workspace, session)
        .map_or_else(|| stored.to_owned(), |p| p.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws() -> PathBuf {
        PathBuf::from("/workspace")
    }

    #[test]
    fn the_setting_is_checked() {
        assert_eq!(workspace_path(None).unwrap(), ws());
        assert_eq!(workspace_path(Some("")).unwrap(), ws());
        assert_eq!(
            workspace_path(Some("/home/user/")).unwrap(),
            PathBuf::from("/home/user")
        );
        for bad in [
            "workspace",
            "/",
            "//",
            "/a/../b",
            "/a//b",
            "/a/./b",
            "/a\nb",
        ] {
            let err = workspace_path(Some(bad)).unwrap_err();
            assert!(err.to_string().contains(WORKSPACE_PATH_ENV), "{err}");
        }
    }

    #[test]
    fn a_cwd_inside_the_workspace_is_stored_relative() {
        assert_eq!(to_stored("/workspace", &ws()), ".");
        assert_eq!(to_stored("/workspace/sub/dir", &ws()), "sub/dir");
        assert_eq!(to_stored("/usr/src", &ws()), "/usr/src");
        // A sibling that shares the prefix is outside.
        assert_eq!(to_stored("/workspace2/x", &ws()), "/workspace2/x");
    }

    #[test]
    fn stored_forms_resolve_against_the_workspace() {
        assert_eq!(resolve("", &ws(), "s"), None);
        assert_eq!(resolve(".", &ws(), "s"), Some(ws()));
        assert_eq!(
            resolve("sub/dir", &ws(), "s"),
            Some(PathBuf::from("/workspace/sub/dir"))
        );
        assert_eq!(resolve("/usr", &ws(), "s"), Some(PathBuf::from("/usr")));
        assert_eq!(resolve("../etc", &ws(), "s"), None);
        assert_eq!(
            resolve("sub", Path::new("/home/user"), "s"),
            Some(PathBuf::from("/home/user/sub"))
        );
    }

    #[test]
    fn older_absolute_forms_map_onto_the_workspace() {
        for old in [
            "/tmp/runbox/sessions/demo/workspace/sub",
            "/root/.local/share/runbox/sessions/demo/workspace/sub",
        ] {
            assert_eq!(
                resolve(old, &ws(), "demo"),
                Some(PathBuf::from("/workspace/sub")),
                "{old}"
            );
        }
        assert_eq!(
            resolve("/tmp/runbox/sessions/demo/workspace", &ws(), "demo"),
            Some(ws())
        );
        assert_eq!(
            resolve("/tmp/runbox/sessions/demo/workspace/", &ws(), "demo"),
            Some(ws())
        );
        // Another session's directory, or a longer name, is not this one's.
        assert_eq!(
            resolve("/tmp/runbox/sessions/other/workspace/x", &ws(), "demo"),
            Some(PathBuf::from("/tmp/runbox/sessions/other/workspace/x"))
        );
        assert_eq!(
            resolve("/h/sessions/demo/workspace2", &ws(), "demo"),
            Some(PathBuf::from("/h/sessions/demo/workspace2"))
        );
        // Round trip.
        let stored = to_stored("/workspace/a b/c", &ws());
        assert_eq!(display(&stored, &ws(), "demo"), "/workspace/a b/c");
    }
}
