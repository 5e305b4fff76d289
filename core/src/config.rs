//! Configuration, read once at start-up through a [`Lookup`] so tests pass a
//! map instead of mutating the process environment. Every field documents its
//! variable, default and unit. [`Config`] is typed by backend and launcher:
//! each carries exactly the settings it needs, so a configuration missing
//! one cannot be built. A bad value is a [`ConfigError`] naming the
//! variable, never a panic later, and reading reports every bad value at
//! once.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
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

/// The name of every variable runbox reads, each written once: both
/// [`Config::from_lookup`] and [`Config::to_env`] use these.
pub mod vars {
    /// Which backend family serves objects and events.
    pub const RUNBOX_BACKEND: &str = "RUNBOX_BACKEND";
    /// Directory of the embedded store.
    pub const RUNBOX_HOME: &str = "RUNBOX_HOME";
    /// Whether the embedded store fsyncs every write.
    pub const RUNBOX_LOCAL_SYNC: &str = "RUNBOX_LOCAL_SYNC";
    /// Cloud Storage bucket.
    pub const RUNBOX_BUCKET: &str = "RUNBOX_BUCKET";
    /// Google Cloud project.
    pub const RUNBOX_PROJECT: &str = "RUNBOX_PROJECT";
    /// Pub/Sub topic of the bucket's finalize notifications.
    pub const RUNBOX_NOTIFICATIONS_TOPIC: &str = "RUNBOX_NOTIFICATIONS_TOPIC";
    /// Pub/Sub topic carrying commands to warm executions on Cloud Run.
    pub const RUNBOX_COMMANDS_TOPIC: &str = "RUNBOX_COMMANDS_TOPIC";
    pub use crate::store::gcs::STORAGE_EMULATOR_HOST;
    /// A Pub/Sub emulator instead of Pub/Sub.
    pub const PUBSUB_EMULATOR_HOST: &str = "PUBSUB_EMULATOR_HOST";
    /// Validity of a session lease without renewal (gcp backend).
    pub const RUNBOX_SESSION_LEASE_TTL_MS: &str = "RUNBOX_SESSION_LEASE_TTL_MS";
    /// Which launcher starts executions.
    pub const RUNBOX_LAUNCHER: &str = "RUNBOX_LAUNCHER";
    /// Path of the `runbox-executor` binary.
    pub const RUNBOX_EXECUTOR: &str = "RUNBOX_EXECUTOR";
    /// The Cloud Run job template.
    pub const RUNBOX_CLOUD_RUN_JOB: &str = "RUNBOX_CLOUD_RUN_JOB";
    /// A Cloud Run Admin API emulator.
    pub const RUNBOX_CLOUD_RUN_ENDPOINT: &str = "RUNBOX_CLOUD_RUN_ENDPOINT";
    /// The job template's container that RunJob overrides apply to.
    pub const RUNBOX_CLOUD_RUN_CONTAINER: &str = "RUNBOX_CLOUD_RUN_CONTAINER";
    /// RunJob calls per minute.
    pub const RUNBOX_RUNJOB_PER_MINUTE: &str = "RUNBOX_RUNJOB_PER_MINUTE";
    /// Cloud Run executions running at once.
    pub const RUNBOX_MAX_RUNNING: &str = "RUNBOX_MAX_RUNNING";
    /// Task timeout of a warm execution on Cloud Run.
    pub const RUNBOX_WARM_TASK_TIMEOUT_SECS: &str = "RUNBOX_WARM_TASK_TIMEOUT_SECS";
    /// Timeout when the caller gives none.
    pub const RUNBOX_DEFAULT_TIMEOUT_SECS: &str = "RUNBOX_DEFAULT_TIMEOUT_SECS";
    /// Largest timeout accepted.
    pub const RUNBOX_MAX_TIMEOUT_SECS: &str = "RUNBOX_MAX_TIMEOUT_SECS";
    /// Inline output kept per stream.
    pub const RUNBOX_OUTPUT_CAP_BYTES: &str = "RUNBOX_OUTPUT_CAP_BYTES";
    /// Output kept per stream at all (inline and log together).
    pub const RUNBOX_LOG_CAP_BYTES: &str = "RUNBOX_LOG_CAP_BYTES";
    /// Wait past a command's timeout before reconciling.
    pub const RUNBOX_DEADLINE_GRACE_SECS: &str = "RUNBOX_DEADLINE_GRACE_SECS";
    /// SIGTERM → SIGKILL delay on timeout.
    pub const RUNBOX_KILL_GRACE_MS: &str = "RUNBOX_KILL_GRACE_MS";
    /// Wait for a completion event after an execution ended.
    pub const RUNBOX_COMPLETION_GRACE_MS: &str = "RUNBOX_COMPLETION_GRACE_MS";
    /// Whether a completion resolves from the result in the event's metadata.
    pub const RUNBOX_RESULT_IN_METADATA: &str = "RUNBOX_RESULT_IN_METADATA";
    /// Largest standard input a command accepts.
    pub const RUNBOX_STDIN_CAP_BYTES: &str = "RUNBOX_STDIN_CAP_BYTES";
    /// The mode of sessions created without one.
    pub use crate::warm::SESSION_MODE_ENV as RUNBOX_SESSION_MODE;
    /// Largest workspace the executor saves.
    pub const RUNBOX_WORKSPACE_MAX_BYTES: &str = "RUNBOX_WORKSPACE_MAX_BYTES";
    /// Base of the default `RUNBOX_HOME` (XDG base directory).
    pub const XDG_DATA_HOME: &str = "XDG_DATA_HOME";
    /// Fallback base of the default `RUNBOX_HOME`.
    pub const HOME: &str = "HOME";
}

use vars::*;

/// Settings that cannot be used. Reading a configuration reports every
/// problem it finds at once, not just the first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// One or more settings are unusable; the message lists each on its own
    /// line.
    #[error("{}", lines(.0))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    /// Every problem found, in the order the variables were read.
    pub fn problems(&self) -> &[Problem] {
        match self {
            Self::Invalid(problems) => problems,
        }
    }
}

impl From<Problem> for ConfigError {
    fn from(problem: Problem) -> Self {
        Self::Invalid(vec![problem])
    }
}

/// One unusable setting, naming its variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A variable's value does not parse or is out of range.
    Invalid {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What is allowed.
        reason: String,
    },
    /// A variable the chosen backend or launcher needs is not set.
    Missing {
        /// The variable.
        var: &'static str,
        /// The variable whose value makes it necessary.
        needed_by: &'static str,
        /// That variable's value.
        needed_by_value: &'static str,
    },
    /// Two settings contradict each other.
    Conflict {
        /// The variable at fault.
        var: &'static str,
        /// Its value.
        value: String,
        /// How it contradicts the other one, e.g. `exceeds`.
        relation: &'static str,
        /// The other variable.
        other: &'static str,
        /// The other variable's value.
        other_value: String,
    },
}

