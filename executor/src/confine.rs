//! What a command may touch: a Landlock ruleset and resource limits,
//! applied by the helper process that starts the shell, never by the
//! executor, which stays unconfined to save the session and write the
//! result.
//!
//! The helper is the namespace's init (`__enter-namespace`, see
//! [`crate::namespace`]) or, without a namespace, a re-exec of this binary
//! as `runbox-executor __confine …` that restricts itself and then execs
//! the shell: no code runs between fork and exec, so no `unsafe`.
//!
//! Landlock rules are bound to the inodes of the paths opened when the
//! ruleset is built, and an access is checked by walking up the path the
//! process used, across mount points. So rules are built after the
//! namespace's root is in place, from the paths the command sees: a bind
//! mount at `/workspace` is covered by a rule on `/workspace`, and the
//! host's directories above the workspace are never on the way up.
//!
//! What the ruleset allows:
//! - reading and executing: everything the command sees in its namespace,
//!   where the store's directory is already covered; without a namespace,
//!   everything except the store's directory (`RUNBOX_HOME`, or the gcp
//!   workspace base), by a rule for each entry beside the directories
//!   that lead to it (those directories themselves cannot be listed);
//! - writing: the session's workspace, its temporary directory, the
//!   execution's scratch directory (the script, the capture), a private
//!   `/dev/shm` in the namespace, and the devices a shell writes to
//!   (`/dev/null`, `/dev/tty`, ...). Pipes and descriptors opened before
//!   (standard input and output) are not path accesses and stay usable.
//!
//! Landlock also keeps the command from tracing, or opening the memory of,
//! any process outside its ruleset, even as root; the helper drops the
//! capabilities that would let root read the `/proc/PID/environ` of
//! non-dumpable processes anyway (see [`drop_tracing`]).

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use landlock::{
    ABI, Access, AccessFs, CompatLevel, Compatible, PathBeneath, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus,
};
use runbox_core::confinement::Limits;
use rustix::fs::{Mode, OFlags};
use rustix::process::{Resource, Rlimit};

/// The first argument that makes `runbox-executor` the confinement helper
/// used without a namespace.
pub const CONFINE_ARG: &str = "__confine";

/// The newest Landlock ABI whose rights the ruleset uses: 3 adds
/// truncation, 2 renames across directories. (Later ABIs add device
/// ioctls, networking and scopes, which commands keep.)
const TARGET_ABI: ABI = ABI::V3;

/// Devices a shell and ordinary tools open for writing.
const WRITABLE_DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/tty",
    "/dev/random",
    "/dev/urandom",
];

/// What the helper applies before it runs the shell.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Spec {
    /// Resource limits (`None` fields: left as they are).
    pub limits: Option<Limits>,
    /// The Landlock rules; `None`: no Landlock.
    pub landlock: Option<Rules>,
}

/// The paths of a Landlock ruleset, as the command sees them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rules {
    /// Reading is allowed everywhere (`None`) or everywhere outside this
    /// directory.
    pub hidden: Option<PathBuf>,
    /// Reading, writing and executing are allowed beneath these.
    pub writable: Vec<PathBuf>,
}

impl Spec {
    /// Whether there is nothing to apply.
    pub fn is_empty(&self) -> bool {
        self.landlock.is_none() && self.limits.is_none()
    }

