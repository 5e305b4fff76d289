//! Bad requests get Cloud Run's error codes, and the emulator keeps serving:
//! every case is followed by a good call that succeeds.

mod common;

use common::*;
use googleapis_tonic_google_cloud_run_v2::google::cloud::run::v2::{
    CancelExecutionRequest, CreateJobRequest, GetExecutionRequest, GetJobRequest, Job,
    ListExecutionsRequest, RunJobRequest, run_job_request::Overrides,
    run_job_request::overrides::ContainerOverride,
};
use googleapis_tonic_google_longrunning::google::longrunning::{
    GetOperationRequest, WaitOperationRequest,
};
use tonic::Code;

/// A good call after a bad one: a job runs to success.
async fn still_serving(h: &mut Harness, job: &str) {
    let done = h.run_and_wait(job).await;
    assert_eq!(metadata_execution(&done).succeeded_count, 1, "{done:?}");
}

async fn harness_with_job(job: &str) -> Harness {
    let mut h = start().await;
    h.create_job(job, bash_job("true", vec![], 0)).await;
    h
}

fn run_with(job: &str, overrides: Overrides) -> RunJobRequest {
    RunJobRequest {
        name: job_name(job),
        overrides: Some(overrides),
        ..Default::default()
    }
}

#[tokio::test]
async fn run_job_on_a_missing_job_is_not_found() {
    let mut h = harness_with_job("present").await;
    let err = within(h.jobs.run_job(RunJobRequest {
        name: job_name("absent"),
        ..Default::default()
    }))
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("absent"), "{}", err.message());
    let err = within(h.jobs.get_job(GetJobRequest {
        name: job_name("absent"),
    }))
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = within(h.executions.get_execution(GetExecutionRequest {
        name: format!("{}/executions/present-abcde", job_name("present")),
    }))
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = within(h.operations.get_operation(GetOperationRequest {
        name: format!("{PARENT}/operations/00000000-0000-4000-8000-000000000000"),
    }))
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    still_serving(&mut h, "present").await;
}

