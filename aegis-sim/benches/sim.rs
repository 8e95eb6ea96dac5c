//! Simulator speed, in simulated requests per wall-clock second on one core (criterion's
//! `elem/s`): the seed walkthrough (35 requests, so the per-run setup shows: policy, token
//! minting), the non-auth high-rate load of `benches/high-rate.toml` (400 000 requests
//! through the whole pipeline, rate limiter included), and ten fuzz seeds (scenario
//! generation, parsing and two phases each).
//!
//! Run: `cargo bench -p aegis-sim` (figures in aegis-sim/README.md).

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use aegis_sim::{RunOptions, Scenario};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn scenario(path: &str) -> Scenario {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    Scenario::load(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn requests(s: &Scenario) -> u64 {
    aegis_sim::run(
        s,
        &RunOptions {
            seed: s.seed,
            ..Default::default()
        },
    )
    .expect("runs")
    .requests
}

fn runs(c: &mut Criterion) {
    let mut g = c.benchmark_group("sim");
    for (name, path, samples) in [
        ("seed-walkthrough", "../scenarios/seed-walkthrough.toml", 50),
        ("high-rate", "benches/high-rate.toml", 10),
    ] {
        let s = scenario(path);
        let n = requests(&s);
        g.throughput(Throughput::Elements(n));
        g.sample_size(samples);
        g.measurement_time(Duration::from_secs(8));
        g.bench_function(name, |b| {
            b.iter(|| {
                let r = aegis_sim::run(
                    black_box(&s),
                    &RunOptions {
                        seed: s.seed,
                        ..Default::default()
                    },
                )
                .expect("runs");
                assert!(r.ok());
                r.requests
            })
        });
    }
    let fuzz_requests = aegis_sim::fuzz::fuzz(1, 10, None)
        .expect("fuzz runs")
        .requests;
    g.throughput(Throughput::Elements(fuzz_requests));
    g.sample_size(10);
    g.bench_function("fuzz-10-seeds", |b| {
        b.iter(|| {
            let out = aegis_sim::fuzz::fuzz(black_box(1), 10, None).expect("fuzz runs");
            assert!(out.failure.is_none());
            out.requests
        })
    });
    g.finish();
}

criterion_group!(benches, runs);
criterion_main!(benches);
