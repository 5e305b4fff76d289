//! The parts a client is made of, and choosing them, once, at start-up: the only place that reads
//! which store, event source and launcher the configuration names. Past
//! this point everything works through the [`Store`], [`EventSource`] and
//! [`Launcher`] traits.

use std::path::PathBuf;
use std::sync::Arc;

use runbox_core::config::{BackendConfig, LauncherConfig};
use runbox_core::store::Store;
use runbox_core::{Config, InstanceId};
use runbox_notifier::{
    EventSource, FsEventSource, PubSubAnnouncer, PubSubConfig, PubSubEventSource, Waiters,
};

use crate::error::{Error, Result};
use crate::launcher::Launcher;
use crate::launcher::cloud_run::{CloudRunLauncher, CloudRunSettings, WarmCommands};
use crate::launcher::local::LocalLauncher;
use crate::session_lease::{LeaseSettings, SessionLeases};
use crate::session_lock::SessionLocks;

/// The parts a client is assembled from; [`crate::Client::from_config`] picks them
/// from configuration, tests and other backends pass their own.
pub struct Parts {
    /// Configuration (limits, grace periods).
    pub config: Config,
    /// Where objects live.
    pub store: Arc<dyn Store>,
    /// Where completion events come from.
    pub events: Box<dyn EventSource>,
    /// How executions start.
    pub launcher: Arc<dyn Launcher>,
    /// This dispatcher instance's id (the execution-id prefix).
    pub instance: InstanceId,
    /// Per-session file locks that order commands across processes sharing
    /// one machine (embedded backend); `None` elsewhere, where a gcp
    /// configuration orders them through a session lease object instead.
    pub session_locks: Option<SessionLocks>,
    /// The directory the store keeps its objects in, when commands work in
    /// those very files (embedded backend); `None` when the executor
    /// restores each session's workspace below its own base directory.
    pub host_workspace: Option<PathBuf>,
}

/// Most executors the local launcher runs at once; more wait for a slot.
const LOCAL_MAX_RUNNING: usize = 64;

/// The parts the configuration names, connected.
pub(crate) async fn assemble(config: Config) -> Result<Parts> {
    // Checked before anything starts; the client reads it again.
    runbox_core::session_cwd::workspace_path(
        std::env::var(runbox_core::session_cwd::WORKSPACE_PATH_ENV)
            .ok()
            .as_deref(),
    )
    .map_err(Error::WorkspacePath)?;
    runbox_core::confinement::Confinement::from_lookup(&runbox_core::config::Env)
        .map_err(Error::Confinement)?;
    let instance = InstanceId::random();
    let store = runbox_core::backend::open_store(&config)
        .await
        .map_err(|e| Error::store("open store", e))?;
    let events = events(&config, &store, &instance).await?;
    let launcher = launcher(&config).await?;
    let (session_locks, host_workspace) = match &config.backend {
        // Commands work in the store's own directory, and separate
        // processes on this machine order a session's commands by file lock.
        BackendConfig::Local(embedded) => (
            Some(SessionLocks::new(
                embedded.home.join(".runbox/session-locks"),
            )),
            Some(std::path::absolute(&embedded.home).unwrap_or_else(|_| embedded.home.clone())),
        ),
        BackendConfig::Gcp(_) => (None, None),
    };
    Ok(Parts {
        session_locks,
        host_workspace,
        config,
        store,
        events,
        launcher,
        instance,
    })
}

/// The session leases that order a session's commands across processes
/// and machines where no file lock reaches them (the gcp backend); their
/// releases are announced on the bucket's notifications topic, where every
/// dispatcher listens. `None` on the embedded backend.
pub(crate) fn session_leases(
    config: &Config,
    instance: &InstanceId,
    store: &Arc<dyn Store>,
    waiters: &Arc<Waiters>,
) -> Option<SessionLeases> {
    let BackendConfig::Gcp(gcp) = &config.backend else {
        return None;
    };
    let mut pubsub = PubSubConfig::new(
        gcp.project.clone(),
        gcp.notifications_topic.clone(),
        instance.as_str(),
    );
    pubsub.emulator_host = gcp.pubsub_emulator_host.clone();
    Some(SessionLeases::new(
        store.clone(),
        waiters.clone(),
        Arc::new(PubSubAnnouncer::new(pubsub)),
        LeaseSettings {
            holder: instance.to_string(),
            bucket: gcp.bucket.clone(),
            ttl: gcp.session_lease_ttl,
        },
    ))
}

async fn events(
    config: &Config,
    store: &Arc<dyn Store>,
    instance: &InstanceId,
) -> Result<Box<dyn EventSource>> {
    Ok(match &config.backend {
        BackendConfig::Local(embedded) => {
            Box::new(FsEventSource::new(&embedded.home, store.clone()).map_err(Error::Events)?)
        }
        BackendConfig::Gcp(gcp) => {
            let mut settings = PubSubConfig::new(
                gcp.project.clone(),
                gcp.notifications_topic.clone(),
                instance.as_str(),
            );
            settings.emulator_host = gcp.pubsub_emulator_host.clone();
            settings.bucket = Some(gcp.bucket.clone());
            // The subscription is this instance's alone: the source deletes
            // it when the notifier shuts down (its expiration policy covers
            // crashes).
            Box::new(
                PubSubEventSource::connect(settings)
                    .await
                    .map_err(Error::Events)?,
            )
        }
    })
}

async fn launcher(config: &Config) -> Result<Arc<dyn Launcher>> {
    Ok(match &config.launcher {
        LauncherConfig::Local(_) => Arc::new(LocalLauncher::new(config, LOCAL_MAX_RUNNING)?),
        LauncherConfig::CloudRun(cloud_run) => {
            let launcher =
                CloudRunLauncher::connect(CloudRunSettings::from_config(cloud_run)).await?;
            // Warm executions take their later commands from the commands
            // topic, which only the gcp backend has.
            match &config.backend {
                BackendConfig::Gcp(gcp) => Arc::new(launcher.with_warm_commands(WarmCommands {
                    project: gcp.project.clone(),
                    topic: gcp.commands_topic.clone(),
                    emulator_host: gcp.pubsub_emulator_host.clone(),
                    task_timeout: cloud_run.warm_task_timeout,
                })),
                BackendConfig::Local(_) => Arc::new(launcher),
            }
        }
    })
}

/// The minter of per-execution store tokens, when the configuration asks
/// for downscoped credentials (the gcp backend only).
pub(crate) fn execution_credentials(config: &Config) -> Option<crate::credentials::Credentials> {
    let BackendConfig::Gcp(gcp) = &config.backend else {
        return None;
    };
    (gcp.credentials.execution == runbox_core::credentials::ExecutionCredentials::Downscoped)
        .then(|| crate::credentials::Credentials::new(gcp.credentials.clone(), gcp.bucket.clone()))
}
