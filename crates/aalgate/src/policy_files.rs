//! Policy files on disk: which files a set of paths names, and reading them into the pure
//! parser ([`aalgate_policy::load_from_strs`]). The gateway's hot reload, `validate` and
//! `explain` load through here; the policy crate itself never touches the file system.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use aalgate_policy::{load_from_strs, Diagnostic, PolicySet, Severity, SourceLoc};

fn at_file(file: &Path, message: String, fix: &str) -> Diagnostic {
    Diagnostic {
        severity: Severity::Error,
        loc: SourceLoc {
            file: Arc::from(file),
            line: 0,
            column: 0,
        },
        message,
        fix: fix.into(),
    }
}

/// Lists the policy files named by `paths`: files as given, directories as their `*.yaml` /
/// `*.yml` entries (not recursive), sorted so loading is deterministic.
pub fn policy_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Diagnostic> {
    let mut files = Vec::new();
    for p in paths {
        let io_err = |e: std::io::Error| {
            at_file(
                p,
                format!("cannot read: {e}"),
                "check the path and its permissions",
            )
        };
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(io_err)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    f.is_file()
                        && matches!(f.extension().and_then(|x| x.to_str()), Some("yaml" | "yml"))
                })
                .collect();
            found.sort();
            files.extend(found);
        } else {
            std::fs::metadata(p).map_err(io_err)?;
            files.push(p.clone());
        }
    }
    Ok(files)
}

/// Reads, parses and validates the policy files named by `paths` (see [`policy_files`]).
/// Every problem comes back at once: files that cannot be read first, then what the parser
/// and validator found in the others.
pub fn load(paths: &[PathBuf]) -> Result<PolicySet, Vec<Diagnostic>> {
    let files = policy_files(paths).map_err(|d| vec![d])?;
    let mut errors = Vec::new();
    let mut sources = Vec::new();
    for f in &files {
        match std::fs::read_to_string(f) {
            Ok(text) => sources.push((f.clone(), text)),
            Err(e) => errors.push(at_file(
                f,
                format!("cannot read: {e}"),
                "check the file's permissions and that it is UTF-8",
            )),
        }
    }
    if files.is_empty() {
        errors.push(at_file(
            paths
                .first()
                .map(PathBuf::as_path)
                .unwrap_or(Path::new(".")),
            "no policy files (*.yaml, *.yml) found".into(),
            "add one policy file per app; see policies/ in the aalgate repository for examples",
        ));
    }
    let loaded = load_from_strs(&sources);
    if errors.is_empty() {
        return loaded;
    }
    errors.extend(match loaded {
        Ok(set) => set.warnings().to_vec(),
        Err(diags) => diags,
    });
    Err(errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_loads_its_yaml_files_in_order_and_reports_every_problem() {
        let dir = tempfile::tempdir().unwrap();
        let app = |name: &str| {
            format!(
                "app: {name}\nhost: {name}.example\nupstream: http://127.0.0.1:1\ndefault: aal2\n"
            )
        };
        std::fs::write(dir.path().join("b.yaml"), app("billing")).unwrap();
        std::fs::write(dir.path().join("a.yml"), app("ehr")).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a policy").unwrap();
        let set = load(&[dir.path().to_path_buf()]).unwrap();
        let names: Vec<_> = set
            .files()
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.yml", "b.yaml"]);

        let empty = tempfile::tempdir().unwrap();
        let e = load(&[empty.path().to_path_buf()]).unwrap_err();
        assert!(e[0].message.contains("no policy files"), "{e:?}");

        let missing = dir.path().join("nope.yaml");
        let e = load(&[missing]).unwrap_err();
        assert!(e[0].message.starts_with("cannot read"), "{e:?}");

        std::fs::write(dir.path().join("c.yaml"), [0xff, 0xfe]).unwrap();
        std::fs::write(dir.path().join("d.yaml"), "app: [").unwrap();
        let e = load(&[dir.path().to_path_buf()]).unwrap_err();
        assert!(
            e[0].message.starts_with("cannot read"),
            "not UTF-8 first: {e:?}"
        );
        assert!(
            e.iter().any(|d| d.loc.file.ends_with("d.yaml")),
            "and the broken YAML too: {e:?}"
        );
    }

    #[test]
    fn shipped_policies_are_valid() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../policies");
        let set = load(&[dir.join("demo.yaml")]).unwrap_or_else(|d| panic!("{d:#?}"));
        assert_eq!(set.apps().len(), 1);
        let set = load(&[dir.join("examples")]).unwrap_or_else(|d| panic!("{d:#?}"));
        assert!(set.apps().len() >= 4);
        assert!(set.warnings().is_empty(), "{:#?}", set.warnings());
    }
}
