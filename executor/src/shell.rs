//! The shell side of an execution: the wrapper script that restores the
//! session's exported variables, runs the user's command and, in the same
//! shell, captures its exit status, working directory and exported
//! environment; and how that capture updates the session state.
//!
//! # Why the wrapper restores variables itself
//!
//! Only the executor's small base environment goes through `execve`: the
//! kernel refuses a single `NAME=value` over 128 KiB (and a whole
//! environment over its argument limit), so a session that exported a big
//! value could never start bash again. The session's variables are read
//! from a NUL-separated file with `mapfile` and exported with one `export`,
//! so any size works and nothing is parsed as shell code.
//!
//! # Why the capture is shaped the way it is
//!
//! Every way bash has to list variables (`${!A@}`, `compgen -e`,
//! `declare -px`) builds its list with a duplicate check against the whole
//! list so far: quadratic in the number of variables, seconds at 10,000.
//! The capture therefore prints the variables the session restored by name
//! (`declare -p NAME...`, a hash lookup each), unsets them, and only then
//! lists what is left (`declare -px`): the base variables and whatever the
//! command created. The executor parses `declare -p`'s quoting.

use std::collections::BTreeMap;
use std::path::Path;

use runbox_core::contract;
use runbox_proto::SessionState;

/// Variables bash maintains itself; persisting them would be wrong (PWD,
/// OLDPWD follow `cwd`; SHLVL, `_` change on their own; the others are
/// read-only in every bash and cannot be restored).
const SHELL_OWNED: &[&str] = &["PWD", "OLDPWD", "SHLVL", "_", "SHELLOPTS", "BASHOPTS"];

/// Files the wrapper script reads and writes, all in the execution's
/// scratch directory.
#[derive(Clone, Copy, Debug)]
pub struct ScriptFiles<'a> {
    /// The user's command.
    pub command: &'a Path,
    /// Written by the EXIT trap (see [`parse_capture`]).
    pub capture: &'a Path,
    /// `NAME=value` entries, NUL-separated, exported before the command
    /// (see [`RestoredEnv`]).
    pub env: &'a Path,
    /// The names of those entries, NUL-separated.
    pub names: &'a Path,
}

/// The script given to `bash -c`. The EXIT trap runs after the command
/// whatever happens — `exit N`, `set -e`, a syntax error — and writes the
/// capture. The trap forks nothing (no `$(...)`, no external command): it is
/// on every command's path, and a command that broke PATH or redefined
/// `printf` still gets its cwd and env saved. `readonly` names the reserved
/// variables of the starting environment, which the command cannot change.
///
/// Nothing in the script has an assignment prefix (`IFS= read`): bash
/// builds the whole exported environment for one, as slowly as it lists
/// variables (see the module docs).
///
/// The command is read into a variable and run with `eval`, not sourced
/// from its file: bash names a sourced file in its error messages, and the
/// scratch path means nothing to the user (`bash: line 1: nosuchcmd:
/// command not found` instead).
pub fn wrapper_script(cwd: &Path, files: ScriptFiles<'_>, readonly: &[&str]) -> String {
    let readonly = if readonly.is_empty() {
        String::new()
    } else {
        format!("builtin readonly -- {}; ", readonly.join(" "))
    };
    // All on one line, so the line numbers bash gives in its messages
    // (relative to the line `eval` is on) are the command's own.
    format!(
        concat!(
            "builtin cd -- {cwd} || builtin exit 126; ",
            "{readonly}",
            "IFS=; builtin read -r -d '' __runbox_command < {command}; IFS=$' \\t\\n'; ",
            "builtin mapfile -d '' -t __runbox_known < {names}; ",
            "builtin mapfile -d '' -t __runbox_env < {env}; ",
            "if [[ ${{#__runbox_env[@]}} -gt 0 ]]; then ",
            "builtin export -- \"${{__runbox_env[@]}}\" 2>/dev/null; fi; ",
            "builtin unset -v __runbox_env; ",
            "__runbox_capture() {{ __runbox_rc=$?; set +eu; {{ ",
            "builtin printf '%s\\0' \"$__runbox_rc\"; builtin pwd; builtin printf '\\0'; ",
            "if [[ ${{#__runbox_known[@]}} -gt 0 ]]; then ",
            "builtin declare -p -- \"${{__runbox_known[@]}}\"; ",
            "builtin unset -v -- \"${{__runbox_known[@]}}\"; fi; ",
            "builtin declare -px; builtin printf '\\0'; ",
            "}} >| {capture} 2>/dev/null; }}; ",
            "trap __runbox_capture EXIT; ",
            "builtin eval -- \"$__runbox_command\"\n",
        ),
        cwd = quote(cwd),
        readonly = readonly,
        names = quote(files.names),
        env = quote(files.env),
        capture = quote(files.capture),
        command = quote(files.command),
    )
}

