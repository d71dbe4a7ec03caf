//! Which controller instance serves which agent, decided without any I/O
//! from what the store says: the registered hosts, who owns each (an owner
//! key that lives as long as its instance's lease) and the live instances
//! (each announced under its lease).
//!
//! Every instance computes the same assignment from the same view and
//! carries out only its own part of it: it claims the unowned hosts the
//! assignment gives it and gives up, one at a time, those it holds beyond
//! its capacity. The assignment is sticky: a host stays with its owner
//! unless that owner holds more than its capacity, so that a balanced
//! state is left alone and a change of membership moves as few agents as
//! it can (each move is a handover: the new session sends the whole state,
//! which the agent finds applied). Capacities spread the hosts evenly: `h`
//! hosts over `n` instances give every instance `h / n`, and the `h % n`
//! that hold the most one more.

use std::{
    collections::{BTreeMap, BTreeSet},
    hash::{DefaultHasher, Hash, Hasher},
};

/// What one instance should do now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Unowned hosts to claim.
    pub claim: Vec<String>,
    /// A host to give up (one per round: the next round sees who took it).
    pub release: Option<String>,
}

/// A host's preference for an instance: the same everywhere (a fixed-key
/// SipHash), so that instances agree on ties, and different per host, so
/// that hosts spread.
fn preference(host: &str, instance: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    (host, instance).hash(&mut hasher);
    hasher.finish()
}

/// `me`'s part of the assignment of `hosts`, given their `owners` (host →
/// instance) and the `live` instances (`me` counts as live: it is the one
/// asking). Owners that are not live keep their hosts: their keys go with
/// their lease, and those hosts are unowned then.
pub fn plan<'a>(
    me: &str,
    hosts: impl IntoIterator<Item = &'a str>,
    owners: &BTreeMap<String, String>,
    live: &BTreeSet<String>,
) -> Plan {
    let hosts: BTreeSet<&str> = hosts.into_iter().collect();
    let mut live: BTreeSet<&str> = live.iter().map(String::as_str).collect();
    live.insert(me);
    let mut held: BTreeMap<&str, Vec<&str>> = live.iter().map(|&id| (id, Vec::new())).collect();
    let mut unowned = Vec::new();
    for &host in &hosts {
        match owners.get(host) {
            Some(owner) => {
                if let Some(hosts) = held.get_mut(owner.as_str()) {
                    hosts.push(host);
                }
            }
            None => unowned.push(host),
        }
    }
    let capacity = capacities(hosts.len(), &held);
    let mut plan = Plan::default();
    let mine = &held[me];
    if mine.len() > capacity[me] {
        // The one it likes least goes.
        plan.release = mine
            .iter()
            .max_by_key(|host| preference(host, me))
            .map(|host| host.to_string());
        return plan;
    }
    // Unowned hosts, one by one, to the instance furthest below its
    // capacity; ties to the host's preference.
    let mut load: BTreeMap<&str, usize> = held.iter().map(|(&id, h)| (id, h.len())).collect();
    for host in unowned {
        let taker = live
            .iter()
            .copied()
            .filter(|id| load[id] < capacity[id])
            .max_by_key(|id| (capacity[id] - load[id], preference(host, id)));
        let Some(taker) = taker else {
            continue;
        };
        if let Some(load) = load.get_mut(taker) {
            *load += 1;
        }
        if taker == me {
            plan.claim.push(host.to_string());
        }
    }
    plan
}

