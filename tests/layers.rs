//! The layer table of `src/`, checked: every `crate::…` (and top-level
//! `super::…`) path in a file must name a module of a lower layer, or an
//! earlier module of the same layer. That rules out import cycles between
//! top-level modules, and a second check rules them out between the files
//! of one folder module (a file may always use its parent).
//!
//! ARCHITECTURE.md explains the layers; this test is the part that fails
//! when an import breaks them, naming the file and the import.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Layers from the bottom up; within a layer, a module may import only the
/// modules listed before it.
const LAYERS: &[(&str, &[&str])] = &[
    ("foundation", &["domain", "stats", "budget", "clock", "metrics", "telemetry", "systemd", "http_client"]),
    ("configuration", &["config"]),
    ("decisions", &["policy"]),
    ("adapters", &["store", "providers"]),
    ("services", &["intake", "skew", "lead", "scheduler", "enforce", "notify", "retention", "reload"]),
    ("edges", &["http", "sandbox", "daemon"]),
    ("applications", &["demo", "cli"]),
];

/// Position of a module: (layer, index within the layer).
fn position(module: &str) -> Option<(usize, usize)> {
    LAYERS
        .iter()
        .enumerate()
        .find_map(|(layer, (_, modules))| modules.iter().position(|m| *m == module).map(|i| (layer, i)))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file's code with comments and string literals blanked out, so doc
/// links and text never count as imports.
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let bytes: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let next = bytes.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < bytes.len() && bytes[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            i += 2;
            while i + 1 < bytes.len() && !(bytes[i] == '*' && bytes[i + 1] == '/') {
                i += 1;
            }
            i += 2;
        } else if c == 'r' && matches!(next, Some('"') | Some('#')) && !prev_is_ident(&bytes, i) {
            // Raw string: r"…", r#"…"#, r##"…"##.
            let mut j = i + 1;
            let mut hashes = 0;
            while j < bytes.len() && bytes[j] == '#' {
                hashes += 1;
                j += 1;
            }
            if bytes.get(j) == Some(&'"') {
                j += 1;
                'scan: while j < bytes.len() {
                    if bytes[j] == '"' && (0..hashes).all(|k| bytes.get(j + 1 + k) == Some(&'#')) {
                        j += 1 + hashes;
                        break 'scan;
                    }
                    j += 1;
                }
                out.push_str("\"\"");
                i = j;
            } else {
                out.push(c);
                i += 1;
            }
        } else if c == '"' {
            i += 1;
            while i < bytes.len() && bytes[i] != '"' {
                if bytes[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' && next.is_some() && bytes.get(i + 2) == Some(&'\'') {
            // A char literal such as '"'.
            out.push_str("' '");
            i += 3;
        } else if c == '\'' && next == Some('\\') {
            // An escaped char literal such as '\'' or '\u{1F600}'.
            let mut j = i + 3;
            while j < bytes.len() && bytes[j] != '\'' {
                j += 1;
            }
            out.push_str("' '");
            i = j + 1;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn prev_is_ident(chars: &[char], i: usize) -> bool {
    i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')
}

fn ident_at(code: &str, at: usize) -> String {
    code[at..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
}

/// The modules named right after `prefix` (`crate::x` or `crate::{x, y::z}`).
fn named_after(code: &str, prefix: &str) -> Vec<(String, usize)> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(pos) = code[from..].find(prefix) {
        let start = from + pos;
        from = start + prefix.len();
        if start > 0 && code[..start].chars().last().is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let line = code[..start].matches('\n').count() + 1;
        let rest = &code[from..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item_start = true;
            for (k, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if c.is_whitespace() => {}
                    _ if item_start && depth == 0 => {
                        item_start = false;
                        let name = ident_at(group, k);
                        if !name.is_empty() {
                            found.push((name, line));
                        }
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident_at(rest, 0);
            if !name.is_empty() {
                found.push((name, line));
            }
        }
    }
    found
}

struct SourceFile {
    /// Path relative to `src/`, e.g. `store/queue.rs`.
    rel: String,
    /// Top-level module, e.g. `store`.
    module: String,
    code: String,
}

fn sources() -> Vec<SourceFile> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    files.sort();
    files
        .into_iter()
        .filter_map(|path| {
            let rel = path.strip_prefix(&root).expect("under src/").to_string_lossy().replace('\\', "/");
            if rel == "lib.rs" || rel == "main.rs" {
                return None;
            }
            let module = rel.split('/').next().expect("a component").trim_end_matches(".rs").to_string();
            let code = code_only(&fs::read_to_string(&path).expect("readable source"));
            Some(SourceFile { rel, module, code })
        })
        .collect()
}

#[test]
fn every_module_of_src_has_a_place_in_the_layer_table() {
    let missing: BTreeSet<String> =
        sources().into_iter().map(|f| f.module).filter(|m| position(m).is_none()).collect();
    assert!(missing.is_empty(), "modules missing from the layer table in tests/layers.rs: {missing:?}");
}

#[test]
fn no_module_imports_from_a_layer_above_its_own() {
    let mut broken = Vec::new();
    for file in sources() {
        let Some(own) = position(&file.module) else { continue };
        let mut names = named_after(&file.code, "crate::");
        if !file.rel.contains('/') {
            // In a top-level file, `super::` is the crate root.
            names.extend(named_after(&file.code, "super::"));
        }
        for (name, line) in names {
            if name == file.module {
                continue;
            }
            let Some(target) = position(&name) else { continue };
            let allowed = target.0 < own.0 || (target.0 == own.0 && target.1 < own.1);
            if !allowed {
                broken.push(format!(
                    "src/{}:{line}: `{}` (layer {}) imports `crate::{name}` (layer {}{})",
                    file.rel,
                    file.module,
                    LAYERS[own.0].0,
                    LAYERS[target.0].0,
                    if target.0 == own.0 { ", listed after it" } else { "" },
                ));
            }
        }
    }
    assert!(broken.is_empty(), "imports that break the layer table:\n{}", broken.join("\n"));
}

/// Within one folder module (`store/`, `config/`, …) the files other than
/// the module's root must not form a cycle among themselves.
#[test]
fn the_files_of_a_folder_module_form_no_import_cycle() {
    let files = sources();
    // module -> file stem -> set of sibling stems it uses
    let mut graph: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for file in &files {
        let parts: Vec<&str> = file.rel.trim_end_matches(".rs").split('/').collect();
        if parts.len() < 2 {
            continue;
        }
        let stem = parts[1..].join("::");
        let siblings: BTreeSet<String> = files
            .iter()
            .filter(|f| f.module == file.module && f.rel.contains('/'))
            .map(|f| f.rel.trim_end_matches(".rs").split('/').nth(1).expect("a child").to_string())
            .collect();
        let mut uses = BTreeSet::new();
        for (name, _) in named_after(&file.code, &format!("crate::{}::", file.module))
            .into_iter()
            .chain(if parts.len() == 2 { named_after(&file.code, "super::") } else { Vec::new() })
        {
            if siblings.contains(&name) && name != parts[1] {
                uses.insert(name);
            }
        }
        graph.entry(file.module.clone()).or_default().insert(stem, uses);
    }
    for (module, edges) in &graph {
        // Depth-first search for a back edge.
        fn visit(
            node: &str,
            edges: &BTreeMap<String, BTreeSet<String>>,
            stack: &mut Vec<String>,
            done: &mut BTreeSet<String>,
        ) -> Option<Vec<String>> {
            if let Some(at) = stack.iter().position(|n| n == node) {
                let mut cycle = stack[at..].to_vec();
                cycle.push(node.to_string());
                return Some(cycle);
            }
            if done.contains(node) {
                return None;
            }
            stack.push(node.to_string());
            for next in edges.get(node).into_iter().flatten() {
                if let Some(cycle) = visit(next, edges, stack, done) {
                    return Some(cycle);
                }
            }
            stack.pop();
            done.insert(node.to_string());
            None
        }
        let mut done = BTreeSet::new();
        for node in edges.keys() {
            if let Some(cycle) = visit(node, edges, &mut Vec::new(), &mut done) {
                panic!("files of src/{module}/ import each other in a cycle: {}", cycle.join(" -> "));
            }
        }
    }
}

#[test]
fn the_checker_sees_grouped_imports_and_ignores_comments_and_strings() {
    let code = code_only(
        "use crate::{config::Config, store};\n// crate::demo\nlet s = \"crate::cli\";\nlet r = r#\"crate::http\"#;\nx(crate::scheduler::CHANGE_POLL);",
    );
    let names: Vec<String> = named_after(&code, "crate::").into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["config", "store", "scheduler"]);
}