/// Quotes a path for bash as `$'...'`, so even a newline in it keeps the
/// script on one line.
fn quote(path: &Path) -> String {
    let mut out = String::from("$'");
    for c in path.to_string_lossy().chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// The starting environment split in two: what bash gets through `execve`
/// (the base variables, small and fixed) and what the wrapper script
/// exports from files (the session's and the request's variables, any size).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoredEnv {
    /// Passed to `execve`.
    pub exec: BTreeMap<String, String>,
    /// Contents of [`ScriptFiles::env`]: `NAME=value\0` per variable.
    pub env_file: Vec<u8>,
    /// Contents of [`ScriptFiles::names`]: `NAME\0` per variable.
    pub names_file: Vec<u8>,
}

impl RestoredEnv {
    /// Splits `start` (see [`start_env`]): variables with their `base`
    /// value go to `execve`, the others to the files. A name bash cannot
    /// export or a value with a NUL (only a hand-edited state holds one) is
    /// left out rather than breaking the script.
    pub fn split(base: &BTreeMap<String, String>, start: &BTreeMap<String, String>) -> Self {
        let mut out = Self::default();
        for (name, value) in start {
            if base.get(name) == Some(value) {
                out.exec.insert(name.clone(), value.clone());
            } else if is_shell_name(name) && !value.contains('\0') {
                out.env_file.extend_from_slice(name.as_bytes());
                out.env_file.push(b'=');
                out.env_file.extend_from_slice(value.as_bytes());
                out.env_file.push(0);
                out.names_file.extend_from_slice(name.as_bytes());
                out.names_file.push(0);
            }
        }
        out
    }
}

/// Whether bash accepts `name` as a variable name.
fn is_shell_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
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
    /// Exported variables whose value cannot be kept (not UTF-8, so the
    /// JSON state cannot hold it), with the reason.
    pub unreadable: BTreeMap<String, String>,
}

/// Parses the capture file: status NUL, `pwd` output NUL, `declare -p`
/// output NUL. `None` when the trap never ran or was cut short (killed,
/// `exec`), or the output is not what bash writes.
pub fn parse_capture(bytes: &[u8]) -> Option<Capture> {
    // Without the final NUL the capture was cut short and cannot be
    // trusted; bash values hold no NUL, so there are exactly three fields.
    let body = bytes.strip_suffix(b"\0")?;
    let mut fields = body.split(|b| *b == 0);
    let (status, pwd, declarations) = (fields.next()?, fields.next()?, fields.next()?);
    if fields.next().is_some() {
        return None;
    }
    let exit_code = std::str::from_utf8(status).ok()?.parse().ok()?;
    // `pwd` ends its line with a newline; a path may hold newlines itself,
    // so only the last one is dropped.
    let cwd = String::from_utf8(pwd.strip_suffix(b"\n")?.to_vec()).ok()?;
    if cwd.is_empty() {
        return None;
    }
    let mut env = BTreeMap::new();
    let mut unreadable = BTreeMap::new();
    for declaration in parse_declarations(declarations)? {
        let Declaration { name, flags, value } = declaration;
        // Arrays and namerefs never reach a child's environment; a name
        // declared without a value is not in it either.
        let exported = flags.contains('x') && !flags.contains(['a', 'A', 'n']);
        let Some(value) = value.filter(|_| exported) else {
            env.remove(&name);
            continue;
        };
        match String::from_utf8(value) {
            Ok(value) => {
                unreadable.remove(&name);
                env.insert(name, value);
            }
            Err(_) => {
                env.remove(&name);
                unreadable.insert(name, "its value is not UTF-8".to_owned());
            }
        }
    }
    Some(Capture {
        exit_code,
        cwd,
        env,
        unreadable,
    })
}

/// One line of `declare -p` output.
#[derive(Debug, PartialEq, Eq)]
struct Declaration {
    name: String,
    flags: String,
    /// `None` for a variable declared without a value; the raw text for an
    /// array (never used).
    value: Option<Vec<u8>>,
}

