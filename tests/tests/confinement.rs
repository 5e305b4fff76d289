//! The attacker's view of the embedded backend: a command of session B
//! tries to read and overwrite session A's workspace and state by their
//! host paths under `RUNBOX_HOME`, to write outside its session, to lift
//! its resource limits, and to read the environment and memory of every
//! process it can name in `/proc`. Each attack runs with the workspace
//! namespace and without it (`RUNBOX_WORKSPACE_NAMESPACE=off`, where only
//! Landlock stands in the way), and once with `RUNBOX_LANDLOCK=off` to
//! show that the attack itself works. The environment scan also runs on
//! the emulators (gcp backend, executors as local child processes).
//!
//! When the tests run as root (CI), the command runs as root too: Landlock
//! confines root as it confines anyone, and the helper that starts the
//! command takes away the capabilities that would open the `/proc` files
//! of runbox's non-dumpable processes (`CAP_SYS_PTRACE`, `CAP_SYS_ADMIN`,
//! `CAP_PERFMON`).

use std::path::{Path, PathBuf};
use std::process::Output;

use runbox_tests::cli::{Cli, text};
use runbox_tests::embedded::{binary, within};
use runbox_tests::harness::Emulators;

/// The two ways commands see the host: in their namespace, or not.
const MODES: [&str; 2] = ["auto", "off"];

/// A value only the dispatcher's environment holds.
const SECRET_VALUE: &str = "tok-3f9a1c77e2";

fn landlock_available() -> bool {
    runbox_executor::confine::supported_abi().is_some()
}

/// `runbox exec -s SESSION -- SCRIPT` in `mode`, with `extra` variables.
async fn exec(
    cli: &Cli,
    mode: &str,
    session: &str,
    script: &str,
    extra: &[(&str, &str)],
) -> Output {
    let mut cmd = cli.command(&["exec", "-s", session, "--", script]);
    cmd.env("RUNBOX_WORKSPACE_NAMESPACE", mode);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    within(90, cmd.output()).await.expect("runbox exec")
}

fn ok_stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// A directory outside `RUNBOX_HOME` and outside `/tmp` (which is the
/// session's own in the namespace), reachable from every mode.
fn outside_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir")
}

/// Session A with a file and a variable; returns A's state file.
async fn victim(cli: &Cli, mode: &str) -> PathBuf {
    victim_with(cli, mode, &[]).await
}

/// [`victim`], with `extra` variables for `runbox`.
async fn victim_with(cli: &Cli, mode: &str, extra: &[(&str, &str)]) -> PathBuf {
    let out = exec(
        cli,
        mode,
        "a",
        "echo secret-a > notes; export KEEP=a-value",
        extra,
    )
    .await;
    ok_stdout(&out);
    cli.home.path().join("sessions/a/state.json")
}

/// The attack from session B: one line per attempt, `ok` or `refused`.
fn attack_script(home: &Path, outside: &Path) -> String {
    let a = home.join("sessions/a");
    format!(
        r#"try() {{ if ( eval "$2" ) >/dev/null 2>&1; then echo "$1 ok"; else echo "$1 refused"; fi; }}
try cat-workspace 'cat {a}/workspace/notes'
try list-workspace 'ls {a}/workspace'
try cat-state 'cat {a}/state.json'
try cp-out 'cp {a}/workspace/notes stolen'
try cp-in 'echo forged > mine; cp mine {a}/workspace/notes'
try echo-workspace 'echo forged > {a}/workspace/notes'
try echo-state 'echo forged > {a}/state.json'
try echo-new 'echo planted > {a}/workspace/planted'
try list-home 'ls {home}/sessions'
try list-staging 'ls {home}/.runbox/tmp'
try echo-staging 'for f in {home}/.runbox/tmp/*.tmp; do echo forged > "$f" || exit 1; done'
try write-outside 'echo escaped > {outside}/escaped'
try own-workspace 'echo mine > own && test "$(cat own)" = mine'
try own-tmp 'echo t > "${{TMPDIR:-/tmp}}/t" && test "$(cat "${{TMPDIR:-/tmp}}/t")" = t'
try tmp 'echo t > /tmp/runbox-probe-$$ && rm /tmp/runbox-probe-$$'"#,
        a = a.display(),
        home = home.display(),
        outside = outside.display(),
    )
}

