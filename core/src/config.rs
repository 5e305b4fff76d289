//! Configuration, read once at start-up through a [`Lookup`] so tests pass a
//! map instead of mutating the process environment. Every field documents its
//! variable, default and unit; a bad value is a [`ConfigError`] naming the
//! variable, never a panic later.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

/// Where configuration values come from.
pub trait Lookup {
    /// The value of a variable, if set (an empty value counts as unset).
    fn get(&self, key: &str) -> Option<String>;
}

/// The process environment.
#[derive(Clone, Copy, Debug, Default)]
pub struct Env;

impl Lookup for Env {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok().filter(|v| !v.is_empty())
    }
}

impl Lookup for HashMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).filter(|v| !v.is_empty()).cloned()
    }
}

impl Lookup for BTreeMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        BTreeMap::get(self, key).filter(|v| !v.is_empty()).cloned()
    }
}

impl<const N: usize> Lookup for [(&str, &str); N] {
    fn get(&self, key: &str) -> Option<String> {
        self.iter()
            .find(|(k, v)| *k == key && !v.is_empty())
            .map(|(_, v)| (*v).to_owned())
    }
}

/// A setting that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A variable's value does not parse or is out of range.
    #[error("{var}={value:?}: {reason}")]
    Invalid {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What is allowed.
        reason: String,
    },
    /// A variable the chosen backend needs is not set.
    #[error("{var} must be set when {because}")]
    Missing {
        /// The variable.
        var: &'static str,
        /// Why it is needed.
        because: &'static str,
    },
    /// Settings that contradict each other.
    #[error("{0}")]
    Inconsistent(String),
}

/// Which family of backends serves objects and events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Local directory store, filesystem events (no setup).
    Local,
    /// Cloud Storage and Pub/Sub (or their emulators).
    Gcp,
}

/// Which launcher starts executions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LauncherKind {
    /// A local child process of `runbox-executor` (no setup).
    Local,
    /// Cloud Run Jobs over gRPC: RunJob on a pre-created job template (or
    /// the Cloud Run emulator at `RUNBOX_CLOUD_RUN_ENDPOINT`).
    CloudRun,
}

/// runbox configuration shared by the dispatcher, the CLI and the executor.
#[derive(Clone, Debug)]
pub struct Config {
    /// `RUNBOX_BACKEND`: `local` (default) or `gcp`.
    pub backend: Backend,
    /// `RUNBOX_HOME`: directory of the embedded store. Default:
    /// `$XDG_DATA_HOME/runbox`, else `$HOME/.local/share/runbox`.
    pub home: PathBuf,
    /// `RUNBOX_BUCKET`: Cloud Storage bucket (gcp backend).
    pub bucket: Option<String>,
    /// `RUNBOX_PROJECT`: Google Cloud project (gcp backend).
    pub project: Option<String>,
    /// `RUNBOX_NOTIFICATIONS_TOPIC`: Pub/Sub topic receiving the bucket's
    /// `results/` finalize notifications (gcp backend). Default: `runbox-notifications`.
    pub notifications_topic: String,
    /// `RUNBOX_EXECUTOR`: path of the `runbox-executor` binary for the local
    /// launcher. Default: next to the running binary.
    pub executor_bin: Option<PathBuf>,
    /// `RUNBOX_DEFAULT_TIMEOUT_SECS`: command timeout when the caller sets
    /// none, in seconds. Default: 600.
    pub default_timeout: Duration,
    /// `RUNBOX_MAX_TIMEOUT_SECS`: largest timeout a caller may ask for, in
    /// seconds. Default: 86400 (24 h); Cloud Run allows up to 168 h.
    pub max_timeout: Duration,
    /// `RUNBOX_OUTPUT_CAP_BYTES`: inline output kept per stream, in bytes.
    /// Default: 1048576 (1 MiB).
    pub output_cap: u64,
    /// `RUNBOX_DEADLINE_GRACE_SECS`: how long after a command's timeout the
    /// dispatcher waits for a result before reconciling, in seconds. Default: 30.
    pub deadline_grace: Duration,
    /// `RUNBOX_KILL_GRACE_MS`: between SIGTERM and SIGKILL when a command
    /// times out, in milliseconds. Default: 2000.
    pub kill_grace: Duration,
    /// `STORAGE_EMULATOR_HOST`: a Cloud Storage emulator (`host:port` or
    /// `http://host:port`) instead of Cloud Storage (gcp backend).
    pub storage_emulator_host: Option<String>,
    /// `PUBSUB_EMULATOR_HOST`: a Pub/Sub emulator (`host:port`) instead of
    /// Pub/Sub (gcp backend).
    pub pubsub_emulator_host: Option<String>,
    /// `RUNBOX_COMPLETION_GRACE_MS`: after the platform reports that an
    /// execution ended, how long the dispatcher still waits for its
    /// completion event before reading the result object directly (and
    /// writing LOST if there is none), in milliseconds. Default: 2000.
    pub completion_grace: Duration,
    /// `RUNBOX_LOCAL_SYNC`: whether the embedded store fsyncs every write
    /// (`true`, default) or only keeps writes atomic (`false`: faster, but
    /// the last writes may be lost on power loss). Ignored by other backends.
    pub local_sync: bool,
    /// `RUNBOX_LAUNCHER`: `local` (default: child processes) or `cloudrun`
    /// (Cloud Run Jobs).
    pub launcher: LauncherKind,
    /// `RUNBOX_CLOUD_RUN_JOB`: the job template every execution runs, as a
    /// full name `projects/P/locations/L/jobs/J`. Required when
    /// `RUNBOX_LAUNCHER=cloudrun`.
    pub cloud_run_job: Option<String>,
    /// `RUNBOX_CLOUD_RUN_ENDPOINT`: a Cloud Run Admin API emulator reached
    /// over plaintext gRPC without credentials (`host:port` or
    /// `http://host:port`), instead of Cloud Run over TLS with Application
    /// Default Credentials.
    pub cloud_run_endpoint: Option<String>,
    /// `RUNBOX_RUNJOB_PER_MINUTE`: RunJob calls allowed per minute; launches
    /// beyond it wait their turn. Default: 60 (Cloud Run's quota is reported
    /// between 60 and 180 per minute and region).
    pub runjob_per_minute: u32,
    /// `RUNBOX_MAX_RUNNING`: executions the Cloud Run launcher keeps running
    /// at once; more launches wait for one to end. Default: 1000 (Cloud Run's
    /// limit per project and region).
    pub max_running: u32,
    /// `RUNBOX_WORKSPACE_MAX_BYTES`: largest total size of a session's
    /// workspace the executor saves, in bytes; a larger one is not saved and
    /// the result says why. Default: 10737418240 (10 GiB).
    pub workspace_max_bytes: u64,
}

