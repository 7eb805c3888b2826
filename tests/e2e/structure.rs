//! The code's shape, checked like behaviour: no import cycle between the modules of a crate
//! (`crate::x` in `y` and `crate::y` in `x`, directly or through others). A cycle means two
//! modules cannot be read, tested or changed one at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Cycles that exist and are being taken apart: nothing may join them, and no other cycle may
/// appear. When one is gone, remove it here. (The last, gateway ↔ signin ↔ resume, went when
/// what they share moved to `state`.)
const KNOWN: &[(&str, &[&str])] = &[];

/// The modules a source file names through one of `prefixes` (`crate::` at a crate's root;
/// `super::` and `crate::d::` in a module directory `d`), in code, not in comments.
fn references(src: &str, modules: &BTreeSet<String>, prefixes: &[String]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    // Unit tests may reach anywhere.
    let code = src.split("#[cfg(test)]\nmod tests").next().unwrap_or(src);
    let code: String = code
        .lines()
        .map(str::trim_start)
        .filter(|l| !l.starts_with("//"))
        .map(|l| l.split(" // ").next().unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    for prefix in prefixes {
        let line = code.as_str();
        for (i, _) in line.match_indices(prefix.as_str()) {
            // `crate::x` inside `other_crate::x` is no reference.
            if line[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let rest = &line[i + prefix.len()..];
            if let Some(group) = rest.strip_prefix('{') {
                // `use crate::{a, b::{c, d}}`: the first segment of each top-level path.
                let mut depth = 1;
                let mut start = true;
                let mut word = String::new();
                for c in group.chars() {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        ',' if depth == 1 => start = true,
                        c if (c.is_alphanumeric() || c == '_') && depth == 1 && start => {
                            word.push(c)
                        }
                        _ => {
                            if !word.is_empty() {
                                out.insert(std::mem::take(&mut word));
                            }
                            if !c.is_whitespace() {
                                start = false;
                            }
                        }
                    }
                    if depth == 0 {
                        break;
                    }
                }
                if !word.is_empty() {
                    out.insert(word);
                }
            } else {
                let word: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                out.insert(word);
            }
        }
    }
    out.retain(|m| modules.contains(m));
    out
}

/// The strongly connected components with more than one module (Tarjan).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<BTreeSet<String>> {
    struct T<'a> {
        g: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<BTreeSet<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let i = t.index.len();
        t.index.insert(v, i);
        t.low.insert(v, i);
        t.stack.push(v);
        t.on.insert(v);
        for w in t.g.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = BTreeSet::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                comp.insert(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        g: graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

/// The module graph of one directory: each `.rs` file (but `lib.rs`, `main.rs` and `mod.rs`,
/// the roots) and each subdirectory with a `mod.rs` is a node; a subdirectory's references are
/// those of every file in it. `prefixes` say how a file there names a sibling.
fn graph_with(dir: &Path, prefixes: &[String]) -> BTreeMap<String, BTreeSet<String>> {
    let mut nodes: BTreeMap<String, Vec<std::path::PathBuf>> = BTreeMap::new();
    for p in std::fs::read_dir(dir)
        .expect("source directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
    {
        let stem = p
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if p.is_dir() && p.join("mod.rs").exists() {
            nodes.insert(stem, rust_files(&p));
        } else if p.extension().is_some_and(|x| x == "rs")
            && !["lib", "main", "mod"].contains(&stem.as_str())
        {
            nodes.insert(stem, vec![p]);
        }
    }
    let modules: BTreeSet<String> = nodes.keys().cloned().collect();
    nodes
        .iter()
        .map(|(m, files)| {
            let mut refs = BTreeSet::new();
            for f in files {
                let src = std::fs::read_to_string(f).unwrap_or_default();
                refs.extend(references(&src, &modules, prefixes));
            }
            refs.remove(m);
            (m.clone(), refs)
        })
        .collect()
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for p in std::fs::read_dir(dir)
        .expect("module directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
    {
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out
}

/// The module graph of one crate's `src/` (top-level modules).
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    graph_with(src, &["crate::".to_string()])
}

/// The graphs of each module directory under `src/` (`endpoints/`, `proxy/`): its submodules
/// name each other through `super::` or `crate::d::`.
fn directory_graphs(src: &Path) -> Vec<(String, BTreeMap<String, BTreeSet<String>>)> {
    let mut out = Vec::new();
    for p in std::fs::read_dir(src)
        .expect("crate src")
        .filter_map(|e| e.ok().map(|e| e.path()))
    {
        if p.is_dir() && p.join("mod.rs").exists() {
            let d = p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let prefixes = ["super::".to_string(), format!("crate::{d}::")];
            out.push((d, graph_with(&p, &prefixes)));
        }
    }
    out
}

#[test]
fn no_module_imports_itself_through_others() {
    let root = aalgate_tests::workspace().join("crates");
    let mut problems = Vec::new();
    let mut seen_known = BTreeSet::new();
    let mut crates: Vec<_> = std::fs::read_dir(&root)
        .expect("crates/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    crates.sort();
    for dir in crates {
        let name = dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let src = dir.join("src");
        let mut found: Vec<BTreeSet<String>> = cycles(&graph(&src));
        for (d, g) in directory_graphs(&src) {
            found.extend(
                cycles(&g)
                    .into_iter()
                    .map(|c| c.into_iter().map(|m| format!("{d}::{m}")).collect()),
            );
        }
        for cycle in found {
            let known = KNOWN.iter().any(|(c, mods)| {
                *c == name && cycle == mods.iter().map(|m| m.to_string()).collect()
            });
            if known {
                seen_known.insert(name.clone());
            } else {
                problems.push(format!("{name}: modules {cycle:?} import each other"));
            }
        }
    }
    for (c, mods) in KNOWN {
        if !seen_known.contains(*c) {
            problems.push(format!(
                "{c}: the cycle {mods:?} is gone: remove it from KNOWN in tests/e2e/structure.rs"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The proxy (`proxy`: pingora's phases) calls the endpoints; nothing calls back into it.
/// What both use lives in `state` and `http`.
#[test]
fn nothing_imports_the_proxy() {
    let g = graph(&aalgate_tests::workspace().join("crates/aalgate/src"));
    let users: Vec<&String> = g
        .iter()
        .filter(|(_, refs)| refs.contains("proxy"))
        .map(|(m, _)| m)
        .collect();
    assert!(users.is_empty(), "modules importing proxy: {users:?}");
}

#[test]
fn the_cycle_check_sees_cycles() {
    let dir = tempfile::tempdir().unwrap();
    let w = |f: &str, s: &str| std::fs::write(dir.path().join(f), s).unwrap();
    w("lib.rs", "pub mod a;\npub mod b;\npub mod c;\npub mod d;\n");
    w("a.rs", "use crate::{b::X, d};\n// crate::c in a comment\n");
    w("b.rs", "fn f() { crate::c::g() }\n");
    w(
        "c.rs",
        "use crate::{\n    a::{self, Y},\n};\nfn g() {} // crate::d\n",
    );
    w("d.rs", "#[cfg(test)]\nmod tests {\n    use crate::a;\n}\n");
    let found = cycles(&graph(dir.path()));
    let abc: BTreeSet<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    assert_eq!(found, vec![abc.clone()]);

    // A module directory: its files count for it at the root, and its submodules form their
    // own graph.
    std::fs::create_dir(dir.path().join("e")).unwrap();
    w("e/mod.rs", "mod x;\nmod y;\n");
    w("e/x.rs", "use super::y::Z;\nuse other_crate::d;\n");
    w("e/y.rs", "fn f() { crate::e::x::g(); crate::d::h() }\n");
    w("d.rs", "use crate::e;\n");
    let ed: BTreeSet<String> = ["d", "e"].iter().map(|s| s.to_string()).collect();
    let mut found = cycles(&graph(dir.path()));
    found.sort();
    assert_eq!(found, vec![abc, ed]);
    let sub = directory_graphs(dir.path());
    assert_eq!(sub.len(), 1);
    let xy: BTreeSet<String> = ["x", "y"].iter().map(|s| s.to_string()).collect();
    assert_eq!(cycles(&sub[0].1), vec![xy]);
}
