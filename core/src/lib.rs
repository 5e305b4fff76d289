//! runbox's domain core: identifiers and their validation, the object layout
//! (one function per object name), configuration, and the [`Store`] trait with
//! its backends.

pub mod backend;
pub mod background_marker;
pub mod backoff;
pub mod config;
pub mod confinement;
pub mod contract;
pub mod credentials;
pub mod ids;
pub mod layout;
pub mod logging;
pub mod manifest;
pub mod request_id;
pub mod result_metadata;
pub mod session_cwd;
pub mod store;
pub mod trace_context;
pub mod warm;
pub mod workspace_path;

pub use config::{Config, ConfigError, Lookup};
pub use ids::{ExecutionId, IdError, InstanceId, SessionId};
pub use request_id::{RequestId, RequestIdError};
pub use store::{
    ListOptions, ListPage, Object, ObjectMeta, Precondition, PutOptions, Store, StoreError,
};

/// An error and its causes on one line (`op: cause: cause`), skipping a
/// cause whose text the line already ends with (`#[error(transparent)]` and
/// similar wrappers repeat their cause). For logs and for messages stored
/// in results.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}
