//! Resource names, parsed and validated the way Cloud Run does before it looks
//! anything up: a malformed name is INVALID_ARGUMENT, a well-formed name of a
//! resource that does not exist is NOT_FOUND (decided by the caller).

use std::fmt;

use tonic::Status;

/// Longest job or execution id Cloud Run accepts (an RFC 1123 label).
pub(crate) const MAX_ID_LEN: usize = 63;

/// `projects/{project}/locations/{location}`: the parent of jobs and operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LocationName {
    pub(crate) project: String,
    pub(crate) location: String,
}

/// `projects/{project}/locations/{location}/jobs/{job}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JobName {
    pub(crate) parent: LocationName,
    pub(crate) job: String,
}

/// `projects/{project}/locations/{location}/jobs/{job}/executions/{execution}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExecutionName {
    pub(crate) job: JobName,
    pub(crate) execution: String,
}

/// The parent of ListExecutions: one job, or every job of a location (`-`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ExecutionsParent {
    Job(JobName),
    AllJobs(LocationName),
}

impl LocationName {
    pub(crate) fn parse(name: &str) -> Result<Self, Status> {
        let shape = "projects/{project}/locations/{location}";
        match name.split('/').collect::<Vec<_>>().as_slice() {
            ["projects", project, "locations", location] => Self::from_parts(project, location)
                .ok_or_else(|| malformed("location", name, shape)),
            _ => Err(malformed("location", name, shape)),
        }
    }

    fn from_parts(project: &str, location: &str) -> Option<Self> {
        (valid_project(project) && valid_location(location)).then(|| Self {
            project: project.to_owned(),
            location: location.to_owned(),
        })
    }
}

impl JobName {
    pub(crate) fn parse(name: &str) -> Result<Self, Status> {
        let shape = "projects/{project}/locations/{location}/jobs/{job}";
        match name.split('/').collect::<Vec<_>>().as_slice() {
            ["projects", project, "locations", location, "jobs", job] => {
                let parent = LocationName::from_parts(project, location)
                    .ok_or_else(|| malformed("job", name, shape))?;
                validate_id("job", job)?;
                Ok(Self {
                    parent,
                    job: (*job).to_owned(),
                })
            }
            _ => Err(malformed("job", name, shape)),
        }
    }

    /// The name of a new job `job_id` under `parent`, with the id validated.
    pub(crate) fn new(parent: LocationName, job_id: &str) -> Result<Self, Status> {
        validate_id("job", job_id)?;
        Ok(Self {
            parent,
            job: job_id.to_owned(),
        })
    }
}

impl ExecutionName {
    pub(crate) fn parse(name: &str) -> Result<Self, Status> {
        let shape = "projects/{project}/locations/{location}/jobs/{job}/executions/{execution}";
        match name.split('/').collect::<Vec<_>>().as_slice() {
            [
                "projects",
                project,
                "locations",
                location,
                "jobs",
                job,
                "executions",
                execution,
            ] => {
                let parent = LocationName::from_parts(project, location)
                    .ok_or_else(|| malformed("execution", name, shape))?;
                validate_id("job", job)?;
                validate_id("execution", execution)?;
                Ok(Self {
                    job: JobName {
                        parent,
                        job: (*job).to_owned(),
                    },
                    execution: (*execution).to_owned(),
                })
            }
            _ => Err(malformed("execution", name, shape)),
        }
    }

    /// A fresh execution name for `job`: `{job}-{suffix}`, as Cloud Run names
    /// them, with the job part shortened so the id stays a valid label.
    pub(crate) fn generate(job: &JobName, suffix: &str) -> Self {
        let room = MAX_ID_LEN - suffix.len() - 1;
        let prefix = job.job[..job.job.len().min(room)].trim_end_matches('-');
        Self {
            job: job.clone(),
            execution: format!("{prefix}-{suffix}"),
        }
    }
}

impl ExecutionsParent {
    pub(crate) fn parse(name: &str) -> Result<Self, Status> {
        match name.rsplit_once("/jobs/") {
            Some((location, "-")) => {
                LocationName::parse(location)
                    .map(Self::AllJobs)
                    .map_err(|_| {
                        malformed(
                            "job",
                            name,
                            "projects/{project}/locations/{location}/jobs/{job or -}",
                        )
                    })
            }
            _ => JobName::parse(name).map(Self::Job),
        }
    }
}

