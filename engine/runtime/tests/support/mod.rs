//! What the runtime's integration tests share: the shipped pathways and the start of
//! their clinical time.
#![allow(dead_code, unreachable_pub)] // each test binary uses its own part

use std::path::Path;

use jiff::Timestamp;
use parcours_runtime::PathwayRegistry;

/// The shipped heart-failure and type 2 diabetes pathways.
pub fn registry() -> PathwayRegistry {
    let mut r = PathwayRegistry::new();
    for f in ["heart-failure.yaml", "type2-diabetes.yaml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../pathways")
            .join(f);
        let loaded = parcours_lang::load_file(&path).expect("readable");
        r.add(loaded.pathway.expect("compiles"));
    }
    r
}

/// Monday 2 March 2026, 09:00 UTC.
pub fn t0() -> Timestamp {
    "2026-03-02T09:00:00Z".parse().expect("timestamp")
}