impl Problem {
    /// The variable at fault.
    pub fn var(&self) -> &'static str {
        match self {
            Self::Invalid { var, .. } | Self::Missing { var, .. } | Self::Conflict { var, .. } => {
                var
            }
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Invalid { var, value, reason } => write!(f, "{var}={value:?}: {reason}"),
            Self::Missing {
                var,
                needed_by,
                needed_by_value,
            } => write!(f, "{var} must be set when {needed_by}={needed_by_value}"),
            Self::Conflict {
                var,
                value,
                relation,
                other,
                other_value,
            } => write!(f, "{var} ({value}) {relation} {other} ({other_value})"),
        }
    }
}

/// Which family of backends serves objects and events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// Local directory store, filesystem events (no setup).
    Local,
    /// Cloud Storage and Pub/Sub (or their emulators).
    Gcp,
}

impl BackendKind {
    const ALL: [Self; 2] = [Self::Local, Self::Gcp];

    /// The value of `RUNBOX_BACKEND` naming this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Gcp => "gcp",
        }
    }
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

impl LauncherKind {
    const ALL: [Self; 2] = [Self::Local, Self::CloudRun];

    /// The value of `RUNBOX_LAUNCHER` naming this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::CloudRun => "cloudrun",
        }
    }
}

/// runbox configuration shared by the dispatcher, the CLI and the executor.
/// Each backend and launcher carries exactly the settings it needs, so a
/// configuration that lacks one (a gcp backend without a bucket) cannot be
/// built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// `RUNBOX_BACKEND` and its settings: where objects live and where
    /// completion events come from.
    pub backend: BackendConfig,
    /// `RUNBOX_LAUNCHER` and its settings: what starts executions.
    pub launcher: LauncherConfig,
    /// Timeouts, caps and grace periods, whatever the backend and launcher.
    pub limits: Limits,
}

/// The store and event source, chosen together by `RUNBOX_BACKEND`: the
/// gcp store's completions arrive as its bucket's Pub/Sub notifications.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendConfig {
    /// `RUNBOX_BACKEND=local` (default): the embedded store, a local
    /// directory, with filesystem (inotify) events.
    Local(EmbeddedConfig),
    /// `RUNBOX_BACKEND=gcp`: Cloud Storage with GCS notifications over
    /// Pub/Sub (or their emulators).
    Gcp(GcpConfig),
}

impl BackendConfig {
    /// Which family this is.
    pub fn kind(&self) -> BackendKind {
        match self {
            Self::Local(_) => BackendKind::Local,
            Self::Gcp(_) => BackendKind::Gcp,
        }
    }
}

/// The embedded backend's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmbeddedConfig {
    /// `RUNBOX_HOME`: directory of the embedded store. Default:
    /// `$XDG_DATA_HOME/runbox`, else `$HOME/.local/share/runbox`.
    pub home: PathBuf,
    /// `RUNBOX_LOCAL_SYNC`: whether the embedded store fsyncs every write
    /// (`true`, default) or only keeps writes atomic (`false`: faster, but
    /// the last writes may be lost on power loss).
    pub sync: bool,
}

impl EmbeddedConfig {
    /// The embedded store in `home`, fsyncing every write.
    pub fn new(home: impl Into<PathBuf>) -> Self {
        Self {
            home: home.into(),
            sync: true,
        }
    }
}

/// The gcp backend's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcpConfig {
    /// `RUNBOX_BUCKET`: Cloud Storage bucket. Required.
    pub bucket: String,
    /// `RUNBOX_PROJECT`: Google Cloud project of the bucket's notifications
    /// topic. Required.
    pub project: String,
    /// `RUNBOX_NOTIFICATIONS_TOPIC`: Pub/Sub topic receiving the bucket's
    /// `results/` finalize notifications. Default: `runbox-notifications`.
    pub notifications_topic: String,
    /// `RUNBOX_COMMANDS_TOPIC`: Pub/Sub topic on which dispatchers hand the
    /// later commands of a warm session to its running Cloud Run execution
    /// (see [`crate::warm`]). Default: `runbox-commands`.
    pub commands_topic: String,
    /// `STORAGE_EMULATOR_HOST`: a Cloud Storage emulator (`host:port` or
    /// `http://host:port`) instead of Cloud Storage.
    pub storage_emulator_host: Option<String>,
    /// `PUBSUB_EMULATOR_HOST`: a Pub/Sub emulator (`host:port`) instead of
    /// Pub/Sub.
    pub pubsub_emulator_host: Option<String>,
    /// `RUNBOX_SESSION_LEASE_TTL_MS`: how long a session lease stays valid
    /// without renewal, in milliseconds (1000 to 3600000). The holder renews
    /// it every third of that; a holder that died blocks the session's next
    /// command for at most this long. Default: 30000.
    pub session_lease_ttl: Duration,
    /// `RUNBOX_EXECUTION_CREDENTIALS`, `RUNBOX_STS_ENDPOINT`,
    /// `RUNBOX_STORAGE_EMULATOR_TOKEN`: the credentials executors get (see
    /// [`crate::credentials`]). The dispatcher's alone: [`Config::to_env`]
    /// leaves them out, so an executor never sees them.
    pub credentials: crate::credentials::CredentialSettings,
}

impl GcpConfig {
    /// `bucket` in `project`, on Google Cloud itself, with the default
    /// notifications topic.
    pub fn new(bucket: impl Into<String>, project: impl Into<String>) -> Self {
        Self {
            bucket: bucket.into(),
            project: project.into(),
            notifications_topic: "runbox-notifications".to_owned(),
            commands_topic: "runbox-commands".to_owned(),
            storage_emulator_host: None,
            pubsub_emulator_host: None,
            session_lease_ttl: Duration::from_secs(30),
            credentials: crate::credentials::CredentialSettings::default(),
        }
    }
}

/// The launcher, chosen by `RUNBOX_LAUNCHER`, with its settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LauncherConfig {
    /// `RUNBOX_LAUNCHER=local` (default): child processes of
    /// `runbox-executor`.
    Local(LocalLauncherConfig),
    /// `RUNBOX_LAUNCHER=cloudrun`: Cloud Run Jobs.
    CloudRun(CloudRunConfig),
}

impl LauncherConfig {
    /// Which launcher this is.
    pub fn kind(&self) -> LauncherKind {
        match self {
            Self::Local(_) => LauncherKind::Local,
            Self::CloudRun(_) => LauncherKind::CloudRun,
        }
    }

    /// The configured executor binary: set only for the local launcher.
    pub fn executor_bin(&self) -> Option<&Path> {
        match self {
            Self::Local(local) => local.executor_bin.as_deref(),
            Self::CloudRun(_) => None,
        }
    }
}

impl Default for LauncherConfig {
    fn default() -> Self {
        Self::Local(LocalLauncherConfig::default())
    }
}

/// The local launcher's settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalLauncherConfig {
    /// `RUNBOX_EXECUTOR`: path of the `runbox-executor` binary. Default:
    /// next to the running binary.
    pub executor_bin: Option<PathBuf>,
    /// Executor settings passed in every executor's configuration, over
    /// those the launcher forwards from its own environment: the
    /// confinement settings (`RUNBOX_LANDLOCK`, `RUNBOX_LIMIT_*`,
    /// `RUNBOX_LANDLOCK_WRITABLE`, see [`crate::confinement`]) the
    /// configuration was read with, and whatever a program or test adds
    /// without touching its environment.
    pub executor_settings: std::collections::BTreeMap<String, String>,
}

