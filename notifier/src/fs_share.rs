//! One filesystem watch per store, shared by every process that uses it.
//!
//! An inotify instance per process does not scale: the kernel allows 128
//! per user by default (`fs.inotify.max_user_instances`), so a few hundred
//! concurrent `runbox` processes would fail. Instead, the processes of one
//! user on one store elect a hub through an abstract Unix socket named
//! after the store's `results/` directory: binding the name succeeds for
//! exactly one process (the kernel frees it when that process exits, so a
//! crashed hub leaves nothing stale). The hub holds the only watch and
//! relays every object name under `results/` to the others over their
//! connections; they connect and read. When the hub goes away, its clients
//! see the connection close and elect a new one among themselves.
//!
//! Nothing is lost across a handover: a process reports [`Feed::Rescan`]
//! once its (new) watch or relay is in place, so the notifier reads the
//! results of its pending executions once (list-then-watch). A client that
//! falls too far behind is dropped by the hub and does the same.
//!
//! The relay is a line protocol: `+` (the hub has registered this client:
//! nothing after it is missed), `=results/NAME` (an object was written),
//! `!` (the kernel dropped events: rescan).

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use runbox_core::layout;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

/// What the shared watch tells one process.
#[derive(Debug)]
pub(crate) enum Feed {
    /// An object under `results/` was written (or renamed into place).
    Name(String),
    /// A watch or relay is (again) in place; events before it may be lost.
    Rescan,
    /// The watch is gone for good.
    Failed(String),
}

/// Names the hub may hold for a slow client before dropping it (the client
/// then reconnects and rescans).
const RELAY_BACKLOG: usize = 65_536;

/// Pause after a failed accept or a refused connect (the hub was going
/// away, or its backlog was full), before trying again.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Starts following `results_dir` (absolute) for this process: as the hub,
/// or through it. The first election happens here, synchronously, so a
/// watch that cannot be set up (a kernel limit) fails the source's
/// creation, before anything is launched. The task ends when `feed` is
/// closed (the source dropped) or after reporting [`Feed::Failed`].
pub(crate) fn follow(
    results_dir: PathBuf,
    feed: mpsc::UnboundedSender<Feed>,
) -> Result<JoinHandle<()>, String> {
    let addr = socket_name(&results_dir)?;
    let first = elect_once(&addr, &results_dir)?;
    Ok(tokio::spawn(async move {
        let outcome = tokio::select! {
            outcome = run(addr, results_dir, first, &feed) => outcome,
            () = feed.closed() => return,
        };
        if let Err(reason) = outcome {
            let _ = feed.send(Feed::Failed(reason));
        }
    }))
}

/// What one election made of this process.
enum Role {
    /// It holds the name: the watch is in place, `events` receives it.
    Hub {
        listener: std::os::unix::net::UnixListener,
        watcher: HeldWatch,
        events: mpsc::UnboundedReceiver<notify::Result<notify::Event>>,
    },
    /// It is connected to the hub.
    Client(std::os::unix::net::UnixStream),
}

/// Serves or follows the hub, electing again after every handover; returns
/// only on a failure that trying again would not fix.
async fn run(
    addr: SocketAddr,
    results_dir: PathBuf,
    mut role: Option<Role>,
    feed: &mpsc::UnboundedSender<Feed>,
) -> Result<(), String> {
    loop {
        match role.take() {
            Some(Role::Hub {
                listener,
                watcher,
                events,
            }) => return serve(listener, watcher, events, &results_dir, feed).await,
            Some(Role::Client(stream)) => {
                let stream = stream
                    .set_nonblocking(true)
                    .and_then(|()| UnixStream::from_std(stream))
                    .map_err(|e| format!("setting up the shared event socket: {e}"))?;
                relay(stream, feed).await?;
            }
            // The hub exited between our bind and connect, or its accept
            // queue was full: elect again shortly.
            None => tokio::time::sleep(RETRY_PAUSE).await,
        }
        let (addr, dir) = (addr.clone(), results_dir.clone());
        role = tokio::task::spawn_blocking(move || elect_once(&addr, &dir))
            .await
            .map_err(|e| format!("electing the shared watch's holder: {e}"))??;
    }
}

