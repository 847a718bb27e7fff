//! The examples in docs/pathway-language.md stay true: the minimal pathway compiles with
//! no diagnostic and the scenario example passes against the shipped heart-failure pathway.

use std::path::Path;

fn doc() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/pathway-language.md");
    std::fs::read_to_string(path).expect("docs/pathway-language.md")
}

/// The ```yaml blocks of the document.
fn yaml_blocks(doc: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = doc;
    while let Some(start) = rest.find("```yaml\n") {
        let body = &rest[start + 8..];
        let Some(end) = body.find("```") else { break };
        out.push(body[..end].to_string());
        rest = &body[end + 3..];
    }
    out
}

#[test]
fn the_minimal_pathway_compiles_cleanly() {
    let doc = doc();
    let block = yaml_blocks(&doc)
        .into_iter()
        .find(|b| b.starts_with("pathway: post-op-check"))
        .expect("the minimal pathway example");
    match parcours_lang::compile_source("docs/minimal.yaml", &block) {
        Ok((_, report)) => assert!(report.diagnostics.is_empty(), "{}", report.render()),
        Err(report) => panic!("{}", report.render()),
    }
}

#[test]
fn the_scenario_example_passes() {
    let doc = doc();
    let block = yaml_blocks(&doc)
        .into_iter()
        .find(|b| b.starts_with("name: GP visit missed"))
        .expect("the scenario example");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("doc.yaml");
    std::fs::write(&file, &block).expect("write");
    let scenario = parcours_scenario::parse(&file).expect("the example parses");
    let hf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pathways/heart-failure.yaml");
    let pathway = parcours_lang::load_file(&hf)
        .expect("readable")
        .pathway
        .expect("compiles");
    let outcome = parcours_scenario::run(&file, &scenario, &pathway);
    assert!(outcome.passed(), "{:#?}", outcome.failures);
}
