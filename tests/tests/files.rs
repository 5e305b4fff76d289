//! The workspace file API (`Session::read_file`, `write_file`, …) on the
//! embedded backend and on the emulators (objects in fake-gcs-server):
//! every operation, an agent's write → run → read loop (embedded: commands
//! use the very files), and bad input, each refused with a typed error
//! without touching any object.

use std::collections::BTreeMap;
use std::future::IntoFuture;
use std::io::Cursor;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use runbox_core::store::list_all;
use runbox_core::workspace_path::PathError;
use runbox_core::{Config, ObjectMeta, SessionId, Store, layout};
use runbox_dispatcher::files::{
    DeleteOptions, EntryKind, FileError, ReadOptions, ReplaceOptions, UploadOptions, WriteOptions,
};
use runbox_dispatcher::{Client, Error, ExecStatus, Session};
use runbox_tests::embedded::{self, binary, within};
use runbox_tests::harness::Emulators;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

/// Seconds any single file operation may take.
const OP_SECS: u64 = 30;

/// Awaits one operation under the per-operation timeout.
async fn op<F: IntoFuture>(fut: F) -> F::Output {
    within(OP_SECS, fut).await
}

/// The file error inside a failed call; panics on success or another error.
fn file_err<T: std::fmt::Debug>(r: Result<T, Error>) -> FileError {
    match r {
        Err(Error::File(e)) => e,
        other => panic!("expected a file error, got {other:?}"),
    }
}

fn path_err<T: std::fmt::Debug>(r: Result<T, Error>) -> PathError {
    match file_err(r) {
        FileError::Path(e) => e,
        other => panic!("expected a path error, got {other:?}"),
    }
}

/// Deterministic, non-repeating-looking bytes.
fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 7)) as u8)
        .collect()
}

async fn read_all(session: &Session, path: &str) -> String {
    op(session.read_file(path, ReadOptions::default()))
        .await
        .unwrap_or_else(|e| panic!("read {path}: {e}"))
        .content
}

// ----- the suites, run on each backend -------------------------------------