/// The Cloud Run launcher's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloudRunConfig {
    /// `RUNBOX_CLOUD_RUN_JOB`: the job template every execution runs, as a
    /// full name `projects/P/locations/L/jobs/J`. Required.
    pub job: String,
    /// `RUNBOX_CLOUD_RUN_ENDPOINT`: a Cloud Run Admin API emulator reached
    /// over plaintext gRPC without credentials (`host:port` or
    /// `http://host:port`), instead of Cloud Run over TLS with Application
    /// Default Credentials.
    pub endpoint: Option<String>,
    /// `RUNBOX_CLOUD_RUN_CONTAINER`: the name of the job template's container
    /// that runs `runbox-executor`, which RunJob's overrides (the execution
    /// id, the timeout) must name when the template has more than one
    /// container (a sidecar). Default: none named, which Cloud Run accepts
    /// only for a single-container template. An RFC 1123 label.
    pub container: Option<String>,
    /// `RUNBOX_RUNJOB_PER_MINUTE`: RunJob calls allowed per minute; launches
    /// beyond it wait their turn. Default: 60 (Cloud Run's quota is reported
    /// between 60 and 180 per minute and region).
    pub runjob_per_minute: u32,
    /// `RUNBOX_MAX_RUNNING`: executions the Cloud Run launcher keeps running
    /// at once; more launches wait for one to end. Default: 1000 (Cloud Run's
    /// limit per project and region).
    pub max_running: u32,
    /// `RUNBOX_WARM_TASK_TIMEOUT_SECS`: the task timeout of a warm
    /// execution (10 to 604800 seconds; a first command with a longer
    /// timeout gets that plus a margin). The execution stops taking
    /// commands in time to finish them before it, and hands over to a new
    /// one. Default: 86400 (24 hours).
    pub warm_task_timeout: Duration,
}

impl CloudRunConfig {
    /// The job template `job` on Cloud Run itself, with the default budgets.
    pub fn new(job: impl Into<String>) -> Self {
        Self {
            job: job.into(),
            endpoint: None,
            container: None,
            runjob_per_minute: 60,
            max_running: 1000,
            warm_task_timeout: Duration::from_secs(86_400),
        }
    }
}

/// Timeouts, caps and grace periods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// `RUNBOX_DEFAULT_TIMEOUT_SECS`: command timeout when the caller sets
    /// none, in seconds. Default: 600.
    pub default_timeout: Duration,
    /// `RUNBOX_MAX_TIMEOUT_SECS`: largest timeout a caller may ask for, in
    /// seconds. Default: 86400 (24 h); Cloud Run allows up to 168 h.
    pub max_timeout: Duration,
    /// `RUNBOX_OUTPUT_CAP_BYTES`: inline output kept per stream, in bytes.
    /// Default: 1048576 (1 MiB).
    pub output_cap: u64,
    /// `RUNBOX_DEADLINE_GRACE_SECS`: how long past a command's timeout the
    /// dispatcher waits before reconciling, in seconds. Default: 30.
    pub deadline_grace: Duration,
    /// `RUNBOX_KILL_GRACE_MS`: between SIGTERM and SIGKILL when a command
    /// times out, in milliseconds. Default: 2000.
    pub kill_grace: Duration,
    /// `RUNBOX_COMPLETION_GRACE_MS`: after the platform reports that an
    /// execution ended, how long the dispatcher still waits for its
    /// completion event before reading the result object directly (and
    /// writing LOST if there is none), in milliseconds. Default: 2000.
    pub completion_grace: Duration,
    /// `RUNBOX_RESULT_IN_METADATA`: whether the dispatcher resolves a
    /// completion from the result its executor put in the result object's
    /// custom metadata (`true`, default; see
    /// [`crate::result_metadata`]) or always reads the result object
    /// (`false`: for comparing the two paths). The executor writes the
    /// metadata either way.
    pub result_in_metadata: bool,
    /// `RUNBOX_WORKSPACE_MAX_BYTES`: largest total size of a session's
    /// workspace the executor saves, in bytes; a larger one is not saved and
    /// the result says why. Default: 10737418240 (10 GiB).
    pub workspace_max_bytes: u64,
    /// `RUNBOX_LOG_CAP_BYTES`: most bytes of each output stream the
    /// executor keeps at all (on its disk while the command runs, and in the
    /// log object or background chunks), in bytes. It applies while the
    /// output is captured: bytes beyond it are counted and dropped, and the
    /// result reports the stream as truncated with the total produced.
    /// Default: 67108864 (64 MiB).
    pub log_cap: u64,
    /// `RUNBOX_STDIN_CAP_BYTES`: largest standard input a command accepts,
    /// in bytes (1 to 1073741824); more is refused before anything is
    /// written. Default: 16777216 (16 MiB).
    pub stdin_cap: u64,
    /// `RUNBOX_SESSION_MODE`: the mode of sessions created without one,
    /// `oneshot` or `warm` (see [`crate::warm`]). Default: `oneshot`.
    pub session_mode: crate::warm::SessionMode,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            default_timeout: Duration::from_secs(600),
            max_timeout: Duration::from_secs(86_400),
            output_cap: 1024 * 1024,
            deadline_grace: Duration::from_secs(30),
            kill_grace: Duration::from_millis(2000),
            completion_grace: Duration::from_millis(2000),
            result_in_metadata: true,
            workspace_max_bytes: 10 * 1024 * 1024 * 1024,
            log_cap: 64 * 1024 * 1024,
            stdin_cap: 16 << 20,
            session_mode: crate::warm::SessionMode::Oneshot,
        }
    }
}

/// Kept here for existing callers; the limit belongs to the executor
/// contract.
pub use crate::contract::MAX_COMMAND_BYTES;

impl Default for Config {
    /// The embedded backend in the default home, the local launcher and
    /// default limits.
    fn default() -> Self {
        Self::embedded(default_home(&Env))
    }
}

impl Config {
    /// The embedded backend in `home`, the local launcher (executor found
    /// next to the running binary) and default limits.
    pub fn embedded(home: impl Into<PathBuf>) -> Self {
        Self::new(BackendConfig::Local(EmbeddedConfig::new(home)))
    }

    /// `backend` with the local launcher and default limits.
    pub fn new(backend: BackendConfig) -> Self {
        Self {
            backend,
            launcher: LauncherConfig::default(),
            limits: Limits::default(),
        }
    }

    /// Uses `launcher`.
    #[must_use]
    pub fn with_launcher(mut self, launcher: LauncherConfig) -> Self {
        self.launcher = launcher;
        self
    }

    /// Uses the local launcher with the executor binary at `path`.
    #[must_use]
    pub fn with_executor_bin(self, path: impl Into<PathBuf>) -> Self {
        let executor_settings = match &self.launcher {
            LauncherConfig::Local(local) => local.executor_settings.clone(),
            LauncherConfig::CloudRun(_) => Default::default(),
        };
        self.with_launcher(LauncherConfig::Local(LocalLauncherConfig {
            executor_bin: Some(path.into()),
            executor_settings,
        }))
    }

