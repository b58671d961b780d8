//! The file being parsed (its path and text), and the errors that point
//! into it.

use std::path::Path;

use super::ConfigError;
use super::yaml::locate;

pub(super) struct Ctx<'a> {
    pub(super) path: &'a Path,
    pub(super) text: &'a str,
}

impl<'a> Ctx<'a> {
    /// The file's folder, which relative paths in the file are taken from.
    pub(super) fn folder(&self) -> &'a Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    pub(super) fn error(&self, key_path: &[&str], reason: String) -> ConfigError {
        ConfigError { file: self.path.to_path_buf(), line: locate(self.text, key_path), reason }
    }
}
