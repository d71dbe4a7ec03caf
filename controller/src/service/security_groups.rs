//! Security groups, their rules, and the ports that use them.
//!
//! A group's rules live in its record: adding or deleting a rule rewrites
//! the group under a compare, so two identical rules racing in cannot
//! both be added. `sg-rule/{rule}` says which group has a rule, for the
//! rules' own URLs.
//!
//! Each project's `default` group is made the first time it is needed,
//! together with `default-security-group/{project}` under an `Absent`
//! compare: two instances racing to make it make one (the loser reads the
//! winner's and uses that).
//!
//! A port that uses a group compares the group's record and writes
//! `sg-port/{group}/{port}`; deleting a group marks it first, then looks
//! for those keys, as deleting a network does with its ports: a port
//! created meanwhile either committed before the mark, and is seen, or
//! fails its compare and finds the group gone.

use super::{
    Controller, Try, check_revision, encode, group_port_key, group_ports_prefix, ports::Plan,
    resource_key, retrying,
};
use crate::{
    error::{ApiError, ApiResult},
    model::{
        Meta, Port, Resource, SecurityGroup,
        port::PortUpdate,
        security_group::{
            DEFAULT_GROUP, Rule, RuleCreate, SecurityGroupCreate, SecurityGroupUpdate,
        },
    },
    store::{Entry, Txn},
};

/// The id of the project's default group.
fn default_group_key(project: &str) -> String {
    format!("/alcor/default-security-group/{project}")
}

/// The id of the group that has the rule.
fn rule_key(rule_id: &str) -> String {
    format!("/alcor/sg-rule/{rule_id}")
}

/// Neutron's 400 for groups on a port without port security.
fn port_security_required() -> ApiError {
    ApiError::bad_request(
        "Port security must be enabled and port must have an IP address in order to use \
         security groups.",
    )
    .with_kind("PortSecurityAndIPRequiredForSecurityGroups")
}

/// Adds a new group's record and its rules' keys to `txn`.
fn put_group(txn: &mut Txn, group: &SecurityGroup) {
    let key = resource_key(SecurityGroup::KIND, &group.meta.id);
    txn.require_absent(&key).put(key, encode(group));
    for rule in &group.rules {
        txn.put(rule_key(&rule.meta.id), group.meta.id.clone().into_bytes());
    }
}

impl Controller {
    /// The group, unless it is missing or being deleted (404 either way).
    async fn live_group(&self, id: &str) -> ApiResult<(SecurityGroup, Entry)> {
        match self.find::<SecurityGroup>(id).await? {
            Some((group, entry)) if !group.deleting => Ok((group, entry)),
            _ => Err(ApiError::not_found(SecurityGroup::KIND, id)),
        }
    }

    /// The groups, each once, in the order given: they must exist and not
    /// be going; the plan compares each.
    pub(super) async fn plan_groups(
        &self,
        plan: &mut Plan,
        ids: &[String],
    ) -> ApiResult<Vec<String>> {
        let mut groups: Vec<String> = Vec::with_capacity(ids.len());
        for id in ids {
            if groups.contains(id) {
                continue;
            }
            if !plan.groups.contains(id) {
                let (_, entry) = self.live_group(id).await?;
                plan.txn.require_unchanged(&entry);
                plan.groups.insert(id.clone());
            }
            groups.push(id.clone());
        }
        Ok(groups)
    }

    /// The project's default group, made by the plan if there is none.
    pub(super) async fn plan_default_group(
        &self,
        plan: &mut Plan,
        project: &str,
    ) -> ApiResult<String> {
        if let Some(id) = plan.default_groups.get(project) {
            return Ok(id.clone());
        }
        let key = default_group_key(project);
        let id = match self.store.get(&key).await? {
            Some(entry) => {
                let id = String::from_utf8_lossy(&entry.value).into_owned();
                self.plan_groups(plan, std::slice::from_ref(&id)).await?;
                id
            }
            None => {
                let group = SecurityGroup::new(Meta::new(
                    DEFAULT_GROUP.into(),
                    "Default security group".into(),
                    project.into(),
                ));
                put_group(&mut plan.txn, &group);
                plan.txn
                    .require_absent(&key)
                    .put(key, group.meta.id.clone().into_bytes());
                plan.groups.insert(group.meta.id.clone());
                group.meta.id
            }
        };
        plan.default_groups.insert(project.into(), id.clone());
        Ok(id)
    }

