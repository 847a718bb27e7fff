//! Throughput of `decide` on the heart-failure pathway.
//!
//! `cargo bench -p parcours-benches --bench decide`; figures in benches/README.md.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

/// The parcours binary's allocator, so that the figures are what the binary decides at.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
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

    // The mix of a real patient: six months of weights, task answers and timer firings.
    let history = parcours_benches::heart_failure_history(&p);
    let mut g = c.benchmark_group("decide/heart-failure-history");
    g.throughput(Throughput::Elements(history.len() as u64));
    g.bench_function("six-months", |b| {
        b.iter(|| {
            for (state, ev) in &history {
                std::hint::black_box(decide(&p, state, ev).expect("decide"));
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);

fn calendar(c: &mut Criterion) {
    use parcours_core::calendar::{self, ClinicalDuration};
    let t = start();
    let d3: ClinicalDuration = "3d".parse().expect("duration");
    let m3: ClinicalDuration = "3mo".parse().expect("duration");
    let mut g = c.benchmark_group("calendar");
    g.bench_function("sub-3d", |b| {
        b.iter(|| calendar::sub(std::hint::black_box(t), d3))
    });
    g.bench_function("add-3mo", |b| {
        b.iter(|| calendar::add(std::hint::black_box(t), m3))
    });
    let p = shipped("heart-failure.yaml");
    let state = heart_failure_patient(&p);
    g.bench_function("state-clone", |b| {
        b.iter(|| std::hint::black_box(&state).clone())
    });
    g.finish();
}

criterion_group!(cal, calendar);
criterion_main!(benches, cal);
