//! `runbox-executor`: runs one execution.
//!
//! Configuration comes from one of two places. On Cloud Run, from the
//! environment: `RUNBOX_EXECUTION_ID` names the request to run, and the
//! store is chosen by the same variables as the dispatcher's
//! (`RUNBOX_BACKEND`, `RUNBOX_HOME`, `RUNBOX_BUCKET`, ...). Started as
//! `runbox-executor --execution-id ID --config-stdin` (the local launcher),
//! it reads the same variables as one JSON object of strings from standard
//! input instead, so none of them sits in its environment.
//!
//! Before anything else the process makes itself non-dumpable: neither the
//! command it runs nor any other process of the same user can read its
//! memory, environment or open files through `/proc`.
//!
//! Exit status: 0 when a result object exists for the execution (ours or an
//! earlier one), 1 when none could be written, 64 on bad configuration.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use runbox_core::ExecutionId;
use runbox_core::config::{BackendConfig, Config, Env, Lookup};
use runbox_core::confinement::Confinement as ConfinementSettings;
use runbox_core::contract::{
    DEFAULT_WORKSPACE_BASE, EXECUTION_ID_ENV, RUN_AS_USER_ENV, TRACEPARENT_ENV, WORKSPACE_DIR_ENV,
};
use runbox_core::credentials::{STORE_TOKEN_ENV, StoreToken};
use runbox_core::logging::TelemetryConfig;
use runbox_core::session_cwd::{self, WORKSPACE_NAMESPACE_ENV, WORKSPACE_PATH_ENV};
use runbox_core::store::{Durability, GcsStore, LocalStore, Store, StoreError};
use runbox_executor::{
    Confinement, Outcome, Settings, confine, error_chain, execute, identity, namespace, process,
};

const EXIT_CONFIG: u8 = 64;
/// The niceness of the telemetry export that follows the result.
const EXPORT_NICENESS: i32 = 10;

/// The argument naming the execution (visible in `/proc/PID/cmdline`, which
/// is how another dispatcher process finds this executor).
const EXECUTION_ID_ARG: &str = "--execution-id";
/// The argument saying the configuration arrives on standard input.
const CONFIG_STDIN_ARG: &str = "--config-stdin";
/// More configuration than this on standard input is refused.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

