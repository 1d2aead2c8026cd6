//! One way to stop. [`Shutdown::trigger`] (from SIGTERM/SIGINT, the demo, or a failed stage) is seen
//! by async tasks through [`Shutdown::wait`] and by the pipeline thread through
//! [`Shutdown::is_triggered`]. The pipeline reacts at a micro-batch boundary: it finishes the batch in
//! hand (outputs acknowledged, state and offsets flushed, offsets committed), releases its partitions
//! and returns; nothing is half-applied.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

#[derive(Clone)]
pub struct Shutdown {
    flag: Arc<AtomicBool>,
    tx: Arc<watch::Sender<bool>>,
    rx: watch::Receiver<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown::new()
    }
}

impl Shutdown {
    pub fn new() -> Shutdown {
        let (tx, rx) = watch::channel(false);
        Shutdown {
            flag: Arc::new(AtomicBool::new(false)),
            tx: Arc::new(tx),
            rx,
        }
    }

    pub fn trigger(&self) {
        self.flag.store(true, Ordering::SeqCst);
        let _ = self.tx.send(true);
    }

    pub fn is_triggered(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Resolves once [`Shutdown::trigger`] has been called (at once if it already was).
    pub async fn wait(&mut self) {
        let _ = self.rx.wait_for(|stopped| *stopped).await;
    }
}

/// Triggers `shutdown` on SIGINT or SIGTERM.
pub async fn on_signals(shutdown: Shutdown) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!(
            "cannot install signal handlers; stop the daemon with SIGKILL (state stays consistent)"
        );
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining the current micro-batch and stopping"),
        _ = int.recv() => tracing::info!("SIGINT: draining the current micro-batch and stopping"),
    }
    shutdown.trigger();
}
