//! How the executor confines the commands it runs: Landlock on or off, and
//! the resource limits each command gets. Read by the executor (from its
//! configuration) and checked by the dispatcher at start, so a bad value
//! is refused before anything runs; the local launcher forwards these
//! variables from its own environment.

use crate::config::Lookup;

/// `auto` (the default): commands are confined with Landlock where the
/// kernel has it; `off`: not at all (resource limits still apply).
pub const LANDLOCK_ENV: &str = "RUNBOX_LANDLOCK";

/// Most open files per command process (`RLIMIT_NOFILE`), default
/// [`DEFAULT_NOFILE`]; `unlimited` leaves the executor's own limit.
pub const LIMIT_NOFILE_ENV: &str = "RUNBOX_LIMIT_NOFILE";

/// Most processes of the command's user (`RLIMIT_NPROC`), default
/// [`DEFAULT_NPROC`]; `unlimited` leaves the executor's own limit.
pub const LIMIT_NPROC_ENV: &str = "RUNBOX_LIMIT_NPROC";

/// Most address space per command process (`RLIMIT_AS`), in bytes or with
/// a `K`, `M`, `G` or `T` suffix (powers of 1024); default `unlimited`
/// (the executor's own limit stays).
pub const LIMIT_AS_ENV: &str = "RUNBOX_LIMIT_AS";

/// More directories commands may write (and read) beneath, absolute paths
/// separated by `:`, as they see them (outside `/tmp` when commands have
/// their namespace, whose `/tmp` is their own): a shared build cache, or
/// the named pipes a test talks to its commands through. Default: none.
pub const LANDLOCK_WRITABLE_ENV: &str = "RUNBOX_LANDLOCK_WRITABLE";

/// Every variable of these settings, which launchers pass on to the
/// executor.
pub const SETTINGS: [&str; 5] = [
    LANDLOCK_ENV,
    LIMIT_NOFILE_ENV,
    LIMIT_NPROC_ENV,
    LIMIT_AS_ENV,
    LANDLOCK_WRITABLE_ENV,
];

/// Default open-file limit: four times the usual soft limit of 1024, for
/// builds and language servers that open many files, still far below what
/// exhausts the host's file table.
pub const DEFAULT_NOFILE: u64 = 4096;

/// Default process limit: room for parallel builds (`make -j`, test
/// runners) while a fork bomb stops at a few thousand processes.
pub const DEFAULT_NPROC: u64 = 4096;

/// The fewest open files a command can run with (bash and its pipes).
const MIN_NOFILE: u64 = 16;

/// The smallest address space bash starts in.
const MIN_ADDRESS_SPACE: u64 = 16 << 20;

/// The confinement settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Confinement {
    /// Whether Landlock is wanted ([`LANDLOCK_ENV`]).
    pub landlock: bool,
    /// The resource limits.
    pub limits: Limits,
    /// More writable directories ([`LANDLOCK_WRITABLE_ENV`]).
    pub writable: Vec<std::path::PathBuf>,
}

/// Resource limits applied to every command; `None`: left as the executor
/// has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// `RLIMIT_NOFILE` ([`LIMIT_NOFILE_ENV`]).
    pub open_files: Option<u64>,
    /// `RLIMIT_NPROC` ([`LIMIT_NPROC_ENV`]).
    pub processes: Option<u64>,
    /// `RLIMIT_AS`, bytes ([`LIMIT_AS_ENV`]).
    pub address_space: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            open_files: Some(DEFAULT_NOFILE),
            processes: Some(DEFAULT_NPROC),
            // Runtimes that reserve large virtual ranges up front (Go, the
            // JVM, V8, sanitizers) fail under an address-space limit that
            // says nothing about the memory they use; memory is bounded by
            // the machine or the container instead.
            address_space: None,
        }
    }
}

impl Default for Confinement {
    fn default() -> Self {
        Self {
            landlock: true,
            limits: Limits::default(),
            writable: Vec::new(),
        }
    }
}

