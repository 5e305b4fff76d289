//! Long-running operations in Cloud Run's shape: metadata and response are
//! the resource, `Any`-packed with its full type URL (the generated types do
//! not implement `prost::Name`, so the URLs are spelled out here).

use googleapis_tonic_google_cloud_run_v2::google::cloud::run::v2::{Execution, Job};
use googleapis_tonic_google_longrunning::google::longrunning::{Operation, operation};
use googleapis_tonic_google_longrunning::google::rpc;
use prost::Message;
use prost_types::Any;

use crate::execution;

/// Type URL of a packed `google.cloud.run.v2.Execution`.
pub const EXECUTION_TYPE_URL: &str = "type.googleapis.com/google.cloud.run.v2.Execution";
/// Type URL of a packed `google.cloud.run.v2.Job`.
pub const JOB_TYPE_URL: &str = "type.googleapis.com/google.cloud.run.v2.Job";

fn pack(type_url: &str, message: &impl Message) -> Any {
    Any {
        type_url: type_url.to_owned(),
        value: message.encode_to_vec(),
    }
}

/// A finished operation on a job (CreateJob, UpdateJob, DeleteJob): the job
/// is both metadata and response.
pub(crate) fn job_operation(name: String, job: &Job) -> Operation {
    let packed = pack(JOB_TYPE_URL, job);
    Operation {
        name,
        metadata: Some(packed.clone()),
        done: true,
        result: Some(operation::Result::Response(packed)),
    }
}

/// An operation that follows an execution (RunJob, CancelExecution,
/// DeleteExecution): metadata is the execution as it is now; once it has
/// finished the operation is done, with the execution as response — or, when
/// a task failed, with an error carrying the Completed condition's message
/// and the execution in its details, which is how Cloud Run makes
/// `operation.result()` raise for a failed execution. A cancelled execution
/// is a response, not an error.
pub(crate) fn execution_operation(name: String, execution: &Execution) -> Operation {
    let packed = pack(EXECUTION_TYPE_URL, execution);
    let result = execution::is_done(execution).then(|| match execution::failed(execution) {
        Some(message) => operation::Result::Error(rpc::Status {
            code: tonic::Code::FailedPrecondition as i32,
            message: message.to_owned(),
            details: vec![packed.clone()],
        }),
        None => operation::Result::Response(packed.clone()),
    });
    Operation {
        name,
        metadata: Some(packed),
        done: result.is_some(),
        result,
    }
}

/// DeleteExecution's operation: done at once, with the execution as it was
/// when deleted (whatever its state) as both metadata and response.
pub(crate) fn deleted_execution_operation(name: String, execution: &Execution) -> Operation {
    let packed = pack(EXECUTION_TYPE_URL, execution);
    Operation {
        name,
        metadata: Some(packed.clone()),
        done: true,
        result: Some(operation::Result::Response(packed)),
    }
}
