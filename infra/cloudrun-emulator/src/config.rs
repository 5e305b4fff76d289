//! How the emulator turns a container into a local process.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::error::Error;

/// Configuration of an emulator instance.
///
/// A task runs `container.command` (the image's entrypoint override) if the
/// container sets one, else the command its image maps to, followed by the
/// container's args, with the container's env (after RunJob overrides) and
/// the `CLOUD_RUN_*` variables Cloud Run sets. RunJob on a job whose image has
/// no mapping fails with FAILED_PRECONDITION.
#[derive(Debug, Clone)]
pub struct Config {
    /// Container image → local argv standing in for the image's entrypoint.
    /// Matched on the exact image string. CLI: `--image IMAGE=COMMAND`
    /// (repeatable; COMMAND is split on whitespace). Default: empty.
    pub images: BTreeMap<String, Vec<String>>,
    /// After SIGTERM (task timeout, cancellation, shutdown), how long a
    /// task's process group gets before SIGKILL. CLI: `--kill-grace`.
    /// Default: 2 s (Cloud Run allows 10 s; tests want less).
    pub kill_grace: Duration,
    /// Where task output goes: `None` inherits the emulator's stdout and
    /// stderr; `Some(dir)` appends to `dir/{execution}/task{index}.stdout` and
    /// `.stderr`. CLI: `--log-dir`. Default: `None`.
    pub log_dir: Option<PathBuf>,
    /// Whether tasks inherit the emulator's environment beneath the
    /// container's env. `false` gives them only `PATH` and `HOME` from it, as
    /// a container would see only its image's env. CLI: `--clean-env` sets
    /// `false`. Default: `true`.
    pub inherit_env: bool,
    /// The emulator's own binary, run between the emulator and each task's
    /// main process as `PROGRAM __task GRACE_MS -- ARGV...`: a subreaper
    /// that kills every process of the task when its main process ends or
    /// dies, even those in process groups or sessions of their own. `None`
    /// (when the emulator runs inside another program, e.g. a test) runs
    /// tasks directly: then only the task's process group is killed, and a
    /// process that left it outlives a main process that died. The
    /// `runbox-cloudrun-emulator` binary sets itself. Default: `None`.
    pub supervisor: Option<PathBuf>,
    /// Whether `Operations/WaitOperation` is served. `false` answers it
    /// UNIMPLEMENTED, as some Operations servers do, so clients can be
    /// tested on their fallback. CLI: `--no-wait-operation` sets `false`.
    /// Default: `true`.
    pub wait_operation: bool,
    /// How long each execution waits after RunJob before its tasks start,
    /// standing in for Cloud Run's container start (image pull, sandbox
    /// boot): the execution is reported as created but not started
    /// meanwhile, and a cancellation during the wait cancels its tasks
    /// before they run. CLI: `--start-delay`. Default: zero.
    pub start_delay: Duration,
    /// A file rewritten (atomically, through a temporary file and a rename)
    /// after every RunJob call with the emulator's counters as JSON,
    /// `{"runJobCalls": N}`, for benchmarks and tests that run the
    /// emulator as a process. CLI: `--stats-file`. Default: `None`.
    pub stats_file: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            images: BTreeMap::new(),
            kill_grace: Duration::from_secs(2),
            log_dir: None,
            inherit_env: true,
            supervisor: None,
            wait_operation: true,
            start_delay: Duration::ZERO,
            stats_file: None,
        }
    }
}

impl Config {
    /// Maps `image` to the local `argv` that stands in for its entrypoint.
    #[must_use]
    pub fn image<I, S>(mut self, image: impl Into<String>, argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.images
            .insert(image.into(), argv.into_iter().map(Into::into).collect());
        self
    }

    /// Adds a parsed `IMAGE=COMMAND` mapping.
    #[must_use]
    pub fn mapping(self, mapping: ImageMapping) -> Self {
        self.image(mapping.image, mapping.command)
    }

    /// Sets [`Config::kill_grace`].
    #[must_use]
    pub fn kill_grace(mut self, grace: Duration) -> Self {
        self.kill_grace = grace;
        self
    }

    /// Sets [`Config::log_dir`].
    #[must_use]
    pub fn log_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.log_dir = Some(dir.into());
        self
    }

    /// Sets [`Config::supervisor`].
    #[must_use]
    pub fn supervisor(mut self, program: impl Into<PathBuf>) -> Self {
        self.supervisor = Some(program.into());
        self
    }

    /// Sets [`Config::wait_operation`].
    #[must_use]
    pub fn wait_operation(mut self, serve: bool) -> Self {
        self.wait_operation = serve;
        self
    }

    /// Sets [`Config::start_delay`].
    #[must_use]
    pub fn start_delay(mut self, delay: Duration) -> Self {
        self.start_delay = delay;
        self
    }

    /// Sets [`Config::stats_file`].
    #[must_use]
    pub fn stats_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.stats_file = Some(path.into());
        self
    }

    /// Sets [`Config::inherit_env`].
    #[must_use]
    pub fn inherit_env(mut self, inherit: bool) -> Self {
        self.inherit_env = inherit;
        self
    }
}

/// One `IMAGE=COMMAND` mapping: the image (everything before the first `=`)
/// and its command split on whitespace (no shell quoting).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageMapping {
    /// The container image, exactly as jobs name it.
    pub image: String,
    /// The local argv that stands in for the image's entrypoint.
    pub command: Vec<String>,
}

impl FromStr for ImageMapping {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let invalid = |reason| Error::InvalidImageMapping {
            mapping: s.to_owned(),
            reason,
        };
        let (image, command) = s
            .split_once('=')
            .ok_or_else(|| invalid("expected IMAGE=COMMAND"))?;
        let image = image.trim();
        if image.is_empty() {
            return Err(invalid("the image is empty"));
        }
        let command: Vec<String> = command.split_whitespace().map(str::to_owned).collect();
        if command.is_empty() {
            return Err(invalid("the command is empty"));
        }
        Ok(Self {
            image: image.to_owned(),
            command,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mappings() {
        let m: ImageMapping = "gcr.io/p/img:1=bash  -c".parse().unwrap();
        assert_eq!(m.image, "gcr.io/p/img:1");
        assert_eq!(m.command, ["bash", "-c"]);
        // Only the first `=` separates: commands may contain `=`.
        let m: ImageMapping = "img=env A=1 sh".parse().unwrap();
        assert_eq!(m.command, ["env", "A=1", "sh"]);
        assert!("img".parse::<ImageMapping>().is_err());
        assert!("=sh".parse::<ImageMapping>().is_err());
        assert!("img=  ".parse::<ImageMapping>().is_err());
    }
}
