//! Generates tonic server traits for the Cloud Run Admin API v2 (Jobs,
//! Executions) and google.longrunning.Operations over the message types of the
//! googleapis-tonic crates, so the emulator and Google's clients share one set
//! of types. No protoc and no .proto files: each RPC is declared by hand with
//! its wire route, request and response type.

use tonic_build::manual::{Builder, Method, Service};

const RUN: &str = "::googleapis_tonic_google_cloud_run_v2::google::cloud::run::v2";
const LRO: &str = "::googleapis_tonic_google_longrunning::google::longrunning";
const CODEC: &str = "::tonic_prost::ProstCodec";

fn method(name: &str, route: &str, input: String, output: String) -> Method {
    Method::builder()
        .name(name)
        .route_name(route)
        .input_type(input)
        .output_type(output)
        .codec_path(CODEC)
        .build()
}

fn main() {
    let op = || format!("{LRO}::Operation");
    let jobs = Service::builder()
        .name("Jobs")
        .package("google.cloud.run.v2")
        .method(method(
            "create_job",
            "CreateJob",
            format!("{RUN}::CreateJobRequest"),
            op(),
        ))
        .method(method(
            "get_job",
            "GetJob",
            format!("{RUN}::GetJobRequest"),
            format!("{RUN}::Job"),
        ))
        .method(method(
            "list_jobs",
            "ListJobs",
            format!("{RUN}::ListJobsRequest"),
            format!("{RUN}::ListJobsResponse"),
        ))
        .method(method(
            "update_job",
            "UpdateJob",
            format!("{RUN}::UpdateJobRequest"),
            op(),
        ))
        .method(method(
            "delete_job",
            "DeleteJob",
            format!("{RUN}::DeleteJobRequest"),
            op(),
        ))
        .method(method(
            "run_job",
            "RunJob",
            format!("{RUN}::RunJobRequest"),
            op(),
        ))
        .build();
    let executions = Service::builder()
        .name("Executions")
        .package("google.cloud.run.v2")
        .method(method(
            "get_execution",
            "GetExecution",
            format!("{RUN}::GetExecutionRequest"),
            format!("{RUN}::Execution"),
        ))
        .method(method(
            "list_executions",
            "ListExecutions",
            format!("{RUN}::ListExecutionsRequest"),
            format!("{RUN}::ListExecutionsResponse"),
        ))
        .method(method(
            "delete_execution",
            "DeleteExecution",
            format!("{RUN}::DeleteExecutionRequest"),
            op(),
        ))
        .method(method(
            "cancel_execution",
            "CancelExecution",
            format!("{RUN}::CancelExecutionRequest"),
            op(),
        ))
        .build();
    // CancelOperation is left out on purpose: the generated router answers
    // UNIMPLEMENTED for routes it does not know.
    let operations = Service::builder()
        .name("Operations")
        .package("google.longrunning")
        .method(method(
            "list_operations",
            "ListOperations",
            format!("{LRO}::ListOperationsRequest"),
            format!("{LRO}::ListOperationsResponse"),
        ))
        .method(method(
            "get_operation",
            "GetOperation",
            format!("{LRO}::GetOperationRequest"),
            op(),
        ))
        .method(method(
            "delete_operation",
            "DeleteOperation",
            format!("{LRO}::DeleteOperationRequest"),
            // google.protobuf.Empty is `()` in prost; the builder cannot parse `()`.
            "crate::grpc::Empty".to_owned(),
        ))
        .method(method(
            "wait_operation",
            "WaitOperation",
            format!("{LRO}::WaitOperationRequest"),
            op(),
        ))
        .build();
    Builder::new()
        .build_client(false)
        .build_transport(false)
        .compile(&[jobs, executions, operations]);
}
