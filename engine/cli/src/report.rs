//! `parcours report`: the pathway indicators of a log as one self-contained HTML file.
//!
//! Read-only: the log is folded by [`parcours_runtime::indicators::Indicators`] (the same
//! fold `/metrics` exposes) as of its latest clinical instant; charts are inline SVG
//! drawn here (no script or style from elsewhere, so the file opens offline and can be
//! mailed); each pathway's state graph is drawn per track with the live count of active
//! instances in each state. Nothing in it names a patient: counts and shares only.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use parcours_core::model::CompiledPathway;
use parcours_runtime::PathwayRegistry;
use parcours_runtime::indicators::{Indicators, PathwaySummary, Ratio, TASK_STATUSES};
use parcours_store::EventStore;

/// Read the whole log and write the report to `out`.
pub(crate) async fn write<S: EventStore>(
    store: &S,
    mut registry: PathwayRegistry,
    out: &Path,
    tenant: Option<&str>,
) -> anyhow::Result<Summary> {
    // Versions published in the log whose files are gone still have instances.
    for p in parcours_runtime::publish::published(store).await? {
        if registry.get(&p.id, p.version).is_none()
            && let Ok((compiled, _)) = parcours_lang::compile_source(&p.file, &p.text)
        {
            registry.add(compiled);
        }
    }
    let mut fold = Indicators::new();
    while fold.catch_up(store, 1 << 20).await? > 0 {}
    let mut summaries = fold.summaries(&registry);
    if let Some(t) = tenant {
        summaries.retain(|s| s.tenant == t);
    }
    let html = render(&fold, &registry, &summaries);
    std::fs::write(out, &html).with_context(|| format!("writing {}", out.display()))?;
    Ok(Summary {
        pathways: summaries.len(),
        charts: html.matches("<svg class=\"chart").count(),
    })
}

