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

    /// A URL that requests with secrets go to (signatures, tokens, callback
    /// bodies): https, or plain http on this host (a sandbox, a local proxy)
    /// or to one of `http_hosts`. `what` names it in the refusal
    /// (`provider "acs": endpoint`).
    pub(super) fn secure_url(
        &self,
        at: &[&str],
        what: &str,
        url: &str,
        http_hosts: &[&str],
    ) -> Result<(), ConfigError> {
        match reqwest::Url::parse(url) {
            Ok(u) if u.scheme() == "https" && u.host_str().is_some() => Ok(()),
            Ok(u)
                if u.scheme() == "http"
                    && (crate::http_client::is_loopback(&u)
                        || u.host_str().is_some_and(|h| http_hosts.contains(&h))) =>
            {
                Ok(())
            }
            Ok(u) if u.scheme() == "http" && u.host_str().is_some() => Err(self.error(
                at,
                format!(
                    "{what} {} is plain http to another host; use https (plain http is accepted only on loopback)",
                    crate::http_client::display_url(u.as_str())
                ),
            )),
            _ => Err(self.error(at, format!("{what} {url:?} is not an http(s) URL"))),
        }
    }
}
