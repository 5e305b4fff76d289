//! What a job template must hold for runbox, checked on the template GetJob
//! returns (`runbox doctor`): the container the overrides name, no task
//! retries (a retried task runs the command twice), and an environment that
//! points the executor at the store the dispatcher uses.

use std::collections::BTreeMap;

use googleapis_tonic_google_cloud_run_v2::google::cloud::run::v2::{
    Container, Job, env_var, task_template::Retries,
};
use runbox_core::config::{BackendConfig, Config};

/// One thing wrong with a job template, with what fixes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateProblem {
    /// What is wrong.
    pub problem: String,
    /// What to change.
    pub fix: String,
}

/// Cloud Run's default when a template sets no `max_retries`.
const DEFAULT_MAX_RETRIES: i32 = 3;

/// The problems of `job` as the template of a launcher whose overrides name
/// `container` (empty: the only one) for a dispatcher configured by
/// `config`; empty when there are none.
pub fn template_problems(job: &Job, container: &str, config: &Config) -> Vec<TemplateProblem> {
    let mut problems = Vec::new();
    let name = &job.name;
    let tasks = job.template.as_ref().and_then(|t| t.template.as_ref());
    let Some(tasks) = tasks else {
        problems.push(TemplateProblem {
            problem: format!("job {name} has no task template"),
            fix: "recreate the job with a container running runbox-executor".to_owned(),
        });
        return problems;
    };
    let retries = match tasks.retries {
        Some(Retries::MaxRetries(n)) => n,
        None => DEFAULT_MAX_RETRIES,
    };
    if retries != 0 {
        problems.push(TemplateProblem {
            problem: format!("max_retries is {retries}: a failed task would run its command again"),
            fix: format!("gcloud run jobs update {} --max-retries 0", short(name)),
        });
    }
    match pick(&tasks.containers, container) {
        Err(problem) => problems.push(problem),
        Ok(c) => problems.extend(env_problems(c, config)),
    }
    problems
}