/// One election: bind the name and set up the watch, or connect to the
/// process that holds it. `None`: it went away meanwhile; try again. The
/// connect blocks, on purpose: a full accept queue makes a non-blocking
/// connect fail at once, while a blocking one waits its turn.
fn elect_once(addr: &SocketAddr, results_dir: &Path) -> Result<Option<Role>, String> {
    match std::os::unix::net::UnixListener::bind_addr(addr) {
        Ok(listener) => {
            let (events_tx, events) = mpsc::unbounded_channel();
            let mut watcher = notify::recommended_watcher(move |event| {
                // Fails only once the hub has stopped; nothing left to tell.
                let _ = events_tx.send(event);
            })
            .map_err(|e| watch_error("starting the watcher", &e))?;
            watcher
                .watch(results_dir, RecursiveMode::NonRecursive)
                .map_err(|e| watch_error(&format!("watching {}", results_dir.display()), &e))?;
            return Ok(Some(Role::Hub {
                listener,
                watcher: HeldWatch {
                    watcher: Some(watcher),
                    dir: results_dir.to_owned(),
                },
                events,
            }));
        }
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {}
        Err(e) => return Err(format!("binding the shared event socket: {e}")),
    }
    match std::os::unix::net::UnixStream::connect_addr(addr) {
        Ok(stream) => Ok(Some(Role::Client(stream))),
        Err(e) if is_transient(&e) => Ok(None),
        Err(e) => Err(format!("connecting to the shared event socket: {e}")),
    }
}

/// The hub's watch. Closing an inotify instance that still has a watch
/// waits in the kernel for the watch's teardown (an SRCU grace period:
/// 10 to 40 ms measured here), and a process cannot finish exiting while
/// one of its threads is in that close, so every short-lived `runbox`
/// paid it at exit. Removing the watch first lets the kernel tear it down
/// in the background; a close a fraction of a millisecond later then finds
/// nothing to wait for. So on drop the watch is removed now and the
/// instance closed later: it is parked until the next hub of this process
/// retires (by then long idle) or the process exits.
struct HeldWatch {
    watcher: Option<RecommendedWatcher>,
    dir: PathBuf,
}

/// The last retired watcher, its watch already removed (see [`HeldWatch`]).
static RETIRED: std::sync::Mutex<Option<RecommendedWatcher>> = std::sync::Mutex::new(None);

impl Drop for HeldWatch {
    fn drop(&mut self) {
        let Some(mut watcher) = self.watcher.take() else {
            return;
        };
        if watcher.unwatch(&self.dir).is_err() {
            // The watch is already gone (its directory was removed): the
            // close has nothing to wait for either.
            return;
        }
        let older = RETIRED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(watcher);
        // Closed outside the lock; it has had a whole hub's life to idle.
        drop(older);
    }
}

/// The hub: holds the watch, feeds this process and relays to every client.
async fn serve(
    listener: std::os::unix::net::UnixListener,
    // Held for as long as the hub serves: dropping it ends the watch.
    _watcher: HeldWatch,
    mut events: mpsc::UnboundedReceiver<notify::Result<notify::Event>>,
    results_dir: &Path,
    feed: &mpsc::UnboundedSender<Feed>,
) -> Result<(), String> {
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("setting up the shared event socket: {e}"))?;
    let listener = UnixListener::from_std(listener)
        .map_err(|e| format!("setting up the shared event socket: {e}"))?;
    let _ = feed.send(Feed::Rescan);
    let (relay_tx, _) = broadcast::channel::<Arc<str>>(RELAY_BACKLOG);
    loop {
        tokio::select! {
            event = events.recv() => {
                let event = match event {
                    Some(Ok(event)) => event,
                    Some(Err(e)) => return Err(format!("watcher error: {e}")),
                    None => return Err("the watcher stopped".to_owned()),
                };
                match classify(&event, results_dir) {
                    Change::Names(names) => {
                        for name in names {
                            let _ = relay_tx.send(Arc::from(format!("={name}")));
                            let _ = feed.send(Feed::Name(name));
                        }
                    }
                    Change::Rescan => {
                        let _ = relay_tx.send(Arc::from("!"));
                        let _ = feed.send(Feed::Rescan);
                    }
                    Change::DirGone => {
                        // Dropping the listener and the relays makes every
                        // client elect again; their watch fails the same way.
                        return Err(format!("{} was removed or moved away", results_dir.display()));
                    }
                    Change::None => {}
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // Subscribed before the greeting: whatever the client
                    // hears after `+` it cannot have missed.
                    tokio::spawn(feed_client(stream, relay_tx.subscribe()));
                }
                Err(e) => {
                    tracing::warn!(error = %describe_io(&e), "could not accept a process on the shared event socket");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            },
        }
    }
}

