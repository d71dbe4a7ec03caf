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

use super::{Controller, Try, check_revision, encode, ports::Plan, resource_key, retrying};
use crate::{
    error::{ApiError, ApiResult},
    model::{
        Meta, Port, Resource, SecurityGroup,
        port::PortUpdate,
        security_group::{
            DEFAULT_GROUP, Rule, RuleCreate, SecurityGroupCreate, SecurityGroupUpdate,
        },
    },
    store::Txn,
};

/// That the port uses the group.
pub fn group_port_key(group_id: &str, port_id: &str) -> String {
    format!("{}{port_id}", group_ports_prefix(group_id))
}

fn group_ports_prefix(group_id: &str) -> String {
    format!("/alcor/sg-port/{group_id}/")
}

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
                match self.find::<SecurityGroup>(id).await? {
                    Some((group, entry)) if !group.deleting => {
                        plan.txn.require_unchanged(&entry);
                    }
                    _ => return Err(ApiError::not_found(SecurityGroup::KIND, id)),
                }
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
        self.mark(
            id,
            if_match,
            |group: &mut SecurityGroup| &mut group.deleting,
            true,
        )
        .await?;
        if !self.store.list(&group_ports_prefix(id)).await?.is_empty() {
            self.mark(
                id,
                None,
                |group: &mut SecurityGroup| &mut group.deleting,
                false,
            )
            .await?;
            return Err(ApiError::conflict(
                "SecurityGroupInUse",
                format!("Security Group {id} in use."),
            ));
        }
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
                        .partition(|rule| rule.remote_group_id.as_deref() == Some(id));
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
        let (group, _) = match self.find::<SecurityGroup>(group_id).await? {
            Some(found) if !found.0.deleting => found,
            _ => return Err(ApiError::not_found(SecurityGroup::KIND, group_id)),
        };
        let project = create
            .project_id
            .clone()
            .unwrap_or_else(|| group.meta.project_id.clone());
        self.ensure_default_group(&project).await?;
        let create = &create;
        retrying(|| {
            Box::pin(async move {
                let mut plan = Plan::default();
                let mut group = match self.find::<SecurityGroup>(group_id).await? {
                    Some((group, entry)) if !group.deleting => {
                        plan.txn.require_unchanged(&entry);
                        plan.groups.insert(group_id.clone());
                        group
                    }
                    _ => return Err(ApiError::not_found(SecurityGroup::KIND, group_id)),
                };
                // The remote group must be there, and stay until the commit.
                if let Some(remote) = &create.remote_group_id {
                    self.plan_groups(&mut plan, std::slice::from_ref(remote))
                        .await?;
                }
                let rule = create.rule(&group.meta.project_id);
                if let Some(same) = group.rules.iter().find(|other| other.same_as(&rule)) {
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
