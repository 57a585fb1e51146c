//! Storage engine throughput: appending 1000 x 100-byte record batches to a
//! partition log (segment file + RocksDB index), and reading them back the
//! way a fetch does (index lookup, then one positioned read). The `audit`
//! group measures the completeness audit's cost on the append path: the
//! same append alone, the leader's count alone (`Audit::appended` and its
//! commit once the high watermark passes), and both, in one run.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use tributary_broker::audit::Audit;
use tributary_broker::config::TopicConfig;
use tributary_broker::log::fs;
use tributary_broker::log::index::PartitionIndex;
use tributary_broker::log::{Locate, PartitionLog, ReadOutcome};
use tributary_broker::partition::Partition;
use tributary_broker::store::Store;
use tributary_proto::batch::{BatchBuilder, Compression};

const RECORDS: i64 = 1000;

fn batch() -> Vec<u8> {
    let value = [7u8; 100];
    let mut b = BatchBuilder::with_capacity(Compression::None, 1_700_000_000_000, 110 * RECORDS as usize);
    for i in 0..RECORDS {
        b.append(1_700_000_000_000 + i, None, Some(&value), &[]);
    }
    b.build().to_vec()
}

fn open(dir: &std::path::Path) -> PartitionLog {
    let store = Store::open(&dir.join("rocksdb"), 8 << 20, 32 << 20).expect("store");
    store.create_cf("p/bench-0").expect("cf");
    let index = PartitionIndex::new(store, "p/bench-0".into());
    PartitionLog::open(fs::real(), dir.join("bench-0"), "bench".into(), 0, index, &TopicConfig::default(), 0)
        .expect("log")
}

fn append(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = open(dir.path());
    let config = TopicConfig::default();
    let data = batch();
    let mut g = c.benchmark_group("log");
    g.throughput(Throughput::Elements(RECORDS as u64));
    g.bench_function("append_1000x100B", |b| {
        b.iter(|| log.append(&data, &config, 1_700_000_000_000).expect("append"))
    });
    // Read back batches at random positions of what was appended.
    let end = log.log_end_offset();
    let mut next = 0i64;
    g.bench_function("read_1000x100B", |b| {
        b.iter_batched(
            || {
                next = (next + 7 * RECORDS) % end.max(1);
                next
            },
            |offset| match log.locate(offset).expect("locate") {
                Locate::Read(plan) => match plan.read(110 * RECORDS as usize).expect("read") {
                    ReadOutcome::Data(b) => b,
                    _ => panic!("offset {offset} not readable"),
                },
                _ => panic!("offset {offset} not readable"),
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// The audit's cost: a partition append alone against the same append
/// counted by the audit (per window, from the batch header) and committed.
fn audit(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Partition::new(open(dir.path()), fs::real());
    let config = TopicConfig::default();
    let data = batch();
    let audit = Audit::new(60_000, u64::MAX);
    let mut g = c.benchmark_group("audit");
    g.throughput(Throughput::Elements(RECORDS as u64));
    g.bench_function("append_1000x100B", |b| {
        b.iter(|| p.append(&data, &config, 1_700_000_000_000).expect("append"))
    });
    // The count alone (header-only counting and the commit once the high
    // watermark passed), of a batch already in the log.
    let info = p.append(&data, &config, 1_700_000_000_000).expect("append");
    let end = info.last_offset + 1;
    g.bench_function("count_1000x100B", |b| {
        b.iter(|| {
            audit.appended("bench", 0, 0, &data, end - info.records, end);
            audit.commit_all(|_, _| Some(p.clone()));
        })
    });
    g.bench_function("append_1000x100B_counted", |b| {
        b.iter(|| {
            let info = p.append(&data, &config, 1_700_000_000_000).expect("append");
            let end = info.last_offset + 1;
            audit.appended("bench", 0, 0, &data, end - info.records, end);
            audit.commit_all(|_, _| Some(p.clone()));
        })
    });
    g.finish();
}

criterion_group!(benches, append, audit);
criterion_main!(benches);
