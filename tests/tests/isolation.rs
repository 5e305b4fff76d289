//! Nothing of the dispatcher or the executor reaches the command, seen from
//! the command: it walks every ancestor process up to pid 1 and tries to
//! read its environment, memory map and memory through `/proc`. Runs on the
//! embedded backend and on the emulators (gcp backend, executors as local
//! child processes). When the tests run as root, the command must also run
//! as an unprivileged user that cannot read the executor's files.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

use runbox_tests::cli::{Cli, text};
use runbox_tests::embedded::{binary, within};
use runbox_tests::harness::Emulators;

/// The command: one `PROC` line per ancestor (from its own shell up), then
/// that process's environment as `ENV pid KEY=VALUE` lines where readable.
/// Opening `mem` needs the same access as reading it, without guessing a
/// mapped address.
const WALK: &str = r#"p=$$
while [ "$p" -gt 1 ]; do
  cmd=$(tr '\0' ' ' < /proc/$p/cmdline | head -c 200)
  if env=$(tr '\0' '\n' < /proc/$p/environ) 2>/dev/null; then e=readable; else e=denied; fi
  if head -c1 /proc/$p/maps >/dev/null 2>&1; then m=readable; else m=denied; fi
  if (exec 3</proc/$p/mem) 2>/dev/null; then k=readable; else k=denied; fi
  printf 'PROC %s environ=%s maps=%s mem=%s cmd=%s\n' "$p" "$e" "$m" "$k" "$cmd"
  [ "$e" = readable ] && printf '%s\n' "$env" | sed "s/^/ENV $p /"
  p=$(sed 's/.*) //' /proc/$p/stat | cut -d' ' -f2)
done"#;

/// A value only the CLI's environment holds.
const SECRET: &str = "SECRET_TOKEN";

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the effective user.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// One ancestor as the command saw it.
#[derive(Debug)]
struct Ancestor {
    pid: String,
    environ: bool,
    maps: bool,
    mem: bool,
    cmd: String,
    env: Vec<String>,
}

fn ancestors(stdout: &str) -> Vec<Ancestor> {
    let mut out: Vec<Ancestor> = Vec::new();
    for line in stdout.lines() {
        if let Some(rest) = line.strip_prefix("PROC ") {
            let field = |name: &str| {
                rest.split(' ')
                    .find_map(|w| w.strip_prefix(name))
                    .is_some_and(|v| v == "readable")
            };
            out.push(Ancestor {
                pid: rest.split(' ').next().unwrap_or_default().to_owned(),
                environ: field("environ="),
                maps: field("maps="),
                mem: field("mem="),
                cmd: rest
                    .split_once("cmd=")
                    .map_or_else(String::new, |(_, c)| c.to_owned()),
                env: Vec::new(),
            });
        } else if let Some(rest) = line.strip_prefix("ENV ") {
            let (pid, var) = rest.split_once(' ').unwrap_or((rest, ""));
            if let Some(a) = out.iter_mut().rev().find(|a| a.pid == pid) {
                a.env.push(var.to_owned());
            }
        }
    }
    out
}

/// Asserts the attacker's view: the walk worked (its own shell's
/// environment was readable, the executor and the CLI were seen), no
/// runbox process exposed its environment, map or memory, and no variable
/// of runbox's configuration or the caller's secret showed anywhere.
/// `values` are strings only the CLI's environment holds.
fn assert_nothing_leaks(out: &Output, values: &[&str]) -> Vec<Ancestor> {
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        text(&out.stderr)
    );
    let chain = ancestors(&stdout);
    let own = chain.first().expect("the walk printed nothing");
    assert!(
        own.environ && own.env.iter().any(|v| v.starts_with("RUNBOX_SESSION_ID=")),
        "the probe could not read the command's own environment: {own:?}"
    );
    let Some(executor) = chain.iter().position(|a| a.cmd.contains("runbox-executor")) else {
        // In its workspace namespace the command has a PID namespace of
        // its own: the walk ends below that namespace's init, every
        // process it met is the command's own, and the executor and the
        // CLI are out of sight altogether.
        for a in &chain {
            assert!(
                a.env.iter().any(|v| v.starts_with("RUNBOX_EXECUTION_ID=")),
                "an ancestor that is not the command's: {a:?}"
            );
        }
        assert_no_configuration(&chain);
        assert_no_values(&chain, values);
        return chain;
    };
    let cli_path = binary("runbox").display().to_string();
    let cli = chain
        .iter()
        .position(|a| a.cmd.starts_with(&format!("{cli_path} ")))
        .unwrap_or_else(|| panic!("no runbox CLI among the ancestors: {chain:#?}"));
    assert!(executor < cli, "{chain:#?}");
    for a in &chain[executor..=cli] {
        assert!(
            !a.environ && !a.maps && !a.mem,
            "runbox process {} ({}) is readable: {a:?}",
            a.pid,
            a.cmd
        );
    }
    assert_no_configuration(&chain[..=cli]);
    assert_no_values(&chain, values);
    chain
}