    /// The options that [`Spec::from_args`] reads back.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let limit = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |n| n.to_string());
        if let Some(l) = &self.limits {
            args.push(LIMITS.into());
            args.push(
                format!(
                    "{},{},{}",
                    limit(l.open_files),
                    limit(l.processes),
                    limit(l.address_space)
                )
                .into(),
            );
        }
        if let Some(rules) = &self.landlock {
            args.push(LANDLOCK.into());
            args.push(rules.hidden.clone().unwrap_or_default().into_os_string());
            for w in &rules.writable {
                args.push(WRITABLE.into());
                args.push(w.clone().into_os_string());
            }
        }
        args
    }

    /// Reads the options of [`Spec::to_args`] at the start of `args`;
    /// returns them and the arguments that follow.
    pub fn from_args(mut args: &[OsString]) -> Result<(Self, &[OsString]), String> {
        let mut spec = Self::default();
        while let [option, value, rest @ ..] = args {
            match option.to_str() {
                Some(LIMITS) => spec.limits = Some(parse_limits(value)?),
                Some(LANDLOCK) => {
                    spec.landlock = Some(Rules {
                        hidden: (!value.is_empty()).then(|| absolute(value)).transpose()?,
                        writable: Vec::new(),
                    });
                }
                Some(WRITABLE) => spec
                    .landlock
                    .as_mut()
                    .ok_or(format!("{WRITABLE} before {LANDLOCK}"))?
                    .writable
                    .push(absolute(value)?),
                _ => break,
            }
            args = rest;
        }
        Ok((spec, args))
    }

    /// Applies the limits, then the ruleset, to this process and so to
    /// everything it starts; a privileged process also loses
    /// `CAP_SYS_PTRACE` for good.
    pub fn apply(&self) -> Result<(), String> {
        drop_tracing()?;
        if let Some(limits) = &self.limits {
            apply_limits(limits)?;
        }
        if let Some(rules) = &self.landlock {
            restrict(rules)?;
        }
        Ok(())
    }
}

const LIMITS: &str = "--limits";
const LANDLOCK: &str = "--landlock";
const WRITABLE: &str = "--writable";

fn absolute(value: &OsString) -> Result<PathBuf, String> {
    let path = PathBuf::from(value);
    if path.is_absolute() {
        Ok(path)
    } else {
        Err(format!("{} is not an absolute path", path.display()))
    }
}

fn parse_limits(value: &OsString) -> Result<Limits, String> {
    let text = value.to_str().ok_or("limits are not UTF-8")?;
    let parts: Vec<&str> = text.split(',').collect();
    let one = |s: &str| -> Result<Option<u64>, String> {
        match s {
            "-" => Ok(None),
            n => n.parse().map(Some).map_err(|e| format!("limit {n:?}: {e}")),
        }
    };
    let [open_files, processes, address_space] = parts[..] else {
        return Err(format!("limits {text:?}: expected three"));
    };
    Ok(Limits {
        open_files: one(open_files)?,
        processes: one(processes)?,
        address_space: one(address_space)?,
    })
}

/// The Landlock ABI this kernel offers, up to the one the ruleset uses;
/// `None` without Landlock. Creates rulesets and restricts nothing.
pub fn supported_abi() -> Option<ABI> {
    [ABI::V3, ABI::V2, ABI::V1].into_iter().find(|abi| {
        Ruleset::default()
            .set_compatibility(CompatLevel::HardRequirement)
            .handle_access(AccessFs::from_all(*abi))
            .and_then(|r| r.create())
            .is_ok()
    })
}

/// Why commands are confined less than Landlock allows here, or `None`
/// when they are fully confined.
pub fn shortfall(abi: Option<ABI>) -> Option<String> {
    match abi {
        None => Some(
            "this kernel has no Landlock: commands can read and write whatever their user can (the workspace namespace, where there is one, still hides the store's directory)"
                .to_owned(),
        ),
        Some(abi) if abi < TARGET_ABI => Some(format!(
            "this kernel has Landlock ABI {}, not {}: {}",
            abi as i32,
            TARGET_ABI as i32,
            if abi < ABI::V2 {
                "commands cannot move or link files between directories, and truncating files is not restricted"
            } else {
                "truncating files is not restricted"
            }
        )),
        Some(_) => None,
    }
}

/// Says `why` on stderr unless it was said before since the machine
/// started (remembered in `{base}/.runbox/landlock-notice`): once, not for
/// every command.
pub fn say_once(base: &Path, why: &str) {
    let dir = base.join(".runbox");
    let marker = dir.join("landlock-notice");
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let said = std::fs::read_to_string(&marker).is_ok_and(|text| text == boot);
    if said {
        return;
    }
    eprintln!("runbox-executor: commands are not confined by Landlock: {why}");
    // A lost marker only repeats the notice.
    let _ = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&marker, &boot));
}

/// Runs the helper without a namespace: `args` follow [`CONFINE_ARG`]
/// (the spec, `--`, the program and its arguments). Returns only when the
/// program could not be started.
pub fn run(args: &[OsString]) -> ExitCode {
    let Err(why) = exec(args);
    eprintln!("runbox-executor: confine the command: {why}");
    ExitCode::from(crate::namespace::SETUP_FAILED)
}

