//! Placeholder until the eBPF datapath lands (branch `ebpf`).
use std::path::Path;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortCounters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("datapath: {0}")]
    Other(String),
}

pub struct Datapath;

impl Datapath {
    pub fn open(_pin_dir: &Path) -> Result<Self, DatapathError> {
        Ok(Datapath)
    }
    pub fn attach_port(&mut self, _ifindex: u32) -> Result<(), DatapathError> {
        Ok(())
    }
    pub fn detach_port(&mut self, _ifindex: u32) -> Result<(), DatapathError> {
        Ok(())
    }
    pub fn attached_ports(&self) -> Result<Vec<u32>, DatapathError> {
        Ok(vec![])
    }
    pub fn port_counters(&self, _ifindex: u32) -> Result<PortCounters, DatapathError> {
        Ok(PortCounters::default())
    }
}
