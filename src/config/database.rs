//! `database:`: where the daemon's state lives. A file path is a SQLite
//! database (the embedded default); a `postgres://` or `postgresql://` URL
//! is a PostgreSQL database, with its password from the URL, from
//! `database_password_file`, or from `PGPASSWORD`, and TLS as libpq names
//! it (`?sslmode=verify-full&sslrootcert=…`).

use std::fmt;
use std::path::{Path, PathBuf};

use crate::domain::secret::Secret;

/// Where the state lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// A SQLite file; a relative path is taken from the config file's
    /// folder, so the daemon and the CLI always agree on it.
    Sqlite(PathBuf),
    Postgres(PostgresUrl),
}

impl Database {
    /// Whether `text` names a PostgreSQL database rather than a file.
    pub fn is_postgres_url(text: &str) -> bool {
        let lower = text.trim_start().to_ascii_lowercase();
        lower.starts_with("postgres://") || lower.starts_with("postgresql://")
    }

    /// The SQLite file, if that is the backend.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match self {
            Database::Sqlite(path) => Some(path),
            Database::Postgres(_) => None,
        }
    }
}

/// For messages: the file, or the URL without its password.
impl fmt::Display for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Database::Sqlite(path) => write!(f, "{}", path.display()),
            Database::Postgres(url) => f.write_str(&url.redacted),
        }
    }
}

/// A PostgreSQL connection URL, and the password from
/// `database_password_file`. Prints without either password.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresUrl {
    url: Secret,
    redacted: String,
    password: Option<Secret>,
}

impl PostgresUrl {
    /// Checks that `url` parses as a URL with a host or a socket folder
    /// (`?host=/run/postgresql`); the connection settings themselves are
    /// the driver's to check when it connects.
    pub fn parse(url: &str, password: Option<Secret>) -> Result<PostgresUrl, String> {
        let parsed = url::Url::parse(url.trim()).map_err(|e| format!("not a valid URL: {e}"))?;
        if !matches!(parsed.scheme(), "postgres" | "postgresql") {
            return Err(format!(
                "the scheme must be postgres:// or postgresql://, not {}://",
                parsed.scheme()
            ));
        }
        if parsed.host_str().is_none_or(str::is_empty) && !parsed.query_pairs().any(|(k, _)| k == "host") {
            return Err("the URL names no host (postgres://HOST/DATABASE, or ?host=/socket/folder)".into());
        }
        if parsed.password().is_some() && password.is_some() {
            return Err("the URL has a password and database_password_file gives another: keep one".into());
        }
        Ok(PostgresUrl { url: Secret::new(url.trim()), redacted: redacted(url.trim()), password })
    }

    /// The URL as given, password included: for the driver only.
    pub fn expose(&self) -> &str {
        self.url.expose()
    }

    /// The password from `database_password_file`, if one was given.
    pub fn password(&self) -> Option<&str> {
        self.password.as_ref().map(Secret::expose)
    }

    /// The URL without its password, for messages and logs.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }
}

impl fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresUrl").field("url", &self.redacted).field("password", &self.password).finish()
    }
}

/// `url` with its password (if any) masked.
pub fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("****"));
            }
            // libpq also takes `?password=`.
            if u.query_pairs().any(|(k, _)| k == "password") {
                let pairs: Vec<(String, String)> = u
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = if k == "password" { "****".to_string() } else { v.into_owned() };
                        (k.into_owned(), v)
                    })
                    .collect();
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
            u.to_string()
        }
        Err(_) => "(a database URL that does not parse)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_prints_without_its_password() {
        let url =
            PostgresUrl::parse("postgres://cw:hunter2@db.example:5432/cw?sslmode=require", None).unwrap();
        assert_eq!(url.redacted(), "postgres://cw:****@db.example:5432/cw?sslmode=require");
        assert!(!format!("{url:?}").contains("hunter2"));
        assert!(!Database::Postgres(url.clone()).to_string().contains("hunter2"));
        assert_eq!(url.expose(), "postgres://cw:hunter2@db.example:5432/cw?sslmode=require");
        let query = PostgresUrl::parse("postgres://db.example/cw?user=cw&password=hunter2", None).unwrap();
        assert!(!query.redacted().contains("hunter2"), "{}", query.redacted());
    }

    #[test]
    fn urls_and_paths_are_told_apart() {
        assert!(Database::is_postgres_url("postgres://h/db"));
        assert!(Database::is_postgres_url("PostgreSQL://h/db"));
        assert!(!Database::is_postgres_url("/var/lib/callwarden/cw.db"));
        assert!(!Database::is_postgres_url("postgres.db"));
    }

    #[test]
    fn a_bad_url_is_refused_with_the_reason() {
        assert!(PostgresUrl::parse("postgres://", None).unwrap_err().contains("no host"));
        assert!(
            PostgresUrl::parse("postgres://h:notaport/db", None).unwrap_err().contains("not a valid URL")
        );
        let two = PostgresUrl::parse("postgres://u:p@h/db", Some(Secret::new("q"))).unwrap_err();
        assert!(two.contains("keep one"), "{two}");
        assert!(PostgresUrl::parse("postgres:///db?host=/run/postgresql", None).is_ok());
    }
}
