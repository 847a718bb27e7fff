//! The shipped pathways (`pathways/*.yaml`) and the published JSON Schema.
//!
//! - every shipped pathway compiles with no diagnostic at all (not even a warning);
//! - its Mermaid and DOT drawings match their snapshots;
//! - `parcours_lang::schema()` matches its snapshot and the committed
//!   `pathways/schema/pathway.schema.json` that editors use for completion.

use std::path::{Path, PathBuf};

use parcours_core::model::CompiledPathway;
use parcours_lang::{compile_source, pathway_files, render};

const SCHEMA_FILE: &str = "pathways/schema/pathway.schema.json";

/// The workspace root, so that file names in reports are stable (`pathways/...`).
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Shipped pathways: (file stem, path relative to the workspace root, source).
fn shipped() -> Vec<(String, String, String)> {
    let dir = workspace().join("pathways");
    let files =
        pathway_files(&dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    assert!(!files.is_empty(), "no pathway in {}", dir.display());
    files
        .into_iter()
        .map(|p| {
            let name = p
                .file_name()
                .expect("file name")
                .to_string_lossy()
                .to_string();
            let stem = p
                .file_stem()
                .expect("file stem")
                .to_string_lossy()
                .to_string();
            let src = std::fs::read_to_string(&p)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()));
            (stem, format!("pathways/{name}"), src)
        })
        .collect()
}

fn compile_clean(rel: &str, src: &str) -> CompiledPathway {
    match compile_source(rel, src) {
        Ok((p, report)) => {
            assert!(
                report.diagnostics.is_empty(),
                "{rel} compiles but has diagnostics; shipped pathways must have none:\n{}",
                report.render()
            );
            p
        }
        Err(report) => panic!("{rel} does not compile:\n{}", report.render()),
    }
}

#[test]
fn shipped_pathways_compile_with_no_diagnostics() {
    for (_, rel, src) in shipped() {
        compile_clean(&rel, &src);
    }
}

#[test]
fn shipped_pathway_graphs_match_snapshots() {
    for (stem, rel, src) in shipped() {
        let p = compile_clean(&rel, &src);
        let mermaid = render::mermaid(&p);
        let dot = render::dot(&p);
        assert!(
            mermaid.contains("stateDiagram-v2"),
            "{rel}: not a Mermaid state diagram"
        );
        assert!(dot.starts_with("digraph "), "{rel}: not a DOT digraph");
        insta::with_settings!({
            description => format!("parcours graph --format mermaid {rel}"),
            omit_expression => true,
        }, {
            insta::assert_snapshot!(format!("{stem}.mermaid"), mermaid);
        });
        insta::with_settings!({
            description => format!("parcours graph --format dot {rel}"),
            omit_expression => true,
        }, {
            insta::assert_snapshot!(format!("{stem}.dot"), dot);
        });
    }
}

#[test]
fn schema_matches_snapshot_and_committed_file() {
    let schema =
        serde_json::to_string_pretty(&parcours_lang::schema()).expect("the schema serialises");
    insta::with_settings!({
        description => "parcours schema".to_string(),
        omit_expression => true,
    }, {
        insta::assert_snapshot!("pathway.schema.json", schema);
    });
    let path = workspace().join(SCHEMA_FILE);
    let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {SCHEMA_FILE} ({e}); create it with:\n    \
             cargo run -p parcours -- schema > {SCHEMA_FILE}"
        )
    });
    assert!(
        committed.trim_end() == schema.trim_end(),
        "{SCHEMA_FILE} is out of date with the pathway types in engine/lang/src/raw.rs; \
         regenerate it with:\n    cargo run -p parcours -- schema > {SCHEMA_FILE}"
    );
    let parsed: serde_json::Value =
        serde_json::from_str(&committed).expect("the committed schema is JSON");
    assert_eq!(
        parsed["title"], "parcours pathway definition",
        "{SCHEMA_FILE} is not the pathway schema"
    );
}
