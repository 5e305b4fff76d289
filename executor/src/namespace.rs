//! Where commands see their workspace: at one path on every backend
//! (`/workspace`, or `RUNBOX_WORKSPACE_PATH`), with a private `/tmp`.
//!
//! Three ways to get there, decided once per executor ([`decide`]):
//!
//! - [`Mode::Namespace`]: the command runs in mount, user and PID
//!   namespaces of its own, built by a re-exec of this binary
//!   (`runbox-executor __enter-namespace …`, see [`enter`]): a new root
//!   whose top-level directories are the host's, except that the
//!   session's workspace directory is mounted at the workspace path, a
//!   per-session directory replaces `/tmp`, the store's directory is
//!   covered by an empty read-only one, `/proc` shows only the command's
//!   own processes, and the command's scratch files are at
//!   [`SCRATCH_SEEN`]. The mounts are locked (a second user namespace
//!   is entered last), so even root inside cannot unmount them to see
//!   what they cover.
//! - [`Mode::Direct`]: a Cloud Run task is alone in its container, so the
//!   workspace directory simply is the workspace path.
//! - [`Mode::Host`]: the platform allows neither: commands see the real
//!   directory (and the host's `/tmp`); said once on stderr.
//!
//! Why a re-exec rather than code run between fork and exec: that code
//! would need `unsafe`, and namespaces can only be entered by a process
//! with one thread. Why two processes: a new PID namespace takes effect
//! for children only, and `/proc` must be mounted from inside it. The
//! first (outside) ignores SIGTERM/SIGINT so it outlives the shell, which
//! gets them through the process group and still records its state; the
//! second is the namespace's init and ends everything in it when the shell
//! ends.

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};
use rustix::thread::UnshareFlags;

/// The first argument that makes `runbox-executor` the namespace helper.
pub const ENTER_ARG: &str = "__enter-namespace";

/// Where a command in its namespace finds the executor's scratch files
/// (its script, the capture file): a directory of the new root.
pub const SCRATCH_SEEN: &str = "/.runbox";

/// Exit status of the helper when the namespace could not be built
/// (nothing of the command ran).
pub const SETUP_FAILED: u8 = 125;

/// How commands see their workspace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// In namespaces of their own, at the workspace path (module docs).
    Namespace,
    /// The workspace directory is the workspace path (one container per
    /// execution).
    Direct,
    /// At the real directory: the platform allows neither.
    Host,
}

/// Where a session's workspace is, on disk and as its commands see it.
#[derive(Clone, Debug)]
pub struct Placement {
    /// How commands see it.
    pub mode: Mode,
    /// The workspace path commands see (`RUNBOX_WORKSPACE_PATH`).
    pub path: PathBuf,
    /// The base directory the executor keeps workspaces under
    /// (`{base}/sessions/{session}/workspace`) and per-session `/tmp`
    /// directories (`{base}/.runbox/tmp/{session}`).
    pub base: PathBuf,
    /// Directories a command in its namespace must not see (the store).
    pub hide: Vec<PathBuf>,
    /// This binary, re-executed as the namespace helper.
    pub helper: PathBuf,
}

impl Placement {
    /// The workspace directory on disk.
    pub fn host_workspace(&self, session: &runbox_core::SessionId) -> PathBuf {
        match self.mode {
            Mode::Direct => self.path.clone(),
            Mode::Namespace | Mode::Host => self
                .base
                .join(runbox_core::layout::workspace_prefix(session))
                .components()
                .collect(),
        }
    }

    /// The workspace directory as commands see it.
    pub fn seen_workspace(&self, session: &runbox_core::SessionId) -> PathBuf {
        match self.mode {
            Mode::Namespace | Mode::Direct => self.path.clone(),
            Mode::Host => self.host_workspace(session),
        }
    }

    /// The directory a command in its namespace sees as `/tmp`.
    pub fn session_tmp(&self, session: &runbox_core::SessionId) -> PathBuf {
        self.base.join(".runbox/tmp").join(session.as_str())
    }

    /// The host path of `seen`, a path as a command of `session` sees it
    /// (to check on disk that a saved cwd still exists).
    pub fn to_host(&self, session: &runbox_core::SessionId, seen: &Path) -> PathBuf {
        if self.mode != Mode::Namespace {
            return seen.to_owned();
        }
        if let Ok(rel) = seen.strip_prefix(&self.path) {
            return self.host_workspace(session).join(rel);
        }
        if let Ok(rel) = seen.strip_prefix("/tmp") {
            return self.session_tmp(session).join(rel);
        }
        seen.to_owned()
    }

