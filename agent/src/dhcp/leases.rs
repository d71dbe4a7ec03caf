//! Leases: what each client was offered or holds. The goal state decides
//! addresses; leases record what clients were told, so that a declined
//! address is held back, a release is seen, and an operator can list them.
//!
//! The packet path only changes the table in memory and marks the lease
//! dirty; a flusher thread commits dirty leases to the state store in one
//! transaction at most every [`FLUSH_INTERVAL`], and once more when it
//! stops. A crash loses at most the last interval's changes, which costs
//! nothing: renewals are checked against the goal state, not the table.

use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
    sync::{
        Arc, Mutex, MutexGuard,
        mpsc::{self, RecvTimeoutError},
    },
    thread,
    time::{Duration, Instant, SystemTime},
};

use prost::Message;

use super::view::Binding;
use crate::{
    core::model::Mac,
    store::{LeaseWrite, Store, StoreError},
};

/// How often dirty leases are committed, at most.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(200);
/// How long an OFFER holds its address for the client.
const OFFER_HOLD_SECS: u64 = 60;
/// How long a declined address is not offered again (dnsmasq's choice).
const DECLINE_HOLD_SECS: u64 = 600;
/// How long an expired or released lease stays listed.
const RETENTION_SECS: u64 = 3600;
/// How often expired leases are pruned.
const PRUNE_INTERVAL: Duration = Duration::from_secs(60);

/// Seconds since the Unix epoch: leases outlive the process, so they keep
/// wall-clock time.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseState {
    Offered,
    Bound,
    /// The client found the address in use (DECLINE): held back a while.
    Declined,
    Released,
}

