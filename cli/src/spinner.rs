//! A status line on stderr while a command runs longer than a second; silent
//! when stderr is not a terminal, so scripts and logs see only the output.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const FRAMES: &[char] = &['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

/// A running spinner; [`Spinner::stop`] clears its line.
pub struct Spinner {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Spinner {
    /// Starts the spinner (a no-op when stderr is not a terminal).
    pub fn start(label: String) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self {
                stop: None,
                task: None,
            };
        }
        let (tx, mut rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            tokio::select! {
                _ = &mut rx => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut frame = 0;
            loop {
                tokio::select! {
                    _ = &mut rx => break,
                    _ = tick.tick() => {
                        let mut err = std::io::stderr().lock();
                        let _ = write!(
                            err,
                            "\r{} {label} ({:.1}s)\x1b[K",
                            FRAMES[frame % FRAMES.len()],
                            started.elapsed().as_secs_f64()
                        );
                        let _ = err.flush();
                        frame += 1;
                    }
                }
            }
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
        });
        Self {
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Stops the spinner and waits until its line is cleared.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}
