//! The admin batcher over the client crate's Admin against a real broker: a
//! batched `CreateTopics` refused for one bad topic still creates the others,
//! and a batched `DescribeTopics` naming a missing topic (which the broker
//! answers with NotFound for the whole call) still answers every caller.
//!
//! Needs the `tributary-broker` binary, found as in `local_mode.rs`; without
//! it the test says so and passes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tributary_operator::admin::{AdminError, Brokers, ClientBrokers, NewTopic};
use tributary_operator::admin_batch::{AdminBatcher, BatchConfig};

fn broker_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TRIBUTARY_BROKER_BIN") {
        return Some(PathBuf::from(p));
    }
    let sibling = Path::new(env!("CARGO_BIN_EXE_tributary-operator")).parent()?.join("tributary-broker");
    sibling.is_file().then_some(sibling)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a port")
}

/// Kills the broker when the test ends, however it ends.
struct Broker(Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn new_topic(name: &str, partitions: u32) -> NewTopic {
    NewTopic { name: name.into(), partitions, replication_factor: 1, configs: Default::default() }
}

#[tokio::test]
async fn batched_calls_against_a_real_broker() {
    let Some(bin) = broker_bin() else {
        eprintln!("skipped: no tributary-broker binary (cargo build --release -p tributary-broker)");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("broker.toml");
    std::fs::write(&config, "").expect("config");
    let (grpc, http) = (free_port(), free_port());
    let log = std::fs::File::create(dir.path().join("broker.log")).expect("log");
    let _broker = Broker(
        Command::new(&bin)
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen", &format!("127.0.0.1:{grpc}"), "--http-listen", &format!("127.0.0.1:{http}")])
            .args(["--node-id", "0"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start the broker"),
    );
    let address = format!("127.0.0.1:{grpc}");
    let brokers: Arc<dyn Brokers> = Arc::new(ClientBrokers::default());
    let mut ready = false;
    for _ in 0..100 {
        if brokers.describe_many(&address, &[]).await.is_ok() {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "broker not answering; log: {}", dir.path().join("broker.log").display());

    let b = AdminBatcher::new(brokers, BatchConfig::default());
    let (one, bad, two) = futures::join!(
        b.create(&address, new_topic("batch-one", 2)),
        b.create(&address, new_topic("batch-bad", 0)),
        b.create(&address, new_topic("batch-two", 3)),
    );
    one.expect("batch-one created");
    two.expect("batch-two created");
    match bad {
        Err(AdminError::Refused { message, .. }) => assert!(message.contains("batch-bad"), "{message}"),
        other => panic!("the bad topic gets its own refusal: {other:?}"),
    }

    let (one, missing, two) = futures::join!(
        b.describe(&address, "batch-one"),
        b.describe(&address, "batch-bad"),
        b.describe(&address, "batch-two"),
    );
    assert_eq!(one.expect("described").map(|o| o.partitions), Some(2));
    assert_eq!(missing.expect("a missing topic is not an error"), None);
    assert_eq!(two.expect("described").map(|o| o.partitions), Some(3));
    assert_eq!(b.describe(&address, "nothing-here").await.expect("described"), None);
}
