//! Job templates and RunJob overrides: Cloud Run's defaults and limits, the
//! way overrides combine with the template, and the local command a task runs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use googleapis_tonic_google_cloud_run_v2::google::cloud::run::v2::{
    Container, EnvVar, ExecutionTemplate, TaskTemplate, env_var, run_job_request::Overrides,
    task_template::Retries,
};
use tonic::Status;

use crate::config::Config;

/// Longest task timeout Cloud Run accepts.
pub(crate) const MAX_TIMEOUT: Duration = Duration::from_secs(168 * 3600);
/// Task timeout when the template gives none.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// Retries per task when the template gives none.
pub(crate) const DEFAULT_MAX_RETRIES: i32 = 3;
/// Most retries per task Cloud Run accepts.
pub(crate) const MAX_RETRIES: i32 = 10;
/// Most tasks per execution Cloud Run accepts.
pub(crate) const MAX_TASK_COUNT: i32 = 10_000;
/// Longest env var value (and name) Cloud Run accepts, in bytes.
pub(crate) const MAX_ENV_BYTES: usize = 32 * 1024;
/// Variables Cloud Run sets itself in every task; a template may not set them.
pub(crate) const RESERVED_ENV: [&str; 5] = [
    "CLOUD_RUN_JOB",
    "CLOUD_RUN_EXECUTION",
    "CLOUD_RUN_TASK_INDEX",
    "CLOUD_RUN_TASK_ATTEMPT",
    "CLOUD_RUN_TASK_COUNT",
];

/// Validates a job's execution template and fills in Cloud Run's defaults
/// (one task, 600 s timeout, 3 retries), as GetJob then reports them.
pub(crate) fn normalize(template: Option<ExecutionTemplate>) -> Result<ExecutionTemplate, Status> {
    let mut template =
        template.ok_or_else(|| Status::invalid_argument("job.template is required"))?;
    if template.task_count == 0 {
        template.task_count = 1;
    }
    check_task_count(template.task_count, "job.template.task_count")?;
    if template.parallelism < 0 {
        return Err(Status::invalid_argument(
            "job.template.parallelism must not be negative",
        ));
    }
    let tasks = template
        .template
        .as_mut()
        .ok_or_else(|| Status::invalid_argument("job.template.template is required"))?;
    match tasks.containers.len() {
        0 => {
            return Err(Status::invalid_argument(
                "job.template.template.containers: one container is required",
            ));
        }
        1 => {}
        // Sidecars would need several processes sharing a "network namespace";
        // runbox's jobs have one container.
        _ => {
            return Err(Status::unimplemented(
                "the emulator runs jobs with exactly one container",
            ));
        }
    }
    for (i, container) in tasks.containers.iter().enumerate() {
        let field = format!("job.template.template.containers[{i}]");
        if container.image.is_empty() {
            return Err(Status::invalid_argument(format!(
                "{field}.image is required"
            )));
        }
        check_strings(&container.command, &format!("{field}.command"))?;
        check_strings(&container.args, &format!("{field}.args"))?;
        check_env(&container.env, &format!("{field}.env"))?;
    }
    match tasks.timeout {
        None => tasks.timeout = Some(to_proto_duration(DEFAULT_TIMEOUT)),
        Some(timeout) => {
            check_timeout(&timeout, "job.template.template.timeout")?;
        }
    }
    match tasks.retries {
        None => tasks.retries = Some(Retries::MaxRetries(DEFAULT_MAX_RETRIES)),
        Some(Retries::MaxRetries(n)) if !(0..=MAX_RETRIES).contains(&n) => {
            return Err(Status::invalid_argument(format!(
                "job.template.template.max_retries must be between 0 and {MAX_RETRIES}, got {n}"
            )));
        }
        Some(_) => {}
    }
    Ok(template)
}

