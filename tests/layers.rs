//! The layers of `src/` (ARCHITECTURE.md): each top-level module imports only from the
//! layers below its own, and the modules inside one do not import each other round a loop.
//! Read from the `crate::` paths of the source, comments included (a doc link is a
//! reference too).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The top-level modules by floor, from the bottom. Two modules of one floor may not import
/// each other either.
const FLOORS: &[&[&str]] = &[
    &["domain"],
    &["settings", "metrics"],
    &["metadata", "storage"],
    &["upload", "jobs", "auth"],
    &["http"],
    &["startup"],
];

fn floor(module: &str) -> Option<usize> {
    FLOORS.iter().position(|floor| floor.contains(&module))
}

fn sources(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// The module path of a file under `src/`: `http/routes/upload.rs` is `["http", "routes"]`
/// plus `upload`; `mod.rs` names its folder.
fn module_of(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let file = parts.pop().unwrap();
    let stem = file.trim_end_matches(".rs");
    if stem != "mod" {
        parts.push(stem.to_owned());
    }
    parts
}

/// Every `crate::a::b` path in `text`, as its segments (lower-case identifiers only: the
/// modules, not the items they hold).
fn crate_paths(text: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `media_crate::`, not a path of this crate
        }
        let mut segments = Vec::new();
        let mut tail = rest;
        loop {
            let end = tail
                .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(tail.len());
            if end == 0 {
                break;
            }
            segments.push(tail[..end].to_owned());
            tail = &tail[end..];
            match tail.strip_prefix("::") {
                Some(next) => tail = next,
                None => break,
            }
        }
        if !segments.is_empty() {
            paths.push(segments);
        }
    }
    paths
}

struct Source {
    module: Vec<String>,
    paths: Vec<Vec<String>>,
}

fn read_sources() -> Vec<Source> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    files.sort();
    files
        .iter()
        .map(|path| Source {
            module: module_of(path.strip_prefix(&root).unwrap()),
            paths: crate_paths(&std::fs::read_to_string(path).unwrap()),
        })
        .collect()
}

/// The imports that break the floors, as `file module -> imported module` lines.
fn imports_against_the_floors(sources: &[Source]) -> Vec<String> {
    let mut wrong = Vec::new();
    for source in sources {
        let Some(own) = source.module.first() else {
            continue; // lib.rs
        };
        if own == "main" || own == "lib" {
            continue;
        }
        let own_floor = floor(own).unwrap_or_else(|| {
            panic!("src/{own} is on no floor: add it to FLOORS and to ARCHITECTURE.md")
        });
        for path in &source.paths {
            let target = &path[0];
            if target == own {
                continue;
            }
            let allowed = floor(target).is_some_and(|f| f < own_floor);
            if !allowed {
                wrong.push(format!(
                    "{} -> crate::{}",
                    source.module.join("::"),
                    path.join("::")
                ));
            }
        }
    }
    wrong.sort();
    wrong.dedup();
    wrong
}

/// A loop among the modules inside one top-level module (`http::routes` -> `http::form` ->
/// ...), if there is one: imports between the second-level modules of each folder.
fn a_loop_inside_a_module(sources: &[Source]) -> Option<Vec<String>> {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for source in sources {
        let (Some(top), Some(own)) = (source.module.first(), source.module.get(1)) else {
            continue;
        };
        let from = format!("{top}::{own}");
        for path in &source.paths {
            if path.len() >= 2 && &path[0] == top && &path[1] != own {
                let to = format!("{top}::{}", path[1]);
                edges.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    // Depth-first search for a back edge.
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, bool>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(node) {
            Some(true) => {
                let start = stack.iter().position(|n| n == node).unwrap();
                let mut found = stack[start..].to_vec();
                found.push(node.to_owned());
                return Some(found);
            }
            Some(false) => return None,
            None => {}
        }
        state.insert(node.to_owned(), true);
        stack.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, edges, state, stack) {
                return Some(found);
            }
        }
        stack.pop();
        state.insert(node.to_owned(), false);
        None
    }
    let mut state = BTreeMap::new();
    for node in edges.keys() {
        if let Some(found) = visit(node, &edges, &mut state, &mut Vec::new()) {
            return Some(found);
        }
    }
    None
}

#[test]
fn every_module_imports_only_from_the_floors_below_its_own() {
    let sources = read_sources();
    assert!(sources.len() > 20, "the sources were found");
    let wrong = imports_against_the_floors(&sources);
    assert!(
        wrong.is_empty(),
        "imports against the floors of ARCHITECTURE.md:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn no_modules_import_each_other_round_a_loop() {
    let sources = read_sources();
    if let Some(found) = a_loop_inside_a_module(&sources) {
        panic!("modules that import each other: {}", found.join(" -> "));
    }
}

/// The checks see what they are meant to: an import up, one across a floor, a loop.
#[test]
fn the_checks_find_what_breaks_the_floors() {
    let source = |module: &str, text: &str| Source {
        module: module.split('/').map(str::to_owned).collect(),
        paths: crate_paths(text),
    };
    let sources = [
        source("upload/ingest", "use crate::http::error::meta;"),
        source("auth/keys", "/// see [`crate::upload::limits`]"),
        source(
            "metadata/sqlite",
            "use crate::domain::{AccountId, ApiError};",
        ),
        source("http/form", "let x = crate::http::routes::AppState;"),
        source("http/routes", "use crate::http::form::file_part;"),
    ];
    assert_eq!(
        imports_against_the_floors(&sources),
        vec![
            "auth::keys -> crate::upload::limits".to_owned(),
            "upload::ingest -> crate::http::error::meta".to_owned(),
        ]
    );
    assert_eq!(
        a_loop_inside_a_module(&sources),
        Some(vec![
            "http::form".to_owned(),
            "http::routes".to_owned(),
            "http::form".to_owned(),
        ])
    );
    assert!(crate_paths("media_crate::x").is_empty());
}
