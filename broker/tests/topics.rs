//! Issue 7, defect 10: topic delete fences in-flight work, state is tied to
//! the topic's id, and the orphan clean-up removes only what the broker made.

use std::collections::BTreeMap;
use std::sync::Arc;

use tributary_broker::config::TopicConfig;
use tributary_broker::log::fs;
use tributary_broker::log::index::META_RECOVERY_POINT;
use tributary_broker::store::Store;
use tributary_broker::topics::{NewTopic, Topics};
use tributary_proto::batch::{BatchBuilder, Compression};

const NOW: i64 = 1_700_000_000_000;

fn load(dir: &std::path::Path) -> (Arc<Store>, Topics) {
    let store = Store::open(&dir.join("rocksdb"), 8 << 20, 32 << 20).unwrap();
    let topics = Topics::load(store.clone(), fs::real(), dir, TopicConfig::default(), NOW).unwrap();
    (store, topics)
}

fn new_topic(name: &str, configs: &[(&str, &str)]) -> NewTopic {
    NewTopic {
        name: name.into(),
        partitions: 1,
        replication_factor: 1,
        configs: configs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
    }
}

fn record(v: &str) -> Vec<u8> {
    let mut b = BatchBuilder::new(Compression::None, NOW);
    b.append(NOW, None, Some(v.as_bytes()), &[]);
    b.build().to_vec()
}

#[test]
fn a_deleted_topics_late_fsync_never_reaches_its_successor() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, topics) = load(dir.path());
    topics.create(vec![new_topic("t", &[("flush.messages", "1")])], false, NOW).unwrap();
    let p = topics.partition("t", 0).unwrap();
    let config = topics.get("t").unwrap().config();
    for i in 0..5 {
        let info = p.append(&record(&format!("old-{i}")), &config, NOW).unwrap();
        info.sync.unwrap().sync().unwrap();
    }
    // An fsync ticket still in flight when the topic goes.
    let ticket = p.append(&record("in flight"), &config, NOW).unwrap().sync.unwrap();
    topics.delete(&["t".to_string()]).unwrap();
    topics.create(vec![new_topic("t", &[("flush.messages", "1")])], false, NOW).unwrap();
    assert!(ticket.sync().is_err(), "work on a deleted partition must be refused");
    assert!(p.append(&record("late"), &config, NOW).is_err());
    let fresh = topics.partition("t", 0).unwrap();
    let rp = fresh.with_log(|log| log.index().meta(META_RECOVERY_POINT).unwrap());
    assert_eq!(rp, None, "the old partition's recovery point reached the new one");
    drop((fresh, p, topics, _store));
    // After an unclean restart the new topic is empty and takes offsets from 0.
    let (_store, topics) = load(dir.path());
    let fresh = topics.partition("t", 0).unwrap();
    assert_eq!(fresh.with_log(|log| log.log_end_offset()), 0);
    let info = fresh.append(&record("new"), &config, NOW).unwrap();
    assert_eq!(info.base_offset, 0);
}

#[test]
fn orphan_clean_up_removes_only_what_the_broker_made() {
    let dir = tempfile::tempdir().unwrap();
    // Someone else's directory that merely looks like a partition.
    let stranger = dir.path().join("foo-123");
    std::fs::create_dir_all(&stranger).unwrap();
    std::fs::write(stranger.join("notes.txt"), "mine").unwrap();
    {
        let (store, topics) = load(dir.path());
        topics.create(vec![new_topic("x", &[])], false, NOW).unwrap();
        // An interrupted delete: metadata gone, data left.
        store.meta_delete("topic/x").unwrap();
    }
    let (_store, topics) = load(dir.path());
    assert!(topics.get("x").is_err());
    assert!(!dir.path().join("x-0").exists(), "the deleted topic's data was left behind");
    assert!(stranger.join("notes.txt").exists(), "a directory the broker did not make was removed");
}
