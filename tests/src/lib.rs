//! Shared helpers for runbox integration tests.
