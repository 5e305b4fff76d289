//! runbox's domain core: identifiers and their validation, the object layout
//! (one function per object name), configuration, and the [`Store`] trait with
//! its backends.

pub mod backend;
pub mod background_marker;
pub mod backoff;
pub mod config;
pub mod contract;
pub mod ids;
pub mod layout;
pub mod logging;
pub mod manifest;
pub mod result_metadata;
pub mod store;
pub mod workspace_path;

pub use config::{Config, ConfigError, Lookup};
pub use ids::{ExecutionId, IdError, InstanceId, SessionId};
pub use store::{
    ListOptions, ListPage, Object, ObjectMeta, Precondition, PutOptions, Store, StoreError,
};
