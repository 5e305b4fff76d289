//! The emulator's in-memory state: jobs, executions and operations. One
//! mutex guards the maps; it is never held across an `.await` (executions
//! keep their changing state in their own watch channel).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use googleapis_tonic_google_cloud_run_v2::google::cloud::run::v2::{ExecutionReference, Job};
use googleapis_tonic_google_longrunning::google::longrunning::Operation;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::config::Config;
use crate::execution::ExecutionEntry;
use crate::names::{JobName, LocationName};
use crate::{ids, lro};

/// Shared by the three gRPC services and the runners.
#[derive(Debug)]
pub(crate) struct Store {
    pub(crate) config: Arc<Config>,
    /// Cancelled when the emulator stops; every execution's token is a child.
    pub(crate) shutdown: CancellationToken,
    state: Mutex<State>,
    /// RunJob calls received, valid or not (the quota Cloud Run counts).
    run_job_calls: AtomicU64,
    /// Serialises rewrites of the stats file, so the last rename carries
    /// the latest count.
    stats_file: Mutex<()>,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    /// Keyed by full job name.
    pub(crate) jobs: BTreeMap<String, JobRecord>,
    /// Keyed by full execution name.
    pub(crate) executions: BTreeMap<String, Arc<ExecutionEntry>>,
    /// Keyed by full operation name.
    pub(crate) operations: HashMap<String, OperationRecord>,
    next_seq: u64,
}

#[derive(Debug)]
pub(crate) struct JobRecord {
    pub(crate) name: JobName,
    pub(crate) seq: u64,
    /// The stored job, without the fields derived from its executions.
    pub(crate) job: Job,
    pub(crate) execution_count: i32,
    pub(crate) latest: Option<Arc<ExecutionEntry>>,
}

/// What an operation reports.
#[derive(Debug)]
pub(crate) enum OperationRecord {
    /// Finished when it was created (job changes, deletions).
    Done { seq: u64, operation: Operation },
    /// Follows an execution until it finishes (RunJob, CancelExecution).
    Execution {
        seq: u64,
        entry: Arc<ExecutionEntry>,
    },
}

impl Store {
    pub(crate) fn new(config: Config) -> Self {
        Self {
            config: Arc::new(config),
            shutdown: CancellationToken::new(),
            state: Mutex::new(State::default()),
            run_job_calls: AtomicU64::new(0),
            stats_file: Mutex::new(()),
        }
    }

    /// RunJob calls received so far.
    pub(crate) fn run_job_calls(&self) -> u64 {
        self.run_job_calls.load(Ordering::Acquire)
    }

    /// Counts one RunJob call, logs the count and rewrites the stats file;
    /// returns the count. A stats file that cannot be written is logged,
    /// never an error of the call: the emulator serves on without it.
    pub(crate) fn count_run_job(&self, job: &str) -> u64 {
        let _file = self
            .stats_file
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let calls = self.run_job_calls.fetch_add(1, Ordering::AcqRel) + 1;
        tracing::info!(job, run_job_calls = calls, "RunJob called");
        if let Some(path) = &self.config.stats_file
            && let Err(error) = write_stats(path, calls)
        {
            tracing::warn!(path = %path.display(), %error, "cannot write the stats file");
        }
        calls
    }

    /// Locks the maps. A panic while they were locked leaves them consistent
    /// enough for an emulator, so poisoning is ignored rather than spread.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Executions that have not finished yet.
    pub(crate) fn unfinished_executions(&self) -> Vec<Arc<ExecutionEntry>> {
        self.lock()
            .executions
            .values()
            .filter(|e| !e.is_done())
            .cloned()
            .collect()
    }
}

impl State {
    pub(crate) fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// Registers an operation under `parent` and returns its name.
    pub(crate) fn add_operation(
        &mut self,
        parent: &LocationName,
        make: impl FnOnce(u64, String) -> OperationRecord,
    ) -> String {
        let name = format!("{parent}/operations/{}", ids::uuid4());
        let seq = self.next_seq();
        self.operations
            .insert(name.clone(), make(seq, name.clone()));
        name
    }

    pub(crate) fn job(&self, name: &JobName) -> Result<&JobRecord, Status> {
        self.jobs
            .get(&name.to_string())
            .ok_or_else(|| job_not_found(name))
    }
}

impl JobRecord {
    /// The job as GetJob reports it, with its execution count and latest
    /// execution filled in from the executions themselves.
    pub(crate) fn to_proto(&self) -> Job {
        let mut job = self.job.clone();
        job.execution_count = self.execution_count;
        job.latest_created_execution = self.latest.as_ref().map(|entry| {
            let execution = entry.snapshot();
            ExecutionReference {
                name: entry.name.to_string(),
                create_time: execution.create_time,
                completion_time: execution.completion_time,
                delete_time: execution.delete_time,
                completion_status: entry.completion_status() as i32,
            }
        });
        job
    }
}

impl OperationRecord {
    pub(crate) fn seq(&self) -> u64 {
        match self {
            Self::Done { seq, .. } | Self::Execution { seq, .. } => *seq,
        }
    }

    pub(crate) fn to_proto(&self, name: &str) -> Operation {
        match self {
            Self::Done { operation, .. } => operation.clone(),
            Self::Execution { entry, .. } => {
                lro::execution_operation(name.to_owned(), &entry.snapshot())
            }
        }
    }
}

/// Cloud Run's wording for a missing job.
pub(crate) fn job_not_found(name: &JobName) -> Status {
    Status::not_found(format!(
        "Resource '{}' of kind 'JOB' in region '{}' in project '{}' does not exist.",
        name.job, name.parent.location, name.parent.project
    ))
}

/// One page of `items` (already in order) and the token of the next page.
/// Tokens are offsets; page_size 0 means the default of 100, at most 1000.
pub(crate) fn paginate<T>(
    items: Vec<T>,
    page_size: i32,
    page_token: &str,
) -> Result<(Vec<T>, String), Status> {
    if page_size < 0 {
        return Err(Status::invalid_argument("page_size must not be negative"));
    }
    let size = match page_size {
        0 => 100,
        n => (n as usize).min(1000),
    };
    let start = if page_token.is_empty() {
        0
    } else {
        page_token
            .parse::<usize>()
            .map_err(|_| Status::invalid_argument(format!("invalid page_token \"{page_token}\"")))?
    };
    let end = start.saturating_add(size).min(items.len());
    let next = if end < items.len() {
        end.to_string()
    } else {
        String::new()
    };
    let page = items
        .into_iter()
        .skip(start)
        .take(end.saturating_sub(start))
        .collect();
    Ok((page, next))
}

/// Writes `{"runJobCalls": N}` to `path` through a temporary file beside it
/// and a rename, so a reader never sees a half-written file.
fn write_stats(path: &std::path::Path, run_job_calls: u64) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, format!("{{\"runJobCalls\": {run_job_calls}}}\n"))?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages() {
        let (page, next) = paginate((0..5).collect(), 2, "").unwrap();
        assert_eq!((page, next.as_str()), (vec![0, 1], "2"));
        let (page, next) = paginate((0..5).collect(), 2, "4").unwrap();
        assert_eq!((page, next.as_str()), (vec![4], ""));
        assert!(paginate::<i32>(vec![], 1, "x").is_err());
        assert!(paginate::<i32>(vec![], -1, "").is_err());
    }
}
