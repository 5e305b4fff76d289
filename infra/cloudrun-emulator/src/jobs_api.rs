//! `google.cloud.run.v2.Jobs`: CreateJob, GetJob, ListJobs, UpdateJob,
//! DeleteJob, RunJob. The IAM methods answer UNIMPLEMENTED.

use std::sync::Arc;
use std::time::SystemTime;

use googleapis_tonic_google_cloud_run_v2::google::cloud::run::v2::{
    Condition, CreateJobRequest, DeleteJobRequest, Execution, GetJobRequest, Job, ListJobsRequest,
    ListJobsResponse, RunJobRequest, UpdateJobRequest, condition,
};
use googleapis_tonic_google_longrunning::google::longrunning::Operation;
use tonic::{Request, Response, Status};

use crate::execution::{self, ExecutionEntry};
use crate::grpc::jobs_server::Jobs;
use crate::names::{ExecutionName, JobName, LocationName};
use crate::store::{self, JobRecord, OperationRecord, Store};
use crate::{ids, lro, runner, template};

/// The Jobs service over the shared store.
#[derive(Debug, Clone)]
pub(crate) struct JobsApi {
    store: Arc<Store>,
}

impl JobsApi {
    pub(crate) fn new(store: Arc<Store>) -> Self {
        Self { store }
    }
}

#[tonic::async_trait]
impl Jobs for JobsApi {
    async fn create_job(
        &self,
        request: Request<CreateJobRequest>,
    ) -> Result<Response<Operation>, Status> {
        let request = request.into_inner();
        let parent = LocationName::parse(&request.parent)?;
        if request.job_id.is_empty() {
            return Err(Status::invalid_argument("job_id is required"));
        }
        let name = JobName::new(parent.clone(), &request.job_id)?;
        let input = request
            .job
            .ok_or_else(|| Status::invalid_argument("job is required"))?;
        if !input.name.is_empty() && input.name != name.to_string() {
            return Err(Status::invalid_argument(format!(
                "job.name \"{}\" does not match {name}: leave it empty",
                input.name
            )));
        }
        let job = new_job(&name, input)?;
        let mut state = self.store.lock();
        if state.jobs.contains_key(&name.to_string()) {
            return Err(Status::already_exists(format!(
                "Resource '{}' already exists.",
                name.job
            )));
        }
        if request.validate_only {
            return Ok(Response::new(lro::job_operation(String::new(), &job)));
        }
        let seq = state.next_seq();
        let record = JobRecord {
            name: name.clone(),
            seq,
            job,
            execution_count: 0,
            latest: None,
        };
        let proto = record.to_proto();
        state.jobs.insert(name.to_string(), record);
        let op = state.add_operation(&parent, |seq, op| OperationRecord::Done {
            seq,
            operation: lro::job_operation(op, &proto),
        });
        tracing::info!(job = %name, "job created");
        Ok(Response::new(state.operations[&op].to_proto(&op)))
    }

    async fn get_job(&self, request: Request<GetJobRequest>) -> Result<Response<Job>, Status> {
        let name = JobName::parse(&request.get_ref().name)?;
        let state = self.store.lock();
        Ok(Response::new(state.job(&name)?.to_proto()))
    }

    async fn list_jobs(
        &self,
        request: Request<ListJobsRequest>,
    ) -> Result<Response<ListJobsResponse>, Status> {
        let request = request.into_inner();
        let parent = LocationName::parse(&request.parent)?;
        let mut records: Vec<(u64, Job)> = {
            let state = self.store.lock();
            state
                .jobs
                .values()
                .filter(|r| r.name.parent == parent)
                .map(|r| (r.seq, r.to_proto()))
                .collect()
        };
        // Newest first, as Cloud Run sorts them.
        records.sort_by_key(|(seq, _)| std::cmp::Reverse(*seq));
        let jobs = records.into_iter().map(|(_, job)| job).collect();
        let (jobs, next_page_token) =
            store::paginate(jobs, request.page_size, &request.page_token)?;
        Ok(Response::new(ListJobsResponse {
            jobs,
            next_page_token,
        }))
    }

    async fn update_job(
        &self,
        request: Request<UpdateJobRequest>,
    ) -> Result<Response<Operation>, Status> {
        let request = request.into_inner();
        let input = request
            .job
            .ok_or_else(|| Status::invalid_argument("job is required"))?;
        let name = JobName::parse(&input.name)?;
        let key = name.to_string();
        let exists = self.store.lock().jobs.contains_key(&key);
        if !exists && request.allow_missing {
            let create = CreateJobRequest {
                parent: name.parent.to_string(),
                job_id: name.job.clone(),
                job: Some(Job {
                    name: String::new(),
                    ..input
                }),
                validate_only: request.validate_only,
            };
            return self.create_job(Request::new(create)).await;
        }
        let mut state = self.store.lock();
        let Some(record) = state.jobs.get_mut(&key) else {
            return Err(store::job_not_found(&name));
        };
        if !input.etag.is_empty() && input.etag != record.job.etag {
            return Err(Status::aborted(format!(
                "etag {} does not match the job's current etag",
                input.etag
            )));
        }
        let template = template::normalize(input.template)?;
        if request.validate_only {
            let mut job = record.to_proto();
            job.template = Some(template);
            return Ok(Response::new(lro::job_operation(String::new(), &job)));
        }
        let job = &mut record.job;
        job.template = Some(template);
        job.labels = input.labels;
        job.annotations = input.annotations;
        job.client = input.client;
        job.client_version = input.client_version;
        job.launch_stage = input.launch_stage;
        job.binary_authorization = input.binary_authorization;
        job.generation += 1;
        job.observed_generation = job.generation;
        job.update_time = Some(SystemTime::now().into());
        job.etag = execution::new_etag();
        let proto = record.to_proto();
        let op = state.add_operation(&name.parent, |seq, op| OperationRecord::Done {
            seq,
            operation: lro::job_operation(op, &proto),
        });
        Ok(Response::new(state.operations[&op].to_proto(&op)))
    }

