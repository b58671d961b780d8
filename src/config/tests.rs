//! Unit tests of the loader as a whole, and the fixture the other files'
//! tests share.

use super::*;

pub(super) const GOOD: &str = "\
database: cw.db
providers:
  trtc:
    kind: tencent-trtc
    sdk_app_id: 1400000001
    region: ap-guangzhou
    secret_id: AKIDtest
    secret_key: not-a-real-key
policies:
  consultation:
    provider: trtc
    max_duration: 30m
    action: dismiss_room
";

pub(super) fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("/etc/cw/test.yaml"), text)
}

#[test]
fn a_good_file_loads_with_defaults() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.database, crate::config::Database::Sqlite(PathBuf::from("/etc/cw/cw.db")));
    let p = &c.providers["trtc"];
    assert_eq!(p.max_requests_per_second, 19);
    assert_eq!(p.retry, RetryPolicy::default());
    let ProviderSettings::Trtc(t) = &p.settings else { panic!("a TRTC provider") };
    assert_eq!(t.endpoint, DEFAULT_TRTC_ENDPOINT);
    assert_eq!(format!("{:?}", t.secret_key), "Secret(****)");
    assert_eq!(c.policies["consultation"].max_duration, Duration::from_secs(1800));
}

pub(super) fn refused(text: &str) -> ConfigError {
    parse(text).expect_err("config should be refused")
}

#[test]
fn errors_point_at_the_offending_line() {
    let e = refused(&GOOD.replace("provider: trtc", "provider: nope"));
    assert_eq!(e.line, Some(11), "{e}");
    assert!(e.to_string().contains("unknown provider \"nope\""), "{e}");
    let e = refused(&GOOD.replace("30m", "0s"));
    assert_eq!(e.line, Some(12), "{e}");
    let e = refused(&GOOD.replace("30m", "400d"));
    assert!(e.reason.contains("longer than"), "{e}");
    let e = refused(&GOOD.replace("action: dismiss_room", "action: explode"));
    assert_eq!(e.line, Some(13), "{e}");
    let e = refused(&GOOD.replace("    region:", "    colour: red\n    region:"));
    assert_eq!(e.line, Some(6), "{e}");
    assert!(e.reason.contains("unknown field `colour`"), "{e}");
}

#[test]
fn quota_above_the_providers_is_refused() {
    let e = refused(
        &GOOD.replace("region: ap-guangzhou", "region: ap-guangzhou\n    max_requests_per_second: 21"),
    );
    assert!(e.reason.contains("1 to 20"), "{e}");
    assert_eq!(e.line, Some(7));
}

#[test]
fn unknown_regions_warn_but_load() {
    let c = parse(&GOOD.replace("ap-guangzhou", "eu-frankfurt")).unwrap();
    assert_eq!(c.warnings.len(), 1);
}

#[test]
fn policy_files_load_in_sorted_order_and_a_name_defined_twice_names_both_places() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("policies.d");
    std::fs::create_dir(&d).unwrap();
    let policy = |name: &str, room: &str| {
        format!(
            "policies:\n  {name}:\n    provider: trtc\n    match: {{ room: '{room}' }}\n    max_duration: 5m\n    action: dismiss_room\n"
        )
    };
    std::fs::write(d.join("20-b.yaml"), policy("second", "b-*")).unwrap();
    std::fs::write(d.join("10-a.yaml"), policy("first", "a-*")).unwrap();
    std::fs::write(d.join("notes.txt"), "not a policy file").unwrap();
    let main = dir.path().join("callwarden.yaml");
    let text = GOOD.to_string() + "policy_files: [policies.d/*.yaml]\n";
    std::fs::write(&main, &text).unwrap();
    let c = Config::load(&main).unwrap();
    let names: Vec<&str> = c.policies.keys().map(String::as_str).collect();
    assert_eq!(names, ["consultation", "first", "second"], "main file first, then files in sorted order");
    assert_eq!(c.sources, [main.clone(), d.join("10-a.yaml"), d.join("20-b.yaml")]);
    assert_eq!(c.policies["second"].source, d.join("20-b.yaml"));

    std::fs::write(d.join("30-c.yaml"), "# a comment\n".to_string() + &policy("first", "x")).unwrap();
    let e = Config::load(&main).unwrap_err();
    assert_eq!((e.file.clone(), e.line), (d.join("30-c.yaml"), Some(3)));
    let first = format!("{}:2", d.join("10-a.yaml").display());
    assert!(e.reason.contains("defined twice") && e.reason.contains(&first), "{e}");

    // An error inside a policy file points into that file.
    std::fs::write(d.join("30-c.yaml"), "policies:\n  third:\n    provider: nope\n").unwrap();
    let e = Config::load(&main).unwrap_err();
    assert_eq!(e.file, d.join("30-c.yaml"));
    assert!(e.line.is_some(), "{e}");
}

#[test]
fn notifications_keep_their_secret_out_of_debug_output() {
    let text = GOOD.to_string()
        + "notifications: { url: 'https://app.example.com/hook', secret: hush-hush-value-long }\n";
    let c = parse(&text).unwrap();
    let n = c.notifications.as_ref().unwrap();
    assert_eq!(n.secret.expose(), "hush-hush-value-long");
    assert!(!format!("{c:?}").contains("hush-hush"));
    assert_eq!(c.time_zone, chrono_tz::Tz::UTC);
}

#[test]
fn a_trtc_application_with_its_own_callback_key_uses_it_and_the_rest_the_shared_one() {
    let text = GOOD.replace(
        "    secret_key: not-a-real-key\n",
        "    secret_key: not-a-real-key\n    callback_key: key-of-app-1400000001\n  \
         other:\n    kind: tencent-trtc\n    sdk_app_id: 1400000002\n    region: ap-guangzhou\n    \
         secret_id: AKIDtest\n    secret_key: not-a-real-key\n",
    ) + "listen: 127.0.0.1:8720\nwebhooks:\n  trtc:\n    callback_key: the-shared-callback-key\n";
    let keys = parse(&text).unwrap().trtc_callback_keys();
    let key = |app| keys.for_app(app).map(|k| k.expose().to_string());
    assert_eq!(key(1_400_000_001).as_deref(), Some("key-of-app-1400000001"));
    assert_eq!(key(1_400_000_002).as_deref(), Some("the-shared-callback-key"));
    assert_eq!(key(1_400_000_099).as_deref(), Some("the-shared-callback-key"));
    assert!(!keys.is_empty());
    // Without the shared key, only the application with its own key is taken.
    let alone = text.split("webhooks:").next().unwrap().to_string();
    let keys = parse(&alone).unwrap().trtc_callback_keys();
    assert!(keys.for_app(1_400_000_002).is_none() && keys.for_app(1_400_000_001).is_some());
    assert!(parse(GOOD).unwrap().trtc_callback_keys().is_empty());
}
