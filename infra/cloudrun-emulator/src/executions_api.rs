//! `google.cloud.run.v2.Executions`: GetExecution, ListExecutions,
//! CancelExecution, DeleteExecution.

use std::sync::Arc;
use std::time::SystemTime;

use googleapis_tonic_google_cloud_run_v2::google::cloud::run::v2::{
    CancelExecutionRequest, DeleteExecutionRequest, Execution, GetExecutionRequest,
    ListExecutionsRequest, ListExecutionsResponse,
};
use googleapis_tonic_google_longrunning::google::longrunning::Operation;
use tonic::{Request, Response, Status};

use crate::execution::{self, ExecutionEntry};
use crate::grpc::executions_server::Executions;
use crate::lro;
use crate::names::{ExecutionName, ExecutionsParent};
use crate::store::{self, OperationRecord, State, Store};

/// The Executions service over the shared store.
#[derive(Debug, Clone)]
pub(crate) struct ExecutionsApi {
    store: Arc<Store>,
}

impl ExecutionsApi {
    pub(crate) fn new(store: Arc<Store>) -> Self {
        Self { store }
    }
}

#[tonic::async_trait]
impl Executions for ExecutionsApi {
    async fn get_execution(
        &self,
        request: Request<GetExecutionRequest>,
    ) -> Result<Response<Execution>, Status> {
        let name = ExecutionName::parse(&request.get_ref().name)?;
        let entry = find(&self.store.lock(), &name)?;
        Ok(Response::new(entry.snapshot()))
    }

    async fn list_executions(
        &self,
        request: Request<ListExecutionsRequest>,
    ) -> Result<Response<ListExecutionsResponse>, Status> {
        let request = request.into_inner();
        let parent = ExecutionsParent::parse(&request.parent)?;
        let mut entries: Vec<Arc<ExecutionEntry>> = {
            let state = self.store.lock();
            if let ExecutionsParent::Job(job) = &parent {
                state.job(job)?;
            }
            state
                .executions
                .values()
                .filter(|e| match &parent {
                    ExecutionsParent::Job(job) => e.name.job == *job,
                    ExecutionsParent::AllJobs(location) => e.name.job.parent == *location,
                })
                .cloned()
                .collect()
        };
        // Newest first, as Cloud Run sorts them.
        entries.sort_by_key(|e| std::cmp::Reverse(e.seq));
        let (page, next_page_token) =
            store::paginate(entries, request.page_size, &request.page_token)?;
        let executions = page.iter().map(|e| e.snapshot()).collect();
        Ok(Response::new(ListExecutionsResponse {
            executions,
            next_page_token,
        }))
    }

    async fn delete_execution(
        &self,
        request: Request<DeleteExecutionRequest>,
    ) -> Result<Response<Operation>, Status> {
        let request = request.into_inner();
        let name = ExecutionName::parse(&request.name)?;
        let mut state = self.store.lock();
        let entry = find(&state, &name)?;
        check_etag(&entry, &request.etag)?;
        let mut execution = entry.snapshot();
        execution.delete_time = Some(SystemTime::now().into());
        if request.validate_only {
            return Ok(Response::new(lro::execution_operation(
                String::new(),
                &execution,
            )));
        }
        // Deleting a running execution stops its tasks: nothing of it may
        // keep running once it can no longer be seen.
        entry.cancel.cancel();
        state.executions.remove(&name.to_string());
        let op = state.add_operation(&name.job.parent, |seq, op| OperationRecord::Done {
            seq,
            operation: lro::deleted_execution_operation(op, &execution),
        });
        Ok(Response::new(state.operations[&op].to_proto(&op)))
    }

    async fn cancel_execution(
        &self,
        request: Request<CancelExecutionRequest>,
    ) -> Result<Response<Operation>, Status> {
        let request = request.into_inner();
        let name = ExecutionName::parse(&request.name)?;
        let mut state = self.store.lock();
        let entry = find(&state, &name)?;
        check_etag(&entry, &request.etag)?;
        if entry.is_done() {
            return Err(Status::failed_precondition(format!(
                "execution {} has already finished ({}) and cannot be cancelled",
                name.execution,
                entry.completion_status().as_str_name()
            )));
        }
        if request.validate_only {
            return Ok(Response::new(lro::execution_operation(
                String::new(),
                &entry.snapshot(),
            )));
        }
        entry.update(execution::mark_cancelling);
        entry.cancel.cancel();
        tracing::info!(execution = %name, "execution cancelled");
        // The operation is done once every task has stopped.
        let op = state.add_operation(&name.job.parent, |seq, _| OperationRecord::Execution {
            seq,
            entry: Arc::clone(&entry),
        });
        Ok(Response::new(state.operations[&op].to_proto(&op)))
    }
}

fn find(state: &State, name: &ExecutionName) -> Result<Arc<ExecutionEntry>, Status> {
    state
        .executions
        .get(&name.to_string())
        .cloned()
        .ok_or_else(|| {
            Status::not_found(format!(
                "Resource '{}' of kind 'EXECUTION' in region '{}' in project '{}' does not exist.",
                name.execution, name.job.parent.location, name.job.parent.project
            ))
        })
}

fn check_etag(entry: &ExecutionEntry, etag: &str) -> Result<(), Status> {
    if etag.is_empty() || entry.snapshot().etag == etag {
        Ok(())
    } else {
        Err(Status::aborted(format!(
            "etag {etag} does not match the execution's current etag"
        )))
    }
}
