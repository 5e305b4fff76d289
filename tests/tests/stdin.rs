//! Standard input reaches the command (issue 9, item 8): through the CLI
//! (`echo hi | runbox exec -- cat`) and the library (`Exec::stdin`), on the
//! embedded backend and on the emulator stack; capped by
//! `RUNBOX_STDIN_CAP_BYTES`, refused past the cap before anything is
//! written; never read from a terminal.

use std::os::unix::fs::OpenOptionsExt;
use std::process::Stdio;

use runbox_core::{Config, layout};
use runbox_dispatcher::{Client, Error, ExecStatus};
use runbox_tests::cli::{Cli, text};
use runbox_tests::embedded::{binary, config, within};
use runbox_tests::harness::Emulators;

/// Every byte value, several times over: stdin is bytes, not text.
fn binary_input() -> Vec<u8> {
    (0..=255u8).cycle().take(256 * 40 + 7).collect()
}

/// Names of the request objects (`requests/…`) in an embedded home.
fn request_objects(home: &std::path::Path) -> Vec<String> {
    match std::fs::read_dir(home.join("requests")) {
        Ok(dir) => dir
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn piped_stdin_reaches_the_command() {
    let cli = Cli::new();
    // The reproduction.
    let out = cli.run_with(&["exec", "--", "cat"], b"hi\n").await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hi\n");

    // Exact bytes, not text; the session keeps working as before.
    let input = binary_input();
    let out = cli
        .run_with(&["exec", "-s", "b", "--", "cat"], &input)
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(out.stdout, input);

    // A command that does not read its input is not held up by it.
    let out = cli
        .run_with(&["exec", "-s", "b", "--", "echo ignored"], &input)
        .await;
    assert_eq!(text(&out.stdout), "ignored\n");

    // The input is stored beside the request, and only when there is one.
    let stdin_objects = request_objects(cli.home.path())
        .into_iter()
        .filter(|n| n.ends_with(".stdin"))
        .count();
    assert_eq!(stdin_objects, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_and_null_stdin_read_as_empty() {
    let cli = Cli::new();
    // `run` gives runbox /dev/null as its stdin.
    let out = cli.exec("n", "cat; echo end").await;
    assert_eq!(text(&out.stdout), "end\n", "{}", text(&out.stderr));
    let out = cli.run_with(&["exec", "-s", "n", "--", "wc -c"], b"").await;
    assert_eq!(text(&out.stdout).trim(), "0", "{}", text(&out.stderr));
    assert!(
        !request_objects(cli.home.path())
            .iter()
            .any(|n| n.ends_with(".stdin")),
        "an empty stdin was stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_is_not_read() {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let cli = Cli::new();
    // A terminal nobody types on: were runbox to read it, it would wait
    // forever and `within` would fail the test.
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).expect("openpt");
    grantpt(&master).expect("grantpt");
    unlockpt(&master).expect("unlockpt");
    let name = ptsname(&master, Vec::new()).expect("ptsname");
    let terminal = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(name.to_str().expect("pty name"))
        .expect("open the terminal");
    let out = within(
        60,
        cli.command(&["exec", "-s", "t", "--", "cat; echo end"])
            .stdin(Stdio::from(terminal))
            .output(),
    )
    .await
    .expect("run runbox");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "end\n");
    drop(master);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_over_the_cap_is_refused_before_anything_is_written() {
    let cli = Cli::new();
    let run = |input: Vec<u8>| {
        let mut cmd = cli.command(&["exec", "-s", "cap", "--", "wc -c"]);
        cmd.env("RUNBOX_STDIN_CAP_BYTES", "1000")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        async move {
            let mut child = cmd.spawn().expect("spawn runbox");
            let mut stdin = child.stdin.take().expect("stdin");
            // Written from a task: runbox stops reading past the cap, and
            // the writer must not block the wait on it.
            let writer = tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let _ = stdin.write_all(&input).await;
            });
            let out = within(60, child.wait_with_output())
                .await
                .expect("wait for runbox");
            within(10, writer).await.expect("writer");
            out
        }
    };
    let out = run(vec![b'x'; 1000]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "1000");
    let written = request_objects(cli.home.path()).len();

    let out = run(vec![b'x'; 1001]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("RUNBOX_STDIN_CAP_BYTES") && err.contains("1000"),
        "{err}"
    );
    assert_eq!(out.stdout, b"");
    assert_eq!(request_objects(cli.home.path()).len(), written);

    // A bad cap is bad configuration.
    let out = within(
        60,
        cli.command(&["exec", "--", "true"])
            .env("RUNBOX_STDIN_CAP_BYTES", "-1")
            .output(),
    )
    .await
    .expect("run runbox");
    assert_eq!(out.status.code(), Some(64));
    assert!(text(&out.stderr).contains("RUNBOX_STDIN_CAP_BYTES"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_library_gives_stdin_to_one_command() {
    let home = tempfile::tempdir().unwrap();
    let mut limits = config(home.path()).limits;
    limits.stdin_cap = 64 * 1024;
    let client = within(
        60,
        Client::from_config(config(home.path()).with_limits(limits)),
    )
    .await
    .expect("client");
    let s = client.session("lib").unwrap();
    let input = binary_input();
    let r = within(60, s.exec("cat | od -An -tx1 | wc -l").stdin(input.clone()))
        .await
        .unwrap();
    assert_eq!(r.exec_status(), ExecStatus::Succeeded, "{}", r.message);
    // od prints 16 bytes per line.
    assert_eq!(r.stdout.trim(), input.len().div_ceil(16).to_string());
    // The next command of the session has no stdin of its own.
    let r = within(60, s.exec("wc -c")).await.unwrap();
    assert_eq!(r.stdout.trim(), "0");

    let before = request_objects(home.path()).len();
    let err = within(60, s.exec("cat").stdin(vec![0u8; 64 * 1024 + 1]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::StdinTooLarge { max: 65536 }),
        "{err:?}"
    );
    assert_eq!(request_objects(home.path()).len(), before);

    // Retention removes the input with its request.
    within(60, client.gc(std::time::Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(request_objects(home.path()), Vec::<String>::new());
    within(60, client.shutdown()).await;
}

async fn emulators() -> Emulators {
    within(120, Emulators::start()).await.expect("emulators")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_travels_through_the_bucket_on_gcp() {
    let emu = emulators().await;
    let home = tempfile::tempdir().unwrap();
    let mut env = emu.env();
    env.insert("RUNBOX_HOME".into(), home.path().display().to_string());
    env.insert(
        "RUNBOX_EXECUTOR".into(),
        binary("runbox-executor").display().to_string(),
    );
    let client = within(
        60,
        Client::from_config(Config::from_lookup(&env).expect("config")),
    )
    .await
    .expect("client");
    let s = client.session("gcpin").unwrap();
    let input = binary_input();
    let r = within(60, s.exec("cat > got && wc -c < got").stdin(input.clone()))
        .await
        .unwrap();
    assert_eq!(r.exec_status(), ExecStatus::Succeeded, "{}", r.message);
    assert_eq!(r.stdout.trim(), input.len().to_string());
    // The command's file went back to the bucket byte for byte.
    let got = s.read_file_bytes("got").await.unwrap();
    assert_eq!(got.as_ref(), &input[..]);
    // The input object is the request's neighbour.
    let id = runbox_core::ExecutionId::new(&r.execution_id).unwrap();
    let stored = emu.store();
    let obj = runbox_core::Store::get(&stored, &layout::request_stdin(&id))
        .await
        .unwrap();
    assert_eq!(obj.data.as_ref(), &input[..]);
    within(60, client.shutdown()).await;

    // The CLI on the same stack: the reproduction.
    let out = within(60, async {
        let mut child = tokio::process::Command::new(binary("runbox"))
            .args(["exec", "-s", "gcpcli", "--", "cat"])
            .envs(emu.env())
            .env("RUNBOX_HOME", home.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn runbox");
        let mut stdin = child.stdin.take().expect("stdin");
        tokio::io::AsyncWriteExt::write_all(&mut stdin, b"hi\n")
            .await
            .expect("write stdin");
        drop(stdin);
        child.wait_with_output().await.expect("wait for runbox")
    })
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hi\n");
}