    /// With the local launcher, passes `name=value` in every executor's
    /// configuration ([`LocalLauncherConfig::executor_settings`]); with
    /// another launcher, changes nothing.
    #[must_use]
    pub fn with_executor_setting(mut self, name: &str, value: impl Into<String>) -> Self {
        if let LauncherConfig::Local(local) = &mut self.launcher {
            local
                .executor_settings
                .insert(name.to_owned(), value.into());
        }
        self
    }

    /// Uses `limits`.
    #[must_use]
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets [`Limits::kill_grace`].
    #[must_use]
    pub fn with_kill_grace(mut self, grace: Duration) -> Self {
        self.limits.kill_grace = grace;
        self
    }

    /// Sets [`Limits::deadline_grace`].
    #[must_use]
    pub fn with_deadline_grace(mut self, grace: Duration) -> Self {
        self.limits.deadline_grace = grace;
        self
    }

    /// Sets [`Limits::completion_grace`].
    #[must_use]
    pub fn with_completion_grace(mut self, grace: Duration) -> Self {
        self.limits.completion_grace = grace;
        self
    }

    /// Sets [`EmbeddedConfig::sync`]; other backends have no such setting
    /// and are left as they are.
    #[must_use]
    pub fn with_local_sync(mut self, sync: bool) -> Self {
        if let BackendConfig::Local(embedded) = &mut self.backend {
            embedded.sync = sync;
        }
        self
    }

    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&Env)
    }

    /// Reads the configuration from any lookup, validating every value and
    /// reporting every problem found.
    pub fn from_lookup(env: &dyn Lookup) -> Result<Self, ConfigError> {
        let mut read = Reader {
            env,
            problems: Vec::new(),
        };
        // Every part is read even when an earlier one failed, so that all
        // problems are reported together.
        let backend = read.backend();
        let launcher = read.launcher();
        let limits = read.limits();
        match (backend, launcher, limits) {
            (Some(backend), Some(launcher), Some(limits)) if read.problems.is_empty() => Ok(Self {
                backend,
                launcher,
                limits,
            }),
            _ => Err(ConfigError::Invalid(read.problems)),
        }
    }

    /// The variables that reproduce this configuration in a child process
    /// (the local launcher passes them to the executor, which reads the same
    /// names): `from_lookup` of them gives this configuration back, except
    /// the dispatcher's own credential settings ([`GcpConfig::credentials`]).
    pub fn to_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![(RUNBOX_BACKEND, self.backend.kind().as_str().to_owned())];
        match &self.backend {
            BackendConfig::Local(embedded) => {
                env.push((RUNBOX_HOME, embedded.home.to_string_lossy().into_owned()));
                env.push((RUNBOX_LOCAL_SYNC, embedded.sync.to_string()));
            }
            BackendConfig::Gcp(gcp) => {
                env.push((RUNBOX_BUCKET, gcp.bucket.clone()));
                env.push((RUNBOX_PROJECT, gcp.project.clone()));
                env.push((RUNBOX_NOTIFICATIONS_TOPIC, gcp.notifications_topic.clone()));
                env.push((RUNBOX_COMMANDS_TOPIC, gcp.commands_topic.clone()));
                if let Some(host) = &gcp.storage_emulator_host {
                    env.push((STORAGE_EMULATOR_HOST, host.clone()));
                }
                if let Some(host) = &gcp.pubsub_emulator_host {
                    env.push((PUBSUB_EMULATOR_HOST, host.clone()));
                }
                env.push((
                    RUNBOX_SESSION_LEASE_TTL_MS,
                    gcp.session_lease_ttl.as_millis().to_string(),
                ));
            }
        }
        env.push((RUNBOX_LAUNCHER, self.launcher.kind().as_str().to_owned()));
        match &self.launcher {
            LauncherConfig::Local(local) => {
                if let Some(bin) = &local.executor_bin {
                    env.push((RUNBOX_EXECUTOR, bin.to_string_lossy().into_owned()));
                }
            }
            LauncherConfig::CloudRun(cloud_run) => {
                env.push((RUNBOX_CLOUD_RUN_JOB, cloud_run.job.clone()));
                if let Some(endpoint) = &cloud_run.endpoint {
                    env.push((RUNBOX_CLOUD_RUN_ENDPOINT, endpoint.clone()));
                }
                if let Some(container) = &cloud_run.container {
                    env.push((RUNBOX_CLOUD_RUN_CONTAINER, container.clone()));
                }
                env.push((
                    RUNBOX_RUNJOB_PER_MINUTE,
                    cloud_run.runjob_per_minute.to_string(),
                ));
                env.push((RUNBOX_MAX_RUNNING, cloud_run.max_running.to_string()));
                env.push((
                    RUNBOX_WARM_TASK_TIMEOUT_SECS,
                    cloud_run.warm_task_timeout.as_secs().to_string(),
                ));
            }
        }
        let limits = &self.limits;
        env.extend([
            (
                RUNBOX_DEFAULT_TIMEOUT_SECS,
                limits.default_timeout.as_secs().to_string(),
            ),
            (
                RUNBOX_MAX_TIMEOUT_SECS,
                limits.max_timeout.as_secs().to_string(),
            ),
            (RUNBOX_OUTPUT_CAP_BYTES, limits.output_cap.to_string()),
            (
                RUNBOX_DEADLINE_GRACE_SECS,
                limits.deadline_grace.as_secs().to_string(),
            ),
            (
                RUNBOX_KILL_GRACE_MS,
                limits.kill_grace.as_millis().to_string(),
            ),
            (
                RUNBOX_COMPLETION_GRACE_MS,
                limits.completion_grace.as_millis().to_string(),
            ),
            (
                RUNBOX_RESULT_IN_METADATA,
                limits.result_in_metadata.to_string(),
            ),
            (
                RUNBOX_WORKSPACE_MAX_BYTES,
                limits.workspace_max_bytes.to_string(),
            ),
            (RUNBOX_LOG_CAP_BYTES, limits.log_cap.to_string()),
            (RUNBOX_STDIN_CAP_BYTES, limits.stdin_cap.to_string()),
            (RUNBOX_SESSION_MODE, limits.session_mode.as_str().to_owned()),
        ]);
        env
    }

    /// Checks a configuration built in code the way [`Config::from_lookup`]
    /// checks the environment (values in range, a well-formed job name, the
    /// default timeout within the largest, a non-empty bucket and project),
    /// by reading back what [`Config::to_env`] writes: a configuration that
    /// passes reaches a child process intact.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let env: HashMap<String, String> = self
            .to_env()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        Self::from_lookup(&env).map(|_| ())
    }
}

/// Reads variables through a lookup, collecting every problem instead of
/// stopping at the first. A part that cannot be built comes back as `None`
/// with its problems recorded.
struct Reader<'a> {
    env: &'a dyn Lookup,
    problems: Vec<Problem>,
}

