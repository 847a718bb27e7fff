//! The `decide` bench's realistic mix (`six-months`), decided a fixed number of times and
//! nothing else: for counting what it costs with `perf stat`, whose instruction count
//! does not depend on how fast the machine is today (criterion's time does, by 20–40 %).
//!
//! ```sh
//! cargo build --profile bench -p parcours-benches --example decide-count
//! perf stat -e instructions:u,cycles:u target/release/examples/decide-count 2000
//! ```
//! Instructions per event = instructions ÷ (runs × the events it prints).

use parcours_core::decide::decide;

/// The parcours binary's allocator, as the `decide` bench.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    let runs: u64 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    let p = parcours_benches::shipped("heart-failure.yaml");
    let history = parcours_benches::heart_failure_history(&p);
    for _ in 0..runs {
        for (state, ev) in &history {
            std::hint::black_box(decide(&p, state, ev).expect("decide"));
        }
    }
    println!("{runs} runs of {} events", history.len());
}
