//! Who may change what the daemon reads. The configuration file, its policy
//! files and its secret files are refused when anyone but root or the user
//! callwarden runs as could write them, or replace them through their
//! folder. Policy files are reloaded within a second of a change: a
//! world-writable one would let any local user cut every call.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// Why `path` cannot be trusted, if it cannot. A file that cannot be read
/// at all is left to the read, which says why.
pub(super) fn untrusted(path: &Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    if let Some(reason) = loose(path, &meta, "") {
        return Some(reason);
    }
    let folder = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let dir = std::fs::metadata(folder).ok()?;
    loose(folder, &dir, "folder ")
}

fn loose(path: &Path, meta: &std::fs::Metadata, what: &str) -> Option<String> {
    let mode = meta.permissions().mode();
    if mode & 0o022 != 0 {
        let who = if mode & 0o002 != 0 { "anyone" } else { "its group" };
        return Some(format!(
            "{what}{} is writable by {who} (mode {:o}): only its owner may write it (chmod go-w)",
            path.display(),
            mode & 0o7777
        ));
    }
    let owner = meta.uid();
    let me = rustix::process::geteuid().as_raw();
    if owner != 0 && owner != me {
        return Some(format!(
            "{what}{} is owned by uid {owner}, neither root nor the user callwarden runs as (uid {me})",
            path.display()
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_others_may_write_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("policies.yaml");
        std::fs::write(&file, "policies: {}\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(untrusted(&file), None);
        for (mode, who) in [(0o666, "anyone"), (0o664, "its group")] {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            let reason = untrusted(&file).unwrap();
            assert!(reason.contains(who) && reason.contains("policies.yaml"), "{reason}");
        }
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let reason = untrusted(&file).unwrap();
        assert!(reason.starts_with("folder ") && reason.contains("anyone"), "{reason}");
    }
}
