//! Hashing the build context of a 100,000-file monorepo (200 services, each
//! its own context of 500 files) through `Plan::compute_keys`, the path a real
//! build takes before it can look anything up in the cache.
//!
//! - `cold_index`: no index yet, so every file is read and hashed (the page
//!   cache is warm: this measures hashing, not the disk);
//! - `warm_index_no_change`: the index from the previous run is current, so a
//!   no-op build only stats the files. Goal: under 300 ms.

use std::hint::black_box;
use std::path::Path;

use bake_engine::graph::{Key, KeyOptions, Plan};
use bake_engine::lang::{self, LoadOptions};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

mod common;

const FILES: usize = 100_000;

fn options(index: &Path) -> KeyOptions {
    KeyOptions { index_dir: Some(index.to_path_buf()), ..KeyOptions::default() }
}

fn keys(plan: &Plan) -> Vec<Option<Key>> {
    plan.graph.node_weights().map(|n| n.key).collect()
}

fn benches(c: &mut Criterion) {
    let root = common::monorepo::cached(200, 5, FILES);
    let ws = lang::load(&root.join("build.kdl"), &LoadOptions::default()).expect("load");
    let plan = Plan::build(&ws, &[]).expect("plan");

    // Warm the index once, and check that a warm run gives the keys a cold one did.
    let warm_index = tempfile::tempdir().expect("index tempdir");
    let warm = options(warm_index.path());
    let mut cold_plan = plan.clone();
    cold_plan.compute_keys(&ws, &warm).expect("cold keys");
    let mut warm_plan = plan.clone();
    warm_plan.compute_keys(&ws, &warm).expect("warm keys");
    assert_eq!(keys(&cold_plan), keys(&warm_plan), "a warm index must not change any key");
    assert!(warm_plan.graph.node_weights().any(|n| n.context_files.is_some_and(|f| f > 100)));

    let mut group = c.benchmark_group("context");
    group.sample_size(10);
    group.throughput(Throughput::Elements(FILES as u64));
    group.bench_function("cold_index_100k_files", |b| {
        b.iter_batched(
            || (plan.clone(), tempfile::tempdir().expect("index tempdir")),
            |(mut plan, index)| {
                plan.compute_keys(&ws, &options(index.path())).expect("keys");
                // Returned, so the index folder is deleted outside the timing.
                (plan, index)
            },
            BatchSize::PerIteration,
        );
    });
    group.bench_function("warm_index_no_change_100k_files", |b| {
        b.iter(|| {
            warm_plan.compute_keys(&ws, &warm).expect("keys");
            black_box(warm_plan.graph.node_count())
        });
    });
    group.finish();
}

criterion_group!(context_benches, benches);
criterion_main!(context_benches);