/// Every operation, through the API only.
async fn every_operation(session: &Session, store: &dyn Store) {
    let s = session;

    // write + read, and where the object lands.
    let info = op(s.write_file("notes/todo.txt", "a\nb\nc\n", WriteOptions::default()))
        .await
        .unwrap();
    assert_eq!((info.path.as_str(), info.size), ("notes/todo.txt", 6));
    let object = format!("{}notes/todo.txt", layout::workspace_prefix(s.id()));
    assert_eq!(op(store.head(&object)).await.unwrap().size, 6);
    let text = op(s.read_file("notes/todo.txt", ReadOptions::default()))
        .await
        .unwrap();
    assert_eq!(text.content, "a\nb\nc\n");
    assert_eq!(
        (text.total_lines, text.truncated, text.lossy, text.size),
        (3, false, false, 6)
    );

    // Line ranges and lengths.
    let read = |start, end, max: Option<usize>| {
        let mut opts = ReadOptions::default().lines(start, end);
        opts.max_length = max;
        s.read_file("notes/todo.txt", opts)
    };
    let t = op(read(Some(2), Some(3), None)).await.unwrap();
    assert_eq!((t.content.as_str(), t.total_lines), ("b\nc\n", 3));
    assert_eq!(
        op(read(Some(2), Some(2), None)).await.unwrap().content,
        "b\n"
    );
    assert_eq!(op(read(None, Some(1), None)).await.unwrap().content, "a\n");
    assert_eq!(op(read(Some(3), None, None)).await.unwrap().content, "c\n");
    let past = op(read(Some(10), None, None)).await.unwrap();
    assert_eq!((past.content.as_str(), past.total_lines), ("", 3));
    let cut = op(read(None, None, Some(3))).await.unwrap();
    assert_eq!((cut.content.as_str(), cut.truncated), ("a\nb", true));
    let exact = op(read(None, None, Some(6))).await.unwrap();
    assert_eq!(
        (exact.content.as_str(), exact.truncated),
        ("a\nb\nc\n", false)
    );
    assert!(matches!(
        file_err(op(read(Some(0), None, None)).await),
        FileError::InvalidLineRange { start: 0, .. }
    ));
    assert!(matches!(
        file_err(op(read(Some(3), Some(2), None)).await),
        FileError::InvalidLineRange { start: 3, end: 2 }
    ));

    // Multi-byte text is cut on a character boundary, not flagged lossy.
    op(s.write_file("utf8.txt", "é€😀\n", WriteOptions::default()))
        .await
        .unwrap();
    let t = op(s.read_file("utf8.txt", ReadOptions::default().max_length(4)))
        .await
        .unwrap();
    assert_eq!(
        (t.content.as_str(), t.truncated, t.lossy),
        ("é", true, false)
    );

    // Line counts at the edges.
    op(s.write_file("no-newline.txt", "x\ny", WriteOptions::default()))
        .await
        .unwrap();
    assert_eq!(
        op(s.read_file("no-newline.txt", ReadOptions::default()))
            .await
            .unwrap()
            .total_lines,
        2
    );
    op(s.write_file("empty.txt", "", WriteOptions::default()))
        .await
        .unwrap();
    let t = op(s.read_file("empty.txt", ReadOptions::default()))
        .await
        .unwrap();
    assert_eq!((t.content.as_str(), t.total_lines, t.size), ("", 0, 0));

    // Append, to an existing file and to a missing one; newline options.
    op(s.write_file("notes/todo.txt", "d\n", WriteOptions::append()))
        .await
        .unwrap();
    assert_eq!(read_all(s, "notes/todo.txt").await, "a\nb\nc\nd\n");
    op(s.write_file(
        "log.txt",
        "first",
        WriteOptions::append().trailing_newline(),
    ))
    .await
    .unwrap();
    op(s.write_file(
        "log.txt",
        "second",
        WriteOptions::append().leading_newline(),
    ))
    .await
    .unwrap();
    assert_eq!(read_all(s, "log.txt").await, "first\n\nsecond");
    // Overwrite replaces.
    op(s.write_file("log.txt", "new", WriteOptions::default()))
        .await
        .unwrap();
    assert_eq!(read_all(s, "log.txt").await, "new");

    // Binary content: lossy as text, exact as bytes and through download.
    let binary_data: &[u8] = b"\xff\x00a\n\xfe";
    op(s.write_file("blob.bin", binary_data.to_vec(), WriteOptions::default()))
        .await
        .unwrap();
    let t = op(s.read_file("blob.bin", ReadOptions::default()))
        .await
        .unwrap();
    assert!(t.lossy);
    assert_eq!(t.content, "\u{fffd}\0a\n\u{fffd}");
    assert_eq!(
        &op(s.read_file_bytes("blob.bin")).await.unwrap()[..],
        binary_data
    );

    // exists and stat.
    assert!(op(s.file_exists("notes/todo.txt")).await.unwrap());
    assert!(op(s.file_exists("notes")).await.unwrap());
    assert!(op(s.file_exists("./notes/")).await.unwrap());
    assert!(op(s.file_exists(".")).await.unwrap());
    assert!(!op(s.file_exists("notes/missing.txt")).await.unwrap());
    assert!(
        !op(s.file_exists("not")).await.unwrap(),
        "a name prefix is not a directory"
    );
    let st = op(s.stat("notes/todo.txt")).await.unwrap().unwrap();
    assert_eq!(
        (st.kind, st.size, st.name.as_str()),
        (EntryKind::File, 8, "todo.txt")
    );
    assert_eq!(
        op(s.stat("notes")).await.unwrap().unwrap().kind,
        EntryKind::Dir
    );
    assert_eq!(op(s.stat("nothing")).await.unwrap(), None);

    // Absolute paths as commands see them.
    let abs = format!("{}/notes/todo.txt", s.workspace_root());
    assert_eq!(read_all(s, &abs).await, "a\nb\nc\nd\n");

    // A tree for listings and globs.
    for (path, content) in [
        ("src/a.py", "import os\n"),
        ("src/lib/b.py", "def b():\n    return 1\n"),
        ("src/lib/c.txt", "see\n"),
        ("top.py", "print('top')\n"),
    ] {
        op(s.write_file(path, content, WriteOptions::default()))
            .await
            .unwrap();
    }

    // list_dir: sorted, with kinds and sizes.
    let root: Vec<(String, EntryKind, u64)> = op(s.list_dir("."))
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.name, e.kind, e.size))
        .collect();
    let expect = |v: &[(&str, EntryKind, u64)]| -> Vec<(String, EntryKind, u64)> {
        v.iter()
            .map(|(n, k, s)| ((*n).to_owned(), *k, *s))
            .collect()
    };
    assert_eq!(
        root,
        expect(&[
            ("blob.bin", EntryKind::File, 5),
            ("empty.txt", EntryKind::File, 0),
            ("log.txt", EntryKind::File, 3),
            ("no-newline.txt", EntryKind::File, 3),
            ("notes", EntryKind::Dir, 0),
            ("src", EntryKind::Dir, 0),
            ("top.py", EntryKind::File, 13),
            ("utf8.txt", EntryKind::File, 10),
        ])
    );
    let src = op(s.list_dir("src")).await.unwrap();
    assert_eq!(
        src.iter()
            .map(|e| (e.path.as_str(), e.kind))
            .collect::<Vec<_>>(),
        [("src/a.py", EntryKind::File), ("src/lib", EntryKind::Dir)]
    );
    assert!(matches!(
        file_err(op(s.list_dir("top.py")).await),
        FileError::NotADirectory { .. }
    ));
    assert!(matches!(
        file_err(op(s.list_dir("nowhere")).await),
        FileError::NotFound { .. }
    ));

    // find_files.
    let find = |dir: &'static str, glob: &'static str| s.find_files(dir, glob);
    assert_eq!(
        op(find(".", "**/*.py")).await.unwrap(),
        ["src/a.py", "src/lib/b.py", "top.py"]
    );
    assert_eq!(op(find(".", "*.py")).await.unwrap(), ["top.py"]);
    assert_eq!(op(find("src", "*.py")).await.unwrap(), ["src/a.py"]);
    assert_eq!(
        op(find(".", "src/lib/*")).await.unwrap(),
        ["src/lib/b.py", "src/lib/c.txt"]
    );
    assert_eq!(op(find(".", "src/?.py")).await.unwrap(), ["src/a.py"]);
    assert_eq!(op(find(".", "[st]op.py")).await.unwrap(), ["top.py"]);
    assert!(op(find(".", "**/*.rs")).await.unwrap().is_empty());
    assert!(matches!(
        file_err(op(find("top.py", "*")).await),
        FileError::NotADirectory { .. }
    ));

    // search_file.
    let m = op(s.search_file("notes/todo.txt", "^[bd]$")).await.unwrap();
    assert_eq!(
        m.iter()
            .map(|m| (m.line_number, m.line.as_str()))
            .collect::<Vec<_>>(),
        [(2, "b"), (4, "d")]
    );
    let m = op(s.search_file("notes/todo.txt", "(?i)C")).await.unwrap();
    assert_eq!((m.len(), m[0].line_number), (1, 3));
    op(s.write_file("crlf.txt", "foo\r\nbar\r\n", WriteOptions::default()))
        .await
        .unwrap();
    let m = op(s.search_file("crlf.txt", "^bar$")).await.unwrap();
    assert_eq!((m[0].line_number, m[0].line.as_str()), (2, "bar"));
    assert!(
        op(s.search_file("top.py", "nothing"))
            .await
            .unwrap()
            .is_empty()
    );

    // replace_in_file.
    op(s.write_file("r.txt", "x-x-x", WriteOptions::default()))
        .await
        .unwrap();
    assert_eq!(
        op(s.replace_in_file("r.txt", "x", "yy", ReplaceOptions::first(1)))
            .await
            .unwrap(),
        1
    );
    assert_eq!(read_all(s, "r.txt").await, "yy-x-x");
    assert_eq!(
        op(s.replace_in_file("r.txt", "x", "z", ReplaceOptions::all()))
            .await
            .unwrap(),
        2
    );
    assert_eq!(read_all(s, "r.txt").await, "yy-z-z");
    let before = op(s.download("r.txt")).await.unwrap().info().clone();
    assert_eq!(
        op(s.replace_in_file("r.txt", "absent", "q", ReplaceOptions::all()))
            .await
            .unwrap(),
        0
    );
    let after = op(s.download("r.txt")).await.unwrap().info().clone();
    assert_eq!(
        before.generation, after.generation,
        "a no-op replace rewrote the file"
    );
    assert!(matches!(
        file_err(op(s.replace_in_file("missing.txt", "a", "b", ReplaceOptions::all())).await),
        FileError::NotFound { .. }
    ));
    // Bytes around the match that are not UTF-8 survive.
    op(s.replace_in_file("blob.bin", "a", "BB", ReplaceOptions::all()))
        .await
        .unwrap();
    assert_eq!(
        &op(s.read_file_bytes("blob.bin")).await.unwrap()[..],
        b"\xff\x00BB\n\xfe"
    );

    // Files and directories do not mix.
    assert!(matches!(
        file_err(op(s.write_file("src", "x", WriteOptions::default())).await),
        FileError::IsADirectory { .. }
    ));
    match file_err(op(s.write_file("top.py/inner", "x", WriteOptions::default())).await) {
        FileError::NotADirectory { path } => assert_eq!(path, "top.py"),
        e => panic!("{e:?}"),
    }
    assert!(matches!(
        file_err(op(s.read_file("src", ReadOptions::default())).await),
        FileError::IsADirectory { .. }
    ));
    assert!(matches!(
        file_err(op(s.read_file("missing", ReadOptions::default())).await),
        FileError::NotFound { .. }
    ));

    // upload and download stream; the cap is inclusive.
    let big = pattern(3 << 20);
    let info = op(s.upload(
        "data/big.bin",
        Cursor::new(big.clone()),
        UploadOptions::default().size_hint(big.len() as u64),
    ))
    .await
    .unwrap();
    assert_eq!(info.size, big.len() as u64);
    let mut download = op(s.download("data/big.bin")).await.unwrap();
    assert_eq!(download.info().size, big.len() as u64);
    let mut got = Vec::new();
    op(download.read_to_end(&mut got)).await.unwrap();
    assert!(got == big, "download differs from upload");
    let exact = op(s.upload(
        "data/exact.bin",
        Cursor::new(vec![7u8; 1024]),
        UploadOptions::default().max_bytes(1024),
    ))
    .await
    .unwrap();
    assert_eq!(exact.size, 1024);
    assert!(matches!(
        file_err(op(s.download("data")).await),
        FileError::IsADirectory { .. }
    ));

    // delete: a file, a directory only with `recursive`, nothing twice.
    assert_eq!(
        op(s.delete_file("top.py", DeleteOptions::default()))
            .await
            .unwrap(),
        1
    );
    assert!(!op(s.file_exists("top.py")).await.unwrap());
    assert!(matches!(
        file_err(op(s.delete_file("src", DeleteOptions::default())).await),
        FileError::DirectoryNotEmpty { .. }
    ));
    assert!(op(s.file_exists("src/lib/b.py")).await.unwrap());
    assert_eq!(
        op(s.delete_file("src", DeleteOptions::recursive()))
            .await
            .unwrap(),
        3
    );
    assert!(!op(s.file_exists("src")).await.unwrap());
    assert!(
        op(list_all(
            store,
            &format!("{}src/", layout::workspace_prefix(s.id()))
        ))
        .await
        .unwrap()
        .is_empty()
    );
    assert!(matches!(
        file_err(op(s.delete_file("src", DeleteOptions::recursive())).await),
        FileError::NotFound { .. }
    ));
    assert!(matches!(
        file_err(op(s.delete_file(".", DeleteOptions::recursive())).await),
        FileError::Root { .. }
    ));
    // Everything left is still there.
    assert!(op(s.file_exists("notes/todo.txt")).await.unwrap());
}

