//! The controller's folders are layers, each using only those before it (policy, machines,
//! state, daemon, http), and no module of a layer imports another in a circle. Read from
//! the source: every `crate::layer::module` path and every `super::sibling::` path is an
//! edge (a child's `use super::*` of its own folder is not: it reaches only what the folder
//! shares on purpose, and a test below checks that folders share no sibling's items).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const LAYERS: [&str; 5] = ["policy", "machines", "state", "daemon", "http"];

fn rank(layer: &str) -> Option<usize> {
    LAYERS.iter().position(|l| *l == layer)
}

/// Every library source file (not the binaries) with its module path.
fn modules(src: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![src.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir).expect("read src") {
            let p: PathBuf = e.expect("entry").path();
            let rel = p.strip_prefix(src).expect("under src").to_path_buf();
            if rel.starts_with("bin") {
                continue;
            }
            if p.is_dir() {
                todo.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let mut parts: Vec<String> = rel
                    .iter()
                    .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string())
                    .collect();
                if parts.last().is_some_and(|l| l == "mod" || l == "lib") {
                    parts.pop();
                }
                out.insert(parts.join("::"), std::fs::read_to_string(&p).expect("read"));
            }
        }
    }
    out
}

/// The modules `text` (of module `me`) names: `crate::a::b` and `super::b::`.
fn edges(me: &str, text: &str, known: &BTreeMap<String, String>) -> BTreeSet<String> {
    // Code only: a doc comment may point anywhere.
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let text = code.as_str();
    let mut out = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + 7..];
        let a = ident(rest);
        let b = rest
            .get(a.len()..)
            .and_then(|r| r.strip_prefix("::"))
            .map(ident)
            .unwrap_or_default();
        let deep = format!("{a}::{b}");
        out.insert(if known.contains_key(&deep) { deep } else { a });
    }
    let parent = me.rsplit_once("::").map_or("", |(p, _)| p).to_string();
    for (i, _) in text.match_indices("super::") {
        let b = ident(&text[i + 7..]);
        let sib = format!("{parent}::{b}");
        if !b.is_empty() && known.contains_key(&sib) {
            out.insert(sib);
        }
    }
    out.remove(me);
    out
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let m = modules(&src);
    m.iter()
        .map(|(k, t)| (k.clone(), edges(k, t, &m)))
        .collect()
}

#[test]
fn layers_only_use_the_layers_before_them() {
    let mut upward = Vec::new();
    for (from, tos) in graph() {
        let Some(rf) = rank(from.split("::").next().unwrap_or("")) else {
            continue;
        };
        for to in tos {
            if let Some(rt) = rank(to.split("::").next().unwrap_or("")) {
                if rt > rf {
                    upward.push(format!("{from} -> {to}"));
                }
            }
        }
    }
    assert!(upward.is_empty(), "upward imports:\n{}", upward.join("\n"));
}

#[test]
fn no_module_imports_another_in_a_circle() {
    let g = graph();
    // Depth-first search for a back edge.
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(n) {
            Some(1) => {
                let at = path.iter().position(|p| p == n).unwrap_or(0);
                let mut cycle = path[at..].to_vec();
                cycle.push(n.to_string());
                return Some(cycle);
            }
            Some(_) => return None,
            None => {}
        }
        state.insert(n.to_string(), 1);
        path.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            // A folder's own module (its mod.rs) is its children's parent, not a peer.
            if n.starts_with(&format!("{m}::")) {
                continue;
            }
            if let Some(c) = visit(m, g, state, path) {
                return Some(c);
            }
        }
        path.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in g.keys() {
        if let Some(c) = visit(n, &g, &mut state, &mut Vec::new()) {
            panic!("import circle: {}", c.join(" -> "));
        }
    }
}

#[test]
fn the_http_folder_shares_only_its_helpers_with_its_resources() {
    // Resource files reach each other only through `read`, `error`, `auth` and `page`: the folder's
    // mod.rs imports nothing of a resource file.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http/mod.rs");
    let text = std::fs::read_to_string(src).expect("read");
    for line in text
        .lines()
        .filter(|l| l.starts_with("use ") || l.starts_with("pub use "))
    {
        let target = line
            .trim_start_matches("pub ")
            .trim_start_matches("use ")
            .split("::")
            .next()
            .unwrap_or("");
        let shared = [
            "auth",
            "error",
            "read",
            "page",
            "runs",
            "std",
            "axum",
            "ferry_wire",
            "serde",
            "serde_json",
            "crate",
        ];
        assert!(
            shared.contains(&target),
            "http/mod.rs shares a resource's items: {line}"
        );
    }
}