/// Sends one client the greeting, then every relayed line, until it goes
/// away or falls behind.
async fn feed_client(stream: UnixStream, mut lines: broadcast::Receiver<Arc<str>>) {
    let mut out = BufWriter::new(stream);
    if out.write_all(b"+\n").await.is_err() || out.flush().await.is_err() {
        return;
    }
    loop {
        let line = match lines.recv().await {
            Ok(line) => line,
            // Lagged: closing makes it reconnect and rescan, which recovers
            // what it missed. Closed: the hub stopped.
            Err(_) => return,
        };
        if out.write_all(line.as_bytes()).await.is_err() || out.write_all(b"\n").await.is_err() {
            return;
        }
        // Flush only when nothing else is queued: bursts go out together.
        if lines.is_empty() && out.flush().await.is_err() {
            return;
        }
    }
}

/// A client: reads the hub's lines into the feed until the hub goes away.
async fn relay(stream: UnixStream, feed: &mpsc::UnboundedSender<Feed>) -> Result<(), String> {
    // Another user's process could hold the name first only if it guessed
    // our uid into it; still, take names only from our own user.
    let own = own_uid().map_err(|e| format!("reading the own user id: {e}"))?;
    match stream.peer_cred() {
        Ok(cred) if cred.uid() == own => {}
        Ok(cred) => {
            return Err(format!(
                "the shared event socket is held by uid {}, not {own}",
                cred.uid()
            ));
        }
        Err(e) => return Err(format!("reading the shared event socket's peer: {e}")),
    }
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let item = match line.as_bytes().first() {
            Some(b'+') | Some(b'!') => Feed::Rescan,
            Some(b'=') => Feed::Name(line[1..].to_owned()),
            _ => continue,
        };
        if feed.send(item).is_err() {
            return Ok(());
        }
    }
    // The hub went away: the caller elects again.
    Ok(())
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::NotFound
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::ConnectionReset
    )
}

/// The abstract socket name of a results directory for this user.
fn socket_name(results_dir: &Path) -> Result<SocketAddr, String> {
    let uid = own_uid().map_err(|e| format!("reading the own user id: {e}"))?;
    // FNV-1a: stable across builds, so every runbox version agrees.
    let hash = results_dir
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    let name = format!("runbox/events/{uid}/{hash:016x}");
    SocketAddr::from_abstract_name(name.as_bytes())
        .map_err(|e| format!("naming the shared event socket: {e}"))
}

fn own_uid() -> io::Result<u32> {
    std::fs::metadata("/proc/self").map(|m| m.uid())
}

/// What one watcher event means for the objects under `results/`.
enum Change {
    Names(Vec<String>),
    /// The kernel dropped events.
    Rescan,
    /// The watched directory itself went away.
    DirGone,
    None,
}

fn classify(event: &notify::Event, results_dir: &Path) -> Change {
    if event.need_rescan() {
        return Change::Rescan;
    }
    let concerns_objects = match event.kind {
        EventKind::Create(CreateKind::Folder) => false,
        // A store may publish with link(2) (atomic create-if-absent), which
        // is a create, not a rename.
        EventKind::Create(_) => true,
        // Inotify sends To, then Both for the same rename; To suffices.
        // Any: backends that cannot tell the direction; `head` decides.
        EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Any)) => true,
        // A writer that fills the file in place is done at close.
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(RenameMode::From))
            if event.paths.iter().any(|p| p == results_dir) =>
        {
            return Change::DirGone;
        }
        _ => false,
    };
    if !concerns_objects {
        return Change::None;
    }
    Change::Names(
        event
            .paths
            .iter()
            .filter_map(|p| object_name(p, results_dir))
            .collect(),
    )
}

/// `results/<file>` for a file directly under the results directory.
fn object_name(path: &Path, results_dir: &Path) -> Option<String> {
    if path.parent()? != results_dir {
        return None;
    }
    // Non-UTF-8 names cannot be object names; dot files are temporaries or
    // the store's own bookkeeping, never objects; a newline would break the
    // relay's lines and is in no object name runbox writes.
    let file = path.file_name()?.to_str()?;
    if file.starts_with('.') || file.contains('\n') {
        return None;
    }
    Some(format!("{}{file}", layout::RESULTS_PREFIX))
}

/// A watcher failure, naming the kernel limit when one was hit.
fn watch_error(op: &str, e: &notify::Error) -> String {
    match &e.kind {
        notify::ErrorKind::Io(io) => format!("{op}: {}", describe_io(io)),
        // notify reports a full watch table without the errno.
        notify::ErrorKind::MaxFilesWatch => format!(
            "{op}: inotify watch limit reached (fs.inotify.max_user_watches = {})",
            sysctl("fs/inotify/max_user_watches")
        ),
        _ => format!("{op}: {e}"),
    }
}

