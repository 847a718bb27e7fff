//! Throughput of `decide` on the heart-failure pathway.
//!
//! `cargo bench -p parcours-benches --bench decide`; figures in benches/README.md.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use jiff::SignedDuration;
use parcours_benches::{heart_failure_patient, shipped, start, weight};
use parcours_core::{decide, decide_and_apply};

fn bench(c: &mut Criterion) {
    let p = shipped("heart-failure.yaml");
    let state = heart_failure_patient(&p);
    let at = start() + SignedDuration::from_hours(24 * 8);

    let mut g = c.benchmark_group("decide/heart-failure");
    g.throughput(Throughput::Elements(1));

    // A daily weight that raises nothing: routing through the safety guards and the series.
    let quiet = weight(100, at, 80.2);
    g.bench_function("weight-no-alert", |b| {
        b.iter(|| decide(&p, &state, &quiet).expect("decide"))
    });

    // A weight gain that raises an alert, sets a variable and schedules timers.
    let gain = weight(101, at, 83.0);
    g.bench_function("weight-alert", |b| {
        b.iter(|| decide(&p, &state, &gain).expect("decide"))
    });

    // An event no rule of the current states reacts to.
    let other = parcours_benches::event(
        "other".into(),
        at,
        parcours_core::EventType::ProcedurePerformed,
        serde_json::json!({"code": "X", "kind": "ecg"}),
    );
    g.bench_function("unrelated-event", |b| {
        b.iter(|| decide(&p, &state, &other).expect("decide"))
    });

    // decide + fold of the result, as the runtime does for each event.
    g.bench_function("weight-decide-and-apply", |b| {
        b.iter_batched(
            || state.clone(),
            |s| decide_and_apply(&p, &s, &quiet).expect("decide"),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
