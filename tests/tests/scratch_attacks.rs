//! The attacker's view of the executor's scratch files. A command can
//! write its scratch directory (the shell writes the state capture there),
//! and the executor, unconfined, writes and reads files in it by name: a
//! command that swaps one of those names for a link to a host file, a FIFO
//! or a directory must get neither host bytes into its result, log or
//! session state, nor the executor to write into a host file, nor a hang.

use std::path::{Path, PathBuf};
use std::time::Duration;

use runbox_dispatcher::{Client, ExecStatus, Session, SessionMode, SessionSettings};
use runbox_tests::embedded::{client, within};

/// What only the host file holds. Shaped like a state capture (exit code,
/// cwd, `declare -px`), so that a capture read through a link would be
/// taken for the session's state.
const SECRET: &str = "host-secret-5d1e9b";

fn secret_capture() -> Vec<u8> {
    format!("0\0/\0declare -x STOLEN=\"{SECRET}\"\n\0").into_bytes()
}

/// A host file outside `RUNBOX_HOME` that the test owns, holding the
/// secret.
fn host_file() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let file = dir.path().join("host-secret");
    std::fs::write(&file, secret_capture()).expect("write host file");
    (dir, file)
}

/// Every file under `dir` whose bytes contain the secret.
fn files_with_secret(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file()
                && std::fs::read(entry.path())
                    .is_ok_and(|b| b.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()))
            {
                found.push(entry.path());
            }
        }
    }
    found
}

/// Shell code that sets `cap` to the capture's path as the command sees
/// it (from the capture function's redirection) and `d` to its directory.
const FIND_CAPTURE: &str = r#"cap=$(declare -f __runbox_capture | sed -n "s/^ *} >| '\(.*\)' 2> .*/\1/p"); d=${cap%/*}; [ -n "$cap" ] || { echo "no capture path" >&2; exit 3; }; "#;

async fn oneshot(client: &Client, id: &str) -> Session {
    let s = client.session(id).expect("session");
    let r = within(60, s.exec("export KEEP=before")).await.unwrap();
    assert_eq!(r.exec_status(), ExecStatus::Succeeded, "{r:?}");
    s
}

/// The command replaces its capture and its stdout file with links to a
/// host file, and takes the capture trap away so the shell does not write
/// through the link: the host file's bytes appear nowhere, and the
/// session keeps the state it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_or_output_linked_to_a_host_file_leaks_nothing() {
    let (client, home) = client().await;
    let (_host, secret) = host_file();
    let s = oneshot(&client, "linker").await;
    let attack = format!(
        "{FIND_CAPTURE}trap - EXIT; ln -sfn {secret} \"$cap\"; rm -f \"$d/stdout\" \"$d/stderr\"; \
         ln -s {secret} \"$d/stdout\"; ln -s {secret} \"$d/stderr\"; echo visible; export KEEP=after",
        secret = secret.display()
    );
    let r = within(60, s.exec(attack)).await.unwrap();
    assert!(
        !format!("{r:?}").contains(SECRET),
        "the result holds the host file: {r:?}"
    );
    assert_eq!(r.stdout, "visible\n", "{r:?}");
    assert!(
        r.message.contains("state capture was refused"),
        "no note on the refused capture: {r:?}"
    );
    assert_eq!(
        files_with_secret(home.path()),
        Vec::<PathBuf>::new(),
        "host bytes were stored under RUNBOX_HOME"
    );
    // The refused capture changed nothing: the variable keeps its value.
    let r = within(60, s.exec("echo \"$KEEP ${STOLEN-unset}\""))
        .await
        .unwrap();
    assert_eq!(r.stdout, "before unset\n", "{r:?}");
    assert_eq!(std::fs::read(&secret).unwrap(), secret_capture());
}

