//! The Credential Access Boundary of one execution, in the JSON shape
//! Google's Security Token Service takes in `options.accessBoundary`.

use serde::{Deserialize, Serialize};

use crate::ids::{ExecutionId, SessionId};
use crate::layout;

/// Read, list, create, overwrite and delete objects.
pub const OBJECT_ADMIN: &str = "inRole:roles/storage.objectAdmin";
/// Read and list objects.
pub const OBJECT_VIEWER: &str = "inRole:roles/storage.objectViewer";
/// Create objects (not overwrite: that takes delete, which it lacks).
pub const OBJECT_CREATOR: &str = "inRole:roles/storage.objectCreator";

/// The request attribute Cloud Storage fills with a list request's prefix
/// (empty for every other request).
pub const LIST_PREFIX_ATTRIBUTE: &str = "storage.googleapis.com/objectListPrefix";

/// The rules a downscoped token carries (at most 10, Google's limit).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessBoundary {
    /// Each rule grants its permissions on its resource where its
    /// condition holds; a request is allowed when one rule allows it.
    pub access_boundary_rules: Vec<AccessBoundaryRule>,
}

/// One rule of an [`AccessBoundary`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessBoundaryRule {
    /// The bucket: `//storage.googleapis.com/projects/_/buckets/BUCKET`.
    pub available_resource: String,
    /// Roles, as `inRole:roles/storage.…`.
    pub available_permissions: Vec<String>,
    /// Narrows the rule to the objects (or list prefixes) the CEL
    /// expression accepts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub availability_condition: Option<AvailabilityCondition>,
}

/// A CEL condition on a rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AvailabilityCondition {
    /// The CEL expression.
    pub expression: String,
}

impl AccessBoundary {
    /// What the executor of `execution` in `session` needs on `bucket`, and
    /// nothing more:
    /// - every object of the session (`sessions/{session}/…`: state,
    ///   manifest, workspace files, background markers): read, list,
    ///   write, overwrite, delete;
    /// - the execution's request and its standard input: read;
    /// - its result and its log objects (`logs/{execution}/…`): create.
    pub fn for_execution(bucket: &str, session: &SessionId, execution: &ExecutionId) -> Self {
        let resource = format!("//storage.googleapis.com/projects/_/buckets/{bucket}");
        let object = |name: &str| format!("projects/_/buckets/{bucket}/objects/{name}");
        let session_prefix = layout::session_prefix(session);
        let rule = |role: &str, expression: String| AccessBoundaryRule {
            available_resource: resource.clone(),
            available_permissions: vec![role.to_owned()],
            availability_condition: Some(AvailabilityCondition { expression }),
        };
        Self {
            access_boundary_rules: vec![
                rule(
                    OBJECT_ADMIN,
                    format!(
                        "resource.name.startsWith('{}') || api.getAttribute('{LIST_PREFIX_ATTRIBUTE}', '').startsWith('{session_prefix}')",
                        object(&session_prefix)
                    ),
                ),
                rule(
                    OBJECT_VIEWER,
                    format!(
                        "resource.name == '{}' || resource.name == '{}'",
                        object(&layout::request(execution)),
                        object(&layout::request_stdin(execution))
                    ),
                ),
                rule(
                    OBJECT_CREATOR,
                    format!(
                        "resource.name == '{}' || resource.name.startsWith('{}')",
                        object(&layout::result(execution)),
                        object(&layout::logs_prefix(execution))
                    ),
                ),
            ],
        }
    }

    /// The `options` form field of the token exchange: `{"accessBoundary": …}`.
    pub fn to_options(&self) -> String {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Options<'a> {
            access_boundary: &'a AccessBoundary,
        }
        // Plain strings and vectors: serialising cannot fail.
        serde_json::to_string(&Options {
            access_boundary: self,
        })
        .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_execution_gets_its_session_and_its_own_objects() {
        let session = SessionId::new("s1").unwrap();
        let exec = ExecutionId::new("abc-0001").unwrap();
        let b = AccessBoundary::for_execution("bk", &session, &exec);
        assert_eq!(b.access_boundary_rules.len(), 3);
        let json = b.to_options();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let rules = &v["accessBoundary"]["accessBoundaryRules"];
        assert_eq!(
            rules[0]["availableResource"],
            "//storage.googleapis.com/projects/_/buckets/bk"
        );
        assert_eq!(rules[0]["availablePermissions"][0], OBJECT_ADMIN);
        let admin = rules[0]["availabilityCondition"]["expression"]
            .as_str()
            .unwrap();
        assert!(
            admin.contains("'projects/_/buckets/bk/objects/sessions/s1/'"),
            "{admin}"
        );
        assert!(admin.contains(".startsWith('sessions/s1/')"), "{admin}");
        let create = rules[2]["availabilityCondition"]["expression"]
            .as_str()
            .unwrap();
        assert!(
            create.contains("== 'projects/_/buckets/bk/objects/results/abc-0001.json'"),
            "{create}"
        );
        // Nothing names another session or the whole bucket.
        assert!(!json.contains("sessions/'"), "{json}");
    }
}