    /// The project's default group, made now if there is none.
    pub async fn ensure_default_group(&self, project: &str) -> ApiResult<String> {
        retrying(|| {
            Box::pin(async move {
                let mut plan = Plan::default();
                let id = self.plan_default_group(&mut plan, project).await?;
                if plan.txn.ops.is_empty() {
                    return Ok(Try::Done(id));
                }
                Ok(match self.commit(plan.txn).await? {
                    Try::Done(()) => Try::Done(id),
                    Try::Again => Try::Again,
                })
            })
        })
        .await
    }

    /// A new port's groups: those asked for; else, with port security,
    /// the project's default group, except for the ports of routers and
    /// floating IPs (`network:…`), which Neutron trusts.
    pub(super) async fn port_groups(
        &self,
        plan: &mut Plan,
        project: &str,
        requested: Option<&[String]>,
        port_security: bool,
        device_owner: &str,
    ) -> ApiResult<Vec<String>> {
        match requested {
            Some(ids) if !ids.is_empty() && !port_security => Err(port_security_required()),
            Some(ids) => self.plan_groups(plan, ids).await,
            None if port_security && !device_owner.starts_with("network:") => {
                Ok(vec![self.plan_default_group(plan, project).await?])
            }
            None => Ok(Vec::new()),
        }
    }

    /// An update's groups (`update` already applied to `port`, whose
    /// groups were `old`), and the keys that say which ports use them.
    pub(super) async fn plan_group_change(
        &self,
        plan: &mut Plan,
        port: &mut Port,
        old: &[String],
        update: &PortUpdate,
    ) -> ApiResult<()> {
        if let Some(ids) = &update.security_groups {
            if !ids.is_empty() && !port.port_security_enabled {
                return Err(port_security_required());
            }
            port.security_groups = self.plan_groups(plan, ids).await?;
        }
        if !port.port_security_enabled && !port.security_groups.is_empty() {
            return Err(ApiError::conflict(
                "PortSecurityPortHasSecurityGroup",
                "Port has security group associated. Cannot disable port security or ip address \
                 until security group is removed",
            ));
        }
        for gone in old.iter().filter(|id| !port.security_groups.contains(id)) {
            plan.txn.delete(group_port_key(gone, &port.meta.id));
        }
        for new in port.security_groups.iter().filter(|id| !old.contains(id)) {
            plan.txn.put(group_port_key(new, &port.meta.id), Vec::new());
        }
        Ok(())
    }

    pub async fn create_security_group(
        &self,
        create: SecurityGroupCreate,
    ) -> ApiResult<SecurityGroup> {
        let project = create
            .project_id
            .clone()
            .unwrap_or_else(|| self.policy.default_project.clone());
        // As Neutron does: a project's first group comes with its default.
        self.ensure_default_group(&project).await?;
        let create = &create;
        let project = &project;
        retrying(|| {
            Box::pin(async move {
                let group = SecurityGroup::new(Meta::new(
                    create.name.clone(),
                    create.description.clone(),
                    project.clone(),
                ));
                let mut txn = Txn::default();
                put_group(&mut txn, &group);
                Ok(match self.commit(txn).await? {
                    Try::Done(()) => Try::Done(group),
                    Try::Again => Try::Again,
                })
            })
        })
        .await
    }

    pub async fn update_security_group(
        &self,
        id: &str,
        update: SecurityGroupUpdate,
        if_match: Option<u64>,
    ) -> ApiResult<SecurityGroup> {
        let update = &update;
        retrying(|| {
            Box::pin(async move {
                let (mut group, entry) = self.load::<SecurityGroup>(id).await?;
                if group.deleting {
                    return Err(ApiError::not_found(SecurityGroup::KIND, id));
                }
                check_revision(&group.meta, if_match)?;
                if !update.apply(&mut group)? {
                    return Ok(Try::Done(group));
                }
                group.meta.touch();
                let mut txn = Txn::default();
                txn.require_unchanged(&entry)
                    .put(entry.key.clone(), encode(&group));
                Ok(match self.commit(txn).await? {
                    Try::Done(()) => Try::Done(group),
                    Try::Again => Try::Again,
                })
            })
        })
        .await
    }