impl Reader<'_> {
    fn backend(&mut self) -> Option<BackendConfig> {
        let kind = self.choice(RUNBOX_BACKEND, &BackendKind::ALL, BackendKind::as_str);
        let home = self
            .env
            .get(RUNBOX_HOME)
            .map_or_else(|| default_home(self.env), PathBuf::from);
        // Checked whatever the backend: a bad value fails the read even
        // where the setting is ignored.
        let sync = self.flag(RUNBOX_LOCAL_SYNC, true);
        let bucket = self.env.get(RUNBOX_BUCKET);
        let project = self.env.get(RUNBOX_PROJECT);
        let topic = self.env.get(RUNBOX_NOTIFICATIONS_TOPIC);
        let commands_topic = self.env.get(RUNBOX_COMMANDS_TOPIC);
        let storage_emulator_host = self.env.get(STORAGE_EMULATOR_HOST);
        let pubsub_emulator_host = self.env.get(PUBSUB_EMULATOR_HOST);
        let lease_ttl = self.millis(
            RUNBOX_SESSION_LEASE_TTL_MS,
            Duration::from_secs(30),
            1000,
            3_600_000,
        );
        match kind? {
            BackendKind::Local => Some(BackendConfig::Local(EmbeddedConfig { home, sync: sync? })),
            BackendKind::Gcp => {
                let needed_by = (RUNBOX_BACKEND, BackendKind::Gcp.as_str());
                let bucket = self.required(RUNBOX_BUCKET, bucket, needed_by);
                let project = self.required(RUNBOX_PROJECT, project, needed_by);
                let mut gcp = GcpConfig::new(bucket?, project?);
                if let Some(topic) = topic {
                    gcp.notifications_topic = topic;
                }
                if let Some(topic) = commands_topic {
                    gcp.commands_topic = topic;
                }
                gcp.storage_emulator_host = storage_emulator_host;
                gcp.pubsub_emulator_host = pubsub_emulator_host;
                gcp.session_lease_ttl = lease_ttl?;
                match crate::credentials::CredentialSettings::from_lookup(
                    self.env,
                    gcp.storage_emulator_host.is_some(),
                ) {
                    Ok(credentials) => gcp.credentials = credentials,
                    Err(problems) => {
                        self.problems.extend(problems);
                        return None;
                    }
                }
                Some(BackendConfig::Gcp(gcp))
            }
        }
    }

    fn launcher(&mut self) -> Option<LauncherConfig> {
        let kind = self.choice(RUNBOX_LAUNCHER, &LauncherKind::ALL, LauncherKind::as_str);
        let executor_bin = self.env.get(RUNBOX_EXECUTOR).map(PathBuf::from);
        // A malformed job name is an error even for the local launcher.
        let job = self.env.get(RUNBOX_CLOUD_RUN_JOB);
        let job_ok = match &job {
            Some(value) if !is_job_name(value) => {
                self.problems.push(Problem::Invalid {
                    var: RUNBOX_CLOUD_RUN_JOB,
                    value: value.clone(),
                    reason:
                        "expected a full job name `projects/PROJECT/locations/LOCATION/jobs/JOB`"
                            .to_owned(),
                });
                false
            }
            _ => true,
        };
        let endpoint = self.env.get(RUNBOX_CLOUD_RUN_ENDPOINT);
        let container = match self.env.get(RUNBOX_CLOUD_RUN_CONTAINER) {
            Some(name) if name.is_empty() => Some(None),
            Some(name) if !is_container_name(&name) => {
                self.problems.push(Problem::Invalid {
                    var: RUNBOX_CLOUD_RUN_CONTAINER,
                    value: name,
                    reason: "expected a container name: 1 to 63 lowercase letters, digits and `-`, starting with a letter and not ending with `-`".to_owned(),
                });
                None
            }
            name => Some(name),
        };
        let defaults = CloudRunConfig::new("");
        let per_minute = self.count(
            RUNBOX_RUNJOB_PER_MINUTE,
            defaults.runjob_per_minute,
            1,
            100_000,
        );
        let max_running = self.count(RUNBOX_MAX_RUNNING, defaults.max_running, 1, 1_000_000);
        let warm_task_timeout = self.seconds(
            RUNBOX_WARM_TASK_TIMEOUT_SECS,
            defaults.warm_task_timeout,
            10,
            604_800,
        );
        match kind? {
            LauncherKind::Local => Some(LauncherConfig::Local(LocalLauncherConfig {
                executor_bin,
                executor_settings: crate::confinement::SETTINGS
                    .iter()
                    .filter_map(|k| self.env.get(k).map(|v| ((*k).to_owned(), v)))
                    .collect(),
            })),
            LauncherKind::CloudRun => {
                let needed_by = (RUNBOX_LAUNCHER, LauncherKind::CloudRun.as_str());
                let job = if job_ok {
                    self.required(RUNBOX_CLOUD_RUN_JOB, job, needed_by)
                } else {
                    None
                };
                Some(LauncherConfig::CloudRun(CloudRunConfig {
                    job: job?,
                    endpoint,
                    container: container?,
                    runjob_per_minute: per_minute?,
                    max_running: max_running?,
                    warm_task_timeout: warm_task_timeout?,
                }))
            }
        }
    }

    fn limits(&mut self) -> Option<Limits> {
        let d = Limits::default();
        let default_timeout =
            self.seconds(RUNBOX_DEFAULT_TIMEOUT_SECS, d.default_timeout, 1, 604_800);
        let max_timeout = self.seconds(RUNBOX_MAX_TIMEOUT_SECS, d.max_timeout, 1, 604_800);
        let output_cap = self.number(RUNBOX_OUTPUT_CAP_BYTES, d.output_cap, 1024, 64 << 20);
        let deadline_grace = self.seconds(RUNBOX_DEADLINE_GRACE_SECS, d.deadline_grace, 1, 3600);
        let kill_grace = self.millis(RUNBOX_KILL_GRACE_MS, d.kill_grace, 0, 60_000);
        let completion_grace =
            self.millis(RUNBOX_COMPLETION_GRACE_MS, d.completion_grace, 0, 600_000);
        let result_in_metadata = self.flag(RUNBOX_RESULT_IN_METADATA, d.result_in_metadata);
        let workspace_max_bytes = self.number(
            RUNBOX_WORKSPACE_MAX_BYTES,
            d.workspace_max_bytes,
            1,
            u64::MAX,
        );
        let log_cap = self.number(RUNBOX_LOG_CAP_BYTES, d.log_cap, 1024, u64::MAX);
        let stdin_cap = self.number(RUNBOX_STDIN_CAP_BYTES, d.stdin_cap, 1, 1 << 30);
        let session_mode = self.choice(
            RUNBOX_SESSION_MODE,
            &crate::warm::SessionMode::ALL,
            crate::warm::SessionMode::as_str,
        );
        let limits = Limits {
            default_timeout: default_timeout?,
            max_timeout: max_timeout?,
            output_cap: output_cap?,
            deadline_grace: deadline_grace?,
            kill_grace: kill_grace?,
            completion_grace: completion_grace?,
            result_in_metadata: result_in_metadata?,
            workspace_max_bytes: workspace_max_bytes?,
            log_cap: log_cap?,
            stdin_cap: stdin_cap?,
            session_mode: session_mode?,
        };
        if limits.default_timeout > limits.max_timeout {
            self.problems.push(Problem::Conflict {
                var: RUNBOX_DEFAULT_TIMEOUT_SECS,
                value: limits.default_timeout.as_secs().to_string(),
                relation: "exceeds",
                other: RUNBOX_MAX_TIMEOUT_SECS,
                other_value: limits.max_timeout.as_secs().to_string(),
            });
            return None;
        }
        Some(limits)
    }

    /// One of `all`, by name; the first when unset.
    fn choice<T: Copy>(
        &mut self,
        var: &'static str,
        all: &[T],
        name: fn(T) -> &'static str,
    ) -> Option<T> {
        let Some(value) = self.env.get(var) else {
            return all.first().copied();
        };
        if let Some(found) = all.iter().copied().find(|k| name(*k) == value) {
            return Some(found);
        }
        let names: Vec<String> = all.iter().map(|k| format!("`{}`", name(*k))).collect();
        self.problems.push(Problem::Invalid {
            var,
            value,
            reason: format!("expected {}", names.join(" or ")),
        });
        None
    }

    /// A value the chosen backend or launcher cannot do without.
    fn required(
        &mut self,
        var: &'static str,
        value: Option<String>,
        (needed_by, needed_by_value): (&'static str, &'static str),
    ) -> Option<String> {
        if value.is_none() {
            self.problems.push(Problem::Missing {
                var,
                needed_by,
                needed_by_value,
            });
        }
        value
    }

    fn flag(&mut self, var: &'static str, default: bool) -> Option<bool> {
        let Some(value) = self.env.get(var) else {
            return Some(default);
        };
        match value.as_str() {
            "true" | "1" | "yes" => Some(true),
            "false" | "0" | "no" => Some(false),
            _ => {
                self.problems.push(Problem::Invalid {
                    var,
                    value,
                    reason: "expected true or false".to_owned(),
                });
                None
            }
        }
    }

    /// A whole number from `min` to `max`, `default` when unset.
    fn number(&mut self, var: &'static str, default: u64, min: u64, max: u64) -> Option<u64> {
        let Some(value) = self.env.get(var) else {
            return Some(default);
        };
        match value.trim().parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => Some(n),
            _ => {
                self.problems.push(Problem::Invalid {
                    var,
                    value,
                    reason: format!("expected a whole number from {min} to {max}"),
                });
                None
            }
        }
    }

    fn count(&mut self, var: &'static str, default: u32, min: u32, max: u32) -> Option<u32> {
        let n = self.number(var, default.into(), min.into(), max.into())?;
        // In range, so it fits.
        u32::try_from(n).ok()
    }

    fn seconds(
        &mut self,
        var: &'static str,
        default: Duration,
        min: u64,
        max: u64,
    ) -> Option<Duration> {
        self.number(var, default.as_secs(), min, max)
            .map(Duration::from_secs)
    }

    fn millis(
        &mut self,
        var: &'static str,
        default: Duration,
        min: u64,
        max: u64,
    ) -> Option<Duration> {
        let default = u64::try_from(default.as_millis()).unwrap_or(u64::MAX);
        self.number(var, default, min, max)
            .map(Duration::from_millis)
    }
}

