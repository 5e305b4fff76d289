//! Credential Access Boundaries as the token exchange receives them in
//! `options`, checked as strictly as Google checks them, and the
//! permission each of their roles grants.

use serde::Deserialize;

use crate::cel::{self, Expr};

/// What a request needs on an object or a bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum Permission {
    /// `storage.objects.get`: read an object or its metadata.
    #[serde(rename = "storage.objects.get")]
    Get,
    /// `storage.objects.list`.
    #[serde(rename = "storage.objects.list")]
    List,
    /// `storage.objects.create`.
    #[serde(rename = "storage.objects.create")]
    Create,
    /// `storage.objects.delete` (also needed to overwrite).
    #[serde(rename = "storage.objects.delete")]
    Delete,
    /// `storage.objects.update`: change an object's metadata.
    #[serde(rename = "storage.objects.update")]
    Update,
    /// Anything on buckets themselves; never within a boundary.
    #[serde(rename = "storage.buckets.*")]
    Bucket,
}

impl Permission {
    /// Its IAM name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "storage.objects.get",
            Self::List => "storage.objects.list",
            Self::Create => "storage.objects.create",
            Self::Delete => "storage.objects.delete",
            Self::Update => "storage.objects.update",
            Self::Bucket => "storage.buckets.*",
        }
    }
}

/// The object roles a boundary may name, with what each grants.
const ROLES: [(&str, &[Permission]); 3] = [
    (
        "inRole:roles/storage.objectViewer",
        &[Permission::Get, Permission::List],
    ),
    ("inRole:roles/storage.objectCreator", &[Permission::Create]),
    (
        "inRole:roles/storage.objectAdmin",
        &[
            Permission::Get,
            Permission::List,
            Permission::Create,
            Permission::Delete,
            Permission::Update,
        ],
    ),
];

const RESOURCE_PREFIX: &str = "//storage.googleapis.com/projects/_/buckets/";
/// Google's limit on rules per boundary.
const MAX_RULES: usize = 10;

/// A boundary, parsed.
#[derive(Clone, Debug)]
pub struct Boundary {
    /// Its rules.
    pub rules: Vec<Rule>,
}

/// One rule, parsed.
#[derive(Clone, Debug)]
pub struct Rule {
    /// The bucket it is about.
    pub bucket: String,
    /// What it grants.
    pub permissions: Vec<Permission>,
    /// Where; `None`: everywhere in the bucket.
    pub condition: Option<Expr>,
    /// The condition's text, for the request record.
    pub expression: Option<String>,
}

