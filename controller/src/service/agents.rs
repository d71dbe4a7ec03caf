//! Agents in the store: their registrations and heartbeats, whether a host
//! may have ports bound to it, and the statuses their replies give ports.
//!
//! Keys: `agent/{host}` (the record, written when it changes) and
//! `agent-heartbeat/{host}` (written at every heartbeat, never compared);
//! who serves each agent is in [`super::owners`].

use std::{collections::HashMap, time::SystemTime};

use serde_json::Value;

use super::{
    AGENT, Controller, Try, decode,
    owners::{OWNER, owner_id},
    resource_key, resource_prefix, retrying,
};
use crate::{
    error::{ApiError, ApiResult},
    model::{
        Port, Resource,
        agent::{AgentRecord, Heartbeat, Registration},
    },
    store::{Entry, Txn},
};

/// Not a change anything is computed from: watchers skip it.
pub const HEARTBEAT: &str = "agent-heartbeat";
/// Port statuses written per transaction: a compare and a write each, 128
/// in all, etcd's default `--max-txn-ops` (the owner's compare besides).
const STATUS_BATCH: usize = 64;

/// What the agents' replies say of a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortStatus {
    pub port_id: String,
    /// `ACTIVE`, `DOWN` or `ERROR`.
    pub status: &'static str,
    /// Why it is not `ACTIVE` (empty when it is).
    pub detail: String,
}

impl Controller {
    /// Records an agent's heartbeat, and its registration if it changed:
    /// whether it did (its host's goal state may differ).
    pub async fn register_agent(
        &self,
        registration: &Registration,
        started: bool,
        heartbeat: Heartbeat,
    ) -> ApiResult<bool> {
        let key = resource_key(AGENT, &registration.host_id);
        let changed = retrying(|| {
            let key = key.clone();
            Box::pin(async move {
                let known = self.store.get(&key).await?;
                let record: Option<AgentRecord> = known.as_ref().map(decode).transpose()?;
                let new = registration.record(record.as_ref(), started);
                if record.as_ref() == Some(&new) {
                    return Ok(Try::Done(false));
                }
                let mut txn = Txn::default();
                match &known {
                    Some(entry) => txn.require_unchanged(entry),
                    None => txn.require_absent(&key),
                };
                txn.put(key.clone(), serde_json::to_vec(&new).unwrap_or_default());
                Ok(match self.commit(txn).await? {
                    Try::Done(()) => Try::Done(true),
                    Try::Again => Try::Again,
                })
            })
        })
        .await?;
        let mut txn = Txn::default();
        txn.put(
            resource_key(HEARTBEAT, &registration.host_id),
            serde_json::to_vec(&heartbeat).unwrap_or_default(),
        );
        self.store.commit(txn).await?;
        Ok(changed)
    }

    /// Whether `host` has a registered agent.
    pub async fn agent_registered(&self, host: &str) -> ApiResult<bool> {
        Ok(self.store.get(&resource_key(AGENT, host)).await?.is_some())
    }

    /// Refuses a binding to a host without an agent.
    pub(super) async fn check_binding(&self, host: &str) -> ApiResult<()> {
        if host.is_empty() || self.agent_registered(host).await? {
            return Ok(());
        }
        Err(ApiError::conflict(
            "HostNotRegistered",
            format!(
                "Cannot bind the port to host {host}: no agent has registered from it \
                 (`openstack network agent list` shows the hosts that have)."
            ),
        ))
    }