fn verdicts(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn verdict<'a>(all: &'a [(String, String)], name: &str) -> &'a str {
    all.iter()
        .find(|(k, _)| k == name)
        .map_or("missing", |(_, v)| v.as_str())
}

#[tokio::test]
async fn another_session_cannot_read_or_change_a_session() {
    attack_from_another_session("oneshot").await;
}

/// A warm session's long-lived shell, and so every command it runs, is
/// confined the same way as a oneshot command's.
#[tokio::test]
async fn a_warm_session_cannot_read_or_change_a_session() {
    attack_from_another_session("warm").await;
}

async fn attack_from_another_session(session_mode: &str) {
    if !landlock_available() {
        eprintln!("no Landlock in this kernel: nothing to test");
        return;
    }
    let extra = [("RUNBOX_SESSION_MODE", session_mode)];
    for mode in MODES {
        let cli = Cli::new();
        let outside = outside_dir();
        let state = victim_with(&cli, mode, &extra).await;
        let state_before = std::fs::read(&state).unwrap();
        let notes = cli.home.path().join("sessions/a/workspace/notes");

        let out = exec(
            &cli,
            mode,
            "b",
            &attack_script(cli.home.path(), outside.path()),
            &extra,
        )
        .await;
        let all = verdicts(&ok_stdout(&out));
        for refused in [
            "cat-workspace",
            "list-workspace",
            "cat-state",
            "cp-out",
            "cp-in",
            "echo-workspace",
            "echo-state",
            "echo-new",
            "list-home",
            // The staging files the store creates ahead (a spare becomes
            // the next object written).
            "list-staging",
            "echo-staging",
            "write-outside",
        ] {
            assert_eq!(
                verdict(&all, refused),
                "refused",
                "{mode}: {refused}: {all:?}"
            );
        }
        for allowed in ["own-workspace", "own-tmp"] {
            assert_eq!(verdict(&all, allowed), "ok", "{mode}: {allowed}: {all:?}");
        }
        // The host's /tmp is read-only without a namespace; in it, /tmp is
        // the session's own.
        let tmp = if mode == "auto" { "ok" } else { "refused" };
        assert_eq!(verdict(&all, "tmp"), tmp, "{mode}: {all:?}");

        assert_eq!(std::fs::read(&state).unwrap(), state_before, "{mode}");
        assert_eq!(std::fs::read_to_string(&notes).unwrap(), "secret-a\n");
        assert!(!notes.with_file_name("planted").exists(), "{mode}");
        assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
        assert!(
            cli.home.path().join("sessions/b/workspace/own").exists(),
            "{mode}: B's own file is in B's workspace"
        );
        let out = exec(&cli, mode, "a", "cat notes; echo \"$KEEP\"", &extra).await;
        assert_eq!(ok_stdout(&out), "secret-a\na-value\n", "{mode}");
        if session_mode == "warm" {
            // The limits hold in the long-lived shell too.
            let out = exec(&cli, mode, "b", "ulimit -n", &extra).await;
            assert_eq!(ok_stdout(&out), "4096\n", "{mode}");
            for session in ["a", "b"] {
                let out = within(
                    30,
                    cli.command(&["sessions", "close", session])
                        .env("RUNBOX_WORKSPACE_NAMESPACE", mode)
                        .output(),
                )
                .await
                .expect("runbox sessions close");
                assert!(out.status.success(), "{}", text(&out.stderr));
            }
        }
    }
}

/// The same attacks with Landlock off: what the namespace leaves open
/// (writing outside the session), and, without the namespace, everything.
/// Shows that the refusals above are Landlock's doing.
#[tokio::test]
async fn without_landlock_the_attacks_succeed() {
    let off = [("RUNBOX_LANDLOCK", "off")];
    for mode in MODES {
        let cli = Cli::new();
        let outside = outside_dir();
        victim(&cli, mode).await;
        let out = exec(
            &cli,
            mode,
            "b",
            &attack_script(cli.home.path(), outside.path()),
            &off,
        )
        .await;
        let all = verdicts(&ok_stdout(&out));
        assert_eq!(verdict(&all, "write-outside"), "ok", "{mode}: {all:?}");
        if mode == "off" {
            for name in ["cat-workspace", "cat-state", "echo-workspace"] {
                assert_eq!(verdict(&all, name), "ok", "{mode}: {name}: {all:?}");
            }
        }
    }
}