/// A stream that records whether it was ever read.
struct Untouched(Arc<AtomicBool>);

impl AsyncRead for Untouched {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.0.store(true, Ordering::SeqCst);
        Poll::Ready(Ok(()))
    }
}

/// Every object in the store, with its generation and size.
async fn everything(store: &dyn Store) -> Vec<ObjectMeta> {
    op(list_all(store, "")).await.unwrap()
}

/// Bad input, each refused with a typed error, and no object anywhere
/// touched. `other` is another session whose files must stay out of reach.
async fn bad_input_is_refused(s: &Session, other: &Session, store: &dyn Store) {
    op(s.write_file("keep.txt", "kept\n", WriteOptions::default()))
        .await
        .unwrap();
    op(other.write_file("secret.txt", "other's\n", WriteOptions::default()))
        .await
        .unwrap();
    let before = everything(store).await;

    // `..` that climbs out, relative.
    for bad in [
        "../../etc/passwd",
        "..",
        "a/../../x",
        "../other/workspace/secret.txt",
    ] {
        let e = path_err(op(s.read_file(bad, ReadOptions::default())).await);
        assert!(matches!(e, PathError::Escapes { .. }), "{bad}: {e:?}");
        assert!(e.to_string().contains(bad), "{e}");
        let e = path_err(op(s.write_file(bad, "x", WriteOptions::default())).await);
        assert!(matches!(e, PathError::Escapes { .. }), "{bad}: {e:?}");
    }
    assert!(matches!(
        path_err(op(s.list_dir("../..")).await),
        PathError::Escapes { .. }
    ));
    assert!(matches!(
        path_err(op(s.delete_file("..", DeleteOptions::recursive())).await),
        PathError::Escapes { .. }
    ));

    // Absolute paths outside the workspace, the other session's directory
    // on disk (as older layouts named it) included. Every session sees its
    // own workspace at the same path, so that path names only its own files.
    assert_eq!(s.workspace_root(), other.workspace_root());
    let others = format!("/tmp/runbox/sessions/{}/workspace/secret.txt", other.id());
    for bad in ["/etc/passwd", "/", others.as_str()] {
        let e = path_err(op(s.read_file(bad, ReadOptions::default())).await);
        assert!(
            matches!(e, PathError::OutsideWorkspace { .. }),
            "{bad}: {e:?}"
        );
        assert!(e.to_string().contains(&s.workspace_root()), "{e}");
        let e = path_err(op(s.write_file(bad, "x", WriteOptions::default())).await);
        assert!(
            matches!(e, PathError::OutsideWorkspace { .. }),
            "{bad}: {e:?}"
        );
        assert!(matches!(
            path_err(op(s.delete_file(bad, DeleteOptions::recursive())).await),
            PathError::OutsideWorkspace { .. }
        ));
    }

    // NUL and control characters.
    assert!(matches!(
        path_err(op(s.write_file("a\0b", "x", WriteOptions::default())).await),
        PathError::Nul { .. }
    ));
    assert!(matches!(
        path_err(op(s.file_exists("keep.txt\0")).await),
        PathError::Nul { .. }
    ));
    assert!(matches!(
        path_err(op(s.write_file("a\nb", "x", WriteOptions::default())).await),
        PathError::ControlCharacter { .. }
    ));
    assert!(matches!(
        path_err(op(s.read_file("", ReadOptions::default())).await),
        PathError::Empty
    ));

    // Over-long paths: beyond what the object name can hold, and beyond 1024.
    assert!(matches!(
        file_err(op(s.write_file(&"x".repeat(1010), "x", WriteOptions::default())).await),
        FileError::PathTooLong { .. }
    ));
    assert!(matches!(
        path_err(op(s.write_file(&"y".repeat(2000), "x", WriteOptions::default())).await),
        PathError::TooLong { .. }
    ));

    // Uploads over the cap: 2 MiB into a 1 MiB cap, and a 10 MiB stream
    // into a 9 MiB cap (past the Cloud Storage store's first 8 MiB chunk,
    // so a resumable upload has started and must be abandoned).
    for (cap, len) in [(1u64 << 20, 2usize << 20), (9 << 20, 10 << 20)] {
        let e = file_err(
            op(s.upload(
                "up/too-big.bin",
                Cursor::new(vec![1u8; len]),
                UploadOptions::default().max_bytes(cap),
            ))
            .await,
        );
        match &e {
            FileError::UploadTooLarge { path, limit } => {
                assert_eq!((path.as_str(), *limit), ("up/too-big.bin", cap));
            }
            e => panic!("{e:?}"),
        }
        assert!(e.to_string().contains("nothing was written"), "{e}");
        assert!(!op(s.file_exists("up/too-big.bin")).await.unwrap());
    }
    // An existing file survives a failed upload over it.
    let e = file_err(
        op(s.upload(
            "keep.txt",
            Cursor::new(vec![2u8; 4096]),
            UploadOptions::default().max_bytes(100),
        ))
        .await,
    );
    assert!(matches!(e, FileError::UploadTooLarge { .. }), "{e:?}");
    assert_eq!(read_all(s, "keep.txt").await, "kept\n");
    // A size hint over the cap is refused before the stream is read.
    let read = Arc::new(AtomicBool::new(false));
    let e = file_err(
        op(s.upload(
            "up/hinted.bin",
            Untouched(read.clone()),
            UploadOptions::default().max_bytes(10).size_hint(11),
        ))
        .await,
    );
    assert!(matches!(e, FileError::UploadTooLarge { .. }), "{e:?}");
    assert!(!read.load(Ordering::SeqCst), "the stream was read");

    // A regular expression that does not compile.
    match file_err(op(s.search_file("keep.txt", "(unclosed")).await) {
        FileError::InvalidRegex { pattern, source } => {
            assert_eq!(pattern, "(unclosed");
            assert!(source.to_string().contains("unclosed group"), "{source}");
        }
        e => panic!("{e:?}"),
    }

    // Globs that reach outside the directory searched.
    for bad in ["../*", "**/../../x", "/etc/*", "", "[a"] {
        let e = file_err(op(s.find_files(".", bad)).await);
        assert!(matches!(e, FileError::InvalidGlob { .. }), "{bad:?}: {e:?}");
    }

    // Edits that make no sense.
    assert!(matches!(
        file_err(op(s.replace_in_file("keep.txt", "", "x", ReplaceOptions::all())).await),
        FileError::EmptyPattern
    ));

    // Nothing anywhere changed: not this session, not the other one.
    assert_eq!(everything(store).await, before);
    assert_eq!(read_all(other, "secret.txt").await, "other's\n");
}

