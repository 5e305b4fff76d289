//! Running `runbox serve` in tests and benchmarks, and a minimal HTTP/1.1
//! client to talk to it (plain `TcpStream`, no client library: the
//! requests here are simple, and the benchmark wants nothing between the
//! socket and the server).

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::embedded::{binary, within};

/// A running `runbox serve` on the embedded backend in its own home.
pub struct Serve {
    /// Its `RUNBOX_HOME`.
    pub home: tempfile::TempDir,
    /// The address it printed (`127.0.0.1:PORT`, or the wildcard address's port on loopback).
    pub addr: String,
    child: Child,
    /// Lines it printed to stderr after the address line.
    stderr: mpsc::UnboundedReceiver<String>,
}

impl Serve {
    /// Starts `runbox serve --http {bind}` with `env` added, and waits (at
    /// most 60 s) for the line with the address it listens on.
    pub async fn start(bind: &str, env: &[(&str, &str)]) -> Result<Self> {
        let home = tempfile::tempdir()?;
        let mut cmd = Self::command(home.path(), &["serve", "--http", bind], env);
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().context("start runbox serve")?;
        let stderr = child.stderr.take().context("stderr")?;
        let (tx, mut rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("[serve] {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let addr = within(60, async {
            while let Some(line) = rx.recv().await {
                if let Some(url) = line.strip_prefix("runbox serve: listening on http://") {
                    return Ok(url.to_owned());
                }
            }
            bail!("runbox serve exited before listening")
        })
        .await?;
        // A wildcard address is reached over loopback.
        let addr = addr
            .replace("0.0.0.0:", "127.0.0.1:")
            .replace("[::]:", "[::1]:");
        Ok(Self {
            home,
            addr,
            child,
            stderr: rx,
        })
    }

    /// A `runbox` command line on the embedded backend in `home`, no runbox
    /// variable of the caller's leaking in.
    pub fn command(home: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(binary("runbox"));
        cmd.args(args)
            .env_remove("RUNBOX_BACKEND")
            .env_remove("RUNBOX_EXECUTOR")
            .env_remove("RUNBOX_LAUNCHER")
            .env_remove("RUNBOX_API_TOKEN")
            .env_remove("PORT")
            .env("RUNBOX_HOME", home)
            .env("RUNBOX_KILL_GRACE_MS", "300")
            // Commands write to the tests' named pipes.
            .env(
                runbox_core::confinement::LANDLOCK_WRITABLE_ENV,
                crate::pipes::shared_dir(),
            )
            .envs(env.iter().copied())
            .kill_on_drop(true);
        cmd
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its process id.
    pub fn pid(&self) -> i32 {
        self.child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .unwrap_or(0)
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        // kill(1) rather than libc: no unsafe in the tests either.
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {}", self.pid());
    }

    /// Waits (at most 120 s) for it to exit; its status and the stderr
    /// lines it printed since the address line.
    pub async fn wait(&mut self) -> (ExitStatus, Vec<String>) {
        let status = within(120, self.child.wait())
            .await
            .expect("wait for serve");
        let mut lines = Vec::new();
        while let Some(line) = within(10, self.stderr.recv()).await {
            lines.push(line);
        }
        (status, lines)
    }
}

/// An HTTP response.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header names (lowercase) and values.
    pub headers: Vec<(String, String)>,
    /// The body (chunked bodies decoded).
    pub body: Vec<u8>,
}

impl Response {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// One HTTP/1.1 connection, kept alive between requests.
pub struct Http {
    stream: BufReader<TcpStream>,
    host: String,
}

impl Http {
    /// Connects to `addr`.
    pub async fn connect(addr: &str) -> Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream: BufReader::new(stream),
            host: addr.to_owned(),
        })
    }

    /// Sends one request (`target` is the raw request target, sent as given)
    /// and reads the whole response.
    pub async fn request(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response> {
        let mut head = format!(
            "{method} {target} HTTP/1.1\r\nhost: {}\r\ncontent-length: {}\r\n",
            self.host,
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let socket = self.stream.get_mut();
        socket.write_all(head.as_bytes()).await?;
        socket.write_all(body).await?;
        self.read_response(method == "HEAD").await
    }

    async fn read_response(&mut self, head_only: bool) -> Result<Response> {
        let mut line = String::new();
        self.stream.read_line(&mut line).await?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .context("status line")?
            .parse()?;
        let mut headers = Vec::new();
        loop {
            line.clear();
            if self.stream.read_line(&mut line).await? == 0 {
                bail!("connection closed in the headers");
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (n, v) = l.split_once(':').context("header line")?;
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
        let get = |n: &str| headers.iter().find(|(h, _)| h == n).map(|(_, v)| v.clone());
        let mut body = Vec::new();
        if head_only {
        } else if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            loop {
                line.clear();
                self.stream.read_line(&mut line).await?;
                let size = usize::from_str_radix(line.trim(), 16).context("chunk size")?;
                let mut chunk = vec![0; size + 2];
                self.stream.read_exact(&mut chunk).await?;
                body.extend_from_slice(&chunk[..size]);
                if size == 0 {
                    break;
                }
            }
        } else if let Some(n) = get("content-length") {
            body.resize(n.parse()?, 0);
            self.stream.read_exact(&mut body).await?;
        } else {
            self.stream.read_to_end(&mut body).await?;
        }
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

/// One request on a fresh connection, at most 120 s.
pub async fn request(
    addr: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response> {
    within(120, async {
        let mut http = Http::connect(addr).await?;
        http.request(method, target, headers, body).await
    })
    .await
}

/// Waits at most `secs` for a future; for the benchmark, which has no test
/// harness to fail.
pub async fn bounded<F: std::future::IntoFuture>(secs: u64, fut: F) -> Result<F::Output> {
    tokio::time::timeout(Duration::from_secs(secs), fut.into_future())
        .await
        .context("timed out")
}
