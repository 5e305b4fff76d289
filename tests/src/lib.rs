//! Shared helpers for runbox integration tests.
pub mod cli;
pub mod cloud_run;
pub mod counting_store;
pub mod embedded;
pub mod event_source_conformance;
pub mod harness;
pub mod launcher_conformance;
pub mod pipes;
pub mod procs;
pub mod serve;
pub mod store_conformance;
pub mod sts;
pub mod warm;