/// A confinement setting that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}={value:?}: {reason}")]
pub struct ConfinementSettingError {
    /// The variable.
    pub name: &'static str,
    /// The value given.
    pub value: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl Confinement {
    /// The settings `lookup` holds, checked; unset variables take their
    /// defaults.
    pub fn from_lookup(lookup: &dyn Lookup) -> Result<Self, ConfinementSettingError> {
        let landlock = match lookup.get(LANDLOCK_ENV).as_deref() {
            None | Some("auto") => true,
            Some("off") => false,
            Some(other) => {
                return Err(ConfinementSettingError {
                    name: LANDLOCK_ENV,
                    value: other.to_owned(),
                    reason: "expected `auto` or `off`",
                });
            }
        };
        let defaults = Limits::default();
        let mut writable = Vec::new();
        if let Some(value) = lookup.get(LANDLOCK_WRITABLE_ENV) {
            for part in value.split(':').filter(|p| !p.is_empty()) {
                let path = std::path::PathBuf::from(part);
                let normal = path
                    .components()
                    .all(|c| !matches!(c, std::path::Component::ParentDir));
                if !path.is_absolute() || !normal || path == std::path::Path::new("/") {
                    return Err(ConfinementSettingError {
                        name: LANDLOCK_WRITABLE_ENV,
                        value: value.clone(),
                        reason: "expected absolute directories other than `/`, without `..`, separated by `:`",
                    });
                }
                writable.push(path);
            }
        }
        Ok(Self {
            landlock,
            writable,
            limits: Limits {
                open_files: limit(lookup, LIMIT_NOFILE_ENV, defaults.open_files, MIN_NOFILE)?,
                processes: limit(lookup, LIMIT_NPROC_ENV, defaults.processes, 1)?,
                address_space: limit(
                    lookup,
                    LIMIT_AS_ENV,
                    defaults.address_space,
                    MIN_ADDRESS_SPACE,
                )?,
            },
        })
    }
}

/// One limit: `unlimited`, or a whole number (with a binary suffix) of at
/// least `min`.
fn limit(
    lookup: &dyn Lookup,
    name: &'static str,
    default: Option<u64>,
    min: u64,
) -> Result<Option<u64>, ConfinementSettingError> {
    let Some(value) = lookup.get(name) else {
        return Ok(default);
    };
    let bad = |reason| ConfinementSettingError {
        name,
        value: value.clone(),
        reason,
    };
    if value == "unlimited" {
        return Ok(None);
    }
    let (digits, shift) = match value.as_bytes().last() {
        Some(b'K' | b'k') => (&value[..value.len() - 1], 10),
        Some(b'M' | b'm') => (&value[..value.len() - 1], 20),
        Some(b'G' | b'g') => (&value[..value.len() - 1], 30),
        Some(b'T' | b't') => (&value[..value.len() - 1], 40),
        _ => (value.as_str(), 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(
            "expected `unlimited` or a whole number (optionally with K, M, G or T)",
        ));
    }
    let number: u64 = digits.parse().map_err(|_| bad("the number is too large"))?;
    let n = number
        .checked_mul(1 << shift)
        // RLIM_INFINITY is all ones: a finite limit stays below it.
        .filter(|n| *n < u64::MAX)
        .ok_or_else(|| bad("the number is too large"))?;
    if n < min {
        return Err(bad("too small for a shell to start"));
    }
    Ok(Some(n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn parse(pairs: &[(&str, &str)]) -> Result<Confinement, ConfinementSettingError> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Confinement::from_lookup(&map)
    }

    #[test]
    fn defaults_confine_with_landlock_and_finite_file_and_process_limits() {
        let c = parse(&[]).unwrap();
        assert!(c.landlock);
        assert_eq!(c.limits.open_files, Some(4096));
        assert_eq!(c.limits.processes, Some(4096));
        assert_eq!(c.limits.address_space, None);
        assert!(c.writable.is_empty());
        assert_eq!(
            parse(&[(LANDLOCK_WRITABLE_ENV, "/cache:/srv/pipes")])
                .unwrap()
                .writable,
            [std::path::PathBuf::from("/cache"), "/srv/pipes".into()]
        );
        assert!(parse(&[(LANDLOCK_ENV, "auto")]).unwrap().landlock);
        assert!(!parse(&[(LANDLOCK_ENV, "off")]).unwrap().landlock);
    }

    #[test]
    fn limits_take_numbers_suffixes_and_unlimited() {
        let c = parse(&[
            (LIMIT_NOFILE_ENV, "256"),
            (LIMIT_NPROC_ENV, "unlimited"),
            (LIMIT_AS_ENV, "8G"),
        ])
        .unwrap();
        assert_eq!(c.limits.open_files, Some(256));
        assert_eq!(c.limits.processes, None);
        assert_eq!(c.limits.address_space, Some(8 << 30));
        assert_eq!(
            parse(&[(LIMIT_AS_ENV, "512m")])
                .unwrap()
                .limits
                .address_space,
            Some(512 << 20)
        );
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (name, value) in [
            (LANDLOCK_ENV, "on"),
            (LIMIT_NOFILE_ENV, "many"),
            (LIMIT_NOFILE_ENV, "-1"),
            (LIMIT_NOFILE_ENV, "3"),
            (LIMIT_NPROC_ENV, "0"),
            (LIMIT_NPROC_ENV, "1.5"),
            (LIMIT_AS_ENV, "1K"),
            (LIMIT_AS_ENV, "G"),
            (LIMIT_AS_ENV, "99999999999999999999"),
            (LIMIT_AS_ENV, "17179869184T"),
            (LANDLOCK_WRITABLE_ENV, "relative/dir"),
            (LANDLOCK_WRITABLE_ENV, "/"),
            (LANDLOCK_WRITABLE_ENV, "/a:/b/../etc"),
        ] {
            let err = parse(&[(name, value)]).unwrap_err();
            assert_eq!(err.name, name, "{value}");
            assert!(err.to_string().starts_with(&format!("{name}=")), "{err}");
        }
    }
}
