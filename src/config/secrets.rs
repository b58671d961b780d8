//! Secrets in the file: `${ENV}` references, `*_file` paths, and masking
//! every value written at a secret key out of errors and warnings.

use std::path::Path;

use super::yaml::yaml_lines;
use crate::domain::secret::Secret;

/// Replaces every `${NAME}` with the environment variable's value; the error
/// is the name of the first one that is unset.
pub fn expand_env(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let name = &after[..end];
        match std::env::var(name) {
            Ok(v) => out.push_str(&v),
            Err(_) => return Err(name.to_string()),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

pub(super) fn resolve_secret(value: &str) -> Result<Secret, String> {
    let v = expand_env(value).map_err(|var| format!("secret refers to ${{{var}}}, which is not set"))?;
    if v.trim().is_empty() {
        return Err("secret is empty".into());
    }
    Ok(Secret::new(v.trim()))
}

pub(super) fn read_secret_file(base: &Path, file: &str) -> Result<Secret, String> {
    let name = expand_env(file).map_err(|var| format!("path refers to ${{{var}}}, which is not set"))?;
    let path = base.join(name);
    if let Some(reason) = super::trust::untrusted(&path) {
        return Err(reason);
    }
    let content = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?;
    if content.trim().is_empty() {
        return Err(format!("secret file {} is empty", path.display()));
    }
    Ok(Secret::new(content.trim()))
}

/// Keys whose values are secrets, inline (the `*_file` keys hold paths).
const SECRET_KEYS: [&str; 7] =
    ["secret_key", "access_key", "api_token", "callback_key", "secret", "checkpoint_key", "client_secret"];
/// Shorter values are masked only where they stand alone (between
/// characters that cannot be part of them): masking every `1` or `test`
/// inside other words would garble messages.
const MIN_MASKED_LEN: usize = 6;

/// Replaces every value written at a secret key in `text` with `****` in
/// `message`. Parsing alone cannot keep secrets out of messages: a secret
/// line indented one level off makes serde_yaml quote its value in a type
/// error, and a stray `|` or an unclosed quote folds the line into another
/// key's value, which a check or warning then repeats. So the text itself is
/// searched for secret keys, block or flow style, in any position, and what
/// follows them is masked, raw and as `{:?}` escapes it.
pub(super) fn mask_secrets(text: &str, mut message: String) -> String {
    let lines = yaml_lines(text);
    let mut values: Vec<String> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        for key in SECRET_KEYS {
            let pattern = format!("{key}:");
            for (at, _) in line.match_indices(&pattern) {
                let starts_key = line[..at].chars().next_back().is_none_or(|c| " \t{,-?\"'".contains(c));
                if !starts_key {
                    continue;
                }
                let rest = line[at + pattern.len()..].trim();
                let entry = rest.split([',', '}']).next().unwrap_or(rest).trim();
                values.push(rest.to_string());
                // An unbalanced quote is where a folded value starts or ends.
                values.push(rest.trim_matches(['\'', '"']).to_string());
                // The value as YAML reads it (quotes, tags and flow
                // collections undone), as a type error would quote it.
                for candidate in [rest, entry] {
                    if let Ok(value) = serde_yaml::from_str::<serde_yaml::Value>(candidate) {
                        scalars(&value, &mut values);
                    }
                }
                // A block scalar (`|`, `>-`, ...): the secret is on the
                // following, deeper-indented lines.
                if rest.starts_with(['|', '>']) {
                    let indent = line.len() - line.trim_start().len();
                    let body: Vec<&str> = lines[i + 1..]
                        .iter()
                        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
                        .map(|l| l.trim())
                        .collect();
                    values.extend(body.iter().map(|l| l.to_string()));
                }
            }
        }
    }
    // `${NAME}` names a variable; the error that it is unset must say which.
    let reference = |v: &str| v.starts_with("${") && v.ends_with('}') && v.matches("${").count() == 1;
    values.retain(|v| !v.trim().is_empty() && !reference(v));
    // Longest first, so a value containing another is masked whole.
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    for value in values {
        let escaped = format!("{value:?}");
        let escaped = &escaped[1..escaped.len() - 1];
        if value.len() >= MIN_MASKED_LEN {
            message = message.replace(&value, "****").replace(escaped, "****");
        } else {
            message = replace_standalone(&message, &value);
            message = replace_standalone(&message, escaped);
        }
    }
    message
}

/// Replaces `value` with `****` where it is not part of a longer word.
fn replace_standalone(message: &str, value: &str) -> String {
    if value.is_empty() {
        return message.to_string();
    }
    let word = |c: char| c.is_alphanumeric() || c == '_' || c == '-';
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(value) {
        let before = rest[..at].chars().next_back();
        let after = rest[at + value.len()..].chars().next();
        let alone = !before.is_some_and(word) && !after.is_some_and(word);
        out.push_str(&rest[..at]);
        out.push_str(if alone { "****" } else { value });
        rest = &rest[at + value.len()..];
    }
    out.push_str(rest);
    out
}

/// Every scalar in a YAML value, as text.
fn scalars(value: &serde_yaml::Value, out: &mut Vec<String>) {
    match value {
        serde_yaml::Value::String(s) => out.push(s.clone()),
        serde_yaml::Value::Number(n) => out.push(n.to_string()),
        serde_yaml::Value::Sequence(items) => items.iter().for_each(|v| scalars(v, out)),
        serde_yaml::Value::Mapping(map) => map.iter().for_each(|(k, v)| {
            scalars(k, out);
            scalars(v, out);
        }),
        serde_yaml::Value::Tagged(tagged) => scalars(&tagged.value, out),
        serde_yaml::Value::Null | serde_yaml::Value::Bool(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use crate::config::ProviderSettings;
    use crate::config::tests::{GOOD, parse, refused};

    #[test]
    fn missing_secrets_are_refused_without_echoing_values() {
        let e = refused(&GOOD.replace("    secret_key: not-a-real-key\n", ""));
        assert!(e.reason.contains("secret_key or secret_key_file is required"), "{e}");
        let e = refused(&GOOD.replace("not-a-real-key", "\"${CALLWARDEN_TEST_SURELY_UNSET}\""));
        assert!(e.reason.contains("CALLWARDEN_TEST_SURELY_UNSET"), "{e}");
        let e = refused(&GOOD.replace("secret_key: not-a-real-key", "secret_key_file: /nonexistent/key"));
        assert!(e.reason.contains("cannot read secret file"), "{e}");
        let e = refused(&GOOD.replace("ap-guangzhou", "[1, 2]"));
        assert!(!e.to_string().contains("not-a-real-key"), "{e}");
        let e = refused(&GOOD.replace("not-a-real-key", "12345.678"));
        assert!(!e.to_string().contains("12345"), "{e}");
        let e = refused(&GOOD.replace("not-a-real-key", "[s3cr3t]"));
        assert!(!e.to_string().contains("s3cr3t"), "{e}");
        let c = parse(&GOOD.replace("not-a-real-key", "1234567")).unwrap();
        let ProviderSettings::Trtc(t) = &c.providers["trtc"].settings else { panic!("a TRTC provider") };
        assert_eq!(t.secret_key.expose(), "1234567");
    }

    #[test]
    fn a_misplaced_or_swallowed_secret_is_masked() {
        // One level too shallow: serde_yaml would quote it in a type error.
        let e = refused(&GOOD.replace("    secret_key: not-a-real-key", "  secret_key: not-a-real-key"));
        assert!(e.reason.contains("invalid type"), "{e}");
        assert!(!e.to_string().contains("not-a-real-key"), "{e}");
        // A stray `|` turns the section into one string, secret included.
        let e = refused(&GOOD.replace("providers:", "providers: |"));
        assert!(e.reason.contains("****"), "{e}");
        assert!(!e.to_string().contains("not-a-real-key"), "{e}");
        // An unclosed quote folds the next line into another key's value,
        // which the check then repeats.
        let e = refused(&format!("{GOOD}listen: '127.0.0.1:8720\n  api_token: a-long-enough-api-token'\n"));
        assert!(e.reason.contains("listen \"127.0.0.1:8720 api_token: ****\""), "{e}");
        // Ordinary values are still quoted.
        let e = refused(&GOOD.replace("1400000001", "\"my-app\""));
        assert!(e.reason.contains("\"my-app\""), "{e}");
    }
}