    /// Creates the session's temporary directory ([`Placement::session_tmp`])
    /// if missing and returns it.
    pub fn prepare_tmp(&self, session: &runbox_core::SessionId) -> std::io::Result<PathBuf> {
        let tmp = self.session_tmp(session);
        std::fs::create_dir_all(&tmp)?;
        // Like /tmp: every user may create files, only their own removed.
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777))?;
        Ok(tmp)
    }

    /// What the helper needs to run one command of `session` whose scratch
    /// directory is `scratch`, creating the session's `/tmp` directory.
    pub fn enter(
        &self,
        session: &runbox_core::SessionId,
        scratch: &Path,
    ) -> std::io::Result<Enter> {
        let tmp = self.prepare_tmp(session)?;
        let root = scratch.join("ns-root");
        std::fs::create_dir_all(&root)?;
        Ok(Enter {
            helper: self.helper.clone(),
            plan: Plan {
                workspace: self.host_workspace(session),
                at: self.path.clone(),
                tmp,
                scratch: scratch.to_owned(),
                root,
                hide: self.hide.clone(),
            },
            confine: crate::confine::Spec::default(),
        })
    }
}

/// How to start one command inside its namespace.
#[derive(Clone, Debug)]
pub struct Enter {
    helper: PathBuf,
    plan: Plan,
    confine: crate::confine::Spec,
}

impl Enter {
    /// The same, with `spec` applied by the namespace's init before it
    /// starts the program (its paths as the command sees them).
    #[must_use]
    pub fn confined(mut self, spec: crate::confine::Spec) -> Self {
        self.confine = spec;
        self
    }

    /// The command that runs `program` (with the arguments the caller adds)
    /// inside the namespace, as the plan's user.
    pub fn command(&self, program: &Path) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.helper);
        command
            .arg(ENTER_ARG)
            .arg(OUTSIDE)
            .args(self.confine.to_args())
            .args(self.plan.to_args())
            .arg("--")
            .arg(program);
        command
    }
}

/// Decides the mode: a namespace where the platform allows one (`probe`
/// says whether), else the workspace path itself for a Cloud Run task,
/// else the real directory. Returns the mode and, when commands will not
/// see the workspace path, why.
pub fn decide(probe: Result<(), String>, cloud_run_task: bool) -> (Mode, Option<String>) {
    match probe {
        Ok(()) => (Mode::Namespace, None),
        Err(_) if cloud_run_task => (Mode::Direct, None),
        Err(why) => (Mode::Host, Some(why)),
    }
}

/// Whether namespaces work here for commands run as `run_as` (`None`: as
/// the executor), remembered per boot and user in
/// `{base}/.runbox/namespace-probe` so only the first executor pays for
/// the trial (a full build of a namespace, nothing run in it). Prints the
/// reason on stderr when they do not, once: when that is first found.
pub fn probe(
    helper: &Path,
    base: &Path,
    run_as: Option<&crate::identity::Identity>,
) -> Result<(), String> {
    let dir = base.join(".runbox");
    let cache = dir.join("namespace-probe");
    // Another boot, user or executor build may answer differently.
    let built = std::fs::metadata(helper)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let key = format!(
        "{} {} {} {built}",
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .unwrap_or_default()
            .trim(),
        run_as.map_or_else(|| rustix::process::geteuid().as_raw(), |who| who.uid),
        helper.display(),
    );
    if let Ok(text) = std::fs::read_to_string(&cache)
        && let Some((cached_key, verdict)) = text.split_once('\n')
        && cached_key == key
    {
        return match verdict.strip_prefix("ok") {
            Some(_) => Ok(()),
            None => Err(verdict.trim_end().to_owned()),
        };
    }
    let verdict = trial(helper, &dir, run_as);
    if let Err(why) = &verdict {
        eprintln!(
            "runbox-executor: commands see the real workspace directory and /tmp, not the workspace path: no mount namespace here ({why})"
        );
    }
    let text = format!(
        "{key}\n{}\n",
        verdict
            .as_ref()
            .map_or_else(|e| e.clone(), |()| "ok".into())
    );
    // A lost cache only costs the next executor another trial.
    let _ = std::fs::create_dir_all(&dir).and_then(|()| write_atomically(&cache, text.as_bytes()));
    verdict
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let temp = path.with_extension(format!("{}.tmp", std::process::id()));
    std::fs::write(&temp, bytes)?;
    std::fs::rename(&temp, path)
}

