//! A local stand-in for the Cloud Run Admin API v2, served over plaintext
//! gRPC and wire-compatible with Google's client libraries: the
//! `google.cloud.run.v2.Jobs` and `google.cloud.run.v2.Executions` services
//! and `google.longrunning.Operations`. RunJob runs the job's container as a
//! local process per task, using a configured image → command mapping.
//!
//! ```no_run
//! # async fn demo() -> Result<(), runbox_cloudrun_emulator::Error> {
//! use runbox_cloudrun_emulator::{Config, Emulator};
//!
//! let config = Config::default().image("runbox-executor:dev", ["/usr/local/bin/runbox-executor"]);
//! let emulator = Emulator::start("127.0.0.1:0".parse().unwrap(), config).await?;
//! let endpoint = emulator.endpoint(); // "http://127.0.0.1:PORT" for JobsClient::connect
//! # let _ = endpoint;
//! emulator.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! See the crate's README for the exact behaviour (overrides, task
//! environment, conditions, operations, errors).

mod config;
mod emulator;
mod error;
mod execution;
mod executions_api;
mod grpc;
mod ids;
mod jobs_api;
mod lro;
mod names;
mod operations_api;
mod process;
mod runner;
mod store;
mod supervise;
mod template;

pub use config::{Config, ImageMapping};
pub use emulator::Emulator;
pub use error::{Error, Result};
pub use lro::{EXECUTION_TYPE_URL, JOB_TYPE_URL};
pub use supervise::{SUPERVISE_ARG, supervise};