/// Applies the spec in `args` and execs the program after `--`: returns
/// only why that failed.
fn exec(args: &[OsString]) -> Result<std::convert::Infallible, String> {
    let (spec, rest) = Spec::from_args(args)?;
    let Some((dashes, command)) = rest.split_first() else {
        return Err("missing `--` before the program".to_owned());
    };
    if dashes != "--" {
        return Err(format!("unexpected argument {dashes:?}"));
    }
    let (program, program_args) = command.split_first().ok_or("missing the program")?;
    spec.apply()?;
    let error = std::process::Command::new(program)
        .args(program_args)
        .exec();
    Err(format!("start {}: {error}", Path::new(program).display()))
}

/// Takes the capabilities that open other processes' `/proc` files out
/// of every set, the bounding set included so no later exec gets them
/// back: `CAP_SYS_PTRACE`, and `CAP_SYS_ADMIN` and `CAP_PERFMON`, which
/// the kernel accepts in its place. With any of them, root reads the
/// `/proc/PID/environ`, `maps` and `fd` of every process, non-dumpable ones
/// included (Landlock closes `mem` and tracing, not these); without them,
/// the executor and the CLI, non-dumpable, are closed to a command even
/// when all run as root. A process that holds none has nothing to drop
/// (`no_new_privs`, set with the ruleset, keeps setuid programs from
/// granting them).
fn drop_tracing() -> Result<(), String> {
    use rustix::thread::CapabilitySet;
    let tracing = [
        CapabilitySet::SYS_PTRACE,
        CapabilitySet::SYS_ADMIN,
        CapabilitySet::PERFMON,
    ];
    let mut sets =
        rustix::thread::capabilities(None).map_err(|e| format!("read capabilities: {e}"))?;
    let held = tracing
        .iter()
        .any(|c| sets.permitted.contains(*c) || sets.inheritable.contains(*c));
    if !held {
        return Ok(());
    }
    for capability in tracing {
        if rustix::thread::capability_is_in_bounding_set(capability).unwrap_or(false) {
            rustix::thread::remove_capability_from_bounding_set(capability)
                .map_err(|e| format!("drop {capability:?} from the bounding set: {e}"))?;
        }
        sets.effective.remove(capability);
        sets.permitted.remove(capability);
        sets.inheritable.remove(capability);
    }
    rustix::thread::set_capabilities(None, sets)
        .map_err(|e| format!("drop the tracing capabilities: {e}"))
}

/// Lowers each configured limit (soft and hard) to its value, never above
/// the hard limit this process already has: only a privileged process
/// could raise it, and the command gets no more than its executor.
fn apply_limits(limits: &Limits) -> Result<(), String> {
    for (resource, name, value) in [
        (Resource::Nofile, "RLIMIT_NOFILE", limits.open_files),
        (Resource::Nproc, "RLIMIT_NPROC", limits.processes),
        (Resource::As, "RLIMIT_AS", limits.address_space),
    ] {
        let Some(value) = value else { continue };
        let current = rustix::process::getrlimit(resource);
        let value = current.maximum.map_or(value, |hard| value.min(hard));
        rustix::process::setrlimit(
            resource,
            Rlimit {
                current: Some(value),
                maximum: Some(value),
            },
        )
        .map_err(|e| format!("set {name} to {value}: {e}"))?;
    }
    Ok(())
}

/// Builds the ruleset from `rules` and restricts this process with it.
fn restrict(rules: &Rules) -> Result<(), String> {
    let all = AccessFs::from_all(TARGET_ABI);
    let read = AccessFs::from_read(TARGET_ABI);
    let file = AccessFs::from_file(TARGET_ABI);
    let mut ruleset = Ruleset::default()
        .handle_access(all)
        .and_then(|r| r.create())
        .map_err(|e| format!("create a Landlock ruleset: {e}"))?;
    let mut add = |path: &Path, access: landlock::BitFlags<AccessFs>| -> Result<(), String> {
        let Some((fd, is_dir)) = open_path(path)? else {
            return Ok(());
        };
        let access = if is_dir { access } else { access & file };
        (&mut ruleset)
            .add_rule(PathBeneath::new(fd, access))
            .map_err(|e| format!("allow {}: {e}", path.display()))?;
        Ok(())
    };
    match &rules.hidden {
        None => add(Path::new("/"), read)?,
        Some(hidden) => {
            for path in beside(hidden)? {
                add(&path, read)?;
            }
        }
    }
    for path in &rules.writable {
        add(path, all)?;
    }
    for device in WRITABLE_DEVICES {
        add(Path::new(device), file & !AccessFs::Execute)?;
    }
    let status = ruleset
        .restrict_self()
        .map_err(|e| format!("restrict to the Landlock ruleset: {e}"))?;
    if status.ruleset == RulesetStatus::NotEnforced {
        // The executor found Landlock before asking for it.
        return Err("the kernel did not enforce the Landlock ruleset".into());
    }
    Ok(())
}