/// Builds a namespace once, running nothing in it.
fn trial(
    helper: &Path,
    dir: &Path,
    run_as: Option<&crate::identity::Identity>,
) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let scratch = tempfile::Builder::new()
        .prefix("namespace-probe-")
        .tempdir_in(dir)
        .map_err(|e| format!("create a probe directory in {}: {e}", dir.display()))?;
    let path = scratch.path();
    let (workspace, tmp, root) = (path.join("w"), path.join("t"), path.join("ns-root"));
    for d in [&workspace, &tmp, &root] {
        std::fs::create_dir(d).map_err(|e| format!("create {}: {e}", d.display()))?;
    }
    let plan = Plan {
        workspace,
        at: PathBuf::from(runbox_core::session_cwd::DEFAULT_WORKSPACE_PATH),
        tmp,
        scratch: path.to_owned(),
        root,
        hide: Vec::new(),
    };
    let mut command = Command::new(helper);
    if let Some(who) = run_as {
        crate::identity::hand_over(path, who)
            .map_err(|e| format!("give {} to user {}: {e}", path.display(), who.name))?;
        command.uid(who.uid).gid(who.gid);
    }
    let output = command
        .arg(ENTER_ARG)
        .arg(OUTSIDE)
        .args(plan.to_args())
        .arg("--")
        // It runs as the commands' user and is readable by them until it
        // makes itself non-dumpable: the store token stays here.
        .env_remove(runbox_core::credentials::STORE_TOKEN_ENV)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("start {}: {e}", helper.display()))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let why = stderr
        .lines()
        .last()
        .unwrap_or("the namespace helper failed")
        .trim_start_matches("runbox-executor: ");
    Err(why.to_owned())
}

/// Everything the helper needs, passed as arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Plan {
    /// The session's workspace directory on the host.
    workspace: PathBuf,
    /// Where the command sees it.
    at: PathBuf,
    /// The session's `/tmp` directory on the host.
    tmp: PathBuf,
    /// The execution's scratch directory on the host, seen at
    /// [`SCRATCH_SEEN`].
    scratch: PathBuf,
    /// An empty directory the new root is mounted on.
    root: PathBuf,
    /// Host directories to cover.
    hide: Vec<PathBuf>,
}

/// The helper's stage outside the new PID namespace.
const OUTSIDE: &str = "outside";
/// The helper's stage as the new PID namespace's init.
const INIT: &str = "init";

impl Plan {
    fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            self.workspace.clone().into(),
            self.at.clone().into(),
            self.tmp.clone().into(),
            self.scratch.clone().into(),
            self.root.clone().into(),
        ];
        args.extend(self.hide.iter().map(|h| h.clone().into_os_string()));
        args
    }

    /// Parses [`Plan::to_args`] up to `--`; returns the plan and what
    /// follows `--` (the program and its arguments).
    fn from_args(args: &[OsString]) -> Result<(Self, &[OsString]), String> {
        let split = args
            .iter()
            .position(|a| a == "--")
            .ok_or("missing `--` before the program")?;
        let (head, program) = (&args[..split], &args[split + 1..]);
        let [workspace, at, tmp, scratch, root, hide @ ..] = head else {
            return Err(format!("expected at least 5 arguments, got {}", head.len()));
        };
        let absolute = |p: &OsString| {
            let p = PathBuf::from(p);
            if p.is_absolute() {
                Ok(p)
            } else {
                Err(format!("{} is not an absolute path", p.display()))
            }
        };
        Ok((
            Self {
                workspace: absolute(workspace)?,
                at: absolute(at)?,
                tmp: absolute(tmp)?,
                scratch: absolute(scratch)?,
                root: absolute(root)?,
                hide: hide.iter().map(absolute).collect::<Result<_, _>>()?,
            },
            program,
        ))
    }
}

/// Runs the helper: `args` follow [`ENTER_ARG`]. Exits with the program's
/// status (128 + N for a signal N), or [`SETUP_FAILED`] with the reason on
/// stderr when the namespace could not be built.
pub fn enter(args: &[OsString]) -> ExitCode {
    let result = match args.split_first() {
        Some((stage, rest)) if stage == OUTSIDE => outside(rest),
        Some((stage, rest)) if stage == INIT => match rest.split_first() {
            Some((ids, rest)) => init(ids, rest),
            None => Err("missing the ids argument".into()),
        },
        _ => Err(format!("usage: runbox-executor {ENTER_ARG} {OUTSIDE} …")),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(why) => {
            eprintln!("runbox-executor: enter the workspace namespace: {why}");
            ExitCode::from(SETUP_FAILED)
        }
    }
}

