//! Job templates that the Cloud Run emulator tests create.

use googleapis_tonic_google_cloud_run_v2::google::cloud::run::v2::{
    Container, CreateJobRequest, EnvVar, ExecutionTemplate, Job, TaskTemplate, env_var,
    jobs_client::JobsClient, task_template::Retries,
};

use crate::embedded::within;

/// A job running `image` with `env`: one task, no retries (a retried task
/// would run the command again). Its commands may write to the tests'
/// named pipes (`RUNBOX_LANDLOCK_WRITABLE`).
pub fn executor_job<K: AsRef<str>, V: AsRef<str>>(image: &str, env: &[(K, V)]) -> Job {
    let pipes = EnvVar {
        name: runbox_core::confinement::LANDLOCK_WRITABLE_ENV.to_owned(),
        values: Some(env_var::Values::Value(
            crate::pipes::shared_dir().to_string_lossy().into_owned(),
        )),
    };
    Job {
        template: Some(ExecutionTemplate {
            task_count: 1,
            template: Some(TaskTemplate {
                containers: vec![Container {
                    image: image.to_owned(),
                    env: env
                        .iter()
                        .map(|(name, value)| EnvVar {
                            name: name.as_ref().to_owned(),
                            values: Some(env_var::Values::Value(value.as_ref().to_owned())),
                        })
                        .chain(std::iter::once(pipes))
                        .collect(),
                    ..Default::default()
                }],
                retries: Some(Retries::MaxRetries(0)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Creates the job `{parent}/jobs/{id}` ([`executor_job`] of `image` and
/// `env`) on the Cloud Run emulator at `endpoint`; panics when it cannot.
pub async fn create_executor_job<K: AsRef<str>, V: AsRef<str>>(
    endpoint: &str,
    parent: &str,
    id: &str,
    image: &str,
    env: &[(K, V)],
) {
    let endpoint = tonic::transport::Endpoint::from_shared(endpoint.to_owned()).expect("endpoint");
    let mut jobs = JobsClient::new(
        within(10, endpoint.connect())
            .await
            .expect("connect to the Cloud Run emulator"),
    );
    within(
        10,
        jobs.create_job(CreateJobRequest {
            parent: parent.to_owned(),
            job: Some(executor_job(image, env)),
            job_id: id.to_owned(),
            validate_only: false,
        }),
    )
    .await
    .unwrap_or_else(|e| panic!("CreateJob {parent}/jobs/{id}: {e}"));
}