/// No variable of runbox's configuration or the caller's secret in the
/// environment of any of `chain`.
fn assert_no_configuration(chain: &[Ancestor]) {
    for a in chain {
        for var in &a.env {
            let configuration = (var.starts_with("RUNBOX_")
                && !var.starts_with("RUNBOX_SESSION_ID=")
                && !var.starts_with("RUNBOX_EXECUTION_ID="))
                || var.starts_with("GOOGLE_")
                || var.starts_with("STORAGE_EMULATOR_HOST=")
                || var.starts_with("PUBSUB_EMULATOR_HOST=")
                || var.starts_with(&format!("{SECRET}="));
            assert!(!configuration, "process {} ({}) shows {var}", a.pid, a.cmd);
        }
    }
}

/// None of `values` in the environment of any of `chain`.
fn assert_no_values(chain: &[Ancestor], values: &[&str]) {
    for a in chain {
        for var in &a.env {
            for value in values {
                assert!(
                    !var.contains(value),
                    "process {} ({}) shows {var}",
                    a.pid,
                    a.cmd
                );
            }
        }
    }
}

/// A directory only root can enter, holding a file `secret`.
fn private_dir(content: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), content).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

/// `RUNBOX_HOME` reachable by every user, as a switch to another user on
/// the embedded backend needs.
fn open_home(cli: &Cli) -> &Path {
    std::fs::set_permissions(cli.home.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    cli.home.path()
}

#[tokio::test]
async fn embedded_commands_cannot_read_the_cli_or_the_executor() {
    let cli = Cli::new();
    let secret = format!("xyz-{}", std::process::id());
    let home = cli.home.path().display().to_string();
    let mut cmd = cli.command(&["exec", "-s", "walk", "--", WALK]);
    cmd.env(SECRET, &secret);
    if is_root() {
        // root reads every process: only another user keeps them closed.
        open_home(&cli);
        cmd.env("RUNBOX_RUN_AS_USER", "nobody");
    }
    let out = within(60, cmd.output()).await.unwrap();
    assert_nothing_leaks(&out, &[&secret, &format!("RUNBOX_HOME={home}")]);
}

#[tokio::test]
async fn the_issue_reproduction_prints_no_secret() {
    let cli = Cli::new();
    let mut cmd = cli.command(&[
        "exec",
        "--",
        r#"tr "\0" "\n" </proc/$(ps -o ppid= -p $PPID|tr -d " ")/environ"#,
    ]);
    cmd.env(SECRET, "xyz");
    if is_root() {
        open_home(&cli);
        cmd.env("RUNBOX_RUN_AS_USER", "nobody");
    }
    let out = within(60, cmd.output()).await.unwrap();
    assert!(
        !text(&out.stdout).contains("SECRET_TOKEN=xyz"),
        "{}",
        text(&out.stdout)
    );
    // Closed (`Permission denied`), or, in the workspace namespace, not
    // there at all: the parent of the namespace's init is pid 0.
    assert!(
        text(&out.stderr).contains("Permission denied")
            || text(&out.stderr).contains("/proc/0/environ: No such file"),
        "stdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// As root (CI), the embedded backend with `RUNBOX_RUN_AS_USER=nobody`:
/// the command runs as nobody in a workspace it owns, and can read neither
/// the executor's temporary directory nor another session's state.
#[tokio::test]
async fn as_root_the_command_runs_as_the_configured_user() {
    if !is_root() {
        eprintln!("not root: the switch is covered by the executor's identity unit tests");
        return;
    }
    let cli = Cli::new();
    let home = open_home(&cli).to_owned();
    let private = private_dir("executor-only");
    let run = |session: &str, script: &str| {
        let mut cmd = cli.command(&["exec", "-s", session, "--", script]);
        cmd.env("RUNBOX_RUN_AS_USER", "nobody")
            .env("TMPDIR", private.path());
        async move { within(60, cmd.output()).await.unwrap() }
    };
    let out = run("other", "export KEEP=1").await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let other_state = home.join("sessions/other/state.json");
    let before = std::fs::read(&other_state).unwrap();

    let script = format!(
        "id -u; id -G; echo user=$USER; touch mine && stat -c %u mine; \
         cat {secret} || echo no-secret; ls {dir} || echo no-listing; \
         echo forged > {state} || echo no-state; \
         case $TMPDIR in {dir}*) echo shared-tmp;; *) echo own-tmp;; esac",
        secret = private.path().join("secret").display(),
        dir = private.path().display(),
        state = other_state.display(),
    );
    let out = run("mine", &script).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "65534",
            "65534",
            "user=nobody",
            "65534",
            "no-secret",
            "no-listing",
            "no-state",
            "own-tmp"
        ],
        "{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read(&other_state).unwrap(), before);
    let out = run("other", "echo $KEEP").await;
    assert_eq!(text(&out.stdout), "1\n", "{}", text(&out.stderr));
}

async fn emulators() -> Emulators {
    within(120, Emulators::start()).await.expect("emulators")
}

/// On the emulators: the same walk, with a credentials file named by
/// `GOOGLE_APPLICATION_CREDENTIALS`; as root, with the switch to `nobody`
/// (a Cloud Run task's default, asked for under the local launcher), the
/// credentials file cannot be read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcp_commands_cannot_read_configuration_or_credentials() {
    let emu = emulators().await;
    let home = tempfile::tempdir().unwrap();
    let secret = format!("xyz-{}", std::process::id());
    let creds_dir = private_dir("{\"type\":\"service_account\",\"private_key\":\"k\"}");
    let creds = creds_dir.path().join("secret");
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
    let run = |script: String| {
        let mut cmd = tokio::process::Command::new(binary("runbox"));
        cmd.args(["exec", "-s", "walk", "--", &script])
            .envs(emu.env())
            .env("RUNBOX_HOME", home.path())
            .env("RUNBOX_KILL_GRACE_MS", "300")
            .env("GOOGLE_APPLICATION_CREDENTIALS", &creds)
            .env(SECRET, &secret)
            .kill_on_drop(true);
        if is_root() {
            cmd.env("RUNBOX_RUN_AS_USER", "nobody");
        }
        async move { within(90, cmd.output()).await.unwrap() }
    };
    let out = run(WALK.to_owned()).await;
    assert_nothing_leaks(
        &out,
        &[
            &secret,
            &emu.bucket,
            &emu.storage_host,
            &creds.display().to_string(),
        ],
    );
    if is_root() {
        let out = run(format!(
            "id -u; cat {} || echo no-credentials",
            creds.display()
        ))
        .await;
        assert_eq!(
            text(&out.stdout),
            "65534\nno-credentials\n",
            "{}",
            text(&out.stderr)
        );
    }
}

/// A Cloud Run task: the executor configured by its environment (as the
/// job template gives it), on the emulators' bucket. Run as root, it starts
/// the command as `nobody` without being asked, and the command sees
/// neither the executor's environment nor its private `TMPDIR`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_root_a_cloud_run_task_runs_the_command_as_nobody() {
    use runbox_core::store::{PutOptions, get_json, put_json};
    use runbox_core::{InstanceId, layout};
    use runbox_proto::{ExecRequest, ExecResult};

    if !is_root() {
        eprintln!("not root: the default switch is covered by the executor's identity unit tests");
        return;
    }
    let emu = emulators().await;
    let store = emu.store();
    let id = InstanceId::random().next_execution_id();
    let private = private_dir("executor-only");
    let workspaces = tempfile::tempdir().unwrap();
    std::fs::set_permissions(workspaces.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let request = ExecRequest {
        execution_id: id.to_string(),
        session_id: "task".to_owned(),
        command: format!(
            "id -u; touch made; stat -c %U made; cat {} || echo no-secret; \
             tr '\\0' '\\n' < /proc/$PPID/environ || echo no-environ",
            private.path().join("secret").display()
        ),
        timeout_ms: 30_000,
        ..Default::default()
    };
    within(
        30,
        put_json(
            &store,
            &layout::request(&id),
            &request,
            PutOptions::create(),
        ),
    )
    .await
    .unwrap();
    let mut task = tokio::process::Command::new(binary("runbox-executor"));
    task.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(emu.env())
        .env("RUNBOX_EXECUTION_ID", id.as_str())
        .env("RUNBOX_WORKSPACE_DIR", workspaces.path())
        .env("TMPDIR", private.path())
        .kill_on_drop(true);
    let out = within(60, task.output()).await.unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let result: ExecResult = within(30, get_json(&store, &layout::result(&id), "ExecResult"))
        .await
        .unwrap()
        .value;
    assert_eq!(
        result.stdout, "65534\nnobody\nno-secret\nno-environ\n",
        "{result:?}"
    );
}