/// Opens `path` without following a final symlink, for a rule: the
/// descriptor and whether it is a directory; `None` for a symlink (its
/// target is reached, and ruled, by its own path) or a missing path.
fn open_path(path: &Path) -> Result<Option<(std::os::fd::OwnedFd, bool)>, String> {
    let fd = match rustix::fs::open(
        path,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => return Err(format!("open {}: {e}", path.display())),
    };
    let stat = rustix::fs::fstat(&fd).map_err(|e| format!("stat {}: {e}", path.display()))?;
    let kind = rustix::fs::FileType::from_raw_mode(stat.st_mode);
    match kind {
        rustix::fs::FileType::Symlink => Ok(None),
        kind => Ok(Some((fd, kind == rustix::fs::FileType::Directory))),
    }
}

/// Every entry of each directory on the way from `/` to `hidden` except
/// the next one on that way: together they are everything outside
/// `hidden` but the directories leading to it.
fn beside(hidden: &Path) -> Result<Vec<PathBuf>, String> {
    let hidden = hidden
        .canonicalize()
        .map_err(|e| format!("resolve {}: {e}", hidden.display()))?;
    let mut out = Vec::new();
    let mut dir = PathBuf::from("/");
    for next in hidden.strip_prefix("/").unwrap_or(&hidden).iter() {
        let entries =
            std::fs::read_dir(&dir).map_err(|e| format!("list {}: {e}", dir.display()))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name.as_bytes() != next.as_bytes() {
                out.push(dir.join(name));
            }
        }
        dir.push(next);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_survives_its_arguments() {
        let spec = Spec {
            limits: Some(Limits {
                open_files: Some(64),
                processes: None,
                address_space: Some(1 << 30),
            }),
            landlock: Some(Rules {
                hidden: Some("/h".into()),
                writable: vec!["/h/sessions/s/workspace".into(), "/h/.runbox/tmp/s".into()],
            }),
        };
        let mut args = spec.to_args();
        args.push("/plan".into());
        let (parsed, rest) = Spec::from_args(&args).unwrap();
        assert_eq!(parsed, spec);
        assert_eq!(rest, [OsString::from("/plan")]);
        let everywhere = Spec {
            limits: None,
            landlock: Some(Rules {
                hidden: None,
                writable: vec![],
            }),
        };
        assert_eq!(
            Spec::from_args(&everywhere.to_args()).unwrap().0,
            everywhere
        );
        assert!(Spec::default().is_empty());
        assert!(Spec::from_args(&["--limits".into(), "1,2".into()]).is_err());
        assert!(Spec::from_args(&["--writable".into(), "/w".into()]).is_err());
    }

    #[test]
    fn beside_lists_everything_but_the_way_to_the_hidden_directory() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path().canonicalize().unwrap();
        for dir in ["home/sessions/a", "home-sibling", "other"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        std::fs::write(root.join("file"), b"").unwrap();
        let listed = beside(&root.join("home")).unwrap();
        for expected in ["home-sibling", "other", "file"] {
            assert!(listed.contains(&root.join(expected)), "{expected}");
        }
        assert!(!listed.iter().any(|p| p.starts_with(root.join("home"))));
        assert!(!listed.contains(&root));
        assert!(listed.contains(&PathBuf::from("/usr")) || !Path::new("/usr").exists());
    }

    #[test]
    fn a_shortfall_is_said_only_below_the_target_abi() {
        assert!(shortfall(None).unwrap().contains("no Landlock"));
        assert!(shortfall(Some(ABI::V1)).unwrap().contains("move or link"));
        assert!(shortfall(Some(ABI::V3)).is_none());
    }
}
