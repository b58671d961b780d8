//! The config loader (`Config::parse`, which `Config::load` calls with the
//! file's text): whatever the text, the answer is a config or an error that
//! names a file of the configuration (the main file or one of its policy
//! files) and a line in it, and no secret written in the file shows up in an
//! error or a warning.

use std::path::{Path, PathBuf};

use callwarden::config::{Config, ConfigError};
use proptest::prelude::*;
use proptest::sample::Index;

/// Keys whose values are secrets. A value written on such a line is the
/// operator's secret wherever the line ends up.
const SECRET_KEYS: [&str; 6] =
    ["secret_key", "access_key", "api_token", "callback_key", "secret", "checkpoint_key"];

/// Nowhere: `*_file` references in generated text then fail the same way on
/// every machine, and nothing is read from a real folder.
fn nowhere() -> PathBuf {
    PathBuf::from("/nonexistent-callwarden-properties/cw.yaml")
}

/// The key of a `key: value` line, unquoted; `None` for other lines.
fn key_of(line: &str) -> Option<&str> {
    let trimmed = line.trim_start().trim_start_matches("- ");
    let (key, _) = trimmed.split_once(':')?;
    Some(key.trim().trim_matches(|c| c == '"' || c == '\''))
}

fn is_secret_line(line: &str) -> bool {
    key_of(line).is_some_and(|k| SECRET_KEYS.contains(&k))
}

/// Lines as YAML counts them: CR LF, LF, a lone CR, NEL, LS and PS each end
/// one (serde_yaml reports positions by that count; `str::lines` would not).
fn yaml_lines(text: &str) -> usize {
    1 + text
        .replace("\r\n", "\n")
        .chars()
        .filter(|c| matches!(c, '\n' | '\r' | '\u{85}' | '\u{2028}' | '\u{2029}'))
        .count()
}

/// The files of the configuration that `text`, read as if from `path`,
/// describes: the main file, then every file its `policy_files` patterns
/// match, resolved against the main file's folder as the loader resolves
/// them. An error may name any of these, and no other.
fn configuration_files(path: &Path, text: &str) -> Vec<PathBuf> {
    let mut files = vec![path.to_path_buf()];
    let Ok(doc) = serde_yaml::from_str::<serde_yaml::Value>(text) else {
        return files;
    };
    let Some(patterns) = doc.get("policy_files").and_then(serde_yaml::Value::as_sequence) else {
        return files;
    };
    let base = path.parent().unwrap_or(Path::new("."));
    for pattern in patterns.iter().filter_map(serde_yaml::Value::as_str) {
        let full = base.join(pattern.trim());
        if let Ok(matches) = glob::glob(&full.to_string_lossy()) {
            files.extend(matches.filter_map(Result::ok).filter(|p| p.is_file()));
        }
    }
    files
}

/// Every rejection names a file of the configuration (the main file, whose
/// text is `text`, or one of the policy files it names) and a line that
/// exists in that file (or the line just past the end, where a truncated
/// document fails), and says so up front.
fn assert_locates(path: &Path, text: &str, e: &ConfigError) -> Result<(), TestCaseError> {
    let files = configuration_files(path, text);
    prop_assert!(files.contains(&e.file), "error names a file outside the configuration {:?}: {}", files, e);
    let named = if e.file == path {
        text.to_string()
    } else {
        std::fs::read_to_string(&e.file).map_err(|r| TestCaseError::fail(format!("{e}: {r}")))?
    };
    let lines = yaml_lines(&named);
    let Some(line) = e.line else {
        return Err(TestCaseError::fail(format!("no line in {e:?} for:\n{text}")));
    };
    prop_assert!(
        (1..=lines + 1).contains(&line),
        "line {} is outside the {}-line file {}: {}",
        line,
        lines,
        e.file.display(),
        e
    );
    let prefix = format!("{}:{line}: ", e.file.display());
    prop_assert!(e.to_string().starts_with(&prefix), "{:?} does not start with {:?}", e.to_string(), prefix);
    prop_assert!(!e.reason.trim().is_empty(), "an error without a reason: {:?}", e);
    Ok(())
}