/// Kept here for existing callers; the limit belongs to the executor
/// contract.
pub use crate::contract::MAX_COMMAND_BYTES;

impl Default for Config {
    fn default() -> Self {
        Self {
            backend: Backend::Local,
            home: default_home(&Env),
            bucket: None,
            project: None,
            notifications_topic: "runbox-notifications".to_owned(),
            executor_bin: None,
            default_timeout: Duration::from_secs(600),
            max_timeout: Duration::from_secs(86_400),
            output_cap: 1024 * 1024,
            deadline_grace: Duration::from_secs(30),
            kill_grace: Duration::from_millis(2000),
            local_sync: true,
            storage_emulator_host: None,
            pubsub_emulator_host: None,
            completion_grace: Duration::from_millis(2000),
            launcher: LauncherKind::Local,
            cloud_run_job: None,
            cloud_run_endpoint: None,
            runjob_per_minute: 60,
            max_running: 1000,
            workspace_max_bytes: 10 * 1024 * 1024 * 1024,
        }
    }
}

fn default_home(env: &dyn Lookup) -> PathBuf {
    if let Some(xdg) = env.get("XDG_DATA_HOME") {
        return PathBuf::from(xdg).join("runbox");
    }
    match env.get("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/runbox"),
        None => PathBuf::from(".runbox"),
    }
}

