//! What the Cloud Run launcher is configured with: where the Admin API is
//! ([`CloudRunEndpoint`]), the job template, the admission limits and the
//! timeouts ([`CloudRunSettings`]), and the platform's fixed numbers.

use std::time::Duration;

use runbox_core::config::CloudRunConfig;

use super::admission::RetryPolicy;

/// Cloud Run's Admin API, reached over TLS.
pub const CLOUD_RUN_URL: &str = "https://run.googleapis.com";
pub(super) const CLOUD_RUN_DOMAIN: &str = "run.googleapis.com";
/// The OAuth scope the Admin API asks for.
pub(super) const SCOPES: [&str; 1] = ["https://www.googleapis.com/auth/cloud-platform"];
/// Cloud Run's longest task timeout (168 h).
pub(super) const MAX_TASK_TIMEOUT: Duration = Duration::from_secs(168 * 3600);
/// WaitOperation calls sharing one HTTP/2 connection: below the 100
/// concurrent streams servers commonly allow.
pub(super) const WAITS_PER_CONNECTION: usize = 80;

/// Where the Admin API is served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloudRunEndpoint {
    /// Cloud Run itself: TLS, Application Default Credentials on every call.
    Google,
    /// An emulator: plaintext, no credentials. `http://host:port`.
    Emulator(String),
}

impl CloudRunEndpoint {
    /// The emulator at `host:port` or `http://host:port`.
    pub fn emulator(address: &str) -> Self {
        if address.contains("://") {
            Self::Emulator(address.trim_end_matches('/').to_owned())
        } else {
            Self::Emulator(format!("http://{address}"))
        }
    }

    pub(super) fn url(&self) -> &str {
        match self {
            Self::Google => CLOUD_RUN_URL,
            Self::Emulator(url) => url,
        }
    }
}

/// How the Cloud Run launcher runs. [`CloudRunSettings::from_config`] reads
/// the `RUNBOX_*` variables; the other fields keep their defaults there.
#[derive(Clone, Debug)]
pub struct CloudRunSettings {
    /// The job template, `projects/P/locations/L/jobs/J` (`RUNBOX_CLOUD_RUN_JOB`).
    pub job: String,
    /// Where the API is (`RUNBOX_CLOUD_RUN_ENDPOINT`).
    pub endpoint: CloudRunEndpoint,
    /// RunJob calls per minute, on average (`RUNBOX_RUNJOB_PER_MINUTE`).
    pub runjob_per_minute: u32,
    /// RunJob calls allowed at once after a quiet period. Default: a tenth
    /// of the per-minute budget (at least 1), so a burst starts at once while
    /// a sustained load stays within the quota.
    pub runjob_burst: u32,
    /// Executions running at once (`RUNBOX_MAX_RUNNING`).
    pub max_running: usize,
    /// Retries of RunJob refused with RESOURCE_EXHAUSTED or UNAVAILABLE.
    pub retry: RetryPolicy,
    /// Added to the command's timeout to make the task timeout: room for the
    /// executor to kill the command (TERM, kill grace, KILL) and write its
    /// TIMED_OUT result. Default 15 s: below the dispatcher's deadline grace
    /// (30 s), so a hung executor has been stopped by Cloud Run, with a
    /// condition saying so, by the time reconciliation asks.
    pub task_timeout_margin: Duration,
    /// The container the overrides apply to (`RUNBOX_CLOUD_RUN_CONTAINER`);
    /// empty (default) for the job's only container.
    pub container: String,
    /// Deadline of each RunJob, GetExecution and CancelExecution call.
    pub rpc_timeout: Duration,
    /// How long one WaitOperation call asks the server to hold on before it
    /// answers with the operation still running (then it is called again).
    pub wait_timeout: Duration,
    /// Where the server does not serve WaitOperation (UNIMPLEMENTED) or no
    /// longer knows the operation (NOT_FOUND), the end of an execution is
    /// read with GetExecution: first after this long, then at doubling
    /// intervals up to [`CloudRunSettings::get_execution_max_interval`].
    /// Only an end without a result (crash, OOM) depends on it; completions
    /// still arrive as result events. Default: 1 s.
    pub get_execution_interval: Duration,
    /// The longest interval between two such GetExecution calls. Default: 30 s.
    pub get_execution_max_interval: Duration,
}

impl CloudRunSettings {
    /// Defaults for the job template `job`, against Cloud Run itself.
    pub fn new(job: impl Into<String>) -> Self {
        Self {
            job: job.into(),
            endpoint: CloudRunEndpoint::Google,
            runjob_per_minute: 60,
            runjob_burst: 6,
            max_running: 1000,
            retry: RetryPolicy::default(),
            task_timeout_margin: Duration::from_secs(15),
            container: String::new(),
            rpc_timeout: Duration::from_secs(30),
            wait_timeout: Duration::from_secs(60),
            get_execution_interval: Duration::from_secs(1),
            get_execution_max_interval: Duration::from_secs(30),
        }
    }

    /// The settings the configuration names; `RUNBOX_CLOUD_RUN_JOB` must be set.
    pub fn from_config(config: &CloudRunConfig) -> Self {
        let mut settings = Self::new(config.job.clone());
        if let Some(address) = &config.endpoint {
            settings.endpoint = CloudRunEndpoint::emulator(address);
        }
        if let Some(container) = &config.container {
            settings.container = container.clone();
        }
        settings.runjob_per_minute = config.runjob_per_minute.max(1);
        settings.runjob_burst = (config.runjob_per_minute / 10).max(1);
        settings.max_running = usize::try_from(config.max_running)
            .unwrap_or(usize::MAX)
            .max(1);
        settings
    }
}

/// The location in `projects/P/locations/L/jobs/J`.
pub(super) fn job_location(job: &str) -> Option<&str> {
    match job.split('/').collect::<Vec<_>>().as_slice() {
        ["projects", p, "locations", l, "jobs", j]
            if !p.is_empty() && !l.is_empty() && !j.is_empty() =>
        {
            Some(l)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_location_needs_a_full_name() {
        assert_eq!(
            job_location("projects/p/locations/us-central1/jobs/j"),
            Some("us-central1")
        );
        assert_eq!(job_location("projects/p/locations//jobs/j"), None);
        assert_eq!(job_location("jobs/j"), None);
    }

    #[test]
    fn emulator_addresses() {
        assert_eq!(
            CloudRunEndpoint::emulator("127.0.0.1:9"),
            CloudRunEndpoint::Emulator("http://127.0.0.1:9".to_owned())
        );
        assert_eq!(
            CloudRunEndpoint::emulator("http://127.0.0.1:9/"),
            CloudRunEndpoint::Emulator("http://127.0.0.1:9".to_owned())
        );
    }
}
