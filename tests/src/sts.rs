//! The token-exchange stand-in (`runbox-sts-emulator`) in front of a
//! harness's fake-gcs-server: per-execution credentials on the emulators.
//! Dropping it kills the process.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, bail};
use runbox_core::credentials::{
    EXECUTION_CREDENTIALS_ENV, STORAGE_EMULATOR_TOKEN_ENV, STS_ENDPOINT_ENV,
};

use crate::embedded::binary;
use crate::harness::Emulators;

/// A running stand-in.
pub struct StsStandIn {
    /// `http://127.0.0.1:PORT`: the token exchange and the storage proxy.
    pub url: String,
    /// The token the dispatcher holds (full access on the proxy).
    pub source_token: String,
    child: Child,
}

impl StsStandIn {
    /// Starts one in front of `emu`'s fake-gcs-server, issuing tokens that
    /// live `token_ttl_secs`.
    pub fn start(emu: &Emulators, token_ttl_secs: u64) -> Result<Self> {
        let source_token = format!("source-{:016x}", fastrand_u64());
        let mut cmd = Command::new(binary("runbox-sts-emulator"));
        cmd.args(["--upstream", &emu.storage_host])
            .args(["--token-ttl-secs", &token_ttl_secs.to_string()])
            // In the environment: the process is non-dumpable, so commands
            // under test cannot read it there.
            .env("RUNBOX_STS_SOURCE_TOKEN", &source_token)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0);
        let mut child = cmd.spawn().context("start runbox-sts-emulator")?;
        let stdout = child.stdout.take().context("stand-in stdout")?;
        let mut line = String::new();
        // The first line comes once the listener is bound (or never, if
        // the process dies: then read_line returns 0).
        BufReader::new(stdout).read_line(&mut line)?;
        let Some(addr) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            bail!("runbox-sts-emulator did not start: {line:?}");
        };
        Ok(Self {
            url: format!("http://{addr}"),
            source_token,
            child,
        })
    }

    /// The variables that put a runbox process's store behind the proxy
    /// and have it mint downscoped tokens here (on top of
    /// [`Emulators::env`]).
    pub fn env(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("STORAGE_EMULATOR_HOST".to_owned(), self.url.clone()),
            (STS_ENDPOINT_ENV.to_owned(), self.url.clone()),
            (
                STORAGE_EMULATOR_TOKEN_ENV.to_owned(),
                self.source_token.clone(),
            ),
            (
                EXECUTION_CREDENTIALS_ENV.to_owned(),
                "downscoped".to_owned(),
            ),
        ])
    }

    /// Every request the proxy has handled, oldest first.
    pub async fn records(&self) -> Result<Vec<serde_json::Value>> {
        let url = format!("{}/_stand_in/requests", self.url);
        let body = reqwest::get(url).await?.error_for_status()?.bytes().await?;
        Ok(serde_json::from_slice(&body)?)
    }
}

impl Drop for StsStandIn {
    fn drop(&mut self) {
        // The group: nothing of it may outlive the test.
        if let Some(pid) = i32::try_from(self.child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
        let _ = self.child.wait();
    }
}

fn fastrand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish()
}
