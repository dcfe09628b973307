//! House rules checked by the test suite: every Rust file starts with a `//!` line saying what it
//! is for, and the engine folders (`issuance/`) import no I/O or wire crates.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

#[test]
fn every_rust_file_starts_with_a_module_doc() {
    let mut files = Vec::new();
    for dir in [
        "ca-server/src",
        "ca-client/src",
        "proto/src",
        "tests/src",
        "tests/tests",
    ] {
        rust_files(&workspace().join(dir), &mut files);
    }
    files.push(workspace().join("proto/build.rs"));
    assert!(files.len() > 30);
    let missing: Vec<_> = files
        .iter()
        .filter(|f| !std::fs::read_to_string(f).unwrap().starts_with("//!"))
        .collect();
    assert!(
        missing.is_empty(),
        "files without a //! first line: {missing:?}"
    );
}

#[test]
fn the_engine_does_no_io() {
    let mut files = Vec::new();
    rust_files(&workspace().join("ca-server/src/issuance"), &mut files);
    assert!(!files.is_empty());
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for banned in [
            "tokio",
            "sqlx",
            "tonic",
            "axum",
            "reqwest",
            "crate::store",
            "std::fs",
            "std::net",
        ] {
            assert!(
                !text
                    .lines()
                    .any(|l| l.trim_start().starts_with("use ") && l.contains(banned)),
                "{} imports {banned}",
                file.display()
            );
        }
    }
}
