//! Packing a long-tailed pool: best-fit-decreasing planning of 1M samples,
//! laying samples into rows, and streaming packing; with the packing
//! efficiency next to what padded batches would reach.
//!
//! `cargo bench --bench pack`. `NPD_BENCH_SAMPLES` sets the pool size
//! (default 1,000,000).
#![allow(missing_docs)] // criterion_group! generates undocumented items

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use npd_benches::{lognormal_lengths, train_samples};
use npd_core::traits::Packer;
use npd_pack::plan::best_fit_decreasing;
use npd_pack::stats::{PackStats, padded_efficiency};
use npd_pack::{PackOptions, StreamingPacker, pack_pool};

const CAPACITY: usize = 4096;
const MEAN: f64 = 300.0;
const SIGMA: f64 = 1.0;

fn pool_size() -> usize {
    std::env::var("NPD_BENCH_SAMPLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000)
}

fn bench(c: &mut Criterion) {
    let n = pool_size();
    let lengths = lognormal_lengths(n, MEAN, SIGMA, CAPACITY, 42);
    let plan = best_fit_decreasing(&lengths, CAPACITY);
    let stats = PackStats::of_plan(&plan, &lengths, CAPACITY);
    let lower_bound = stats.tokens.div_ceil(CAPACITY);
    println!(
        "pool: {n} samples, log-normal lengths (mean {MEAN}, sigma {SIGMA}, max {CAPACITY}), {} tokens",
        stats.tokens
    );
    println!(
        "best-fit decreasing: {} rows of {CAPACITY} (lower bound {lower_bound}), efficiency {:.4}%",
        stats.rows,
        100.0 * stats.efficiency()
    );
    for batch in [8, 32, 128] {
        println!(
            "padded batches of {batch} in arrival order: efficiency {:.2}%",
            100.0 * padded_efficiency(&lengths, batch)
        );
    }

    let mut group = c.benchmark_group("pack");
    group.sample_size(10);
    group.throughput(Throughput::Elements(n as u64));
    group.bench_function(BenchmarkId::new("bfd_plan", n), |b| {
        b.iter(|| best_fit_decreasing(std::hint::black_box(&lengths), CAPACITY))
    });

    // Laying tokens into rows touches every token: measured on a smaller pool.
    let m = (n / 50).max(1000).min(n);
    let small = train_samples(&lengths[..m], 4000);
    let small_tokens: usize = lengths[..m].iter().sum();
    group.throughput(Throughput::Elements(small_tokens as u64));
    group.bench_function(BenchmarkId::new("pack_pool_tokens", m), |b| {
        b.iter_batched(
            || small.clone(),
            |s| pack_pool(s, &PackOptions::new(CAPACITY)).unwrap(),
            criterion::BatchSize::LargeInput,
        )
    });
    let mut streamed = StreamingPacker::new(PackOptions::new(CAPACITY), 0.98, 16).unwrap();
    let mut rows = Vec::new();
    for s in small.iter().cloned() {
        rows.extend(streamed.push(s).unwrap());
    }
    rows.extend(streamed.flush());
    println!(
        "streaming (min_fill 0.98, 16 open rows) on {m} samples: efficiency {:.2}%",
        100.0 * PackStats::of_rows(&rows).efficiency()
    );
    group.bench_function(BenchmarkId::new("streaming_tokens", m), |b| {
        b.iter_batched(
            || small.clone(),
            |s| {
                let mut p = StreamingPacker::new(PackOptions::new(CAPACITY), 0.98, 16).unwrap();
                let mut n = 0;
                for x in s {
                    n += p.push(x).unwrap().len();
                }
                n + p.flush().len()
            },
            criterion::BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