fn default_home(env: &dyn Lookup) -> PathBuf {
    if let Some(xdg) = env.get(XDG_DATA_HOME) {
        return PathBuf::from(xdg).join("runbox");
    }
    match env.get(HOME) {
        Some(home) => PathBuf::from(home).join(".local/share/runbox"),
        None => PathBuf::from(".runbox"),
    }
}

/// Whether `name` has the form `projects/P/locations/L/jobs/J` with
/// non-empty segments free of `/`.
/// Whether `name` is a container name Cloud Run accepts (an RFC 1123 label
/// that starts with a letter).
fn is_container_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes[0].is_ascii_lowercase()
        && bytes[bytes.len() - 1] != b'-'
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

fn is_job_name(name: &str) -> bool {
    let parts: Vec<&str> = name.split('/').collect();
    matches!(
        parts.as_slice(),
        ["projects", p, "locations", l, "jobs", j] if !p.is_empty() && !l.is_empty() && !j.is_empty()
    )
}

/// The problems, one per line.
fn lines(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cfg` written by [`Config::to_env`] and read back.
    fn round_trip(cfg: &Config) -> Config {
        let env: HashMap<String, String> = cfg
            .to_env()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        Config::from_lookup(&env).unwrap()
    }

    fn problems(err: &ConfigError) -> Vec<&'static str> {
        err.problems().iter().map(Problem::var).collect()
    }

    #[test]
    fn defaults_and_overrides() {
        let cfg = Config::from_lookup(&[("HOME", "/h")]).unwrap();
        assert_eq!(cfg, Config::embedded("/h/.local/share/runbox"));
        let BackendConfig::Local(embedded) = &cfg.backend else {
            panic!("not the embedded backend: {cfg:?}");
        };
        assert_eq!(embedded.home, PathBuf::from("/h/.local/share/runbox"));
        assert!(embedded.sync);
        assert_eq!(
            cfg.launcher,
            LauncherConfig::Local(LocalLauncherConfig::default())
        );
        assert_eq!(cfg.limits.output_cap, 1 << 20);
        assert_eq!(cfg.limits.stdin_cap, 16 << 20);
        assert_eq!(cfg.limits.default_timeout, Duration::from_secs(600));
        assert_eq!(cfg.limits.max_timeout, Duration::from_secs(86_400));
        assert_eq!(cfg.limits.deadline_grace, Duration::from_secs(30));
        assert_eq!(cfg.limits.kill_grace, Duration::from_millis(2000));
        assert_eq!(cfg.limits.completion_grace, Duration::from_millis(2000));
        assert_eq!(cfg.limits.workspace_max_bytes, 10 << 30);
        assert_eq!(cfg.limits.log_cap, 64 << 20);
        assert!(cfg.limits.result_in_metadata);
        let cfg = Config::from_lookup(&[("XDG_DATA_HOME", "/d"), ("HOME", "/h")]).unwrap();
        assert_eq!(cfg, Config::embedded("/d/runbox"));
        let cfg = Config::from_lookup(&[
            ("RUNBOX_HOME", "/x"),
            ("RUNBOX_MAX_TIMEOUT_SECS", "60"),
            ("RUNBOX_DEFAULT_TIMEOUT_SECS", "30"),
        ])
        .unwrap();
        assert_eq!(cfg.backend, BackendConfig::Local(EmbeddedConfig::new("/x")));
        assert_eq!(cfg.limits.max_timeout, Duration::from_secs(60));
        assert_eq!(cfg.limits.default_timeout, Duration::from_secs(30));
    }

    #[test]
    fn gcp_backend_settings() {
        let cfg = Config::from_lookup(&[
            ("RUNBOX_BACKEND", "gcp"),
            ("RUNBOX_BUCKET", "b"),
            ("RUNBOX_PROJECT", "p"),
        ])
        .unwrap();
        assert_eq!(cfg.backend, BackendConfig::Gcp(GcpConfig::new("b", "p")));
        let BackendConfig::Gcp(gcp) = &cfg.backend else {
            panic!("not gcp: {cfg:?}");
        };
        assert_eq!(gcp.notifications_topic, "runbox-notifications");
        assert_eq!(gcp.storage_emulator_host, None);
        assert_eq!(gcp.session_lease_ttl, Duration::from_secs(30));
    }

    #[test]
    fn warm_commands_topic_and_task_timeout_are_read_bounded_and_round_trip() {
        let read = |timeout: &str| {
            Config::from_lookup(&[
                ("RUNBOX_BACKEND", "gcp"),
                ("RUNBOX_BUCKET", "b"),
                ("RUNBOX_PROJECT", "p"),
                ("RUNBOX_COMMANDS_TOPIC", "cmds"),
                ("RUNBOX_LAUNCHER", "cloudrun"),
                ("RUNBOX_CLOUD_RUN_JOB", "projects/p/locations/l/jobs/j"),
                ("RUNBOX_WARM_TASK_TIMEOUT_SECS", timeout),
            ])
        };
        let cfg = read("20").unwrap();
        let (BackendConfig::Gcp(g), LauncherConfig::CloudRun(c)) = (&cfg.backend, &cfg.launcher)
        else {
            panic!("not gcp with Cloud Run: {cfg:?}");
        };
        assert_eq!(g.commands_topic, "cmds");
        assert_eq!(c.warm_task_timeout, Duration::from_secs(20));
        assert_eq!(round_trip(&cfg), cfg);
        for bad in ["9", "604801", "1h"] {
            let err = read(bad).unwrap_err().to_string();
            assert!(
                err.contains("RUNBOX_WARM_TASK_TIMEOUT_SECS"),
                "{bad}: {err}"
            );
        }
        assert_eq!(
            GcpConfig::new("b", "p").commands_topic,
            "runbox-commands",
            "the default"
        );
    }

    #[test]
    fn session_lease_ttl_is_read_and_bounded() {
        let gcp = |ttl: &str| {
            Config::from_lookup(&[
                ("RUNBOX_BACKEND", "gcp"),
                ("RUNBOX_BUCKET", "b"),
                ("RUNBOX_PROJECT", "p"),
                ("RUNBOX_SESSION_LEASE_TTL_MS", ttl),
            ])
        };
        let cfg = gcp("2000").unwrap();
        let BackendConfig::Gcp(g) = &cfg.backend else {
            panic!("not gcp: {cfg:?}");
        };
        assert_eq!(g.session_lease_ttl, Duration::from_millis(2000));
        assert_eq!(round_trip(&cfg), cfg);
        for bad in ["999", "3600001", "x", "-1"] {
            let err = gcp(bad).unwrap_err().to_string();
            assert!(err.contains("RUNBOX_SESSION_LEASE_TTL_MS"), "{bad}: {err}");
        }
    }

    #[test]
    fn to_env_round_trips() {
        let cfg = Config::from_lookup(&[
            ("RUNBOX_HOME", "/x"),
            ("RUNBOX_BACKEND", "gcp"),
            ("RUNBOX_BUCKET", "b"),
            ("RUNBOX_PROJECT", "p"),
            ("RUNBOX_NOTIFICATIONS_TOPIC", "t"),
            ("RUNBOX_KILL_GRACE_MS", "250"),
            ("RUNBOX_COMPLETION_GRACE_MS", "0"),
            ("STORAGE_EMULATOR_HOST", "http://127.0.0.1:1"),
            ("PUBSUB_EMULATOR_HOST", "127.0.0.1:3"),
            ("RUNBOX_LAUNCHER", "cloudrun"),
            ("RUNBOX_CLOUD_RUN_JOB", "projects/p/locations/l/jobs/j"),
            ("RUNBOX_CLOUD_RUN_ENDPOINT", "127.0.0.1:2"),
            ("RUNBOX_CLOUD_RUN_CONTAINER", "executor"),
            ("RUNBOX_RUNJOB_PER_MINUTE", "600"),
            ("RUNBOX_MAX_RUNNING", "7"),
            ("RUNBOX_WORKSPACE_MAX_BYTES", "99"),
            ("RUNBOX_STDIN_CAP_BYTES", "5"),
            ("RUNBOX_RESULT_IN_METADATA", "false"),
            ("RUNBOX_LOG_CAP_BYTES", "4096"),
        ])
        .unwrap();
        let again = round_trip(&cfg);
        assert_eq!(again, cfg);
        let BackendConfig::Gcp(gcp) = &again.backend else {
            panic!("not gcp: {again:?}");
        };
        assert_eq!(gcp.bucket, "b");
        assert_eq!(gcp.project, "p");
        assert_eq!(gcp.notifications_topic, "t");
        assert_eq!(
            gcp.storage_emulator_host.as_deref(),
            Some("http://127.0.0.1:1")
        );
        assert_eq!(gcp.pubsub_emulator_host.as_deref(), Some("127.0.0.1:3"));
        assert_eq!(again.limits.kill_grace, Duration::from_millis(250));
        assert_eq!(again.limits.completion_grace, Duration::ZERO);
        assert!(!again.limits.result_in_metadata);
        assert_eq!(again.limits.workspace_max_bytes, 99);
        assert_eq!(again.limits.log_cap, 4096);
        assert_eq!(again.limits.stdin_cap, 5);
        let LauncherConfig::CloudRun(cloud_run) = &again.launcher else {
            panic!("not cloudrun: {again:?}");
        };
        assert_eq!(cloud_run.job, "projects/p/locations/l/jobs/j");
        assert_eq!(cloud_run.endpoint.as_deref(), Some("127.0.0.1:2"));
        assert_eq!(cloud_run.runjob_per_minute, 600);
        assert_eq!(cloud_run.max_running, 7);

        let embedded = Config::embedded("/e")
            .with_local_sync(false)
            .with_executor_bin("/bin/runbox-executor")
            .with_kill_grace(Duration::from_millis(300))
            .with_deadline_grace(Duration::from_secs(10));
        assert_eq!(round_trip(&embedded), embedded);
        assert!(embedded.validate().is_ok());
        assert_eq!(
            embedded.launcher.executor_bin(),
            Some(Path::new("/bin/runbox-executor"))
        );
    }

    #[test]
    fn launcher_settings() {
        let cfg = Config::from_lookup(&[("HOME", "/h")]).unwrap();
        assert_eq!(cfg.launcher.kind(), LauncherKind::Local);
        assert_eq!(cfg.launcher.executor_bin(), None);
        let defaults = CloudRunConfig::new("projects/p/locations/l/jobs/j");
        assert_eq!(defaults.runjob_per_minute, 60);
        assert_eq!(defaults.max_running, 1000);
        assert_eq!(defaults.endpoint, None);
        let cfg = Config::from_lookup(&[
            ("RUNBOX_LAUNCHER", "cloudrun"),
            ("RUNBOX_CLOUD_RUN_JOB", "projects/p/locations/l/jobs/j"),
        ])
        .unwrap();
        assert_eq!(cfg.launcher, LauncherConfig::CloudRun(defaults));
        let cfg = Config::from_lookup(&[("RUNBOX_EXECUTOR", "/bin/x")]).unwrap();
        assert_eq!(cfg.launcher.executor_bin(), Some(Path::new("/bin/x")));

        let err = Config::from_lookup(&[("RUNBOX_LAUNCHER", "cloudrun")]).unwrap_err();
        assert_eq!(
            err,
            ConfigError::Invalid(vec![Problem::Missing {
                var: "RUNBOX_CLOUD_RUN_JOB",
                needed_by: "RUNBOX_LAUNCHER",
                needed_by_value: "cloudrun",
            }])
        );
        assert_eq!(
            err.to_string(),
            "RUNBOX_CLOUD_RUN_JOB must be set when RUNBOX_LAUNCHER=cloudrun"
        );
        let err = Config::from_lookup(&[("RUNBOX_LAUNCHER", "k8s")]).unwrap_err();
        assert!(err.to_string().contains("RUNBOX_LAUNCHER"), "{err}");
        for bad in [
            "runbox",
            "projects/p/locations/l/jobs/",
            "projects/p/jobs/j",
            "projects/p/locations/l/jobs/j/x",
        ] {
            for launcher in ["cloudrun", "local"] {
                let err = Config::from_lookup(&[
                    ("RUNBOX_LAUNCHER", launcher),
                    ("RUNBOX_CLOUD_RUN_JOB", bad),
                ])
                .unwrap_err();
                assert_eq!(problems(&err), ["RUNBOX_CLOUD_RUN_JOB"], "{bad}: {err}");
            }
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
    fn the_override_container_is_a_container_name() {
        let cloud_run = |container: &str| {
            Config::from_lookup(&[
                ("RUNBOX_LAUNCHER", "cloudrun"),
                ("RUNBOX_CLOUD_RUN_JOB", "projects/p/locations/l/jobs/j"),
                ("RUNBOX_CLOUD_RUN_CONTAINER", container),
            ])
        };
        let LauncherConfig::CloudRun(c) = cloud_run("executor-1").unwrap().launcher else {
            panic!("not cloudrun");
        };
        assert_eq!(c.container.as_deref(), Some("executor-1"));
        let LauncherConfig::CloudRun(c) = cloud_run("").unwrap().launcher else {
            panic!("not cloudrun");
        };
        assert_eq!(c.container, None);
        for bad in ["Executor", "1st", "sidecar-", "a_b", "a/b", &"x".repeat(64)] {
            let err = cloud_run(bad).unwrap_err();
            assert_eq!(
                problems(&err),
                ["RUNBOX_CLOUD_RUN_CONTAINER"],
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (var, bad) in [
            ("RUNBOX_BACKEND", "aws"),
            ("RUNBOX_LAUNCHER", "k8s"),
            ("RUNBOX_LOCAL_SYNC", "maybe"),
            ("RUNBOX_DEFAULT_TIMEOUT_SECS", "0"),
            ("RUNBOX_MAX_TIMEOUT_SECS", "soon"),
            ("RUNBOX_MAX_TIMEOUT_SECS", "604801"),
            ("RUNBOX_OUTPUT_CAP_BYTES", "1023"),
            ("RUNBOX_DEADLINE_GRACE_SECS", "-1"),
            ("RUNBOX_KILL_GRACE_MS", "60001"),
            ("RUNBOX_COMPLETION_GRACE_MS", "1.5"),
            ("RUNBOX_WORKSPACE_MAX_BYTES", "0"),
            ("RUNBOX_LOG_CAP_BYTES", "1023"),
            ("RUNBOX_RUNJOB_PER_MINUTE", "100001"),
            ("RUNBOX_MAX_RUNNING", "0"),
            ("RUNBOX_CLOUD_RUN_JOB", "j"),
        ] {
            let err = Config::from_lookup(&[(var, bad)]).unwrap_err();
            assert_eq!(problems(&err), [var], "{var}={bad}: {err}");
            assert!(err.to_string().starts_with(var), "{err}");
        }
        let err = Config::from_lookup(&[("RUNBOX_MAX_TIMEOUT_SECS", "10")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "RUNBOX_DEFAULT_TIMEOUT_SECS (600) exceeds RUNBOX_MAX_TIMEOUT_SECS (10)"
        );
        assert!(
            matches!(err.problems(), [Problem::Conflict { .. }]),
            "{err}"
        );
        // Ignored by the gcp backend, but still checked.
        let err = Config::from_lookup(&[
            ("RUNBOX_BACKEND", "gcp"),
            ("RUNBOX_BUCKET", "b"),
            ("RUNBOX_PROJECT", "p"),
            ("RUNBOX_LOCAL_SYNC", "maybe"),
        ])
        .unwrap_err();
        assert_eq!(problems(&err), ["RUNBOX_LOCAL_SYNC"]);
        let err = Config::from_lookup(&[("RUNBOX_BACKEND", "gcp")]).unwrap_err();
        assert_eq!(
            err,
            ConfigError::Invalid(vec![
                Problem::Missing {
                    var: "RUNBOX_BUCKET",
                    needed_by: "RUNBOX_BACKEND",
                    needed_by_value: "gcp",
                },
                Problem::Missing {
                    var: "RUNBOX_PROJECT",
                    needed_by: "RUNBOX_BACKEND",
                    needed_by_value: "gcp",
                },
            ])
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = Config::from_lookup(&[("RUNBOX_BACKEND", "aws"), ("RUNBOX_MAX_RUNNING", "lots")])
            .unwrap_err();
        assert_eq!(problems(&err), ["RUNBOX_BACKEND", "RUNBOX_MAX_RUNNING"]);
        let message = err.to_string();
        let lines: Vec<&str> = message.lines().collect();
        assert_eq!(lines.len(), 2, "{message}");
        assert!(lines[0].starts_with("RUNBOX_BACKEND=\"aws\""), "{message}");
        assert!(
            lines[1].starts_with("RUNBOX_MAX_RUNNING=\"lots\""),
            "{message}"
        );

        let err = Config::from_lookup(&[
            ("RUNBOX_BACKEND", "gcp"),
            ("RUNBOX_LAUNCHER", "cloudrun"),
            ("RUNBOX_KILL_GRACE_MS", "soon"),
            ("RUNBOX_DEFAULT_TIMEOUT_SECS", "100000"),
        ])
        .unwrap_err();
        assert_eq!(
            problems(&err),
            [
                "RUNBOX_BUCKET",
                "RUNBOX_PROJECT",
                "RUNBOX_CLOUD_RUN_JOB",
                "RUNBOX_KILL_GRACE_MS",
            ],
            "{err}"
        );
    }

    #[test]
    fn validate_checks_configurations_built_in_code() {
        assert!(Config::embedded("/e").validate().is_ok());
        let empty_bucket = Config::new(BackendConfig::Gcp(GcpConfig::new("", "p")));
        let err = empty_bucket.validate().unwrap_err();
        assert_eq!(problems(&err), ["RUNBOX_BUCKET"]);
        let bad_job = Config::embedded("/e")
            .with_launcher(LauncherConfig::CloudRun(CloudRunConfig::new("job")));
        let err = bad_job.validate().unwrap_err();
        assert_eq!(problems(&err), ["RUNBOX_CLOUD_RUN_JOB"]);
        let limits = Limits {
            default_timeout: Duration::from_secs(20),
            max_timeout: Duration::from_secs(10),
            ..Limits::default()
        };
        let err = Config::embedded("/e")
            .with_limits(limits)
            .validate()
            .unwrap_err();
        assert_eq!(problems(&err), ["RUNBOX_DEFAULT_TIMEOUT_SECS"]);
    }
}