fn main() -> ExitCode {
    let started = std::time::Instant::now();
    // The namespace helper (a re-exec of this binary) runs nothing else. It
    // makes itself non-dumpable once it has written its id maps: before,
    // `/proc/self/uid_map` would belong to root and stay closed to an
    // unprivileged helper.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if let Some((first, rest)) = argv.split_first()
        && first == namespace::ENTER_ARG
    {
        return namespace::enter(rest);
    }
    if let Some((first, rest)) = argv.split_first()
        && first == confine::CONFINE_ARG
    {
        return confine::run(rest);
    }
    // First, before the configuration is read: from here on /proc/PID/environ,
    // mem, maps and fd are closed to everyone without CAP_SYS_PTRACE.
    if let Err(e) =
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
    {
        eprintln!("runbox-executor: make the process non-dumpable: {e}");
        return ExitCode::FAILURE;
    }
    let args = match Args::parse(std::env::args_os().skip(1)) {
        Ok(args) => args,
        Err(message) => return config_error(&message),
    };
    let piped;
    let lookup: &dyn Lookup = if args.config_stdin {
        piped = match read_config(std::io::stdin().lock()) {
            Ok(map) => map,
            Err(message) => return config_error(&message),
        };
        &piped
    } else {
        &Env
    };
    let id_text = match (args.execution_id.clone(), lookup.get(EXECUTION_ID_ENV)) {
        (Some(arg), Some(var)) if arg != var => {
            return config_error(&format!(
                "{EXECUTION_ID_ARG} {arg} and {EXECUTION_ID_ENV}={var} disagree"
            ));
        }
        (Some(v), _) | (None, Some(v)) => v,
        (None, None) => return config_error(&format!("{EXECUTION_ID_ENV} must be set")),
    };
    let id = match ExecutionId::new(&id_text) {
        Ok(id) => id,
        Err(e) => return config_error(&format!("{EXECUTION_ID_ENV}: {e}")),
    };
    let config = match Config::from_lookup(lookup) {
        Ok(c) => c,
        Err(e) => return config_error(&e.to_string()),
    };
    // The execution's own store token, when the dispatcher minted one: then
    // it is the only credential the store gets. Commands never inherit it
    // (their environment is built from scratch), and this process's
    // /proc files are closed to them.
    let store_token = lookup
        .get(STORE_TOKEN_ENV)
        .map(|secret| StoreToken::new(secret, None));
    let workspace_base = match &config.backend {
        BackendConfig::Local(embedded) => embedded.home.clone(),
        BackendConfig::Gcp(_) => lookup
            .get(WORKSPACE_DIR_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_WORKSPACE_BASE)),
    };
    let workspace_path =
        match session_cwd::workspace_path(lookup.get(WORKSPACE_PATH_ENV).as_deref()) {
            Ok(path) => path,
            Err(e) => return config_error(&e.to_string()),
        };
    // An executor configured by its environment is a Cloud Run task: a
    // container of its own, working on its own copy of the workspace, whose
    // commands run as another user by default. One started by the local
    // launcher runs commands as the dispatcher's user unless asked to switch:
    // the workspace may be the user's own directory.
    let default_switch = !args.config_stdin && matches!(config.backend, BackendConfig::Gcp(_));
    let run_as = match identity::decide_here(lookup.get(RUN_AS_USER_ENV).as_deref(), default_switch)
    {
        Ok(who) => who,
        Err(e) => return config_error(&e.to_string()),
    };
    let confinement = match ConfinementSettings::from_lookup(lookup) {
        Ok(c) => c,
        Err(e) => return config_error(&e.to_string()),
    };
    let namespace_wanted =
        match session_cwd::namespace_wanted(lookup.get(WORKSPACE_NAMESPACE_ENV).as_deref()) {
            Ok(wanted) => wanted,
            Err(e) => return config_error(&e.to_string()),
        };
    let warm = match runbox_executor::warm::Warm::from_lookup(lookup) {
        Ok(warm) => warm,
        Err(message) => return config_error(&message),
    };
    let placement = placement(
        workspace_path,
        workspace_base,
        !args.config_stdin,
        namespace_wanted.then_some(run_as.as_ref()),
    );
    let confinement = Confinement {
        limits: confinement.limits,
        landlock: confinement.landlock && landlock_here(&placement.base),
        writable: confinement.writable,
    };
    // Orphans that escape the command's process group are re-parented here,
    // so the executor can kill them before it exits.
    process::become_subreaper();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            report(&format!("start runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    // Telemetry reads the same place as the rest of the configuration: the
    // local launcher forwards the OTEL_* variables in it.
    let mut telemetry_config =
        match TelemetryConfig::from_lookup("runbox-executor", |name| lookup.get(name)) {
            Ok(c) => c,
            Err(e) => {
                report(&format!("telemetry is off: {}", error_chain(&e)));
                TelemetryConfig::default()
            }
        };
    // The executor records no metrics: a meter would only add a flush (and
    // a connection) to every command's end.
    telemetry_config.metrics_endpoint = None;
    // Its only export follows the result: the connection opens then, not
    // while the command runs.
    telemetry_config.connect_at_start = false;
    // A one-shot executor's spans wait in memory for that export: no export
    // thread nor exporter is built on the way to the command. A warm one
    // lives on, so its spans leave in batches as they end.
    telemetry_config.export_at_exit = warm.is_none();
    let telemetry = {
        // The exporters' gRPC channel is spawned on this runtime.
        let _entered = runtime.enter();
        let (telemetry, outcome) =
            runbox_core::logging::Logging::new("info").init_with_telemetry(&telemetry_config);
        if let Err(e) = outcome {
            report(&error_chain(&e));
        }
        telemetry
    };
    // Every line of this run names its execution (and, once the request is
    // read, its session).
    let span = tracing::info_span!(
        "execution",
        execution = %id,
        session = tracing::field::Empty,
        otel.status_code = tracing::field::Empty
    );
    // The launcher's span: TRACEPARENT in the environment (Cloud Run) or in
    // the configuration (the local launcher).
    runbox_core::trace_context::continue_from(&span, lookup.get(TRACEPARENT_ENV).as_deref());
    let work = tracing::Instrument::instrument(
        async move {
            // Handlers go in before anything else: a SIGTERM (Cloud Run's cancel,
            // `runbox bg kill`) that arrives while the request is still loading
            // must cancel the command, not kill the executor before it can
            // write a CANCELLED result.
            let cancel = shutdown_signal();
            let store = match open_store(&config, store_token.as_ref(), warm.is_some()).await {
                Ok(s) => s,
                Err(e) => {
                    report(&format!("open store: {}", error_chain(&e)));
                    return ExitCode::FAILURE;
                }
            };
            let settings = Settings {
                execution_id: id.clone(),
                config,
                placement,
                run_as,
                confinement,
            };
            if let Some(warm) = warm {
                return match runbox_executor::warm::serve(store, &settings, &warm, cancel).await {
                    Ok(end) => {
                        tracing::debug!(execution = %id, ?end, "warm execution ended");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        report(&error_chain(&e));
                        ExitCode::FAILURE
                    }
                };
            }
            match execute(store, &settings, cancel).await {
                Ok(Outcome::Written(r)) => {
                    tracing::debug!(
                        execution = %id,
                        status = %r.exec_status(),
                        elapsed_us = started.elapsed().as_micros() as u64,
                        "result written"
                    );
                    ExitCode::SUCCESS
                }
                Ok(Outcome::AlreadyWritten(_)) => {
                    tracing::warn!(execution = %id, "a result already existed; ours was dropped");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    report(&error_chain(&e));
                    ExitCode::FAILURE
                }
            }
        },
        span,
    );
    runtime.block_on(async move {
        // The span ends with `work`, before the flush that exports it.
        let code = work.await;
        // The result and state are written: the session's next command
        // need not wait for this process's export, nor for its exit (whose
        // teardown of a large address space comes before its descriptors
        // close).
        release_session_lock();
        if telemetry.is_enabled() {
            // The caller, on its way with the result, must not wait for
            // the CPU this export takes: on a busy machine it goes first.
            // (Per thread: the runtime's, the only one the export runs on.)
            if let Err(e) = rustix::process::setpriority_process(None, EXPORT_NICENESS) {
                tracing::debug!("lower the priority of the telemetry export: {e}");
            }
        }
        telemetry.shutdown().await;
        code
    })
}

/// Closes the descriptor that holds the session's lock: standard output,
/// where the local launcher puts it (see the launcher's `spawn`). `/dev/null`
/// takes its place, so nothing opened later reuses descriptor 1.
fn release_session_lock() {
    let released = std::fs::File::options()
        .write(true)
        .open("/dev/null")
        .and_then(|null| rustix::stdio::dup2_stdout(&null).map_err(std::io::Error::from));
    if let Err(e) = released {
        // The lock is then released at exit.
        tracing::debug!("release the session lock before the exit: {e}");
    }
}

/// An error line on stderr: JSON when the log lines are, so a log reader
/// that parses every line never meets a stray one.
fn report(message: &str) {
    use std::io::Write as _;
    // Before the logger is installed (a configuration error), the format
    // the environment asks for.
    let format = runbox_core::logging::active_format().or_else(|| {
        runbox_core::logging::LogFormat::from_lookup(|name| std::env::var(name).ok()).ok()
    });
    let line = match format {
        Some(runbox_core::logging::LogFormat::Json) => runbox_core::logging::json::plain_line(
            &tracing::Level::ERROR,
            &format!("runbox-executor: {message}"),
        ),
        _ => format!("runbox-executor: {message}\n"),
    };
    // Nowhere else to report a failing stderr.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// The store, as the dispatcher opens it, except that a gcp store with a
/// store token uses that token alone, and an embedded store
/// does its file work on this thread: the executor does one thing at a
/// time, and a handoff to the blocking pool and back per operation cost
/// more than the operations themselves (see `LocalStore::open_inline`).
///
/// A warm executor's embedded store keeps a spare staging file
/// (`LocalStore::with_spare`): each result is written into a file created
/// while the session was quiet, not on the way to the caller.
async fn open_store(
    config: &Config,
    store_token: Option<&StoreToken>,
    warm: bool,
) -> Result<Arc<dyn Store>, StoreError> {
    match &config.backend {
        BackendConfig::Local(embedded) => {
            let durability = if embedded.sync {
                Durability::Sync
            } else {
                Durability::NoSync
            };
            let store = LocalStore::open_inline(&embedded.home, durability)?;
            Ok(Arc::new(if warm { store.with_spare() } else { store }))
        }
        BackendConfig::Gcp(gcp) => match store_token {
            Some(token) => Ok(Arc::new(GcsStore::with_token(
                gcp.bucket.clone(),
                gcp.storage_emulator_host.as_deref(),
                token,
            ))),
            None => runbox_core::backend::open_store(config).await,
        },
    }
}

/// Whether this kernel can confine commands with Landlock; says once (per
/// boot, see [`confine::say_once`]) when it cannot, or only in part.
fn landlock_here(base: &std::path::Path) -> bool {
    let abi = confine::supported_abi();
    if let Some(why) = confine::shortfall(abi) {
        confine::say_once(base, &why);
    }
    abi.is_some()
}

/// Where workspaces go and how commands see them. `configured_by_env`:
/// this executor is a Cloud Run task (alone in its container when Cloud
/// Run runs it, though not under the emulator, where namespaces are used).
/// `namespace`: `None` when `RUNBOX_WORKSPACE_NAMESPACE=off`, else the
/// user commands run as (`Some(None)`: the executor's own).
fn placement(
    path: PathBuf,
    base: PathBuf,
    configured_by_env: bool,
    namespace: Option<Option<&identity::Identity>>,
) -> namespace::Placement {
    let base = std::path::absolute(&base).unwrap_or(base);
    let helper = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
    let probe = match namespace {
        Some(run_as) => namespace::probe(&helper, &base, run_as),
        None => Err(format!("{WORKSPACE_NAMESPACE_ENV}=off")),
    };
    let cloud_run_task = configured_by_env && std::env::var_os("CLOUD_RUN_EXECUTION").is_some();
    let (mode, _why) = namespace::decide(probe, cloud_run_task);
    namespace::Placement {
        mode,
        path,
        hide: vec![base.clone()],
        base,
        helper,
    }
}

/// The command line: nothing, or `--execution-id ID` and `--config-stdin`.
#[derive(Debug, Default, PartialEq, Eq)]
struct Args {
    execution_id: Option<String>,
    config_stdin: bool,
}

impl Args {
    fn parse(args: impl Iterator<Item = std::ffi::OsString>) -> Result<Self, String> {
        let mut parsed = Self::default();
        let mut args = args.map(|a| {
            a.into_string()
                .map_err(|a| format!("argument {a:?} is not UTF-8"))
        });
        while let Some(arg) = args.next() {
            let arg = arg?;
            match arg.as_str() {
                EXECUTION_ID_ARG => {
                    parsed.execution_id = Some(
                        args.next()
                            .ok_or_else(|| format!("{EXECUTION_ID_ARG} needs a value"))??,
                    );
                }
                CONFIG_STDIN_ARG => parsed.config_stdin = true,
                other => {
                    return Err(format!(
                        "unexpected argument {other:?} (expected {EXECUTION_ID_ARG} ID, {CONFIG_STDIN_ARG})"
                    ));
                }
            }
        }
        Ok(parsed)
    }
}

/// Reads the configuration variables, a JSON object of strings, to the end
/// of `input`.
fn read_config(input: impl Read) -> Result<BTreeMap<String, String>, String> {
    let mut text = Vec::new();
    input
        .take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(|e| format!("read configuration from standard input: {e}"))?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(format!(
            "configuration on standard input exceeds {MAX_CONFIG_BYTES} bytes"
        ));
    }
    serde_json::from_slice(&text).map_err(|e| {
        format!("configuration on standard input is not a JSON object of strings: {e}")
    })
}

fn config_error(message: &str) -> ExitCode {
    // A configuration error lists one problem per line: each gets the
    // prefix, so every line of the log says where it comes from.
    for line in message.lines() {
        report(&format!("bad configuration: {line}"));
    }
    ExitCode::from(EXIT_CONFIG)
}

/// Installs SIGTERM (Cloud Run's cancel) and SIGINT handlers now and
/// returns a future that resolves when either arrives.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        match handlers {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            // Without signal handlers the default action (exit) applies, and
            // reconciliation reports the execution LOST.
            _ => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, String> {
        Args::parse(args.iter().map(std::ffi::OsString::from))
    }

    #[test]
    fn arguments_name_the_execution_and_the_config_channel() {
        assert_eq!(parse(&[]).unwrap(), Args::default());
        assert_eq!(
            parse(&["--execution-id", "abc", "--config-stdin"]).unwrap(),
            Args {
                execution_id: Some("abc".into()),
                config_stdin: true
            }
        );
        assert!(
            parse(&["--execution-id"])
                .unwrap_err()
                .contains("needs a value")
        );
        assert!(parse(&["--verbose"]).unwrap_err().contains("--verbose"));
    }

    #[test]
    fn configuration_is_a_json_object_of_strings() {
        let map = read_config(&br#"{"RUNBOX_BACKEND":"local","RUNBOX_HOME":"/h"}"#[..]).unwrap();
        assert_eq!(map.get("RUNBOX_HOME").map(String::as_str), Some("/h"));
        assert!(read_config(&b"RUNBOX_HOME=/h"[..]).is_err());
        assert!(read_config(&br#"{"A":1}"#[..]).is_err());
        let huge = vec![b' '; MAX_CONFIG_BYTES as usize + 1];
        assert!(read_config(&huge[..]).unwrap_err().contains("exceeds"));
    }
}
