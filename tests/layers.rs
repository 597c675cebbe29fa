//! The architecture, checked: the crate's top-level modules form no import cycle,
//! and only the top layers (the HTTP handlers, the CLI, the server and the wiring
//! itself) name the wiring type `App`. Reads the sources: `crate::x` references
//! outside unit-test modules are the edges.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The modules allowed to name `App`.
const TOP_LAYERS: &[&str] = &["app", "http", "cli", "server"];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/auth/session.rs` → `auth`; `src/app.rs` → `app`; lib.rs and main.rs → None.
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?.to_owned();
    let name = first.trim_end_matches(".rs").to_owned();
    (name != "lib" && name != "main").then_some(name)
}

/// The file's code without its unit tests (they may reach anywhere).
fn without_tests(text: &str) -> &str {
    match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    }
}

/// Every `crate::<module>` the code names, comments left out.
fn referenced_modules(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in code.lines() {
        let line = line.trim_start();
        if line.starts_with("//") {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name.chars().next().is_some_and(|c| c.is_ascii_lowercase()) {
                out.insert(name);
            }
        }
    }
    out
}

/// Whether the code names the type `App` (a path to it, or the bare name not
/// behind `::`, which would be some enum's `App` variant).
fn names_app(code: &str) -> bool {
    code.lines().any(|line| {
        let line = line.split("//").next().unwrap_or_default();
        if line.contains("crate::app") || line.contains("crate::App") {
            return true;
        }
        let bytes = line.as_bytes();
        line.match_indices("App").any(|(i, _)| {
            let before = &line[..i];
            let after = bytes.get(i + 3).copied();
            let word_start = !before.ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_');
            // `App(` is an enum variant's definition: the struct has no such form.
            let word_end =
                !after.is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'(');
            word_start && word_end && !before.ends_with("::")
        })
    })
}

fn graph() -> (BTreeMap<String, BTreeSet<String>>, Vec<String>) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut app_outside_top = Vec::new();
    for file in &files {
        let Some(module) = top_module(&src, file) else {
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        let code = without_tests(&text);
        let targets = edges.entry(module.clone()).or_default();
        for target in referenced_modules(code) {
            if target != module {
                targets.insert(target);
            }
        }
        if !TOP_LAYERS.contains(&module.as_str()) && names_app(code) {
            app_outside_top.push(file.strip_prefix(&src).unwrap().display().to_string());
        }
    }
    (edges, app_outside_top)
}

/// A cycle through the graph, if there is one (depth-first search).
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(node) {
            Some(2) => return None,
            Some(1) => {
                let start = path.iter().position(|n| n == node).unwrap_or(0);
                let mut cycle = path[start..].to_vec();
                cycle.push(node.to_owned());
                return Some(cycle);
            }
            _ => {}
        }
        state.insert(node.to_owned(), 1);
        path.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, state, path) {
                return Some(cycle);
            }
        }
        path.pop();
        state.insert(node.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in edges.keys() {
        if let Some(cycle) = visit(node, edges, &mut state, &mut Vec::new()) {
            return Some(cycle);
        }
    }
    None
}

#[test]
fn top_level_modules_form_no_import_cycle() {
    let (edges, _) = graph();
    assert!(
        edges.len() > 10,
        "the source walk found the modules: {edges:?}"
    );
    if let Some(cycle) = find_cycle(&edges) {
        panic!("import cycle: {}", cycle.join(" → "));
    }
}

#[test]
fn only_the_top_layers_name_the_wiring_type() {
    let (_, offenders) = graph();
    assert!(
        offenders.is_empty(),
        "modules below {TOP_LAYERS:?} name `App`: {offenders:?}"
    );
}

#[test]
fn the_checks_catch_what_they_look_for() {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    edges.entry("a".into()).or_default().insert("b".into());
    edges.entry("b".into()).or_default().insert("c".into());
    assert_eq!(find_cycle(&edges), None);
    edges.entry("c".into()).or_default().insert("a".into());
    assert_eq!(
        find_cycle(&edges),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    assert!(names_app("fn f(app: &App) {}"));
    assert!(names_app("use crate::app::App;"));
    assert!(!names_app("struct AppFailure; // App"));
    assert!(!names_app("SpawnError::App(failure)"));
    assert!(!names_app("    App(AppFailure),"));
    assert!(names_app("Arc<App>"));
    assert_eq!(
        referenced_modules("use crate::store::{Store, User};\n// crate::nope\nx(crate::ids::Slug)"),
        ["ids".to_owned(), "store".to_owned()].into_iter().collect()
    );
}