/// The container the overrides apply to.
fn pick<'a>(containers: &'a [Container], name: &str) -> Result<&'a Container, TemplateProblem> {
    if name.is_empty() {
        return match containers {
            [only] => Ok(only),
            [] => Err(TemplateProblem {
                problem: "the job's template has no container".to_owned(),
                fix: "recreate the job with a container running runbox-executor".to_owned(),
            }),
            several => Err(TemplateProblem {
                problem: format!(
                    "the job's template has {} containers and RunJob's overrides name none",
                    several.len()
                ),
                fix: "set RUNBOX_CLOUD_RUN_CONTAINER to the container running runbox-executor"
                    .to_owned(),
            }),
        };
    }
    containers
        .iter()
        .find(|c| c.name == name)
        .ok_or_else(|| TemplateProblem {
            problem: format!("the job's template has no container named {name:?}"),
            fix: format!(
                "set RUNBOX_CLOUD_RUN_CONTAINER to one of: {}",
                containers
                    .iter()
                    .map(|c| format!("{:?}", c.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })
}

/// Whether the container's env configures an executor on `config`'s store.
fn env_problems(container: &Container, config: &Config) -> Vec<TemplateProblem> {
    // Values from secrets cannot be compared here; only literal ones are.
    let env: BTreeMap<String, String> = container
        .env
        .iter()
        .filter_map(|e| match &e.values {
            Some(env_var::Values::Value(v)) => Some((e.name.clone(), v.clone())),
            _ => None,
        })
        .collect();
    if !env.keys().any(|k| k.starts_with("RUNBOX_")) {
        return vec![TemplateProblem {
            problem: "the container sets no RUNBOX_* variable, so executors would not find the store (a local emulator that hands tasks its own environment hides this; Cloud Run does not)".to_owned(),
            fix: format!("set in the job's env: {}", wanted(config)),
        }];
    }
    let theirs = match Config::from_lookup(&env) {
        Ok(c) => c,
        Err(e) => {
            return vec![TemplateProblem {
                problem: format!(
                    "the container's environment is not a usable runbox configuration: {}",
                    e.problems()
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
                fix: format!("set in the job's env: {}", wanted(config)),
            }];
        }
    };
    let same = match (&theirs.backend, &config.backend) {
        (BackendConfig::Gcp(a), BackendConfig::Gcp(b)) => {
            a.bucket == b.bucket && a.project == b.project
        }
        (BackendConfig::Local(a), BackendConfig::Local(b)) => a.home == b.home,
        _ => false,
    };
    if same {
        return Vec::new();
    }
    vec![TemplateProblem {
        problem: format!(
            "executors would use {} but runbox uses {}",
            describe(&theirs.backend),
            describe(&config.backend)
        ),
        fix: format!("set in the job's env: {}", wanted(config)),
    }]
}

/// The variables that point an executor at `config`'s store.
fn wanted(config: &Config) -> String {
    match &config.backend {
        BackendConfig::Gcp(g) => format!(
            "RUNBOX_BACKEND=gcp RUNBOX_BUCKET={} RUNBOX_PROJECT={}",
            g.bucket, g.project
        ),
        BackendConfig::Local(l) => {
            format!("RUNBOX_BACKEND=local RUNBOX_HOME={}", l.home.display())
        }
    }
}

fn describe(backend: &BackendConfig) -> String {
    match backend {
        BackendConfig::Gcp(g) => format!("bucket {} in project {}", g.bucket, g.project),
        BackendConfig::Local(l) => format!("the directory {}", l.home.display()),
    }
}

/// `J` of `projects/P/locations/L/jobs/J`, with `--region L` when known.
fn short(name: &str) -> String {
    match name.split('/').collect::<Vec<_>>().as_slice() {
        ["projects", p, "locations", l, "jobs", j] => {
            format!("{j} --region {l} --project {p}")
        }
        _ => name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use googleapis_tonic_google_cloud_run_v2::google::cloud::run::v2::{
        EnvVar, ExecutionTemplate, TaskTemplate,
    };
    use runbox_core::config::GcpConfig;

    use super::*;

    fn job(containers: Vec<Container>, retries: Option<i32>) -> Job {
        Job {
            name: "projects/p/locations/l/jobs/j".to_owned(),
            template: Some(ExecutionTemplate {
                template: Some(TaskTemplate {
                    containers,
                    retries: retries.map(Retries::MaxRetries),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn container(name: &str, env: &[(&str, &str)]) -> Container {
        Container {
            name: name.to_owned(),
            env: env
                .iter()
                .map(|(k, v)| EnvVar {
                    name: (*k).to_owned(),
                    values: Some(env_var::Values::Value((*v).to_owned())),
                })
                .collect(),
            ..Default::default()
        }
    }

    fn gcp() -> Config {
        Config::new(BackendConfig::Gcp(GcpConfig::new("b", "p")))
    }

    const GOOD: &[(&str, &str)] = &[
        ("RUNBOX_BACKEND", "gcp"),
        ("RUNBOX_BUCKET", "b"),
        ("RUNBOX_PROJECT", "p"),
    ];

    #[test]
    fn a_good_template_has_no_problems() {
        let j = job(vec![container("", GOOD)], Some(0));
        assert_eq!(template_problems(&j, "", &gcp()), vec![]);
        let j = job(
            vec![container("executor", GOOD), container("proxy", &[])],
            Some(0),
        );
        assert_eq!(template_problems(&j, "executor", &gcp()), vec![]);
    }

    #[test]
    fn retries_containers_and_env_are_reported_with_their_fix() {
        let j = job(vec![container("", GOOD)], None);
        let p = template_problems(&j, "", &gcp());
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].problem.contains("max_retries is 3"), "{p:?}");
        assert!(p[0].fix.contains("--max-retries 0"), "{p:?}");

        let j = job(
            vec![container("executor", GOOD), container("proxy", &[])],
            Some(0),
        );
        let p = template_problems(&j, "", &gcp());
        assert!(p[0].fix.contains("RUNBOX_CLOUD_RUN_CONTAINER"), "{p:?}");
        let p = template_problems(&j, "sidecar", &gcp());
        assert!(p[0].problem.contains("\"sidecar\""), "{p:?}");

        let j = job(
            vec![container(
                "",
                &[
                    ("RUNBOX_BACKEND", "gcp"),
                    ("RUNBOX_BUCKET", "other"),
                    ("RUNBOX_PROJECT", "p"),
                ],
            )],
            Some(0),
        );
        let p = template_problems(&j, "", &gcp());
        assert!(p[0].problem.contains("bucket other"), "{p:?}");
        assert!(p[0].fix.contains("RUNBOX_BUCKET=b"), "{p:?}");

        let j = job(vec![container("", &[("RUNBOX_BACKEND", "gcp")])], Some(0));
        let p = template_problems(&j, "", &gcp());
        assert!(p[0].problem.contains("RUNBOX_BUCKET"), "{p:?}");

        let j = job(vec![container("", &[("PATH", "/bin")])], Some(0));
        let p = template_problems(&j, "", &gcp());
        assert!(p[0].problem.contains("sets no RUNBOX_* variable"), "{p:?}");
    }
}