// ----- the embedded backend -------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_every_operation() {
    let (client, _dir) = embedded::client().await;
    let s = client.session("ops").unwrap();
    every_operation(&s, &**client.store()).await;
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_bad_input_is_refused_without_side_effects() {
    let (client, _dir) = embedded::client().await;
    let s = client.session("bad").unwrap();
    let other = client.session("other").unwrap();
    bad_input_is_refused(&s, &other, &**client.store()).await;
    client.shutdown().await;
}

async fn run(s: &Session, script: &str) -> runbox_dispatcher::ExecResult {
    let r = within(60, s.exec(script)).await.unwrap();
    assert_eq!(r.exec_status(), ExecStatus::Succeeded, "{script}: {r:?}");
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_writes_a_program_runs_it_and_reads_its_output() {
    let (client, _dir) = embedded::client().await;
    agent_scenario(&client.session("agent").unwrap()).await;
    client.shutdown().await;
}

/// The same agent on the gcp backend: the executor restores the files the
/// API wrote into its workspace and saves what the command wrote, so each
/// side sees the other's files through the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_on_the_gcp_backend_sees_files_both_ways() {
    let emu = within(120, Emulators::start()).await.expect("emulators");
    let home = tempfile::tempdir().unwrap();
    let client = gcp_client(&emu, home.path()).await;
    let session = format!("agent-{}", runbox_core::InstanceId::random());
    agent_scenario(&client.session(&session).unwrap()).await;
    client.shutdown().await;
}

