//! Errors of the emulator's own API (starting, configuring, stopping it).
//! Errors of the gRPC API it serves are `tonic::Status` values with Cloud
//! Run's codes, built where the request is handled.

use std::net::SocketAddr;

/// What went wrong while configuring, starting or stopping the emulator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An `--image IMAGE=COMMAND` mapping could not be parsed.
    #[error("invalid image mapping \"{mapping}\": {reason}")]
    InvalidImageMapping {
        /// The mapping as given.
        mapping: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// The listen address could not be bound.
    #[error("binding the gRPC listener on {addr}")]
    Bind {
        /// The address that was asked for.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The bound listener has no local address (should not happen).
    #[error("reading the gRPC listener's local address")]
    LocalAddr(#[source] std::io::Error),
    /// The gRPC server stopped with an error.
    #[error("serving gRPC")]
    Serve(#[source] tonic::transport::Error),
    /// The server task panicked or was aborted.
    #[error("joining the gRPC server task")]
    Join(#[source] tokio::task::JoinError),
}

/// The emulator's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
