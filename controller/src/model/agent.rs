//! Agents: the hosts that registered, where their goal state goes, and
//! whether they are alive (Neutron's `agents`, as `openstack network agent
//! list` shows them).

use std::{
    net::Ipv4Addr,
    time::{Duration, SystemTime},
};

use alcor_types::Mac;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// How often agents are asked to send a heartbeat.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// An agent silent this long is shown as not alive.
pub const ALIVE_WITHIN: Duration = Duration::from_secs(3 * HEARTBEAT_INTERVAL.as_secs());

/// A registered agent, as stored: what changes only when the host does
/// (a heartbeat that says the same is not written).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// Neutron's agent id, made at the first registration.
    pub id: String,
    pub host_id: String,
    pub underlay_ip: Ipv4Addr,
    pub underlay_mac: Mac,
    /// Where its GoalStateProvisioner listens (`https://…` or `http://…`).
    pub endpoint: String,
    pub version: String,
    pub admin_state_up: bool,
    pub created_at: String,
    pub started_at: String,
}

/// The last heartbeat of an agent, stored apart from the record: written
/// every few seconds, read only to say whether it is alive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// When, in seconds since the Unix epoch.
    pub at: u64,
    pub ports: u32,
    pub ports_ready: u32,
}

impl Heartbeat {
    pub fn now(ports: u32, ports_ready: u32) -> Heartbeat {
        Heartbeat {
            at: unix_seconds(SystemTime::now()),
            ports,
            ports_ready,
        }
    }

    pub fn is_recent(&self, now: SystemTime) -> bool {
        unix_seconds(now).saturating_sub(self.at) <= ALIVE_WITHIN.as_secs()
    }
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// What a registration says, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    pub host_id: String,
    pub underlay_ip: Ipv4Addr,
    pub underlay_mac: Mac,
    pub endpoint: String,
    pub version: String,
}

impl Registration {
    /// Checks what an agent sent: the reason is for the agent's log.
    pub fn parse(
        host_id: &str,
        underlay_ip: &str,
        underlay_mac: &str,
        endpoint: &str,
        version: &str,
    ) -> Result<Registration, String> {
        if host_id.is_empty() || host_id.len() > 255 || host_id.chars().any(char::is_control) {
            return Err(format!("host_id {host_id:?} is not a host name"));
        }
        let underlay_ip = alcor_types::parse_ipv4(underlay_ip, "underlay_ip")?;
        let underlay_mac =
            Mac::parse_unicast(underlay_mac).map_err(|e| format!("underlay_mac: {e}"))?;
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(format!(
                "goal_state_endpoint {endpoint:?} is not an http:// or https:// URL"
            ));
        }
        Ok(Registration {
            host_id: host_id.to_string(),
            underlay_ip,
            underlay_mac,
            endpoint: endpoint.to_string(),
            version: version.chars().take(64).collect(),
        })
    }

    /// The record after this registration: `known`'s id and creation time
    /// kept, the rest as the agent says now.
    pub fn record(&self, known: Option<&AgentRecord>, started: bool) -> AgentRecord {
        let now = super::now();
        AgentRecord {
            id: known.map_or_else(|| uuid::Uuid::new_v4().to_string(), |k| k.id.clone()),
            host_id: self.host_id.clone(),
            underlay_ip: self.underlay_ip,
            underlay_mac: self.underlay_mac,
            endpoint: self.endpoint.clone(),
            version: self.version.clone(),
            admin_state_up: known.is_none_or(|k| k.admin_state_up),
            created_at: known.map_or_else(|| now.clone(), |k| k.created_at.clone()),
            started_at: match known {
                Some(known) if !started => known.started_at.clone(),
                _ => now,
            },
        }
    }
}

impl AgentRecord {
    /// As Neutron shows an agent.
    pub fn view(&self, heartbeat: Option<&Heartbeat>, now: SystemTime) -> Value {
        let heartbeat_timestamp = heartbeat.map(|beat| {
            humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_secs(beat.at))
                .to_string()
        });
        json!({
            "id": self.id,
            "agent_type": "Alcor agent",
            "binary": "alcor-agent",
            "topic": "N/A",
            "host": self.host_id,
            "admin_state_up": self.admin_state_up,
            "alive": heartbeat.is_some_and(|beat| beat.is_recent(now)),
            "availability_zone": null,
            "description": null,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "heartbeat_timestamp": heartbeat_timestamp,
            "resources_synced": null,
            "configurations": {
                "underlay_ip": self.underlay_ip.to_string(),
                "underlay_mac": self.underlay_mac.to_string(),
                "goal_state_endpoint": self.endpoint,
                "version": self.version,
                "ports": heartbeat.map_or(0, |beat| beat.ports),
                "ports_ready": heartbeat.map_or(0, |beat| beat.ports_ready),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registration() -> Registration {
        Registration::parse(
            "h1",
            "198.18.0.1",
            "02:00:00:00:00:01",
            "http://198.18.0.1:50001",
            "0.1",
        )
        .unwrap()
    }

    #[test]
    fn bad_registrations_say_why() {
        let bad = [
            ("", "198.18.0.1", "02:00:00:00:00:01", "http://x:1"),
            ("h1", "198.18.0", "02:00:00:00:00:01", "http://x:1"),
            ("h1", "198.18.0.1", "ff:ff:ff:ff:ff:ff", "http://x:1"),
            ("h1", "198.18.0.1", "02:00:00:00:00:01", "x:1"),
        ];
        for (host, ip, mac, endpoint) in bad {
            let error = Registration::parse(host, ip, mac, endpoint, "").unwrap_err();
            assert!(!error.is_empty());
        }
    }

    #[test]
    fn a_new_registration_keeps_the_agents_id_and_a_restart_moves_started_at() {
        let first = registration().record(None, true);
        let again = registration().record(Some(&first), false);
        assert_eq!(
            (again.id.as_str(), again.started_at.as_str()),
            (first.id.as_str(), first.started_at.as_str())
        );
        let mut old = first.clone();
        old.started_at = "2020-01-01T00:00:00Z".into();
        let restarted = registration().record(Some(&old), true);
        assert_eq!(restarted.id, first.id);
        assert_ne!(restarted.started_at, old.started_at);
    }

    #[test]
    fn alive_means_a_recent_heartbeat() {
        let record = registration().record(None, true);
        let beat = Heartbeat::now(2, 1);
        let now = SystemTime::now();
        assert_eq!(record.view(Some(&beat), now)["alive"], true);
        assert_eq!(
            record.view(Some(&beat), now + ALIVE_WITHIN * 2)["alive"],
            false
        );
        assert_eq!(record.view(None, now)["alive"], false);
        assert_eq!(
            record.view(Some(&beat), now)["configurations"]["ports_ready"],
            1
        );
    }
}
