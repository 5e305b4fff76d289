//! The shell side of an execution: the wrapper script that runs the user's
//! command and, in the same shell, captures its exit status, working
//! directory and exported environment; and how that capture updates the
//! session state.

use std::collections::BTreeMap;
use std::path::Path;

use runbox_core::contract;
use runbox_proto::SessionState;

/// Variables bash maintains itself; persisting them would be wrong (PWD,
/// OLDPWD follow `cwd`; SHLVL, `_` change on their own).
const SHELL_OWNED: &[&str] = &["PWD", "OLDPWD", "SHLVL", "_"];

/// The script given to `bash -c`. The user's command is sourced from a file
/// (never passed in argv or env: no size limit, no quoting), as the last
/// command of the script, so its status is the script's status; the EXIT trap
/// runs after it whatever happens — `exit N`, `set -e`, a syntax error — and
/// writes the capture. The trap forks nothing (no `$(...)`, no external
/// command): it is on every command's path, and a command that broke PATH or
/// redefined `printf` still gets its cwd and env saved.
pub fn wrapper_script(cwd: &Path, command_file: &Path, capture_file: &Path) -> String {
    // `${!A@}` expands to the names of all variables starting with A; one
    // expansion per possible first character lists them all without a
    // subshell. The `x` attribute marks the exported ones.
    let mut all_names = String::new();
    for c in ('A'..='Z').chain('a'..='z').chain(std::iter::once('_')) {
        all_names.push_str(&format!("${{!{c}@}} "));
    }
    format!(
        r#"builtin cd -- {cwd} || exit 126
for __runbox_k in ${{!RUNBOX_@}}; do builtin readonly "$__runbox_k"; done
__runbox_capture() {{
  __runbox_rc=$?
  set +eu
  {{
    builtin printf '%s\0' "$__runbox_rc"
    builtin pwd
    builtin printf '\0'
    for __runbox_k in {all_names}; do
      [[ ${{!__runbox_k@a}} == *x* ]] && builtin printf '%s\0%s\0' "$__runbox_k" "${{!__runbox_k}}"
    done
    builtin printf '\0'
  }} >| {capture} 2>/dev/null
}}
trap __runbox_capture EXIT
. {command}
"#,
        cwd = quote(cwd),
        capture = quote(capture_file),
        command = quote(command_file),
    )
}

/// Single-quotes a path for bash.
fn quote(path: &Path) -> String {
    format!("'{}'", path.to_string_lossy().replace('\'', r"'\''"))
}

/// What the EXIT trap recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    /// `$?` at exit.
    pub exit_code: i32,
    /// `pwd` at exit.
    pub cwd: String,
    /// Exported variables at exit.
    pub env: BTreeMap<String, String>,
}

/// Parses the capture file: NUL-separated status, cwd, then name/value pairs.
/// `None` when the trap never ran or was cut short (killed, `exec`).
pub fn parse_capture(bytes: &[u8]) -> Option<Capture> {
    // The trap writes: status NUL cwd NUL (name NUL value NUL)* NUL. Without
    // the final lone NUL the capture was cut short and cannot be trusted.
    let body = bytes.strip_suffix(b"\0")?;
    let fields: Vec<&[u8]> = body.split(|b| *b == 0).collect();
    let (last, rest) = fields.split_last()?;
    if !last.is_empty() || rest.len() < 2 || rest.len() % 2 != 0 {
        return None;
    }
    let exit_code = std::str::from_utf8(rest[0]).ok()?.parse().ok()?;
    // `pwd` ends its line with a newline; a path may hold newlines itself,
    // so only the last one is dropped.
    let cwd = String::from_utf8(rest[1].strip_suffix(b"\n")?.to_vec()).ok()?;
    if cwd.is_empty() {
        return None;
    }
    let mut env = BTreeMap::new();
    for pair in rest[2..].chunks_exact(2) {
        // Non-UTF-8 values cannot be stored in the JSON state: skip them
        // rather than corrupt them.
        if let (Ok(name), Ok(value)) = (std::str::from_utf8(pair[0]), std::str::from_utf8(pair[1]))
        {
            env.insert(name.to_owned(), value.to_owned());
        }
    }
    Some(Capture {
        exit_code,
        cwd,
        env,
    })
}