impl LeaseState {
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseState::Offered => "offered",
            LeaseState::Bound => "bound",
            LeaseState::Declined => "declined",
            LeaseState::Released => "released",
        }
    }

    fn wire(self) -> i32 {
        match self {
            LeaseState::Offered => 1,
            LeaseState::Bound => 2,
            LeaseState::Declined => 3,
            LeaseState::Released => 4,
        }
    }

    fn from_wire(value: i32) -> Option<LeaseState> {
        Some(match value {
            1 => LeaseState::Offered,
            2 => LeaseState::Bound,
            3 => LeaseState::Declined,
            4 => LeaseState::Released,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub vpc_id: Arc<str>,
    pub mac: Mac,
    pub ip: Ipv4Addr,
    pub port_id: Arc<str>,
    pub state: LeaseState,
    /// Unix seconds.
    pub expires_at: u64,
    pub hostname: String,
}

/// A lease as stored.
#[derive(Clone, PartialEq, prost::Message)]
struct LeaseRecord {
    #[prost(string, tag = "1")]
    vpc_id: String,
    #[prost(bytes = "vec", tag = "2")]
    mac: Vec<u8>,
    #[prost(fixed32, tag = "3")]
    ip: u32,
    #[prost(string, tag = "4")]
    port_id: String,
    #[prost(int32, tag = "5")]
    state: i32,
    #[prost(uint64, tag = "6")]
    expires_at: u64,
    #[prost(string, tag = "7")]
    hostname: String,
}

impl Lease {
    fn encode(&self) -> Vec<u8> {
        LeaseRecord {
            vpc_id: self.vpc_id.to_string(),
            mac: self.mac.octets().to_vec(),
            ip: u32::from(self.ip),
            port_id: self.port_id.to_string(),
            state: self.state.wire(),
            expires_at: self.expires_at,
            hostname: self.hostname.clone(),
        }
        .encode_to_vec()
    }

    fn decode(bytes: &[u8]) -> Result<Lease, String> {
        let record = LeaseRecord::decode(bytes).map_err(|e| e.to_string())?;
        let mac = <[u8; 6]>::try_from(record.mac.as_slice())
            .map_err(|_| format!("MAC of {} bytes", record.mac.len()))?;
        Ok(Lease {
            vpc_id: Arc::from(record.vpc_id),
            mac: Mac(mac),
            ip: Ipv4Addr::from(record.ip),
            port_id: Arc::from(record.port_id),
            state: LeaseState::from_wire(record.state)
                .ok_or_else(|| format!("unknown state {}", record.state))?,
            expires_at: record.expires_at,
            hostname: record.hostname,
        })
    }
}

type Key = (Arc<str>, Mac);

fn key_of(binding: &Binding) -> Key {
    (binding.vpc_id.clone(), binding.mac)
}

/// The leases in memory, and which changed since the last flush.
#[derive(Debug, Default)]
pub struct LeaseTable {
    leases: HashMap<Key, Lease>,
    dirty: HashSet<Key>,
}

impl LeaseTable {
    pub fn get(&self, vpc_id: &str, mac: Mac) -> Option<&Lease> {
        self.leases.get(&(Arc::from(vpc_id), mac))
    }

    pub fn len(&self) -> usize {
        self.leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Lease> {
        self.leases.values()
    }

    fn lease_of(&self, binding: &Binding) -> Option<&Lease> {
        self.leases.get(&key_of(binding))
    }

    fn put(&mut self, binding: &Binding, state: LeaseState, expires_at: u64) {
        let lease = Lease {
            vpc_id: binding.vpc_id.clone(),
            mac: binding.mac,
            ip: binding.ip,
            port_id: binding.port_id.clone(),
            state,
            expires_at,
            hostname: binding.hostname.clone(),
        };
        let key = key_of(binding);
        if self.leases.get(&key) != Some(&lease) {
            self.leases.insert(key.clone(), lease);
            self.dirty.insert(key);
        }
    }

    /// Records an OFFER; a client that holds this address keeps its lease.
    pub fn offer(&mut self, binding: &Binding, now: u64) {
        let holds_it = self.lease_of(binding).is_some_and(|lease| {
            lease.state == LeaseState::Bound && lease.ip == binding.ip && lease.expires_at > now
        });
        if !holds_it {
            self.put(binding, LeaseState::Offered, now + OFFER_HOLD_SECS);
        }
    }

    /// Records an ACK: the client holds its address for the lease time.
    pub fn bind(&mut self, binding: &Binding, now: u64) {
        let expires_at = now + u64::from(binding.subnet.lease_time);
        self.put(binding, LeaseState::Bound, expires_at);
    }

    /// Marks the address unavailable for a while (RFC 2131 §4.3.3).
    pub fn decline(&mut self, binding: &Binding, now: u64) {
        self.put(binding, LeaseState::Declined, now + DECLINE_HOLD_SECS);
    }

    pub fn release(&mut self, binding: &Binding, now: u64) {
        self.put(binding, LeaseState::Released, now);
    }

    /// Forgets an offer the client turned down for another server's.
    pub fn forget_offer(&mut self, binding: &Binding) {
        let key = key_of(binding);
        if self
            .leases
            .get(&key)
            .is_some_and(|lease| lease.state == LeaseState::Offered)
        {
            self.leases.remove(&key);
            self.dirty.insert(key);
        }
    }

    /// Whether the client declined this very address and it is held back.
    pub fn is_declined(&self, binding: &Binding, now: u64) -> bool {
        self.lease_of(binding).is_some_and(|lease| {
            lease.state == LeaseState::Declined && lease.ip == binding.ip && lease.expires_at > now
        })
    }

    /// The address the client holds or was offered, if any.
    pub fn address_of(&self, binding: &Binding) -> Option<Ipv4Addr> {
        self.lease_of(binding)
            .filter(|lease| matches!(lease.state, LeaseState::Offered | LeaseState::Bound))
            .map(|lease| lease.ip)
    }

    /// Drops the leases of ports that no longer exist: their addresses
    /// went with them. The store forgets them at the next flush.
    pub fn forget_ports(&mut self, exists: impl Fn(&str) -> bool) {
        let dirty = &mut self.dirty;
        self.leases.retain(|key, lease| {
            let keep = exists(&lease.port_id);
            if !keep {
                dirty.insert(key.clone());
            }
            keep
        });
    }

    /// Drops leases that expired more than the retention time ago.
    fn prune(&mut self, now: u64) {
        let dirty = &mut self.dirty;
        self.leases.retain(|key, lease| {
            let keep = lease.expires_at + RETENTION_SECS > now;
            if !keep {
                dirty.insert(key.clone());
            }
            keep
        });
    }

    /// The writes that bring the store up to date; the leases count as
    /// clean from now on.
    fn take_writes(&mut self) -> Vec<LeaseWrite> {
        self.dirty
            .drain()
            .map(|key| LeaseWrite {
                record: self.leases.get(&key).map(Lease::encode),
                vpc_id: key.0.to_string(),
                mac: key.1.octets(),
            })
            .collect()
    }

    /// Marks leases dirty again after a failed commit, unless they changed
    /// meanwhile (then they are dirty already).
    fn restore(&mut self, writes: Vec<LeaseWrite>) {
        for write in writes {
            self.dirty.insert((Arc::from(write.vpc_id), Mac(write.mac)));
        }
    }
}

/// The lease table shared by the packet path, the flusher and readers.
pub struct Leases {
    table: Mutex<LeaseTable>,
    store: Option<Arc<Store>>,
}

impl Leases {
    /// Leases kept in memory only.
    pub fn in_memory() -> Leases {
        Leases {
            table: Mutex::default(),
            store: None,
        }
    }

    /// Loads the stored leases; the table is then flushed to `store`.
    /// A lease that does not decode is reported and left out.
    pub fn load(store: Arc<Store>) -> Result<Leases, StoreError> {
        let mut table = LeaseTable::default();
        for bytes in store.load_leases()? {
            match Lease::decode(&bytes) {
                Ok(lease) => {
                    table
                        .leases
                        .insert((lease.vpc_id.clone(), lease.mac), lease);
                }
                Err(reason) => tracing::warn!(%reason, "stored DHCP lease skipped"),
            }
        }
        Ok(Leases {
            table: Mutex::new(table),
            store: Some(store),
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, LeaseTable> {
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A copy of every lease, for listing.
    pub fn snapshot(&self) -> Vec<Lease> {
        self.lock().iter().cloned().collect()
    }

    /// Commits the dirty leases (without holding the table while the disk
    /// works); returns how many were written.
    pub fn flush(&self) -> Result<usize, StoreError> {
        let Some(store) = &self.store else {
            self.lock().dirty.clear();
            return Ok(0);
        };
        let writes = self.lock().take_writes();
        let count = writes.len();
        if let Err(error) = store.commit_leases(&writes) {
            self.lock().restore(writes);
            return Err(error);
        }
        Ok(count)
    }
}

/// The thread that flushes leases; stopping (or dropping) it flushes once
/// more.
pub struct Flusher {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Flusher {
    pub fn start(leases: Arc<Leases>) -> std::io::Result<Flusher> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = thread::Builder::new()
            .name("dhcp-leases".into())
            .spawn(move || {
                let mut last_prune = Instant::now();
                loop {
                    let stopping = match stopped.recv_timeout(FLUSH_INTERVAL) {
                        Err(RecvTimeoutError::Timeout) => false,
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => true,
                    };
                    if last_prune.elapsed() >= PRUNE_INTERVAL {
                        leases.lock().prune(unix_now());
                        last_prune = Instant::now();
                    }
                    if let Err(error) = leases.flush() {
                        tracing::error!(%error, "DHCP leases not persisted; retrying");
                    }
                    if stopping {
                        return;
                    }
                }
            })?;
        Ok(Flusher {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Flushes once more and waits for the thread to end.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the DHCP lease flusher panicked");
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.shut_down();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp::{
        testing::*,
        view::{DhcpSettings, DhcpView},
    };

    const NOW: u64 = 1_800_000_000;

    fn view() -> DhcpView {
        DhcpView::build(
            &Fixture::new().desired,
            Fixture::ready_ports(),
            &DhcpSettings::default(),
        )
    }

    #[test]
    fn an_offer_does_not_downgrade_a_bound_lease() {
        let view = view();
        let binding = view.lookup(A1_IFINDEX, CLIENT_MAC).unwrap();
        let mut table = LeaseTable::default();
        table.offer(binding, NOW);
        let lease = table.get("vpc-a", CLIENT_MAC).unwrap();
        assert_eq!(
            (lease.state, lease.expires_at),
            (LeaseState::Offered, NOW + OFFER_HOLD_SECS)
        );
        table.bind(binding, NOW);
        table.offer(binding, NOW + 1);
        let lease = table.get("vpc-a", CLIENT_MAC).unwrap();
        assert_eq!(
            (lease.state, lease.expires_at),
            (LeaseState::Bound, NOW + 86_400)
        );
        assert_eq!(lease.hostname, "vm-a1");
        assert_eq!(&*lease.port_id, "port-a1");
    }

    #[test]
    fn the_leases_of_a_deleted_port_go_at_the_next_flush() {
        let view = view();
        let binding = view.lookup(A1_IFINDEX, CLIENT_MAC).unwrap();
        let mut table = LeaseTable::default();
        table.bind(binding, NOW);
        table.dirty.clear();
        table.forget_ports(|port_id| port_id == "port-a1");
        assert_eq!(table.len(), 1);
        table.forget_ports(|_| false);
        assert!(table.is_empty());
        assert_eq!(table.dirty.len(), 1, "the store must forget it too");
    }

    #[test]
    fn only_an_offer_is_forgotten() {
        let view = view();
        let binding = view.lookup(A1_IFINDEX, CLIENT_MAC).unwrap();
        let mut table = LeaseTable::default();
        table.offer(binding, NOW);
        table.forget_offer(binding);
        assert!(table.is_empty());
        table.bind(binding, NOW);
        table.forget_offer(binding);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn a_declined_address_is_held_back_for_a_while() {
        let view = view();
        let binding = view.lookup(A1_IFINDEX, CLIENT_MAC).unwrap();
        let mut table = LeaseTable::default();
        table.decline(binding, NOW);
        assert!(table.is_declined(binding, NOW + DECLINE_HOLD_SECS - 1));
        assert!(!table.is_declined(binding, NOW + DECLINE_HOLD_SECS));
        assert_eq!(table.address_of(binding), None);
    }

    #[test]
    fn pruning_drops_leases_long_expired() {
        let view = view();
        let mut table = LeaseTable::default();
        table.release(view.lookup(A1_IFINDEX, CLIENT_MAC).unwrap(), NOW);
        table.bind(view.lookup(A2_IFINDEX, A2_MAC).unwrap(), NOW);
        table.take_writes();
        table.prune(NOW + RETENTION_SECS);
        assert!(table.get("vpc-a", CLIENT_MAC).is_none());
        assert!(table.get("vpc-a", A2_MAC).is_some());
        let writes = table.take_writes();
        assert_eq!(writes.len(), 1);
        assert!(writes[0].record.is_none(), "the pruned lease is deleted");
    }

    #[test]
    fn flushed_leases_load_back_and_only_dirty_ones_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let view = view();
        {
            let leases = Leases::load(Arc::new(Store::open(dir.path()).unwrap())).unwrap();
            let mut table = leases.lock();
            table.bind(view.lookup(A1_IFINDEX, CLIENT_MAC).unwrap(), NOW);
            table.offer(view.lookup(B1_IFINDEX, B1_MAC).unwrap(), NOW);
            drop(table);
            assert_eq!(leases.flush().unwrap(), 2);
            assert_eq!(leases.flush().unwrap(), 0, "nothing changed since");
            leases
                .lock()
                .forget_offer(view.lookup(B1_IFINDEX, B1_MAC).unwrap());
            assert_eq!(leases.flush().unwrap(), 1);
        }
        let leases = Leases::load(Arc::new(Store::open(dir.path()).unwrap())).unwrap();
        let loaded = leases.snapshot();
        assert_eq!(loaded.len(), 1);
        let lease = &loaded[0];
        assert_eq!(
            (&*lease.vpc_id, lease.mac, lease.ip),
            ("vpc-a", CLIENT_MAC, A1_IP)
        );
        assert_eq!(
            (lease.state, lease.expires_at),
            (LeaseState::Bound, NOW + 86_400)
        );
        assert_eq!(
            (&*lease.port_id, lease.hostname.as_str()),
            ("port-a1", "vm-a1")
        );
    }

    #[test]
    fn the_flusher_persists_within_its_interval_and_when_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let leases = Arc::new(Leases::load(store.clone()).unwrap());
        let view = view();
        let flusher = Flusher::start(leases.clone()).unwrap();
        leases
            .lock()
            .bind(view.lookup(A1_IFINDEX, CLIENT_MAC).unwrap(), NOW);
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.load_leases().unwrap().is_empty() {
            assert!(Instant::now() < deadline, "not flushed in 10 s");
            thread::sleep(Duration::from_millis(20));
        }
        leases
            .lock()
            .bind(view.lookup(A2_IFINDEX, A2_MAC).unwrap(), NOW);
        flusher.stop();
        assert_eq!(store.load_leases().unwrap().len(), 2);
    }
}
