//! A test's tempdir without a sandbox: a config file and the database it
//! names, for tests of the CLI alone or of a daemon whose provider is never
//! called.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use callwarden::sandbox::SANDBOX_SECRET_KEY;

use super::configs::{NOWHERE, config_text};
use super::process::{CliOutput, run_cli};

/// A tempdir holding `cw.yaml`, which names the database `cw.db` beside it.
pub struct Workdir {
    dir: tempfile::TempDir,
    pub config: PathBuf,
    pub db_path: PathBuf,
}

impl Workdir {
    /// [`config_text`] with its provider on [`NOWHERE`].
    pub fn standard() -> Workdir {
        Workdir::with_config(|db| config_text(db, NOWHERE, SANDBOX_SECRET_KEY))
    }

    /// The config `make(database)` writes.
    pub fn with_config(make: impl FnOnce(&Path) -> String) -> Workdir {
        let dir = tempfile::tempdir().expect("a tempdir");
        let db_path = dir.path().join("cw.db");
        let config = dir.path().join("cw.yaml");
        std::fs::write(&config, make(&db_path)).unwrap();
        Workdir { dir, config, db_path }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `callwarden --config cw.yaml ARGS...`, run to completion.
    pub async fn cli<S: AsRef<OsStr>>(&self, args: &[S]) -> CliOutput {
        run_cli(&self.config, args).await
    }
}