/// Write a program through the API, run it, read its output through the
/// API; edit, run again; delete through the API and see it gone.
async fn agent_scenario(s: &Session) {
    let app = "import json\n\
               with open('input.txt') as f:\n    words = f.read().split()\n\
               with open('out/result.json', 'w') as f:\n    json.dump({'count': len(words)}, f)\n\
               print('done')\n";
    op(s.write_file("app.py", app, WriteOptions::default()))
        .await
        .unwrap();
    op(s.write_file("input.txt", "one two three\n", WriteOptions::default()))
        .await
        .unwrap();
    // A command sees the files the API wrote, and the API the ones it wrote.
    let r = run(s, "mkdir -p out && python3 app.py").await;
    assert_eq!(r.stdout, "done\n");
    assert_eq!(read_all(s, "out/result.json").await, "{\"count\": 3}");
    let m = op(s.search_file("out/result.json", "\"count\": \\d+"))
        .await
        .unwrap();
    assert_eq!(m.len(), 1);

    // Edit through the API, run again.
    op(s.write_file("input.txt", "four five\n", WriteOptions::append()))
        .await
        .unwrap();
    assert_eq!(
        op(s.replace_in_file("app.py", "'done'", "'again'", ReplaceOptions::first(1)))
            .await
            .unwrap(),
        1
    );
    let r = run(s, "python3 app.py").await;
    assert_eq!(r.stdout, "again\n");
    assert_eq!(read_all(s, "out/result.json").await, "{\"count\": 5}");

    // Absolute paths as `pwd` shows them in the session.
    let r = run(s, "pwd").await;
    let pwd = r.stdout.trim_end();
    assert_eq!(pwd, s.workspace_root());
    op(s.write_file(
        &format!("{pwd}/abs.txt"),
        "absolute\n",
        WriteOptions::default(),
    ))
    .await
    .unwrap();
    assert_eq!(run(s, "cat abs.txt").await.stdout, "absolute\n");

    // Deleting through the API is seen by the next command.
    op(s.delete_file("out", DeleteOptions::recursive()))
        .await
        .unwrap();
    assert_eq!(
        run(s, "test -e out && echo present || echo gone")
            .await
            .stdout,
        "gone\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_out_of_the_workspace_are_refused() {
    let (client, dir) = embedded::client().await;
    let s = client.session("links").unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("sentinel"), "outside\n").unwrap();
    run(
        &s,
        &format!(
            "ln -s /etc escape && ln -s {} out && ln -s /nonexistent-runbox-target dangling \
             && mkdir sub && echo inside > sub/f && ln -s sub inner \
             && ln -s ../../other/workspace sibling",
            outside.path().display()
        ),
    )
    .await;
    let store = client.store();
    let before = everything(&**store).await;

    // Reading or writing through a link that leads out: refused, naming it.
    let e = file_err(op(s.read_file("escape/passwd", ReadOptions::default())).await);
    match &e {
        FileError::SymlinkEscape { path, target, .. } => {
            assert_eq!(path, "escape/passwd");
            assert!(target.starts_with("/etc"), "{target:?}");
        }
        e => panic!("{e:?}"),
    }
    assert!(e.to_string().contains("outside the workspace"), "{e}");
    for path in ["escape", "escape/passwd", "out/sentinel", "sibling/x"] {
        assert!(
            matches!(
                file_err(op(s.read_file(path, ReadOptions::default())).await),
                FileError::SymlinkEscape { .. }
            ),
            "{path}"
        );
    }
    for path in ["out/new.txt", "escape/runbox-test", "dangling/x"] {
        assert!(
            matches!(
                file_err(op(s.write_file(path, "x", WriteOptions::default())).await),
                FileError::SymlinkEscape { .. }
            ),
            "{path}"
        );
    }
    assert!(matches!(
        file_err(op(s.list_dir("out")).await),
        FileError::SymlinkEscape { .. }
    ));
    assert!(matches!(
        file_err(op(s.find_files("out", "*")).await),
        FileError::SymlinkEscape { .. }
    ));
    assert!(matches!(
        file_err(
            op(s.upload(
                "out/up.bin",
                Cursor::new(vec![0u8; 10]),
                UploadOptions::default()
            ))
            .await
        ),
        FileError::SymlinkEscape { .. }
    ));
    assert!(!outside.path().join("new.txt").exists());
    assert!(!outside.path().join("up.bin").exists());

    // Links inside the workspace are followed.
    assert_eq!(read_all(&s, "inner/f").await, "inside\n");
    op(s.write_file("inner/g", "via link\n", WriteOptions::default()))
        .await
        .unwrap();
    assert_eq!(read_all(&s, "sub/g").await, "via link\n");

    // Listings show links as links.
    let entries = op(s.list_dir(".")).await.unwrap();
    let kind = |name: &str| entries.iter().find(|e| e.name == name).map(|e| e.kind);
    assert_eq!(kind("escape"), Some(EntryKind::Symlink));
    assert_eq!(kind("out"), Some(EntryKind::Symlink));
    assert_eq!(kind("sub"), Some(EntryKind::Dir));

    // Deleting a link removes the link, never what it points to.
    assert_eq!(
        op(s.delete_file("out", DeleteOptions::recursive()))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        std::fs::read_to_string(outside.path().join("sentinel")).unwrap(),
        "outside\n"
    );
    assert!(!op(s.file_exists("out")).await.unwrap());

    // Only the file written through the inner link changed.
    let mut after = everything(&**store).await;
    let g = format!("{}sub/g", layout::workspace_prefix(s.id()));
    after.retain(|m| m.name != g);
    assert_eq!(after, before);
    assert!(dir.path().join("sessions/links/workspace/sub/g").is_file());
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_paths_work_under_either_spelling_of_a_symlinked_home() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("real")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("real"), dir.path().join("link")).unwrap();
    let client = within(
        30,
        Client::from_config(embedded::config(&dir.path().join("link"))),
    )
    .await
    .unwrap();
    let s = client.session("spell").unwrap();
    assert_eq!(run(&s, "pwd").await.stdout.trim_end(), s.workspace_root());
    // Where no namespace can be made, commands see the directory itself,
    // under either spelling: the file API takes both.
    let logical = dir
        .path()
        .join("link/sessions/spell/workspace")
        .display()
        .to_string();
    let physical = std::fs::canonicalize(dir.path().join("real/sessions/spell/workspace"))
        .unwrap()
        .display()
        .to_string();
    assert_ne!(logical, physical);
    for (root, name) in [(&logical, "a.txt"), (&physical, "b.txt")] {
        op(s.write_file(&format!("{root}/{name}"), name, WriteOptions::default()))
            .await
            .unwrap();
    }
    assert_eq!(run(&s, "cat a.txt b.txt").await.stdout, "a.txtb.txt");
    // The spelling through the link does not open a way out.
    let e =
        path_err(op(s.read_file(&format!("{physical}/../../x/y"), ReadOptions::default())).await);
    assert!(matches!(e, PathError::OutsideWorkspace { .. }), "{e:?}");
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directories_made_by_commands_are_listed_and_deleted() {
    let (client, _dir) = embedded::client().await;
    let s = client.session("dirs").unwrap();
    run(&s, "mkdir -p d/e empty && echo x > d/file").await;
    let names: Vec<(String, EntryKind)> = op(s.list_dir("d"))
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.name, e.kind))
        .collect();
    assert_eq!(
        names,
        [
            ("e".to_owned(), EntryKind::Dir),
            ("file".to_owned(), EntryKind::File)
        ]
    );
    assert!(op(s.list_dir("empty")).await.unwrap().is_empty());
    assert!(op(s.file_exists("d/e")).await.unwrap());
    // An empty directory goes without `recursive`, like rmdir; a full one not.
    assert_eq!(
        op(s.delete_file("empty", DeleteOptions::default()))
            .await
            .unwrap(),
        0
    );
    assert!(matches!(
        file_err(op(s.delete_file("d", DeleteOptions::default())).await),
        FileError::DirectoryNotEmpty { .. }
    ));
    assert!(matches!(
        file_err(op(s.write_file("d/e", "x", WriteOptions::default())).await),
        FileError::IsADirectory { .. }
    ));
    op(s.delete_file("d", DeleteOptions::recursive()))
        .await
        .unwrap();
    assert_eq!(
        run(&s, "ls -A").await.stdout,
        "",
        "the workspace should be empty"
    );
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_lose_nothing() {
    let (client, _dir) = embedded::client().await;
    let s = client.session("appends").unwrap();
    let writers: Vec<_> = (0..4)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                s.write_file("log.txt", format!("line {i}\n"), WriteOptions::append())
                    .await
            })
        })
        .collect();
    for w in writers {
        op(w).await.unwrap().unwrap();
    }
    let mut lines: Vec<String> = read_all(&s, "log.txt")
        .await
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    assert_eq!(lines, ["line 0", "line 1", "line 2", "line 3"]);
    client.shutdown().await;
}