/// How many hosts each live instance may hold: `hosts / n`, and one more
/// for the `hosts % n` that hold the most now (ties: by id), so that
/// nobody gives up a host only for another to take it.
fn capacities<'a>(hosts: usize, held: &BTreeMap<&'a str, Vec<&str>>) -> BTreeMap<&'a str, usize> {
    let n = held.len().max(1);
    let (base, extra) = (hosts / n, hosts % n);
    let mut order: Vec<(&str, usize)> = held.iter().map(|(&id, h)| (id, h.len())).collect();
    order.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    order
        .into_iter()
        .enumerate()
        .map(|(rank, (id, _))| (id, base + usize::from(rank < extra)))
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn set(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|id| id.to_string()).collect()
    }

    fn owned(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(host, owner)| (host.to_string(), owner.to_string()))
            .collect()
    }

    const HOSTS: [&str; 3] = ["h1", "h2", "h3"];

    #[test]
    fn an_instance_alone_claims_every_host() {
        let alone = plan("a", HOSTS, &owned(&[]), &set(&["a"]));
        assert_eq!(alone.claim, ["h1", "h2", "h3"]);
        assert_eq!(alone.release, None);
        // Announced or not yet, it counts itself.
        assert_eq!(plan("a", HOSTS, &owned(&[]), &set(&[])).claim.len(), 3);
    }

    #[test]
    fn two_instances_split_the_hosts_and_agree_on_who_takes_what() {
        let live = set(&["a", "b"]);
        let a = plan("a", HOSTS, &owned(&[]), &live);
        let b = plan("b", HOSTS, &owned(&[]), &live);
        let mut claimed: Vec<String> = a.claim.iter().chain(&b.claim).cloned().collect();
        claimed.sort();
        assert_eq!(claimed, ["h1", "h2", "h3"], "each host claimed once");
        assert!(
            (1..=2).contains(&a.claim.len()),
            "{} of 3 for a",
            a.claim.len()
        );
    }

    #[test]
    fn a_balanced_assignment_is_left_alone() {
        let owners = owned(&[("h1", "a"), ("h2", "b"), ("h3", "a")]);
        let live = set(&["a", "b"]);
        assert_eq!(plan("a", HOSTS, &owners, &live), Plan::default());
        assert_eq!(plan("b", HOSTS, &owners, &live), Plan::default());
    }

    #[test]
    fn a_dead_instances_hosts_wait_for_its_lease_then_go_to_the_survivor() {
        let live = set(&["a"]);
        let owners = owned(&[("h1", "a"), ("h2", "dead"), ("h3", "a")]);
        assert_eq!(plan("a", HOSTS, &owners, &live), Plan::default());
        let owners = owned(&[("h1", "a"), ("h3", "a")]);
        assert_eq!(plan("a", HOSTS, &owners, &live).claim, ["h2"]);
    }

    #[test]
    fn a_new_instance_gets_its_share_one_release_at_a_time() {
        let live = set(&["a", "b"]);
        let owners = owned(&[("h1", "a"), ("h2", "a"), ("h3", "a")]);
        let a = plan("a", HOSTS, &owners, &live);
        let released = a.release.expect("a gives one up");
        assert!(a.claim.is_empty());
        assert_eq!(plan("b", HOSTS, &owners, &live), Plan::default());
        // Released: b takes it, a does not take it back.
        let owners: BTreeMap<_, _> = owners.into_iter().filter(|(h, _)| *h != released).collect();
        assert_eq!(plan("b", HOSTS, &owners, &live).claim, [released]);
        assert_eq!(plan("a", HOSTS, &owners, &live), Plan::default());
    }

    #[test]
    fn an_instance_with_nothing_gets_one_from_the_richest() {
        // 4 hosts over 3: capacities 2, 1, 1; b holds 2 but ranks after a.
        let hosts = ["h1", "h2", "h3", "h4"];
        let live = set(&["a", "b", "c"]);
        let owners = owned(&[("h1", "a"), ("h2", "a"), ("h3", "b"), ("h4", "b")]);
        assert_eq!(plan("a", hosts, &owners, &live), Plan::default());
        let b = plan("b", hosts, &owners, &live);
        assert!(b.release.is_some());
        assert_eq!(plan("c", hosts, &owners, &live), Plan::default());
    }

    /// Owners as the store would have them after the instances take turns
    /// carrying out their plans, in passes over all of them, each pass in
    /// an order `turns` sets, until a whole pass finds nothing to do; and
    /// how many hosts were given up on the way.
    fn settle(
        hosts: &[String],
        mut owners: BTreeMap<String, String>,
        live: &BTreeSet<String>,
        turns: &[usize],
    ) -> (BTreeMap<String, String>, usize) {
        let ids: Vec<&String> = live.iter().collect();
        let mut moves = 0;
        for pass in 0.. {
            assert!(pass < 2 * hosts.len() + 10, "no settling: {owners:?}");
            let rotation = turns[pass % turns.len()];
            let mut changed = false;
            for n in 0..ids.len() {
                let me = ids[(n + rotation) % ids.len()];
                let plan = plan(me, hosts.iter().map(String::as_str), &owners, live);
                if let Some(host) = plan.release {
                    owners.remove(&host);
                    moves += 1;
                    changed = true;
                }
                for host in plan.claim {
                    assert!(owners.insert(host, me.clone()).is_none());
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        (owners, moves)
    }

    proptest! {
        /// From any start, instances taking turns in any order settle on
        /// every host owned by a live instance, spread evenly, having
        /// moved no host that a balanced spread did not need moved.
        #[test]
        fn any_start_settles_evenly(
            host_count in 0usize..40,
            instance_count in 1usize..5,
            start in proptest::collection::vec(0usize..6, 40),
            turns in proptest::collection::vec(0usize..5, 1..20),
        ) {
            let hosts: Vec<String> = (0..host_count).map(|n| format!("h{n:02}")).collect();
            let live: BTreeSet<String> = (0..instance_count).map(|n| format!("i{n}")).collect();
            // Owners 0..instance_count are live, 5 is none, others dead
            // (gone with their lease: their hosts are unowned).
            let owners: BTreeMap<String, String> = hosts
                .iter()
                .zip(&start)
                .filter(|(_, owner)| **owner < instance_count)
                .map(|(host, owner)| (host.clone(), format!("i{owner}")))
                .collect();
            let mut before: BTreeMap<String, usize> = live.iter().map(|id| (id.clone(), 0)).collect();
            for owner in owners.values() {
                *before.entry(owner.clone()).or_default() += 1;
            }
            let (owners, moves) = settle(&hosts, owners, &live, &turns);
            prop_assert_eq!(owners.len(), hosts.len());
            prop_assert!(owners.values().all(|owner| live.contains(owner)));
            let mut load: BTreeMap<&str, usize> = live.iter().map(|id| (id.as_str(), 0)).collect();
            for owner in owners.values() {
                *load.entry(owner).or_default() += 1;
            }
            let (min, max) = (load.values().min().copied(), load.values().max().copied());
            prop_assert!(max.unwrap_or(0) - min.unwrap_or(0) <= 1, "{:?}", load);
            // Only the excess over an even spread moves.
            let ceiling = host_count.div_ceil(instance_count);
            let excess: usize = before.values().map(|&n| n.saturating_sub(ceiling)).sum();
            prop_assert!(moves <= excess + instance_count, "{} moves, excess {}", moves, excess);
        }
    }
}