    /// Every registered agent, as Neutron shows them, in host order.
    pub async fn agent_views(&self) -> ApiResult<Vec<Value>> {
        let records: Vec<AgentRecord> = self
            .store
            .list(&resource_prefix(AGENT))
            .await?
            .iter()
            .map(decode)
            .collect::<ApiResult<_>>()?;
        let mut heartbeats: HashMap<String, Heartbeat> = HashMap::new();
        for entry in self.store.list(&resource_prefix(HEARTBEAT)).await? {
            let host = entry.key.trim_start_matches(&resource_prefix(HEARTBEAT));
            // A damaged heartbeat only makes its agent look dead.
            if let Ok(beat) = serde_json::from_slice(&entry.value) {
                heartbeats.insert(host.to_string(), beat);
            }
        }
        let owners: HashMap<String, String> = self
            .store
            .list(&resource_prefix(OWNER))
            .await?
            .iter()
            .map(|entry| {
                let host = entry.key.trim_start_matches(&resource_prefix(OWNER));
                (host.to_string(), owner_id(entry))
            })
            .collect();
        let now = SystemTime::now();
        Ok(records
            .iter()
            .map(|record| {
                let mut view = record.view(heartbeats.get(&record.host_id), now);
                // Which controller instance pushes to it (none: not yet, or
                // its instance died and another is about to take it over).
                view["configurations"]["controller"] = owners.get(&record.host_id).cloned().into();
                view
            })
            .collect())
    }