/// Neither the error nor, for an accepted file, the config's `Debug` and
/// warnings may contain any of `secrets`.
fn assert_no_secret(
    result: &Result<Config, ConfigError>,
    secrets: &[String],
    text: &str,
) -> Result<(), TestCaseError> {
    let shown = match result {
        Err(e) => format!("{e}\n{e:?}"),
        Ok(c) => format!("{c:?}\n{}", c.warnings.join("\n")),
    };
    for secret in secrets {
        prop_assert!(
            !shown.contains(secret.as_str()),
            "secret {:?} shown:\n{}\n--- from:\n{}",
            secret,
            shown,
            text
        );
    }
    Ok(())
}

// ---- a valid file with a secret in every place one can go ------------------

/// One secret per place a secret goes: 20 letters and digits, which is
/// also valid base64 (the ACS access key must be) and unlikely to occur by
/// chance.
fn secrets() -> impl Strategy<Value = [String; 7]> {
    proptest::array::uniform7("[A-Za-z0-9]{20}")
}

/// How a secret is written: each shape is still the operator's secret.
#[derive(Debug, Clone, Copy)]
enum Shape {
    Plain,
    SingleQuoted,
    DoubleQuoted,
    Tagged,
    InList,
    InMap,
}

fn shape() -> impl Strategy<Value = Shape> {
    prop_oneof![
        4 => Just(Shape::Plain),
        1 => Just(Shape::SingleQuoted),
        1 => Just(Shape::DoubleQuoted),
        1 => Just(Shape::Tagged),
        1 => Just(Shape::InList),
        1 => Just(Shape::InMap),
    ]
}

fn write(secret: &str, shape: Shape) -> String {
    match shape {
        Shape::Plain => secret.to_string(),
        Shape::SingleQuoted => format!("'{secret}'"),
        Shape::DoubleQuoted => format!("\"{secret}\""),
        Shape::Tagged => format!("!!str {secret}"),
        Shape::InList => format!("[{secret}]"),
        Shape::InMap => format!("{{value: {secret}}}"),
    }
}

/// Every section and every secret the loader knows, valid as written.
fn full_config(s: &[String; 7], shapes: &[Shape; 7]) -> String {
    let w = |i: usize| write(&s[i], shapes[i]);
    format!(
        "\
database: cw.db
listen: 127.0.0.1:8720
time_zone: Europe/Berlin
api_token: {}
notifications:
  url: https://app.example.com/callwarden/events
  secret: {}
webhooks:
  trtc:
    callback_key: {}
  acs:
    secret: {}
retention:
  sessions: 30d
  audit: 90d
  checkpoint_key: {}
providers:
  trtc:
    kind: tencent-trtc
    sdk_app_id: 1400000001
    region: ap-guangzhou
    secret_id: AKIDproperties
    secret_key: {}
    retry:
      max_attempts: 3
      initial_backoff: 1s
      max_backoff: 1m
  acs:
    kind: azure-acs
    endpoint: https://contoso.communication.azure.com
    access_key: {}
    callback_url: https://calls.example.com/callwarden/acs/events
policies:
  consultation:
    provider: trtc
    match:
      room: \"consult-*\"
    max_duration: 30m
    max_extension: 10m
    warn_before: [5m, 1m]
    grace: 30s
    action: dismiss_room
  paid-chat:
    provider: acs
    max_duration: 20m
    action: remove_participant
    mode: shadow
    budget:
      per: user
      window: day
      limit: 1h
",
        w(0),
        w(1),
        w(2),
        w(3),
        w(4),
        w(5),
        w(6)
    )
}

/// The shipped sandbox config and the valid fixtures, each with its path
/// (a fixture may name a secret file beside it).
fn shipped() -> Vec<(PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("config/sandbox.yaml")];
    let valid = root.join("tests/fixtures/config/valid");
    let mut fixtures: Vec<PathBuf> = std::fs::read_dir(&valid)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    fixtures.sort();
    files.extend(fixtures);
    files.into_iter().map(|p| (p.clone(), std::fs::read_to_string(&p).unwrap())).collect()
}

