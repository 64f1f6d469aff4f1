//! Criterion benches of keel-verity's hot paths: building a tree in memory on one and on
//! all cores, and verifying single blocks lazily.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a bench stops on any failure

use criterion::{criterion_main, BenchmarkId, Criterion, Throughput};
use keel::verity::{
    BlockVerifier, BuildOptions, HashAlgorithm, HashTree, Threads, TreeGeometry, VerityParams,
};

fn data(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

fn build(c: &mut Criterion) {
    let image = data(64 << 20);
    let mut g = c.benchmark_group("tree-build-64MiB");
    g.throughput(Throughput::Bytes(image.len() as u64));
    g.sample_size(10);
    for alg in [
        HashAlgorithm::Sha256,
        HashAlgorithm::Sha512,
        HashAlgorithm::Sha1,
    ] {
        let p = VerityParams::builder()
            .algorithm(alg)
            .salt(vec![7; 32])
            .data_blocks_for(image.len() as u64)
            .build()
            .unwrap();
        for threads in [1usize, 2] {
            let opts = BuildOptions::default().threads(Threads::exactly(threads));
            g.bench_with_input(
                BenchmarkId::new(alg.name(), format!("{threads}-thread")),
                &opts,
                |b, o| b.iter(|| HashTree::build_with(&p, &image, o).unwrap()),
            );
        }
    }
    g.finish();
}

fn lazy(c: &mut Criterion) {
    let image = data(64 << 20);
    let p = VerityParams::builder()
        .salt(vec![7; 32])
        .data_blocks_for(image.len() as u64)
        .build()
        .unwrap();
    let tree = HashTree::build(&p, &image).unwrap();
    let g = TreeGeometry::new(&p, 0, false).unwrap();
    let mut group = c.benchmark_group("lazy-verify");
    group.throughput(Throughput::Bytes(4096));
    group.bench_function("one-block-cached-path", |b| {
        let mut v = BlockVerifier::new(&p, &g, tree.as_bytes(), tree.root_hash()).unwrap();
        let mut i = 0u64;
        b.iter(|| {
            i = (i + 7919) % p.data_blocks();
            let s = i as usize * 4096;
            v.verify_block(i, &image[s..s + 4096]).unwrap()
        })
    });
    group.finish();
}

fn incremental(c: &mut Criterion) {
    let mut image = data(64 << 20);
    let p = VerityParams::builder()
        .salt(vec![7; 32])
        .data_blocks_for(image.len() as u64)
        .build()
        .unwrap();
    let mut tree = HashTree::build(&p, &image).unwrap();
    let mut g = c.benchmark_group("update-after-one-changed-block-64MiB");
    g.sample_size(10);
    g.bench_function("incremental", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 4099) % image.len();
            image[i] ^= 1;
            let changed = std::ops::Range {
                start: i as u64,
                end: i as u64 + 1,
            };
            tree.update(&image, std::slice::from_ref(&changed)).unwrap();
        })
    });
    g.bench_function("full-rebuild", |b| {
        b.iter(|| HashTree::build(&p, &image).unwrap())
    });
    g.finish();
}

mod group {
    #![allow(missing_docs)]
    criterion::criterion_group!(benches, super::build, super::lazy, super::incremental);
}
criterion_main!(group::benches);