/// The environment a command starts with: the executor's base environment,
/// minus what the session unset, plus what the session exported, plus the
/// request's extra variables (this command only). Reserved `RUNBOX_` names
/// come from the base alone, whatever an older state or a request says.
pub fn start_env(
    base: &BTreeMap<String, String>,
    state: &SessionState,
    extra: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut env = base.clone();
    for name in state
        .unset_env
        .iter()
        .filter(|n| !contract::is_reserved_env(n))
    {
        env.remove(name);
    }
    let chosen = state.env.iter().chain(extra.iter());
    env.extend(
        chosen
            .filter(|(k, _)| !contract::is_reserved_env(k))
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    env
}

/// Folds what the command changed (`after` against `start`) into the
/// session's env. Only changes made by the command persist: a request's
/// extra variable that the command left alone is not saved.
pub fn apply_env_changes(
    state: &mut SessionState,
    base: &BTreeMap<String, String>,
    start: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
) {
    let ignored = |name: &str| SHELL_OWNED.contains(&name) || contract::is_reserved_env(name);
    for (name, value) in after {
        if ignored(name) || start.get(name) == Some(value) {
            continue;
        }
        state.unset_env.retain(|n| n != name);
        if base.get(name) == Some(value) {
            // Back to the base value: nothing to remember.
            state.env.remove(name);
        } else {
            state.env.insert(name.clone(), value.clone());
        }
    }
    for name in start.keys() {
        if ignored(name) || after.contains_key(name) {
            continue;
        }
        state.env.remove(name);
        if base.contains_key(name) && !state.unset_env.contains(name) {
            state.unset_env.push(name.clone());
        }
    }
    state.unset_env.sort();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn capture_parses_and_rejects_truncation() {
        let c = parse_capture(b"3\0/tmp\n\0A\x001\0B\0x=y\0\0").unwrap();
        assert_eq!(c.exit_code, 3);
        assert_eq!(c.cwd, "/tmp");
        assert_eq!(c.env, map(&[("A", "1"), ("B", "x=y")]));
        assert_eq!(parse_capture(b""), None);
        assert_eq!(parse_capture(b"0\0"), None);
        assert_eq!(parse_capture(b"0\0/tmp\n\0A\0"), None);
        assert_eq!(parse_capture(b"0\0/tmp\n\0A\x001\0"), None);
        assert!(parse_capture(b"0\0/tmp\n\0\0").unwrap().env.is_empty());
        let empty_value = parse_capture(b"0\0/tmp\n\0A\0\0\0").unwrap();
        assert_eq!(empty_value.env, map(&[("A", "")]));
        assert_eq!(parse_capture(b"0\0/tmp\n\0A\0\0"), None);
        let newline_dir = parse_capture(b"0\0/tmp/a\nb\n\0\0").unwrap();
        assert_eq!(newline_dir.cwd, "/tmp/a\nb");
    }

    #[test]
    fn reserved_names_come_from_the_base_and_never_persist() {
        let base = map(&[("PATH", "/bin"), ("RUNBOX_EXECUTION_ID", "real")]);
        // An older state (or a hand-written request) that names them.
        let mut state = SessionState {
            env: map(&[("RUNBOX_EXECUTION_ID", "fake"), ("RUNBOX_MINE", "1")]),
            unset_env: vec!["RUNBOX_EXECUTION_ID".to_owned()],
            ..Default::default()
        };
        let extra = map(&[("RUNBOX_EXECUTION_ID", "extra")]);
        let start = start_env(&base, &state, &extra);
        assert_eq!(
            start.get("RUNBOX_EXECUTION_ID").map(String::as_str),
            Some("real")
        );
        assert!(!start.contains_key("RUNBOX_MINE"));
        // Whatever the command did to them is not saved.
        state.env.clear();
        state.unset_env.clear();
        let after = map(&[("PATH", "/bin"), ("RUNBOX_NEW", "x")]);
        apply_env_changes(&mut state, &base, &start, &after);
        assert!(state.env.is_empty(), "{:?}", state.env);
        assert!(state.unset_env.is_empty(), "{:?}", state.unset_env);
    }

    #[test]
    fn only_the_commands_changes_persist() {
        let base = map(&[("PATH", "/bin"), ("HOME", "/w"), ("LANG", "C")]);
        let mut state = SessionState {
            env: map(&[("KEEP", "1"), ("DROP", "1")]),
            ..Default::default()
        };
        let extra = map(&[("ONCE", "x")]);
        let start = start_env(&base, &state, &extra);
        assert_eq!(start.get("ONCE").map(String::as_str), Some("x"));
        // The command exports NEW, unsets DROP and LANG, changes PATH,
        // leaves ONCE and KEEP alone; bash adds PWD/SHLVL.
        let after = map(&[
            ("PATH", "/bin:/x"),
            ("HOME", "/w"),
            ("KEEP", "1"),
            ("ONCE", "x"),
            ("NEW", "v"),
            ("PWD", "/w"),
            ("SHLVL", "1"),
        ]);
        apply_env_changes(&mut state, &base, &start, &after);
        assert_eq!(
            state.env,
            map(&[("KEEP", "1"), ("NEW", "v"), ("PATH", "/bin:/x")])
        );
        assert_eq!(state.unset_env, vec!["LANG".to_owned()]);

        // Re-exporting LANG later removes it from the unset list.
        let start = start_env(&base, &state, &BTreeMap::new());
        assert!(!start.contains_key("LANG"));
        let mut after = start.clone();
        after.insert("LANG".into(), "C".into());
        apply_env_changes(&mut state, &base, &start, &after);
        assert!(state.unset_env.is_empty());
        assert!(!state.env.contains_key("LANG"));
    }
}