// ---- structured mutations ----------------------------------------------------

/// Values that stress the loader's checks and YAML's corners.
const ODD_VALUES: &[&str] = &[
    "",
    "~",
    "null",
    "0",
    "-1",
    "1e400",
    "18446744073709551616",
    "0s",
    "-5m",
    "400d",
    "30",
    "true",
    "[]",
    "{}",
    "[a, b]",
    "{x: 1}",
    "'unterminated",
    "\"unterminated",
    "&anchor",
    "*alias",
    "!!binary aGVsbG8=",
    "\"${CALLWARDEN_PROPERTIES_SURELY_UNSET}\"",
    "http://",
    "not a url",
    "|",
    ">",
    "- x",
    "a: b",
    "\t",
    "#",
    "\u{feff}",
    "é",
];

/// Keys a line may be renamed to (never from or to a secret key: a secret
/// renamed into a plain field is no longer the operator's secret).
const OTHER_KEYS: &[&str] = &[
    "database",
    "listen",
    "kind",
    "sdk_app_id",
    "region",
    "secret_id",
    "endpoint",
    "api_version",
    "callback_url",
    "max_requests_per_second",
    "retry",
    "max_attempts",
    "request_timeout",
    "provider",
    "match",
    "room",
    "scope",
    "max_duration",
    "max_extension",
    "action",
    "mode",
    "secret_key_file",
    "api_token_file",
    "colour",
    "policies",
    "providers",
    "webhooks",
    "retention",
];

#[derive(Debug, Clone)]
enum Mutation {
    Delete(Index),
    Duplicate(Index),
    Swap(Index, Index),
    Indent(Index, i8),
    /// A new value for a line that holds no secret.
    Value(Index, String),
    /// A new key for a line that holds no secret.
    Rename(Index, &'static str),
    Insert(Index, String),
    Truncate(Index),
}

fn junk_line() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{0,30}",
        ("[ ]{0,6}", "[a-z_]{1,14}", proptest::sample::select(ODD_VALUES))
            .prop_map(|(indent, key, value)| format!("{indent}{key}: {value}")),
        any::<String>().prop_map(|s| s.replace('\n', " ")),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        1 => any::<Index>().prop_map(Mutation::Delete),
        1 => any::<Index>().prop_map(Mutation::Duplicate),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::Swap(a, b)),
        1 => (any::<Index>(), -4i8..=4).prop_map(|(i, d)| Mutation::Indent(i, d)),
        2 => (
            any::<Index>(),
            prop_oneof![proptest::sample::select(ODD_VALUES).prop_map(String::from), "[ -~]{0,16}"]
        )
            .prop_map(|(i, v)| Mutation::Value(i, v)),
        1 => (any::<Index>(), proptest::sample::select(OTHER_KEYS)).prop_map(|(i, k)| Mutation::Rename(i, k)),
        1 => (any::<Index>(), junk_line()).prop_map(|(i, l)| Mutation::Insert(i, l)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
    ]
}