fn parse_num(
    env: &dyn Lookup,
    var: &'static str,
    min: u64,
    max: u64,
) -> Result<Option<u64>, ConfigError> {
    let Some(value) = env.get(var) else {
        return Ok(None);
    };
    match value.trim().parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(Some(n)),
        _ => Err(ConfigError::Invalid {
            var,
            value,
            reason: format!("expected a whole number from {min} to {max}"),
        }),
    }
}

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&Env)
    }

    /// Reads the configuration from any lookup, validating every value.
    pub fn from_lookup(env: &dyn Lookup) -> Result<Self, ConfigError> {
        let mut cfg = Config {
            home: default_home(env),
            ..Config::default()
        };
        cfg.backend = match env.get("RUNBOX_BACKEND").as_deref() {
            None | Some("local") => Backend::Local,
            Some("gcp") => Backend::Gcp,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    var: "RUNBOX_BACKEND",
                    value: other.to_owned(),
                    reason: "expected `local` or `gcp`".to_owned(),
                });
            }
        };
        if let Some(home) = env.get("RUNBOX_HOME") {
            cfg.home = PathBuf::from(home);
        }
        cfg.bucket = env.get("RUNBOX_BUCKET");
        cfg.project = env.get("RUNBOX_PROJECT");
        if let Some(topic) = env.get("RUNBOX_NOTIFICATIONS_TOPIC") {
            cfg.notifications_topic = topic;
        }
        cfg.executor_bin = env.get("RUNBOX_EXECUTOR").map(PathBuf::from);
        if let Some(s) = parse_num(env, "RUNBOX_DEFAULT_TIMEOUT_SECS", 1, 604_800)? {
            cfg.default_timeout = Duration::from_secs(s);
        }
        if let Some(s) = parse_num(env, "RUNBOX_MAX_TIMEOUT_SECS", 1, 604_800)? {
            cfg.max_timeout = Duration::from_secs(s);
        }
        if let Some(n) = parse_num(env, "RUNBOX_OUTPUT_CAP_BYTES", 1024, 64 * 1024 * 1024)? {
            cfg.output_cap = n;
        }
        if let Some(s) = parse_num(env, "RUNBOX_DEADLINE_GRACE_SECS", 1, 3600)? {
            cfg.deadline_grace = Duration::from_secs(s);
        }
        if let Some(ms) = parse_num(env, "RUNBOX_KILL_GRACE_MS", 0, 60_000)? {
            cfg.kill_grace = Duration::from_millis(ms);
        }
        cfg.storage_emulator_host = env.get("STORAGE_EMULATOR_HOST");
        cfg.pubsub_emulator_host = env.get("PUBSUB_EMULATOR_HOST");
        if let Some(ms) = parse_num(env, "RUNBOX_COMPLETION_GRACE_MS", 0, 600_000)? {
            cfg.completion_grace = Duration::from_millis(ms);
        }
        if let Some(value) = env.get("RUNBOX_LOCAL_SYNC") {
            cfg.local_sync = match value.as_str() {
                "true" | "1" | "yes" => true,
                "false" | "0" | "no" => false,
                _ => {
                    return Err(ConfigError::Invalid {
                        var: "RUNBOX_LOCAL_SYNC",
                        value,
                        reason: "expected true or false".to_owned(),
                    });
                }
            };
        }
        cfg.launcher = match env.get("RUNBOX_LAUNCHER").as_deref() {
            None | Some("local") => LauncherKind::Local,
            Some("cloudrun") => LauncherKind::CloudRun,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    var: "RUNBOX_LAUNCHER",
                    value: other.to_owned(),
                    reason: "expected `local` or `cloudrun`".to_owned(),
                });
            }
        };
        cfg.cloud_run_job = env.get("RUNBOX_CLOUD_RUN_JOB");
        cfg.cloud_run_endpoint = env.get("RUNBOX_CLOUD_RUN_ENDPOINT");
        if let Some(n) = parse_num(env, "RUNBOX_RUNJOB_PER_MINUTE", 1, 100_000)? {
            cfg.runjob_per_minute = n as u32;
        }
        if let Some(n) = parse_num(env, "RUNBOX_MAX_RUNNING", 1, 1_000_000)? {
            cfg.max_running = n as u32;
        }
        if let Some(n) = parse_num(env, "RUNBOX_WORKSPACE_MAX_BYTES", 1, u64::MAX)? {
            cfg.workspace_max_bytes = n;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// The variables that reproduce this configuration in a child process
    /// (the local launcher passes them to the executor, which reads the same
    /// names).
    pub fn to_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            (
                "RUNBOX_BACKEND",
                match self.backend {
                    Backend::Local => "local",
                    Backend::Gcp => "gcp",
                }
                .to_owned(),
            ),
            ("RUNBOX_HOME", self.home.to_string_lossy().into_owned()),
            (
                "RUNBOX_NOTIFICATIONS_TOPIC",
                self.notifications_topic.clone(),
            ),
            (
                "RUNBOX_DEFAULT_TIMEOUT_SECS",
                self.default_timeout.as_secs().to_string(),
            ),
            (
                "RUNBOX_MAX_TIMEOUT_SECS",
                self.max_timeout.as_secs().to_string(),
            ),
            ("RUNBOX_OUTPUT_CAP_BYTES", self.output_cap.to_string()),
            (
                "RUNBOX_DEADLINE_GRACE_SECS",
                self.deadline_grace.as_secs().to_string(),
            ),
            (
                "RUNBOX_KILL_GRACE_MS",
                self.kill_grace.as_millis().to_string(),
            ),
            ("RUNBOX_LOCAL_SYNC", self.local_sync.to_string()),
            (
                "RUNBOX_COMPLETION_GRACE_MS",
                self.completion_grace.as_millis().to_string(),
            ),
        ];
        if let Some(host) = &self.storage_emulator_host {
            env.push(("STORAGE_EMULATOR_HOST", host.clone()));
        }
        if let Some(host) = &self.pubsub_emulator_host {
            env.push(("PUBSUB_EMULATOR_HOST", host.clone()));
        }
        if let Some(bucket) = &self.bucket {
            env.push(("RUNBOX_BUCKET", bucket.clone()));
        }
        if let Some(project) = &self.project {
            env.push(("RUNBOX_PROJECT", project.clone()));
        }
        if let Some(bin) = &self.executor_bin {
            env.push(("RUNBOX_EXECUTOR", bin.to_string_lossy().into_owned()));
        }
        env.push((
            "RUNBOX_LAUNCHER",
            match self.launcher {
                LauncherKind::Local => "local",
                LauncherKind::CloudRun => "cloudrun",
            }
            .to_owned(),
        ));
        if let Some(job) = &self.cloud_run_job {
            env.push(("RUNBOX_CLOUD_RUN_JOB", job.clone()));
        }
        if let Some(endpoint) = &self.cloud_run_endpoint {
            env.push(("RUNBOX_CLOUD_RUN_ENDPOINT", endpoint.clone()));
        }
        env.push((
            "RUNBOX_RUNJOB_PER_MINUTE",
            self.runjob_per_minute.to_string(),
        ));
        env.push(("RUNBOX_MAX_RUNNING", self.max_running.to_string()));
        env.push((
            "RUNBOX_WORKSPACE_MAX_BYTES",
            self.workspace_max_bytes.to_string(),
        ));
        env
    }

    /// Checks the settings against each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.default_timeout > self.max_timeout {
            return Err(ConfigError::Inconsistent(format!(
                "RUNBOX_DEFAULT_TIMEOUT_SECS ({}) exceeds RUNBOX_MAX_TIMEOUT_SECS ({})",
                self.default_timeout.as_secs(),
                self.max_timeout.as_secs()
            )));
        }
        if let Some(job) = &self.cloud_run_job
            && !is_job_name(job)
        {
            return Err(ConfigError::Invalid {
                var: "RUNBOX_CLOUD_RUN_JOB",
                value: job.clone(),
                reason: "expected a full job name `projects/PROJECT/locations/LOCATION/jobs/JOB`"
                    .to_owned(),
            });
        }
        if self.launcher == LauncherKind::CloudRun && self.cloud_run_job.is_none() {
            return Err(ConfigError::Missing {
                var: "RUNBOX_CLOUD_RUN_JOB",
                because: "RUNBOX_LAUNCHER=cloudrun",
            });
        }
        if self.backend == Backend::Gcp {
            if self.bucket.is_none() {
                return Err(ConfigError::Missing {
                    var: "RUNBOX_BUCKET",
                    because: "RUNBOX_BACKEND=gcp",
                });
            }
            if self.project.is_none() {
                return Err(ConfigError::Missing {
                    var: "RUNBOX_PROJECT",
                    because: "RUNBOX_BACKEND=gcp",
                });
            }
        }
        Ok(())
    }
}

