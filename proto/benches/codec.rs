//! Batch codec throughput: encoding 1000 x 100-byte records (the producer's
//! hot path), verifying a batch (the broker's) and decoding it (the consumer's).

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tributary_proto::batch::{records, verify, BatchBuilder, Compression};

fn build(compression: Compression) -> Bytes {
    let value = [7u8; 100];
    let mut b = BatchBuilder::with_capacity(compression, 1_700_000_000_000, 1000 * 110);
    for i in 0..1000i64 {
        b.append(1_700_000_000_000 + i, None, Some(&value), &[]);
    }
    b.build()
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("batch_1000x100B");
    g.throughput(Throughput::Elements(1000));
    for compression in Compression::ALL {
        let name = format!("{compression:?}").to_lowercase();
        g.bench_function(format!("encode/{name}"), |b| b.iter(|| build(compression)));
        let batch = build(compression);
        g.bench_function(format!("verify/{name}"), |b| b.iter(|| verify(&batch).unwrap()));
        g.bench_function(format!("decode/{name}"), |b| {
            b.iter(|| records(&batch).unwrap().map(|r| r.unwrap().offset).sum::<i64>())
        });
    }
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