/// Parses `declare -p`'s output: `declare -FLAGS NAME` or
/// `declare -FLAGS NAME=VALUE` per line, VALUE quoted as `"..."` or
/// `$'...'` (or an array's `(...)`). `None` on anything else.
fn parse_declarations(text: &[u8]) -> Option<Vec<Declaration>> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        rest = rest.strip_prefix(b"declare -")?;
        let space = rest.iter().position(|b| *b == b' ')?;
        let flags = std::str::from_utf8(&rest[..space]).ok()?.to_owned();
        rest = &rest[space + 1..];
        let name_len = rest
            .iter()
            .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))
            .unwrap_or(rest.len());
        let name = std::str::from_utf8(&rest[..name_len]).ok()?.to_owned();
        rest = &rest[name_len..];
        let value = match rest.first() {
            Some(b'=') => {
                let (value, after) = parse_value(&rest[1..])?;
                rest = after;
                Some(value)
            }
            _ => None,
        };
        rest = match rest {
            [] => rest,
            [b'\n', after @ ..] => after,
            _ => return None,
        };
        out.push(Declaration { name, flags, value });
    }
    Some(out)
}

/// Parses one quoted value; returns it and what follows it.
fn parse_value(text: &[u8]) -> Option<(Vec<u8>, &[u8])> {
    match text {
        [b'"', rest @ ..] => parse_double_quoted(rest),
        [b'$', b'\'', rest @ ..] => parse_ansi_c(rest),
        // An array, `(...)` up to the end of the line: its elements are
        // quoted the same way and hold no raw newline.
        [b'(', ..] => {
            let end = text.iter().position(|b| *b == b'\n').unwrap_or(text.len());
            Some((text[..end].to_vec(), &text[end..]))
        }
        _ => None,
    }
}

/// The inside of `"..."`: a backslash quotes `$`, `` ` ``, `"`, `\` and a
/// newline; before anything else it is itself.
fn parse_double_quoted(text: &[u8]) -> Option<(Vec<u8>, &[u8])> {
    let mut value = Vec::new();
    let mut i = 0;
    loop {
        match *text.get(i)? {
            b'"' => return Some((value, &text[i + 1..])),
            b'\\' => match *text.get(i + 1)? {
                c @ (b'$' | b'`' | b'"' | b'\\') => {
                    value.push(c);
                    i += 2;
                }
                b'\n' => i += 2,
                _ => {
                    value.push(b'\\');
                    i += 1;
                }
            },
            c => {
                value.push(c);
                i += 1;
            }
        }
    }
}

/// The inside of `$'...'`, with the escapes bash's `$'...'` knows.
fn parse_ansi_c(text: &[u8]) -> Option<(Vec<u8>, &[u8])> {
    let mut value = Vec::new();
    let mut i = 0;
    loop {
        match *text.get(i)? {
            b'\'' => return Some((value, &text[i + 1..])),
            b'\\' => {
                let c = *text.get(i + 1)?;
                i += 2;
                match c {
                    b'a' => value.push(0x07),
                    b'b' => value.push(0x08),
                    b'e' | b'E' => value.push(0x1b),
                    b'f' => value.push(0x0c),
                    b'n' => value.push(b'\n'),
                    b'r' => value.push(b'\r'),
                    b't' => value.push(b'\t'),
                    b'v' => value.push(0x0b),
                    b'\\' | b'\'' | b'"' | b'?' => value.push(c),
                    b'0'..=b'7' => {
                        let (n, used) = number(&text[i - 1..], 8, 3);
                        value.push(u8::try_from(n & 0xff).ok()?);
                        i += used - 1;
                    }
                    b'x' => {
                        let (n, used) = number(&text[i..], 16, 2);
                        if used == 0 {
                            value.extend_from_slice(b"\\x");
                        } else {
                            value.push(u8::try_from(n).ok()?);
                            i += used;
                        }
                    }
                    b'u' | b'U' => {
                        let (n, used) = number(&text[i..], 16, if c == b'u' { 4 } else { 8 });
                        let ch = char::from_u32(n).filter(|_| used > 0)?;
                        value.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
                        i += used;
                    }
                    b'c' => {
                        let ctl = *text.get(i)?;
                        value.push(ctl.to_ascii_uppercase() & 0x1f);
                        i += 1;
                    }
                    other => {
                        value.push(b'\\');
                        value.push(other);
                    }
                }
            }
            c => {
                value.push(c);
                i += 1;
            }
        }
    }
}

/// Reads up to `max` digits of `radix` at the start of `text`: the number
/// and how many digits it used.
fn number(text: &[u8], radix: u32, max: usize) -> (u32, usize) {
    let mut n = 0;
    let mut used = 0;
    for b in text.iter().take(max) {
        match char::from(*b).to_digit(radix) {
            Some(d) => {
                n = n * radix + d;
                used += 1;
            }
            None => break,
        }
    }
    (n, used)
}

