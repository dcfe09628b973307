//! House rules checked by the test suite: every Rust file starts with a `//!` line saying what it
//! is for, the engine folders (`issuance/`) import no I/O or wire crates, and the server's modules
//! form layers: no import cycles, no domain module reaching the service layer (`ca`) or above,
//! the issuance engine reaching no I/O even indirectly (see `ca-server/src/lib.rs`).

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

/// The service layer and everything built on it: domain modules must never reach these.
const SERVICE_AND_ABOVE: [&str; 11] = [
    "ca",
    "federation",
    "jobs",
    "tls",
    "istiod",
    "writers",
    "csr_signer",
    "root_configmap",
    "grpc",
    "http",
    "server",
];
/// Domain modules and leaves (no wire, no service).
const DOMAIN: [&str; 15] = [
    "untrusted",
    "external_ca",
    "report",
    "spiffe",
    "serial",
    "keys",
    "pem",
    "config",
    "metrics",
    "issuance",
    "authority",
    "audit",
    "revocation",
    "trust",
    "request_id",
];
/// What the issuance engine and the values it signs with may not reach, even indirectly: it
/// does no I/O.
const IO: [&str; 4] = ["store", "kubernetes", "authn", "authz"];

/// The top-level module a source file of `ca-server/src` belongs to (`None` for the crate
/// roots).
fn top_module(relative: &Path) -> Option<String> {
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_owned())
}

/// Module dependency graph from every `crate::<module>` path in code (not only `use` lines;
/// comments are skipped).
fn module_graph(
    files: &[(PathBuf, String)],
) -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let mut graph: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    for (relative, text) in files {
        let Some(from) = top_module(relative) else {
            continue;
        };
        let edges = graph.entry(from.clone()).or_default();
        for line in text.lines() {
            let code = line.split("//").next().unwrap_or("");
            for (at, _) in code.match_indices("crate::") {
                let rest = &code[at + "crate::".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit())
                    .collect();
                if !name.is_empty() && name != from {
                    edges.insert(name);
                }
            }
            // `use crate::{a, b::c}` groups.
            if let Some(group) = code.split("crate::{").nth(1) {
                for item in group.split(',') {
                    let name: String = item
                        .trim()
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                        .collect();
                    if !name.is_empty() && name != from {
                        edges.insert(name);
                    }
                }
            }
        }
    }
    graph
}

/// Every module reachable from `start` (not counting `start` itself unless a cycle returns).
fn reachable(
    graph: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
    start: &str,
) -> std::collections::BTreeSet<String> {
    let mut seen = std::collections::BTreeSet::new();
    let mut stack: Vec<&str> = graph
        .get(start)
        .map(|e| e.iter().map(String::as_str).collect())
        .unwrap_or_default();
    while let Some(next) = stack.pop() {
        if seen.insert(next.to_owned())
            && let Some(edges) = graph.get(next)
        {
            stack.extend(edges.iter().map(String::as_str));
        }
    }
    seen
}

/// What breaks the layering: import cycles between top-level modules, domain modules reaching
/// the service layer or above, the issuance engine (and what it signs with) reaching I/O.
fn layering_violations(files: &[(PathBuf, String)]) -> Vec<String> {
    let graph = module_graph(files);
    let mut violations = Vec::new();
    for module in graph.keys() {
        let reach = reachable(&graph, module);
        if reach.contains(module) {
            let via: Vec<_> = graph[module]
                .iter()
                .filter(|m| reachable(&graph, m).contains(module))
                .collect();
            violations.push(format!(
                "import cycle: {module} -> {via:?} -> ... -> {module}"
            ));
        }
        if DOMAIN.contains(&module.as_str()) {
            for above in SERVICE_AND_ABOVE {
                if reach.contains(above) {
                    violations.push(format!("domain module {module} reaches {above}"));
                }
            }
        }
        if matches!(module.as_str(), "issuance" | "authority") {
            for io in IO {
                if reach.contains(io) {
                    violations.push(format!("{module} reaches {io} (it must do no I/O)"));
                }
            }
        }
    }
    violations
}

fn server_sources() -> Vec<(PathBuf, String)> {
    let root = workspace().join("ca-server/src");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).unwrap();
            (f.strip_prefix(&root).unwrap().to_owned(), text)
        })
        .collect()
}

#[test]
fn modules_form_layers_without_cycles() {
    let files = server_sources();
    let graph = module_graph(&files);
    assert!(graph.len() > 15, "{graph:?}");
    assert!(graph["ca"].contains("issuance"), "the graph sees imports");
    let violations = layering_violations(&files);
    assert!(violations.is_empty(), "{violations:#?}");
}

#[test]
fn the_layering_check_catches_planted_violations() {
    let plant = |path: &str, text: &str| {
        let mut files = server_sources();
        files.push((PathBuf::from(path), text.to_owned()));
        layering_violations(&files)
    };
    // A domain module calling up into the service layer (also a cycle: ca uses trust).
    let found = plant(
        "trust/planted.rs",
        "//! planted\nfn f(ca: &crate::ca::Ca) {}\n",
    );
    assert!(
        found
            .iter()
            .any(|v| v.contains("domain module trust reaches ca")),
        "{found:?}"
    );
    assert!(
        found.iter().any(|v| v.contains("import cycle: trust")),
        "{found:?}"
    );
    // A cycle below the service layer, written as a grouped import.
    let found = plant(
        "store/planted.rs",
        "//! planted\nuse crate::{spiffe, ca};\n",
    );
    assert!(
        found.iter().any(|v| v.contains("import cycle: store")),
        "{found:?}"
    );
    // The engine reaching I/O indirectly.
    let found = plant(
        "issuance/planted.rs",
        "//! planted\nuse crate::authn::mtls;\n",
    );
    assert!(
        found.iter().any(|v| v.contains("issuance reaches authn")),
        "{found:?}"
    );
}