/// A FIFO in the capture's place: the executor does not block on it; the
/// command completes with a note saying why its state was not saved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_replaced_by_a_fifo_or_a_directory_does_not_hang() {
    let (client, _home) = client().await;
    let s = oneshot(&client, "fifo").await;
    for (kind, make) in [
        ("a FIFO", "mkfifo \"$cap\""),
        ("a directory", "mkdir \"$cap\""),
    ] {
        let attack = format!("{FIND_CAPTURE}trap - EXIT; rm -f \"$cap\"; {make}; echo made");
        let r = within(60, s.exec(attack)).await.unwrap();
        assert_eq!(r.stdout, "made\n", "{r:?}");
        assert!(
            r.message.contains("state capture was refused") && r.message.contains(kind),
            "no clear note for {kind}: {r:?}"
        );
    }
    let r = within(60, s.exec("echo $KEEP")).await.unwrap();
    assert_eq!(r.stdout, "before\n", "{r:?}");
}

/// A background job of one warm command waits for the next command's
/// directory (its name is predictable) and keeps swapping that command's
/// files for links to a host file. The executor never writes the next
/// command's text, input or variables into the host file, and that
/// command either runs as asked or is refused with a message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_background_job_cannot_redirect_the_next_commands_files() {
    let (client, _home) = client().await;
    let (_host, secret) = host_file();
    let settings = SessionSettings::new(SessionMode::Warm)
        .with_idle_timeout(Duration::from_secs(60))
        .unwrap();
    within(30, client.create_session_with("swapper", settings))
        .await
        .unwrap();
    let s = client.session("swapper").unwrap();
    let mut refused = 0;
    for round in 0..3 {
        // Bounded: the job gives up after a fixed number of tries.
        let plant = format!(
            r#"wait; n=${{__runbox_dir##*/c}}; next="${{__runbox_dir%/*}}/c$((n+1))"
( i=0; until [ -d "$next" ] || [ $i -ge 200000 ]; do i=$((i+1)); done
  for j in $(seq 300); do for f in command.sh stdin env undo.sh capture; do ln -sfn {secret} "$next/$f" 2>/dev/null; done; done ) </dev/null >/dev/null 2>&1 &
echo planted"#,
            secret = secret.display()
        );
        let r = within(60, s.exec(plant)).await.unwrap();
        assert!(
            !format!("{r:?}").contains(SECRET),
            "host bytes in the result: {r:?}"
        );
        if r.exec_status() != ExecStatus::Succeeded {
            // The previous round's job swapped this command's files (a
            // refused command's directory name is used again): refused
            // too, which is what the attack may earn.
            assert!(!r.message.is_empty(), "refused without a reason: {r:?}");
            refused += 1;
            continue;
        }
        let r = within(
            60,
            s.exec("read -r line; echo \"got $line $VAR\"")
                .env("VAR", "v")
                .stdin(format!("input-{round}\n")),
        )
        .await
        .unwrap();
        assert!(
            !format!("{r:?}").contains(SECRET),
            "host bytes in the result: {r:?}"
        );
        match r.exec_status() {
            ExecStatus::Succeeded => {
                assert_eq!(r.stdout, format!("got input-{round} v\n"), "{r:?}")
            }
            ExecStatus::Rejected | ExecStatus::Failed => {
                assert!(
                    r.message.contains("command directory")
                        || r.message.contains("file")
                        || r.message.contains("no longer named"),
                    "refused without a clear reason: {r:?}"
                );
                refused += 1;
            }
            other => panic!("unexpected {other:?}: {r:?}"),
        }
        assert_eq!(
            std::fs::read(&secret).unwrap(),
            secret_capture(),
            "the executor wrote into the host file"
        );
    }
    eprintln!("{refused} commands were refused");
    // The session still works once the jobs are done (`wait`: they are
    // the shell's own jobs); a command whose files the last job swapped is
    // refused, and the one after it runs.
    let mut alive = false;
    for _ in 0..3 {
        let r = within(60, s.exec("wait; echo alive")).await.unwrap();
        if r.stdout == "alive\n" {
            alive = true;
            break;
        }
        assert!(!r.message.is_empty(), "{r:?}");
    }
    assert!(alive, "the session never ran a command again");
    within(30, client.close_session("swapper")).await.unwrap();
}