/// A variable the command exported that the session does not keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The variable.
    pub name: String,
    /// Why, e.g. "its value is 5242880 bytes, over the limit of 4194304 bytes".
    pub reason: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exported variable {} not saved: {}; the session keeps its previous value",
            self.name, self.reason
        )
    }
}

/// Takes out of `capture` what the session cannot keep, so the state stays
/// loadable by the next command: values that are not UTF-8, values over
/// [`contract::MAX_ENV_VALUE_BYTES`], and, while the exported variables add
/// up to more than [`contract::MAX_ENV_TOTAL_BYTES`], the command's largest
/// changes. A refused variable keeps its value from `start` (the value the
/// command started with).
pub fn refuse_unpersistable(
    start: &BTreeMap<String, String>,
    capture: &mut Capture,
) -> Vec<Refused> {
    let mut refused: Vec<Refused> = std::mem::take(&mut capture.unreadable)
        .into_iter()
        .map(|(name, reason)| Refused { name, reason })
        .collect();
    let too_big: Vec<(String, usize)> = capture
        .env
        .iter()
        .filter(|(name, value)| {
            value.len() > contract::MAX_ENV_VALUE_BYTES && start.get(*name) != Some(*value)
        })
        .map(|(name, value)| (name.clone(), value.len()))
        .collect();
    for (name, len) in too_big {
        refused.push(Refused {
            reason: format!(
                "its value is {len} bytes, over the limit of {} bytes",
                contract::MAX_ENV_VALUE_BYTES
            ),
            name,
        });
    }
    for r in &refused {
        revert(start, &mut capture.env, &r.name);
    }

    let size = |env: &BTreeMap<String, String>| -> usize {
        env.iter()
            .filter(|(name, _)| !ignored(name))
            .map(|(name, value)| name.len() + value.len())
            .sum()
    };
    let mut total = size(&capture.env);
    if total > contract::MAX_ENV_TOTAL_BYTES {
        let mut changed: Vec<(usize, String)> = capture
            .env
            .iter()
            .filter(|(name, value)| !ignored(name) && start.get(*name) != Some(*value))
            .map(|(name, value)| (name.len() + value.len(), name.clone()))
            .collect();
        // Largest first, so as few variables as possible are refused.
        changed.sort_by(|a, b| b.cmp(a));
        for (_, name) in changed {
            if total <= contract::MAX_ENV_TOTAL_BYTES {
                break;
            }
            revert(start, &mut capture.env, &name);
            total = size(&capture.env);
            refused.push(Refused {
                reason: format!(
                    "the session's exported variables would add up to more than {} bytes",
                    contract::MAX_ENV_TOTAL_BYTES
                ),
                name,
            });
        }
    }
    refused
}

/// Puts `name` back to what it was when the command started.
fn revert(start: &BTreeMap<String, String>, env: &mut BTreeMap<String, String>, name: &str) {
    match start.get(name) {
        Some(value) => {
            env.insert(name.to_owned(), value.clone());
        }
        None => {
            env.remove(name);
        }
    }
}