/// Stage one: new user, mount and PID namespaces; the init stage is its
/// child, and the status of that child is this stage's.
fn outside(args: &[OsString]) -> Result<u8, String> {
    // Checked here, before anything changes.
    let (_, plan_args) = crate::confine::Spec::from_args(args)?;
    Plan::from_args(plan_args)?;
    let ids = (
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    );
    // Root in there, so the init stage keeps its capabilities across exec
    // whoever entered.
    enter_user_namespace(
        UnshareFlags::NEWUSER | UnshareFlags::NEWNS | UnshareFlags::NEWPID,
        (0, 0),
    )?;
    // Handlers installed, these signals no longer end this process: it
    // waits for the shell, which gets them through the process group and
    // still writes its capture (the executor stops waiting when this
    // process ends).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| format!("start runtime: {e}"))?;
    let _guard = runtime.enter();
    use tokio::signal::unix::{SignalKind, signal};
    let _term = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM handler: {e}"))?;
    let _int = signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT handler: {e}"))?;
    let exe = std::env::current_exe().map_err(|e| format!("find this binary: {e}"))?;
    let status = Command::new(exe)
        .arg(ENTER_ARG)
        .arg(INIT)
        .arg(format!("{}:{}", ids.0, ids.1))
        .args(args)
        .status()
        .map_err(|e| format!("start the namespace's init: {e}"))?;
    Ok(status_code(status.code(), status.signal()))
}

/// Stage two, PID 1 of the new namespace: builds the new root, locks it,
/// then runs the program as its child until it ends.
fn init(ids: &OsStr, args: &[OsString]) -> Result<u8, String> {
    let ids = ids
        .to_str()
        .and_then(|t| t.split_once(':'))
        .and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)))
        .ok_or("the ids argument is not uid:gid")?;
    let (confine, args) = crate::confine::Spec::from_args(args)?;
    let (plan, program) = Plan::from_args(args)?;
    build_root(&plan)?;
    // A second user namespace makes every mount above locked: not even
    // root in there can unmount one to see what it covers.
    // The command is the user that entered again: without capabilities
    // unless that user is root.
    enter_user_namespace(UnshareFlags::NEWUSER | UnshareFlags::NEWNS, ids)?;
    // In the new root, so the rules bind to what the command sees; in the
    // new user namespace, so the process limit counts this command's
    // processes only.
    confine.apply()?;
    let Some((program, program_args)) = program.split_first() else {
        // A probe: the namespace could be built.
        return Ok(0);
    };
    let child = Command::new(program)
        .args(program_args)
        .spawn()
        .map_err(|e| format!("start {}: {e}", Path::new(program).display()))?;
    let shell = rustix::process::Pid::from_child(&child);
    // As init, every orphan of the namespace is ours to reap; the shell's
    // status is the one that counts. When this process exits, the kernel
    // kills whatever is left in the namespace.
    loop {
        match rustix::process::wait(rustix::process::WaitOptions::empty()) {
            Ok(Some((pid, status))) if pid == shell => {
                return Ok(status_code(
                    status.exit_status(),
                    status.terminating_signal(),
                ));
            }
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(format!("wait for {}: {e}", Path::new(program).display())),
        }
    }
}

/// An exit status as one byte: the code, or 128 + N for signal N.
fn status_code(code: Option<i32>, signal: Option<i32>) -> u8 {
    code.or(signal.map(|s| 128 + s))
        .and_then(|c| u8::try_from(c).ok())
        .unwrap_or(SETUP_FAILED)
}

