//! Δ-IFD scoring of a pool of 1M samples × 256 response tokens (teacher and
//! student, conditioned and alone: 4 GiB of f32 log-probs), next to a plain
//! copy of the same bytes, the memory-bandwidth yardstick.
//!
//! `cargo bench --bench filter`. `NPD_BENCH_SAMPLES` sets the pool size
//! (default 1,000,000); `RAYON_NUM_THREADS` the scoring threads.
#![allow(missing_docs)] // criterion_group! generates undocumented items

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use npd_benches::logprob_pool;
use npd_filter::DeltaScore;
use npd_filter::{DeltaForm, IfdConvention};

const TOKENS: usize = 256;

fn bench(c: &mut Criterion) {
    let n = std::env::var("NPD_BENCH_SAMPLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let pool = logprob_pool(n, TOKENS, 7);
    let bytes = pool.bytes();
    println!(
        "pool: {n} samples x {TOKENS} tokens, {:.2} GiB of log-probs, {} rayon threads",
        bytes as f64 / (1u64 << 30) as f64,
        rayon::current_num_threads()
    );
    let score = DeltaScore {
        convention: IfdConvention::LossRatio,
        form: DeltaForm::Difference,
    };

    let mut group = c.benchmark_group("filter");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(bytes as u64));
    group.bench_function("delta_ifd_score_pool", |b| {
        b.iter(|| score.score_pool(std::hint::black_box(&pool)).unwrap())
    });
    // The same bytes, copied column by column.
    let mut dst: Vec<Vec<f32>> = vec![vec![0.0; n * TOKENS]; 4];
    group.bench_function("memcpy_same_bytes", |b| {
        b.iter(|| {
            let src = pool.teacher.iter().chain(&pool.student);
            for (d, s) in dst.iter_mut().zip(src) {
                d.copy_from_slice(std::hint::black_box(s));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