    /// Deletes a group no port uses, with its rules and the rules of other
    /// groups that name it as their remote group (as Neutron's cascade
    /// does).
    pub async fn delete_security_group(&self, id: &str, if_match: Option<u64>) -> ApiResult<()> {
        if self.show::<SecurityGroup>(id).await?.is_default() {
            return Err(ApiError::conflict(
                "SecurityGroupCannotRemoveDefault",
                "Insufficient rights for removing default security group.",
            ));
        }
        let in_use =
            ApiError::conflict("SecurityGroupInUse", format!("Security Group {id} in use."));
        let flag: fn(&mut SecurityGroup) -> &mut bool = |group| &mut group.deleting;
        self.mark_unused(id, if_match, flag, &group_ports_prefix(id), in_use)
            .await?;
        retrying(|| {
            Box::pin(async move {
                let (group, entry) = self.load::<SecurityGroup>(id).await?;
                let mut txn = Txn::default();
                txn.require_unchanged(&entry).delete(entry.key.clone());
                for rule in &group.rules {
                    txn.delete(rule_key(&rule.meta.id));
                }
                let others = self
                    .store
                    .list(&super::resource_prefix(SecurityGroup::KIND))
                    .await?;
                for other_entry in others.iter().filter(|other| other.key != entry.key) {
                    let mut other: SecurityGroup = super::decode(other_entry)?;
                    let (gone, kept): (Vec<Rule>, Vec<Rule>) = other
                        .rules
                        .into_iter()
                        .partition(|rule| rule.traffic.remote_group_id.as_deref() == Some(id));
                    other.rules = kept;
                    if gone.is_empty() {
                        continue;
                    }
                    for rule in &gone {
                        txn.delete(rule_key(&rule.meta.id));
                    }
                    other.meta.touch();
                    txn.require_unchanged(other_entry)
                        .put(other_entry.key.clone(), encode(&other));
                }
                self.commit(txn).await
            })
        })
        .await
    }

    /// Groups as the API lists them, the default groups of `projects`
    /// made first (Neutron makes the caller's when it lists).
    pub async fn security_groups(&self, projects: &[String]) -> ApiResult<Vec<SecurityGroup>> {
        for project in projects {
            self.ensure_default_group(project).await?;
        }
        let mut groups = self.list::<SecurityGroup>().await?;
        groups.retain(|group| !group.deleting);
        Ok(groups)
    }

    pub async fn create_rule(&self, create: RuleCreate) -> ApiResult<Rule> {
        let group_id = &create.security_group_id;
        let (group, _) = self.live_group(group_id).await?;
        let project = create.project_id.as_deref();
        self.ensure_default_group(project.unwrap_or(&group.meta.project_id))
            .await?;
        let create = &create;
        retrying(|| {
            Box::pin(async move {
                let mut plan = Plan::default();
                let (mut group, entry) = self.live_group(group_id).await?;
                plan.txn.require_unchanged(&entry);
                plan.groups.insert(group_id.clone());
                // The remote group must be there, and stay until the commit.
                if let Some(remote) = &create.traffic.remote_group_id {
                    self.plan_groups(&mut plan, std::slice::from_ref(remote))
                        .await?;
                }
                let rule = create.rule(&group.meta.project_id);
                if let Some(same) = group
                    .rules
                    .iter()
                    .find(|other| other.traffic.same_as(&rule.traffic))
                {
                    return Err(ApiError::conflict(
                        "SecurityGroupRuleExists",
                        format!(
                            "Security group rule already exists. Rule id is {}.",
                            same.meta.id
                        ),
                    ));
                }
                group.rules.push(rule.clone());
                group.meta.touch();
                let key = rule_key(&rule.meta.id);
                plan.txn
                    .put(resource_key(SecurityGroup::KIND, group_id), encode(&group))
                    .require_absent(&key)
                    .put(key, group_id.clone().into_bytes());
                Ok(match self.commit(plan.txn).await? {
                    Try::Done(()) => Try::Done(rule),
                    Try::Again => Try::Again,
                })
            })
        })
        .await
    }