fn hard_nofile() -> u64 {
    let out = std::process::Command::new("sh")
        .args(["-c", "ulimit -Hn"])
        .output()
        .unwrap();
    let text = text(&out.stdout);
    text.trim().parse().unwrap_or(u64::MAX)
}

#[tokio::test]
async fn resource_limits_apply_and_cannot_be_lifted() {
    let script = "ulimit -n; ulimit -Hn; ulimit -u; ulimit -v; \
                  if ulimit -n 100000 2>/dev/null; then echo lifted; else echo kept; fi";
    for mode in MODES {
        let cli = Cli::new();
        let limits = [
            ("RUNBOX_LIMIT_NOFILE", "256"),
            ("RUNBOX_LIMIT_NPROC", "1000"),
            ("RUNBOX_LIMIT_AS", "4G"),
        ];
        let out = exec(&cli, mode, "s", script, &limits).await;
        assert_eq!(ok_stdout(&out), "256\n256\n1000\n4194304\nkept\n", "{mode}");
        // The defaults: 4096 files (or the executor's hard limit, if lower),
        // 4096 processes, address space as the executor has it.
        let out = exec(&cli, mode, "s", "ulimit -n; ulimit -u", &[]).await;
        let files = 4096.min(hard_nofile());
        assert_eq!(ok_stdout(&out), format!("{files}\n4096\n"), "{mode}");
        // The limit holds: a shell with 32 descriptors cannot open a 40th.
        let out = exec(
            &cli,
            mode,
            "s",
            "exec 20</dev/null && echo low-open; exec 40</dev/null && echo high-open; echo done",
            &[("RUNBOX_LIMIT_NOFILE", "32")],
        )
        .await;
        let stdout = text(&out.stdout);
        assert!(
            stdout.contains("low-open") && !stdout.contains("high-open"),
            "{mode}: {stdout}"
        );
    }
}

#[tokio::test]
async fn a_bad_limit_is_refused_before_anything_runs() {
    for (name, value) in [
        ("RUNBOX_LIMIT_NOFILE", "lots"),
        ("RUNBOX_LIMIT_NPROC", "0"),
        ("RUNBOX_LIMIT_AS", "12Q"),
        ("RUNBOX_LANDLOCK", "yes"),
    ] {
        let cli = Cli::new();
        let out = exec(&cli, "auto", "s", "touch ran", &[(name, value)]).await;
        assert_eq!(out.status.code(), Some(64), "{name}={value}");
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains(&format!("{name}=\"{value}\"")),
            "{name}={value}: {stderr}"
        );
        assert!(
            !cli.home.path().join("sessions").exists(),
            "{name}={value}: a session was created"
        );
    }
}