/// Applies RunJob overrides to a (normalized) job template as Cloud Run does:
/// container args replace the template's, env vars merge by name (an
/// override wins, new names are appended), task count and timeout replace.
pub(crate) fn apply_overrides(
    template: &ExecutionTemplate,
    overrides: Option<&Overrides>,
) -> Result<ExecutionTemplate, Status> {
    let mut template = template.clone();
    let Some(overrides) = overrides else {
        return Ok(template);
    };
    let tasks = template.template.get_or_insert_with(TaskTemplate::default);
    let mut seen = Vec::new();
    for (i, over) in overrides.container_overrides.iter().enumerate() {
        let field = format!("overrides.container_overrides[{i}]");
        let index = if over.name.is_empty() && tasks.containers.len() == 1 {
            0
        } else {
            tasks
                .containers
                .iter()
                .position(|c| c.name == over.name)
                .ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "{field}.name: the job has no container named \"{}\"",
                        over.name
                    ))
                })?
        };
        if seen.contains(&index) {
            return Err(Status::invalid_argument(format!(
                "{field}: the container is overridden twice"
            )));
        }
        seen.push(index);
        if over.clear_args && !over.args.is_empty() {
            return Err(Status::invalid_argument(format!(
                "{field}: clear_args is set but args are given"
            )));
        }
        check_strings(&over.args, &format!("{field}.args"))?;
        check_env(&over.env, &format!("{field}.env"))?;
        let container = &mut tasks.containers[index];
        if over.clear_args {
            container.args.clear();
        } else if !over.args.is_empty() {
            container.args.clone_from(&over.args);
        }
        for var in &over.env {
            match container.env.iter_mut().find(|v| v.name == var.name) {
                Some(existing) => existing.values.clone_from(&var.values),
                None => container.env.push(var.clone()),
            }
        }
    }
    if overrides.task_count != 0 {
        check_task_count(overrides.task_count, "overrides.task_count")?;
        template.task_count = overrides.task_count;
    }
    if let Some(timeout) = overrides.timeout {
        check_timeout(&timeout, "overrides.timeout")?;
        template
            .template
            .get_or_insert_with(TaskTemplate::default)
            .timeout = Some(timeout);
    }
    Ok(template)
}

/// What every task of one execution runs.
#[derive(Debug, Clone)]
pub(crate) struct TaskSpec {
    pub(crate) argv: Vec<String>,
    /// The container's env, in order, after overrides.
    pub(crate) env: Vec<(String, String)>,
    pub(crate) working_dir: Option<PathBuf>,
    pub(crate) timeout: Duration,
    pub(crate) max_retries: u32,
}

/// Resolves the local command for an execution's template. An image without
/// a mapping is FAILED_PRECONDITION: the job is fine, the emulator cannot run it.
pub(crate) fn resolve(config: &Config, template: &ExecutionTemplate) -> Result<TaskSpec, Status> {
    let tasks = template
        .template
        .as_ref()
        .ok_or_else(|| Status::internal("the job has no task template"))?;
    let container: &Container = tasks
        .containers
        .first()
        .ok_or_else(|| Status::internal("the job has no container"))?;
    let mapped = config.images.get(&container.image).ok_or_else(|| {
        Status::failed_precondition(format!(
            "image \"{}\" has no local command: start the emulator with --image {}=COMMAND",
            container.image, container.image
        ))
    })?;
    // Docker semantics: `command` replaces the image's entrypoint.
    let mut argv = if container.command.is_empty() {
        mapped.clone()
    } else {
        container.command.clone()
    };
    argv.extend(container.args.iter().cloned());
    if argv.is_empty() {
        return Err(Status::failed_precondition(format!(
            "image \"{}\" maps to an empty command and the container sets none",
            container.image
        )));
    }
    let mut env = Vec::with_capacity(container.env.len());
    for var in &container.env {
        match &var.values {
            None => env.push((var.name.clone(), String::new())),
            Some(env_var::Values::Value(value)) => env.push((var.name.clone(), value.clone())),
            Some(env_var::Values::ValueSource(_)) => {
                return Err(Status::unimplemented(format!(
                    "env var {}: secret references are not supported by the emulator",
                    var.name
                )));
            }
        }
    }
    let timeout = tasks
        .timeout
        .map_or(Ok(DEFAULT_TIMEOUT), |t| check_timeout(&t, "timeout"))?;
    let max_retries = match tasks.retries {
        Some(Retries::MaxRetries(n)) => n.clamp(0, MAX_RETRIES) as u32,
        None => DEFAULT_MAX_RETRIES as u32,
    };
    Ok(TaskSpec {
        argv,
        env,
        working_dir: (!container.working_dir.is_empty())
            .then(|| PathBuf::from(&container.working_dir)),
        timeout,
        max_retries,
    })
}

