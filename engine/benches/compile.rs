//! Compile time of a large monorepo: 200 included build.kdl files, 1,000
//! stages. `compile` is load (parse, resolve) plus graph construction;
//! `plan_warm` adds cache keys with a warm context index over 100,000 files,
//! which is what a no-op `bake build` pays before it can skip everything.

use std::hint::black_box;
use std::path::Path;

use bake_engine::graph::{KeyOptions, Plan};
use bake_engine::lang::{self, LoadOptions};
use criterion::{Criterion, criterion_group, criterion_main};

mod common;

fn compile(root: &Path) -> usize {
    let ws = lang::load(&root.join("build.kdl"), &LoadOptions::default()).expect("load");
    let plan = Plan::build(&ws, &[]).expect("plan");
    plan.graph.node_count()
}

fn benches(c: &mut Criterion) {
    let root = &common::monorepo::cached(200, 5, 100_000);
    let ws = lang::load(&root.join("build.kdl"), &LoadOptions::default()).expect("load");
    assert_eq!(ws.files.len(), 201);
    assert_eq!(ws.stages.len(), 1000);

    let mut group = c.benchmark_group("monorepo");
    group.sample_size(20);
    group.bench_function("compile_1000_stages", |b| b.iter(|| black_box(compile(root))));

    let index = tempfile::tempdir().expect("index tempdir");
    let options = KeyOptions { index_dir: Some(index.path().to_path_buf()), ..KeyOptions::default() };
    let mut plan = Plan::build(&ws, &[]).expect("plan");
    plan.compute_keys(&ws, &options).expect("cold keys");
    group.bench_function("plan_warm_100k_files", |b| {
        b.iter(|| {
            let ws = lang::load(&root.join("build.kdl"), &LoadOptions::default()).expect("load");
            let mut plan = Plan::build(&ws, &[]).expect("plan");
            plan.compute_keys(&ws, &options).expect("keys");
            black_box(plan.graph.node_count())
        });
    });
    group.finish();
}

criterion_group!(compile_benches, benches);
criterion_main!(compile_benches);