/// An I/O error, with the kernel limit it ran into named: "Too many open
/// files" alone does not say which one.
fn describe_io(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(EMFILE) => {
            let (open, limit) = open_files();
            if limit.is_some_and(|l| open.is_some_and(|o| o + 1 >= l)) {
                format!(
                    "open file limit reached (RLIMIT_NOFILE = {}, see `ulimit -n`): {e}",
                    limit.map_or_else(|| "?".to_owned(), |l| l.to_string())
                )
            } else {
                format!(
                    "inotify instance limit reached (fs.inotify.max_user_instances = {}; raise it with `sysctl fs.inotify.max_user_instances=N`): {e}",
                    sysctl("fs/inotify/max_user_instances")
                )
            }
        }
        Some(ENOSPC) => format!(
            "inotify watch limit reached (fs.inotify.max_user_watches = {}): {e}",
            sysctl("fs/inotify/max_user_watches")
        ),
        _ => e.to_string(),
    }
}

/// Linux errno values: too many open files (per process, or inotify
/// instances per user), no space (inotify watches per user).
const EMFILE: i32 = 24;
const ENOSPC: i32 = 28;

/// The value of `/proc/sys/<key>`, or `?`.
fn sysctl(key: &str) -> String {
    std::fs::read_to_string(format!("/proc/sys/{key}"))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|_| "?".to_owned())
}

/// Descriptors open in this process and its soft limit, where readable.
fn open_files() -> (Option<u64>, Option<u64>) {
    let open = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as u64);
    let limit = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            limits
                .lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        });
    (open, limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emfile_names_the_inotify_limit_unless_descriptors_ran_out() {
        let e = io::Error::from_raw_os_error(24);
        let text = describe_io(&e);
        assert!(
            text.starts_with("inotify instance limit reached (fs.inotify.max_user_instances = "),
            "{text}"
        );
        let e = io::Error::from_raw_os_error(28);
        assert!(
            describe_io(&e)
                .starts_with("inotify watch limit reached (fs.inotify.max_user_watches = "),
            "{}",
            describe_io(&e)
        );
    }

    use runbox_core::Store;
    use runbox_core::store::{LocalStore, PutOptions};

    const LIMIT: Duration = Duration::from_secs(10);

    async fn next_feed(feed: &mut mpsc::UnboundedReceiver<Feed>) -> Feed {
        tokio::time::timeout(LIMIT, feed.recv())
            .await
            .expect("a feed item in time")
            .expect("the feed is open")
    }

    /// Watches on `dir` held by this process's inotify instances (the
    /// `inotify wd:` lines of their fdinfo name the watched inode in hex).
    fn watches_on(dir: &Path) -> usize {
        let ino = format!("ino:{:x} ", std::fs::metadata(dir).unwrap().ino());
        std::fs::read_dir("/proc/self/fdinfo")
            .unwrap()
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
            .map(|info| {
                info.lines()
                    .filter(|l| l.starts_with("inotify wd:") && l.contains(&ino))
                    .count()
            })
            .sum()
    }

    /// A result written by the local store is one event, not two: its
    /// temporary file is closed before it is renamed into place, so no
    /// close-after-write event names the result a second time. And when the
    /// hub stops, its watch is gone at once, its instance left to close
    /// later (see `HeldWatch`).
    #[tokio::test]
    async fn one_event_per_stored_result_and_the_watch_goes_with_the_hub() {
        let home = tempfile::tempdir().unwrap();
        let store = LocalStore::open(home.path()).unwrap();
        let dir = std::path::absolute(home.path().join("results")).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        let (tx, mut feed) = mpsc::unbounded_channel();
        let task = follow(dir.clone(), tx).unwrap();
        assert!(matches!(next_feed(&mut feed).await, Feed::Rescan));
        assert_eq!(watches_on(&dir), 1, "this process is the hub");
        for name in ["results/a.json", "results/b.json"] {
            store
                .put(
                    name,
                    bytes::Bytes::from_static(b"{}"),
                    PutOptions::default(),
                )
                .await
                .unwrap();
        }
        // Every event of `a` was queued before `b` was written.
        let mut names = Vec::new();
        while names.last().map(String::as_str) != Some("results/b.json") {
            match next_feed(&mut feed).await {
                Feed::Name(name) => names.push(name),
                other => panic!("expected a name, got {other:?}"),
            }
        }
        assert_eq!(names, ["results/a.json", "results/b.json"]);

        drop(feed);
        tokio::time::timeout(LIMIT, task)
            .await
            .expect("the hub stopped")
            .unwrap();
        assert_eq!(watches_on(&dir), 0, "the watch is removed with the hub");
    }

    #[test]
    fn socket_names_differ_per_directory() {
        let a = socket_name(Path::new("/a/results")).unwrap();
        let b = socket_name(Path::new("/b/results")).unwrap();
        assert_ne!(a.as_abstract_name(), b.as_abstract_name());
    }
}