/// Names whose changes are never saved.
fn ignored(name: &str) -> bool {
    SHELL_OWNED.contains(&name) || contract::is_reserved_env(name)
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
        let text = b"3\0/tmp\n\0declare -x A=\"1\"\ndeclare -- LOCAL=\"x\"\ndeclare -x B=\"x=y \\\"\\$\\`\\\\\"\ndeclare -x OLDPWD\ndeclare -ax ARR=([0]=\"a\")\n\0";
        let c = parse_capture(text).unwrap();
        assert_eq!(c.exit_code, 3);
        assert_eq!(c.cwd, "/tmp");
        assert_eq!(c.env, map(&[("A", "1"), ("B", "x=y \"$`\\")]));
        assert_eq!(parse_capture(b""), None);
        assert_eq!(parse_capture(b"0\0"), None);
        assert_eq!(parse_capture(b"0\0/tmp\n\0declare -x A=\"1\"\n"), None);
        assert_eq!(parse_capture(b"0\0/tmp\n\0declare -x A=\"1\0"), None);
        assert_eq!(parse_capture(b"0\0/tmp\n\0garbage\n\0"), None);
        assert!(parse_capture(b"0\0/tmp\n\0\0").unwrap().env.is_empty());
        let empty_value = parse_capture(b"0\0/tmp\n\0declare -x A=\"\"\n\0").unwrap();
        assert_eq!(empty_value.env, map(&[("A", "")]));
        let newline_dir = parse_capture(b"0\0/tmp/a\nb\n\0\0").unwrap();
        assert_eq!(newline_dir.cwd, "/tmp/a\nb");
        // A variable printed twice (read-only, so the trap could not unset
        // it) keeps its last declaration; one unexported later is gone.
        let twice = parse_capture(
            b"0\0/\n\0declare -rx R=\"1\"\ndeclare -x G=\"1\"\ndeclare -rx R=\"1\"\ndeclare -- G=\"1\"\n\0",
        )
        .unwrap();
        assert_eq!(twice.env, map(&[("R", "1")]));
    }

    #[test]
    fn ansi_c_quoting_is_decoded() {
        let text = b"0\0/\n\0declare -x A=$'a\\nb\"c$d`e\\\\f\\001g\\'h\\E\\t'\ndeclare -x U=$'\\303\\251 \\u00e9'\ndeclare -x BAD=$'\\377\\376'\n\0";
        let c = parse_capture(text).unwrap();
        assert_eq!(
            c.env,
            map(&[("A", "a\nb\"c$d`e\\f\u{1}g'h\u{1b}\t"), ("U", "é é")])
        );
        assert_eq!(
            c.unreadable.get("BAD").map(String::as_str),
            Some("its value is not UTF-8")
        );
    }

    #[test]
    fn the_script_is_one_line_whatever_the_paths() {
        let odd = Path::new("/tmp/it's a\nnew\\line");
        let files = ScriptFiles {
            command: odd,
            capture: odd,
            env: odd,
            names: odd,
        };
        let script = wrapper_script(odd, files, &["RUNBOX_EXECUTION_ID"]);
        assert_eq!(script.matches('\n').count(), 1, "{script}");
        assert!(script.ends_with("builtin eval -- \"$__runbox_command\"\n"));
        assert!(script.contains(r"$'/tmp/it\'s a\nnew\\line'"), "{script}");
    }

    #[test]
    fn restored_env_skips_what_bash_cannot_take() {
        let base = map(&[("PATH", "/bin"), ("HOME", "/w")]);
        let start = map(&[
            ("PATH", "/bin"),
            ("HOME", "/elsewhere"),
            ("A", "x\ny"),
            ("1BAD", "v"),
            ("NUL", "a\0b"),
        ]);
        let split = RestoredEnv::split(&base, &start);
        assert_eq!(split.exec, map(&[("PATH", "/bin")]));
        assert_eq!(split.env_file, b"A=x\ny\0HOME=/elsewhere\0");
        assert_eq!(split.names_file, b"A\0HOME\0");
    }

    #[test]
    fn unpersistable_values_are_refused_by_name() {
        let big = "v".repeat(contract::MAX_ENV_VALUE_BYTES + 1);
        let start = map(&[("KEPT", "old"), ("SAME_BIG", &big)]);
        let mut capture = Capture {
            exit_code: 0,
            cwd: "/".into(),
            env: map(&[
                ("KEPT", &big),
                ("NEW", &big),
                ("SAME_BIG", &big),
                ("OK", "1"),
            ]),
            unreadable: [("BIN".to_owned(), "its value is not UTF-8".to_owned())].into(),
        };
        let refused = refuse_unpersistable(&start, &mut capture);
        let names: Vec<&str> = refused.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["BIN", "KEPT", "NEW"]);
        assert!(
            refused[1].to_string().contains("over the limit"),
            "{}",
            refused[1]
        );
        // Refused ones are back to their starting value; an unchanged
        // value (restored from an older state) is not the command's doing.
        assert_eq!(
            capture.env,
            map(&[("KEPT", "old"), ("OK", "1"), ("SAME_BIG", &big)])
        );

        // Over the total, the largest changes go first.
        let piece = "p".repeat(contract::MAX_ENV_VALUE_BYTES - 1);
        let small = "s".repeat(1024);
        let mut env: BTreeMap<String, String> =
            (1..=4).map(|i| (format!("P{i}"), piece.clone())).collect();
        env.insert("S".into(), small);
        let mut capture = Capture {
            exit_code: 0,
            cwd: "/".into(),
            env,
            unreadable: BTreeMap::new(),
        };
        let refused = refuse_unpersistable(&BTreeMap::new(), &mut capture);
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert!(refused[0].name.starts_with('P'));
        assert!(refused[0].reason.contains("add up to"), "{}", refused[0]);
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