    /// The rule and its group (with the group's entry).
    async fn find_rule(&self, id: &str) -> ApiResult<(Rule, SecurityGroup, crate::store::Entry)> {
        let missing = || ApiError::not_found(Rule::KIND, id);
        let Some(entry) = self.store.get(&rule_key(id)).await? else {
            return Err(missing());
        };
        let group_id = String::from_utf8_lossy(&entry.value).into_owned();
        let (group, entry) = self
            .find::<SecurityGroup>(&group_id)
            .await?
            .ok_or_else(missing)?;
        let rule = group
            .rules
            .iter()
            .find(|rule| rule.meta.id == id)
            .cloned()
            .ok_or_else(missing)?;
        Ok((rule, group, entry))
    }

    pub async fn show_rule(&self, id: &str) -> ApiResult<Rule> {
        Ok(self.find_rule(id).await?.0)
    }

    /// Every group's rules.
    pub async fn rules(&self) -> ApiResult<Vec<Rule>> {
        Ok(self
            .security_groups(&[])
            .await?
            .into_iter()
            .flat_map(|group| group.rules)
            .collect())
    }

    pub async fn delete_rule(&self, id: &str, if_match: Option<u64>) -> ApiResult<()> {
        retrying(|| {
            Box::pin(async move {
                let (rule, mut group, entry) = self.find_rule(id).await?;
                check_revision(&rule.meta, if_match)?;
                group.rules.retain(|other| other.meta.id != id);
                group.meta.touch();
                let mut txn = Txn::default();
                txn.require_unchanged(&entry)
                    .put(entry.key.clone(), encode(&group))
                    .delete(rule_key(id));
                self.commit(txn).await
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::{Value, json};

    use super::*;
    use crate::{
        body::resource,
        model::port::PortCreate,
        service::{Policy, testing::*},
    };

    fn group(body: Value) -> SecurityGroupCreate {
        SecurityGroupCreate::parse(
            resource(&json!({ "security_group": body }), "security_group").unwrap(),
        )
        .unwrap()
    }

    fn rule(group_id: &str, body: Value) -> RuleCreate {
        let mut body = body;
        body["security_group_id"] = json!(group_id);
        RuleCreate::parse(
            resource(
                &json!({ "security_group_rule": body }),
                "security_group_rule",
            )
            .unwrap(),
        )
        .unwrap()
    }

    /// The project's groups named `default`, as stored.
    async fn default_groups(controller: &Controller, project: &str) -> Vec<SecurityGroup> {
        let mut groups = controller.list::<SecurityGroup>().await.unwrap();
        groups.retain(|group| group.is_default() && group.meta.project_id == project);
        groups
    }

    /// Two controllers on one store, each with several requests that need
    /// the project's default group at once: one group is made, and every
    /// request uses it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn racing_instances_make_one_default_group() {
        let (_dir, first) = controller();
        let second = Controller::new(first.store.clone(), Policy::default());
        let (network, _) =
            network_with_subnet(&first, json!({"tenant_id": "p"}), "10.0.0.0/24").await;
        let instances = [Arc::new(first), Arc::new(second)];
        let tasks: Vec<_> = (0..16)
            .map(|n| {
                let controller = instances[n % 2].clone();
                let net = network.meta.id.clone();
                tokio::spawn(async move {
                    if n % 4 < 2 {
                        controller.ensure_default_group("p").await.unwrap()
                    } else {
                        let ports = controller
                            .create_ports(&[port(json!({"network_id": net}))])
                            .await
                            .unwrap();
                        ports[0].security_groups[0].clone()
                    }
                })
            })
            .collect();
        let mut ids = Vec::new();
        for task in tasks {
            ids.push(task.await.unwrap());
        }
        let groups = default_groups(&instances[0], "p").await;
        assert_eq!(groups.len(), 1, "one default group");
        assert!(ids.iter().all(|id| *id == groups[0].meta.id), "{ids:?}");
        assert_eq!(groups[0].rules.len(), 4);
    }

    #[tokio::test]
    async fn ports_take_the_default_group_and_a_group_in_use_stays() {
        let (_dir, controller) = controller();
        let (network, _) = network_with_subnet(&controller, json!({}), "10.0.0.0/24").await;
        let net = network.meta.id.clone();
        let create = |body: Value| {
            let mut body = body;
            body["network_id"] = json!(net);
            port(body)
        };
        let plain = controller.create_ports(&[create(json!({}))]).await.unwrap();
        let default = default_groups(&controller, &network.meta.project_id).await;
        assert_eq!(plain[0].security_groups, [default[0].meta.id.clone()]);
        let open = controller
            .create_ports(&[create(json!({"port_security_enabled": false}))])
            .await
            .unwrap();
        assert!(open[0].security_groups.is_empty());

        let before = snapshot(&controller).await;
        refused(
            controller
                .create_ports(&[create(json!({"security_groups": ["nope"]}))])
                .await,
            404,
            "SecurityGroupNotFound",
        );
        assert_eq!(
            snapshot(&controller).await,
            before,
            "refused: nothing written"
        );
        let web = controller
            .create_security_group(group(json!({"name": "web"})))
            .await
            .unwrap();
        let before = snapshot(&controller).await;
        refused(
            controller
                .create_ports(&[create(
                    json!({"security_groups": [web.meta.id], "port_security_enabled": false}),
                )])
                .await,
            400,
            "PortSecurityAndIPRequiredForSecurityGroups",
        );
        assert_eq!(
            snapshot(&controller).await,
            before,
            "refused: nothing written"
        );
        let twice = controller
            .create_ports(&[create(
                json!({"security_groups": [web.meta.id, web.meta.id]}),
            )])
            .await
            .unwrap();
        assert_eq!(twice[0].security_groups, std::slice::from_ref(&web.meta.id));

        // In use: refused, and the store as it was (the mark undone).
        let before = snapshot(&controller).await;
        refused(
            controller.delete_security_group(&web.meta.id, None).await,
            409,
            "SecurityGroupInUse",
        );
        refused(
            controller
                .delete_security_group(&default[0].meta.id, None)
                .await,
            409,
            "SecurityGroupCannotRemoveDefault",
        );
        let update = |body: Value| {
            PortUpdate::parse(resource(&json!({ "port": body }), "port").unwrap()).unwrap()
        };
        refused(
            controller
                .update_port(
                    &twice[0].meta.id,
                    &update(json!({"port_security_enabled": false})),
                    None,
                )
                .await,
            409,
            "PortSecurityPortHasSecurityGroup",
        );
        assert_eq!(snapshot(&controller).await, before);

        let moved = controller
            .update_port(
                &twice[0].meta.id,
                &update(json!({"security_groups": []})),
                None,
            )
            .await
            .unwrap();
        assert!(moved.security_groups.is_empty());
        controller
            .delete_security_group(&web.meta.id, None)
            .await
            .unwrap();
        assert_eq!(
            controller
                .show::<SecurityGroup>(&web.meta.id)
                .await
                .unwrap_err()
                .status,
            404
        );
        for port in [&plain[0], &open[0], &twice[0]] {
            controller.delete_port(&port.meta.id, None).await.unwrap();
        }
        assert!(
            keys(&controller, "/alcor/sg-port/").await == 0,
            "no port left in a group"
        );
    }

    #[tokio::test]
    async fn rules_are_unique_and_go_with_their_groups() {
        let (_dir, controller) = controller();
        let web = controller
            .create_security_group(group(json!({"name": "web"})))
            .await
            .unwrap();
        let db = controller
            .create_security_group(group(json!({"name": "db"})))
            .await
            .unwrap();
        let ssh = json!({"direction": "ingress", "protocol": "tcp", "port_range_min": 22, "port_range_max": 22});
        let first = controller
            .create_rule(rule(&web.meta.id, ssh.clone()))
            .await
            .unwrap();
        assert_eq!(controller.show_rule(&first.meta.id).await.unwrap(), first);
        let shown = controller
            .show::<SecurityGroup>(&web.meta.id)
            .await
            .unwrap();
        assert_eq!(shown.rules.len(), 3, "two egress rules and ssh");
        assert_eq!(shown.meta.revision_number, 2, "a rule changes its group");

        let before = snapshot(&controller).await;
        let error = refused(
            controller
                .create_rule(rule(&web.meta.id, ssh.clone()))
                .await,
            409,
            "SecurityGroupRuleExists",
        );
        assert!(error.message.contains(&first.meta.id), "{error}");
        refused(
            controller
                .create_rule(rule(
                    &web.meta.id,
                    json!({"direction": "ingress", "remote_group_id": "nope"}),
                ))
                .await,
            404,
            "SecurityGroupNotFound",
        );
        refused(
            controller.create_rule(rule("nope", ssh.clone())).await,
            404,
            "SecurityGroupNotFound",
        );
        assert_eq!(snapshot(&controller).await, before);

        // db lets web in: deleting web takes that rule too.
        let from_web = controller
            .create_rule(rule(
                &db.meta.id,
                json!({"direction": "ingress", "remote_group_id": web.meta.id}),
            ))
            .await
            .unwrap();
        controller
            .delete_security_group(&web.meta.id, None)
            .await
            .unwrap();
        let db_now = controller.show::<SecurityGroup>(&db.meta.id).await.unwrap();
        assert!(
            db_now
                .rules
                .iter()
                .all(|rule| rule.meta.id != from_web.meta.id)
        );
        for gone in [&first, &from_web] {
            refused(
                controller.show_rule(&gone.meta.id).await,
                404,
                "SecurityGroupRuleNotFound",
            );
        }
        let egress = db_now.rules[0].meta.id.clone();
        controller.delete_rule(&egress, None).await.unwrap();
        assert_eq!(
            controller
                .show::<SecurityGroup>(&db.meta.id)
                .await
                .unwrap()
                .rules
                .len(),
            1
        );
        let listed = controller.rules().await.unwrap();
        assert!(listed.iter().all(|rule| rule.meta.id != egress));
    }

    /// The same rule, many times at once: one is made, the others are
    /// told it exists.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn racing_identical_rules_make_one() {
        let (_dir, controller) = controller();
        let controller = Arc::new(controller);
        let web = controller
            .create_security_group(group(json!({"name": "web"})))
            .await
            .unwrap();
        let tasks: Vec<_> = (0..12)
            .map(|n| {
                let controller = controller.clone();
                // Numbers and names of one protocol are one rule.
                let protocol = if n % 2 == 0 { json!("udp") } else { json!(17) };
                let create = rule(
                    &web.meta.id,
                    json!({"direction": "ingress", "protocol": protocol}),
                );
                tokio::spawn(async move { controller.create_rule(create).await })
            })
            .collect();
        let mut made = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(_) => made += 1,
                Err(error) => assert_eq!(error.kind, "SecurityGroupRuleExists"),
            }
        }
        assert_eq!(made, 1);
        let group = controller
            .show::<SecurityGroup>(&web.meta.id)
            .await
            .unwrap();
        assert_eq!(group.rules.len(), 3);
        assert_eq!(keys(&controller, "/alcor/sg-rule/").await, 3 + 4);
    }

    /// Ports joining a group while it is deleted: either the port is made
    /// and the delete refused, or the group goes and the port is refused;
    /// never a port in a group that is gone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_group_never_goes_from_under_a_port() {
        let (_dir, controller) = controller();
        let controller = Arc::new(controller);
        let (network, _) = network_with_subnet(&controller, json!({}), "10.0.0.0/24").await;
        for _ in 0..10 {
            let web = controller
                .create_security_group(group(json!({"name": "web"})))
                .await
                .unwrap();
            let create: PortCreate =
                port(json!({"network_id": network.meta.id, "security_groups": [web.meta.id]}));
            let creating = {
                let controller = controller.clone();
                tokio::spawn(async move { controller.create_ports(&[create]).await })
            };
            let deleting = {
                let controller = controller.clone();
                let id = web.meta.id.clone();
                tokio::spawn(async move { controller.delete_security_group(&id, None).await })
            };
            let (created, deleted) = (creating.await.unwrap(), deleting.await.unwrap());
            match (&created, &deleted) {
                (Ok(ports), Err(error)) => {
                    assert_eq!(error.kind, "SecurityGroupInUse");
                    controller
                        .delete_port(&ports[0].meta.id, None)
                        .await
                        .unwrap();
                    controller
                        .delete_security_group(&web.meta.id, None)
                        .await
                        .unwrap();
                }
                (Err(error), Ok(())) => assert_eq!(error.kind, "SecurityGroupNotFound"),
                other => panic!("both or neither: {other:?}"),
            }
        }
        assert!(controller.list::<Port>().await.unwrap().is_empty());
        assert!(keys(&controller, "/alcor/sg-port/").await == 0);
    }
}
