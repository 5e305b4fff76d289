//! `runbox files ...` through the binary, on the embedded backend: each
//! subcommand's shape, its output and exit status, and errors with the exit
//! status of their kind (2 bad input, 66 not found) and a message on stderr.

use runbox_tests::cli::{Cli, text};

/// Runs a subcommand that must succeed; returns its stdout.
trait Ok {
    async fn ok(&self, args: &[&str]) -> String;
}

impl Ok for Cli {
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.status.success(),
            "{args:?}: {:?}\n{}",
            out.status,
            text(&out.stderr)
        );
        text(&out.stdout)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subcommand_has_its_shape() {
    let cli = Cli::new();
    // write (stdin), --append; read, --lines.
    let out = cli
        .run_with(&["files", "write", "-s", "f", "notes/a.txt"], b"one\ntwo\n")
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = cli
        .run_with(
            &["files", "write", "-s", "f", "notes/a.txt", "--append"],
            b"three\n",
        )
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        cli.ok(&["files", "read", "-s", "f", "notes/a.txt"]).await,
        "one\ntwo\nthree\n"
    );
    assert_eq!(
        cli.ok(&["files", "read", "-s", "f", "notes/a.txt", "--lines", "2:3"])
            .await,
        "two\nthree\n"
    );
    assert_eq!(
        cli.ok(&["files", "read", "-s", "f", "notes/a.txt", "--lines", "3:"])
            .await,
        "three\n"
    );
    assert_eq!(
        cli.ok(&["files", "read", "-s", "f", "notes/a.txt", "--lines", ":1"])
            .await,
        "one\n"
    );

    // ls, with and without a path.
    let out = cli
        .run_with(&["files", "write", "-s", "f", "top.py"], b"print(1)\n")
        .await;
    assert!(out.status.success());
    let ls = cli.ok(&["files", "ls", "-s", "f"]).await;
    let rows: Vec<Vec<&str>> = ls.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(
        rows,
        [vec!["dir", "-", "notes/"], vec!["file", "9", "top.py"]],
        "{ls}"
    );
    let ls = cli.ok(&["files", "ls", "-s", "f", "notes"]).await;
    assert_eq!(
        ls.split_whitespace().collect::<Vec<_>>(),
        ["file", "14", "a.txt"]
    );

    // find, --in.
    assert_eq!(
        cli.ok(&["files", "find", "-s", "f", "**/*.txt"]).await,
        "notes/a.txt\n"
    );
    assert_eq!(
        cli.ok(&["files", "find", "-s", "f", "*", "--in", "notes"])
            .await,
        "notes/a.txt\n"
    );

    // grep: N:line; no match exits 1.
    assert_eq!(
        cli.ok(&["files", "grep", "-s", "f", "^t", "notes/a.txt"])
            .await,
        "2:two\n3:three\n"
    );
    let out = cli
        .run(&["files", "grep", "-s", "f", "zzz", "notes/a.txt"])
        .await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout), "");

    // replace: the first occurrence, or --all; prints the count.
    assert_eq!(
        cli.ok(&["files", "replace", "-s", "f", "notes/a.txt", "o", "0"])
            .await,
        "1\n"
    );
    assert_eq!(
        cli.ok(&[
            "files",
            "replace",
            "-s",
            "f",
            "notes/a.txt",
            "e",
            "E",
            "--all"
        ])
        .await,
        "3\n"
    );
    assert_eq!(
        cli.ok(&["files", "read", "-s", "f", "notes/a.txt"]).await,
        "0nE\ntwo\nthrEE\n"
    );

    // put and get, to a file and to stdout.
    let local = cli.home.path().join("local.bin");
    let data: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    std::fs::write(&local, &data).unwrap();
    cli.ok(&[
        "files",
        "put",
        "-s",
        "f",
        local.to_str().unwrap(),
        "bin/data.bin",
    ])
    .await;
    let back = cli.home.path().join("back.bin");
    cli.ok(&[
        "files",
        "get",
        "-s",
        "f",
        "bin/data.bin",
        back.to_str().unwrap(),
    ])
    .await;
    assert!(std::fs::read(&back).unwrap() == data);
    let out = cli.run(&["files", "get", "-s", "f", "bin/data.bin"]).await;
    assert!(out.status.success());
    assert!(out.stdout == data);
    let out = cli
        .run(&["files", "get", "-s", "f", "bin/data.bin", "-"])
        .await;
    assert!(out.stdout == data);

    // exists: the answer is the exit status.
    for (path, code) in [("notes/a.txt", 0), ("notes", 0), ("nothing", 1)] {
        let out = cli.run(&["files", "exists", "-s", "f", path]).await;
        assert_eq!(out.status.code(), Some(code), "{path}");
        assert_eq!(text(&out.stdout), "");
    }

    // rm, -r.
    cli.ok(&["files", "rm", "-s", "f", "top.py"]).await;
    // The message names the flag, not the library's option.
    let out = cli.run(&["files", "rm", "-s", "f", "notes"]).await;
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("delete it with `runbox files rm -r`") && !err.contains("`recursive`"),
        "{err}"
    );
    cli.ok(&["files", "rm", "-s", "f", "notes", "-r"]).await;
    let ls = cli.ok(&["files", "ls", "-s", "f"]).await;
    assert_eq!(
        ls.split_whitespace().collect::<Vec<_>>(),
        ["dir", "-", "bin/"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_exit_with_their_kind_and_a_message() {
    let cli = Cli::new();
    let out = cli
        .run_with(&["files", "write", "-s", "e", "a.txt"], b"x\n")
        .await;
    assert!(out.status.success());
    let missing_local = cli.home.path().join("no-such-local-file");
    let missing_local = missing_local.to_str().unwrap();
    for (args, says, code) in [
        (
            vec!["files", "read", "-s", "e", "../../etc/passwd"],
            "leaves the workspace",
            2,
        ),
        (
            vec!["files", "read", "-s", "e", "/etc/passwd"],
            "outside the workspace",
            2,
        ),
        (
            vec!["files", "read", "-s", "e", "missing.txt"],
            "no such file",
            66,
        ),
        (
            vec!["files", "rm", "-s", "e", "missing.txt"],
            "no such file",
            66,
        ),
        (
            vec!["files", "read", "-s", "nobody", "a.txt"],
            "no such file",
            66,
        ),
        (
            vec!["files", "put", "-s", "e", missing_local, "x.txt"],
            "no-such-local-file",
            66,
        ),
        (
            vec!["files", "grep", "-s", "e", "(", "a.txt"],
            "invalid regular expression",
            2,
        ),
        (vec!["files", "find", "-s", "e", "../*"], "invalid glob", 2),
        (
            vec!["files", "ls", "-s", "e", "a.txt"],
            "not a directory",
            2,
        ),
        (
            vec!["files", "read", "-s", "bad id!", "a.txt"],
            "invalid session id",
            2,
        ),
    ] {
        let out = cli.run(&args).await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.starts_with("runbox: "), "{stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert_eq!(text(&out.stdout), "");
    }
    // Nothing was written by the bad writes either.
    let out = cli
        .run_with(&["files", "write", "-s", "e", "../escape.txt"], b"x")
        .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(!cli.home.path().join("sessions/escape.txt").exists());
    // A download of a missing file creates no local file.
    let local = cli.home.path().join("never.bin");
    let out = cli
        .run(&[
            "files",
            "get",
            "-s",
            "e",
            "missing",
            local.to_str().unwrap(),
        ])
        .await;
    assert_eq!(out.status.code(), Some(66));
    assert!(!local.exists());
    // Bad usage is clap's exit 2. (A missing `-s` is not: the session
    // defaults to `default`, as for `exec`.)
    for args in [
        vec!["files", "read", "-s", "e", "a.txt", "--lines", "0:2"],
        vec!["files", "read", "-s", "e", "a.txt", "--lines", "3:2"],
        vec!["files", "replace", "-s", "e", "a.txt", "only-old"],
    ] {
        assert_eq!(cli.run(&args).await.status.code(), Some(2), "{args:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_and_files_see_each_other() {
    let cli = Cli::new();
    let out = cli
        .run_with(
            &["files", "write", "-s", "both", "script.sh"],
            b"echo from the script\n",
        )
        .await;
    assert!(out.status.success());
    let out = cli
        .run(&["exec", "-s", "both", "--", "bash script.sh > made.txt"])
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        cli.ok(&["files", "read", "-s", "both", "made.txt"]).await,
        "from the script\n"
    );
}