// ----- the emulators ------------------------------------------------------------

/// A client of the gcp backend on fresh emulators (as in gcp_e2e.rs).
async fn gcp_client(emu: &Emulators, home: &std::path::Path) -> Client {
    let mut env: BTreeMap<String, String> = emu.env();
    env.insert("RUNBOX_HOME".into(), home.display().to_string());
    env.insert(
        "RUNBOX_EXECUTOR".into(),
        binary("runbox-executor").display().to_string(),
    );
    let config = Config::from_lookup(&env).expect("config");
    within(60, Client::from_config(config))
        .await
        .expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcp_every_operation() {
    let emu = within(120, Emulators::start()).await.expect("emulators");
    let home = tempfile::tempdir().unwrap();
    let client = gcp_client(&emu, home.path()).await;
    let s = client.session("ops").unwrap();
    assert_eq!(s.workspace_root(), "/workspace");
    every_operation(&s, &emu.store()).await;
    // Everything is in the bucket; nothing landed in the local home.
    assert!(!home.path().join("sessions").exists());
    let session = SessionId::new("ops").unwrap();
    let names: Vec<String> = op(list_all(&emu.store(), &layout::session_prefix(&session)))
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert!(
        names.contains(&"sessions/ops/workspace/notes/todo.txt".to_owned()),
        "{names:?}"
    );
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcp_bad_input_is_refused_without_side_effects() {
    let emu = within(120, Emulators::start()).await.expect("emulators");
    let home = tempfile::tempdir().unwrap();
    let client = gcp_client(&emu, home.path()).await;
    let s = client.session("bad").unwrap();
    let other = client.session("other").unwrap();
    bad_input_is_refused(&s, &other, &emu.store()).await;
    client.shutdown().await;
}

/// `read_file_stream` gives, piece by piece, the text `read_file` gives at
/// once: the same lines, the same U+FFFD replacements (also for characters
/// split across read buffers), the same cut at `max_length`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_text_matches_text_read_at_once() {
    let (client, _home) = embedded::client().await;
    let s = client.session("stream").unwrap();
    // Multi-byte characters and invalid bytes around the 64 KiB buffer
    // boundaries, over many lines.
    let mut data = Vec::new();
    let mut n = 0u32;
    while data.len() < 300_000 {
        data.extend_from_slice(format!("line {n} ").as_bytes());
        data.extend_from_slice(if n % 7 == 0 {
            b"\xFF\xC3"
        } else {
            "é€😀".as_bytes()
        });
        data.push(b'\n');
        n += 1;
    }
    data.extend_from_slice("tail é".as_bytes());
    op(s.write_file("t.txt", data, WriteOptions::default()))
        .await
        .unwrap();
    for opts in [
        ReadOptions::default(),
        ReadOptions::default().lines(Some(3), Some(9000)),
        ReadOptions::default().lines(Some(n as u64 - 2), None),
        ReadOptions::default()
            .lines(Some(5), None)
            .max_length(70_001),
    ] {
        let whole = op(s.read_file("t.txt", opts.clone())).await.unwrap();
        let mut stream = op(s.read_file_stream("t.txt", opts.clone())).await.unwrap();
        let mut text = String::new();
        while let Some(chunk) = op(stream.next_chunk()).await.unwrap() {
            assert!(!chunk.is_empty());
            text.push_str(&chunk);
        }
        assert_eq!(text, whole.content, "{opts:?}");
        assert_eq!(stream.lossy(), whole.lossy, "{opts:?}");
        assert_eq!(stream.truncated(), whole.truncated, "{opts:?}");
        assert_eq!(stream.size(), whole.size);
    }
    within(60, client.shutdown()).await;
}