/// Builds the env vars Cloud Run adds to task `index` of an execution.
pub(crate) fn cloud_run_env(
    job: &str,
    execution: &str,
    index: i32,
    attempt: u32,
    count: i32,
) -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        ("CLOUD_RUN_JOB", job.to_owned()),
        ("CLOUD_RUN_EXECUTION", execution.to_owned()),
        ("CLOUD_RUN_TASK_INDEX", index.to_string()),
        ("CLOUD_RUN_TASK_ATTEMPT", attempt.to_string()),
        ("CLOUD_RUN_TASK_COUNT", count.to_string()),
    ])
}

pub(crate) fn to_proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: d.subsec_nanos() as i32,
    }
}

/// A task timeout must be positive and at most 168 hours.
fn check_timeout(timeout: &prost_types::Duration, field: &str) -> Result<Duration, Status> {
    let invalid = |why: String| Status::invalid_argument(format!("{field}: {why}"));
    if !(0..1_000_000_000).contains(&timeout.nanos) {
        return Err(invalid(format!(
            "nanos must be in [0, 1e9), got {}",
            timeout.nanos
        )));
    }
    if timeout.seconds < 0 || (timeout.seconds == 0 && timeout.nanos == 0) {
        return Err(invalid("the timeout must be positive".to_owned()));
    }
    let d = Duration::new(timeout.seconds as u64, timeout.nanos as u32);
    if d > MAX_TIMEOUT {
        return Err(invalid(format!(
            "{}s exceeds the maximum task timeout of 168h ({}s)",
            timeout.seconds,
            MAX_TIMEOUT.as_secs()
        )));
    }
    Ok(d)
}

fn check_task_count(count: i32, field: &str) -> Result<(), Status> {
    if (1..=MAX_TASK_COUNT).contains(&count) {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "{field} must be between 1 and {MAX_TASK_COUNT}, got {count}"
        )))
    }
}

/// Env names must be non-empty, without `=` or NUL, not reserved, and names
/// and values at most 32 KiB; a value with NUL could not reach the process.
fn check_env(env: &[EnvVar], field: &str) -> Result<(), Status> {
    for (i, var) in env.iter().enumerate() {
        let invalid = |why: String| Status::invalid_argument(format!("{field}[{i}]: {why}"));
        if var.name.is_empty() || var.name.contains(['=', '\0']) {
            return Err(invalid(format!("invalid env var name \"{}\"", var.name)));
        }
        if var.name.len() > MAX_ENV_BYTES {
            return Err(invalid(format!("the name exceeds {MAX_ENV_BYTES} bytes")));
        }
        if RESERVED_ENV.contains(&var.name.as_str()) {
            return Err(invalid(format!(
                "{} is reserved and set by Cloud Run",
                var.name
            )));
        }
        if let Some(env_var::Values::Value(value)) = &var.values {
            if value.len() > MAX_ENV_BYTES {
                return Err(invalid(format!(
                    "the value of {} is {} bytes, over the limit of {MAX_ENV_BYTES} bytes",
                    var.name,
                    value.len()
                )));
            }
            if value.contains('\0') {
                return Err(invalid(format!("the value of {} contains NUL", var.name)));
            }
        }
    }
    Ok(())
}