    /// Sets ports' statuses as their agents report them; a port gone or
    /// already showing the status is left alone. A reply can carry
    /// thousands: they are written [`STATUS_BATCH`] to a transaction (one
    /// commit each, not one per port), each read again and retried alone
    /// if another writer changed one of its ports meanwhile. With `owner`
    /// (the owner key of the agent's host, as claimed), only while it is
    /// unchanged: an instance that no longer serves the host writes nothing
    /// (409 `NotTheOwner`).
    pub async fn set_port_statuses(
        &self,
        statuses: &[PortStatus],
        owner: Option<&Entry>,
    ) -> ApiResult<()> {
        for batch in statuses.chunks(STATUS_BATCH) {
            retrying(|| {
                Box::pin(async move {
                    let mut txn = Txn::default();
                    for status in batch {
                        let key = resource_key(Port::KIND, &status.port_id);
                        let Some(entry) = self.store.get(&key).await? else {
                            continue;
                        };
                        let mut port: Port = decode(&entry)?;
                        if port.status == status.status && port.status_detail == status.detail {
                            continue;
                        }
                        port.status = status.status.into();
                        port.status_detail.clone_from(&status.detail);
                        port.meta.touch();
                        txn.require_unchanged(&entry)
                            .put(key, serde_json::to_vec(&port).unwrap_or_default());
                    }
                    if txn.ops.is_empty() {
                        return Ok(Try::Done(()));
                    }
                    if let Some(owner) = owner {
                        txn.require_unchanged(owner);
                    }
                    match self.commit(txn).await? {
                        Try::Again
                            if let Some(owner) = owner
                                && !self.still_owner(owner).await? =>
                        {
                            Err(ApiError::conflict(
                                "NotTheOwner",
                                format!(
                                    "{} changed: this instance no longer serves its agent",
                                    owner.key
                                ),
                            ))
                        }
                        done => Ok(done),
                    }
                })
            })
            .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use alcor_proto::schema::{NeighborType, OperationType};
    use serde_json::json;

    use super::*;
    use crate::{
        body::resource,
        goalstate::{diff, host_states},
        model::{
            router::{InterfaceRequest, RouterCreate},
            subnet::SubnetCreate,
        },
        service::testing::*,
    };

    async fn register(controller: &Controller, host: &str, ip: &str) {
        let registration = Registration::parse(
            host,
            ip,
            "02:00:00:00:00:01",
            &format!("http://{ip}:50001"),
            "test",
        )
        .unwrap();
        controller
            .register_agent(&registration, true, Heartbeat::now(0, 0))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn ports_bind_only_to_registered_hosts_and_start_down() {
        let (_dir, controller) = controller();
        let (network, _) = network_with_subnet(&controller, json!({}), "10.0.0.0/24").await;
        let bound =
            |host: &str| port(json!({"network_id": network.meta.id, "binding:host_id": host}));
        let before = snapshot(&controller).await;
        let error = refused(
            controller.create_ports(&[bound("h1")]).await,
            409,
            "HostNotRegistered",
        );
        assert!(error.message.contains("h1"), "{error}");
        assert_eq!(
            snapshot(&controller).await,
            before,
            "a refused binding writes nothing"
        );

        register(&controller, "h1", "198.18.0.1").await;
        let created = controller.create_ports(&[bound("h1")]).await.unwrap();
        assert_eq!(created[0].status, "DOWN");
        let views = controller.agent_views().await.unwrap();
        assert_eq!(
            (views.len(), &views[0]["host"], &views[0]["alive"]),
            (1, &json!("h1"), &json!(true))
        );

        // The agent's word moves the status; a move to another host resets it.
        let id = created[0].meta.id.clone();
        let active = PortStatus {
            port_id: id.clone(),
            status: "ACTIVE",
            detail: String::new(),
        };
        controller.set_port_statuses(&[active], None).await.unwrap();
        assert_eq!(controller.show::<Port>(&id).await.unwrap().status, "ACTIVE");
        let update = crate::model::port::PortUpdate::parse(
            resource(&json!({"port": {"binding:host_id": "h2"}}), "port").unwrap(),
        )
        .unwrap();
        refused(
            controller.update_port(&id, &update, None).await,
            409,
            "HostNotRegistered",
        );
        register(&controller, "h2", "198.18.0.2").await;
        let moved = controller.update_port(&id, &update, None).await.unwrap();
        assert_eq!(
            (moved.binding_host_id.as_str(), moved.status.as_str()),
            ("h2", "DOWN")
        );
    }

    /// Statuses written under an owner key hold only while it does: an
    /// instance that gave the host up (or lost it with its lease) writes
    /// nothing more, whoever owns the host now.
    #[tokio::test]
    async fn only_the_owner_writes_port_statuses() {
        let (_dir, controller) = controller();
        register(&controller, "h1", "198.18.0.1").await;
        let (network, _) = network_with_subnet(&controller, json!({}), "10.0.0.0/24").await;
        let created = controller
            .create_ports(&[port(
                json!({"network_id": network.meta.id, "binding:host_id": "h1"}),
            )])
            .await
            .unwrap();
        let id = created[0].meta.id.clone();
        let status = |status| PortStatus {
            port_id: id.clone(),
            status,
            detail: String::new(),
        };
        let lease = controller
            .grant_lease(std::time::Duration::from_secs(5))
            .await
            .unwrap();
        let old = controller
            .claim_host("h1", "a", lease)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            controller.claim_host("h1", "b", lease).await.unwrap(),
            None,
            "one owner at a time"
        );
        controller
            .set_port_statuses(&[status("ACTIVE")], Some(&old))
            .await
            .unwrap();
        assert_eq!(controller.show::<Port>(&id).await.unwrap().status, "ACTIVE");

        assert!(controller.release_host(&old).await.unwrap().is_some());
        let new = controller
            .claim_host("h1", "b", lease)
            .await
            .unwrap()
            .unwrap();
        refused(
            controller
                .set_port_statuses(&[status("ERROR")], Some(&old))
                .await,
            409,
            "NotTheOwner",
        );
        assert_eq!(controller.show::<Port>(&id).await.unwrap().status, "ACTIVE");
        controller
            .set_port_statuses(&[status("DOWN")], Some(&new))
            .await
            .unwrap();
        assert_eq!(controller.show::<Port>(&id).await.unwrap().status, "DOWN");
        let views = controller.agent_views().await.unwrap();
        assert_eq!(views[0]["configurations"]["controller"], "b");
    }

    #[tokio::test]
    async fn statuses_are_written_in_batches_and_skip_ports_gone() {
        let (_dir, controller) = controller();
        register(&controller, "h1", "198.18.0.1").await;
        let (network, _) = network_with_subnet(&controller, json!({}), "10.0.0.0/24").await;
        let creates: Vec<_> = (0..STATUS_BATCH * 2 + 2)
            .map(|_| port(json!({"network_id": network.meta.id, "binding:host_id": "h1"})))
            .collect();
        let ports = controller.create_ports(&creates).await.unwrap();
        let mut statuses: Vec<PortStatus> = ports
            .iter()
            .map(|port| PortStatus {
                port_id: port.meta.id.clone(),
                status: "ACTIVE",
                detail: String::new(),
            })
            .collect();
        statuses.insert(
            1,
            PortStatus {
                port_id: "gone".into(),
                status: "ACTIVE",
                detail: String::new(),
            },
        );
        let (before, _) = controller.inventory().await.unwrap();
        controller.set_port_statuses(&statuses, None).await.unwrap();
        let (after, _) = controller.inventory().await.unwrap();
        assert_eq!(after - before, 3, "one commit a batch");
        for port in controller.list::<Port>().await.unwrap() {
            assert_eq!(port.status, "ACTIVE");
        }
        // Nothing to change: nothing written.
        controller.set_port_statuses(&statuses, None).await.unwrap();
        assert_eq!(controller.inventory().await.unwrap().0, after);
    }

    #[tokio::test]
    async fn each_host_gets_its_ports_and_the_others_as_neighbors() {
        let (_dir, controller) = controller();
        register(&controller, "h1", "198.18.0.1").await;
        register(&controller, "h2", "198.18.0.2").await;
        register(&controller, "h3", "198.18.0.3").await;
        let (network, first) = network_with_subnet(&controller, json!({}), "10.0.1.0/24").await;
        let second = controller
            .create_subnet(
                SubnetCreate::parse(
                    resource(
                        &json!({"subnet": {"network_id": network.meta.id, "cidr": "10.0.2.0/24"}}),
                        "subnet",
                    )
                    .unwrap(),
                )
                .unwrap(),
            )
            .await
            .unwrap();
        let router = controller
            .create_router(
                RouterCreate::parse(resource(&json!({"router": {"name": "r"}}), "router").unwrap())
                    .unwrap(),
            )
            .await
            .unwrap();
        for subnet in [&first, &second] {
            controller
                .add_router_interface(
                    &router.meta.id,
                    &InterfaceRequest::Subnet(subnet.meta.id.clone()),
                )
                .await
                .unwrap();
        }
        let on = |host: &str, subnet: &str, netns: Option<&str>| {
            let mut body = json!({
                "network_id": network.meta.id,
                "binding:host_id": host,
                "fixed_ips": [{"subnet_id": subnet}],
            });
            if let Some(netns) = netns {
                body["binding:profile"] = json!({"netns": netns});
            }
            port(body)
        };
        let ports = controller
            .create_ports(&[
                on("h1", &first.meta.id, Some("vm1")),
                on("h2", &first.meta.id, None),
                on("h2", &second.meta.id, None),
                // Not bound: nobody's port, nobody's neighbor.
                port(json!({"network_id": network.meta.id})),
            ])
            .await
            .unwrap();
        let (revision, inventory) = controller.inventory().await.unwrap();
        assert!(revision > 0);
        let states = host_states(&inventory);
        assert_eq!(states.len(), 3);
        let h1 = &states["h1"];
        assert_eq!(h1.ports.keys().collect::<Vec<_>>(), [&ports[0].meta.id]);
        let port = &h1.ports[&ports[0].meta.id];
        assert_eq!(port.netns, "vm1");
        assert_eq!(port.host_info.as_ref().unwrap().ip_address, "198.18.0.1");
        assert_eq!(h1.dhcp.len(), 1);
        let hostname = &h1.dhcp.values().next().unwrap().port_host_name;
        assert!(hostname.starts_with("host-10-0-1-"), "{hostname}");
        assert_eq!((h1.vpcs.len(), h1.subnets.len()), (1, 2));
        // The router's interfaces lend the gateways their MACs, and join
        // the two subnets.
        let gateway = h1.subnets[&first.meta.id].gateway.clone().unwrap();
        assert_eq!(gateway.ip_address, "10.0.1.1");
        assert_eq!(h1.routers[&router.meta.id].subnet_routing_tables.len(), 2);
        // h2's ports are h1's neighbors: L2 in the subnet h1 has a port in,
        // L3 in the other; at h2's underlay address.
        let kinds: Vec<(i32, String)> = [&ports[1], &ports[2]]
            .iter()
            .map(|port| {
                let neighbor = h1.neighbors.get(&port.meta.id).unwrap();
                (
                    neighbor.fixed_ips[0].neighbor_type,
                    neighbor.host_ip_address.clone(),
                )
            })
            .collect();
        assert_eq!(
            kinds,
            [
                (NeighborType::L2 as i32, "198.18.0.2".to_string()),
                (NeighborType::L3 as i32, "198.18.0.2".to_string())
            ]
        );
        assert_eq!(states["h2"].ports.len(), 2);
        assert_eq!(states["h2"].neighbors.len(), 1);
        assert!(states["h3"].is_empty(), "a host without ports gets nothing");

        // From nothing: everything, created; then only what changes.
        let whole = diff(&Default::default(), h1, 7).unwrap().to_goal_state();
        assert_eq!(whole.port_states.len(), 1);
        let created = &whole.port_states[&ports[0].meta.id];
        assert_eq!(created.operation_type, OperationType::Create as i32);
        assert_eq!(created.configuration.as_ref().unwrap().revision_number, 7);
        assert_eq!(diff(h1, h1, 8), None, "nothing sent when nothing changed");
        controller
            .delete_port(&ports[1].meta.id, None)
            .await
            .unwrap();
        let (_, inventory) = controller.inventory().await.unwrap();
        let after = host_states(&inventory);
        let change = diff(h1, &after["h1"], 9).unwrap().to_goal_state();
        assert_eq!(change.neighbor_states.len(), 1);
        assert_eq!(
            change.neighbor_states[&ports[1].meta.id].operation_type,
            OperationType::Delete as i32
        );
        assert!(change.port_states.is_empty() && change.vpc_states.is_empty());
    }

    #[tokio::test]
    async fn a_planner_keeps_what_did_not_change_and_shares_it() {
        let (_dir, controller) = controller();
        for n in 1..=3 {
            register(&controller, &format!("h{n}"), &format!("198.18.0.{n}")).await;
        }
        let (network, _) = network_with_subnet(&controller, json!({}), "10.0.1.0/24").await;
        let on = |host: &str| port(json!({"network_id": network.meta.id, "binding:host_id": host}));
        let ports = controller
            .create_ports(&[on("h1"), on("h2"), on("h3")])
            .await
            .unwrap();
        let mut planner = crate::goalstate::Planner::default();
        let (_, inventory) = controller.inventory().await.unwrap();
        let before = planner.host_states(&inventory);
        assert_eq!(before["h1"].neighbors.len(), 2);

        // A port's status is no goal state: every host's is surely the same.
        let active = PortStatus {
            port_id: ports[0].meta.id.clone(),
            status: "ACTIVE",
            detail: String::new(),
        };
        controller.set_port_statuses(&[active], None).await.unwrap();
        let (_, inventory) = controller.inventory().await.unwrap();
        let same = planner.host_states(&inventory);
        for host in ["h1", "h2", "h3"] {
            assert!(same[host].surely_same(&before[host]), "{host}");
        }
        let id = &ports[0].meta.id;
        assert!(std::sync::Arc::ptr_eq(
            &same["h1"].ports[id],
            &before["h1"].ports[id]
        ));

        // One more port on h3: one neighbor more for h1 and h2, the very
        // same one; h3 gets its port.
        let added = controller.create_ports(&[on("h3")]).await.unwrap();
        let (_, inventory) = controller.inventory().await.unwrap();
        let after = planner.host_states(&inventory);
        let changes: Vec<_> = ["h1", "h2"]
            .iter()
            .map(|host| diff(&before[*host], &after[*host], 9).unwrap())
            .collect();
        for change in &changes {
            assert_eq!(change.resources(), 1);
            assert_eq!(&*change.neighbors[0].id, added[0].meta.id.as_str());
            assert_eq!(change.neighbors[0].operation, OperationType::Create);
        }
        assert!(std::ptr::eq(
            changes[0].neighbors[0].config(),
            changes[1].neighbors[0].config()
        ));
        let h3 = diff(&before["h3"], &after["h3"], 9).unwrap();
        assert_eq!((h3.resources(), h3.states.port_states.len()), (2, 1));
    }
}