/// What was written.
#[derive(Debug)]
pub(crate) struct Summary {
    /// Pathway sections.
    pub(crate) pathways: usize,
    /// Charts drawn.
    pub(crate) charts: usize,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn pct(r: &Ratio) -> String {
    r.share()
        .map_or("–".into(), |v| format!("{:.0} %", v * 100.0))
}

const STYLE: &str = r#"
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:72rem;color:#1f2933;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{margin-top:2.5rem;border-bottom:2px solid #d9e2ec;padding-bottom:.3rem}
h3{font-size:1.05rem;margin:1.5rem 0 .4rem}.meta{color:#52606d;font-size:.9rem}
.cards{display:flex;flex-wrap:wrap;gap:.8rem}.card{border:1px solid #d9e2ec;border-radius:6px;padding:.6rem .9rem;min-width:12rem}
.card .v{font-size:1.6rem;font-weight:600}.card .n{color:#52606d;font-size:.85rem}
table{border-collapse:collapse;font-size:.9rem}td,th{border-bottom:1px solid #e4e7eb;padding:.25rem .6rem;text-align:right}th:first-child,td:first-child{text-align:left}
svg.chart{display:block;margin:.4rem 0;max-width:100%;height:auto}
svg text{font-size:12px;fill:#1f2933}.legend span{display:inline-block;margin-right:1rem;font-size:.85rem}
.legend i{display:inline-block;width:.8rem;height:.8rem;margin-right:.3rem;vertical-align:middle}
"#;

const STATUS_COLORS: [(&str, &str); 6] = [
    ("on_time", "#3e9c5b"),
    ("late", "#f0b429"),
    ("not_needed", "#9fb3c8"),
    ("not_done", "#d64545"),
    ("open", "#4098d7"),
    ("overdue", "#a61b1b"),
];

/// The report's HTML.
fn render(fold: &Indicators, registry: &PathwayRegistry, summaries: &[PathwaySummary]) -> String {
    let mut h = String::new();
    let as_of = fold.as_of().map_or("(empty log)".into(), |t| {
        t.strftime("%Y-%m-%d %H:%M UTC").to_string()
    });
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>parcours — pathway report</title><style>{STYLE}</style></head><body>\
         <h1>parcours — pathway report</h1>\
         <p class=\"meta\">As of {} (the latest clinical instant in the log) · log position {} · parcours {}</p>",
        esc(&as_of),
        fold.position(),
        env!("CARGO_PKG_VERSION")
    );
    if summaries.is_empty() {
        h.push_str("<p>No pathway instance in this log.</p>");
    }
    for s in summaries {
        let _ = write!(
            h,
            "<section class=\"pathway\" data-pathway=\"{p}\"><h2>{p} <span class=\"meta\">— tenant {t}</span></h2>",
            p = esc(&s.pathway),
            t = esc(&s.tenant)
        );
        // Instances by status.
        h.push_str("<div class=\"cards\">");
        for (status, n) in &s.statuses {
            let _ = write!(
                h,
                "<div class=\"card\"><div class=\"v\">{n}</div><div class=\"n\">{} instances</div></div>",
                esc(status)
            );
        }
        h.push_str("</div>");
        // Indicators.
        if !s.ratios.is_empty() {
            h.push_str("<h3>Indicators</h3><div class=\"cards\">");
            for r in &s.ratios {
                let _ = write!(
                    h,
                    "<div class=\"card indicator\" data-indicator=\"{name}\"><div class=\"v\">{v}</div>\
                     <div class=\"n\">{label}<br>{num} / {den}</div></div>",
                    name = esc(&r.name),
                    v = pct(r),
                    label = esc(&indicator_label(&r.name)),
                    num = r.numerator,
                    den = r.denominator
                );
            }
            h.push_str("</div>");
            h.push_str(&ratio_chart(&s.ratios));
        }
        for (name, delays) in &s.delays_days {
            let _ = write!(
                h,
                "<h3>{}: delay from discharge (days)</h3>",
                esc(&indicator_label(name))
            );
            h.push_str(&delay_chart(delays, 7.0));
        }
        // Where the active patients are.
        let mut tracks: BTreeMap<&str, Vec<(&str, u64)>> = BTreeMap::new();
        for ((track, state), n) in &s.states {
            tracks.entry(track).or_default().push((state, *n));
        }
        h.push_str("<h3>Active instances by state</h3>");
        for (track, states) in &tracks {
            let _ = write!(h, "<p class=\"meta\">track {}</p>", esc(track));
            h.push_str(&bar_chart(states));
        }
        // Tasks.
        let mut roles: BTreeMap<&str, BTreeMap<&str, u64>> = BTreeMap::new();
        for ((role, status), n) in &s.tasks {
            roles.entry(role).or_default().insert(status, *n);
        }
        if !roles.is_empty() {
            h.push_str("<h3>Tasks by role</h3><p class=\"legend\">");
            for (st, c) in STATUS_COLORS {
                let _ = write!(
                    h,
                    "<span><i style=\"background:{c}\"></i>{}</span>",
                    st.replace('_', " ")
                );
            }
            h.push_str("</p>");
            h.push_str(&stacked_chart(&roles));
            h.push_str("<table><tr><th>role</th>");
            for st in TASK_STATUSES {
                let _ = write!(h, "<th>{}</th>", st.replace('_', " "));
            }
            h.push_str("</tr>");
            for (role, counts) in &roles {
                let _ = write!(h, "<tr><td>{}</td>", esc(role));
                for st in TASK_STATUSES {
                    let _ = write!(h, "<td>{}</td>", counts.get(st).copied().unwrap_or(0));
                }
                h.push_str("</tr>");
            }
            h.push_str("</table>");
        }
        // Alerts.
        if !s.alerts_raised.is_empty() {
            h.push_str(
                "<h3>Alerts</h3><table><tr><th>severity</th><th>raised</th><th>open</th></tr>",
            );
            for (sev, n) in &s.alerts_raised {
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td>{n}</td><td>{}</td></tr>",
                    esc(sev),
                    s.alerts_open.get(sev).copied().unwrap_or(0)
                );
            }
            h.push_str("</table>");
            let ack = &s.alert_ack_seconds;
            if !ack.is_empty() {
                let q = |p: f64| ack[((ack.len() - 1) as f64 * p).round() as usize] / 3600.0;
                let _ = write!(
                    h,
                    "<p>Acknowledged: {} · median {:.1} h · 90th percentile {:.1} h</p>",
                    ack.len(),
                    q(0.5),
                    q(0.9)
                );
            }
        }
        if s.guard_errors > 0 {
            let _ = write!(h, "<p>Guard errors: {}</p>", s.guard_errors);
        }
        // The graph with live counts.
        if let Some(p) = registry.latest().into_iter().find(|p| p.id == s.pathway) {
            let _ = write!(
                h,
                "<h3>State graph (v{}) with active instances</h3>",
                p.version
            );
            for (i, t) in p.tracks.iter().enumerate() {
                let counts: BTreeMap<&str, u64> = tracks
                    .get(&*t.name)
                    .map(|v| v.iter().copied().collect())
                    .unwrap_or_default();
                h.push_str(&graph(p, i, &counts));
            }
        }
        h.push_str("</section>");
    }
    // Marks each chart with its drawn size once laid out (what the report test reads in
    // headless Chromium); changes nothing visible.
    h.push_str(
        "<script>addEventListener('load',()=>{let ok=0;for(const s of document.querySelectorAll('svg.chart')){\
         const b=s.getBBox();const r=s.getBoundingClientRect();\
         s.dataset.drawn=(b.width>0&&b.height>0&&r.width>0&&s.querySelectorAll('rect,path,line,circle').length>0)?'yes':'no';\
         if(s.dataset.drawn==='yes')ok++;}document.body.dataset.chartsDrawn=String(ok);});</script>",
    );
    h.push_str("</body></html>\n");
    h
}

fn indicator_label(name: &str) -> String {
    match name {
        "gp_visit_within_7d" => "GP visit within 7 days of discharge".into(),
        "readmission_30d" => "readmitted within 30 days".into(),
        "hba1c_3_in_12_months" => "≥ 3 HbA1c in 12 months".into(),
        "yearly_eye_exam" => "eye exam in 12 months".into(),
        "yearly_foot_exam" => "foot exam in 12 months".into(),
        "yearly_kidney_tests" => "kidney tests in 12 months".into(),
        "yearly_exams_all_done" => "all yearly exams done".into(),
        other => other.replace('_', " "),
    }
}

/// Horizontal bars of shares (0–100 %).
fn ratio_chart(ratios: &[Ratio]) -> String {
    let (label_w, bar_w, row) = (260.0, 380.0, 24.0);
    let height = row * ratios.len() as f64 + 10.0;
    let mut s = format!(
        "<svg class=\"chart\" role=\"img\" aria-label=\"indicators\" width=\"{w}\" height=\"{height}\" viewBox=\"0 0 {w} {height}\" xmlns=\"http://www.w3.org/2000/svg\">",
        w = label_w + bar_w + 60.0
    );
    for (i, r) in ratios.iter().enumerate() {
        let y = i as f64 * row + 4.0;
        let v = r.share().unwrap_or(0.0);
        let _ = write!(
            s,
            "<text x=\"0\" y=\"{ty}\">{label}</text>\
             <rect x=\"{label_w}\" y=\"{y}\" width=\"{bar_w}\" height=\"16\" fill=\"#e4e7eb\"/>\
             <rect x=\"{label_w}\" y=\"{y}\" width=\"{fill:.1}\" height=\"16\" fill=\"#2680c2\"><title>{num} / {den}</title></rect>\
             <text x=\"{tx}\" y=\"{ty}\">{p}</text>",
            ty = y + 13.0,
            label = esc(&indicator_label(&r.name)),
            fill = bar_w * v,
            num = r.numerator,
            den = r.denominator,
            tx = label_w + bar_w + 6.0,
            p = pct(r)
        );
    }
    s.push_str("</svg>");
    s
}

/// A histogram of delays in days (one-day bins up to `limit`, then wider), the limit
/// marked.
fn delay_chart(delays: &[f64], limit: f64) -> String {
    let bins: Vec<(String, f64, f64)> = vec![
        ("0–1".into(), 0.0, 1.0),
        ("1–2".into(), 1.0, 2.0),
        ("2–3".into(), 2.0, 3.0),
        ("3–4".into(), 3.0, 4.0),
        ("4–5".into(), 4.0, 5.0),
        ("5–6".into(), 5.0, 6.0),
        ("6–7".into(), 6.0, 7.0),
        ("7–10".into(), 7.0, 10.0),
        ("10–14".into(), 10.0, 14.0),
        ("14–30".into(), 14.0, 30.0),
        ("> 30".into(), 30.0, f64::INFINITY),
    ];
    let counts: Vec<usize> = bins
        .iter()
        .map(|(_, lo, hi)| {
            delays
                .iter()
                .filter(|d| **d >= *lo && (**d < *hi || (*hi == limit && **d <= *hi)))
                .count()
        })
        .collect();
    let max = counts.iter().copied().max().unwrap_or(0).max(1) as f64;
    let (col, plot_h) = (48.0, 140.0);
    let w = col * bins.len() as f64 + 20.0;
    let mut s = format!(
        "<svg class=\"chart\" role=\"img\" aria-label=\"delay distribution\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" xmlns=\"http://www.w3.org/2000/svg\">",
        h = plot_h + 40.0
    );
    for (i, ((label, lo, _), n)) in bins.iter().zip(&counts).enumerate() {
        let x = 10.0 + i as f64 * col;
        let bh = plot_h * *n as f64 / max;
        let color = if *lo < limit { "#3e9c5b" } else { "#f0b429" };
        let _ = write!(
            s,
            "<rect x=\"{x}\" y=\"{y:.1}\" width=\"{bw}\" height=\"{bh:.1}\" fill=\"{color}\"><title>{label} days: {n}</title></rect>\
             <text x=\"{tx}\" y=\"{ly}\" text-anchor=\"middle\">{label}</text>\
             <text x=\"{tx}\" y=\"{ny:.1}\" text-anchor=\"middle\">{n}</text>",
            y = 10.0 + plot_h - bh,
            bw = col - 8.0,
            tx = x + (col - 8.0) / 2.0,
            ly = plot_h + 26.0,
            ny = (10.0 + plot_h - bh - 3.0).max(10.0)
        );
    }
    let lx = 10.0 + 7.0 * col - 4.0;
    let _ = write!(
        s,
        "<line x1=\"{lx}\" y1=\"4\" x2=\"{lx}\" y2=\"{y2}\" stroke=\"#a61b1b\" stroke-dasharray=\"4 3\"/></svg>",
        y2 = plot_h + 12.0
    );
    s
}

/// Vertical bars, one per state.
fn bar_chart(items: &[(&str, u64)]) -> String {
    let max = items.iter().map(|(_, n)| *n).max().unwrap_or(0).max(1) as f64;
    let (row, label_w, bar_w) = (22.0, 200.0, 360.0);
    let h = row * items.len() as f64 + 8.0;
    let mut s = format!(
        "<svg class=\"chart\" role=\"img\" aria-label=\"instances by state\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" xmlns=\"http://www.w3.org/2000/svg\">",
        w = label_w + bar_w + 50.0
    );
    for (i, (state, n)) in items.iter().enumerate() {
        let y = 4.0 + i as f64 * row;
        let _ = write!(
            s,
            "<text x=\"0\" y=\"{ty}\">{st}</text><rect x=\"{label_w}\" y=\"{y}\" width=\"{bw:.1}\" height=\"14\" fill=\"#4098d7\"/>\
             <line x1=\"{label_w}\" y1=\"{y}\" x2=\"{label_w}\" y2=\"{y2}\" stroke=\"#9fb3c8\"/><text x=\"{tx:.1}\" y=\"{ty}\">{n}</text>",
            ty = y + 12.0,
            st = esc(state),
            bw = bar_w * *n as f64 / max,
            y2 = y + 14.0,
            tx = label_w + bar_w * *n as f64 / max + 6.0
        );
    }
    s.push_str("</svg>");
    s
}

/// Stacked horizontal bars: per role, tasks by status.
fn stacked_chart(roles: &BTreeMap<&str, BTreeMap<&str, u64>>) -> String {
    let max = roles
        .values()
        .map(|c| c.values().sum::<u64>())
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let (row, label_w, bar_w) = (24.0, 160.0, 420.0);
    let h = row * roles.len() as f64 + 8.0;
    let mut s = format!(
        "<svg class=\"chart\" role=\"img\" aria-label=\"tasks by role\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" xmlns=\"http://www.w3.org/2000/svg\">",
        w = label_w + bar_w + 50.0
    );
    for (i, (role, counts)) in roles.iter().enumerate() {
        let y = 4.0 + i as f64 * row;
        let _ = write!(s, "<text x=\"0\" y=\"{}\">{}</text>", y + 13.0, esc(role));
        let mut x = label_w;
        for (st, color) in STATUS_COLORS {
            let n = counts.get(st).copied().unwrap_or(0);
            if n == 0 {
                continue;
            }
            let w = bar_w * n as f64 / max;
            let _ = write!(
                s,
                "<rect x=\"{x:.1}\" y=\"{y}\" width=\"{w:.1}\" height=\"16\" fill=\"{color}\"><title>{st}: {n}</title></rect>"
            );
            x += w;
        }
        let total: u64 = counts.values().sum();
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{}\">{total}</text>",
            x + 6.0,
            y + 13.0
        );
    }
    s.push_str("</svg>");
    s
}

/// One track's states in layers from its initial state (breadth first over its
/// transitions), each box with its count of active instances; transitions as arrows.
fn graph(p: &CompiledPathway, track: usize, counts: &BTreeMap<&str, u64>) -> String {
    let Some(t) = p.tracks.get(track) else {
        return String::new();
    };
    let names: Vec<&str> = p
        .states
        .iter()
        .filter(|s| s.track.index() == track)
        .map(|s| &*s.name)
        .collect();
    let edges: Vec<_> = p
        .edges()
        .into_iter()
        .filter(|e| names.contains(&e.to.as_str()) && !e.internal)
        .collect();
    let initial = &*p.states[t.initial.index()].name;
    let mut layer: BTreeMap<&str, usize> = BTreeMap::new();
    layer.insert(initial, 0);
    let mut queue = VecDeque::from([initial]);
    while let Some(s) = queue.pop_front() {
        let l = layer[s];
        for e in edges.iter().filter(|e| !e.any && e.from == s) {
            if let Some(to) = names.iter().find(|n| **n == e.to)
                && !layer.contains_key(to)
            {
                layer.insert(to, l + 1);
                queue.push_back(to);
            }
        }
    }
    let last = layer.values().copied().max().unwrap_or(0) + 1;
    for n in &names {
        layer.entry(n).or_insert(last);
    }
    let mut columns: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
    for n in &names {
        columns.entry(layer[n]).or_default().push(n);
    }
    let (bw, bh, gx, gy) = (150.0, 44.0, 60.0, 22.0);
    let rows = columns.values().map(Vec::len).max().unwrap_or(1) as f64;
    let any = edges.iter().any(|e| e.any);
    let top = if any { 40.0 } else { 10.0 };
    let width = columns.len() as f64 * (bw + gx) + 20.0;
    let height = top + rows * (bh + gy) + 10.0;
    let mut pos: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    for (ci, (_, col)) in columns.iter().enumerate() {
        for (ri, n) in col.iter().enumerate() {
            pos.insert(
                n,
                (10.0 + ci as f64 * (bw + gx), top + ri as f64 * (bh + gy)),
            );
        }
    }
    let mut s = format!(
        "<p class=\"meta\">track {}</p><svg class=\"chart graph\" role=\"img\" aria-label=\"state graph of track {}\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" xmlns=\"http://www.w3.org/2000/svg\">\
         <defs><marker id=\"arrow-{p}-{track}\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto-start-reverse\"><path d=\"M0 0L10 5L0 10z\" fill=\"#829ab1\"/></marker></defs>",
        esc(&t.name),
        esc(&t.name),
        p = esc(&p.id)
    );
    if any {
        let _ = write!(
            s,
            "<text x=\"10\" y=\"16\">any state → {}</text>",
            esc(&edges
                .iter()
                .filter(|e| e.any)
                .map(|e| e.to.as_str())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect::<Vec<_>>()
                .join(", "))
        );
    }
    for e in edges.iter().filter(|e| !e.any) {
        let (Some(a), Some(b)) = (pos.get(e.from.as_str()), pos.get(e.to.as_str())) else {
            continue;
        };
        let (x1, y1) = (a.0 + bw, a.1 + bh / 2.0);
        let (x2, y2) = (b.0, b.1 + bh / 2.0);
        let d = if x2 > x1 {
            format!(
                "M{x1} {y1} C{} {y1} {} {y2} {x2} {y2}",
                x1 + gx / 2.0,
                x2 - gx / 2.0
            )
        } else {
            // Backwards or same column: around, above the boxes.
            let up = a.1.min(b.1) - 8.0;
            format!(
                "M{} {} C{} {up} {} {up} {} {}",
                a.0 + bw / 2.0,
                a.1,
                a.0 + bw / 2.0,
                b.0 + bw / 2.0,
                b.0 + bw / 2.0,
                b.1
            )
        };
        let _ = write!(
            s,
            "<path d=\"{d}\" fill=\"none\" stroke=\"#829ab1\" stroke-width=\"1.2\" marker-end=\"url(#arrow-{p}-{track})\"><title>{label}</title></path>",
            p = esc(&p.id),
            label = esc(&e.label)
        );
    }
    for (n, (x, y)) in &pos {
        let count = counts.get(n).copied().unwrap_or(0);
        let terminal = p.states.iter().any(|s| &*s.name == *n && s.terminal);
        let fill = if count > 0 { "#dceefb" } else { "#f5f7fa" };
        let _ = write!(
            s,
            "<g class=\"state\" data-state=\"{name}\" data-count=\"{count}\"><rect x=\"{x}\" y=\"{y}\" width=\"{bw}\" height=\"{bh}\" rx=\"{rx}\" fill=\"{fill}\" stroke=\"#486581\" stroke-width=\"{sw}\"/>\
             <text x=\"{tx}\" y=\"{ty1}\" text-anchor=\"middle\">{name}</text><text x=\"{tx}\" y=\"{ty2}\" text-anchor=\"middle\" font-weight=\"600\">{count}</text></g>",
            name = esc(n),
            rx = if terminal { 20 } else { 6 },
            sw = if **n == *initial { 2.5 } else { 1.0 },
            tx = x + bw / 2.0,
            ty1 = y + 18.0,
            ty2 = y + 35.0
        );
    }
    s.push_str("</svg>");
    s
}
