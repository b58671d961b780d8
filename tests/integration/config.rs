//! `check` and `run` on good and bad configuration files.

use std::path::Path;

use callwarden::sandbox::{SANDBOX_SECRET_ID, SANDBOX_SECRET_KEY};

use crate::helpers::{config_text, run_cli};

/// A variant of the good file, and the line (text) that is wrong in it.
struct Broken {
    what: &'static str,
    text: String,
    bad_line: &'static str,
}

fn broken_variants(good: &str) -> Vec<Broken> {
    let variant = |what, from: &str, to: &str, bad_line| {
        assert!(good.contains(from), "the base config has {from:?}");
        Broken { what, text: good.replacen(from, to, 1), bad_line }
    };
    vec![
        variant(
            "an unknown key",
            "    region: ap-guangzhou\n",
            "    colour: red\n    region: ap-guangzhou\n",
            "    colour: red",
        ),
        variant(
            "an unknown provider in a policy",
            "    provider: trtc\n",
            "    provider: nope\n",
            "    provider: nope",
        ),
        variant(
            "a zero duration",
            "    max_duration: 20m\n",
            "    max_duration: 0s\n",
            "    max_duration: 0s",
        ),
        variant(
            "a rate above the provider's quota",
            "    max_requests_per_second: 19\n",
            "    max_requests_per_second: 25\n",
            "    max_requests_per_second: 25",
        ),
    ]
}

fn line_of(text: &str, line: &str) -> usize {
    text.lines().position(|l| l == line).expect("the bad line is in the file") + 1
}

#[tokio::test]
async fn invalid_files_are_refused_by_check_and_run_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = config_text(&dir.path().join("cw.db"), "http://127.0.0.1:9", SANDBOX_SECRET_KEY);
    for broken in broken_variants(&good) {
        let path = dir.path().join("broken.yaml");
        std::fs::write(&path, &broken.text).unwrap();
        let expected = format!("{}:{}:", path.display(), line_of(&broken.text, broken.bad_line));
        for command in ["check", "run"] {
            let out = run_cli(&path, &[command]).await;
            assert_eq!(out.code, Some(2), "{command} with {}: {out:?}", broken.what);
            assert!(
                out.stderr.contains(&expected),
                "{command} with {}: want {expected:?} in {out:?}",
                broken.what
            );
        }
    }
    assert!(!dir.path().join("cw.db").exists(), "nothing may start on a bad configuration");
}

#[tokio::test]
async fn check_prints_the_policies_and_never_the_secret_key() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "k3y-that-must-never-be-printed";
    let path = dir.path().join("callwarden.yaml");
    std::fs::write(&path, config_text(Path::new("cw.db"), "http://127.0.0.1:9", secret)).unwrap();

    let out = run_cli(&path, &["check"]).await.expect_ok("check");
    assert!(
        out.stdout.contains("policy consultation: provider trtc, max_duration 30m, action dismiss_room"),
        "{out:?}"
    );
    assert!(
        out.stdout.contains("policy paid-chat: provider trtc, max_duration 20m, action remove_user"),
        "{out:?}"
    );
    assert!(
        out.stdout.contains(&dir.path().join("cw.db").display().to_string()),
        "database resolved: {out:?}"
    );
    for leaked in [secret, SANDBOX_SECRET_ID] {
        assert!(!out.stdout.contains(leaked) && !out.stderr.contains(leaked), "{leaked:?} printed: {out:?}");
    }
}
