//! The emulator driven through Google's tonic clients: RunJob with overrides,
//! operations, execution status, timeouts, cancellation, list/get/delete.

mod common;

use common::*;
use googleapis_tonic_google_cloud_run_v2::google::cloud::run::v2::{
    CancelExecutionRequest, DeleteExecutionRequest, DeleteJobRequest, Execution,
    GetExecutionRequest, GetJobRequest, ListExecutionsRequest, ListJobsRequest, RunJobRequest,
    condition, execution_reference::CompletionStatus, run_job_request::Overrides,
    run_job_request::overrides::ContainerOverride, task_template::Retries,
};
use googleapis_tonic_google_longrunning::google::longrunning::{
    GetOperationRequest, ListOperationsRequest, WaitOperationRequest, operation,
};
use prost::Message;
use runbox_cloudrun_emulator::EXECUTION_TYPE_URL;
use tonic::Code;

fn completed(
    execution: &Execution,
) -> &googleapis_tonic_google_cloud_run_v2::google::cloud::run::v2::Condition {
    execution
        .conditions
        .iter()
        .find(|c| c.r#type == "Completed")
        .expect("a Completed condition")
}

#[tokio::test]
async fn run_job_applies_overrides_and_runs_each_task() {
    let mut h = start().await;
    let out = tempfile::tempdir().unwrap();
    // The template's script must not run: the override's args replace it.
    let template_script = r#"touch "$OUT/template-ran""#;
    let job = bash_job(
        template_script,
        vec![env("A", "template-a"), env("B", "template-b")],
        0,
    );
    let created = h.create_job("report", job).await;
    assert_eq!(created.name, job_name("report"));

    let script = r#"echo "$CLOUD_RUN_TASK_INDEX $CLOUD_RUN_TASK_COUNT $CLOUD_RUN_EXECUTION $CLOUD_RUN_JOB $CLOUD_RUN_TASK_ATTEMPT $A $B $C" > "$OUT/task-$CLOUD_RUN_TASK_INDEX""#;
    let op = h
        .run(RunJobRequest {
            name: job_name("report"),
            overrides: Some(Overrides {
                container_overrides: vec![ContainerOverride {
                    args: vec![script.to_owned()],
                    env: vec![
                        env("B", "override-b"),
                        env("C", "added-c"),
                        env("OUT", out.path().to_str().unwrap()),
                    ],
                    ..Default::default()
                }],
                task_count: 2,
                timeout: Some(prost_types::Duration {
                    seconds: 60,
                    nanos: 0,
                }),
            }),
            ..Default::default()
        })
        .await;
    assert!(
        op.name.starts_with(&format!("{PARENT}/operations/")),
        "{}",
        op.name
    );
    let started = metadata_execution(&op);
    let exec_id = started.name.rsplit('/').next().unwrap().to_owned();
    assert!(
        exec_id.starts_with("report-") && exec_id.len() == "report-".len() + 5,
        "{exec_id}"
    );
    assert_eq!(started.task_count, 2);
    assert_eq!(started.job, "report");

    let done = h.wait(&op.name).await;
    let Some(operation::Result::Response(response)) = &done.result else {
        panic!("expected a response: {done:?}")
    };
    assert_eq!(response.type_url, EXECUTION_TYPE_URL);
    let execution = Execution::decode(response.value.as_slice()).unwrap();
    assert_eq!(execution, metadata_execution(&done));
    assert_eq!(
        (
            execution.succeeded_count,
            execution.failed_count,
            execution.cancelled_count
        ),
        (2, 0, 0)
    );
    assert_eq!(execution.running_count, 0);
    assert!(!execution.reconciling);
    assert!(execution.create_time.is_some() && execution.start_time.is_some());
    assert!(execution.completion_time.is_some());
    let completed = completed(&execution);
    assert_eq!(completed.state(), condition::State::ConditionSucceeded);
    assert!(
        completed.message.contains("completed successfully"),
        "{}",
        completed.message
    );
    // The execution carries the template after overrides.
    let container = &execution.template.as_ref().unwrap().containers[0];
    assert_eq!(container.args, [script]);
    assert_eq!(
        execution
            .template
            .as_ref()
            .unwrap()
            .timeout
            .unwrap()
            .seconds,
        60
    );

    for index in 0..2 {
        assert_eq!(
            read(&out.path().join(format!("task-{index}"))),
            format!("{index} 2 {exec_id} report 0 template-a override-b added-c")
        );
    }
    assert!(!out.path().join("template-ran").exists());

    // GetOperation and GetExecution agree with the wait.
    let got = within(h.operations.get_operation(GetOperationRequest {
        name: op.name.clone(),
    }))
    .await
    .unwrap()
    .into_inner();
    assert_eq!(got, done);
    let got = within(h.executions.get_execution(GetExecutionRequest {
        name: execution.name.clone(),
    }))
    .await
    .unwrap()
    .into_inner();
    assert_eq!(got, execution);
    h.emulator.shutdown().await.unwrap();
}

#[tokio::test]
async fn failing_task_reports_its_exit_code() {
    let mut h = start().await;
    h.create_job("fails", bash_job("exit 3", vec![], 0)).await;
    let done = h.run_and_wait("fails").await;
    // A failed execution ends its operation with an error (what makes
    // `operation.result()` raise in Google's clients); metadata still has it.
    let Some(operation::Result::Error(status)) = &done.result else {
        panic!("expected an error: {done:?}")
    };
    assert_eq!(status.code, Code::FailedPrecondition as i32);
    assert!(
        status.message.contains("exited with exit code 3"),
        "{}",
        status.message
    );
    assert_eq!(status.details[0].type_url, EXECUTION_TYPE_URL);
    let execution = metadata_execution(&done);
    assert_eq!((execution.succeeded_count, execution.failed_count), (0, 1));
    let completed = completed(&execution);
    assert_eq!(completed.state(), condition::State::ConditionFailed);
    assert_eq!(
        completed.reasons,
        Some(condition::Reasons::ExecutionReason(
            condition::ExecutionReason::NonZeroExitCode as i32
        ))
    );
    let task = format!("{}-task0", execution.name.rsplit('/').next().unwrap());
    assert!(completed.message.contains(&task), "{}", completed.message);
    assert!(
        completed.message.contains("exit code 3"),
        "{}",
        completed.message
    );
}

#[tokio::test]
async fn failed_attempts_are_retried_up_to_max_retries() {
    let mut h = start().await;
    let out = tempfile::tempdir().unwrap();
    let script = r#"echo "$CLOUD_RUN_TASK_ATTEMPT" >> "$OUT/attempts"; exit 1"#;
    let path = out.path().to_str().unwrap();
    h.create_job("flaky", bash_job(script, vec![env("OUT", path)], 2))
        .await;
    let done = h.run_and_wait("flaky").await;
    let execution = metadata_execution(&done);
    assert_eq!((execution.failed_count, execution.retried_count), (1, 1));
    assert_eq!(read(&out.path().join("attempts")), "0\n1\n2");
}

#[tokio::test]
async fn task_timeout_kills_the_whole_process_group() {
    let mut h = start().await;
    let out = tempfile::tempdir().unwrap();
    // The grandchild ignores SIGTERM, so only the SIGKILL after the grace
    // can stop it; the task waits on it, so only a kill ends the task.
    let script = r#"echo $$ > "$OUT/leader"; (trap '' TERM; exec sleep 1000) & echo $! > "$OUT/grandchild"; wait"#;
    let path = out.path().to_str().unwrap();
    h.create_job("slow", bash_job(script, vec![env("OUT", path)], 0))
        .await;
    let op = h
        .run(RunJobRequest {
            name: job_name("slow"),
            overrides: Some(Overrides {
                timeout: Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 0,
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    let done = h.wait(&op.name).await;
    let execution = metadata_execution(&done);
    assert_eq!((execution.succeeded_count, execution.failed_count), (0, 1));
    let completed = completed(&execution);
    assert_eq!(completed.state(), condition::State::ConditionFailed);
    assert!(
        completed.message.contains("timed out"),
        "{}",
        completed.message
    );
    let Some(operation::Result::Error(status)) = &done.result else {
        panic!("expected an error: {done:?}")
    };
    assert!(status.message.contains("timed out"));
    for who in ["leader", "grandchild"] {
        assert_process_gone(read(&out.path().join(who)).parse().unwrap()).await;
    }
}

#[tokio::test]
async fn cancel_execution_kills_its_tasks_and_counts_them_cancelled() {
    let mut h = start().await;
    let out = tempfile::tempdir().unwrap();
    let fifo = out.path().join("started");
    mkfifo(&fifo);
    let script = r#"sleep 1000 & echo $! > "$OUT/grandchild"; echo $$ > "$OUT/started"; wait"#;
    let path = out.path().to_str().unwrap();
    h.create_job("long", bash_job(script, vec![env("OUT", path)], 0))
        .await;
    let run = h
        .run(RunJobRequest {
            name: job_name("long"),
            ..Default::default()
        })
        .await;
    assert!(!run.done);
    // The task says it runs by writing its pid into the FIFO.
    let leader: i32 = read_fifo(&fifo).await.parse().unwrap();

    // A bounded WaitOperation on a running execution returns it not done.
    let waited = within(h.operations.wait_operation(WaitOperationRequest {
        name: run.name.clone(),
        timeout: Some(prost_types::Duration {
            seconds: 0,
            nanos: 100_000_000,
        }),
    }))
    .await
    .unwrap()
    .into_inner();
    assert!(!waited.done && waited.result.is_none());
    let running = metadata_execution(&waited);
    assert_eq!(running.running_count, 1);
    assert!(running.reconciling);

    let cancel = within(h.executions.cancel_execution(CancelExecutionRequest {
        name: running.name.clone(),
        ..Default::default()
    }))
    .await
    .unwrap()
    .into_inner();
    let cancelled_op = h.wait(&cancel.name).await;
    let done = h.wait(&run.name).await;
    for op in [&cancelled_op, &done] {
        // Cancelling is not a failure: the operation has a response.
        assert!(
            matches!(op.result, Some(operation::Result::Response(_))),
            "{op:?}"
        );
    }
    let execution = metadata_execution(&done);
    assert_eq!(
        (
            execution.succeeded_count,
            execution.failed_count,
            execution.cancelled_count
        ),
        (0, 0, 1)
    );
    let completed = completed(&execution);
    assert_eq!(completed.state(), condition::State::ConditionFailed);
    assert_eq!(
        completed.reasons,
        Some(condition::Reasons::ExecutionReason(
            condition::ExecutionReason::Cancelled as i32
        ))
    );
    assert_process_gone(leader).await;
    assert_process_gone(read(&out.path().join("grandchild")).parse().unwrap()).await;
    let job = within(h.jobs.get_job(GetJobRequest {
        name: job_name("long"),
    }))
    .await
    .unwrap()
    .into_inner();
    assert_eq!(
        job.latest_created_execution.unwrap().completion_status(),
        CompletionStatus::ExecutionCancelled
    );
}

#[tokio::test]
async fn parallelism_and_task_count_come_from_the_template() {
    let mut h = start().await;
    let out = tempfile::tempdir().unwrap();
    let path = out.path().to_str().unwrap();
    let mut job = bash_job(
        r#"touch "$OUT/$CLOUD_RUN_TASK_INDEX""#,
        vec![env("OUT", path)],
        0,
    );
    let template = job.template.as_mut().unwrap();
    template.task_count = 3;
    template.parallelism = 1;
    h.create_job("serial", job).await;
    let done = h.run_and_wait("serial").await;
    let execution = metadata_execution(&done);
    assert_eq!(
        (
            execution.task_count,
            execution.parallelism,
            execution.succeeded_count
        ),
        (3, 1, 3)
    );
    for index in 0..3 {
        assert!(out.path().join(index.to_string()).exists());
    }
}

#[tokio::test]
async fn jobs_and_executions_can_be_listed_read_and_deleted() {
    let mut h = start().await;
    let created = h.create_job("first", bash_job("true", vec![], 0)).await;
    // Cloud Run's defaults are filled in.
    let tasks = created
        .template
        .as_ref()
        .unwrap()
        .template
        .as_ref()
        .unwrap();
    assert_eq!(tasks.timeout.unwrap().seconds, 600);
    assert_eq!(created.template.as_ref().unwrap().task_count, 1);
    assert_eq!(
        created.terminal_condition.as_ref().unwrap().state(),
        condition::State::ConditionSucceeded
    );
    let mut other = bash_job("true", vec![], 0);
    other
        .template
        .as_mut()
        .unwrap()
        .template
        .as_mut()
        .unwrap()
        .retries = None;
    let second = h.create_job("second", other).await;
    assert_eq!(
        second.template.unwrap().template.unwrap().retries,
        Some(Retries::MaxRetries(3))
    );

    let list = within(h.jobs.list_jobs(ListJobsRequest {
        parent: PARENT.to_owned(),
        ..Default::default()
    }))
    .await
    .unwrap()
    .into_inner();
    let names: Vec<_> = list.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, [job_name("second"), job_name("first")]);
    let page = within(h.jobs.list_jobs(ListJobsRequest {
        parent: PARENT.to_owned(),
        page_size: 1,
        ..Default::default()
    }))
    .await
    .unwrap()
    .into_inner();
    assert_eq!(page.jobs.len(), 1);
    let rest = within(h.jobs.list_jobs(ListJobsRequest {
        parent: PARENT.to_owned(),
        page_size: 1,
        page_token: page.next_page_token.clone(),
        ..Default::default()
    }))
    .await
    .unwrap()
    .into_inner();
    assert_eq!(rest.jobs[0].name, job_name("first"));
    assert!(rest.next_page_token.is_empty());

    let older = metadata_execution(&h.run_and_wait("first").await);
    let newer = metadata_execution(&h.run_and_wait("first").await);
    h.run_and_wait("second").await;
    let listed = within(h.executions.list_executions(ListExecutionsRequest {
        parent: job_name("first"),
        ..Default::default()
    }))
    .await
    .unwrap()
    .into_inner();
    let names: Vec<_> = listed.executions.iter().map(|e| e.name.clone()).collect();
    assert_eq!(names, [newer.name.clone(), older.name.clone()]);
    let all = within(h.executions.list_executions(ListExecutionsRequest {
        parent: format!("{PARENT}/jobs/-"),
        ..Default::default()
    }))
    .await
    .unwrap()
    .into_inner();
    assert_eq!(all.executions.len(), 3);

    let job = within(h.jobs.get_job(GetJobRequest {
        name: job_name("first"),
    }))
    .await
    .unwrap()
    .into_inner();
    assert_eq!(job.execution_count, 2);
    let latest = job.latest_created_execution.unwrap();
    assert_eq!(latest.name, newer.name);
    assert_eq!(
        latest.completion_status(),
        CompletionStatus::ExecutionSucceeded
    );

    let ops = within(h.operations.list_operations(ListOperationsRequest {
        name: PARENT.to_owned(),
        ..Default::default()
    }))
    .await
    .unwrap()
    .into_inner();
    // Two CreateJob and three RunJob operations, all done.
    assert_eq!(ops.operations.len(), 5);
    assert!(ops.operations.iter().all(|op| op.done));

    let deleted = within(h.executions.delete_execution(DeleteExecutionRequest {
        name: older.name.clone(),
        ..Default::default()
    }))
    .await
    .unwrap()
    .into_inner();
    assert!(deleted.done);
    let missing = within(h.executions.get_execution(GetExecutionRequest {
        name: older.name.clone(),
    }))
    .await
    .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    let deleted = within(h.jobs.delete_job(DeleteJobRequest {
        name: job_name("first"),
        ..Default::default()
    }))
    .await
    .unwrap()
    .into_inner();
    assert!(deleted.done);
    let missing = within(h.jobs.get_job(GetJobRequest {
        name: job_name("first"),
    }))
    .await
    .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    // Its executions went with it.
    let missing = within(h.executions.get_execution(GetExecutionRequest {
        name: newer.name.clone(),
    }))
    .await
    .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let missing = within(h.executions.list_executions(ListExecutionsRequest {
        parent: job_name("first"),
        ..Default::default()
    }))
    .await
    .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    // The other job is untouched.
    within(h.jobs.get_job(GetJobRequest {
        name: job_name("second"),
    }))
    .await
    .unwrap();
}

#[tokio::test]
async fn a_task_ignoring_sigterm_is_killed_after_the_grace() {
    let mut h = start().await;
    let out = tempfile::tempdir().unwrap();
    let fifo = out.path().join("started");
    mkfifo(&fifo);
    // Both the shell and its child ignore SIGTERM: only SIGKILL stops them.
    let script =
        r#"trap '' TERM; sleep 1000 & echo $! > "$OUT/child"; echo $$ > "$OUT/started"; wait"#;
    let path = out.path().to_str().unwrap();
    h.create_job("stubborn", bash_job(script, vec![env("OUT", path)], 0))
        .await;
    let run = h
        .run(RunJobRequest {
            name: job_name("stubborn"),
            ..Default::default()
        })
        .await;
    let leader: i32 = read_fifo(&fifo).await.parse().unwrap();
    within(h.executions.cancel_execution(CancelExecutionRequest {
        name: metadata_execution(&run).name,
        ..Default::default()
    }))
    .await
    .unwrap();
    let done = h.wait(&run.name).await;
    assert_eq!(metadata_execution(&done).cancelled_count, 1);
    assert_process_gone(leader).await;
    assert_process_gone(read(&out.path().join("child")).parse().unwrap()).await;
}

#[tokio::test]
async fn shutdown_stops_running_tasks() {
    let mut h = start().await;
    let out = tempfile::tempdir().unwrap();
    let fifo = out.path().join("started");
    mkfifo(&fifo);
    let script = r#"sleep 1000 & echo $! > "$OUT/child"; echo $$ > "$OUT/started"; wait"#;
    let path = out.path().to_str().unwrap();
    h.create_job("forever", bash_job(script, vec![env("OUT", path)], 0))
        .await;
    let run = h
        .run(RunJobRequest {
            name: job_name("forever"),
            ..Default::default()
        })
        .await;
    assert!(!run.done);
    let leader: i32 = read_fifo(&fifo).await.parse().unwrap();
    within(h.emulator.shutdown()).await.unwrap();
    assert_process_gone(leader).await;
    assert_process_gone(read(&out.path().join("child")).parse().unwrap()).await;
}

#[tokio::test]
async fn update_job_replaces_the_template() {
    use googleapis_tonic_google_cloud_run_v2::google::cloud::run::v2::UpdateJobRequest;
    let mut h = start().await;
    let out = tempfile::tempdir().unwrap();
    let path = out.path().to_str().unwrap();
    let mut job = h
        .create_job("evolving", bash_job("exit 1", vec![], 0))
        .await;
    assert_eq!(job.generation, 1);
    job.template = bash_job(r#"touch "$OUT/v2""#, vec![env("OUT", path)], 0).template;
    let op = within(h.jobs.update_job(UpdateJobRequest {
        job: Some(job),
        ..Default::default()
    }))
    .await
    .unwrap()
    .into_inner();
    assert!(op.done);
    let updated = within(h.jobs.get_job(GetJobRequest {
        name: job_name("evolving"),
    }))
    .await
    .unwrap()
    .into_inner();
    assert_eq!(updated.generation, 2);
    assert_eq!(
        metadata_execution(&h.run_and_wait("evolving").await).succeeded_count,
        1
    );
    assert!(out.path().join("v2").exists());
    // allow_missing creates; without it a missing job is NOT_FOUND.
    let mut fresh = bash_job("true", vec![], 0);
    fresh.name = job_name("fresh");
    let err = within(h.jobs.update_job(UpdateJobRequest {
        job: Some(fresh.clone()),
        ..Default::default()
    }))
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    within(h.jobs.update_job(UpdateJobRequest {
        job: Some(fresh),
        allow_missing: true,
        ..Default::default()
    }))
    .await
    .unwrap();
    assert_eq!(
        metadata_execution(&h.run_and_wait("fresh").await).succeeded_count,
        1
    );
}