/// Parses `projects/{project}/locations/{location}/operations/{id}`.
pub(crate) fn parse_operation_name(name: &str) -> Result<(LocationName, String), Status> {
    let shape = "projects/{project}/locations/{location}/operations/{operation}";
    match name.split('/').collect::<Vec<_>>().as_slice() {
        ["projects", project, "locations", location, "operations", id]
            if !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') =>
        {
            let parent = LocationName::from_parts(project, location)
                .ok_or_else(|| malformed("operation", name, shape))?;
            Ok((parent, (*id).to_owned()))
        }
        _ => Err(malformed("operation", name, shape)),
    }
}

impl fmt::Display for LocationName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "projects/{}/locations/{}", self.project, self.location)
    }
}

impl fmt::Display for JobName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/jobs/{}", self.parent, self.job)
    }
}

impl fmt::Display for ExecutionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/executions/{}", self.job, self.execution)
    }
}

/// Job and execution ids: lowercase letters, digits and hyphens, beginning
/// with a letter, not ending with a hyphen, at most 63 characters.
fn validate_id(kind: &str, id: &str) -> Result<(), Status> {
    let ok = id.len() <= MAX_ID_LEN
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && !id.ends_with('-')
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "{kind} id \"{id}\" is invalid: it must contain only lowercase letters, digits and \
             hyphens, begin with a letter, not end with a hyphen, and be at most {MAX_ID_LEN} \
             characters long"
        )))
    }
}

/// Project ids and numbers (and legacy domain-scoped ids such as
/// `example.com:proj`).
fn valid_project(project: &str) -> bool {
    !project.is_empty()
        && project.len() <= 100
        && project
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | ':'))
}

/// Region names such as `us-central1`.
fn valid_location(location: &str) -> bool {
    !location.is_empty()
        && location.len() <= 63
        && location
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn malformed(kind: &str, name: &str, shape: &str) -> Status {
    Status::invalid_argument(format!(
        "invalid {kind} name \"{name}\": expected the form {shape}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_names() {
        let name = "projects/p-1/locations/us-central1/jobs/j-2/executions/j-2-ab3cd";
        let parsed = ExecutionName::parse(name).unwrap();
        assert_eq!(parsed.execution, "j-2-ab3cd");
        assert_eq!(parsed.job.job, "j-2");
        assert_eq!(parsed.to_string(), name);
    }

    #[test]
    fn rejects_bad_ids() {
        for job in ["", "1abc", "Abc", "a_b", "abc-", &"a".repeat(64)] {
            let name = format!("projects/p/locations/l/jobs/{job}");
            assert_eq!(
                JobName::parse(&name).unwrap_err().code(),
                tonic::Code::InvalidArgument,
                "{name}"
            );
        }
        assert!(JobName::parse(&format!("projects/p/locations/l/jobs/{}", "a".repeat(63))).is_ok());
        assert!(JobName::parse("projects/p/locations/l/jobs/j/extra").is_err());
        assert!(JobName::parse("projects//locations/l/jobs/j").is_err());
    }

    #[test]
    fn generated_execution_ids_stay_valid() {
        let job =
            JobName::parse(&format!("projects/p/locations/l/jobs/{}", "a".repeat(63))).unwrap();
        let exec = ExecutionName::generate(&job, "x1y2z");
        assert!(ExecutionName::parse(&exec.to_string()).is_ok());
        assert_eq!(exec.execution.len(), MAX_ID_LEN);
    }

    #[test]
    fn executions_parent_accepts_dash() {
        assert_eq!(
            ExecutionsParent::parse("projects/p/locations/l/jobs/-").unwrap(),
            ExecutionsParent::AllJobs(LocationName::parse("projects/p/locations/l").unwrap())
        );
        assert!(matches!(
            ExecutionsParent::parse("projects/p/locations/l/jobs/j").unwrap(),
            ExecutionsParent::Job(_)
        ));
    }
}