fn apply(text: &str, mutations: &[Mutation]) -> String {
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    for m in mutations {
        if lines.is_empty() {
            break;
        }
        let n = lines.len();
        match m {
            Mutation::Delete(i) => {
                lines.remove(i.index(n));
            }
            Mutation::Duplicate(i) => {
                let line = lines[i.index(n)].clone();
                lines.insert(i.index(n), line);
            }
            Mutation::Swap(a, b) => lines.swap(a.index(n), b.index(n)),
            Mutation::Indent(i, d) => {
                let line = &mut lines[i.index(n)];
                if *d >= 0 {
                    line.insert_str(0, &" ".repeat(*d as usize));
                } else {
                    let strip = line.len() - line.trim_start_matches(' ').len();
                    line.drain(..strip.min(d.unsigned_abs() as usize));
                }
            }
            Mutation::Value(i, v) => {
                let line = &mut lines[i.index(n)];
                if !is_secret_line(line)
                    && let Some((key, _)) = line.split_once(':')
                {
                    *line = format!("{key}: {v}");
                }
            }
            Mutation::Rename(i, k) => {
                let line = &mut lines[i.index(n)];
                if !is_secret_line(line)
                    && let Some((key, value)) = line.split_once(':')
                {
                    let indent = &key[..key.len() - key.trim_start().len()];
                    *line = format!("{indent}{k}:{value}");
                }
            }
            Mutation::Insert(i, l) => lines.insert(i.index(n + 1), l.clone()),
            Mutation::Truncate(i) => lines.truncate(i.index(n) + 1),
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

/// Where `key: value` starts in `text` for a secret key, block or flow
/// style, with the value's text up to the end of its line or flow entry.
fn secret_values(text: &str) -> Vec<&str> {
    let mut values = Vec::new();
    for key in SECRET_KEYS {
        let pattern = format!("{key}: ");
        for (at, _) in text.match_indices(&pattern) {
            let whole_key = at == 0 || text[..at].ends_with([' ', '{', ',', '\n', '\t']);
            if !whole_key {
                continue;
            }
            let rest = &text[at + pattern.len()..];
            let end = rest.find(['\n', ',', '}']).unwrap_or(rest.len());
            values.push(rest[..end].trim());
        }
    }
    values
}

/// The secrets still written at a secret key in `text`, in any shape.
fn secrets_at_secret_keys(text: &str, secrets: &[String]) -> Vec<String> {
    let values = secret_values(text);
    secrets.iter().filter(|s| values.iter().any(|v| v.contains(s.as_str()))).cloned().collect()
}

/// Secrets written in the shipped files, found by their keys.
fn written_secrets(text: &str) -> Vec<String> {
    secret_values(text)
        .into_iter()
        .map(|v| v.trim_matches(|c| c == '"' || c == '\''))
        .filter(|v| v.len() >= 8)
        .map(String::from)
        .collect()
}

/// Unix, Windows and old Mac line ends: YAML takes all three.
fn line_ends() -> impl Strategy<Value = &'static str> {
    prop_oneof![4 => Just("\n"), 1 => Just("\r\n"), 1 => Just("\r")]
}

/// YAML-ish token soup: reaches the loader's checks more often than
/// arbitrary text, which mostly fails in the YAML parser.
fn token_soup() -> impl Strategy<Value = String> {
    const TOKENS: &[&str] = &[
        "database",
        "providers",
        "policies",
        "webhooks",
        "retention",
        "listen",
        "kind",
        "tencent-trtc",
        "azure-acs",
        "sdk_app_id",
        "region",
        "secret_key",
        "secret_id",
        "access_key",
        "endpoint",
        "provider",
        "max_duration",
        "action",
        "dismiss_room",
        "remove_user",
        "scope",
        "room",
        "30m",
        "1400000001",
        ":",
        ": ",
        "\n",
        "\n  ",
        "\n    ",
        "- ",
        "{",
        "}",
        "[",
        "]",
        ", ",
        "'",
        "\"",
        "&a ",
        "*a",
        "!!str ",
        "# ",
        "~",
        "<<: ",
        "? ",
        "|\n",
        ">\n",
        "x",
        "0",
        "-1",
        "${X}",
        "\t",
        "\r\n",
        "\u{0}",
        "é",
    ];
    proptest::collection::vec(proptest::sample::select(TOKENS), 0..80).prop_map(|t| t.concat())
}

proptest! {
    #![proptest_config(super::cases(256))]

    #[test]
    fn arbitrary_text_is_a_config_or_a_located_error(
        text in prop_oneof![any::<String>(), "[ -~\n\r\t\u{85}\u{2028}]{0,300}", token_soup()]
    ) {
        let path = nowhere();
        if let Err(e) = Config::parse(&path, &text) {
            assert_locates(&path, &text, &e)?;
        }
    }

    #[test]
    fn arbitrary_bytes_read_lossily_are_a_config_or_a_located_error(
        bytes in proptest::collection::vec(any::<u8>(), 0..400)
    ) {
        let path = nowhere();
        let text = String::from_utf8_lossy(&bytes);
        if let Err(e) = Config::parse(&path, &text) {
            assert_locates(&path, &text, &e)?;
        }
    }

    #[test]
    fn a_mutated_full_config_is_located_and_never_shows_a_secret(
        secrets in secrets(),
        shapes in proptest::array::uniform7(shape()),
        mutations in proptest::collection::vec(mutation(), 0..5),
        ends in line_ends(),
    ) {
        let path = nowhere();
        let base = full_config(&secrets, &[Shape::Plain; 7]);
        let loaded = Config::parse(&path, &base);
        prop_assert!(loaded.is_ok(), "the unmutated base is refused: {:?}", loaded.err());
        assert_no_secret(&loaded, &secrets, &base)?;

        let text = apply(&full_config(&secrets, &shapes), &mutations).replace('\n', ends);
        let result = Config::parse(&path, &text);
        if let Err(e) = &result {
            assert_locates(&path, &text, e)?;
        }
        assert_no_secret(&result, &secrets_at_secret_keys(&text, &secrets), &text)?;
    }

    #[test]
    fn a_mutated_shipped_config_is_located_and_never_shows_a_secret(
        file in any::<Index>(),
        mutations in proptest::collection::vec(mutation(), 1..5),
        ends in line_ends(),
    ) {
        let files = shipped();
        let (path, base) = &files[file.index(files.len())];
        let secrets = written_secrets(base);
        prop_assert!(
            !secrets.is_empty() || base.contains("secret_key_file:"),
            "{} holds no secret",
            path.display()
        );
        let text = apply(base, &mutations).replace('\n', ends);
        let result = Config::parse(path, &text);
        if let Err(e) = &result {
            assert_locates(path, &text, e)?;
        }
        assert_no_secret(&result, &secrets_at_secret_keys(&text, &secrets), &text)?;
    }
}

#[test]
fn the_shipped_bases_load_unmutated() {
    for (path, text) in shipped() {
        if let Err(e) = Config::parse(&path, &text) {
            panic!("{} is refused: {e}", path.display());
        }
    }
}

fn fixture(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config").join(relative)
}

/// The case that once failed a fresh clone: renaming the provider `trtc` of
/// `policy_files.yaml` makes the loader refuse the policy file that still
/// names it, and the error rightly names that file, not the main one.
#[test]
fn a_provider_renamed_under_a_policy_file_is_located_in_the_policy_file() {
    let path = fixture("valid/policy_files.yaml");
    let base = std::fs::read_to_string(&path).unwrap();
    let text = base.replacen("  trtc:\n", "  colour:\n", 1);
    assert_ne!(text, base);
    let e = Config::parse(&path, &text).unwrap_err();
    assert!(e.file.ends_with("policies.d/good/10-consult.yaml"), "{e}");
    assert_locates(&path, &text, &e).unwrap();
}

/// The oracle stays strict: it takes the main file and the policy files the
/// configuration names, each with a line in it, and nothing else.
#[test]
fn the_locating_oracle_refuses_other_files_and_missing_lines() {
    let path = fixture("valid/policy_files.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let policy = fixture("valid/../policies.d/good/10-consult.yaml");
    let at = |file: &Path, line: Option<usize>| ConfigError {
        file: file.to_path_buf(),
        line,
        reason: "refused".into(),
    };
    assert_locates(&path, &text, &at(&path, Some(1))).unwrap();
    assert_locates(&path, &text, &at(&policy, Some(3))).unwrap();
    let outside = fixture("valid/minimal.yaml");
    assert!(
        assert_locates(&path, &text, &at(&outside, Some(1))).is_err(),
        "a file outside the configuration"
    );
    let unnamed = text.lines().filter(|l| !l.starts_with("policy_files:")).collect::<Vec<_>>().join("\n");
    assert!(assert_locates(&path, &unnamed, &at(&policy, Some(3))).is_err(), "a policy file no longer named");
    assert!(assert_locates(&path, &text, &at(&policy, None)).is_err(), "no line");
    assert!(assert_locates(&path, &text, &at(&policy, Some(1000))).is_err(), "a line past the end");
    assert!(assert_locates(&path, &text, &at(&path, None)).is_err(), "no line in the main file");
}
