//! Graceful shutdown, passed explicitly to every long-running task (the
//! mini-redis way) instead of a global flag.

use tokio::sync::watch;

/// Fires once; every clone of the matching [`Shutdown`] sees it.
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

#[derive(Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger { tx }, Shutdown { rx })
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }
}

impl Shutdown {
    /// Resolves once shutdown has been triggered.
    pub async fn wait(&mut self) {
        let _ = self.rx.wait_for(|stop| *stop).await;
    }

    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }
}