    async fn delete_job(
        &self,
        request: Request<DeleteJobRequest>,
    ) -> Result<Response<Operation>, Status> {
        let request = request.into_inner();
        let name = JobName::parse(&request.name)?;
        let mut state = self.store.lock();
        let record = state.job(&name)?;
        check_etag(&request.etag, record)?;
        let mut job = record.to_proto();
        job.delete_time = Some(SystemTime::now().into());
        if request.validate_only {
            return Ok(Response::new(lro::job_operation(String::new(), &job)));
        }
        state.jobs.remove(&name.to_string());
        // A job's executions go with it; running ones are stopped first.
        let prefix = format!("{name}/executions/");
        let doomed: Vec<String> = state
            .executions
            .keys()
            .filter(|k| k.starts_with(&prefix))
            .cloned()
            .collect();
        for key in doomed {
            if let Some(entry) = state.executions.remove(&key) {
                entry.cancel.cancel();
            }
        }
        let op = state.add_operation(&name.parent, |seq, op| OperationRecord::Done {
            seq,
            operation: lro::job_operation(op, &job),
        });
        tracing::info!(job = %name, "job deleted");
        Ok(Response::new(state.operations[&op].to_proto(&op)))
    }

    async fn run_job(
        &self,
        request: Request<RunJobRequest>,
    ) -> Result<Response<Operation>, Status> {
        let request = request.into_inner();
        self.store.count_run_job(&request.name);
        let name = JobName::parse(&request.name)?;
        let mut state = self.store.lock();
        let record = state.job(&name)?;
        check_etag(&request.etag, record)?;
        let job_template = record.job.template.clone().unwrap_or_default();
        let labels = job_template.labels.clone();
        let annotations = job_template.annotations.clone();
        let template = template::apply_overrides(&job_template, request.overrides.as_ref())?;
        let spec = template::resolve(&self.store.config, &template)?;
        let exec_name = ExecutionName::generate(&name, &ids::execution_suffix());
        let now = SystemTime::now();
        let task_count = template.task_count.max(1);
        let parallelism = match template.parallelism {
            p if p <= 0 || p > task_count => task_count,
            p => p,
        };
        let log_uri = self
            .store
            .config
            .log_dir
            .as_ref()
            .map(|dir| format!("file://{}", dir.join(&exec_name.execution).display()))
            .unwrap_or_default();
        let execution = Execution {
            name: exec_name.to_string(),
            uid: ids::uuid4(),
            generation: 1,
            labels,
            annotations,
            create_time: Some(now.into()),
            update_time: Some(now.into()),
            launch_stage: record.job.launch_stage,
            job: name.job.clone(),
            parallelism,
            task_count,
            template: template.template,
            reconciling: true,
            conditions: execution::initial_conditions(),
            observed_generation: 1,
            log_uri,
            etag: execution::new_etag(),
            ..Default::default()
        };
        if request.validate_only {
            return Ok(Response::new(lro::execution_operation(
                String::new(),
                &execution,
            )));
        }
        let seq = state.next_seq();
        let entry = ExecutionEntry::new(
            exec_name.clone(),
            seq,
            self.store.shutdown.child_token(),
            execution,
        );
        state
            .executions
            .insert(exec_name.to_string(), Arc::clone(&entry));
        let record = state
            .jobs
            .get_mut(&name.to_string())
            .expect("looked up above under the same lock");
        record.execution_count += 1;
        record.latest = Some(Arc::clone(&entry));
        let op = state.add_operation(&name.parent, |seq, _| OperationRecord::Execution {
            seq,
            entry: Arc::clone(&entry),
        });
        let reply = state.operations[&op].to_proto(&op);
        drop(state);
        tracing::info!(job = %name, execution = %exec_name, "job run");
        runner::start(runner::Run {
            config: Arc::clone(&self.store.config),
            entry,
            spec,
            task_count,
            parallelism: parallelism as usize,
        });
        Ok(Response::new(reply))
    }
}

/// A stored job from CreateJob's input: output-only fields are the server's.
fn new_job(name: &JobName, input: Job) -> Result<Job, Status> {
    if input.create_execution.is_some() {
        return Err(Status::unimplemented(
            "start_execution_token and run_execution_token are not supported by the emulator",
        ));
    }
    let template = template::normalize(input.template)?;
    let now = SystemTime::now();
    Ok(Job {
        name: name.to_string(),
        uid: ids::uuid4(),
        generation: 1,
        labels: input.labels,
        annotations: input.annotations,
        create_time: Some(now.into()),
        update_time: Some(now.into()),
        client: input.client,
        client_version: input.client_version,
        launch_stage: input.launch_stage,
        binary_authorization: input.binary_authorization,
        template: Some(template),
        observed_generation: 1,
        terminal_condition: Some(Condition {
            r#type: "Ready".to_owned(),
            state: condition::State::ConditionSucceeded as i32,
            last_transition_time: Some(now.into()),
            ..Default::default()
        }),
        etag: execution::new_etag(),
        ..Default::default()
    })
}

/// Cloud Run's optimistic concurrency on jobs: an etag given with a request
/// must be the job's current one (an empty etag means "any").
fn check_etag(etag: &str, record: &JobRecord) -> Result<(), Status> {
    if !etag.is_empty() && etag != record.job.etag {
        return Err(Status::aborted(format!(
            "etag {etag} does not match the job's current etag"
        )));
    }
    Ok(())
}
