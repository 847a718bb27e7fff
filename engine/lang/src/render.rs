//! The state graph as a picture: Graphviz DOT and Mermaid.
//!
//! Output depends only on the pathway (declaration order), never on hashing or
//! insertion order, so it is snapshot-tested. Internal transitions (no `goto`: recurring
//! tasks, watchers raising alerts) are drawn as loops on their state, labelled
//! `trigger / actions`, so a track that never changes state still shows what it does.

use parcours_core::model::CompiledPathway;

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

fn short(label: &str) -> String {
    const MAX: usize = 60;
    if label.chars().count() <= MAX {
        label.to_string()
    } else {
        let cut: String = label.chars().take(MAX - 1).collect();
        format!("{cut}…")
    }
}

/// Graphviz DOT, one cluster per track.
pub fn dot(p: &CompiledPathway) -> String {
    let mut out = format!(
        "digraph \"{}\" {{\n  label=\"{} (v{})\";\n  labelloc=t;\n  rankdir=LR;\n  node [shape=box, style=rounded, fontname=\"Helvetica\"];\n  edge [fontname=\"Helvetica\", fontsize=10];\n",
        escape(&p.id),
        escape(&p.title),
        p.version
    );
    for (ti, t) in p.tracks.iter().enumerate() {
        out.push_str(&format!(
            "  subgraph \"cluster_{}\" {{\n    label=\"{}\";\n",
            escape(&t.name),
            escape(&t.name)
        ));
        out.push_str(&format!(
            "    \"start_{}\" [shape=point];\n",
            escape(&t.name)
        ));
        if p.edges().iter().any(|e| e.any && *e.from == *t.name) {
            out.push_str(&format!(
                "    \"any_{}\" [label=\"any state\", shape=note];\n",
                escape(&t.name)
            ));
        }
        for s in p.states.iter().filter(|s| s.track.index() == ti) {
            let shape = if s.terminal { ", peripheries=2" } else { "" };
            out.push_str(&format!(
                "    \"{}\" [label=\"{}\"{shape}];\n",
                escape(&s.name),
                escape(&s.name)
            ));
        }
        out.push_str(&format!(
            "    \"start_{}\" -> \"{}\";\n  }}\n",
            escape(&t.name),
            escape(&p.state(t.initial).name)
        ));
    }
    for e in p.edges() {
        let from = if e.any {
            format!("any_{}", e.from)
        } else {
            e.from.clone()
        };
        // An internal transition (no `goto`) loops on its state.
        let to = if e.internal {
            from.clone()
        } else {
            e.to.clone()
        };
        let style = match (e.any, e.internal) {
            (true, _) => ", style=dashed",
            (false, true) => ", color=gray40, fontcolor=gray30",
            (false, false) => "",
        };
        out.push_str(&format!(
            "  \"{}\" -> \"{}\" [label=\"{}\"{style}];\n",
            escape(&from),
            escape(&to),
            escape(&short(&e.label))
        ));
    }
    out.push_str("}\n");
    out
}

fn mermaid_id(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn mermaid_label(s: &str) -> String {
    short(s)
        .replace('"', "'")
        .replace(':', "∶")
        .replace(['{', '}'], "")
}

/// Mermaid `stateDiagram-v2`, one composite state per track.
pub fn mermaid(p: &CompiledPathway) -> String {
    let mut out = format!(
        "---\ntitle: {} (v{})\n---\nstateDiagram-v2\n",
        mermaid_label(&p.title),
        p.version
    );
    for (ti, t) in p.tracks.iter().enumerate() {
        out.push_str(&format!(
            "  state {} {{\n",
            mermaid_id(&format!("track_{}", t.name))
        ));
        out.push_str(&format!(
            "    [*] --> {}\n",
            mermaid_id(&p.state(t.initial).name)
        ));
        let edges = p.edges();
        let any: Vec<_> = edges
            .iter()
            .filter(|e| e.any && *e.from == *t.name)
            .collect();
        if !any.is_empty() {
            out.push_str(&format!(
                "    state \"any state\" as {}\n",
                mermaid_id(&format!("any_{}", t.name))
            ));
        }
        for e in edges.iter().filter(|e| {
            !e.any
                && p.state_id(&e.from)
                    .is_some_and(|s| p.state(s).track.index() == ti)
        }) {
            out.push_str(&format!(
                "    {} --> {}: {}\n",
                mermaid_id(&e.from),
                mermaid_id(&e.to),
                mermaid_label(&e.label)
            ));
        }
        for e in any {
            let from = mermaid_id(&format!("any_{}", t.name));
            // An internal transition (no `goto`) loops on its node.
            let to = if e.internal {
                from.clone()
            } else {
                mermaid_id(&e.to)
            };
            out.push_str(&format!(
                "    {from} --> {to}: {}\n",
                mermaid_label(&e.label)
            ));
        }
        for s in p
            .states
            .iter()
            .filter(|s| s.track.index() == ti && s.terminal)
        {
            out.push_str(&format!("    {} --> [*]\n", mermaid_id(&s.name)));
        }
        out.push_str("  }\n");
    }
    out
}
