//! Helpers for tests on the embedded backend: a client in a fresh directory,
//! the paths of the built binaries, and a guard on every await.

use std::future::IntoFuture;
use std::path::{Path, PathBuf};
use std::time::Duration;

use runbox_core::Config;
use runbox_dispatcher::Client;

/// The directory holding the workspace's built binaries (`target/debug` when
/// run by `cargo test`): test executables live one level down, in `deps/`.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let deps = exe.parent().expect("exe dir");
    if deps.ends_with("deps") {
        deps.parent().expect("target dir").to_owned()
    } else {
        deps.to_owned()
    }
}

/// Path of a workspace binary, with a clear panic when it has not been built.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} not built: run `cargo build` before `cargo test --workspace` (or `cargo build --release` before the benchmarks)",
        path.display()
    );
    path
}

/// A configuration for an embedded store in `home`, with a short kill grace
/// so timeout tests finish quickly.
pub fn config(home: &Path) -> Config {
    Config::embedded(home)
        .with_executor_bin(binary("runbox-executor"))
        .with_kill_grace(Duration::from_millis(300))
        .with_deadline_grace(Duration::from_secs(10))
        .with_executor_setting(
            runbox_core::confinement::LANDLOCK_WRITABLE_ENV,
            crate::pipes::shared_dir().to_string_lossy(),
        )
}

/// A fresh embedded client in its own temporary directory.
pub async fn client() -> (Client, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let client = Client::from_config(config(dir.path()))
        .await
        .expect("embedded client");
    (client, dir)
}

/// Awaits `fut`, failing the test if it takes longer than `secs`: no test
/// may hang.
pub async fn within<F: IntoFuture>(secs: u64, fut: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(secs), fut.into_future())
        .await
        .unwrap_or_else(|_| panic!("no answer within {secs}s"))
}

/// Whether a process is gone (or only a zombie waiting to be reaped).
pub fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
    }
}
