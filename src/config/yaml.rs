//! The YAML text itself: syntax errors, lines as YAML counts them, and
//! finding the line of a key path.

use std::path::Path;

use super::ConfigError;

/// A serde_yaml error as a [`ConfigError`]. serde_yaml reports an unknown key
/// inside a tagged section (a provider) at the section's first line; the key
/// itself is found by name from there, so the operator sees the exact line.
pub(super) fn syntax_error(path: &Path, text: &str, e: &serde_yaml::Error) -> ConfigError {
    let mut line = e.location().map(|l| l.line());
    let mut reason = e.to_string();
    if let Some(l) = e.location() {
        let suffix = format!(" at line {} column {}", l.line(), l.column());
        if let Some(stripped) = reason.strip_suffix(&suffix) {
            reason = stripped.to_string();
        }
    }
    let unknown = reason
        .split_once("unknown field `")
        .and_then(|(_, rest)| rest.split_once('`'))
        .map(|(key, _)| key.to_string());
    if let (Some(key), Some(from)) = (unknown, line) {
        let found = yaml_lines(text)
            .into_iter()
            .enumerate()
            .skip(from.saturating_sub(1))
            .find(|(_, l)| l.trim_start().starts_with(&format!("{key}:")));
        if let Some((i, _)) = found {
            line = Some(i + 1);
        }
    }
    ConfigError { file: path.to_path_buf(), line, reason }
}

/// The lines of `text` as YAML counts them, which is what serde_yaml's
/// positions refer to: CR LF, LF and a lone CR each end a line, and so do
/// NEL, LS and PS. (`str::lines` splits at LF only, so in a file with old
/// Mac line ends every key looked up by line was lost.)
pub(super) fn yaml_lines(text: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if matches!(c, '\n' | '\r' | '\u{85}' | '\u{2028}' | '\u{2029}') {
            lines.push(&text[start..i]);
            start = i + c.len_utf8();
            if c == '\r' && chars.next_if(|&(_, next)| next == '\n').is_some() {
                start += 1;
            }
        }
    }
    if start < text.len() {
        lines.push(&text[start..]);
    }
    lines
}

/// Finds the 1-based line of a key path (`["policies", "x", "provider"]`) in
/// block-style YAML, falling back to the deepest ancestor found. serde_yaml
/// reports positions only for syntax and type errors; cross-field checks use
/// this to point at the offending line all the same.
pub fn locate(text: &str, key_path: &[&str]) -> Option<usize> {
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut best: Option<(usize, usize)> = None; // (depth matched, line)
    for (i, line) in yaml_lines(text).into_iter().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with('-') {
            continue;
        }
        let indent = line.len() - trimmed.len();
        let Some((key, _)) = trimmed.split_once(':') else {
            continue;
        };
        let key = key.trim().trim_matches(|c| c == '"' || c == '\'').to_string();
        while stack.last().is_some_and(|(ind, _)| *ind >= indent) {
            stack.pop();
        }
        stack.push((indent, key));
        let depth = stack.len();
        if depth <= key_path.len()
            && stack.iter().zip(key_path).all(|((_, k), want)| k == want)
            && best.is_none_or(|(d, _)| depth > d)
        {
            best = Some((depth, i + 1));
            if depth == key_path.len() {
                break;
            }
        }
    }
    best.map(|(_, line)| line)
}

#[cfg(test)]
mod tests {
    use super::{locate, yaml_lines};
    use crate::config::tests::{GOOD, refused};

    #[test]
    fn lines_are_counted_as_yaml_counts_them() {
        assert_eq!(yaml_lines("a\nb\r\nc\rd\u{2028}e\n"), ["a", "b", "c", "d", "e"]);
        assert_eq!(yaml_lines("a\n\nb"), ["a", "", "b"]);
        // Old Mac line ends: every check still finds its line.
        let e = refused(&GOOD.replace("provider: trtc", "provider: nope").replace('\n', "\r"));
        assert_eq!(e.line, Some(11), "{e}");
        let e = refused(&GOOD.replace("    region:", "    colour: red\n    region:").replace('\n', "\r"));
        assert_eq!(e.line, Some(6), "{e}");
    }

    #[test]
    fn locate_walks_block_yaml() {
        assert_eq!(locate(GOOD, &["policies", "consultation", "action"]), Some(13));
        assert_eq!(locate(GOOD, &["providers", "trtc", "nothing"]), Some(3));
        assert_eq!(locate(GOOD, &["elsewhere"]), None);
    }
}