/// The scan a command makes of every process it can name: the
/// environment and command line of each, `/proc/1/environ`, and the
/// memory of its parent (the executor, or the namespace's init).
const SCAN: &str = r#"for f in /proc/[0-9]*/environ; do tr '\0' '\n' < "$f" 2>/dev/null | sed "s|^|ENV $f |"; done
for f in /proc/[0-9]*/cmdline; do printf 'CMD %s %s\n' "$f" "$(tr '\0' ' ' < "$f" 2>/dev/null)"; done
cat /proc/*/environ 2>/dev/null | tr '\0' '\n' | sed 's/^/ALL /'
tr '\0' '\n' < /proc/1/environ 2>/dev/null | sed 's/^/ONE /'
if (exec 3</proc/$PPID/mem) 2>/dev/null; then echo "MEM $PPID open"; else echo "MEM $PPID closed"; fi
if tr '\0' '\n' < /proc/$PPID/environ >/dev/null 2>&1; then echo "PARENT environ open"; else echo "PARENT environ closed"; fi
echo "SELF $$ $RUNBOX_SESSION_ID""#;

/// Asserts that the scan saw its own environment and nothing of the
/// dispatcher's or the executor's: no `RUNBOX_` variable but the session
/// and execution ids, no Google or emulator variable, none of `values`
/// anywhere (environment or command line), none of `env_values` in an
/// environment, and the parent's memory and environment closed. (Command
/// lines of the host's processes stay visible without the namespace: the
/// test's own emulators show their bucket there.)
fn assert_scan_clean(stdout: &str, values: &[&str], env_values: &[&str], context: &str) {
    assert!(
        stdout.lines().any(|l| l.starts_with("SELF ")),
        "{context}: the scan did not finish: {stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("ENV ") && l.contains("RUNBOX_SESSION_ID=")),
        "{context}: the scan could not read its own environment: {stdout}"
    );
    for line in stdout.lines() {
        let var = match line.split_once(' ') {
            Some(("ENV", rest)) => rest.split_once(' ').map_or("", |(_, v)| v),
            Some(("ALL" | "ONE", v)) => v,
            _ => "",
        };
        let configuration = (var.starts_with("RUNBOX_")
            && !var.starts_with("RUNBOX_SESSION_ID=")
            && !var.starts_with("RUNBOX_EXECUTION_ID="))
            || var.starts_with("GOOGLE_")
            || var.starts_with("STORAGE_EMULATOR_HOST=")
            || var.starts_with("PUBSUB_EMULATOR_HOST=")
            || var.starts_with("RUNBOX_TEST_SECRET=");
        assert!(!configuration, "{context}: {line}");
        for value in values {
            assert!(!line.contains(value), "{context}: {value} in {line}");
        }
        for value in env_values {
            assert!(!var.contains(value), "{context}: {value} in {line}");
        }
    }
    assert!(
        stdout.contains(" closed\nPARENT environ closed"),
        "{context}: {stdout}"
    );
}

/// A fake credentials file, as `GOOGLE_APPLICATION_CREDENTIALS` names one.
fn fake_credentials() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fake-sa-key.json");
    std::fs::write(
        &path,
        r#"{"type":"service_account","private_key":"k","client_email":"x@y"}"#,
    )
    .unwrap();
    (dir, path)
}

#[tokio::test]
async fn embedded_commands_find_no_credential_in_proc() {
    let (_dir, creds) = fake_credentials();
    let creds = creds.display().to_string();
    for mode in MODES {
        let cli = Cli::new();
        let home = cli.home.path().display().to_string();
        let out = exec(
            &cli,
            mode,
            "scan",
            SCAN,
            &[
                ("GOOGLE_APPLICATION_CREDENTIALS", &creds),
                ("RUNBOX_TEST_SECRET", SECRET_VALUE),
            ],
        )
        .await;
        let stdout = ok_stdout(&out);
        // Not even as root: Landlock keeps the command from tracing the
        // executor, and so from its /proc files.
        assert_scan_clean(
            &stdout,
            &[SECRET_VALUE, &creds, &format!("RUNBOX_HOME={home}")],
            &[],
            &format!("embedded, namespace {mode}"),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcp_commands_find_no_credential_in_proc() {
    let emu = within(120, Emulators::start()).await.expect("emulators");
    let home = tempfile::tempdir().unwrap();
    let (_dir, creds) = fake_credentials();
    let creds = creds.display().to_string();
    for mode in MODES {
        let mut cmd = tokio::process::Command::new(binary("runbox"));
        cmd.args(["exec", "-s", "scan", "--", SCAN])
            .envs(emu.env())
            .env("RUNBOX_HOME", home.path())
            .env("RUNBOX_KILL_GRACE_MS", "300")
            .env("RUNBOX_WORKSPACE_NAMESPACE", mode)
            .env("GOOGLE_APPLICATION_CREDENTIALS", &creds)
            .env("RUNBOX_TEST_SECRET", SECRET_VALUE)
            .kill_on_drop(true);
        let out = within(90, cmd.output()).await.unwrap();
        let stdout = ok_stdout(&out);
        assert_scan_clean(
            &stdout,
            &[SECRET_VALUE, &creds],
            &[&emu.bucket, &emu.storage_host],
            &format!("gcp, namespace {mode}"),
        );
    }
}
