//! Who a command runs as. An executor running as root (Cloud Run's
//! default) starts the command as an unprivileged user, so that the command
//! cannot read the executor's memory, environment, credentials or temporary
//! files; that user is handed the workspace before the command starts.
//! An executor that is not root cannot switch: the command runs as the
//! executor's own user (see the README for what isolation remains then).

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags};
use rustix::process::{Gid, Uid};

/// The user and group a command runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The user name (or the uid in decimal when `/etc/passwd` has no entry).
    pub name: String,
    /// The user id.
    pub uid: u32,
    /// The primary group id; supplementary groups are dropped.
    pub gid: u32,
}

/// The user commands run as when the executor is a root Cloud Run task and
/// `RUNBOX_RUN_AS_USER` is unset.
pub const DEFAULT_RUN_AS_USER: &str = "nobody";

/// The ids of `nobody` on Linux, used when `/etc/passwd` does not list it
/// (minimal container images).
const NOBODY_ID: u32 = 65534;

/// A `RUNBOX_RUN_AS_USER` that cannot be honoured.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Neither a numeric id nor a user of `/etc/passwd`.
    #[error(
        "RUNBOX_RUN_AS_USER={value:?}: no such user in /etc/passwd (give a user name or a numeric uid[:gid])"
    )]
    UnknownUser {
        /// The configured value.
        value: String,
    },
    /// The executor is not root, so it cannot start a command as another user.
    #[error(
        "RUNBOX_RUN_AS_USER={value:?}: the executor runs as uid {euid}, not as root, and cannot start commands as uid {uid}; unset it or run the executor as root"
    )]
    NotRoot {
        /// The configured value.
        value: String,
        /// The executor's effective uid.
        euid: u32,
        /// The uid the value names.
        uid: u32,
    },
}

/// Decides who the command runs as: `None` means as the executor itself.
///
/// `euid` is the executor's effective uid, `configured` the value of
/// `RUNBOX_RUN_AS_USER`, `default_applies` whether an unset value means
/// [`DEFAULT_RUN_AS_USER`] (a Cloud Run task, whose workspace is its own
/// copy) and `passwd` the text of `/etc/passwd`. A value
/// naming the executor's own user (`root` for a root executor) turns the
/// switch off.
pub fn decide(
    euid: u32,
    configured: Option<&str>,
    default_applies: bool,
    passwd: &str,
) -> Result<Option<Identity>, IdentityError> {
    let wanted = match configured {
        Some(value) => Some(
            resolve(value, passwd).ok_or_else(|| IdentityError::UnknownUser {
                value: value.to_owned(),
            })?,
        ),
        None if euid == 0 && default_applies => Some(
            resolve(DEFAULT_RUN_AS_USER, passwd).unwrap_or_else(|| Identity {
                name: DEFAULT_RUN_AS_USER.to_owned(),
                uid: NOBODY_ID,
                gid: NOBODY_ID,
            }),
        ),
        None => None,
    };
    match wanted {
        None => Ok(None),
        Some(who) if who.uid == euid => Ok(None),
        Some(who) if euid != 0 => Err(IdentityError::NotRoot {
            value: configured.unwrap_or(DEFAULT_RUN_AS_USER).to_owned(),
            euid,
            uid: who.uid,
        }),
        Some(who) => Ok(Some(who)),
    }
}

/// [`decide`] for this process: its effective uid and the system's
/// `/etc/passwd` (absent counts as empty).
pub fn decide_here(
    configured: Option<&str>,
    default_applies: bool,
) -> Result<Option<Identity>, IdentityError> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    decide(
        rustix::process::geteuid().as_raw(),
        configured,
        default_applies,
        &passwd,
    )
}

/// A user name from `passwd`, or `uid[:gid]` (the gid defaults to the
/// user's primary group, else to the uid).
fn resolve(value: &str, passwd: &str) -> Option<Identity> {
    let entries: Vec<(&str, u32, u32)> = passwd
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let _password = fields.next()?;
            let uid = fields.next()?.parse().ok()?;
            let gid = fields.next()?.parse().ok()?;
            Some((name, uid, gid))
        })
        .collect();
    let (uid_text, gid_text) = match value.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (value, None),
    };
    if let Ok(uid) = uid_text.parse::<u32>() {
        let listed = entries.iter().find(|(_, u, _)| *u == uid);
        let gid = match gid_text {
            Some(g) => g.parse().ok()?,
            None => listed.map_or(uid, |(_, _, g)| *g),
        };
        return Some(Identity {
            name: listed.map_or_else(|| uid.to_string(), |(n, _, _)| (*n).to_owned()),
            uid,
            gid,
        });
    }
    if gid_text.is_some() {
        return None;
    }
    entries
        .iter()
        .find(|(n, _, _)| *n == value)
        .map(|(name, uid, gid)| Identity {
            name: (*name).to_owned(),
            uid: *uid,
            gid: *gid,
        })
}

