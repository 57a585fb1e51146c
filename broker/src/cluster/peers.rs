//! How this broker reaches the others.
//!
//! `--peers ID@HOST:PORT,...` gives the inter-broker address of each peer as
//! this broker should dial it (a StatefulSet's stable pod names; in tests, a
//! per-link proxy). It forms the cluster from empty data directories; after
//! that membership lives in the quorum, and a broker that joined later is
//! reached at the address it registered.

use std::collections::BTreeMap;

use parking_lot::RwLock;

/// Parses `0@c-0.c-brokers:7070,1@c-1.c-brokers:7070`.
pub fn parse_peers(list: &str) -> Result<BTreeMap<i32, String>, String> {
    let mut peers = BTreeMap::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((id, address)) = item.split_once('@') else {
            return Err(format!("peer '{item}' is not ID@HOST:PORT"));
        };
        let id: i32 = id.trim().parse().map_err(|_| format!("peer '{item}': '{id}' is not a node id"))?;
        if id < 0 {
            return Err(format!("peer '{item}': node ids are 0 or more"));
        }
        let address = address.trim();
        if !address.contains(':') || address.starts_with(':') || address.ends_with(':') {
            return Err(format!("peer '{item}': '{address}' is not HOST:PORT"));
        }
        if peers.insert(id, address.to_string()).is_some() {
            return Err(format!("node id {id} is listed twice in --peers"));
        }
    }
    Ok(peers)
}

/// Parses `--controllers 0,1,2`.
pub fn parse_ids(list: &str) -> Result<Vec<i32>, String> {
    let mut ids = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let id: i32 = item.parse().map_err(|_| format!("'{item}' is not a node id"))?;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// Addresses of the other brokers: configured ones first, registered ones
/// for brokers the configuration does not name.
pub struct Peers {
    configured: BTreeMap<i32, String>,
    registered: RwLock<BTreeMap<i32, String>>,
}

impl Peers {
    pub fn new(configured: BTreeMap<i32, String>) -> Peers {
        Peers { configured, registered: RwLock::new(BTreeMap::new()) }
    }

    pub fn address(&self, id: i32) -> Option<String> {
        self.configured.get(&id).cloned().or_else(|| self.registered.read().get(&id).cloned())
    }

    pub fn set_registered(&self, addresses: BTreeMap<i32, String>) {
        *self.registered.write() = addresses;
    }

    pub fn configured(&self) -> &BTreeMap<i32, String> {
        &self.configured
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_lists_parse_and_bad_ones_say_why() {
        let p = parse_peers("0@a:1, 1@b.svc:7070,2@127.0.0.1:9").unwrap();
        assert_eq!(p.get(&1).map(String::as_str), Some("b.svc:7070"));
        assert_eq!(p.len(), 3);
        for bad in ["0:a:1", "x@a:1", "0@a", "0@a:1,0@b:2", "-1@a:1"] {
            assert!(parse_peers(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_ids("2, 0,2").unwrap(), vec![2, 0]);
        assert!(parse_ids("0,a").is_err());
    }

    #[test]
    fn configured_addresses_win_over_registered_ones() {
        let peers = Peers::new(parse_peers("0@proxy:1").unwrap());
        peers.set_registered([(0, "real:1".to_string()), (5, "new:1".to_string())].into_iter().collect());
        assert_eq!(peers.address(0).as_deref(), Some("proxy:1"));
        assert_eq!(peers.address(5).as_deref(), Some("new:1"));
        assert_eq!(peers.address(6), None);
    }
}