#[tokio::test]
async fn malformed_names_are_invalid_argument() {
    let mut h = harness_with_job("good").await;
    let bad_job_names = [
        "good",
        "jobs/good",
        "projects/test-project/locations/us-central1/jobs/",
        "projects/test-project/locations/us-central1/jobs/Good",
        "projects/test-project/locations/us-central1/jobs/1good",
        "projects/test-project/locations/us-central1/jobs/good_job",
        "projects/test-project/locations/us-central1/jobs/good-",
        "projects/test-project/locations/us-central1/jobs/good/extra",
        "projects//locations/us-central1/jobs/good",
    ];
    let too_long = job_name(&"a".repeat(64));
    for name in bad_job_names.iter().copied().chain([too_long.as_str()]) {
        let err = within(h.jobs.run_job(RunJobRequest {
            name: name.to_owned(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "RunJob {name}: {err:?}");
        let err = within(h.jobs.get_job(GetJobRequest {
            name: name.to_owned(),
        }))
        .await
        .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "GetJob {name}");
    }
    for (parent, job_id) in [
        ("projects/test-project", "ok"),
        ("projects/test-project/locations/us-central1/", "ok"),
        (PARENT, "Not_Valid"),
        (PARENT, ""),
    ] {
        let err = within(h.jobs.create_job(CreateJobRequest {
            parent: parent.to_owned(),
            job: Some(bash_job("true", vec![], 0)),
            job_id: job_id.to_owned(),
            validate_only: false,
        }))
        .await
        .unwrap_err();
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "CreateJob {parent} {job_id}: {err:?}"
        );
    }
    let err = within(h.executions.get_execution(GetExecutionRequest {
        name: job_name("good"),
    }))
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = within(h.executions.list_executions(ListExecutionsRequest {
        parent: "projects/p/jobs/good".to_owned(),
        ..Default::default()
    }))
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = within(h.operations.wait_operation(WaitOperationRequest {
        name: "operations/123".to_owned(),
        timeout: None,
    }))
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    still_serving(&mut h, "good").await;
}

#[tokio::test]
async fn timeout_override_above_168_hours_is_invalid_argument() {
    let mut h = harness_with_job("capped").await;
    let week = 168 * 3600;
    for seconds in [week + 1, -5, 0] {
        let overrides = Overrides {
            timeout: Some(prost_types::Duration { seconds, nanos: 0 }),
            ..Default::default()
        };
        let err = within(h.jobs.run_job(run_with("capped", overrides)))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{seconds}s: {err:?}");
    }
    // Exactly 168 h is allowed.
    let overrides = Overrides {
        timeout: Some(prost_types::Duration {
            seconds: week,
            nanos: 0,
        }),
        ..Default::default()
    };
    let op = h.run(run_with("capped", overrides)).await;
    assert!(metadata_execution(&h.wait(&op.name).await).succeeded_count == 1);
    still_serving(&mut h, "capped").await;
}

#[tokio::test]
async fn env_override_over_32_kib_is_invalid_argument() {
    let mut h = harness_with_job("envy").await;
    let overrides = |value: String| Overrides {
        container_overrides: vec![ContainerOverride {
            env: vec![env("BIG", &value)],
            ..Default::default()
        }],
        ..Default::default()
    };
    let err = within(
        h.jobs
            .run_job(run_with("envy", overrides("x".repeat(32 * 1024 + 1)))),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("BIG"), "{}", err.message());
    // Exactly 32 KiB fits.
    let op = h
        .run(run_with("envy", overrides("x".repeat(32 * 1024))))
        .await;
    assert_eq!(
        metadata_execution(&h.wait(&op.name).await).succeeded_count,
        1
    );
    still_serving(&mut h, "envy").await;
}

#[tokio::test]
async fn cancel_of_a_finished_execution_is_failed_precondition() {
    let mut h = harness_with_job("quick").await;
    let done = h.run_and_wait("quick").await;
    let name = metadata_execution(&done).name;
    let err = within(h.executions.cancel_execution(CancelExecutionRequest {
        name: name.clone(),
        ..Default::default()
    }))
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    // The execution is unchanged.
    let execution = within(h.executions.get_execution(GetExecutionRequest { name }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (execution.succeeded_count, execution.cancelled_count),
        (1, 0)
    );
    still_serving(&mut h, "quick").await;
}

#[tokio::test]
async fn creating_a_job_twice_is_already_exists() {
    let mut h = harness_with_job("twice").await;
    let err = within(h.jobs.create_job(CreateJobRequest {
        parent: PARENT.to_owned(),
        job: Some(bash_job("false", vec![], 0)),
        job_id: "twice".to_owned(),
        validate_only: false,
    }))
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    // The first job is kept: it still runs `true`, not `false`.
    still_serving(&mut h, "twice").await;
}

#[tokio::test]
async fn an_image_without_a_mapping_is_failed_precondition() {
    let mut h = harness_with_job("mapped").await;
    let mut job: Job = bash_job("true", vec![], 0);
    job.template
        .as_mut()
        .unwrap()
        .template
        .as_mut()
        .unwrap()
        .containers[0]
        .image = "example.test/unknown:1".to_owned();
    h.create_job("unmapped", job).await;
    let err = within(h.jobs.run_job(RunJobRequest {
        name: job_name("unmapped"),
        ..Default::default()
    }))
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("example.test/unknown:1"),
        "{}",
        err.message()
    );
    still_serving(&mut h, "mapped").await;
}

#[tokio::test]
async fn bad_job_templates_are_invalid_argument() {
    let mut h = harness_with_job("fine").await;
    let no_template = Job::default();
    let reserved = bash_job("true", vec![env("CLOUD_RUN_TASK_INDEX", "9")], 0);
    let mut no_image = bash_job("true", vec![], 0);
    no_image
        .template
        .as_mut()
        .unwrap()
        .template
        .as_mut()
        .unwrap()
        .containers[0]
        .image
        .clear();
    let too_many_retries = bash_job("true", vec![], 11);
    for (i, job) in [no_template, reserved, no_image, too_many_retries]
        .into_iter()
        .enumerate()
    {
        let err = within(h.jobs.create_job(CreateJobRequest {
            parent: PARENT.to_owned(),
            job: Some(job),
            job_id: format!("bad-{i}"),
            validate_only: false,
        }))
        .await
        .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "case {i}: {err:?}");
    }
    // Overrides naming a container the job does not have.
    let overrides = Overrides {
        container_overrides: vec![ContainerOverride {
            name: "sidecar".to_owned(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let err = within(h.jobs.run_job(run_with("fine", overrides)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    still_serving(&mut h, "fine").await;
}