/// Gives `who` the directory tree at `root`: the directory itself and every
/// entry below it that the executor owns. Never follows a symlink (each
/// directory is opened relative to its parent with `O_NOFOLLOW`, so an
/// entry swapped for a link meanwhile is not walked through), and leaves a
/// file with several hard links alone, since another of its names may lie
/// outside the tree. Returns how many entries changed owner.
pub fn hand_over(root: &Path, who: &Identity) -> std::io::Result<usize> {
    let me = rustix::process::geteuid().as_raw();
    let owner = (Some(Uid::from_raw(who.uid)), Some(Gid::from_raw(who.gid)));
    let top = rustix::fs::open(root, dir_flags(), Mode::empty())?;
    let mut changed = 0;
    if rustix::fs::fstat(&top)?.st_uid == me {
        rustix::fs::fchown(&top, owner.0, owner.1)?;
        changed += 1;
    }
    let mut pending = vec![top];
    while let Some(dir) = pending.pop() {
        for entry in Dir::read_from(&dir)? {
            let entry = entry?;
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            let stat = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
            let kind = FileType::from_raw_mode(stat.st_mode);
            if kind == FileType::Directory {
                let Ok(child) = rustix::fs::openat(&dir, name, dir_flags(), Mode::empty()) else {
                    // Replaced by something else since the stat: not walked.
                    continue;
                };
                if rustix::fs::fstat(&child)?.st_uid == me {
                    rustix::fs::fchown(&child, owner.0, owner.1)?;
                    changed += 1;
                }
                pending.push(child);
            } else if stat.st_uid == me && (kind == FileType::Symlink || stat.st_nlink == 1) {
                chown_entry(&dir, name, owner)?;
                changed += 1;
            }
        }
    }
    Ok(changed)
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

fn chown_entry(
    dir: &OwnedFd,
    name: &std::ffi::CStr,
    (uid, gid): (Option<Uid>, Option<Gid>),
) -> std::io::Result<()> {
    match rustix::fs::chownat(dir.as_fd(), name, uid, gid, AtFlags::SYMLINK_NOFOLLOW) {
        // Removed since the directory was read: nothing to hand over.
        Err(rustix::io::Errno::NOENT) => Ok(()),
        other => other.map_err(Into::into),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
        nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
        agent:x:1000:1001::/home/agent:/bin/sh\n";

    fn who(name: &str, uid: u32, gid: u32) -> Option<Identity> {
        Some(Identity {
            name: name.to_owned(),
            uid,
            gid,
        })
    }

    #[test]
    fn root_on_cloud_run_defaults_to_nobody() {
        assert_eq!(
            decide(0, None, true, PASSWD).unwrap(),
            who("nobody", 65534, 65534)
        );
        // No passwd entry (a distroless image): nobody's well-known ids.
        assert_eq!(
            decide(0, None, true, "").unwrap(),
            who("nobody", 65534, 65534)
        );
    }

    #[test]
    fn root_under_the_local_launcher_switches_only_when_asked() {
        assert_eq!(decide(0, None, false, PASSWD).unwrap(), None);
        assert_eq!(
            decide(0, Some("agent"), false, PASSWD).unwrap(),
            who("agent", 1000, 1001)
        );
    }

    #[test]
    fn numeric_ids_need_no_passwd_entry() {
        assert_eq!(
            decide(0, Some("4242"), true, PASSWD).unwrap(),
            who("4242", 4242, 4242)
        );
        assert_eq!(
            decide(0, Some("4242:77"), true, PASSWD).unwrap(),
            who("4242", 4242, 77)
        );
        assert_eq!(
            decide(0, Some("1000"), true, PASSWD).unwrap(),
            who("agent", 1000, 1001)
        );
    }

    #[test]
    fn naming_the_executors_own_user_turns_the_switch_off() {
        assert_eq!(decide(0, Some("root"), true, PASSWD).unwrap(), None);
        assert_eq!(decide(0, Some("0"), true, PASSWD).unwrap(), None);
        assert_eq!(decide(1000, Some("agent"), false, PASSWD).unwrap(), None);
    }

    #[test]
    fn a_non_root_executor_never_switches() {
        assert_eq!(decide(1000, None, true, PASSWD).unwrap(), None);
        let err = decide(1000, Some("nobody"), true, PASSWD).unwrap_err();
        assert!(matches!(
            err,
            IdentityError::NotRoot {
                euid: 1000,
                uid: 65534,
                ..
            }
        ));
        assert!(err.to_string().contains("RUNBOX_RUN_AS_USER"), "{err}");
    }

    #[test]
    fn unknown_or_malformed_users_are_refused() {
        for value in ["no-such-user", "agent:1", "12:x", "-1"] {
            let err = decide(0, Some(value), true, PASSWD).unwrap_err();
            assert!(
                matches!(err, IdentityError::UnknownUser { .. }),
                "{value}: {err}"
            );
        }
    }
}
