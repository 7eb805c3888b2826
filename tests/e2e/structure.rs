//! The code's shape, checked like behaviour: no import cycle between the modules of a crate
//! (`crate::x` in `y` and `crate::y` in `x`, directly or through others). A cycle means two
//! modules cannot be read, tested or changed one at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Cycles that exist and are being taken apart: nothing may join them, and no other cycle may
/// appear. When one is gone, remove it here. (The last, gateway ↔ signin ↔ resume, went when
/// what they share moved to `state`.)
const KNOWN: &[(&str, &[&str])] = &[];

/// The modules a source file names through `crate::` (in code, not in comments).
fn references(src: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
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
    {
        let line = code.as_str();
        for (i, _) in line.match_indices("crate::") {
            let rest = &line[i + "crate::".len()..];
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

/// The module graph of one crate's `src/` (top-level modules; `lib.rs` and `main.rs` are the
/// roots, not modules).
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let files: Vec<_> = std::fs::read_dir(src)
        .expect("crate src")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .collect();
    let modules: BTreeSet<String> = files
        .iter()
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .filter(|m| m != "lib" && m != "main")
        .collect();
    files
        .iter()
        .filter_map(|p| {
            let m = p.file_stem()?.to_string_lossy().into_owned();
            if !modules.contains(&m) {
                return None;
            }
            let mut refs = references(&std::fs::read_to_string(p).ok()?, &modules);
            refs.remove(&m);
            Some((m, refs))
        })
        .collect()
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
        for cycle in cycles(&graph(&dir.join("src"))) {
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

/// The proxy (`gateway`: pingora's phases) calls the endpoints; nothing calls back into it.
/// What both use lives in `state`.
#[test]
fn nothing_imports_the_proxy() {
    let g = graph(&aalgate_tests::workspace().join("crates/aalgate/src"));
    let users: Vec<&String> = g
        .iter()
        .filter(|(_, refs)| refs.contains("gateway"))
        .map(|(m, _)| m)
        .collect();
    assert!(users.is_empty(), "modules importing gateway: {users:?}");
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
    assert_eq!(found, vec![abc]);
}
