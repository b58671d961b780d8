//! The file being parsed (its path and text), and the errors that point
//! into it.

use std::path::Path;

use super::ConfigError;
use super::yaml::locate;

/// The file being parsed: the main config file or one of its policy files.
pub(super) struct FileCtx<'a> {
    pub(super) path: &'a Path,
    pub(super) text: &'a str,
}

impl<'a> FileCtx<'a> {
    /// The file's folder, which relative paths in the file are taken from.
    pub(super) fn folder(&self) -> &'a Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// A refusal pointing at the line of `key_path` (or its deepest ancestor found).
    pub(super) fn error(&self, key_path: &[&str], reason: String) -> ConfigError {
        ConfigError { file: self.path.to_path_buf(), line: locate(self.text, key_path), reason }
    }
}
