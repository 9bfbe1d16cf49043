//! The library's modules are layers, each using only the layers below it (the README's
//! "Layout" section): a newcomer can read them bottom-up, and no change can bring a cycle
//! back unnoticed. Test code may reach across layers; the library code may not.

use std::fs;
use std::path::{Path, PathBuf};

/// Bottom to top. `error` and `io` are the `mtseg-io` crate (re-exported), below everything
/// here; Cargo keeps that crate from using this one.
const LAYERS: &[&str] = &[
    "error",
    "io",
    "device",
    "datasets",
    "preprocess",
    "report",
    "phantoms",
    "model",
    "data",
    "engine",
    "infer",
    "eval",
    "train",
    "experiment",
];

/// Modules outside the layers: test helpers.
const TEST_ONLY: &[&str] = &["test_support"];

fn rust_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        let mut entries: Vec<_> = fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for entry in entries {
            rust_files(&entry, out);
        }
    } else if path.extension().is_some_and(|e| e == "rs")
        && path.file_name().is_some_and(|n| n != "tests.rs")
    {
        out.push(path.to_path_buf());
    }
}

/// The library code of a file: up to its test module, without comments.
fn library_code(text: &str) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().collect();
    let end = lines
        .windows(2)
        .position(|w| w[0].trim() == "#[cfg(test)]" && w[1].trim_start().starts_with("mod "))
        .unwrap_or(lines.len());
    lines[..end]
        .iter()
        .copied()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect()
}

/// The top-level modules a line names through `crate::`.
fn uses(line: &str) -> impl Iterator<Item = &str> {
    line.match_indices("crate::").map(move |(i, m)| {
        let rest = &line[i + m.len()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        &rest[..end]
    })
}

#[test]
fn every_module_uses_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut violations = Vec::new();
    for entry in fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if name == "lib" || TEST_ONLY.contains(&name.as_str()) {
            continue;
        }
        let Some(rank) = LAYERS.iter().position(|l| *l == name) else {
            violations.push(format!("module `{name}` has no place in LAYERS"));
            continue;
        };
        let mut files = Vec::new();
        rust_files(&path, &mut files);
        for file in files {
            let text = fs::read_to_string(&file).unwrap();
            for line in library_code(&text) {
                for used in uses(line) {
                    if used.is_empty() || used == name || TEST_ONLY.contains(&used) {
                        continue;
                    }
                    match LAYERS.iter().position(|l| *l == used) {
                        Some(r) if r < rank => {}
                        Some(_) => violations.push(format!(
                            "{}: `{name}` uses `{used}`, a layer above it: {}",
                            file.strip_prefix(&src).unwrap().display(),
                            line.trim()
                        )),
                        None if matches!(used, "Error" | "Result") => {}
                        None => violations.push(format!(
                            "{}: `crate::{used}` is not a layer",
                            file.strip_prefix(&src).unwrap().display()
                        )),
                    }
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "layer violations:\n{}",
        violations.join("\n")
    );
}