/// Unshares `flags` (a new user namespace among them) and maps `inside`
/// (uid, gid) there to the caller's own ids: the one map a process may
/// write for itself (even root: a wider map must be written from outside),
/// which forbids `setgroups` in there. So the command runs as the user
/// that entered (the executor switches to `RUNBOX_RUN_AS_USER` before),
/// and other users' ids show as the overflow id.
fn enter_user_namespace(flags: UnshareFlags, inside: (u32, u32)) -> Result<(), String> {
    let (uid, gid) = (
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    );
    let open = |name: &str| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(format!("/proc/self/{name}"))
            .map_err(|e| format!("open /proc/self/{name}: {e}"))
    };
    // rustix deprecates its safe `unshare` only because of CLONE_FILES,
    // which can leave other threads with descriptors they cannot use; this
    // process has one thread and never passes that flag.
    #[allow(deprecated)]
    rustix::thread::unshare(flags).map_err(|e| format!("unshare({flags:?}): {e}"))?;
    // Opened after unsharing: an open file names the namespace the process
    // was in when it was opened.
    let (mut uid_map, mut gid_map, mut setgroups) =
        (open("uid_map")?, open("gid_map")?, open("setgroups")?);
    setgroups
        .write_all(b"deny")
        .map_err(|e| format!("write setgroups: {e}"))?;
    gid_map
        .write_all(format!("{} {gid} 1", inside.1).as_bytes())
        .map_err(|e| format!("write gid_map: {e}"))?;
    uid_map
        .write_all(format!("{} {uid} 1", inside.0).as_bytes())
        .map_err(|e| format!("write uid_map: {e}"))?;
    // Closed to the command from here on, as the executor is.
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
        .map_err(|e| format!("make the helper non-dumpable: {e}"))?;
    Ok(())
}