/// An unusable `options` field.
#[derive(Debug, thiserror::Error)]
pub enum BoundaryError {
    /// Not the JSON shape of `{"accessBoundary": {...}}`.
    #[error("options: {0}")]
    Shape(#[source] serde_json::Error),
    /// A rule's value is wrong.
    #[error("accessBoundaryRules[{index}]: {reason}")]
    Rule {
        /// Which rule.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// A condition cannot be parsed.
    #[error("accessBoundaryRules[{index}].availabilityCondition")]
    Condition {
        /// Which rule.
        index: usize,
        /// The parse error.
        #[source]
        source: cel::CelError,
    },
    /// No rules, or too many.
    #[error("accessBoundaryRules: {0} rules (1 to 10 are allowed)")]
    Count(usize),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Options {
    access_boundary: AccessBoundaryJson,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AccessBoundaryJson {
    access_boundary_rules: Vec<RuleJson>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RuleJson {
    available_resource: String,
    available_permissions: Vec<String>,
    #[serde(default)]
    availability_condition: Option<ConditionJson>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConditionJson {
    expression: String,
    #[serde(default)]
    #[allow(dead_code)]
    title: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
}

impl Boundary {
    /// Parses the `options` form field.
    pub fn parse_options(options: &str) -> Result<Self, BoundaryError> {
        let parsed: Options = serde_json::from_str(options).map_err(BoundaryError::Shape)?;
        let rules = parsed.access_boundary.access_boundary_rules;
        if rules.is_empty() || rules.len() > MAX_RULES {
            return Err(BoundaryError::Count(rules.len()));
        }
        let rules = rules
            .into_iter()
            .enumerate()
            .map(|(index, r)| parse_rule(index, r))
            .collect::<Result<_, _>>()?;
        Ok(Self { rules })
    }

    /// Whether the boundary grants `permission` on the request described
    /// by `bucket` and `request`.
    pub fn allows(&self, bucket: &str, permission: Permission, request: &cel::Request<'_>) -> bool {
        self.rules.iter().any(|rule| {
            rule.bucket == bucket
                && rule.permissions.contains(&permission)
                && rule.condition.as_ref().is_none_or(|c| c.eval(request))
        })
    }
}

fn parse_rule(index: usize, rule: RuleJson) -> Result<Rule, BoundaryError> {
    let bad = |reason: String| BoundaryError::Rule { index, reason };
    let bucket = rule
        .available_resource
        .strip_prefix(RESOURCE_PREFIX)
        .filter(|b| !b.is_empty() && !b.contains('/'))
        .ok_or_else(|| {
            bad(format!(
                "availableResource {:?} is not {RESOURCE_PREFIX}BUCKET",
                rule.available_resource
            ))
        })?
        .to_owned();
    if rule.available_permissions.is_empty() {
        return Err(bad("availablePermissions is empty".to_owned()));
    }
    let mut permissions = Vec::new();
    for name in &rule.available_permissions {
        if !name.starts_with("inRole:") {
            return Err(bad(format!(
                "availablePermissions entry {name:?} must start with `inRole:`"
            )));
        }
        let Some((_, granted)) = ROLES.iter().find(|(role, _)| role == name) else {
            return Err(bad(format!("unsupported role {name:?}")));
        };
        permissions.extend_from_slice(granted);
    }
    permissions.sort();
    permissions.dedup();
    let (condition, expression) = match rule.availability_condition {
        None => (None, None),
        Some(c) => (
            Some(
                Expr::parse(&c.expression)
                    .map_err(|source| BoundaryError::Condition { index, source })?,
            ),
            Some(c.expression),
        ),
    };
    Ok(Rule {
        bucket,
        permissions,
        condition,
        expression,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(rule: &str) -> String {
        format!(r#"{{"accessBoundary":{{"accessBoundaryRules":[{rule}]}}}}"#)
    }

    #[test]
    fn a_boundary_grants_what_its_roles_grant_where_its_condition_holds() {
        let b = Boundary::parse_options(&options(
            r#"{"availableResource":"//storage.googleapis.com/projects/_/buckets/bk","availablePermissions":["inRole:roles/storage.objectCreator"],"availabilityCondition":{"expression":"resource.name == 'projects/_/buckets/bk/objects/results/x.json'"}}"#,
        ))
        .unwrap();
        let req = |name: &'static str| cel::Request {
            resource_name: name,
            list_prefix: "",
        };
        let mine = req("projects/_/buckets/bk/objects/results/x.json");
        assert!(b.allows("bk", Permission::Create, &mine));
        assert!(!b.allows("bk", Permission::Get, &mine));
        assert!(!b.allows("bk", Permission::Delete, &mine));
        assert!(!b.allows("other", Permission::Create, &mine));
        assert!(!b.allows(
            "bk",
            Permission::Create,
            &req("projects/_/buckets/bk/objects/results/y.json")
        ));
    }

    #[test]
    fn bad_boundaries_are_refused() {
        let rule = |resource: &str, perm: &str, cond: &str| {
            options(&format!(
                r#"{{"availableResource":"{resource}","availablePermissions":["{perm}"]{cond}}}"#
            ))
        };
        let good = "//storage.googleapis.com/projects/_/buckets/bk";
        for bad in [
            "{}".to_owned(),
            "not json".to_owned(),
            options(""),
            rule(
                "//storage.googleapis.com/projects/_/buckets/",
                "inRole:roles/storage.objectViewer",
                "",
            ),
            rule("gs://bk", "inRole:roles/storage.objectViewer", ""),
            rule(good, "roles/storage.objectViewer", ""),
            rule(good, "inRole:roles/owner", ""),
            rule(
                good,
                "inRole:roles/storage.objectViewer",
                r#","availabilityCondition":{"expression":"resource.type == 'x'"}"#,
            ),
            rule(good, "inRole:roles/storage.objectViewer", r#","extra":1"#),
        ] {
            assert!(Boundary::parse_options(&bad).is_err(), "{bad} accepted");
        }
    }
}