/// Arguments reach `execve` as C strings: no NUL inside.
fn check_strings(values: &[String], field: &str) -> Result<(), Status> {
    match values.iter().position(|v| v.contains('\0')) {
        Some(i) => Err(Status::invalid_argument(format!(
            "{field}[{i}] contains NUL"
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use googleapis_tonic_google_cloud_run_v2::google::cloud::run::v2::run_job_request::overrides::ContainerOverride;

    use super::*;

    fn var(name: &str, value: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            values: Some(env_var::Values::Value(value.into())),
        }
    }

    fn template() -> ExecutionTemplate {
        normalize(Some(ExecutionTemplate {
            template: Some(TaskTemplate {
                containers: vec![Container {
                    image: "img".into(),
                    args: vec!["a".into(), "b".into()],
                    env: vec![var("A", "1"), var("B", "2")],
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }))
        .unwrap()
    }

    #[test]
    fn defaults_are_filled() {
        let t = template();
        assert_eq!(t.task_count, 1);
        let tasks = t.template.unwrap();
        assert_eq!(tasks.timeout.unwrap().seconds, 600);
        assert_eq!(tasks.retries, Some(Retries::MaxRetries(3)));
    }

    #[test]
    fn overrides_replace_args_and_merge_env() {
        let overrides = Overrides {
            container_overrides: vec![ContainerOverride {
                args: vec!["x".into()],
                env: vec![var("B", "20"), var("C", "3")],
                ..Default::default()
            }],
            task_count: 2,
            timeout: Some(prost_types::Duration {
                seconds: 5,
                nanos: 0,
            }),
        };
        let t = apply_overrides(&template(), Some(&overrides)).unwrap();
        assert_eq!(t.task_count, 2);
        let tasks = t.template.unwrap();
        assert_eq!(tasks.timeout.unwrap().seconds, 5);
        let c = &tasks.containers[0];
        assert_eq!(c.args, ["x"]);
        assert_eq!(c.env, [var("A", "1"), var("B", "20"), var("C", "3")]);
    }

    #[test]
    fn overrides_are_validated() {
        let too_long = Overrides {
            timeout: Some(prost_types::Duration {
                seconds: 168 * 3600 + 1,
                nanos: 0,
            }),
            ..Default::default()
        };
        assert_eq!(
            apply_overrides(&template(), Some(&too_long))
                .unwrap_err()
                .code(),
            tonic::Code::InvalidArgument
        );
        let at_max = Overrides {
            timeout: Some(prost_types::Duration {
                seconds: 168 * 3600,
                nanos: 0,
            }),
            ..Default::default()
        };
        assert!(apply_overrides(&template(), Some(&at_max)).is_ok());
        let big_env = Overrides {
            container_overrides: vec![ContainerOverride {
                env: vec![var("BIG", &"x".repeat(MAX_ENV_BYTES + 1))],
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            apply_overrides(&template(), Some(&big_env))
                .unwrap_err()
                .code(),
            tonic::Code::InvalidArgument
        );
        let reserved = Overrides {
            container_overrides: vec![ContainerOverride {
                env: vec![var("CLOUD_RUN_TASK_INDEX", "7")],
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(apply_overrides(&template(), Some(&reserved)).is_err());
        let unknown = Overrides {
            container_overrides: vec![ContainerOverride {
                name: "nope".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(apply_overrides(&template(), Some(&unknown)).is_err());
    }

    #[test]
    fn resolves_command_from_image_mapping() {
        let config = Config::default().image("img", ["sh", "-c"]);
        let spec = resolve(&config, &template()).unwrap();
        assert_eq!(spec.argv, ["sh", "-c", "a", "b"]);
        assert_eq!(spec.max_retries, 3);
        let err = resolve(&Config::default(), &template()).unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(err.message().contains("\"img\""));
    }
}