/// Builds the command's root on a fresh tmpfs and makes it the root.
fn build_root(plan: &Plan) -> Result<(), String> {
    let fail = |what: &str, path: &Path| {
        let path = path.to_owned();
        let what = what.to_owned();
        move |e: std::io::Error| format!("{what} {}: {e}", path.display())
    };
    let errno = |what: &str, path: &Path| {
        let path = path.to_owned();
        let what = what.to_owned();
        move |e: rustix::io::Errno| format!("{what} {}: {e}", path.display())
    };
    // Nothing done here may reach the host's mount table.
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    )
    .map_err(errno("make private", Path::new("/")))?;
    let new = &plan.root;
    rustix::mount::mount(
        "tmpfs",
        new,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
        Some(c"mode=0755"),
    )
    .map_err(errno("mount tmpfs on", new))?;
    let inside = |p: &Path| new.join(p.strip_prefix("/").unwrap_or(p));
    // The top-level name the workspace path starts with, when the path is
    // that one name: it is made here rather than taken from the host.
    let own_top: Option<&OsStr> = {
        let mut parts = plan.at.strip_prefix("/").unwrap_or(&plan.at).iter();
        match (parts.next(), parts.next()) {
            (Some(top), None) => Some(top),
            _ => None,
        }
    };
    let entries = std::fs::read_dir("/").map_err(fail("list", Path::new("/")))?;
    let mut bound: Vec<OsString> = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let skip = [b"tmp".as_slice(), b"proc", b".runbox"].contains(&name.as_bytes())
            || Some(name.as_os_str()) == own_top;
        if skip {
            continue;
        }
        let source = Path::new("/").join(&name);
        let target = new.join(&name);
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_symlink() {
            let link = std::fs::read_link(&source).map_err(fail("read link", &source))?;
            std::os::unix::fs::symlink(link, &target).map_err(fail("create link", &target))?;
        } else if kind.is_dir() {
            std::fs::create_dir(&target).map_err(fail("create", &target))?;
            rustix::mount::mount_bind_recursive(&source, &target)
                .map_err(errno("bind", &source))?;
            bound.push(name);
        } else if kind.is_file() {
            std::fs::write(&target, b"").map_err(fail("create", &target))?;
            rustix::mount::mount_bind(&source, &target).map_err(errno("bind", &source))?;
        }
    }
    let proc = new.join("proc");
    std::fs::create_dir(&proc).map_err(fail("create", &proc))?;
    rustix::mount::mount(
        "proc",
        &proc,
        "proc",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        None,
    )
    .map_err(errno("mount proc on", &proc))?;
    let tmp = new.join("tmp");
    std::fs::create_dir(&tmp).map_err(fail("create", &tmp))?;
    rustix::mount::mount_bind(&plan.tmp, &tmp).map_err(errno("bind", &plan.tmp))?;
    // Shared memory of its own: the host's /dev/shm is shared by every
    // process of the host.
    let shm = new.join("dev/shm");
    if shm.is_dir() {
        rustix::mount::mount(
            "tmpfs",
            &shm,
            "tmpfs",
            MountFlags::NOSUID | MountFlags::NODEV,
            Some(c"mode=1777"),
        )
        .map_err(errno("mount tmpfs on", &shm))?;
    }
    let scratch = new.join(SCRATCH_SEEN.trim_start_matches('/'));
    std::fs::create_dir(&scratch).map_err(fail("create", &scratch))?;
    rustix::mount::mount_bind(&plan.scratch, &scratch).map_err(errno("bind", &plan.scratch))?;
    // Covered before the workspace is mounted, in case the workspace lies
    // inside one of them (the embedded store holds the workspaces).
    for hidden in &plan.hide {
        let top = hidden
            .strip_prefix("/")
            .ok()
            .and_then(|p| p.iter().next())
            .map(OsStr::to_os_string);
        let reachable = top.is_some_and(|t| bound.contains(&t));
        let target = inside(hidden);
        if reachable && target.is_dir() {
            rustix::mount::mount(
                "tmpfs",
                &target,
                "tmpfs",
                MountFlags::NOSUID | MountFlags::NODEV | MountFlags::RDONLY,
                Some(c"mode=0555,size=4k"),
            )
            .map_err(errno("cover", hidden))?;
        }
    }
    let at = inside(&plan.at);
    std::fs::create_dir_all(&at).map_err(fail("create", &at))?;
    rustix::mount::mount_bind(&plan.workspace, &at).map_err(errno("bind", &plan.workspace))?;
    let old = new.join(".old-root");
    std::fs::create_dir(&old).map_err(fail("create", &old))?;
    rustix::process::pivot_root(new, &old).map_err(errno("pivot_root to", new))?;
    rustix::process::chdir("/").map_err(errno("chdir", Path::new("/")))?;
    rustix::mount::unmount("/.old-root", UnmountFlags::DETACH)
        .map_err(errno("detach", Path::new("/.old-root")))?;
    std::fs::remove_dir("/.old-root").map_err(fail("remove", Path::new("/.old-root")))?;
    // The root itself read-only: nothing a command writes outside the
    // workspace, /tmp and the host's own writable directories lands in
    // this throwaway tmpfs.
    rustix::mount::mount_remount(
        "/",
        MountFlags::BIND | MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV,
        "",
    )
    .map_err(errno("make read-only", Path::new("/")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_survives_its_arguments() {
        let plan = Plan {
            workspace: "/h/sessions/s/workspace".into(),
            at: "/workspace".into(),
            tmp: "/h/.runbox/tmp/s".into(),
            scratch: "/h/.runbox/scratch/x".into(),
            root: "/h/.runbox/scratch/x/ns-root".into(),
            hide: vec!["/h".into()],
        };
        let mut args = plan.to_args();
        args.push("--".into());
        args.push("/bin/bash".into());
        args.push("-c".into());
        let (parsed, program) = Plan::from_args(&args).unwrap();
        assert_eq!(parsed, plan);
        assert_eq!(program, [OsString::from("/bin/bash"), "-c".into()]);
        assert!(Plan::from_args(&args[..3]).is_err());
    }

    #[test]
    fn the_mode_follows_what_the_platform_allows() {
        assert_eq!(decide(Ok(()), false), (Mode::Namespace, None));
        assert_eq!(decide(Ok(()), true), (Mode::Namespace, None));
        // A Cloud Run task is alone in its container: the path itself.
        assert_eq!(decide(Err("EPERM".into()), true), (Mode::Direct, None));
        assert_eq!(
            decide(Err("EPERM".into()), false),
            (Mode::Host, Some("EPERM".into()))
        );
    }

    #[test]
    fn paths_map_between_host_and_namespace() {
        let session = runbox_core::SessionId::new("s").unwrap();
        let mut placement = Placement {
            mode: Mode::Namespace,
            path: "/workspace".into(),
            base: "/h".into(),
            hide: vec![],
            helper: "/bin/false".into(),
        };
        assert_eq!(
            placement.host_workspace(&session),
            PathBuf::from("/h/sessions/s/workspace")
        );
        assert_eq!(
            placement.seen_workspace(&session),
            PathBuf::from("/workspace")
        );
        assert_eq!(
            placement.to_host(&session, Path::new("/workspace/a")),
            PathBuf::from("/h/sessions/s/workspace/a")
        );
        assert_eq!(
            placement.to_host(&session, Path::new("/tmp/x")),
            PathBuf::from("/h/.runbox/tmp/s/x")
        );
        assert_eq!(
            placement.to_host(&session, Path::new("/usr")),
            PathBuf::from("/usr")
        );
        placement.mode = Mode::Direct;
        assert_eq!(
            placement.host_workspace(&session),
            PathBuf::from("/workspace")
        );
        placement.mode = Mode::Host;
        assert_eq!(
            placement.seen_workspace(&session),
            PathBuf::from("/h/sessions/s/workspace")
        );
    }
}
