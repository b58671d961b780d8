//! The configuration in force: a handle every part of the daemon reads when
//! it decides something, so a reload applies from the next decision on.
//! The reloader (`reload`) holds the sending side.

use std::sync::Arc;

use tokio::sync::watch;

use super::Config;

/// The configuration in force; cheap to clone, always current.
#[derive(Debug, Clone)]
pub struct Live(watch::Receiver<Arc<Config>>);

impl Live {
    /// A configuration with the sender that replaces it.
    pub fn new(config: Arc<Config>) -> (Live, watch::Sender<Arc<Config>>) {
        let (tx, rx) = watch::channel(config);
        (Live(rx), tx)
    }

    /// A configuration that never changes (the CLI, tests).
    pub fn fixed(config: Arc<Config>) -> Live {
        Live::new(config).0
    }

    pub fn current(&self) -> Arc<Config> {
        Arc::clone(&self.0.borrow())
    }
}

impl From<Arc<Config>> for Live {
    fn from(config: Arc<Config>) -> Live {
        Live::fixed(config)
    }
}
