//! The checked-in CRD YAML must equal what the code generates.
//!
//! `crds/generated/<plural>.<group>.yaml` (for `kubectl apply`) and
//! `helm/tributary/templates/crds/<plural>.<group>.yaml` (the chart, behind
//! `crds.enabled` and annotated `helm.sh/resource-policy: keep`) are both
//! produced by `tributary_operator::crdgen`. When a type in crds/ changes,
//! regenerate them with:
//!
//! ```sh
//! UPDATE_CRDS=1 cargo test --release -p tributary-operator --test crds_in_sync
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use tributary_operator::crdgen;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

type Render = fn(
    &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> Result<String, serde_norway::Error>;

/// Compares (or with `UPDATE_CRDS=1` rewrites) every file in `dir`.
fn check_dir(dir: &Path, render: Render) -> Vec<String> {
    let update = std::env::var_os("UPDATE_CRDS").is_some_and(|v| v == "1");
    let mut problems = Vec::new();
    let mut expected = BTreeSet::new();
    if update {
        std::fs::create_dir_all(dir).expect("create dir");
    }
    for crd in tributary_crds::all_crds() {
        let name = crdgen::file_name(&crd);
        let path = dir.join(&name);
        let want = render(&crd).expect("render CRD");
        expected.insert(name.clone());
        if update {
            std::fs::write(&path, &want).expect("write CRD file");
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(have) if have == want => {}
            Ok(_) => problems.push(format!("{} differs from the generated CRD", path.display())),
            Err(e) => problems.push(format!("{}: {e}", path.display())),
        }
    }
    // A file for a kind that no longer exists is drift too.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.ends_with(".yaml") && !expected.contains(&name) {
                if update {
                    std::fs::remove_file(entry.path()).expect("remove stale CRD file");
                } else {
                    problems.push(format!("{} is not a generated CRD", entry.path().display()));
                }
            }
        }
    }
    problems
}

#[test]
fn generated_crds_match_the_code() {
    let root = repo_root();
    let mut problems = check_dir(&root.join("crds/generated"), crdgen::generated_file);
    problems.extend(check_dir(&root.join("helm/tributary/templates/crds"), crdgen::chart_template));
    assert!(
        problems.is_empty(),
        "CRD files drifted from crds/src:\n  {}\nregenerate with: UPDATE_CRDS=1 cargo test --release -p \
         tributary-operator --test crds_in_sync",
        problems.join("\n  ")
    );
}

#[test]
fn crd_subcommand_prints_the_same_documents() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tributary-operator"))
        .arg("crd")
        .output()
        .expect("run tributary-operator crd");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert_eq!(text, crdgen::all_crds_yaml().expect("yaml"));
    // Each generated file is one document of that stream.
    for crd in tributary_crds::all_crds() {
        let doc = crdgen::crd_yaml(&crd).expect("yaml");
        assert!(text.contains(&format!("---\n{doc}")));
    }
}