/// Whether `name` has the form `projects/P/locations/L/jobs/J` with
/// non-empty segments free of `/`.
fn is_job_name(name: &str) -> bool {
    let parts: Vec<&str> = name.split('/').collect();
    matches!(
        parts.as_slice(),
        ["projects", p, "locations", l, "jobs", j] if !p.is_empty() && !l.is_empty() && !j.is_empty()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let cfg = Config::from_lookup(&[("HOME", "/h")]).unwrap();
        assert_eq!(cfg.home, PathBuf::from("/h/.local/share/runbox"));
        assert_eq!(cfg.backend, Backend::Local);
        assert_eq!(cfg.output_cap, 1 << 20);
        let cfg = Config::from_lookup(&[
            ("RUNBOX_HOME", "/x"),
            ("RUNBOX_MAX_TIMEOUT_SECS", "60"),
            ("RUNBOX_DEFAULT_TIMEOUT_SECS", "30"),
        ])
        .unwrap();
        assert_eq!(cfg.home, PathBuf::from("/x"));
        assert_eq!(cfg.max_timeout, Duration::from_secs(60));
    }

    #[test]
    fn to_env_round_trips() {
        let cfg = Config::from_lookup(&[
            ("RUNBOX_HOME", "/x"),
            ("RUNBOX_BACKEND", "gcp"),
            ("RUNBOX_BUCKET", "b"),
            ("RUNBOX_PROJECT", "p"),
            ("RUNBOX_KILL_GRACE_MS", "250"),
            ("RUNBOX_LOCAL_SYNC", "false"),
            ("STORAGE_EMULATOR_HOST", "http://127.0.0.1:1"),
            ("RUNBOX_LAUNCHER", "cloudrun"),
            ("RUNBOX_CLOUD_RUN_JOB", "projects/p/locations/l/jobs/j"),
            ("RUNBOX_CLOUD_RUN_ENDPOINT", "127.0.0.1:2"),
            ("RUNBOX_RUNJOB_PER_MINUTE", "600"),
            ("RUNBOX_MAX_RUNNING", "7"),
        ])
        .unwrap();
        let map: HashMap<String, String> = cfg
            .to_env()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        let again = Config::from_lookup(&map).unwrap();
        assert_eq!(again.home, cfg.home);
        assert_eq!(again.backend, Backend::Gcp);
        assert_eq!(again.bucket.as_deref(), Some("b"));
        assert_eq!(again.kill_grace, Duration::from_millis(250));
        assert!(!again.local_sync);
        assert_eq!(
            again.storage_emulator_host.as_deref(),
            Some("http://127.0.0.1:1")
        );
        assert_eq!(again.launcher, LauncherKind::CloudRun);
        assert_eq!(
            again.cloud_run_job.as_deref(),
            Some("projects/p/locations/l/jobs/j")
        );
        assert_eq!(again.cloud_run_endpoint.as_deref(), Some("127.0.0.1:2"));
        assert_eq!(again.runjob_per_minute, 600);
        assert_eq!(again.max_running, 7);
    }

    #[test]
    fn launcher_settings() {
        let cfg = Config::from_lookup(&[("HOME", "/h")]).unwrap();
        assert_eq!(cfg.launcher, LauncherKind::Local);
        assert_eq!(cfg.runjob_per_minute, 60);
        assert_eq!(cfg.max_running, 1000);
        assert_eq!(cfg.cloud_run_job, None);
        let err = Config::from_lookup(&[("RUNBOX_LAUNCHER", "cloudrun")]).unwrap_err();
        assert_eq!(
            err,
            ConfigError::Missing {
                var: "RUNBOX_CLOUD_RUN_JOB",
                because: "RUNBOX_LAUNCHER=cloudrun"
            }
        );
        let err = Config::from_lookup(&[("RUNBOX_LAUNCHER", "k8s")]).unwrap_err();
        assert!(err.to_string().contains("RUNBOX_LAUNCHER"), "{err}");
        for bad in [
            "runbox",
            "projects/p/locations/l/jobs/",
            "projects/p/jobs/j",
            "projects/p/locations/l/jobs/j/x",
        ] {
            let err = Config::from_lookup(&[
                ("RUNBOX_LAUNCHER", "cloudrun"),
                ("RUNBOX_CLOUD_RUN_JOB", bad),
            ])
            .unwrap_err();
            assert!(
                err.to_string().contains("RUNBOX_CLOUD_RUN_JOB"),
                "{bad}: {err}"
            );
        }
        let err = Config::from_lookup(&[("RUNBOX_RUNJOB_PER_MINUTE", "0")]).unwrap_err();
        assert!(
            err.to_string().contains("RUNBOX_RUNJOB_PER_MINUTE"),
            "{err}"
        );
        let err = Config::from_lookup(&[("RUNBOX_MAX_RUNNING", "lots")]).unwrap_err();
        assert!(err.to_string().contains("RUNBOX_MAX_RUNNING"), "{err}");
    }

    #[test]
    fn bad_values_name_their_variable() {
        let err = Config::from_lookup(&[("RUNBOX_BACKEND", "aws")]).unwrap_err();
        assert!(err.to_string().contains("RUNBOX_BACKEND"), "{err}");
        let err = Config::from_lookup(&[("RUNBOX_MAX_TIMEOUT_SECS", "soon")]).unwrap_err();
        assert!(err.to_string().contains("RUNBOX_MAX_TIMEOUT_SECS"), "{err}");
        let err = Config::from_lookup(&[("RUNBOX_MAX_TIMEOUT_SECS", "10")]).unwrap_err();
        assert!(matches!(err, ConfigError::Inconsistent(_)), "{err}");
        let err = Config::from_lookup(&[("RUNBOX_BACKEND", "gcp")]).unwrap_err();
        assert_eq!(
            err,
            ConfigError::Missing {
                var: "RUNBOX_BUCKET",
                because: "RUNBOX_BACKEND=gcp"
            }
        );
    }
}
